"""Continuous batching on one model: several generations decode together.

`BatchEngine` owns an engine opened with `n_seq` sequences (slots, each with its
own KV region of `info.n_ctx` tokens: a GGUF context, or the fused ONNX graph's
KV buffers) and one scheduler thread. Each step:

  1. requests that were cancelled (or whose iterator was closed) leave, freeing
     their slot; waiting requests join free slots - the slot whose cached tokens
     share the longest prefix with the prompt (the same conversation coming back
     reuses its cache: `_reuse`), else the least recently used one;
  2. one forward pass (`decode_many`) over the next token of every running
     sequence (for a request that just finished its prefill: its last prompt
     token), then each row goes through that request's processors and sampler
     (its own parameters, seed and logprobs);
  3. one chunk of the waiting prompts (first come first) is prefilled, sized so
     that it costs at most STALL_STEPS decode steps' time (`max_batch_tokens` when
     nothing decodes), so a long prompt never freezes the running streams.

Each request reads its tokens from its own queue in its caller's thread, where
the chat core applies stop strings, max_tokens and the `n` choices as with one
request at a time. Greedy answers equal the answers of a lone request: every
sequence is evaluated exactly as `LocalEngine` evaluates it (the prompt but its
last token in chunks, then one token at a time), in its own KV stream."""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from edge_chat.engines.base import LogitsProcessor, Token
from edge_chat.engines.kv import KVCache, check_prompt
from edge_chat.engines.speculative import SpecStats
from edge_chat.errors import EdgeChatError

if TYPE_CHECKING:
    from edge_chat.chat.params import SamplingParams
    from edge_chat.engines.decode import LocalEngine

#: a prefill chunk may cost at most this many decode steps' time (so a running
#: stream waits at most ~4 steps' time for its next token: the chunk and its own step)
STALL_STEPS = 3
#: prefill chunk bounds (tokens) while other sequences decode
MIN_CHUNK = 16
FIRST_CHUNK = 64
#: prompt tokens a slot's cache must save to outweigh an idle sequence inside the
#: batch (re-prefilling them costs about what an idle sequence costs over one answer)
LONG_REUSE = 256
_END = object()


class _Request:
    def __init__(self, prompt: list[int], sampler, processors, logprobs):
        self.prompt, self.sampler = prompt, sampler
        self.processors, self.logprobs = processors, logprobs
        self.out: list[int] = []
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self.fed = 0                    # prompt tokens in the slot's cache
        self.pending: int | None = None  # the token the next decode step evaluates
        self.n_prompt_evaluated = 0
        self.order = 0                  # when it took its slot


class _Slot:
    def __init__(self, seq: int):
        self.seq = seq
        self.kv = KVCache()
        self.req: _Request | None = None
        self.used = 0                   # when it last served (least recently used first)


class BatchEngine:
    """The Engine protocol over an engine with `n_seq` > 1 (its `decode_many`,
    `trim_seq`, `max_batch_tokens`), serving up to that many generations at
    once. `session()` gives a per-request view whose cancel() stops only its
    own generations."""

    def __init__(self, engine: LocalEngine):
        self.engine = engine
        self.info = engine.info
        self.n_vocab = engine.n_vocab
        self.slots = [_Slot(i) for i in range(engine.n_seq)]
        self.capabilities = replace(engine.capabilities, eval_many=False, slots=len(self.slots))
        self.n_prompt_evaluated = 0
        self.speculation = SpecStats()          # speculative decoding is off when batching
        self.closed = False
        self._live: set[_Request] = set()      # the requests being read (cancel() stops them)
        self._waiting: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._clock = itertools.count(1)
        self._t_step = 0.0                      # seconds of a decode step (moving average)
        self._t_token = 0.0                     # seconds per prefilled token (moving average)
        self.steps = 0                          # decode steps run
        #: called after each step with what it evaluated: [("decode", seq) ...,
        #: ("prefill", seq, n_tokens)] (tests follow the interleaving with it)
        self.on_step: Callable[[list[tuple]], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"batch-{self.info.name}",
                                        daemon=True)
        self._thread.start()

    # -- the Engine protocol ----------------------------------------------------
    def __getattr__(self, name: str):
        # tokenize, detokenize, token_bytes, is_eog, ...
        return getattr(self.engine, name)

    def session(self) -> Session:
        return Session(self)

    def generate(self, prompt: list[int], params: SamplingParams, *,
                 processors: Sequence[LogitsProcessor] = (), logprobs: int | None = None,
                 prediction: Sequence[int] | None = None, _owner=None) -> Iterator[Token]:
        """As LocalEngine.generate, decoded in the shared batch (`prediction` is
        not drafted: speculative decoding is off while batching)."""
        prompt = [int(t) for t in prompt]
        check_prompt(prompt, params, self.info.n_ctx, self.n_vocab)
        if self.closed:
            raise EdgeChatError(f"the model '{self.info.name}' is closed", status=503)
        req = _Request(prompt, self.engine.sampler(params, prompt), tuple(processors), logprobs)
        return self._stream(req, _owner or self)

    def _stream(self, req: _Request, owner) -> Iterator[Token]:
        self._live.add(req)
        owner._live.add(req)
        with self._cond:
            self._waiting.append(req)
            self._cond.notify()
        try:
            first = True
            while True:
                item = req.queue.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                if first:
                    owner.n_prompt_evaluated = req.n_prompt_evaluated
                    first = False
                yield item
        finally:
            self._live.discard(req)
            owner._live.discard(req)
            self._drop(req)

    def _drop(self, req: _Request) -> None:
        """The request leaves at the next step (its slot is freed then)."""
        with self._cond:
            req.cancelled = True
            self._cond.notify()

    def cancel(self) -> None:
        """Stop every running and waiting generation."""
        for req in list(self._live):
            self._drop(req)

    def logprobs(self, tokens: list[int]):
        raise EdgeChatError("perplexity (logprobs of a text) needs a model opened with "
                            "--parallel 1")

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()
        self.engine.close()

    # -- the scheduler thread ------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self.closed and not self._waiting and \
                        not any(s.req for s in self.slots):
                    self._cond.wait()
                if self.closed:
                    break
                self._admit()
            self._step()
        for s in self.slots:
            if s.req is not None:
                self._release(s, EdgeChatError("the model was unloaded", status=503))
        for req in self._waiting:
            self._finish(req, EdgeChatError("the model was unloaded", status=503))

    def _admit(self) -> None:
        """(under the lock) cancelled requests leave; waiting ones take free slots."""
        for s in self.slots:
            if s.req is not None and s.req.cancelled:
                self._release(s)
        while self._waiting:
            req = self._waiting[0]
            if req.cancelled:
                self._finish(self._waiting.popleft())
                continue
            free = [s for s in self.slots if s.req is None]
            if not free:
                return
            running = [s.seq for s in self.slots if s.req is not None]
            span = (min(running), max(running)) if running else None
            slot = max(free, key=lambda s: _fit(s, req.prompt, span))
            self._waiting.popleft()
            keep = self.engine.trim_seq(slot.seq, slot.kv.reusable(req.prompt))
            slot.kv.trim(keep)
            slot.req = req
            req.order = next(self._clock)
            req.fed = keep
            req.n_prompt_evaluated = len(req.prompt) - keep
            if keep == len(req.prompt) - 1:
                req.pending = req.prompt[-1]

    def _step(self) -> None:
        running = [s for s in self.slots if s.req is not None]
        decoding = [s for s in running if s.req.pending is not None]
        prefilling = [s for s in running if s.req.pending is None]
        done: list[tuple] = []
        if decoding:
            t0 = time.perf_counter()
            try:
                rows = self.engine.decode_many(
                    [(s.seq, s.kv.pos, [s.req.pending], True) for s in decoding])
            except Exception as e:  # noqa: BLE001  the requests' error; the scheduler lives on
                for s in decoding:
                    self._release(s, _as_error(e), reset=True)
                return
            self._t_step = _average(self._t_step, time.perf_counter() - t0)
            self.steps += 1
            for s, row in zip(decoding, rows):
                s.kv.append([s.req.pending])
                done.append(("decode", s.seq))
                self._emit(s, row)
        if prefilling:
            prefilling.sort(key=lambda s: s.req.order)      # first come, first prefilled
            limit = self._chunk() if decoding else self.engine.max_batch_tokens
            done += self._prefill(prefilling, limit=limit)
        if self.on_step is not None:
            self.on_step(done)

    def _chunk(self) -> int:
        """Prompt tokens a step may prefill while other sequences decode."""
        if not self._t_token or not self._t_step:
            return FIRST_CHUNK
        fits = int(STALL_STEPS * self._t_step / self._t_token)
        return max(MIN_CHUNK, min(self.engine.max_batch_tokens, fits))

    def _prefill(self, slots: list[_Slot], limit: int) -> list[tuple]:
        """Evaluate the next `limit` prompt tokens of the slots, in order, in one
        decode_many; ("prefill", seq, n_tokens) for each slot served."""
        items = []
        for s in slots:
            req = s.req
            toks = req.prompt[req.fed:len(req.prompt) - 1][:limit - sum(len(i[2]) for i in items)]
            if not toks:
                break
            items.append((s.seq, s.kv.pos, toks, False))
        t0 = time.perf_counter()
        try:
            self.engine.decode_many(items)
        except Exception as e:  # noqa: BLE001
            for s in slots[:len(items)]:
                self._release(s, _as_error(e), reset=True)
            return []
        n = sum(len(i[2]) for i in items)
        self._t_token = _average(self._t_token, (time.perf_counter() - t0) / n)
        for s, (_seq, _pos, toks, _) in zip(slots, items):
            req = s.req
            s.kv.append(toks)
            req.fed += len(toks)
            if req.fed == len(req.prompt) - 1:
                req.pending = req.prompt[-1]
        return [("prefill", seq, len(toks)) for seq, _pos, toks, _ in items]

    def _emit(self, s: _Slot, row) -> None:
        """Sample the request's next token from its logits row and hand it over."""
        req = s.req
        try:
            tok = self.engine.pick(row, req.out, req.sampler, req.processors, req.logprobs)
            req.sampler.accept(tok.id)
        except Exception as e:  # noqa: BLE001  a processor or sampler failed: the request's error
            self._release(s, e)
            return
        req.out.append(tok.id)
        req.queue.put(tok)
        if self.engine.is_eog(tok.id) or len(s.kv) >= self.info.n_ctx:
            self._release(s)        # a full window: the caller sees no EOG ("length")
        else:
            req.pending = tok.id

    def _release(self, s: _Slot, error: BaseException | None = None,
                 reset: bool = False) -> None:
        req, s.req = s.req, None
        s.used = next(self._clock)
        if reset:       # a failed decode may leave part of the batch in the cache
            s.kv.trim(self.engine.trim_seq(s.seq, 0))
        self._finish(req, error)

    @staticmethod
    def _finish(req: _Request, error: BaseException | None = None) -> None:
        if error is not None:
            req.queue.put(error)
        req.queue.put(_END)
        sampler, req.sampler = req.sampler, None
        if sampler is not None:
            sampler.close()


def _fit(slot: _Slot, prompt: Sequence[int], span: tuple[int, int] | None) -> tuple:
    """How well a free slot suits a prompt (highest best), given the first and last
    running sequence (None: none runs).
    A step computes every sequence from the first running one to the last (ONNX: a
    batch row each; llama.cpp: a KV stream each), so an idle one in between costs every
    step: while others run, the slot that widens that range least, unless its cache
    saves at least LONG_REUSE prompt tokens; then the slot whose cache the prompt
    continues; then the least recently used one."""
    reuse = _reuse(slot, prompt)
    wider = max(span[0] - slot.seq, slot.seq - span[1], 0) if span else 0
    return reuse if reuse >= LONG_REUSE else 0, -wider, reuse, -slot.used


def _reuse(slot: _Slot, prompt: Sequence[int]) -> int:
    """The prompt tokens a slot's cache saves, counted only when the prompt keeps
    at least half of that cache (the same conversation coming back) or is wholly
    in it (the same prompt again): a new conversation that merely shares a system
    prompt takes the least recently used slot rather than evict another
    conversation's cache."""
    n = slot.kv.common_prefix(prompt)
    return n if 2 * n >= len(slot.kv) or n >= len(prompt) - 1 else 0


def _as_error(e: Exception) -> EdgeChatError:
    if isinstance(e, EdgeChatError):
        return e
    return EdgeChatError(f"the engine failed: {' '.join(str(e).split())[:200]}", status=500)


def _average(old: float, new: float) -> float:
    return new if not old else 0.8 * old + 0.2 * new


class Session:
    """One request's view of a BatchEngine: generate() as the engine's, cancel()
    stops only this view's generations, n_prompt_evaluated is its own."""

    def __init__(self, batch: BatchEngine):
        self._batch = batch
        self._live: set[_Request] = set()
        self.n_prompt_evaluated = 0
        self.speculation = SpecStats()

    def __getattr__(self, name: str):
        return getattr(self._batch, name)

    def generate(self, prompt: list[int], params: SamplingParams, **kw) -> Iterator[Token]:
        return self._batch.generate(prompt, params, _owner=self, **kw)

    def cancel(self) -> None:
        for req in list(self._live):
            self._batch._drop(req)
