"""edge_chat.system: machine facts and the huge-page hint for large weights."""

from __future__ import annotations

import platform
import re
import sys

import pytest

from edge_chat import system

MB = 1 << 20


def test_machine_facts():
    assert 1 <= system.physical_cores() <= (__import__("os").cpu_count() or 1)
    assert system.available_memory() > 64 * MB


def _linux_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return sys.platform.startswith("linux") and bool(m) and \
        (int(m.group(1)), int(m.group(2))) >= (major, minor)


_COLLAPSE_CHILD = """
import re, sys
import numpy as np
from numpy._core.multiarray import _set_madvise_hugepage
from edge_chat import system
MB = 1 << 20
def rollup(key):
    with open("/proc/self/smaps_rollup") as f:
        return int(re.search(rf"^{key}:\\s+(\\d+) kB", f.read(), re.M).group(1)) * 1024
was = _set_madvise_hugepage(False)          # numpy asks for huge pages itself
try:
    filled = np.ones(48 * MB, np.uint8)     # resident: every page written
    empty = np.zeros(48 * MB, np.uint8)     # calloc'd: no page touched yet
finally:
    _set_madvise_hugepage(was)
rss, huge = rollup("Rss"), rollup("AnonHugePages")
t = system.collapse_to_huge_pages()
assert t is not None
t.join(timeout=120)
assert not t.is_alive()
print(rollup("AnonHugePages") - huge, rollup("Rss") - rss,
      int(filled.sum() == 48 * MB and not empty.any()))
"""


@pytest.mark.skipif(not _linux_at_least(6, 1) or not system.huge_pages_available(),
                    reason="needs Linux >= 6.1 (MADV_COLLAPSE) with transparent huge pages")
def test_filled_memory_moves_to_huge_pages_and_empty_memory_stays_empty():
    # in a fresh process: in this one the collapse would also walk every model and array
    # the earlier tests left in memory, and what it finds first is not ours to measure
    import subprocess
    r = subprocess.run([sys.executable, "-c", _COLLAPSE_CHILD], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got, grew, same = (int(x) for x in r.stdout.split())
    assert got >= 40 * MB                       # the filled array, but its unaligned ends
    assert grew < 16 * MB                       # the empty one was not committed
    assert same == 1                            # contents unchanged


def test_huge_pages_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("EDGE_CHAT_HUGEPAGES", "0")
    assert system.huge_pages_available() is False
    assert system.collapse_to_huge_pages() is None
