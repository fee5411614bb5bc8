"""Speculative decoding: draft several tokens cheaply, verify them in one forward
pass of the model, keep the longest verified run.

Draft sources (tried in this order, the first with a draft wins):
  * `Prediction` - OpenAI's Predicted Outputs: the text the caller expects;
  * `Lookup` - prompt lookup: the continuation of the latest earlier occurrence
    of the last few tokens in the prompt and the answer so far, as many tokens
    as the occurrence matches the answer's context backwards (a long copied run
    drafts far, a chance 3-gram drafts little);
  * `DraftModel` - a small model with the same vocabulary, drafting greedily.

Verification (`LocalEngine._speculate`): the pending token and the k drafted
ones are evaluated in one batch with logits for every position; position i is
sampled exactly as plain decoding samples it (processors, bias, penalties,
temperature, the sampler's own random stream) and the draft is kept while the
sampled token equals the drafted one; the first differing sample replaces the
draft's tail, which is cut from the KV cache. Drafts are deterministic (q is
one-hot), so this is the speculative-sampling rule - accept d with probability
min(1, p(d)/q(d)) = p(d), otherwise draw from the residual p without d - and as
every emitted token takes one draw in order, a seeded answer is the one plain
decoding gives.

`Adaptive` turns speculation off (for a growing number of tokens) while verified
rounds give fewer tokens per second than plain steps. A draft is at most K_MAX
tokens; the draft model sets its own length from how much of its recent drafts
was kept (each token it drafts costs a step of the small model)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

#: most tokens drafted for one round
K_MAX = 24
#: the cost of a verification pass per drafted token, in plain steps, until a
#: plain step has been timed
COST_PER_DRAFT = 0.25
#: the n-gram sizes prompt lookup matches, longest first
LOOKUP_NGRAMS = (4, 3)
PREDICTION_NGRAMS = (4, 3, 2)
MODES = ("auto", "lookup", "draft", "off")


@dataclass
class SpecStats:
    """Speculation in the last generate call."""
    rounds: int = 0                  # verification passes with a draft
    drafted: int = 0                 # draft tokens evaluated
    accepted: int = 0                # draft tokens that became output
    prediction_accepted: int = 0     # of those, from the request's prediction
    prediction_rejected: int = 0     # prediction tokens evaluated and rejected

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0


class NgramIndex:
    """Where each n-gram of a token list last occurred (for its continuation)."""

    def __init__(self, sizes: Sequence[int], tokens: Sequence[int] = ()):
        self.sizes = tuple(sizes)
        self.tokens: list[int] = []
        self._next: dict[int, dict[tuple, int]] = {n: {} for n in self.sizes}
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        toks = self.tokens
        for t in tokens:
            i = len(toks)
            for n in self.sizes:
                if i >= n:
                    self._next[n][tuple(toks[i - n:i])] = i
            toks.append(int(t))

    def context_match(self, i: int, limit: int) -> int:
        """How many tokens before position `i` equal the tokens before the end
        (the matched n-gram and as much of its context as also matches)."""
        toks, n, end = self.tokens, 0, len(self.tokens)
        while n < limit and i - n - 1 >= 0 and toks[i - n - 1] == toks[end - n - 1]:
            n += 1
        return n

    def find(self, tail: Sequence[int]) -> int | None:
        """Index of the token that followed the latest occurrence of the longest
        matching suffix of `tail`."""
        for n in self.sizes:
            if len(tail) >= n:
                i = self._next[n].get(tuple(tail[-n:]))
                if i is not None:
                    return i
        return None


class Lookup:
    """Prompt lookup: drafts from the prompt and the answer so far."""
    kind = "lookup"

    def __init__(self, prompt: Sequence[int]):
        self.index = NgramIndex(LOOKUP_NGRAMS, prompt)

    def feed(self, tokens: Sequence[int]) -> None:
        self.index.extend(tokens)

    def draft(self, k: int) -> list[int]:
        toks = self.index.tokens
        i = self.index.find(toks)
        return toks[i:i + self.index.context_match(i, k)] if i is not None else []


class Prediction:
    """Predicted Outputs: drafts the expected text, following the answer along
    it and finding its place again (by n-gram) after an edit."""
    kind = "prediction"

    def __init__(self, prediction: Sequence[int]):
        self.index = NgramIndex(PREDICTION_NGRAMS, prediction)
        self.pos: int | None = 0        # where the answer is in the prediction
        self.out: list[int] = []

    def feed(self, tokens: Sequence[int]) -> None:
        pred = self.index.tokens
        for t in tokens:
            self.out.append(t)
            if self.pos is not None and self.pos < len(pred) and pred[self.pos] == t:
                self.pos += 1
            else:
                self.pos = None

    def draft(self, k: int) -> list[int]:
        if self.pos is None:
            self.pos = self.index.find(self.out[-8:])
        if self.pos is None:
            return []
        return self.index.tokens[self.pos:self.pos + k]


def next_length(k: int, drafted: int, accepted: int) -> int:
    """The draft model's next draft length: doubled (to K_MAX) after a draft kept
    whole, else what was kept plus one."""
    return min(k * 2, K_MAX) if accepted == drafted else max(1, accepted + 1)


class DraftModel:
    """A small model with the same vocabulary drafts greedily after the
    prompt and answer so far (its own KV cache follows them), as many tokens as
    its recent drafts were kept (`next_length`)."""
    kind = "draft"

    def __init__(self, engine, prompt: Sequence[int]):
        self.engine = engine
        self.history = list(prompt)
        self.k = 4
        self._last: list[int] = []      # the last draft, and the tokens fed since
        self._fed: list[int] = []

    def feed(self, tokens: Sequence[int]) -> None:
        self.history.extend(tokens)
        self._fed.extend(tokens)

    def draft(self, k: int) -> list[int]:
        if self._last:
            kept = next((i for i, (a, b) in enumerate(zip(self._last, self._fed)) if a != b),
                        min(len(self._last), len(self._fed)))
            self.k = next_length(self.k, len(self._last), kept)
        self._last = self._draft(min(k, self.k))
        self._fed = []
        return self._last

    def _draft(self, k: int) -> list[int]:
        import numpy as np
        e, hist = self.engine, self.history
        if len(hist) + k >= e.info.n_ctx:
            return []
        with e._lock:
            keep = e.trim(e.kv.reusable(hist))
            if keep < len(hist) - 1:
                e.eval(hist[keep:-1])
            row = e.eval(hist[-1:])
            out: list[int] = []
            while True:
                t = int(np.argmax(row))
                out.append(t)
                if len(out) >= k or e.is_eog(t):
                    return out
                row = e.eval([t])


class Drafters:
    """The draft sources of one request, first with a draft wins."""

    def __init__(self, sources: list):
        self.sources = sources
        self.last = None

    def feed(self, tokens: Sequence[int]) -> None:
        for s in self.sources:
            s.feed(tokens)

    def draft(self, k: int) -> list[int]:
        for s in self.sources:
            d = s.draft(k)
            if d:
                self.last = s
                return d
        self.last = None
        return []


def drafters_for(mode: str, prompt: Sequence[int], prediction: Sequence[int] | None,
                 draft_engine=None) -> Drafters | None:
    sources: list = []
    if prediction:
        sources.append(Prediction(prediction))
    if mode in ("auto", "lookup"):
        sources.append(Lookup(prompt))
    if mode in ("auto", "draft") and draft_engine is not None:
        sources.append(DraftModel(draft_engine, prompt))
    return Drafters(sources) if sources else None


class Adaptive:
    """Speculation off while it loses; `length` is 0 (off) or K_MAX.

    `t_plain` (seconds per plain step, a moving average) is compared with the
    seconds per produced token of verified rounds (drafting included; until a
    plain step is timed, a round costs 1 + COST_PER_DRAFT x drafted steps); a
    losing streak turns drafting off for `backoff` tokens, doubled each time it
    loses again, reset when it wins."""

    def __init__(self):
        self.t_plain: float | None = None
        self.begin()

    def begin(self) -> None:
        self.off_until = 0
        self.backoff = 16
        self.gain: float | None = None      # moving average of plain time / round time per token

    def length(self, produced: int) -> int:
        return 0 if produced < self.off_until else K_MAX

    def plain(self, seconds: float) -> None:
        self.t_plain = seconds if self.t_plain is None else 0.8 * self.t_plain + 0.2 * seconds

    def update(self, drafted: int, accepted: int, seconds: float, produced: int) -> None:
        cost = seconds / self.t_plain if self.t_plain else 1 + COST_PER_DRAFT * drafted
        gain = (accepted + 1) / max(cost, 1e-9)
        self.gain = gain if self.gain is None else 0.6 * self.gain + 0.4 * gain
        if self.gain < 1.0:
            self.off_until = produced + self.backoff
            self.backoff = min(self.backoff * 2, 512)
            self.gain = None
        elif gain >= 1.0:
            self.backoff = 16


def clock() -> float:
    return time.perf_counter()
