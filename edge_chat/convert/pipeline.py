"""`edge_chat convert` for people: progress, a summary, and (with --eval) the
quality table and a recommendation for this machine."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_chat.atomic import folder_lock
from edge_chat.convert.common import ConvertResult, read_hf_config, resolve_source, weights_size
from edge_chat.errors import ConvertError
from edge_chat.system import fmt_size
from edge_chat.system import free_bytes, no_space_message
from edge_chat.tables import print_table

TARGETS = ("gguf", "onnx")
DEFAULT_QUANT = {"gguf": "q4_k_m", "onnx": "int4"}
#: output bytes per 16-bit source byte (bits per weight / 16)
SIZE_RATIO = {"f32": 2.0, "f16": 1.0, "bf16": 1.0, "q8_0": 0.54, "q6_k": 0.42, "q5_k_m": 0.36,
              "q5_0": 0.35, "q4_k_m": 0.31, "q4_k_s": 0.29, "q4_0": 0.29, "q3_k_m": 0.25,
              "q2_k": 0.22, "fp32": 2.0, "fp16": 1.0, "int8": 0.55, "int4": 0.3}


def disk_needed(folder: Path, to: str, quant: str) -> int:
    """Bytes a conversion needs on the output's disk at its peak (the intermediate and
    the output side by side), estimated from the source's weights."""
    half = weights_size(folder)
    config = read_hf_config(folder)
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "").lower()
    if dtype in ("float32", "fp32"):
        half //= 2
    out = int(half * SIZE_RATIO.get(quant, 1.0))
    if to == "gguf":
        return out + (0 if quant in ("f32", "f16", "bf16", "q8_0") else half)
    return out + 2 * half                    # the fp32 export, then the quantized copy


def _out_dir(output: Path | None) -> Path:
    from edge_chat.store.paths import models_dir
    if output is None:
        return models_dir()
    return output if output.is_dir() else output.parent


def _disk_full(e: BaseException, where: Path) -> bool:
    import errno
    text = str(e)
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text \
        or "iostream error" in text or free_bytes(where) < 16 * 10**6


def _clean(where: Path, alone: bool, console: Console) -> None:
    from edge_chat.atomic import clean_leftovers
    removed = clean_leftovers(where, alone)
    if removed:
        console.print(f"removed {len(removed)} leftover(s) of an interrupted convert in {where} "
                      f"({fmt_size(sum(n for _, n in removed))})")


def summary_table(r: ConvertResult) -> Table:
    t = Table(title=f"converted → {r.output}", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("format / quant", f"{r.format} / {r.quant}")
    t.add_row("source size", fmt_size(r.source_bytes))
    t.add_row("output size", fmt_size(r.output_bytes))
    t.add_row("ratio", f"{r.ratio:.2f}× smaller")
    t.add_row("time", f"{r.seconds:.1f} s")
    if r.fallbacks:
        t.add_row("other types", "\n".join(r.fallbacks))
    for note in r.notes:
        t.add_row("note", note)
    return t


def _quants(to: str, quant: str | None) -> tuple[list[str], object]:
    if to == "gguf":
        from edge_chat.convert.to_gguf import QUANTS, convert_to_gguf as convert
    else:
        from edge_chat.convert.to_onnx import ONNX_QUANTS as QUANTS, convert_to_onnx as convert
    quant = (quant or DEFAULT_QUANT[to]).lower()
    if quant == "all":                      # fp16 ONNX is for GPUs: not in "all"
        return [q for q in QUANTS if not (to == "onnx" and q == "fp16")], convert
    if quant not in QUANTS:
        raise ConvertError(f"unknown {to} quant '{quant}': one of {', '.join(QUANTS)} or all")
    return [quant], convert


def run_convert(src: str, to: str, quant: str | None, output: Path | None, block_size: int = 32,
                *, graph: str = "auto", evaluate: bool | None = None, recommend: bool = False,
                budget: int | None = None, console: Console | None = None) -> list[ConvertResult]:
    console = console or Console(stderr=True)
    to = to.lower()
    if to not in TARGETS:
        raise ConvertError(f"--to must be one of {', '.join(TARGETS)}, not '{to}'")
    quants, convert = _quants(to, quant)
    if len(quants) > 1 and output is not None and not output.is_dir():
        raise ConvertError("with --quant all, -o must be an existing folder")
    if to != "onnx" and graph != "auto":
        raise ConvertError("--graph applies to --to onnx only")
    extra = {"block_size": block_size, "graph": graph} if to == "onnx" else {}
    local = Path(src).expanduser().exists()
    folder = resolve_source(src)
    evaluate = (local if evaluate is None else evaluate) or recommend
    where = _out_dir(output)
    with folder_lock(where) as alone:
        _clean(where, alone, console)
        results = _convert_all(folder, to, quants, convert, output, extra, where, console)
    if evaluate:
        quality_report(folder, results, to, console, recommend, budget)
    for r in results:
        print(r.output)
    return results


def _convert_all(folder: Path, to: str, quants: list[str], convert, output: Path | None,
                 extra: dict, where: Path, console: Console) -> list[ConvertResult]:
    results = []
    for q in quants:
        need = disk_needed(folder, to, q)
        if free_bytes(where) < 0.8 * need:
            raise ConvertError(no_space_message(where, need - free_bytes(where)))
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                      TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"{to} {q}", total=None)

            def progress(stage: str, frac: float | None = None) -> None:
                bar.update(task, description=f"{to} {q}: {stage}",
                           total=None if frac is None else 1.0, completed=frac or 0)

            try:
                results.append(convert(folder, q, output, progress=progress, **extra))
            except (OSError, RuntimeError, ConvertError) as e:
                if not _disk_full(e, where):
                    raise
                raise ConvertError(no_space_message(where, max(need - free_bytes(where),
                                                               10**6))) from None
        print_table(summary_table(results[-1]), console)
    return results


def quality_report(folder: Path, results: list[ConvertResult], fmt: str, console: Console,
                   recommend: bool, budget: int | None) -> list[dict]:
    from edge_chat.convert.quality import (hf_perplexity, memory_needed, output_perplexity,
                                           recommend as pick)
    from edge_chat.system import available_memory
    config = read_hf_config(folder)
    with console.status("perplexity of the source model (transformers)..."):
        base = hf_perplexity(folder)
    rows = []
    for r in results:
        with console.status(f"perplexity of {r.output.name}..."):
            ppl = output_perplexity(r.output)
        rows.append({"quant": r.quant, "size": r.output_bytes, "ratio": r.ratio, "ppl": ppl.value,
                     "change": ppl.value / base.value - 1,
                     "memory": memory_needed(r.output_bytes, config, fmt), "path": r.output})
    t = Table(title=f"quality on the bundled text ({base.tokens} tokens); "
                    f"source perplexity {base.value:.3f}")
    for col in ("quant", "size", "ratio", "perplexity", "change", "RAM to chat"):
        t.add_column(col, justify="right" if col != "quant" else "left")
    for row in rows:
        t.add_row(row["quant"], fmt_size(row["size"]), f"{row['ratio']:.2f}×",
                  f"{row['ppl']:.3f}", f"{row['change'] * 100:+.2f} %", fmt_size(row["memory"]))
    print_table(t, console)
    if recommend:
        limit = budget if budget is not None else int(0.6 * available_memory())
        best = pick(rows, limit)
        if best is None:
            console.print(f"[bold]no quant fits {fmt_size(limit)} of RAM[/bold]: "
                          "try a smaller quant or a smaller model")
        else:
            console.print(f"[bold]recommended for a budget of {fmt_size(limit)}: {best['quant']}"
                          f"[/bold] ({fmt_size(best['size'])}, perplexity {best['ppl']:.3f}, "
                          f"{best['change'] * 100:+.2f} %) → {best['path']}")
    return rows
