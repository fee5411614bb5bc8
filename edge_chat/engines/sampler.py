"""A numpy token sampler over one row of logits, implementing SamplingParams.

The order follows llama.cpp (and so the GGUF engine): logit_bias, penalties, then
top_k -> top_p -> min_p on the distribution at temperature 1, then temperature, then
a draw. temperature 0 is argmax after bias and penalties.

Penalties:
  * repeat_penalty (llama.cpp): for every distinct token among the last
    `REPEAT_LAST_N` tokens of the context (prompt + generated), a positive logit
    is divided by the penalty and a negative one multiplied by it.
  * presence/frequency (OpenAI): logit -= count * frequency_penalty
    + (count > 0) * presence_penalty, counts over the generated tokens only.

`seed` seeds one numpy Generator per Sampler (the engine makes one per generate
call), so the same seed, prompt and parameters give the same tokens."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from edge_chat.errors import EdgeChatError

if TYPE_CHECKING:
    from edge_chat.params import SamplingParams

#: how many recent tokens repeat_penalty looks at (llama.cpp's default penalty_last_n)
REPEAT_LAST_N = 64
#: a logit_bias at or below this bans the token outright (OpenAI: "-100 should ban")
BAN_BIAS = -100.0


class Sampler:
    """Samples one token id at a time from a logits row.

    `context` is the prompt (feeds repeat_penalty); `accept(token)` records each
    generated token."""

    def __init__(self, params: SamplingParams, context: Iterable[int] = (),
                 repeat_last_n: int = REPEAT_LAST_N):
        self.params = params
        self.rng = np.random.default_rng(params.seed)
        self.recent: deque[int] = deque(maxlen=max(repeat_last_n, 1))
        if repeat_last_n > 0:
            self.recent.extend(list(context)[-repeat_last_n:])
        self.repeat_last_n = repeat_last_n
        self.generated: Counter[int] = Counter()

    def accept(self, token: int) -> None:
        """Record a generated token (for the penalties)."""
        if self.repeat_last_n > 0:
            self.recent.append(int(token))
        self.generated[int(token)] += 1

    def close(self) -> None:
        """Nothing to free (llama.cpp's chain sampler needs it)."""

    # -- the pipeline ------------------------------------------------------

    def adjust(self, logits: np.ndarray, dtype=np.float64) -> np.ndarray:
        """A copy of `logits` (float64 unless `dtype`) with logit_bias and the penalties
        applied."""
        p = self.params
        x = np.array(logits, dtype=dtype, copy=True).reshape(-1)
        n = x.shape[0]
        if p.logit_bias:
            for tok, bias in p.logit_bias.items():
                if not 0 <= tok < n:
                    raise EdgeChatError(
                        f"logit_bias token id {tok} is out of range (the model has {n} tokens)",
                        param="logit_bias")
                x[tok] = -np.inf if bias <= BAN_BIAS else x[tok] + bias
        if p.repeat_penalty != 1.0 and self.recent:
            ids = np.fromiter({t for t in self.recent if 0 <= t < n}, dtype=np.int64)
            v = x[ids]
            x[ids] = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
        if (p.presence_penalty or p.frequency_penalty) and self.generated:
            ids = np.array([t for t in self.generated if 0 <= t < n], dtype=np.int64)
            counts = np.array([self.generated[t] for t in ids], dtype=np.float64)
            x[ids] -= counts * p.frequency_penalty + p.presence_penalty
        return x

    def candidates(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, logits) left after top_k, top_p and min_p, best first."""
        p = self.params
        finite = np.isfinite(x)
        ids = np.flatnonzero(finite) if not finite.all() else np.arange(x.shape[0])
        k = p.top_k
        if 0 < k < ids.shape[0]:
            part = np.argpartition(-x[ids], k - 1)[:k]
            ids = ids[part]
        ids = ids[np.argsort(-x[ids], kind="stable")]
        logits = x[ids]
        if p.top_p < 1.0 or p.min_p > 0.0:
            probs = _softmax(logits)
            keep = ids.shape[0]
            if p.top_p < 1.0:
                # the smallest head whose mass reaches top_p (at least one token)
                keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
            if p.min_p > 0.0:
                # probs are sorted: count those at or above min_p * the best one
                keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
            ids, logits = ids[:keep], logits[:keep]
        return ids, logits

    def sample(self, logits: np.ndarray) -> int:
        """The next token id (does not `accept` it)."""
        p = self.params
        if p.temperature == 0.0:
            if not p.logit_bias and p.repeat_penalty == 1.0 and not p.presence_penalty \
                    and not p.frequency_penalty:
                return int(np.argmax(logits))   # plain greedy: nothing to adjust
            x = self.adjust(logits, np.float32)  # an argmax needs no float64 pass
            best = int(np.argmax(x))
            if x[best] == -np.inf:
                raise EdgeChatError("logit_bias banned every token", param="logit_bias")
            return best
        x = self.adjust(logits)
        if not np.isfinite(x).any():
            raise EdgeChatError("logit_bias banned every token", param="logit_bias")
        ids, cand = self.candidates(x)
        if ids.shape[0] == 1:
            return int(ids[0])
        probs = _softmax(cand / self.params.temperature)
        cdf = np.cumsum(probs)
        i = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(i, ids.shape[0] - 1)])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x))
    return e / e.sum()
