"""Engines: one adapter per backend behind the `Engine` protocol (base.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_chat.errors import EdgeChatError, ModelLoadError, ModelNotFound
from edge_chat.store import model_kind


#: most sequences one context decodes together (llama.cpp's own limit is 256)
MAX_PARALLEL = 256


@dataclass
class EngineOptions:
    """Load options every front-end passes through unchanged."""
    n_ctx: int | None = None
    threads: int | None = None
    gpu_layers: int | str | None = 0      # GGUF: N | "auto"
    vram: str | None = None               # GGUF: budget for --gpu-layers auto
    kv_type: str = "f16"                  # GGUF: f16 | q8_0
    mmap: bool = True                     # GGUF
    provider: str = "cpu"                 # ONNX: execution provider
    speculative: str = "auto"             # auto | lookup | draft | off
    draft: str | None = None              # a draft model (same vocabulary) path
    parallel: int = 1                     # GGUF: sequences decoded together (batch.py)


def check_parallel(n: int) -> None:
    if not 1 <= n <= MAX_PARALLEL:
        raise EdgeChatError(f"--parallel must be between 1 and {MAX_PARALLEL}",
                            param="parallel")


def _is_gguf_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def load_engine(path: Path, options: EngineOptions | None = None):
    """The engine for a model path (a GGUF file or an ONNX model folder), with
    speculative decoding set up as the options ask (a draft model loaded)."""
    from edge_chat.engines.speculative import MODES
    o = options or EngineOptions()
    if o.speculative not in MODES:
        raise EdgeChatError(f"--speculative must be one of {', '.join(MODES)}, "
                            f"not '{o.speculative}'", param="speculative")
    if o.speculative == "draft" and not o.draft:
        raise EdgeChatError("--speculative draft needs --draft MODEL", param="draft")
    check_parallel(o.parallel)
    engine = _load(Path(path), o)
    if engine.capabilities.slots > 1:
        return engine       # batching: no speculative decoding (batch.py)
    engine.speculative = o.speculative
    if o.draft and o.speculative in ("auto", "draft"):
        try:
            draft = _load(Path(o.draft).expanduser(), o)
        except EdgeChatError as e:
            engine.close()
            raise EdgeChatError(f"draft model: {e}", param="draft") from None
        try:
            check_same_vocab(engine, draft)
        except EdgeChatError:
            draft.close()
            engine.close()
            raise
        draft.speculative = "off"
        engine.draft_engine = draft
    return engine


def request_view(engine):
    """The engine as one request should hold it: a batching engine's per-request
    session (its cancel() stops only that request), else the engine itself."""
    return engine.session() if engine.capabilities.slots > 1 else engine


def check_same_vocab(engine, draft) -> None:
    """A draft model must spell every token as the model does."""
    n, m = engine.n_vocab, draft.n_vocab
    probe = range(0, min(n, m), max(1, min(n, m) // 2000))
    if any(engine.token_bytes(t) != draft.token_bytes(t) for t in probe) or \
            engine.tokenize(_PROBE) != draft.tokenize(_PROBE):
        raise EdgeChatError(f"draft model {draft.info.name} has a different vocabulary from "
                            f"{engine.info.name} ({m} vs {n} tokens): it cannot draft for it",
                            param="draft")


_PROBE = "def speculate(x):\n    return x * 2  # the same tokens? <|im_end|>"


def _load(path: Path, o: EngineOptions):
    """The engine for a model path: a GGUF file or an ONNX model folder."""
    if not path.exists():
        raise ModelNotFound(f"model not found: {path}")
    kind = model_kind(path) or ("gguf" if path.is_file() and _is_gguf_file(path) else None)
    if kind == "gguf":
        from edge_chat.engines.gguf import GGUFEngine
        engine = GGUFEngine(path, n_ctx=o.n_ctx, threads=o.threads, gpu_layers=o.gpu_layers,
                            vram=o.vram, kv_type=o.kv_type, mmap=o.mmap, n_seq=o.parallel)
        if o.parallel == 1:
            return engine
        from edge_chat.engines.batch import BatchEngine
        return BatchEngine(engine)
    if kind == "onnx":
        from edge_chat.engines.onnx import OnnxEngine
        return OnnxEngine(path, n_ctx=o.n_ctx, threads=o.threads, provider=o.provider)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder without model.onnx: not an ONNX model")
    raise ModelLoadError(f"{path} is not a GGUF file (no GGUF magic) nor an ONNX model folder")
