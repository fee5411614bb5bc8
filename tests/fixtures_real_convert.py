"""The real Qwen HF folder converted by `edge_chat convert`, cached like the tiny
fixtures: $EDGE_CHAT_TEST_CACHE/real-<hash of the converters>/<name>."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_tiny import _build_once, _hash, tiny_cache_root

_REPO = Path(__file__).resolve().parent.parent

__all__ = ["real_qwen_converted"]


def _key(hf: Path) -> str:
    from importlib import metadata
    conv = _REPO / "edge_chat" / "convert"
    srcs = [*sorted(conv.glob("onnx*.py")), conv / "gguf.py", conv / "common.py"]
    versions = [metadata.version(d) for d in ("llama-cpp-python", "onnxruntime", "optimum-onnx")]
    return _hash(*(p.read_bytes() for p in srcs if p.is_file()),
                 *(v.encode() for v in versions), (hf / "config.json").read_bytes())


class Converted:
    """Conversions made on first use: .get("gguf", "q8_0") → Path."""

    def __init__(self, hf: Path):
        self.hf = hf
        self.folder = tiny_cache_root() / f"real-{_key(hf)}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, to: str, quant: str) -> Path:
        if to == "gguf":
            from edge_chat.convert.gguf import convert_to_gguf as convert
            name = f"qwen-{quant}.gguf"
        else:
            from edge_chat.convert.onnx import convert_to_onnx as convert
            name = f"qwen-onnx-{quant}"
        return _build_once(self.folder / name,
                           lambda tmp: Path(convert(self.hf, quant, tmp / name).output))


@pytest.fixture(scope="session")
def real_qwen_converted(real_qwen_hf) -> Converted:
    return Converted(real_qwen_hf)
