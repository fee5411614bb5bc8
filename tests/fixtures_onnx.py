"""Session fixture for the tiny trained model exported to ONNX.

    tiny_onnx -> dict[str, Path]   {"fp32": ..., "int8": ..., "int4": ...} ONNX model
                 folders made by edge_chat.convert.onnx.convert_to_onnx from `tiny_hf`
                 (the fused graph with a shared KV buffer)
    tiny_onnx_optimum -> Path      fp32 through optimum's graph (growing KV cache)

Cached beside the tiny HF folder (see tests/fixtures_tiny.py):

    tiny-<model hash>/onnx-<hash of the converter source + onnxruntime/optimum versions>/
        tiny-onnx-<quant>/

each built in a temporary folder and renamed into place (under a lock), so an
interrupted build never leaves a half folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_tiny import _build_once, _hash

ONNX_TEST_QUANTS = ("fp32", "int8", "int4")

_REPO = Path(__file__).resolve().parent.parent

__all__ = ["ONNX_TEST_QUANTS", "tiny_onnx", "tiny_onnx_dirs", "tiny_onnx_optimum"]


def _converter_key() -> str:
    from importlib import metadata
    conv = _REPO / "edge_chat" / "convert"
    srcs = [*sorted(conv.glob("onnx*.py")), conv / "common.py"]
    versions = [metadata.version(d) for d in ("onnxruntime", "optimum-onnx", "onnx")]
    return _hash(*(p.read_bytes() for p in srcs if p.is_file()),
                 *(v.encode() for v in versions))


def tiny_onnx_dirs(hf: Path, quants=ONNX_TEST_QUANTS, optimum: bool = False) -> dict[str, Path]:
    """Build (or reuse) the ONNX exports of the tiny HF folder; usable outside pytest."""
    from edge_chat.convert.onnx import convert_to_onnx

    folder = hf.parent / f"onnx-{_converter_key()}"
    folder.mkdir(parents=True, exist_ok=True)

    def make(quant: str, graph: str = "auto"):
        def build(tmp: Path) -> Path:
            res = convert_to_onnx(hf, quant, tmp / f"tiny-onnx-{quant}", graph=graph)
            if not (res.output / "model.onnx").is_file():
                raise RuntimeError(f"convert_to_onnx({quant}) wrote no model.onnx")
            return res.output
        return build

    dirs = {q: _build_once(folder / f"tiny-onnx-{q}", make(q)) for q in quants}
    if optimum:
        dirs["fp32-optimum"] = _build_once(folder / "tiny-onnx-fp32-optimum",
                                           make("fp32", "optimum"))
    return dirs


@pytest.fixture(scope="session")
def tiny_onnx(tiny_hf: Path) -> dict[str, Path]:
    """{"fp32", "int8", "int4"} -> ONNX folder of the tiny model (cached)."""
    return tiny_onnx_dirs(tiny_hf)


@pytest.fixture(scope="session")
def tiny_onnx_optimum(tiny_hf: Path) -> Path:
    """The tiny model in fp32 through optimum's graph (the growing KV cache layout)."""
    return tiny_onnx_dirs(tiny_hf, quants=(), optimum=True)["fp32-optimum"]
