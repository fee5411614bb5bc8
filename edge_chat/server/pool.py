"""Models for the API: opened lazily by name, kept warm, at most `max_loaded` at
once (least recently used is unloaded), unloaded when idle longer than their keep-alive
(`--keep-alive`, or a request's), `--parallel` worker threads per model (entry.py).

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
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

from edge_chat.chat.completion import ChatModel, Event
from edge_chat.engines.base import default_n_ctx
from edge_chat.errors import EdgeChatError, ModelNotFound, printable
from edge_chat.server.config import ServerConfig
from edge_chat.server.entry import Entry, Job
from edge_chat.store.paths import (check_name, describe, find_in_store, list_models, model_name,
                                   resolve_model)

log = logging.getLogger("edge_chat.server")


class ServerBusy(EdgeChatError):
    status = 503
    type = "server_error"

    def __init__(self, message: str):
        super().__init__(message, code="server_overloaded")


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
              check: Callable[[int], None] | None = None, keep_alive: float | None = None
              ) -> tuple[str, Entry, Job]:
        """Queue `fn(model)` (a generator of Events) on the model's worker, after
        `check(context window)`; the model then stays loaded `keep_alive` seconds once idle
        (None: --keep-alive). Runs on the event loop; never blocks."""
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
        job.keep_alive = keep_alive
        fut = entry.executor.submit(entry.work, job, fn)
        fut.add_done_callback(lambda _f: loop.call_soon_threadsafe(self._done, entry, job))
        return key, entry, job

    def _done(self, entry: Entry, job: Job) -> None:
        entry.pending -= 1
        job.finished = True
        keep = self.config.keep_alive if job.keep_alive is None else job.keep_alive
        entry.expires = time.monotonic() + keep
        if keep <= 0 and self._entries.get(entry.name) is entry:
            self.unload(entry.name)

    def unload(self, name: str) -> bool:
        """Unload a loaded, idle model now; False if it is busy or not loaded."""
        entry = self._entries.get(name)
        if entry is None or entry.pending:
            return False
        del self._entries[name]
        entry.close()
        return True

    def reap(self) -> None:
        """Unload the idle models whose keep-alive has run out (called every second)."""
        now = time.monotonic()
        for e in list(self._entries.values()):
            if e.pending == 0 and e.model is not None and e.expires <= now:
                log.info("unloading %s: idle for its keep-alive", e.name)
                self.unload(e.name)

    def _open(self, key: str, path: Path) -> Entry:
        wait = []
        while len(self._entries) >= max(1, self.config.max_loaded):
            idle = [e for e in self._entries.values() if e.pending == 0]
            victim = idle[0] if idle else next(iter(self._entries.values()))
            del self._entries[victim.name]
            wait.append(victim.close())
        entry = Entry(self.config, self.stats, key, path)
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
                            "slots": e.slots, **e.memory, "prompt_cache": _cache_of(e.model),
                            "expires_in": _left(e.expires)}
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


def _left(deadline: float) -> float | None:
    """Seconds until a monotonic deadline (None: never)."""
    return None if deadline == math.inf else round(max(deadline - time.monotonic(), 0.0), 1)


def _cache_of(model: ChatModel | None) -> dict | None:
    """The prompt cache's entries, hits, RAM and disk bytes (None: off or not loaded)."""
    cache = model.engine.prompt_cache if model is not None else None
    return cache.summary() if cache is not None else None
