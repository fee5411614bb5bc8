"""llama.cpp's samplers over numpy logits rows (GGUF engine): the sampler chain
for SamplingParams (grammars are engines/grammar_processor.py's, for both engines).

It runs on a `llama_token_data_array` filled from a row through a numpy view of
its ctypes buffer (ids 0..n_vocab-1 in order)."""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING

import numpy as np

from edge_chat.engines.sampler import BAN_BIAS
from edge_chat.errors import EdgeChatError

if TYPE_CHECKING:
    from edge_chat.params import SamplingParams

#: tokens repeat_penalty looks back on (as the ONNX sampler)
PENALTY_LAST_N = 64
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Candidates:
    """A llama_token_data_array over the whole vocabulary, refilled from a row."""

    def __init__(self, lc, n_vocab: int):
        self._lc = lc
        self._buf = (lc.llama_token_data * n_vocab)()
        self.data = np.frombuffer(self._buf, dtype=_TOKEN_DATA)
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.array = lc.llama_token_data_array(
            data=ctypes.cast(self._buf, lc.llama_token_data_p), size=n_vocab,
            selected=-1, sorted=False)
        self.ref = ctypes.byref(self.array)

    def fill(self, row: np.ndarray) -> None:
        n = self.data.shape[0]
        self.data["id"] = self._ids
        self.data["logit"] = row[:n]
        self.data["p"] = 0.0
        self.array.size = n
        self.array.selected = -1
        self.array.sorted = False


class ChainSampler:
    """llama.cpp's sampler chain for one request: logit_bias, penalties, then
    greedy or top_k -> top_p -> min_p -> temperature -> a seeded draw."""

    def __init__(self, lc, n_vocab: int, params: SamplingParams, seed: int):
        self._lc = lc
        p = params
        self._plain_greedy = p.temperature == 0.0 and not p.logit_bias and \
            p.repeat_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty
        self._cand = Candidates(lc, n_vocab)
        chain = self.chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())

        def add(s) -> None:
            lc.llama_sampler_chain_add(chain, s)

        if p.logit_bias:
            items = [lc.llama_logit_bias(t, -np.inf if b <= BAN_BIAS else b)
                     for t, b in p.logit_bias.items()]
            arr = (lc.llama_logit_bias * len(items))(*items)
            add(lc.llama_sampler_init_logit_bias(n_vocab, len(items), arr))
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            add(lc.llama_sampler_init_penalties(n_vocab, PENALTY_LAST_N, p.repeat_penalty,
                                                p.frequency_penalty, p.presence_penalty))
        if p.temperature == 0.0:
            add(lc.llama_sampler_init_greedy())
            return
        if p.top_k > 0:
            add(lc.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            add(lc.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            add(lc.llama_sampler_init_min_p(p.min_p, 1))
        add(lc.llama_sampler_init_temp(p.temperature))
        add(lc.llama_sampler_init_dist(seed))

    def sample(self, row: np.ndarray) -> int:
        if self._plain_greedy:
            return int(np.argmax(row))
        c = self._cand
        c.fill(row)
        self._lc.llama_sampler_apply(self.chain, c.ref)
        i = c.array.selected
        if i < 0 or not np.isfinite(c.data["logit"][i]):
            raise EdgeChatError("logit_bias banned every token", param="logit_bias")
        return int(c.data["id"][i])

    def accept(self, token: int) -> None:
        self._lc.llama_sampler_accept(self.chain, token)

    def close(self) -> None:
        chain, self.chain = getattr(self, "chain", None), None
        if chain:
            self._lc.llama_sampler_free(chain)

    __del__ = close         # a generate() that was never iterated
