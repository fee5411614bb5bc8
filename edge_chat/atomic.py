"""Atomic writes: a temporary path beside the target, renamed into place."""

from __future__ import annotations

import json
import os
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
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
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
