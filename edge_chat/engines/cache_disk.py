"""The prompt cache on disk: one file per entry in a folder per engine fingerprint.

A file is MAGIC, a 4-byte header length, a JSON header (fingerprint, tokens, payload
size and SHA-256), then the payload (the engine's sequence state). Files are written
by one background thread to a temporary name and renamed into place, so a reader sees
a whole file or none; a file whose checksum, header or size does not match (cut by a
full disk or a kill, edited by hand) is deleted and its prefix recomputed. Several
processes may share the folder: each writes under its own temporary names and reads
only renamed files. The folder is kept under a byte budget, least recently used
files out first (a read touches a file)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
from pathlib import Path

from edge_chat.atomic import atomic_path

log = logging.getLogger("edge_chat.cache")

MAGIC = b"EDGECHAT-KV\x01"
SUFFIX = ".kvc"
#: entries waiting to be written at most (more are not written: the RAM copy stays)
MAX_PENDING = 8
#: seconds between two scans of the folder for files other processes wrote
RESCAN = 1.0


class DiskStore:
    def __init__(self, folder: Path, fingerprint: str, budget: int, label: str = ""):
        self.folder = Path(folder) / fingerprint[:32]
        self.fingerprint = fingerprint
        self.label = label              # the model's name, for `edge_chat cache`
        self.budget = budget
        self.broken: str | None = None          # why the folder cannot be used
        self._seen: set[str] = set()
        self._scanned = 0.0
        self._pending: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self.folder, os.W_OK):
                raise PermissionError(f"{self.folder} is not writable")
        except OSError as e:
            self._give_up(f"cannot use {self.folder} ({e.strerror or e})")

    def _give_up(self, why: str) -> None:
        if self.broken is None:
            log.warning("prompt cache: %s; keeping the cache in RAM only", why)
        self.broken = why

    def path(self, key: str) -> Path:
        return self.folder / f"{key}{SUFFIX}"

    # -- reading -------------------------------------------------------------------
    def new_entries(self) -> list[tuple[str, tuple[int, ...], int]]:
        """(key, tokens, payload size) of whole files not listed before."""
        if self.broken or time.monotonic() - self._scanned < RESCAN:
            return []
        self._scanned = time.monotonic()
        try:
            names = [n for n in os.listdir(self.folder) if n.endswith(SUFFIX)]
        except OSError:
            return []
        out = []
        for name in names:
            key = name[:-len(SUFFIX)]
            if key in self._seen:
                continue
            self._seen.add(key)
            head = self._header(self.path(key))
            if head is not None:
                out.append((key, tuple(head["tokens"]), int(head["nbytes"])))
        return out

    def _header(self, path: Path, f=None) -> dict | None:
        try:
            with open(path, "rb") if f is None else _keep(f) as fh:
                if fh.read(len(MAGIC)) != MAGIC:
                    raise ValueError("not a prompt cache file")
                (n,) = struct.unpack("<I", fh.read(4))
                head = json.loads(fh.read(n))
            if head.get("fingerprint") != self.fingerprint or \
                    not isinstance(head.get("tokens"), list):
                raise ValueError("written for another model or setting")
            return head
        except (OSError, ValueError, struct.error) as e:
            if not isinstance(e, FileNotFoundError):
                log.warning("prompt cache: %s is unusable (%s): removed", path.name, e)
                path.unlink(missing_ok=True)
            return None

    def has(self, key: str) -> bool:
        return not self.broken and self.path(key).is_file()

    def read(self, key: str, tokens: tuple[int, ...]) -> bytes | None:
        """The payload of an entry, or None (gone, or damaged: then it is removed)."""
        path = self.path(key)
        try:
            with open(path, "rb") as f:
                head = self._header(path, f)
                if head is None:
                    return None
                data = f.read()
            os.utime(path)
        except OSError:
            return None
        if tuple(head["tokens"]) != tuple(tokens) or len(data) != head["nbytes"] or \
                hashlib.sha256(data).hexdigest() != head["sha256"]:
            log.warning("prompt cache: %s does not match its checksum: removed", path.name)
            path.unlink(missing_ok=True)
            return None
        return data

    def used(self) -> int:
        return sum(size for _, size, _ in self._files())

    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        try:
            for p in self.folder.glob(f"*{SUFFIX}"):
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((st.st_mtime, st.st_size, p))
        except OSError:
            pass
        return out

    # -- writing -------------------------------------------------------------------
    def write(self, key: str, tokens: tuple[int, ...], state: bytes) -> None:
        """Queue an entry for the background writer (dropped when it is behind, the
        folder is unusable or the entry is larger than the budget)."""
        if self.broken or len(state) > self.budget or self._pending.qsize() >= MAX_PENDING:
            return
        self._seen.add(key)
        self._pending.put((key, tokens, state))
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_loop, name="prompt-cache-writer",
                                            daemon=True)
            self._writer.start()

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued entry is written (tests, shutdown)."""
        end = time.monotonic() + timeout
        while self._pending.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.01)

    def _write_loop(self) -> None:
        while True:
            try:
                key, tokens, state = self._pending.get(timeout=5.0)
            except queue.Empty:
                return
            try:
                self._write(key, tokens, state)
            finally:
                self._pending.task_done()

    def _write(self, key: str, tokens: tuple[int, ...], state: bytes) -> None:
        head = json.dumps({"fingerprint": self.fingerprint, "model": self.label,
                           "tokens": list(tokens),
                           "nbytes": len(state),
                           "sha256": hashlib.sha256(state).hexdigest()}).encode()
        try:
            self._make_room(len(state) + len(head) + 64)
            with atomic_path(self.path(key)) as tmp:
                with open(tmp, "wb") as f:
                    f.write(MAGIC + struct.pack("<I", len(head)) + head)
                    f.write(state)
        except OSError as e:
            log.warning("prompt cache: could not write %s (%s)", self.path(key).name,
                        e.strerror or e)

    def _make_room(self, need: int) -> None:
        files = sorted(self._files())
        used = sum(size for _, size, _ in files)
        for _, size, p in files:
            if used + need <= self.budget:
                break
            p.unlink(missing_ok=True)
            used -= size

    def delete(self, key: str) -> None:
        if not self.broken:
            self.path(key).unlink(missing_ok=True)

    def clear(self) -> int:
        """Remove every entry; the bytes freed."""
        freed = 0
        for _, size, p in self._files():
            p.unlink(missing_ok=True)
            freed += size
        self._seen.clear()
        return freed


def list_folders(root: Path) -> list[dict]:
    """One row per engine fingerprint under a cache root: the model, entries, the
    longest prefix in tokens, bytes and when it was last used."""
    rows = []
    for folder in sorted(p for p in Path(root).glob("*") if p.is_dir()):
        files = sorted(folder.glob(f"*{SUFFIX}"))
        heads = []
        for f in files:
            try:
                with open(f, "rb") as fh:
                    if fh.read(len(MAGIC)) != MAGIC:
                        continue
                    (n,) = struct.unpack("<I", fh.read(4))
                    heads.append((json.loads(fh.read(n)), f.stat()))
            except (OSError, ValueError, struct.error):
                continue
        if not heads:
            continue
        rows.append({"folder": str(folder), "model": heads[0][0].get("model") or "?",
                     "entries": len(heads),
                     "longest_tokens": max(len(h["tokens"]) for h, _ in heads),
                     "bytes": sum(st.st_size for _, st in heads),
                     "last_used": max(st.st_mtime for _, st in heads)})
    return rows


def clear_folders(root: Path) -> int:
    """Remove every entry file (and temporary file) under a cache root; bytes freed."""
    import shutil
    freed = 0
    for folder in (p for p in Path(root).glob("*") if p.is_dir()):
        for f in folder.iterdir():
            if f.suffix in (SUFFIX, ".tmp"):
                try:
                    freed += f.stat().st_size
                    f.unlink()
                except OSError:
                    pass
        if not any(folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    return freed


class _keep:
    """An open file as a context manager that does not close it."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self.f

    def __exit__(self, *exc):
        return False
