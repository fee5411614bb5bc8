"""Speculative decoding inside the batch (batch.py).

Each running request may carry drafts: its own `prediction` (Predicted Outputs) or
prompt lookup (speculative.py's drafters). A step evaluates every running sequence's
next token and, for the requests that draft, their draft tokens, in one forward pass;
each sequence is then verified exactly as `LocalEngine._speculate` verifies it.

The drafting budget: draft tokens make the step slower for every sequence in it,
so a step takes a request's draft only while the batch's expected tokens per second
grow: (running sequences + the draft tokens expected to be kept) / the step's time
for that many tokens. `StepCost` learns the step's time by its token count on this
machine as the batch runs (until it has, a draft token is assumed to cost
COST_PER_DRAFT of a step); each request's expected acceptance is a moving average
of its own rounds. Alone, a request drafts as with `--parallel 1` (a verification
pass of 25 tokens costs a few plain steps); next to others, a draft must pay for the
time it adds to all of them. A request whose drafts keep losing stops drafting for a
while (as `Adaptive` does), then tries again."""

from __future__ import annotations

from collections.abc import Sequence

from edge_chat.engines.speculative import COST_PER_DRAFT, K_MAX, Drafters, SpecStats

#: a request's expected acceptance before its first round: prompt lookup, and a
#: prediction (the caller expects the answer to repeat it)
PRIOR = 0.5
PREDICTION_PRIOR = 0.9


class SeqSpec:
    """One request's drafting: its draft sources, its speculation statistics and its
    expected acceptance."""

    def __init__(self, drafters: Drafters):
        self.drafters = drafters
        self.stats = SpecStats()
        self.prior = PREDICTION_PRIOR if any(s.kind == "prediction" for s in drafters.sources) \
            else PRIOR
        self.rate = self.prior
        self.off_until = 0          # produced tokens before it drafts again
        self.backoff = 16
        self.last_kind: str | None = None

    def propose(self, produced: int, room: int) -> list[int]:
        if produced < self.off_until or room <= 0:
            return []
        draft = self.drafters.draft(min(K_MAX, room))
        self.last_kind = self.drafters.last.kind if draft else None
        return draft

    def settle(self, drafted: int, accepted: int, produced: int) -> None:
        """After a verification round of `drafted` tokens, `accepted` of them kept."""
        s = self.stats
        s.rounds += 1
        s.drafted += drafted
        s.accepted += accepted
        if self.last_kind == "prediction":
            s.prediction_accepted += accepted
            s.prediction_rejected += drafted - accepted
        self.rate = 0.6 * self.rate + 0.4 * (accepted / drafted)
        if accepted == 0 and self.rate < 0.1:
            self.off_until = produced + self.backoff
            self.backoff = min(self.backoff * 2, 512)
            self.rate = self.prior
        elif accepted:
            self.backoff = 16


class StepCost:
    """Seconds of one batched forward pass by the number of tokens in it (moving
    averages, learned as the batch runs; the first pass of each size is not counted:
    the runtimes allocate for a new size then)."""

    def __init__(self):
        self._t: dict[int, float] = {}
        self._seen: set[int] = set()

    def record(self, n_tokens: int, seconds: float) -> None:
        if n_tokens not in self._seen:      # the first pass of a size allocates: not timed
            self._seen.add(n_tokens)
            return
        old = self._t.get(n_tokens)
        self._t[n_tokens] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def estimate(self, n: int, base: int) -> float | None:
        """Seconds of a pass of `n` tokens: measured, interpolated between measured
        counts, or extrapolated from the `base` (plain) step; None before any step."""
        t = self._t
        if n in t:
            return t[n]
        below = max((k for k in t if k < n), default=None)
        above = min((k for k in t if k > n), default=None)
        if below is not None and above is not None:
            f = (n - below) / (above - below)
            return t[below] * (1 - f) + t[above] * f
        ref = below if below is not None else above
        if ref is None:
            return None
        per_token = COST_PER_DRAFT * t.get(base, t[ref])
        return max(t[ref] + (n - ref) * per_token, 1e-9)


def plan(cost: StepCost, n_running: int, candidates: Sequence[tuple[SeqSpec, list[int]]]
         ) -> set[int]:
    """Which candidates' drafts the step takes (their indexes): in order of the tokens
    each is expected to add, while the batch's expected tokens per second grow."""
    order = sorted(range(len(candidates)),
                   key=lambda i: -candidates[i][0].rate * len(candidates[i][1]))

    def seconds(n: int) -> float:       # nothing timed yet: 1 + COST_PER_DRAFT x extra tokens
        est = cost.estimate(n, n_running)
        return est if est is not None else 1 + COST_PER_DRAFT * (n - n_running)

    n_tokens, expected = n_running, float(n_running)
    taken: set[int] = set()
    for i in order:
        spec, draft = candidates[i]
        n2, e2 = n_tokens + len(draft), expected + spec.rate * len(draft)
        if e2 / seconds(n2) > expected / seconds(n_tokens):
            taken.add(i)
            n_tokens, expected = n2, e2
    return taken
