"""The tiny trained chat model (tests/support/tiny_model.py) built and converted, cached
(see tests/support/cache.py); the fixtures in tests/fixtures/ return these, and they are
usable outside pytest too (benchmarks):

    tiny-<hash of tiny_model.py>/hf/
    tiny-<same>/gguf-<hash of the GGUF converter source + llama_cpp version>/tiny-<quant>.gguf
    tiny-<same>/onnx-<hash of the ONNX converter source + onnxruntime/optimum versions>/
        tiny-onnx-<quant>/
    tiny-<same>/draft-<hash of tiny_draft.py + the GGUF converter key>/hf/, tiny-draft-f16.gguf
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tests.support.cache import CONVERT_DIR, build_once, cache_root, content_hash
from tests.support.tiny_model import build_tiny_hf

TINY_QUANTS = ("f16", "q8_0", "q4_k_m")
ONNX_TEST_QUANTS = ("fp32", "int8", "int4")

_HERE = Path(__file__).resolve().parent


def _model_key() -> str:
    return content_hash((_HERE / "tiny_model.py").read_bytes())


def gguf_converter_key() -> str:
    """GGUFs depend on the converter and on llama.cpp's quantizer, not only on the model."""
    import llama_cpp
    srcs = [CONVERT_DIR / n for n in ("to_gguf.py", "common.py")]
    return content_hash(*(p.read_bytes() for p in srcs if p.is_file()),
                        llama_cpp.__version__.encode())


def onnx_converter_key() -> str:
    from importlib import metadata
    srcs = [*sorted(CONVERT_DIR.glob("*onnx*.py")), CONVERT_DIR / "common.py"]
    versions = [metadata.version(d) for d in ("onnxruntime", "optimum-onnx", "onnx")]
    return content_hash(*(p.read_bytes() for p in srcs if p.is_file()),
                        *(v.encode() for v in versions))


def tiny_hf_dir() -> Path:
    """Build (or reuse) the tiny HF folder."""
    final = cache_root() / f"tiny-{_model_key()}" / "hf"
    final.parent.mkdir(parents=True, exist_ok=True)
    return build_once(final, lambda tmp: build_tiny_hf(tmp / "hf"))


def tiny_gguf_files(hf: Path, quants=TINY_QUANTS) -> dict[str, Path]:
    from edge_chat.convert.to_gguf import convert_to_gguf

    folder = hf.parent / f"gguf-{gguf_converter_key()}"
    folder.mkdir(parents=True, exist_ok=True)

    def make(quant: str) -> Callable[[Path], Path]:
        def build(tmp: Path) -> Path:
            res = convert_to_gguf(hf, quant, tmp / f"tiny-{quant}.gguf")
            out = Path(res.output)
            if not out.is_file() or out.stat().st_size == 0:
                raise RuntimeError(f"convert_to_gguf({quant}) produced no file at {out}")
            return out
        return build

    return {q: build_once(folder / f"tiny-{q}.gguf", make(q)) for q in quants}


def tiny_onnx_dirs(hf: Path, quants=ONNX_TEST_QUANTS, optimum: bool = False) -> dict[str, Path]:
    """Build (or reuse) the ONNX exports of the tiny HF folder."""
    from edge_chat.convert.to_onnx import convert_to_onnx

    folder = hf.parent / f"onnx-{onnx_converter_key()}"
    folder.mkdir(parents=True, exist_ok=True)

    def make(quant: str, graph: str = "auto"):
        def build(tmp: Path) -> Path:
            res = convert_to_onnx(hf, quant, tmp / f"tiny-onnx-{quant}", graph=graph)
            if not (res.output / "model.onnx").is_file():
                raise RuntimeError(f"convert_to_onnx({quant}) wrote no model.onnx")
            return res.output
        return build

    dirs = {q: build_once(folder / f"tiny-onnx-{q}", make(q)) for q in quants}
    if optimum:
        dirs["fp32-optimum"] = build_once(folder / "tiny-onnx-fp32-optimum",
                                          make("fp32", "optimum"))
    return dirs


def tiny_draft_gguf_file(tiny_hf: Path) -> Path:
    """The draft model (tests/support/tiny_draft.py) of the tiny HF folder as an f16 GGUF."""
    from edge_chat.convert.to_gguf import convert_to_gguf
    from tests.support.tiny_draft import build_tiny_draft

    key = content_hash((_HERE / "tiny_draft.py").read_bytes(), gguf_converter_key().encode())
    folder = tiny_hf.parent / f"draft-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    hf = build_once(folder / "hf", lambda tmp: build_tiny_draft(tiny_hf, tmp / "hf"))

    def build(tmp: Path) -> Path:
        return Path(convert_to_gguf(hf, "f16", tmp / "tiny-draft-f16.gguf").output)

    return build_once(folder / "tiny-draft-f16.gguf", build)
