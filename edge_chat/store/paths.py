"""The local model store: a folder of GGUF files and ONNX model folders."""

from __future__ import annotations

import glob
import os
import re
from pathlib import Path

from edge_chat.errors import ModelLoadError, ModelNotFound, printable
from edge_chat.system import tree_size

#: longest file name most file systems take (NAME_MAX), in bytes
MAX_NAME_BYTES = 255
#: longest path we try to open (PATH_MAX)
MAX_PATH_BYTES = 4096


#: the model `edge_chat chat` suggests when the store is empty: small, chat-tuned, Q4_K_M ~490 MB
DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"

#: a part of a split GGUF: llama.cpp loads `NAME-00001-of-00003.gguf` and finds the rest beside it
SPLIT_RE = re.compile(r"^(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


def store_choice() -> tuple[Path, str]:
    """The store and why: `$EDGE_CHAT_MODELS`, else `./models` when it exists (the
    repository layout), else the per-user data folder (`.../edge_chat/models`)."""
    env = os.environ.get("EDGE_CHAT_MODELS")
    if env:
        return Path(env).expanduser(), "$EDGE_CHAT_MODELS"
    if Path("models").is_dir():
        return Path("models"), "./models in this folder"
    from platformdirs import user_data_dir
    return Path(user_data_dir("edge_chat", appauthor=False)) / "models", "the per-user store"


def models_dir() -> Path:
    return store_choice()[0]


def slug(name: str) -> str:
    """A store name from a model name: lower case, safe characters only."""
    s = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower()).strip("-.")
    return s or "model"


def model_kind(path: Path) -> str | None:
    """'gguf' for a .gguf file, 'onnx' for a folder with model.onnx, else None."""
    if path.is_file() and path.suffix.lower() == ".gguf":
        return "gguf"
    if path.is_dir() and (path / "model.onnx").is_file():
        return "onnx"
    return None


def list_models(root: Path | None = None) -> list[Path]:
    root = root or models_dir()
    if not root.is_dir():
        return []
    out = [p for p in sorted(root.iterdir())
           if not p.name.startswith(".") and model_kind(p) is not None and _split_index(p) <= 1]
    return out


def _split_index(path: Path) -> int:
    """1-based part number of a split GGUF file, 0 for a whole file or a folder."""
    m = SPLIT_RE.match(path.name)
    return int(m["index"]) if m and path.is_file() else 0


def model_files(path: Path) -> list[Path]:
    """Every file or folder a model is made of: all parts of a split GGUF (named by
    its first part), else the path itself."""
    m = SPLIT_RE.match(path.name)
    if not m or not path.is_file():
        return [path]
    parts = (path.with_name(f"{m['prefix']}-{i:05d}-of-{m['count']}.gguf")
             for i in range(1, int(m["count"]) + 1))
    return [p for p in parts if p.exists()]


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def check_name(name: str) -> None:
    """A store name, checked before the file system sees it: at most 255 bytes, no
    control characters, no path (ModelNotFound naming the problem)."""
    if not isinstance(name, str) or not name:
        raise ModelNotFound("the model name is empty")
    if _nbytes(name) + 5 > MAX_NAME_BYTES:          # + ".gguf"
        raise ModelNotFound(f"the model name is too long: {_nbytes(name)} bytes "
                            f"(at most {MAX_NAME_BYTES - 5})")
    if any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise ModelNotFound(f"the model name '{printable(name, 80)}' contains control characters")
    if name.startswith(".") or "/" in name or "\\" in name:
        raise ModelNotFound(f"model '{printable(name, 80)}' not found: a store name has no "
                            "path and does not start with '.'")


def check_path(spec: str) -> None:
    """A path given on the command line, checked before the file system sees it."""
    if "\x00" in spec or any(0xD800 <= ord(c) <= 0xDFFF for c in spec):
        raise ModelNotFound(f"'{printable(spec, 80)}' is not a valid path or model name")
    if _nbytes(spec) > MAX_PATH_BYTES or any(_nbytes(p) > MAX_NAME_BYTES
                                             for p in spec.split(os.sep)):
        raise ModelNotFound(f"'{printable(spec, 60)}' is not a model: the name or path is too "
                            f"long ({_nbytes(spec)} bytes; a name takes at most {MAX_NAME_BYTES})")


def find_in_store(name: str, root: Path | None = None) -> Path:
    """A model by store name only (no paths): `name`, `name.gguf`. The name
    cannot escape the store. Raises ModelNotFound."""
    root = root or models_dir()
    check_name(name)
    for cand in (root / name, root / f"{name}.gguf", *sorted(root.glob(
            f"{glob.escape(name)}-00001-of-[0-9][0-9][0-9][0-9][0-9].gguf"))):
        if model_kind(cand):
            return cand
    raise ModelNotFound(f"model '{printable(name, 80)}' not found in the store {root}")


def resolve_model(spec: str | None, root: Path | None = None) -> Path:
    """A path (file or folder) or a store name; None → the store's only model."""
    root = root or models_dir()
    if spec is None:
        models = list_models(root)
        if len(models) == 1:
            return models[0]
        if not models:
            raise ModelNotFound(f"no model in the store {root}: {empty_store_hint()}", param=None)
        names = ", ".join(model_name(m) for m in models)
        raise ModelNotFound(f"several models in the store, name one: {names}", param=None)
    check_path(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "model.onnx").exists():
            raise ModelNotFound(f"{path} is a folder without model.onnx: not an ONNX model")
        return path
    if os.sep in spec or spec.endswith(".gguf"):
        raise ModelNotFound(f"model file not found: {spec}")
    return find_in_store(spec, root)


def empty_store_hint() -> str:
    """The one command that gets a good small model into an empty store."""
    return (f"get a small chat model with 'edge_chat pull {DEFAULT_MODEL}' "
            "(or convert your own: 'edge_chat convert HF_FOLDER')")


def path_size(path: Path) -> int:
    """Bytes of a stored model: every part of a split GGUF, or the whole folder."""
    if path.is_file():
        return sum(p.stat().st_size for p in model_files(path))
    return tree_size(path)


def model_name(path: Path) -> str:
    m = SPLIT_RE.match(path.name)
    if m:
        return m["prefix"]
    return path.name[:-5] if path.name.lower().endswith(".gguf") else path.name


def describe(path: Path) -> dict:
    """Name, format, quant, size, arch, context, template of a stored model,
    read from the file's metadata without loading weights."""
    import json

    kind = model_kind(path) or ("gguf" if has_gguf_magic(path) else None)
    if kind is None:
        raise ModelLoadError(f"{path} is not a model: neither a GGUF file nor an ONNX folder "
                             "(with model.onnx)")
    row = {"name": model_name(path), "path": str(path), "format": kind,
           "size_bytes": path_size(path)}
    if kind == "gguf":
        from edge_chat.store.gguf_check import check_gguf
        from edge_chat.store.gguf_file import read_gguf
        g = read_gguf(path)
        check_gguf(g)
        n_params = g.n_params + sum(read_gguf(p).n_params or 0 for p in model_files(path)[1:])
        row.update(quant=g.quant_name, arch=g.arch, context=g.context_length,
                   n_params=n_params, n_layers=g.n_layers,
                   chat_template=g.chat_template is not None, general_name=g.name)
    elif kind == "onnx":
        manifest = path / "edge_chat.json"
        try:
            m = json.loads(manifest.read_text()) if manifest.is_file() else {}
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{manifest} is not valid JSON: {e}") from None
        if not isinstance(m, dict):
            raise ModelLoadError(f"{manifest} is not a JSON object")
        row.update(quant=m.get("quant", "?"), arch=m.get("arch", "?"),
                   context=m.get("context_length"), n_params=m.get("n_params"),
                   n_layers=m.get("n_layers"), source=m.get("source"),
                   chat_template=bool(m.get("chat_template")) or _onnx_has_template(path))
    return row


def has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _onnx_has_template(path: Path) -> bool:
    import json
    cfg = path / "tokenizer_config.json"
    try:
        data = json.loads(cfg.read_text())
        return bool(isinstance(data, dict) and data.get("chat_template")) or \
            (path / "chat_template.jinja").is_file()
    except (OSError, ValueError):
        return False
