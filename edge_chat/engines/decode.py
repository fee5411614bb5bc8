"""The decode loop both local engines share.

An engine provides the step operations speculation also needs - `eval(tokens)`
(run tokens after the cache; the logits row of the last one, or of every one),
`trim(n)` (cut the cache back to n positions), its `kv` (KVCache: the tokens
held) - and a sampler for a request; `LocalEngine` builds `generate` and
`logprobs` on them: the prompt check, prefix reuse, raw logprobs, processors,
sampling, cancel, and a newer generate() superseding an older one."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge_chat.engines.base import Capabilities, LogitsProcessor, ModelInfo, Token, TokenSampler, \
    log_softmax, token_logprobs
from edge_chat.engines.kv import KVCache, check_prompt, check_window
from edge_chat.engines.prompt_cache import PromptCache, restore_prefix, save_prefix
from edge_chat.engines.speculative import Adaptive, Drafters, SpecStats, clock, drafters_for

if TYPE_CHECKING:
    from edge_chat.params import SamplingParams


class LocalEngine:
    """generate()/logprobs()/cancel() over an engine's eval/trim/kv."""

    capabilities = Capabilities(logits_processors=True, logprobs=True, eval_many=True)
    closed = False          # set by close()
    info: ModelInfo
    n_vocab: int

    def _init_decoding(self) -> None:
        self.kv = KVCache()
        self.n_prompt_evaluated = 0
        #: speculative decoding: "auto" | "lookup" | "draft" | "off", and the draft model
        self.speculative = "auto"
        self.draft_engine: LocalEngine | None = None
        self.speculation = SpecStats()       # of the last generate call
        #: long prompt prefixes shared across requests, unloads and restarts (None: off)
        self.prompt_cache: PromptCache | None = None
        self._adaptive = Adaptive()
        self._cancel = threading.Event()
        self._lock = threading.Lock()    # one eval at a time, across generators
        self._gen_id = 0

    # -- what each engine provides -------------------------------------------
    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Evaluate `tokens` after the cache (which then holds them too); the
        float32 logits row of the last one, or (len(tokens), n_vocab) rows."""
        raise NotImplementedError

    def trim(self, n: int) -> int:
        """Cut the cache back to its first `n` positions; returns how many it
        really holds (0 when the cache cannot be cut there)."""
        raise NotImplementedError

    def sampler(self, params: SamplingParams, prompt: Sequence[int]) -> TokenSampler:
        raise NotImplementedError

    def is_eog(self, token: int) -> bool:
        raise NotImplementedError

    # -- built on them ---------------------------------------------------------
    def generate(self, prompt: list[int], params: SamplingParams, *,
                 processors: Sequence[LogitsProcessor] = (),
                 logprobs: int | None = None,
                 prediction: Sequence[int] | None = None) -> Iterator[Token]:
        """`prediction`: tokens the answer is expected to repeat (OpenAI's
        Predicted Outputs), drafted for speculative decoding."""
        prompt = [int(t) for t in prompt]
        check_prompt(prompt, params, self.info.n_ctx, self.n_vocab)
        sampler = self.sampler(params, prompt)      # bad parameters raise here, not later
        self._cancel.clear()
        self._gen_id += 1
        gen_id = self._gen_id
        self.speculation = SpecStats()
        drafters = drafters_for(self.speculative, prompt, prediction, self.draft_engine)
        return self._decode(prompt, sampler, tuple(processors), logprobs,
                            lambda: self._cancel.is_set() or gen_id != self._gen_id, drafters)

    def prefill(self, prompt: Sequence[int]) -> np.ndarray:
        """Bring the cache to `prompt` reusing the common prefix (its own, or a longer
        one from the prompt cache); the logits row after it. The last prompt token is
        always evaluated on its own."""
        own = self.kv.reusable(prompt)
        keep = restore_prefix(self.prompt_cache, self, 0, self.kv, prompt, own)
        if keep is None:
            keep = self.trim(own)
        self.n_prompt_evaluated = len(prompt) - keep
        if keep < len(prompt) - 1:
            self.eval(prompt[keep:-1])
        return self.eval(prompt[-1:])

    def _cache_prompt(self, prompt: Sequence[int]) -> None:
        """(after the first token reached the reader) the prompt the cache holds now
        joins the prompt cache, unless it came from a cache."""
        if self.n_prompt_evaluated > 1:
            save_prefix(self.prompt_cache, self, 0, prompt)

    def pick(self, row: np.ndarray, out: Sequence[int], sampler: TokenSampler,
             processors: Sequence[LogitsProcessor], logprobs: int | None) -> Token:
        """Raw logprobs of `row`, then the processors, then the sampler."""
        lp = log_softmax(row) if logprobs is not None else None
        for proc in processors:
            proc(out, row)
        tok = sampler.sample(row)
        if lp is None:
            return Token(tok)
        return token_logprobs(lp, tok, logprobs)

    def _decode(self, prompt: list[int], sampler: TokenSampler,
                processors: Sequence[LogitsProcessor], logprobs: int | None,
                stop: Callable[[], bool], drafters: Drafters | None = None) -> Iterator[Token]:
        try:
            with self._lock:
                if stop():
                    return
                row = self.prefill(prompt)
            if drafters is not None:
                yield from self._speculate(prompt, row, sampler, processors, logprobs, stop,
                                           drafters)
                return
            out: list[int] = []
            while True:
                if stop():
                    return
                tok = self.pick(row, out, sampler, processors, logprobs)
                sampler.accept(tok.id)
                out.append(tok.id)
                yield tok
                if self.is_eog(tok.id) or len(self.kv) >= self.info.n_ctx:
                    return      # a full window: the caller sees no EOG (finish_reason "length")
                with self._lock:
                    if stop():
                        return
                    if len(out) == 1:
                        self._cache_prompt(prompt)
                    row = self.eval([tok.id])
        finally:
            sampler.close()

    def _speculate(self, prompt: list[int], row: np.ndarray, sampler: TokenSampler,
                   processors: Sequence[LogitsProcessor], logprobs: int | None,
                   stop: Callable[[], bool], drafters: Drafters) -> Iterator[Token]:
        """The decode loop with drafts verified in one pass (speculative.py)."""
        ctl, stats, n_ctx = self._adaptive, self.speculation, self.info.n_ctx
        ctl.begin()
        out: list[int] = []
        tok = self.pick(row, out, sampler, processors, logprobs)
        while True:
            sampler.accept(tok.id)
            out.append(tok.id)
            drafters.feed([tok.id])
            yield tok
            # the cache holds everything before `tok`; `tok` is evaluated next
            if self.is_eog(tok.id) or len(self.kv) >= n_ctx:
                return
            # the time a round takes to draft, evaluate and sample (not the consumer's)
            t0 = clock()
            k = min(ctl.length(len(out)), n_ctx - len(self.kv) - 1)
            draft = drafters.draft(k) if k > 0 else []
            with self._lock:
                if stop():
                    return
                if len(out) == 1:
                    self._cache_prompt(prompt)
                base = len(self.kv)
                rows = self.eval([tok.id, *draft], all_logits=bool(draft))
            if not draft:
                tok = self.pick(rows, out, sampler, processors, logprobs)
                ctl.plain(clock() - t0)
                continue
            from_prediction = drafters.last.kind == "prediction"
            stats.rounds += 1
            stats.drafted += len(draft)
            accepted, busy = 0, clock() - t0
            for i in range(len(draft) + 1):
                t1 = clock()
                tok = self.pick(rows[i], out, sampler, processors, logprobs)
                busy += clock() - t1
                if i == len(draft) or tok.id != draft[i] or stop():
                    break
                accepted += 1
                stats.accepted += 1
                stats.prediction_accepted += from_prediction
                sampler.accept(tok.id)
                out.append(tok.id)
                drafters.feed([tok.id])
                yield tok
                if self.is_eog(tok.id):
                    break
            if from_prediction:
                stats.prediction_rejected += len(draft) - accepted
            t1 = clock()
            with self._lock:
                if stop():
                    return
                self.trim(base + 1 + accepted)      # the rejected tail leaves the cache
            busy += clock() - t1
            ctl.update(len(draft), accepted, busy, len(out))
            if self.is_eog(out[-1]):
                return

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        """log p(tokens[i+1] | tokens[:i+1]) for each i (perplexity); leaves
        the cache empty."""
        tokens = [int(t) for t in tokens]
        check_window(tokens, self.info.n_ctx)
        with self._lock:
            self._gen_id += 1
            self.trim(0)
            try:
                rows = self.eval(tokens, all_logits=True)[:-1]
            finally:
                self.trim(0)
        lp = log_softmax(rows)
        return lp[np.arange(len(tokens) - 1), tokens[1:]]

    def cancel(self) -> None:
        """Ask a running generate to stop after the current token (thread-safe)."""
        self._cancel.set()

    def close(self) -> None:
        """Free the model (and the draft model)."""
        self.closed = True
        self._gen_id = getattr(self, "_gen_id", 0) + 1
        draft, self.draft_engine = getattr(self, "draft_engine", None), None
        if draft is not None:
            draft.close()
        self._free()

    def _free(self) -> None:
        raise NotImplementedError
