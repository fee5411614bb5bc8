"""Rich tables printed whole: headers are never cut ("1st-…"), and when the output is
not a terminal (piped, redirected) the table keeps its natural width instead of being
squeezed into rich's default 80 columns."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_table(table: Table, console: Console | None = None) -> None:
    console = console or Console()
    for col in table.columns:
        words = str(col.header).split()
        col.min_width = max(col.min_width or 0, *(len(w) for w in words), 1)
    if not console.is_terminal:
        natural = Console(width=10_000).measure(table).maximum
        console = Console(file=console.file, width=max(natural, 20), no_color=True,
                          highlight=False)
    console.print(table)
