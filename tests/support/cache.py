"""The cache of built test models: where it is, content keys, and build-once-in-place.

Everything is cached across sessions under $EDGE_CHAT_TEST_CACHE (default
~/.cache/edge-chat-tests/). Each item is built in a temporary folder beside its final place
and renamed into place, so an interrupted build never leaves a half folder; a lock file
keeps parallel sessions (other engineers, xdist workers) from building the same thing twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parents[2]
#: the converters' sources, part of the key of everything converted
CONVERT_DIR = REPO / "edge_chat" / "convert"


def cache_root() -> Path:
    env = os.environ.get("EDGE_CHAT_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-chat-tests"


def content_hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(final: Path, build: Callable[[Path], Path]) -> Path:
    """`final` if it exists; else `build(tmp_dir)` (returns the built path inside tmp_dir)
    and rename the result to `final`. Temporary leftovers are removed on any error."""
    if final.exists():
        return final
    with _locked(final.parent / f".{final.name}.lock"):
        if final.exists():          # another session built it while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            built = build(tmp)
            os.replace(built, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final
