"""The real models: their file names and where they are (no fixtures here; those are in
tests/fixtures/real.py).

The models are fetched by ../shared/models/get-real-models (add --hf for the HF folder) into
$EDGE_CHAT_REAL_MODELS or ~/.cache/edge-chat-real-models. Absent models skip, never fail.
"""

from __future__ import annotations

import os
from pathlib import Path

QWEN_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
GEMMA_GGUF = "gemma-3-270m-q4_k_m.gguf"
QWEN_HF = "qwen2.5-coder-0.5b-instruct-hf"
REAL_GGUFS = (QWEN_GGUF, GEMMA_GGUF)
REAL_MODEL_NAMES = (QWEN_GGUF, GEMMA_GGUF, QWEN_HF)

# <repo>/../shared/models/get-real-models (this file is <repo>/tests/support/real_models.py)
_SCRIPT_PATH = Path(__file__).resolve().parents[3] / "shared" / "models" / "get-real-models"
_SCRIPT = str(_SCRIPT_PATH) if _SCRIPT_PATH.exists() else "../shared/models/get-real-models"


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


def missing_reason(names: list[str]) -> str:
    """The skip message for real models that are not there."""
    hf = " --hf" if QWEN_HF in names else ""
    return (f"real model(s) {', '.join(names)} not in {real_models_dir()} "
            f"(set $EDGE_CHAT_REAL_MODELS or run {_SCRIPT}{hf})")
