"""The store's commands: models, info, convert, pull, rm, cache (registered on the one app)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edge_chat.cli.app import command, err
from edge_chat.errors import EdgeChatError, printable
from edge_chat.system import fmt_size


@command
def models(json_out: bool = typer.Option(False, "--json", help="Print JSON."),
           all_: bool = typer.Option(False, "--all", help="Also list leftovers of interrupted "
                                     "converts (hidden temporary files the next convert removes).")):
    """List the models in the store ($EDGE_CHAT_MODELS, else ./models, else the per-user store)."""
    import json
    import shutil

    from rich.table import Table

    from edge_chat.atomic import leftovers
    from edge_chat.store.paths import (describe, empty_store_hint, list_models, models_dir,
                                       path_size, store_choice)
    from edge_chat.tables import print_table
    rows = []
    for p in list_models():
        try:
            rows.append(describe(p))
        except EdgeChatError as e:
            rows.append({"name": p.name, "format": "broken", "error": printable(str(e), 300),
                         "size_bytes": None})
    if all_:
        for p in leftovers(models_dir()):
            rows.append({"name": p.name, "format": "leftover", "size_bytes": path_size(p),
                         "error": "left by an interrupted convert; the next convert here "
                                  "removes it"})
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    root, why = store_choice()
    if not rows:
        err(f"no models in {root} ({why}): {empty_store_hint()}")
        return
    t = Table(title=f"models in {root} ({why})")
    for col in ("name", "format", "quant", "size", "arch", "context", "template"):
        t.add_column(col)
    for r in rows:
        t.add_row(printable(r["name"], 80), r.get("format", "?"), printable(str(r.get("quant", ""))),
                  fmt_size(r.get("size_bytes")), printable(str(r.get("arch", r.get("error", "")))),
                  str(r.get("context") or "?"), "yes" if r.get("chat_template") else "no")
    print_table(t)
    free = shutil.disk_usage(root if root.exists() else Path.cwd()).free
    left = [r for r in rows if r.get("format") == "leftover"]
    kept = [r for r in rows if r.get("format") != "leftover"]
    err(f"{len(kept)} model(s), {fmt_size(sum(r.get('size_bytes') or 0 for r in kept))}; "
         f"{fmt_size(free)} free on disk" + (
             f"; {len(left)} leftover(s) of interrupted converts, "
             f"{fmt_size(sum(r['size_bytes'] or 0 for r in left))}" if left else ""))


@command
def info(model: str = typer.Argument(..., help="A path or a name in the store."),
         json_out: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Show a model's metadata: arch, parameters, quant, context, template, size."""
    import json

    from edge_chat.store.paths import describe, resolve_model
    row = describe(resolve_model(model))
    if json_out:
        print(json.dumps(row, indent=2))
        return
    for k, v in row.items():
        if k == "size_bytes":
            v = f"{fmt_size(v)} ({v} bytes)"
        print(f"{k:14} {printable(str(v), 300)}")


# -- convert ------------------------------------------------------------------
@command(sigterm=True)
def convert(
    src: str = typer.Argument(..., help="A Hugging Face model folder (or a hub id when online)."),
    to: str = typer.Option("gguf", "--to", help="gguf or onnx."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q",
                                        help="gguf: f32 f16 bf16 q8_0 q6_k q5_k_m q5_0 q4_k_m "
                                             "q4_k_s q4_0 q3_k_m q2_k (default q4_k_m); "
                                             "onnx: fp32 fp16 int8 int4 (default int4); "
                                             "all: every one."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output path."),
    block_size: int = typer.Option(32, "--block-size", help="onnx int4: quantization block size."),
    graph: str = typer.Option("auto", "--graph",
                              help="onnx: fused (onnxruntime's fused attention, Llama family), "
                                   "optimum (plain ONNX ops, any architecture) or auto."),
    evaluate: Optional[bool] = typer.Option(None, "--eval/--no-eval",
                                            help="Perplexity of the source and the result "
                                                 "(default: on for a local folder)."),
    recommend: bool = typer.Option(False, "--recommend",
                                   help="Pick the quant with the least perplexity loss that fits --ram."),
    ram: Optional[str] = typer.Option(None, "--ram",
                                      help="RAM budget for --recommend (default: 60% of free memory)."),
):
    """Convert a Hugging Face model to GGUF or ONNX, quantized."""
    from edge_chat.convert.pipeline import run_convert
    from edge_chat.system import parse_size
    run_convert(src, to, quant, output, block_size, graph=graph, evaluate=evaluate, recommend=recommend,
                budget=parse_size(ram) if ram else None)


@command(sigterm=True)
def pull(
    spec: str = typer.Argument(..., help="A hub id: org/name, org/name:QUANT or org/name:FILE.gguf."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="GGUF: the quant (default "
                                        "q4_k_m); ONNX: the variant; safetensors: as in convert."),
    to: Optional[str] = typer.Option(None, "--to", help="gguf or onnx (safetensors: convert to)."),
    list_only: bool = typer.Option(False, "--list", help="Show what the repo offers, with sizes."),
):
    """Get a model from the Hugging Face hub: GGUF/ONNX repos as they are, safetensors converted."""
    from edge_chat.hub.pull import offers_table
    from edge_chat.hub.pull import pull as run_pull
    from edge_chat.tables import print_table
    if list_only:
        print_table(offers_table(spec, quant, to))
        return
    print(run_pull(spec, quant, to))


@command
def rm(names: List[str] = typer.Argument(..., help="Names in the store."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")):
    """Remove models from the store."""
    from edge_chat.atomic import remove
    from edge_chat.store.paths import find_in_store, model_files, model_name, path_size
    paths = [find_in_store(n) for n in names]
    total = sum(path_size(p) for p in paths)
    if not yes and sys.stdin.isatty() and not typer.confirm(
            f"remove {', '.join(model_name(p) for p in paths)} ({fmt_size(total)})?"):
        raise typer.Exit(1)
    for p in paths:
        for f in model_files(p):       # a split model's first part first: gone from the list
            remove(f)
        err(f"removed {p}")


@command
def cache(clear: bool = typer.Option(False, "--clear", help="Remove every cached prompt."),
          cache_dir: Optional[str] = typer.Option(None, "--cache-dir",
                                                  help="The prompt cache folder (default: "
                                                  "$EDGE_CHAT_CACHE/prompts)."),
          json_out: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the prompt cache on disk (per model and setting), or clear it."""
    import json
    import time

    from rich.table import Table

    from edge_chat.engines.cache_disk import clear_folders, list_folders
    from edge_chat.engines.prompt_cache import cache_root
    from edge_chat.tables import print_table
    root = cache_root(cache_dir)
    if clear:
        err(f"removed {fmt_size(clear_folders(root))} of cached prompts from {root}")
        return
    rows = list_folders(root)
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        err(f"no cached prompts in {root}")
        return
    t = Table(title=f"prompt cache in {root}")
    for col in ("model", "entries", "longest prefix", "size", "last used"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["model"], str(r["entries"]), f"{r['longest_tokens']} tokens",
                  fmt_size(r["bytes"]), time.strftime("%Y-%m-%d %H:%M",
                                                      time.localtime(r["last_used"])))
    print_table(t)
