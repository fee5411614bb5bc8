"""Atomic writes: a temporary path beside the target, renamed into place."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(final: Path, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success rename it into place,
    on any error (or Ctrl-C) remove it. `final` is never half-written."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.{os.getpid()}."          # the pid: leftovers() knows it is ours
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        _default_mode(tmp, is_dir)
        if is_dir and final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        remove(tmp)
        raise


def _default_mode(path: Path, is_dir: bool) -> None:
    """mkstemp/mkdtemp make owner-only entries: give the result the mode a
    plain open()/mkdir() would (0666/0777 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    if path.exists():
        os.chmod(path, (0o777 if is_dir else 0o666) & ~umask)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, data: dict | list) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


# -- leftovers of runs that were killed --------------------------------------------

#: `.edge_chat-xxxxxxxx/` scratch folders, `.NAME.PID.xxxxxxxx.tmp` outputs (without the
#: pid from older versions and ONNX outputs), `.NAME.old` folders of a replaced ONNX model
_SCRATCH = re.compile(r"^\.edge_chat-[a-z0-9_]{8}$")
_TMP = re.compile(r"^\..+?(?:\.(\d+))?\.[a-z0-9_]{8}\.tmp$")
_OLD = re.compile(r"^\..+\.old$")
#: what an output folder of ours holds (so a stranger's `.x.old` is never touched)
_OUR_FILES = ("model.onnx", "edge_chat.json")
def _lock_file(folder: Path) -> Path:
    """The lock of an output folder, kept in the cache (nothing extra in the folder)."""
    import hashlib

    from edge_chat.system import cache_dir
    key = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:24]
    return cache_dir() / "locks" / f"{key}.lock"


@contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Hold a shared lock on `folder` (a convert writes there) for the `with` block;
    yields True when no other convert held it at the start (then every leftover in
    the folder is from a dead run)."""
    import fcntl
    folder.mkdir(parents=True, exist_ok=True)
    lock = _lock_file(folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except OSError:
            alone = False
        fcntl.flock(f, fcntl.LOCK_SH)
        yield alone


def _nobody_converting(folder: Path) -> bool:
    import fcntl
    try:
        with open(_lock_file(folder), "r") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _ours(p: Path, m: re.Match) -> bool:
    if m.re is _SCRATCH or (m.re is _TMP and m.group(1)):
        return True                                    # our prefix, or our pid format
    if p.is_dir() and not p.is_symlink():
        return any((p / f).exists() for f in _OUR_FILES)
    return m.re is _TMP and p.name[1:].split(".")[-3] == "gguf"   # .NAME.gguf.xxxxxxxx.tmp


def leftovers(folder: Path, alone: bool | None = None) -> list[Path]:
    """Hidden temporary files and folders in `folder` left by converts that were killed.
    `alone`: no convert is running in the folder (default: found out through its lock);
    otherwise only files named with the pid of a process that is gone count."""
    folder = Path(folder)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    if alone is None:
        alone = _nobody_converting(folder)
    found = []
    for p in entries:
        m = _SCRATCH.match(p.name) or _TMP.match(p.name) or _OLD.match(p.name)
        if not m or not _ours(p, m):
            continue
        pid = m.group(1) if m.re is _TMP else None
        if pid is not None and int(pid) == os.getpid():
            continue
        if alone or (pid is not None and not _alive(int(pid))):
            found.append(p)
    return found


def clean_leftovers(folder: Path, alone: bool | None = None) -> list[tuple[Path, int]]:
    """Remove leftovers(folder); returns what was removed with its size in bytes."""
    from edge_chat.system import tree_size
    removed = []
    for p in leftovers(folder, alone):
        try:
            size = tree_size(p)
        except OSError:
            size = 0
        remove(p)
        if not p.exists():
            removed.append((p, size))
    return removed
