"""edge_chat.system: machine facts and the huge-page hint for large weights."""

from __future__ import annotations

import platform
import re
import sys

import numpy as np
import pytest

from edge_chat import system

MB = 1 << 20


def _rollup(key: str) -> int:
    with open("/proc/self/smaps_rollup") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1)) * 1024


def test_machine_facts():
    assert 1 <= system.physical_cores() <= (__import__("os").cpu_count() or 1)
    assert system.available_memory() > 64 * MB


def _linux_at_least(major: int, minor: int) -> bool:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return sys.platform.startswith("linux") and bool(m) and \
        (int(m.group(1)), int(m.group(2))) >= (major, minor)


@pytest.mark.skipif(not _linux_at_least(6, 1) or not system.huge_pages_available(),
                    reason="needs Linux >= 6.1 (MADV_COLLAPSE) with transparent huge pages")
def test_filled_memory_moves_to_huge_pages_and_empty_memory_stays_empty():
    from numpy._core.multiarray import _set_madvise_hugepage
    was = _set_madvise_hugepage(False)          # numpy asks for huge pages itself
    try:
        filled = np.ones(48 * MB, np.uint8)     # resident: every page written
        empty = np.zeros(48 * MB, np.uint8)     # calloc'd: no page touched yet
    finally:
        _set_madvise_hugepage(was)
    rss, huge = _rollup("Rss"), _rollup("AnonHugePages")
    t = system.collapse_to_huge_pages()
    assert t is not None
    t.join(timeout=60)
    got = _rollup("AnonHugePages") - huge
    assert got >= 40 * MB                       # the filled array, but its unaligned ends
    assert _rollup("Rss") - rss < 16 * MB       # the empty one was not committed
    assert filled.sum() == 48 * MB and not empty.any()  # contents unchanged


def test_huge_pages_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("EDGE_CHAT_HUGEPAGES", "0")
    assert system.huge_pages_available() is False
    assert system.collapse_to_huge_pages() is None
