"""`edge_chat convert` for people: a progress display, then a summary."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edge_chat.convert.common import ConvertResult, resolve_source
from edge_chat.errors import ConvertError

TARGETS = ("gguf", "onnx")


def _fmt(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return str(n)


def summary_table(r: ConvertResult) -> Table:
    t = Table(title=f"converted → {r.output}", show_header=False)
    t.add_column("what")
    t.add_column("value")
    t.add_row("format / quant", f"{r.format} / {r.quant}")
    t.add_row("source size", _fmt(r.source_bytes))
    t.add_row("output size", _fmt(r.output_bytes))
    t.add_row("ratio", f"{r.ratio:.2f}× smaller")
    t.add_row("time", f"{r.seconds:.1f} s")
    if r.fallbacks:
        t.add_row("other types", "\n".join(r.fallbacks))
    for note in r.notes:
        t.add_row("note", note)
    return t


DEFAULT_QUANT = {"gguf": "q4_k_m", "onnx": "int4"}


def run_convert(src: str, to: str, quant: str | None, output: Path | None, block_size: int = 32,
                console: Console | None = None) -> ConvertResult:
    console = console or Console(stderr=True)
    to = to.lower()
    if to not in TARGETS:
        raise ConvertError(f"--to must be one of {', '.join(TARGETS)}, not '{to}'")
    quant = (quant or DEFAULT_QUANT[to]).lower()
    if to == "gguf":
        from edge_chat.convert.gguf import QUANTS, convert_to_gguf as convert
        extra = {}
    else:
        from edge_chat.convert.onnx import ONNX_QUANTS as QUANTS, convert_to_onnx as convert
        extra = {"block_size": block_size}
    if quant not in QUANTS:
        raise ConvertError(f"unknown {to} quant '{quant}': one of {', '.join(QUANTS)}")
    folder = resolve_source(src)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(f"{to} {quant}", total=None)

        def progress(stage: str, frac: float | None = None) -> None:
            bar.update(task, description=f"{to} {quant}: {stage}",
                       total=None if frac is None else 1.0, completed=frac or 0)

        result = convert(folder, quant, output, progress=progress, **extra)
    console.print(summary_table(result))
    print(result.output)
    return result
