"""Continuous batching on one model: several generations decode together.

`BatchEngine` owns an engine opened with `n_seq` sequences (slots, each with its
own KV region of `info.n_ctx` tokens: a GGUF context, or the fused ONNX graph's
KV buffers) and one scheduler thread. Each step:

  1. requests that were cancelled (or whose iterator was closed) leave, freeing
     their slot; waiting requests join free slots - the slot whose cached tokens
     share the longest prefix with the prompt (the same conversation coming back
     reuses its cache: `batch_slots.reuse_of`), else the least recently used one;
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
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from edge_chat.engines.base import BatchBackend, LogitsProcessor, Token
from edge_chat.engines.batch_slots import Request, Slot, fit
from edge_chat.engines.kv import check_prompt
from edge_chat.engines.prompt_cache import restore_prefix, save_prefix
from edge_chat.engines.batch_draft import SeqSpec, StepCost, plan
from edge_chat.engines.speculative import SpecStats, drafters_for
from edge_chat.errors import EdgeChatError

if TYPE_CHECKING:
    from edge_chat.params import SamplingParams

#: a prefill chunk may cost at most this many decode steps' time (so a running
#: stream waits at most ~4 steps' time for its next token: the chunk and its own step)
STALL_STEPS = 3
#: prefill chunk bounds (tokens) while other sequences decode
MIN_CHUNK = 16
FIRST_CHUNK = 64
_END = object()


class _TokenSide:
    """The token side of the Engine protocol, answered by the engine that decodes
    (`self.engine`): the same for the batch and for each request's view of it."""
    engine: BatchBackend

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        return self.engine.tokenize(text, add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.engine.detokenize(tokens)

    def token_bytes(self, token: int) -> bytes:
        return self.engine.token_bytes(token)

    def is_eog(self, token: int) -> bool:
        return self.engine.is_eog(token)


class BatchEngine(_TokenSide):
    """The Engine protocol over a `BatchBackend` (an engine opened with `n_seq` > 1),
    serving up to `n_seq` generations at once. `session()` gives a per-request view
    whose cancel() stops only its own generations."""

    def __init__(self, engine: BatchBackend):
        self.engine = engine
        self.info = engine.info
        self.n_vocab = engine.n_vocab
        self.slots = [Slot(i) for i in range(engine.n_seq)]
        self.capabilities = replace(engine.capabilities, eval_many=False, slots=len(self.slots))
        self.n_prompt_evaluated = 0
        self.speculation = SpecStats()          # of the last request (sessions: their own)
        #: speculative decoding per request: "auto" | "lookup" | "off" (a --draft model
        #: drafts only with --parallel 1)
        self.speculative = "auto"
        self._cost = StepCost()                 # a step's seconds by its tokens (drafting)
        self.closed = False
        self._live: set[Request] = set()      # the requests being read (cancel() stops them)
        self._waiting: deque[Request] = deque()
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

    # -- the Engine protocol (the token side: _TokenSide) --------------------------
    @property
    def prompt_cache(self):
        """The prompt cache every slot shares (None: off)."""
        return self.engine.prompt_cache

    def session(self) -> Session:
        return Session(self)

    def generate(self, prompt: list[int], params: SamplingParams, *,
                 processors: Sequence[LogitsProcessor] = (), logprobs: int | None = None,
                 prediction: Sequence[int] | None = None, _owner=None) -> Iterator[Token]:
        """As LocalEngine.generate, decoded in the shared batch; the request's drafts
        (its `prediction`, prompt lookup) are verified in the batch's steps (batch_draft.py)."""
        prompt = [int(t) for t in prompt]
        check_prompt(prompt, params, self.info.n_ctx, self.n_vocab)
        if self.closed:
            raise EdgeChatError(f"the model '{self.info.name}' is closed", status=503)
        drafters = drafters_for(self.speculative, prompt, prediction)
        req = Request(prompt, self.engine.sampler(params, prompt), tuple(processors), logprobs,
                       SeqSpec(drafters) if drafters else None)
        (_owner or self).speculation = req.spec.stats if req.spec else SpecStats()
        return self._stream(req, _owner or self)

    def _stream(self, req: Request, owner) -> Iterator[Token]:
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

    def _drop(self, req: Request) -> None:
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
            slot = max(free, key=lambda s: fit(s, req.prompt, span))
            self._waiting.popleft()
            own = slot.kv.reusable(req.prompt)
            keep = restore_prefix(self.engine.prompt_cache, self.engine, slot.seq, slot.kv,
                                  req.prompt, own)
            if not keep:                # the cache had nothing better, or its restore failed
                keep = self.engine.trim_seq(slot.seq, own if keep is None else 0)
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
            drafts = self._drafts(decoding)
            items = [(s.seq, s.kv.pos, [s.req.pending, *d], 1 + len(d))
                     for s, d in zip(decoding, drafts)]
            t0 = time.perf_counter()
            try:
                rows = self.engine.decode_many(items)
            except Exception as e:  # noqa: BLE001  the requests' error; the scheduler lives on
                for s in decoding:
                    self._release(s, _as_error(e), reset=True)
                return
            seconds = time.perf_counter() - t0
            self._cost.record(sum(len(it[2]) for it in items), seconds)
            if not any(drafts):
                self._t_step = _average(self._t_step, seconds)
            self.steps += 1
            for s, row, d in zip(decoding, rows, drafts):
                s.kv.append([s.req.pending])
                done.append(("decode", s.seq))
                if d:
                    self._verify(s, row, d)
                else:
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

    def _prefill(self, slots: list[Slot], limit: int) -> list[tuple]:
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

    def _drafts(self, decoding: list[Slot]) -> list[list[int]]:
        """Each decoding slot's draft for this step ([] for none): proposed by its
        request, taken while the batch gains from it (batch_draft.plan)."""
        # the prompt's last token is evaluated alone, as with one request at a time
        proposed = [s.req.spec.propose(len(s.req.out), self.info.n_ctx - len(s.kv) - 1)
                    if s.req.spec is not None and s.req.out else [] for s in decoding]
        candidates = [(i, s.req.spec, d) for i, (s, d) in enumerate(zip(decoding, proposed)) if d]
        if not candidates:
            return proposed
        taken = plan(self._cost, len(decoding), [(spec, d) for _, spec, d in candidates])
        keep = {candidates[j][0] for j in taken}
        return [d if i in keep else [] for i, d in enumerate(proposed)]

    def _emit(self, s: Slot, row, before_put=None) -> bool:
        """Sample the request's next token from its logits row and hand it over
        (`before_put(token)` runs just before, so what it records is complete when the
        reader sees the token); False when the request ended (its slot is released)."""
        req = s.req
        try:
            tok = self.engine.pick(row, req.out, req.sampler, req.processors, req.logprobs)
            req.sampler.accept(tok.id)
        except Exception as e:  # noqa: BLE001  a processor or sampler failed: the request's error
            self._release(s, e)
            return False
        req.out.append(tok.id)
        if req.spec is not None:
            req.spec.drafters.feed([tok.id])
        ends = self.engine.is_eog(tok.id) or len(s.kv) >= self.info.n_ctx
        if before_put is not None:
            before_put(tok.id, ends)
        req.queue.put(tok)
        if len(req.out) == 1 and req.n_prompt_evaluated > 1:
            # the sequence holds the prompt: it joins the prompt cache, off the first token's path
            save_prefix(self.engine.prompt_cache, self.engine, s.seq, req.prompt)
        if ends:
            self._release(s)        # a full window: the caller sees no EOG ("length")
            return False
        req.pending = tok.id
        return True

    def _verify(self, s: Slot, rows, draft: list[int]) -> None:
        """The rows of the pending token and its draft: row i samples the token after
        draft[:i] as plain decoding would (LocalEngine._speculate); the draft is kept
        while the samples equal it, the first other sample (or the one after a whole
        draft) is the next pending token, and the rejected tail leaves the cache. The
        round's statistics are settled before its last token reaches the reader."""
        req = s.req
        kept = [0]

        def settle(token: int, ends: bool) -> None:
            hit = kept[0] < len(draft) and token == draft[kept[0]]
            kept[0] += hit
            if ends or not hit:
                req.spec.settle(len(draft), kept[0], len(req.out))

        for i in range(len(draft) + 1):
            if req.cancelled or not self._emit(s, rows[i], settle):
                break
            if kept[0] == i:                # this sample was not the draft's: round over
                break
            s.kv.append([draft[i]])         # evaluated in this pass: now in the cache
        self.engine.trim_seq(s.seq, len(s.kv))

    def _release(self, s: Slot, error: BaseException | None = None,
                 reset: bool = False) -> None:
        req, s.req = s.req, None
        s.used = next(self._clock)
        if reset:       # a failed decode may leave part of the batch in the cache
            s.kv.trim(self.engine.trim_seq(s.seq, 0))
        self._finish(req, error)

    @staticmethod
    def _finish(req: Request, error: BaseException | None = None) -> None:
        if error is not None:
            req.queue.put(error)
        req.queue.put(_END)
        sampler, req.sampler = req.sampler, None
        if sampler is not None:
            sampler.close()


def _as_error(e: Exception) -> EdgeChatError:
    if isinstance(e, EdgeChatError):
        return e
    return EdgeChatError(f"the engine failed: {' '.join(str(e).split())[:200]}", status=500)


def _average(old: float, new: float) -> float:
    return new if not old else 0.8 * old + 0.2 * new


class Session(_TokenSide):
    """One request's view of a BatchEngine: generate() as the engine's, cancel()
    stops only this view's generations, n_prompt_evaluated is its own."""

    def __init__(self, batch: BatchEngine):
        self._batch = batch
        self.engine = batch.engine      # the token side (_TokenSide)
        self._live: set[Request] = set()
        self.n_prompt_evaluated = 0
        self.speculation = SpecStats()

    # what a request reads of the engine, besides generate() and cancel()
    info = property(lambda self: self._batch.info)
    capabilities = property(lambda self: self._batch.capabilities)
    n_vocab = property(lambda self: self._batch.n_vocab)

    def logprobs(self, tokens: list[int]):
        return self._batch.logprobs(tokens)

    def generate(self, prompt: list[int], params: SamplingParams, **kw) -> Iterator[Token]:
        return self._batch.generate(prompt, params, _owner=self, **kw)

    def cancel(self) -> None:
        for req in list(self._live):
            self._batch._drop(req)
