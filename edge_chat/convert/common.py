"""What every converter shares: the source folder, atomic output, the summary."""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from edge_chat.errors import ConvertError
from edge_chat.store.paths import path_size

#: progress callback: (stage description, fraction 0..1 or None)
Progress = Callable[[str, "float | None"], None]


def no_progress(stage: str, frac: float | None = None) -> None:
    pass


@dataclass
class ConvertResult:
    output: Path
    format: str
    quant: str
    source_bytes: int
    output_bytes: int
    seconds: float
    fallbacks: list[str] = field(default_factory=list)   # tensors kept at another type
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.source_bytes / self.output_bytes if self.output_bytes else 0.0


def weights_size(folder: Path) -> int:
    """Bytes of the weight files of an HF folder."""
    pats = ("*.safetensors", "*.bin", "*.pt", "*.pth")
    return sum(p.stat().st_size for pat in pats for p in folder.glob(pat)) or path_size(folder)


def read_hf_config(folder: Path) -> dict:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ConvertError(f"{folder} has no config.json: not a Hugging Face model folder")
    try:
        return json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        raise ConvertError(f"{cfg} is not valid JSON: {e}") from None


def resolve_source(src: str) -> Path:
    """A local HF folder, or a hub id downloaded (only when online)."""
    p = Path(src).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ConvertError(f"{src} is a file; convert takes a Hugging Face model folder")
        read_hf_config(p)
        return p
    if src.count("/") != 1 or src.startswith((".", "/", "~")):
        raise ConvertError(f"{src}: no such folder (and not a hub id like 'org/name')")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConvertError("downloading needs huggingface_hub: pip install 'edge-chat[convert]'") from None
    try:
        return Path(snapshot_download(src, allow_patterns=[
            "*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken", "*.jinja"]))
    except Exception as e:  # offline, unknown repo, gated...
        raise ConvertError(
            f"cannot download '{src}' from the hub ({type(e).__name__}); offline? "
            f"download it elsewhere and pass the local folder: edge_chat convert ./{src.split('/')[-1]} ...") from None


def model_basename(folder: Path) -> str:
    """The store name of a source folder; for a hub download
    (`.../models--org--name/snapshots/<commit>`) the repository's name."""
    from edge_chat.store.paths import slug
    folder = folder.resolve()
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):
        return slug(folder.parent.parent.name.split("--")[-1])
    return slug(folder.name)


@contextmanager
def temp_dir(near: Path) -> Iterator[Path]:
    """A scratch folder beside `near` (same disk), always removed."""
    near.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix=".edge_chat-", dir=near))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (tools' errors can be pages long)."""
    lines = str(e).strip().splitlines()
    return lines[0][:300] if lines else ""
