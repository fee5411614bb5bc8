"""`edge_chat pull`: a hub repo into the store, and hub ids found again afterwards.

Files are fetched into a hidden staging folder in the store (`.pull/...`, kept when a
download is interrupted so the next pull resumes) and renamed into place once complete
and checked: a model appears in the store whole or not at all."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from edge_chat.atomic import atomic_path, write_json_atomic
from edge_chat.errors import ModelNotFound, PullError
from edge_chat.hub.repo import Choice, Repo, list_repo, norm_quant, offers, parse_spec, pick
from edge_chat.store.paths import check_path, find_in_store, models_dir, slug
from edge_chat.system import fmt_size
from edge_chat.tables import stderr_console

INDEX = ".pulled.json"          # hub id (and id:tag) -> store name


def is_hub_id(spec: str | None) -> bool:
    """A hub id (`org/name[:tag]`) that is not an existing path. A spec that is no
    valid path at all (too long, NUL) raises the store's one-line error."""
    if not spec:
        return False
    check_path(spec)
    return not Path(spec).expanduser().exists() and parse_spec(spec) is not None


def _keys(spec: str) -> list[str]:
    repo_id, tag = parse_spec(spec) or (spec, None)
    if not tag:
        return [repo_id.lower()]
    return [f"{repo_id}:{tag}".lower(), f"{repo_id}:{norm_quant(tag)}".lower()]


def _index(root: Path) -> dict[str, str]:
    try:
        return json.loads((root / INDEX).read_text())
    except (OSError, ValueError):
        return {}


def _choice_key(repo: Repo, choice: Choice) -> str:
    """The index key naming exactly this choice: `repo:FILE` (GGUF) or `repo:FOLDER`."""
    what = choice.files[0].path.rsplit("/", 1)[-1] if choice.kind == "gguf" else choice.label
    return f"{repo.repo_id}:{what}".lower()


def find_pulled(spec: str, root: Path | None = None) -> Path | None:
    """The store path of a model pulled earlier as `spec` (`org/name` is the last one
    pulled from that repo), or None."""
    root = root or models_dir()
    index = _index(root)
    for k in _keys(spec):
        if k in index:
            try:
                return find_in_store(index[k], root)
            except ModelNotFound:                       # removed since
                return None
    return None


def _remember(spec: str, repo: Repo, choice: Choice, name: str, root: Path) -> None:
    """Index the model under the hub id (the last pulled from that repo), the spec as
    given, and `repo:QUANT` / `repo:FILE` for GGUF."""
    index = _index(root)
    keys = {*_keys(spec), repo.repo_id.lower(), _choice_key(repo, choice)}
    if choice.kind == "gguf":
        keys.add(f"{repo.repo_id}:{choice.label}".lower())
    for k in keys:
        index[k] = name
    write_json_atomic(root / INDEX, index)


def offers_table(spec: str, quant: str | None = None, to: str | None = None) -> Table:
    """What a repo offers (`pull --list`), the one a pull would take marked."""
    repo_id = _repo_id(spec)
    repo = list_repo(repo_id)
    try:
        chosen = pick(repo, parse_spec(spec)[1], quant, to)
    except PullError:
        chosen = None
    t = Table(title=f"{repo.repo_id} @ {repo.commit[:10]}")
    for col in ("", "format", "quant / variant", "size", "files", "store name"):
        t.add_column(col, justify="right" if col == "size" else "left")
    for c in offers(repo):
        files = c.files[0].path + (f" (+{len(c.files) - 1})" if len(c.files) > 1 else "")
        t.add_row("*" if c == chosen else "", c.kind, c.label, fmt_size(c.size),
                  files, c.name if c.kind != "safetensors" else "(converted)")
    return t


def _repo_id(spec: str) -> str:
    parsed = parse_spec(spec)
    if parsed is None:
        raise PullError(f"'{spec}' is not a hub id (org/name, org/name:QUANT or "
                        "org/name:FILE.gguf); for a local folder use convert")
    return parsed[0]


def plan(spec: str, quant: str | None = None, to: str | None = None) -> tuple[Repo, Choice]:
    """List the repo (one hub call) and pick what to fetch."""
    repo_id = _repo_id(spec)
    if to is not None and to not in ("gguf", "onnx"):
        raise PullError(f"--to must be gguf or onnx, not '{to}'")
    repo = list_repo(repo_id)
    return repo, pick(repo, parse_spec(spec)[1], quant, to)


def pull(spec: str, quant: str | None = None, to: str | None = None,
         console: Console | None = None, planned: tuple[Repo, Choice] | None = None) -> Path:
    """Pull `spec` into the store; the model's path there."""
    console = console or stderr_console()
    repo, choice = planned or plan(spec, quant, to)
    root = models_dir()
    if choice.kind == "safetensors":
        return _convert(repo, choice, to, quant or parse_spec(spec)[1], spec, console)
    final = root / (choice.name if choice.kind == "onnx" else _gguf_name(choice, 1))
    if final.exists():
        if _index(root).get(_choice_key(repo, choice)) != choice.name:
            raise PullError(f"the store {root} already has a model named {choice.name}, not "
                            f"pulled from '{repo.repo_id}': remove it first (edge_chat rm "
                            f"{choice.name})")
        console.print(f"{choice.name} is already in the store {root} "
                      f"('edge_chat rm {choice.name}' first to download it again)")
        _remember(spec, repo, choice, choice.name, root)
        return final
    parts = f" in {len(choice.files)} parts" if choice.kind == "gguf" and len(choice.files) > 1 \
        else ""
    console.print(f"pulling {repo.repo_id} {choice.label} ({fmt_size(choice.size)}{parts}) "
                  f"into {root}")
    staging = _staging(root, repo, choice)
    from edge_chat.hub.download import fetch
    fetch(repo, choice.files, staging, console)
    if choice.kind == "gguf":
        _land_gguf(choice, staging, root)
    else:
        _land_onnx(repo, choice, staging, final)
    shutil.rmtree(staging, ignore_errors=True)
    _remember(spec, repo, choice, choice.name, root)
    console.print(f"[bold]{choice.name}[/bold] is in the store: "
                  f"edge_chat chat {choice.name}")
    return final


def _staging(root: Path, repo: Repo, choice: Choice) -> Path:
    return root / ".pull" / slug(f"{repo.repo_id.replace('/', '--')}--{choice.name}")


def _gguf_name(choice: Choice, part: int) -> str:
    n = len(choice.files)
    return f"{choice.name}.gguf" if n == 1 else f"{choice.name}-{part:05d}-of-{n:05d}.gguf"


def _land_gguf(choice: Choice, staging: Path, root: Path) -> None:
    """Rename the file (or split parts, the first last: the store lists a split model
    by its first part) into the store."""
    for i, f in reversed(list(enumerate(choice.files))):
        os.replace(staging / f.path, root / _gguf_name(choice, i + 1))


def _land_onnx(repo: Repo, choice: Choice, staging: Path, final: Path) -> None:
    from edge_chat.hub.genai import check_genai, genai_manifest
    names = {f.path.rsplit("/", 1)[-1] for f in choice.files}
    where = f"{repo.repo_id}/{choice.root}" if choice.root else repo.repo_id
    with atomic_path(final, is_dir=True) as tmp:
        for f in choice.files:
            rel = f.path[len(choice.root) + 1:] if choice.root else f.path
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / f.path, tmp / rel)
        if choice.layout == "genai":
            cfg = json.loads((tmp / "genai_config.json").read_text())
            decoder = check_genai(cfg, names, where)
            if decoder != "model.onnx":
                os.replace(tmp / decoder, tmp / "model.onnx")
            write_json_atomic(tmp / "edge_chat.json", genai_manifest(
                cfg, choice.label, f"{where}@{repo.commit}"))
            if not (tmp / "config.json").exists():
                vocab = (cfg.get("model") or {}).get("vocab_size")
                write_json_atomic(tmp / "config.json", {"vocab_size": vocab} if vocab else {})


def _convert(repo: Repo, choice: Choice, to: str | None, quant: str | None, spec: str,
             console: Console) -> Path:
    """A safetensors repo: download (as any pull), then convert with the `convert` extra."""
    if not all(_installed(m) for m in ("torch", "transformers")):
        raise PullError(f"'{repo.repo_id}' holds safetensors weights, which must be converted: "
                        f"that needs the convert extra (pip install 'edge-chat[convert]'), or "
                        "pull a ready-made -GGUF repo instead")
    from edge_chat.convert.pipeline import run_convert
    from edge_chat.hub.download import fetch
    root = models_dir()
    staging = _staging(root, repo, choice)
    folder = staging / repo.repo_id.split("/")[-1]     # its name names the output
    console.print(f"pulling {repo.repo_id} (safetensors, {fmt_size(choice.size)}) to convert")
    fetch(repo, choice.files, folder, console)
    with contextlib.redirect_stdout(sys.stderr):     # the command prints the one path itself
        results = run_convert(str(folder), to or "gguf", quant, None, evaluate=False,
                              console=console)
    shutil.rmtree(staging, ignore_errors=True)
    name = results[-1].output.name.removesuffix(".gguf")
    _remember(spec, repo, choice, name, root)
    return results[-1].output


def _installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (torch takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def ensure_model(spec: str | None, *, yes: bool, interactive: bool,
                 confirm: Callable[[str], bool], console: Console | None = None) -> str | None:
    """A model spec for chat/serve/ui: a hub id not in the store is pulled after
    `confirm` (or at once with `yes`); anything else is returned unchanged."""
    if not is_hub_id(spec):
        return spec
    found = find_pulled(spec)
    if found is not None:
        return str(found)
    root = models_dir()
    if not yes and not interactive:
        raise PullError(f"'{spec}' is not in the store {root}: get it with 'edge_chat pull "
                        f"{spec}' (or add --yes to pull it now)")
    repo, choice = plan(spec)
    if not yes and not confirm(f"{spec} is not in the store. Pull {choice.label} "
                               f"({fmt_size(choice.size)}) into {root}?"):
        raise PullError(f"not pulled: '{spec}' is not in the store {root}")
    return str(pull(spec, console=console, planned=(repo, choice)))
