"""Session fixture: the tiny model's draft model (tests/tiny_draft.py) as an f16 GGUF.

    tiny_draft_gguf -> Path

Cached beside the tiny HF folder under a hash of tiny_draft.py and the GGUF converter,
built in a temporary folder and renamed into place (under a lock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures_tiny import _build_once, _converter_key, _hash

_HERE = Path(__file__).resolve().parent

__all__ = ["tiny_draft_gguf"]


@pytest.fixture(scope="session")
def tiny_draft_gguf(tiny_hf: Path) -> Path:
    from edge_chat.convert.gguf import convert_to_gguf
    from tests.tiny_draft import build_tiny_draft

    key = _hash((_HERE / "tiny_draft.py").read_bytes(), _converter_key().encode())
    folder = tiny_hf.parent / f"draft-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    hf = _build_once(folder / "hf", lambda tmp: build_tiny_draft(tiny_hf, tmp / "hf"))

    def build(tmp: Path) -> Path:
        return Path(convert_to_gguf(hf, "f16", tmp / "tiny-draft-f16.gguf").output)

    return _build_once(folder / "tiny-draft-f16.gguf", build)
