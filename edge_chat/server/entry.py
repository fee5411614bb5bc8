"""One model of the API's pool: its worker threads, its ChatModel once loaded, the jobs
(requests) that run on it, and the Events they hand to the event loop (pool.py decides
which models are loaded; jobs.py reads the Events)."""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_chat.chat.completion import ChatModel, Event
from edge_chat.engines import request_view
from edge_chat.engines.base import Token
from edge_chat.errors import EdgeChatError
from edge_chat.system import fmt_size

if TYPE_CHECKING:
    from edge_chat.server.config import ServerConfig

log = logging.getLogger("edge_chat.server")


class _End:
    """Marks the end of a job's events."""


END = _End()


class Job:
    """One request's generation. The worker puts Events (then END, or an
    exception then END) into `queue`; the event loop reads them."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancelled = False
        self.running = False
        self.finished = False
        self.model: ChatModel | None = None     # this job's view of the model
        self.overrun = 0            # tokens generated after the cancel was asked
        self.keep_alive: float | None = None    # seconds the model stays loaded after it

    def put(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:        # the loop is gone (server shutting down)
            self.cancelled = True


class _CountingEngine:
    """The engine as a job's ChatModel sees it, counting every generated token."""

    def __init__(self, engine, entry: Entry, job: Job):
        self._engine = engine
        self._entry = entry
        self._job = job

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def generate(self, prompt, params, **kw) -> Iterator[Token]:
        gen = self._engine.generate(prompt, params, **kw)
        try:
            for tok in gen:
                self._entry.counted(self._job)
                yield tok
        finally:
            gen.close()


class Entry:
    """One model: its worker threads, its ChatModel once loaded, its queue length."""

    def __init__(self, config: ServerConfig, stats: dict, name: str, path: Path):
        self.config, self.stats, self.name, self.path = config, stats, name, path
        workers = max(1, config.engine.parallel)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix=f"edge_chat-{name}")
        self.model: ChatModel | None = None
        self.error: EdgeChatError | None = None
        self.slots = workers            # jobs run at once (1 once loaded if it cannot batch)
        self.memory: dict = {}
        self.ready = threading.Event()  # loaded (or failed)
        self.gate = threading.Semaphore(workers)
        self.pending = 0                # jobs submitted and not finished (running + queued)
        self.lock = threading.Lock()    # guards job.running / running against cancel()
        self.running: set[Job] = set()
        self.expires = math.inf         # when idle, unloaded at this time.monotonic()

    # -- worker thread ------------------------------------------------------
    def load(self, wait: list[Future]) -> None:
        try:
            self._load(wait)
        finally:
            self.ready.set()        # the jobs waiting for it run (or fail) now

    def _load(self, wait: list[Future]) -> None:
        for f in wait:                  # the evicted models are closed first
            try:
                f.result()
            except Exception as e:  # noqa: BLE001  closing failed; load anyway
                log.warning("unloading a model failed: %s", e)
        from edge_chat.runtime import open_chat
        cfg = self.config
        try:
            model = open_chat(str(self.path), cfg.engine, chat_template=cfg.chat_template,
                              context_policy="error", need_template=False,
                              allow_special=cfg.allow_special,
                              warn=lambda note: log.warning("%s: %s", self.name, note))
        except EdgeChatError as e:
            self.error = e
            return
        except Exception as e:  # noqa: BLE001
            self.error = EdgeChatError(f"cannot load model '{self.name}': {e}", status=500)
            return
        self._describe_slots(model)
        self.model = model

    def _describe_slots(self, model: ChatModel) -> None:
        """Slots, the KV memory they take, and what falls back (log and /health)."""
        engine, info = model.engine, model.info
        slots = engine.capabilities.slots
        if slots < self.slots:
            why = info.extra.get("no_batching") or "its engine cannot batch"
            log.warning("%s: serves one request at a time (%s); --parallel %d does not "
                        "apply to it", self.name, why, self.slots)
            self.gate = threading.Semaphore(slots)
        self.slots = slots
        self.memory = {"slots": slots, "ctx_per_slot": info.n_ctx}
        per_token = info.extra.get("kv_bytes_per_token")     # local engines state it
        if per_token:
            self.memory.update(kv_bytes_per_slot=per_token * info.n_ctx,
                               kv_bytes_total=per_token * info.n_ctx * slots)
        if slots > 1 and self.config.engine.draft:
            log.warning("%s: the --draft model drafts only with --parallel 1; with %d slots, "
                        "prompt lookup and predictions draft", self.name, slots)
        kv = self.memory.get("kv_bytes_per_slot")
        log.info("loaded %s (%s, %d slot(s), context %d per slot%s)", self.name, info.format,
                 slots, info.n_ctx, f", KV cache {fmt_size(kv)} per slot, "
                 f"{fmt_size(self.memory['kv_bytes_total'])} in total" if kv else "")

    def counted(self, job: Job) -> None:
        with self.lock:             # several jobs count at once
            self.stats["tokens_generated"] += 1
        if job.cancelled:
            job.overrun += 1

    def job_model(self, job: Job) -> ChatModel:
        """The ChatModel a job runs on: its own view of the engine (cancel, counts)."""
        model = copy.copy(self.model)
        model.engine = _CountingEngine(request_view(model.engine), self, job)
        return model

    def work(self, job: Job, fn: Callable[[ChatModel], Iterator[Event]]) -> None:
        self.ready.wait()
        with self.gate:
            self._work(job, fn)

    def _work(self, job: Job, fn: Callable[[ChatModel], Iterator[Event]]) -> None:
        with self.lock:
            if job.cancelled:
                job.put(END)
                return
            if self.model is not None:
                job.model = self.job_model(job)
            job.running = True
            self.running.add(job)
        try:
            if job.model is None:
                raise self.error or EdgeChatError(f"model '{self.name}' is not loaded",
                                                  status=500)
            events = fn(job.model)
            try:
                for ev in events:
                    job.put(ev)
                    if job.cancelled:
                        break
            finally:
                events.close()
        except BaseException as e:  # noqa: BLE001  handed to the request
            job.put(e)
        finally:
            with self.lock:
                job.running = False
                self.running.discard(job)
            if job.cancelled:
                stats = self.stats
                stats["max_cancel_overrun"] = max(stats["max_cancel_overrun"], job.overrun)
            job.put(END)

    def _close(self) -> None:
        model, self.model = self.model, None
        if model is not None:
            model.engine.close()
            log.info("unloaded %s", self.name)

    # -- event loop ---------------------------------------------------------
    def cancel(self, job: Job) -> None:
        """Stop `job`: dropped if still queued, stopped at the next token if running."""
        with self.lock:
            if job.cancelled or job.finished:
                return
            job.cancelled = True
            self.stats["cancelled"] += 1
            if job.running and job.model is not None:
                job.model.cancel()

    def close(self) -> Future:
        """Unload after the jobs already queued; returns when done."""
        f: Future = Future()

        def run() -> None:
            self.executor.shutdown(wait=True)
            try:
                self._close()
                f.set_result(None)
            except BaseException as e:  # noqa: BLE001  handed to whoever waits
                f.set_exception(e)

        threading.Thread(target=run, name=f"edge_chat-close-{self.name}", daemon=True).start()
        return f
