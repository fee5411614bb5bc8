"""Models for the API: opened lazily by name, kept warm, at most `max_loaded` at
once (least recently used is unloaded), `--parallel` worker threads per model.

A request becomes a `Job` run on one of its model's workers. A model opened
with --parallel N decodes up to N jobs together (continuous batching,
engines/batch.py); one that cannot batch (an ONNX model with optimum's graph)
runs one job at a time.
Jobs beyond the slots wait in a per-model queue of at most `max_queue` (beyond
that: ServerBusy, a 503). Events cross from the worker to the event loop
through an asyncio queue; cancelling a job (the client left) stops its
generation at the next step, freeing its slot.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_chat.chat.completion import ChatModel, Event
from edge_chat.engines.base import Token, default_n_ctx
from edge_chat.engines import EngineOptions, request_view
from edge_chat.errors import EdgeChatError, ModelNotFound, printable
from edge_chat.store.paths import (check_name, describe, find_in_store, list_models, model_name,
                                   resolve_model)
from edge_chat.system import fmt_size

log = logging.getLogger("edge_chat.server")


@dataclass
class ServerConfig:
    models: list[str] | None = None        # paths or store names; None: the whole store
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_loaded: int = 2
    max_queue: int = 8
    cors_origins: list[str] = field(default_factory=list)
    engine: EngineOptions = field(default_factory=EngineOptions)
    chat_template: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)   # beyond the local names
    max_body: int = 4 * 1024 * 1024                           # bytes of a request body
    allow_special: bool = False             # special-token text in contents acts as markup


class ServerBusy(EdgeChatError):
    status = 503
    type = "server_error"

    def __init__(self, message: str):
        super().__init__(message, code="server_overloaded")


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

    def __init__(self, pool: ModelPool, name: str, path: Path):
        self.pool, self.name, self.path = pool, name, path
        workers = max(1, pool.config.engine.parallel)
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
        cfg = self.pool.config
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
        if slots > 1 and self.pool.config.engine.draft:
            log.warning("%s: the --draft model drafts only with --parallel 1; with %d slots, "
                        "prompt lookup and predictions draft", self.name, slots)
        kv = self.memory.get("kv_bytes_per_slot")
        log.info("loaded %s (%s, %d slot(s), context %d per slot%s)", self.name, info.format,
                 slots, info.n_ctx, f", KV cache {fmt_size(kv)} per slot, "
                 f"{fmt_size(self.memory['kv_bytes_total'])} in total" if kv else "")

    def counted(self, job: Job) -> None:
        with self.lock:             # several jobs count at once
            self.pool.stats["tokens_generated"] += 1
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
                stats = self.pool.stats
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
            self.pool.stats["cancelled"] += 1
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


class ModelPool:
    def __init__(self, config: ServerConfig):
        self.config = config
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._meta: dict[tuple, dict] = {}
        self.stats = {"requests": 0, "rejected": 0, "cancelled": 0, "tokens_generated": 0,
                      "max_cancel_overrun": 0}
        self.fixed: dict[str, Path] | None = None
        if config.models:
            self.fixed = {}
            for spec in config.models:
                path = resolve_model(spec)
                name = model_name(path)
                if name in self.fixed:
                    raise EdgeChatError(f"two models are named '{name}'")
                self.fixed[name] = path

    # -- names --------------------------------------------------------------
    def available(self) -> dict[str, Path]:
        if self.fixed is not None:
            return dict(self.fixed)
        return {model_name(p): p for p in list_models()}

    def resolve(self, name: str | None) -> tuple[str, Path]:
        """(canonical name, path) for a requested model; None → the only model."""
        if name is None:
            avail = self.available()
            if len(avail) == 1:
                return next(iter(avail.items()))
            raise EdgeChatError("'model' is required (GET /v1/models lists them)",
                                param="model")
        check_name(name)
        if self.fixed is not None:
            if name not in self.fixed:
                raise ModelNotFound(f"the model '{printable(name, 80)}' does not exist; this "
                                    f"server serves {', '.join(self.fixed)}")
            return name, self.fixed[name]
        try:
            path = find_in_store(name)
        except ModelNotFound:
            raise ModelNotFound(f"the model '{printable(name, 80)}' does not exist in the store "
                                f"(GET /v1/models lists them)") from None
        return model_name(path), path

    def meta(self, path: Path) -> dict:
        """describe() of a stored model, cached while the file is unchanged."""
        try:
            st = path.stat()
        except OSError:
            return {}
        key = (str(path), st.st_mtime_ns, st.st_size)
        if key not in self._meta:
            try:
                row = describe(path)
            except Exception:  # noqa: BLE001  a broken file still gets listed
                row = {"format": "broken"}
            row["created"] = int(st.st_mtime)
            # the window the server opens the model with (what a client must fit)
            trained = row.pop("context", None)
            row["context_length"] = default_n_ctx(trained, self.config.engine.n_ctx)
            row["context_length_trained"] = trained
            self._meta[key] = row
        return self._meta[key]

    def is_loaded(self, name: str) -> bool:
        e = self._entries.get(name)
        return e is not None and e.model is not None

    # -- jobs ---------------------------------------------------------------
    def start(self, name: str | None, fn: Callable[[ChatModel], Iterator[Event]],
              check: Callable[[int], None] | None = None) -> tuple[str, Entry, Job]:
        """Queue `fn(model)` (a generator of Events) on the model's worker, after
        `check(context window)`. Runs on the event loop; never blocks."""
        key, path = self.resolve(name)
        if check is not None:
            check(self.meta(path).get("context_length") or default_n_ctx(None))
        entry = self._entries.get(key)
        if entry is None:
            entry = self._open(key, path)
        if entry.pending >= entry.slots + self.config.max_queue:
            self.stats["rejected"] += 1
            raise ServerBusy(f"the model '{key}' is busy: {entry.pending - entry.slots} "
                             f"request(s) already wait (--max-queue {self.config.max_queue}); "
                             f"retry shortly")
        self.stats["requests"] += 1
        entry.pending += 1
        self._entries.move_to_end(key)
        loop = asyncio.get_running_loop()
        job = Job(loop)
        fut = entry.executor.submit(entry.work, job, fn)
        fut.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._done, entry, job))
        return key, entry, job

    def _done(self, entry: Entry, job: Job) -> None:
        entry.pending -= 1
        job.finished = True

    def _open(self, key: str, path: Path) -> Entry:
        wait = []
        while len(self._entries) >= max(1, self.config.max_loaded):
            idle = [e for e in self._entries.values() if e.pending == 0]
            victim = idle[0] if idle else next(iter(self._entries.values()))
            del self._entries[victim.name]
            wait.append(victim.close())
        entry = Entry(self, key, path)
        self._entries[key] = entry
        loop = asyncio.get_running_loop()
        fut = entry.executor.submit(entry.load, wait)
        fut.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._loaded, entry))
        return entry

    def _loaded(self, entry: Entry) -> None:
        if entry.model is None and self._entries.get(entry.name) is entry:
            del self._entries[entry.name]       # failed: the next request tries again
            entry.close()

    def health(self) -> dict:
        return {"status": "ok", "parallel": self.config.engine.parallel,
                "loaded": [{"id": e.name, "ready": e.model is not None, "pending": e.pending,
                            "busy": bool(e.running), "running": len(e.running),
                            "slots": e.slots, **e.memory, "prompt_cache": _cache_of(e.model)}
                           for e in self._entries.values()],
                "stats": dict(self.stats)}

    def close(self) -> None:
        """At shutdown: drop queued jobs, stop running ones, free the models."""
        entries = list(self._entries.values())
        self._entries.clear()
        for e in entries:
            for job in list(e.running):
                e.cancel(job)
            e.executor.shutdown(wait=True, cancel_futures=True)
            e._close()


def _cache_of(model: ChatModel | None) -> dict | None:
    """The prompt cache's entries, hits, RAM and disk bytes (None: off or not loaded)."""
    cache = model.engine.prompt_cache if model is not None else None
    return cache.summary() if cache is not None else None
