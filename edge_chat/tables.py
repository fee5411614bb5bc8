"""Rich output that stays readable in a pipe and on a narrow terminal.

Rich squeezes a table into the console's width (80 columns when the output is not a
terminal) by cutting headers and cells ("1st-…", "histo…"). Here a table is printed
whole: at its natural width when piped or redirected; on a terminal wrapped when every
word still shows whole; else one record per row ("column  value" lines), as `psql`'s
expanded display does."""

from __future__ import annotations

import io

from rich.console import Console, Group
from rich.table import Table


def print_table(table: Table | Group, console: Console | None = None) -> None:
    """Print a table (or each table of a Group, other parts as they are) whole."""
    console = console or Console()
    if isinstance(table, Group):
        for part in table.renderables:
            if isinstance(part, Table):
                print_table(part, console)
            elif part:
                console.print(part)
        return
    for col in table.columns:
        col.overflow = "fold"             # never "…": a word that does not fit is caught below
    if not console.is_terminal:
        width = Console(width=10_000).measure(table).maximum
        Console(file=console.file, width=max(width, 20), no_color=True,
                highlight=False).print(table)
    elif _whole(table, console.width):
        console.print(table)
    else:
        _print_records(table, console)


def _whole(table: Table, width: int) -> bool:
    """Whether `table` rendered `width` columns wide shows every header and cell word
    unbroken."""
    out = io.StringIO()
    Console(file=out, width=width, no_color=True, highlight=False).print(table)
    text = out.getvalue()
    words = [w for col in table.columns for cell in (col.header, *col.cells)
             for w in str(cell).split()]
    return all(w in text for w in words)


def _print_records(table: Table, console: Console) -> None:
    """One block of `header  value` lines per row, a blank line between blocks."""
    if table.title:
        console.print(table.title, style="bold", soft_wrap=True, highlight=False)
    headers = [str(c.header) for c in table.columns]
    width = max(map(len, headers), default=0)
    for i, row in enumerate(zip(*(list(c.cells) for c in table.columns))):
        if i:
            console.print()
        for h, v in zip(headers, row):
            console.print(f"{h:<{width}}  {v}", soft_wrap=True, markup=False, highlight=False)


def stderr_console() -> Console:
    """Messages on stderr, never wrapped at rich's default 80 columns in a pipe."""
    return Console(stderr=True, soft_wrap=True, highlight=False)
