"""Session fixtures for the real models (tests using them should be marked `real_model`).

The models are fetched by ../shared/models/get-real-models (add --hf for the HF folder) into
$EDGE_CHAT_REAL_MODELS or ~/.cache/edge-chat-real-models. Absent models skip, never fail.

    real_models     -> dict[str, Path]  every model present; skips unless both GGUFs are
    real_qwen_gguf  -> Path  qwen2.5-coder-0.5b-instruct-q4_k_m.gguf (ChatML, instruct)
    real_gemma_gguf -> Path  gemma-3-270m-q4_k_m.gguf (base model, no chat template)
    real_qwen_hf    -> Path  qwen2.5-coder-0.5b-instruct-hf/ (needs get-real-models --hf)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

QWEN_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
QWEN_HF = "qwen2.5-coder-0.5b-instruct-hf"
REAL_GGUFS = (QWEN_GGUF, GEMMA_GGUF)
REAL_MODEL_NAMES = (QWEN_GGUF, GEMMA_GGUF, QWEN_HF)

_SCRIPT_PATH = Path(__file__).resolve().parents[2] / "shared" / "models" / "get-real-models"
_SCRIPT = str(_SCRIPT_PATH) if _SCRIPT_PATH.exists() else "../shared/models/get-real-models"

__all__ = ["real_models", "real_qwen_gguf", "real_gemma_gguf", "real_qwen_hf",
           "real_models_dir", "find_real_models", "QWEN_GGUF", "GEMMA_GGUF", "QWEN_HF"]


def real_models_dir() -> Path:
    env = os.environ.get("EDGE_CHAT_REAL_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edge-chat-real-models"


def _present(path: Path) -> bool:
    if path.suffix == ".gguf":
        return path.is_file() and path.stat().st_size > 0
    return (path / "config.json").is_file() and any(path.glob("*.safetensors"))


def find_real_models() -> dict[str, Path]:
    """name -> Path for each real model present (no skipping; for scripts and benchmarks)."""
    d = real_models_dir()
    return {n: d / n for n in REAL_MODEL_NAMES if _present(d / n)}


def _skip_reason(names: list[str]) -> str:
    hf = " --hf" if QWEN_HF in names else ""
    return (f"real model(s) {', '.join(names)} not in {real_models_dir()} "
            f"(set $EDGE_CHAT_REAL_MODELS or run {_SCRIPT}{hf})")


def _one(name: str) -> Path:
    found = find_real_models()
    if name not in found:
        pytest.skip(_skip_reason([name]))
    return found[name]


@pytest.fixture(scope="session")
def real_models() -> dict[str, Path]:
    """Every real model present, name -> Path. Skips unless both GGUF files are present;
    the HF folder is included only when it was fetched (use real_qwen_hf to require it)."""
    found = find_real_models()
    missing = [n for n in REAL_GGUFS if n not in found]
    if missing:
        pytest.skip(_skip_reason(missing))
    return found


@pytest.fixture(scope="session")
def real_qwen_gguf() -> Path:
    return _one(QWEN_GGUF)


@pytest.fixture(scope="session")
def real_gemma_gguf() -> Path:
    return _one(GEMMA_GGUF)


@pytest.fixture(scope="session")
def real_qwen_hf() -> Path:
    return _one(QWEN_HF)
