"""Session fixtures for the tiny trained chat model (see tests/tiny_model.py).

    tiny_hf    -> Path       Hugging Face folder (safetensors, tokenizer.model/.json, ChatML)
    tiny_gguf  -> dict[str, Path]   {"f16": ..., "q8_0": ..., "q4_k_m": ...} made by
                  edge_chat.convert.gguf.convert_to_gguf
    tiny_qa    -> list[QA]   TRAINED_QA: QA(messages, answer) the model answers greedily

Everything is cached across sessions under $EDGE_CHAT_TEST_CACHE (default
~/.cache/edge-chat-tests/):

    tiny-<hash of tiny_model.py>/hf/
    tiny-<same>/gguf-<hash of the converter source + llama_cpp version>/tiny-<quant>.gguf

Each item is built in a temporary folder beside its final place and renamed into place, so
an interrupted build never leaves a half folder; a lock file keeps parallel sessions (other
engineers, xdist workers) from building the same thing twice.
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

import pytest

from tests.tiny_model import TRAINED_QA, build_tiny_hf

TINY_QUANTS = ("f16", "q8_0", "q4_k_m")

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parent

__all__ = ["tiny_hf", "tiny_gguf", "tiny_qa", "TINY_QUANTS", "tiny_cache_root", "tiny_hf_dir"]


def tiny_cache_root() -> Path:
    env = os.environ.get("EDGE_CHAT_TEST_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-chat-tests"


def _hash(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def _model_key() -> str:
    return _hash((_HERE / "tiny_model.py").read_bytes())


def _converter_key() -> str:
    """GGUFs depend on the converter and on llama.cpp's quantizer, not only on the model."""
    import llama_cpp
    srcs = [(_REPO / "edge_chat" / "convert" / n) for n in ("gguf.py", "common.py")]
    return _hash(*(p.read_bytes() for p in srcs if p.is_file()),
                 llama_cpp.__version__.encode())


@contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_once(final: Path, build: Callable[[Path], Path]) -> Path:
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


def tiny_hf_dir() -> Path:
    """Build (or reuse) the tiny HF folder; usable outside pytest too."""
    final = tiny_cache_root() / f"tiny-{_model_key()}" / "hf"
    final.parent.mkdir(parents=True, exist_ok=True)
    return _build_once(final, lambda tmp: build_tiny_hf(tmp / "hf"))


def tiny_gguf_files(hf: Path, quants=TINY_QUANTS) -> dict[str, Path]:
    from edge_chat.convert.gguf import convert_to_gguf

    folder = hf.parent / f"gguf-{_converter_key()}"
    folder.mkdir(parents=True, exist_ok=True)

    def make(quant: str) -> Callable[[Path], Path]:
        def build(tmp: Path) -> Path:
            res = convert_to_gguf(hf, quant, tmp / f"tiny-{quant}.gguf")
            out = Path(res.output)
            if not out.is_file() or out.stat().st_size == 0:
                raise RuntimeError(f"convert_to_gguf({quant}) produced no file at {out}")
            return out
        return build

    return {q: _build_once(folder / f"tiny-{q}.gguf", make(q)) for q in quants}


@pytest.fixture(scope="session")
def tiny_hf() -> Path:
    """The tiny trained Llama chat model as a Hugging Face folder (cached)."""
    return tiny_hf_dir()


@pytest.fixture(scope="session")
def tiny_gguf(tiny_hf: Path) -> dict[str, Path]:
    """{"f16", "q8_0", "q4_k_m"} -> GGUF file of the tiny model, via convert_to_gguf (cached)."""
    return tiny_gguf_files(tiny_hf)


@pytest.fixture(scope="session")
def tiny_qa():
    """The conversations the tiny model answers greedily: list of QA(messages, answer)."""
    return TRAINED_QA
