"""The slots of continuous batching (batch.py): a request, a sequence of the engine,
and which free slot a waiting request takes."""

from __future__ import annotations

import queue
from collections.abc import Sequence

from edge_chat.engines.batch_draft import SeqSpec
from edge_chat.engines.kv import KVCache

#: prompt tokens a slot's cache must save to outweigh an idle sequence inside the
#: batch (re-prefilling them costs about what an idle sequence costs over one answer)
LONG_REUSE = 256


class Request:
    """One generation in the batch: its prompt, sampler, output queue and progress."""

    def __init__(self, prompt: list[int], sampler, processors, logprobs,
                 spec: SeqSpec | None = None):
        self.prompt, self.sampler = prompt, sampler
        self.processors, self.logprobs = processors, logprobs
        self.spec = spec                # its drafting (None: it does not speculate)
        self.out: list[int] = []
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.fed = 0                    # prompt tokens in the slot's cache
        self.pending: int | None = None  # the token the next decode step evaluates
        self.n_prompt_evaluated = 0
        self.order = 0                  # when it took its slot


class Slot:
    """One sequence of the engine: the tokens its KV holds and the request it serves."""

    def __init__(self, seq: int):
        self.seq = seq
        self.kv = KVCache()
        self.req: Request | None = None
        self.used = 0                   # when it last served (least recently used first)


def fit(slot: Slot, prompt: Sequence[int], span: tuple[int, int] | None) -> tuple:
    """How well a free slot suits a prompt (highest best), given the first and last
    running sequence (None: none runs).
    A step computes every sequence from the first running one to the last (ONNX: a
    batch row each; llama.cpp: a KV stream each), so an idle one in between costs every
    step: while others run, the slot that widens that range least, unless its cache
    saves at least LONG_REUSE prompt tokens; then the slot whose cache the prompt
    continues; then the least recently used one."""
    reuse = reuse_of(slot, prompt)
    wider = max(span[0] - slot.seq, slot.seq - span[1], 0) if span else 0
    return reuse if reuse >= LONG_REUSE else 0, -wider, reuse, -slot.used


def reuse_of(slot: Slot, prompt: Sequence[int]) -> int:
    """The prompt tokens a slot's cache saves, counted only when the prompt keeps
    at least half of that cache (the same conversation coming back) or is wholly
    in it (the same prompt again): a new conversation that merely shares a system
    prompt takes the least recently used slot rather than evict another
    conversation's cache."""
    n = slot.kv.common_prefix(prompt)
    return n if 2 * n >= len(slot.kv) or n >= len(prompt) - 1 else 0
