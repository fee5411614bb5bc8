"""The prompt cache: the keys and values of long prompt prefixes, shared by every
sequence of a model and kept across conversations, unloads and restarts.

An entry is the state of one sequence that held exactly `tokens` (the engine's own
bytes: llama.cpp's sequence state, or the ONNX KV rows). Any prefix of an entry is
usable: the state is restored into a sequence and cut back to the prefix the prompt
shares with it, so one entry of "system prompt + first question" also serves every
other conversation with that system prompt. An entry that a newer one extends is
dropped (the newer one serves all it served).

Entries are found by their token blocks: each BLOCK tokens are keyed by the hash of
all tokens before and in them (as vLLM's and SGLang's prefix caching key KV blocks),
so a lookup walks the prompt's blocks as far as any entry goes, then compares tokens
exactly past the last block. RAM holds entries under one budget for the whole process
(least recently used first out), so a model that is unloaded and loaded again finds
its entries; `disk.py`'s DiskStore keeps them across restarts, under the engine's
fingerprint (model file, engine version, KV type...): a different model or setting
never reads another's entries."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edge_chat.engines.kv import common_prefix

if TYPE_CHECKING:
    from edge_chat.engines.cache_disk import DiskStore
    from edge_chat.engines.kv import KVCache

log = logging.getLogger("edge_chat.cache")

#: tokens per index block
BLOCK = 64
#: shorter prefixes are not cached: a slot's own cache covers short prompts, and
#: evaluating them again costs less than a restore
MIN_TOKENS = 256


def token_key(tokens: Sequence[int]) -> str:
    """The stable name of a token sequence (its entry's file name)."""
    return hashlib.sha256(b"".join(int(t).to_bytes(4, "little") for t in tokens)).hexdigest()[:40]


def block_hashes(tokens: Sequence[int], limit: int | None = None) -> list[int]:
    """The chain hash of each whole BLOCK of `tokens` (up to `limit` tokens): block i's
    hash covers every token of blocks 0..i."""
    end = len(tokens) if limit is None else min(limit, len(tokens))
    out, h = [], 0
    for b in range(BLOCK, end + 1, BLOCK):
        h = hash((h, tuple(tokens[b - BLOCK:b])))
        out.append(h)
    return out


@dataclass(eq=False)
class Entry:
    tokens: tuple[int, ...]
    key: str
    nbytes: int
    state: bytes | None = None      # None: on disk only
    hashes: list[int] = field(default_factory=list)


@dataclass
class CacheStats:
    hits: int = 0
    hit_tokens: int = 0
    misses: int = 0
    saved: int = 0                  # entries added
    disk_reads: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


#: one lock for every cache of the process and their RAM budget (what it guards is
#: quick bookkeeping; disk reads and engine work happen outside it)
_LOCK = threading.RLock()


class _RamBudget:
    """The RAM of every PromptCache in the process, least recently used out first."""

    def __init__(self, budget: int):
        self.budget = budget
        self.used = 0
        self._lru: OrderedDict[tuple[int, str], tuple[PromptCache, Entry]] = OrderedDict()

    def touch(self, cache: PromptCache, e: Entry) -> None:
        with _LOCK:
            if (id(cache), e.key) in self._lru:
                self._lru.move_to_end((id(cache), e.key), last=True)

    def add(self, cache: PromptCache, e: Entry) -> None:
        with _LOCK:
            self._lru[(id(cache), e.key)] = (cache, e)
            self.used += e.nbytes
            while self.used > self.budget and self._lru:
                _, (c, old) = self._lru.popitem(last=False)
                self.used -= old.nbytes
                c._dropped_from_ram(old)

    def remove(self, cache: PromptCache, e: Entry) -> None:
        with _LOCK:
            if self._lru.pop((id(cache), e.key), None) is not None:
                self.used -= e.nbytes


_RAM = _RamBudget(0)
_CACHES: dict[str, PromptCache] = {}


def prompt_cache_for(fingerprint: str, ram_budget: int,
                     disk: DiskStore | None) -> PromptCache:
    """The process's one PromptCache of an engine fingerprint (the same object
    after an unload and a reload), the RAM budget set to `ram_budget`."""
    with _LOCK:
        _RAM.budget = ram_budget
        cache = _CACHES.get(fingerprint)
        if cache is None:
            cache = _CACHES[fingerprint] = PromptCache(fingerprint, disk)
        elif disk is not None and cache.disk is None:
            cache.attach_disk(disk)
        return cache


@dataclass
class Hit:
    entry: Entry
    n: int          # prompt tokens it gives


class PromptCache:
    """The prefixes cached for one engine fingerprint: in RAM and, with a DiskStore,
    on disk. Thread-safe."""

    def __init__(self, fingerprint: str, disk: DiskStore | None = None):
        self.fingerprint = fingerprint
        self.disk: DiskStore | None = None
        self.stats = CacheStats()
        self._entries: dict[str, Entry] = {}
        self._index: dict[int, set[str]] = {}
        if disk is not None:
            self.attach_disk(disk)

    def attach_disk(self, disk: DiskStore) -> None:
        self.disk = disk
        self._sync_disk()

    # -- finding -------------------------------------------------------------------
    def lookup(self, prompt: Sequence[int]) -> Hit | None:
        """The entry that gives the most leading tokens of `prompt` (never its last
        token, which is always evaluated for fresh logits), or None."""
        if len(prompt) - 1 < MIN_TOKENS:
            return None
        self._sync_disk()
        return self._find(prompt)

    def _find(self, prompt: Sequence[int]) -> Hit | None:
        limit = len(prompt) - 1
        with _LOCK:
            found: set[str] = set()
            for h in block_hashes(prompt, limit):
                keys = self._index.get(h)
                if not keys:
                    break
                found = keys
            best: Hit | None = None
            for key in found:
                e = self._entries[key]
                n = min(common_prefix(e.tokens, prompt), limit)
                if best is None or n > best.n:
                    best = Hit(e, n)
            return best

    def covered(self, tokens: Sequence[int], tail: int = 0) -> bool:
        """Does an entry already hold all of `tokens` but fewer than `tail` of them?"""
        hit = self._find([*tokens, -1])
        return hit is not None and hit.n >= len(tokens) - max(tail - 1, 0)

    def state(self, hit: Hit) -> bytes | None:
        """The state of a found entry, read from disk if RAM no longer holds it
        (None when it is gone or fails its checksum)."""
        e = hit.entry
        if e.state is not None:
            _RAM.touch(self, e)
            return e.state
        data = self.disk.read(e.key, e.tokens) if self.disk is not None else None
        if data is None:
            self._forget(e)
            return None
        self.stats.disk_reads += 1
        with _LOCK:
            if self._entries.get(e.key) is e and e.state is None:
                e.state = data
                _RAM.add(self, e)
        return data

    def count(self, n: int) -> None:
        """A restore gave `n` prompt tokens (0: a miss)."""
        if n:
            self.stats.hits += 1
            self.stats.hit_tokens += n
        else:
            self.stats.misses += 1

    # -- adding -------------------------------------------------------------------
    def add(self, tokens: Sequence[int], state: bytes) -> None:
        """Keep `state`, a sequence holding exactly `tokens`; entries it extends
        are dropped. Written to disk in the background."""
        tokens = tuple(int(t) for t in tokens)
        e = Entry(tokens, token_key(tokens), len(state), state, block_hashes(tokens))
        with _LOCK:
            if e.key in self._entries:
                return
            for old in self._extended_by(tokens):
                self._forget(old, from_disk=True)
            self._insert(e)
            self.stats.saved += 1
        _RAM.add(self, e)
        if self.disk is not None:
            self.disk.write(e.key, tokens, state)

    def _extended_by(self, tokens: tuple[int, ...]) -> list[Entry]:
        out = []
        for h in block_hashes(tokens):
            for key in self._index.get(h, ()):
                e = self._entries[key]
                if len(e.tokens) <= len(tokens) and tokens[:len(e.tokens)] == e.tokens:
                    out.append(e)
        return list({id(e): e for e in out}.values())

    def _insert(self, e: Entry) -> None:
        self._entries[e.key] = e
        for h in e.hashes:
            self._index.setdefault(h, set()).add(e.key)

    def _forget(self, e: Entry, from_disk: bool = False) -> None:
        with _LOCK:
            if self._entries.get(e.key) is not e:
                return
            del self._entries[e.key]
            for h in e.hashes:
                keys = self._index.get(h)
                if keys is not None:
                    keys.discard(e.key)
                    if not keys:
                        del self._index[h]
        if e.state is not None:
            _RAM.remove(self, e)
        if from_disk and self.disk is not None:
            self.disk.delete(e.key)

    def _dropped_from_ram(self, e: Entry) -> None:
        """(the RAM budget evicted it) keep it as a disk-only entry, if on disk."""
        with _LOCK:
            e.state = None
            if self.disk is None or not self.disk.has(e.key):
                self._forget(e)

    def _sync_disk(self) -> None:
        """Entries written to disk by this or another process become findable."""
        if self.disk is None:
            return
        for key, tokens, nbytes in self.disk.new_entries():
            with _LOCK:
                if key not in self._entries and not self.covered(tokens):
                    self._insert(Entry(tokens, key, nbytes, None, block_hashes(tokens)))

    # -- seeing and clearing ---------------------------------------------------------
    def entries(self) -> list[Entry]:
        with _LOCK:
            return list(self._entries.values())

    def ram_bytes(self) -> int:
        with _LOCK:
            return sum(e.nbytes for e in self._entries.values() if e.state is not None)

    def clear(self) -> None:
        for e in self.entries():
            self._forget(e, from_disk=True)

    def summary(self) -> dict:
        return {"entries": len(self._entries), "ram_bytes": self.ram_bytes(),
                "disk_bytes": self.disk.used() if self.disk is not None else 0,
                **self.stats.as_dict()}


# -- opening one -----------------------------------------------------------------

def _budget(text: str, name: str, auto: int) -> int:
    from edge_chat.errors import EdgeChatError
    from edge_chat.system import parse_size
    if str(text).strip().lower() == "auto":
        return auto
    try:
        return max(0, parse_size(text))
    except EdgeChatError:
        raise EdgeChatError(f"--{name} must be a size (e.g. 2GB), auto or 0, not '{text}'",
                            param=name.replace("-", "_")) from None


def check_budgets(ram: str, disk: str) -> None:
    """Bad --cache-ram / --cache-disk values fail before a model loads."""
    _budget(ram, "cache-ram", 0)
    _budget(disk, "cache-disk", 0)


def cache_root(folder: str | None = None) -> Path:
    from edge_chat.system import cache_dir
    return Path(folder).expanduser() if folder else cache_dir() / "prompts"


def open_prompt_cache(engine, ram: str = "auto", disk: str = "auto",
                      folder: str | None = None) -> PromptCache | None:
    """The prompt cache of a loaded engine (None: turned off, or an engine that cannot
    save a sequence's state)."""
    from edge_chat.engines.cache_disk import DiskStore
    from edge_chat.system import available_memory, free_bytes
    ram_bytes = _budget(ram, "cache-ram", min(2 << 30, available_memory() // 8))
    if not ram_bytes or not engine.capabilities.prompt_cache:
        return None
    fp = hashlib.sha256(json.dumps(engine.cache_identity(), sort_keys=True).encode()).hexdigest()
    root = cache_root(folder)
    disk_bytes = _budget(disk, "cache-disk", min(8 << 30, free_bytes(root) // 4))
    store = DiskStore(root, fp, disk_bytes, label=engine.info.name) if disk_bytes else None
    return prompt_cache_for(fp, ram_bytes, store)


# -- what an engine does with it ----------------------------------------------------

def restore_prefix(cache: PromptCache | None, engine, seq: int, kv: KVCache,
                   prompt: Sequence[int], own: int) -> int | None:
    """Bring sequence `seq` (holding `kv`) to the longest prefix of `prompt` the cache
    has, when that beats `own` (the positions its own cache keeps); the positions it
    now holds (0 when a restore failed and left it empty), or None when the cache had
    nothing better and the sequence is untouched."""
    if cache is None:
        return None
    hit = cache.lookup(prompt)
    if hit is None or hit.n <= own:
        if len(prompt) - 1 - own >= MIN_TOKENS:
            cache.count(0)
        return None
    t0 = time.perf_counter()
    state = cache.state(hit)
    if state is None:                   # gone from disk, or damaged: the sequence is untouched
        cache.count(0)
        return None
    n = engine.load_seq_state(seq, state, len(hit.entry.tokens), hit.n)
    cache.count(n)
    kv.trim(0)                          # a failed load may have emptied the sequence
    if not n:
        return 0
    kv.append(hit.entry.tokens[:n])
    log.info("prompt cache: %d of %d prompt tokens restored in %.3f s", n, len(prompt),
             time.perf_counter() - t0)
    return n


def save_prefix(cache: PromptCache | None, engine, seq: int, tokens: Sequence[int]) -> None:
    """Cache the state of sequence `seq`, which holds exactly `tokens`, unless it is
    short or an entry holds all of it but a tail shorter than MIN_TOKENS (another
    question after a cached system prompt: the entry serves its next one as well)."""
    if cache is None or len(tokens) < MIN_TOKENS or cache.covered(tokens, MIN_TOKENS):
        return
    state = engine.seq_state(seq, len(tokens))
    if state:
        cache.add(tokens, state)
