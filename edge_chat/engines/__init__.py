"""Engines: one adapter per backend behind the `Engine` protocol (base.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from edge_chat.errors import EdgeChatError, ModelLoadError, ModelNotFound
from edge_chat.store.paths import has_gguf_magic, model_kind


def _opt(default, flags: str, help: str, cli_type: type | None = None):
    """An engine option with the command-line flag(s) that set it: `flags` is
    "--name" or "--name/-n" (or "--on/--off" for a switch); `cli_type` is the
    type the command line parses (default: the type of `default`)."""
    return field(default=default, metadata={"flags": flags, "help": help,
                                            "cli_type": cli_type or type(default)})


#: most sequences one context decodes together (llama.cpp's own limit is 256)
MAX_PARALLEL = 256


@dataclass
class EngineOptions:
    """Load options every front-end passes through unchanged. Each field declares
    its command-line flag: the CLI generates the same options for every command
    that loads a model (cli.app.engine_options)."""
    n_ctx: int | None = _opt(None, "--ctx-size/-c", "Context window (default: min(trained, "
                             "4096)).", Optional[int])
    threads: int | None = _opt(None, "--threads/-t", "CPU threads (default: physical cores).",
                               Optional[int])
    gpu_layers: int | str | None = _opt("0", "--gpu-layers", "GGUF: layers on the GPU: N or "
                                        "'auto' (with --vram).")
    vram: str | None = _opt(None, "--vram", "GGUF: GPU memory budget for --gpu-layers auto, "
                            "e.g. 4GB.", Optional[str])
    kv_type: str = _opt("f16", "--kv-type", "GGUF: KV cache type: f16 or q8_0.")
    mmap: bool = _opt(True, "--mmap/--no-mmap", "GGUF: memory-map the weights.")
    provider: str = _opt("cpu", "--provider", "ONNX: execution provider (cpu, cuda, ...).")
    speculative: str = _opt("auto", "--speculative", "Speculative decoding: auto, lookup "
                            "(prompt lookup), draft (--draft model) or off.")
    draft: str | None = _opt(None, "--draft", "A small draft model with the same vocabulary "
                             "(GGUF file, ONNX folder or store name) for speculative decoding.",
                             Optional[str])
    cache_ram: str = _opt("auto", "--cache-ram", "Prompt cache in RAM: a size (e.g. 2GB), "
                          "auto (an eighth of the memory, at most 2 GB) or 0 for none.")
    cache_disk: str = _opt("auto", "--cache-disk", "Prompt cache on disk: a size, auto (a "
                           "quarter of the free space, at most 8 GB) or 0 for RAM only.")
    cache_dir: str | None = _opt(None, "--cache-dir", "Prompt cache folder (default: "
                                 "$EDGE_CHAT_CACHE/prompts, else ~/.cache/edge_chat/prompts).",
                                 Optional[str])
    #: sequences decoded together (continuous batching, batch.py); set by `serve
    #: --parallel`, so no generic flag
    parallel: int = 1


def check_parallel(n: int) -> None:
    if not 1 <= n <= MAX_PARALLEL:
        raise EdgeChatError(f"--parallel must be between 1 and {MAX_PARALLEL}",
                            param="parallel")


def import_engines(paths) -> None:
    """Import the engine modules (and their runtimes: llama.cpp, onnxruntime, tokenizers)
    that the model `paths` need, so that a first load later does not pay for the imports
    (serve runs this in the background at start). Import errors surface at the load."""
    kinds = {model_kind(p) or ("gguf" if Path(p).is_file() else None) for p in paths}
    try:
        if "gguf" in kinds:
            from edge_chat.engines.gguf.engine import _llama
            _llama()
        if "onnx" in kinds:
            import edge_chat.engines.onnx.engine  # noqa: F401
            import tokenizers  # noqa: F401
        from edge_chat.engines.prompt_cache import open_prompt_cache  # noqa: F401
    except Exception:  # noqa: BLE001  the real load reports it
        pass


def load_engine(path: Path, options: EngineOptions | None = None, *, probe: bool = True):
    """The engine for a model path (a GGUF file or an ONNX model folder), with
    speculative decoding set up as the options ask (a draft model loaded). `probe`: the
    first load of a file runs in a child process first (probe.py), so that a file that
    crashes the engine costs a ModelLoadError, not this process."""
    from edge_chat.engines.speculative import MODES
    o = options or EngineOptions()
    if o.speculative not in MODES:
        raise EdgeChatError(f"--speculative must be one of {', '.join(MODES)}, "
                            f"not '{o.speculative}'", param="speculative")
    if o.speculative == "draft" and not o.draft:
        raise EdgeChatError("--speculative draft needs --draft MODEL", param="draft")
    check_parallel(o.parallel)
    from edge_chat.engines.prompt_cache import check_budgets
    check_budgets(o.cache_ram, o.cache_disk)
    engine = _load(Path(path), o, probe)
    engine.speculative = o.speculative
    if engine.capabilities.slots > 1:
        return engine       # batching drafts lookups and predictions, not a draft model
    if o.draft and o.speculative in ("auto", "draft"):
        try:
            draft = _load(Path(o.draft).expanduser(), o, probe)
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


def _load(path: Path, o: EngineOptions, probe: bool):
    """The engine for a model path: a GGUF file or an ONNX model folder."""
    if not path.exists():
        raise ModelNotFound(f"model not found: {path}")
    kind = model_kind(path) or ("gguf" if path.is_file() and has_gguf_magic(path) else None)
    header = None
    if kind == "gguf":
        from edge_chat.store.gguf_check import check_gguf
        from edge_chat.store.gguf_file import read_gguf
        header = read_gguf(path)
        check_gguf(header)
    if kind is not None and probe:
        from edge_chat.engines.probe import ensure_loadable
        from edge_chat.store.paths import model_name
        ensure_loadable(path, model_name(path), o)
    if kind == "gguf":
        from edge_chat.engines.gguf.engine import GGUFEngine
        engine = GGUFEngine(path, n_ctx=o.n_ctx, threads=o.threads, gpu_layers=o.gpu_layers,
                            vram=o.vram, kv_type=o.kv_type, mmap=o.mmap, n_seq=o.parallel,
                            header=header)
    elif kind == "onnx":
        from edge_chat.engines.onnx.engine import OnnxEngine
        engine = OnnxEngine(path, n_ctx=o.n_ctx, threads=o.threads, provider=o.provider,
                            n_seq=o.parallel)
    if kind is not None:
        from edge_chat.engines.prompt_cache import open_prompt_cache
        try:
            engine.prompt_cache = open_prompt_cache(engine, o.cache_ram, o.cache_disk,
                                                    o.cache_dir)
        except EdgeChatError:
            engine.close()
            raise
        if engine.n_seq == 1:       # one sequence asked for, or an engine that cannot batch
            return engine
        from edge_chat.engines.batch import BatchEngine
        return BatchEngine(engine)
    if path.is_dir():
        raise ModelLoadError(f"{path} is a folder without model.onnx: not an ONNX model")
    raise ModelLoadError(f"{path} is not a GGUF file (no GGUF magic) nor an ONNX model folder")
