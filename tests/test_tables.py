"""Tables stay whole: piped at their natural width, on a narrow terminal wrapped or as
one record per row, never with a cut header ("1st-…")."""

import io
import os
import re
import subprocess
import sys

from rich.console import Console
from rich.table import Table

from edge_chat.bench.measure import table as bench_table
from edge_chat.tables import print_table

HEADERS = ["model", "format", "load s", "peak RSS", "1st-token ms (128)",
           "prefill tok/s (128)", "decode tok/s (1024)", "histogram"]
ROWS = [["qwen2.5-coder-0.5b-instruct-q4_k_m", "gguf", "0.56", "788 MB", "612 ± 3", "205.1",
         "41.8", "▁▂▃"],
        ["tiny", "onnx", "0.1", "78 MB", "12 ± 3", "2015.1", "410.8", "▁▂▃"]]


def render(**console) -> str:
    t = Table(title="bench")
    for h in HEADERS:
        t.add_column(h)
    for r in ROWS:
        t.add_row(*r)
    out = io.StringIO()
    print_table(t, Console(file=out, no_color=True, **console))
    return re.sub(r"\x1b\[[0-9;]*m", "", out.getvalue())          # bold, italic


def whole(text: str) -> bool:
    return "…" not in text and all(w in text for r in [HEADERS, *ROWS] for c in r
                                   for w in c.split())


def test_piped_table_keeps_its_natural_width():
    text = render()                                     # not a terminal
    assert whole(text)
    assert max(map(len, text.splitlines())) > 80
    header = next(ln for ln in text.splitlines() if "1st-token ms (128)" in ln)
    assert all(h in header for h in HEADERS)            # one header line, nothing wrapped


def test_narrow_terminal_wraps_or_shows_records():
    for width in (40, 60, 100, 200):
        text = render(width=width, force_terminal=True)
        assert whole(text), text
        if "┃" in text:                                 # a table: within the terminal
            assert max(map(len, text.splitlines())) <= width
    assert "┃" in render(width=200, force_terminal=True)
    records = render(width=40, force_terminal=True)
    assert "model                qwen2.5-coder-0.5b-instruct-q4_k_m\n" in records
    assert "1st-token ms (128)   612 ± 3\n" in records


def test_models_and_bench_tables_piped(tmp_path, tiny_gguf):
    os.symlink(tiny_gguf["q8_0"], tmp_path / "a-rather-long-model-name-for-the-table-q8_0.gguf")
    env = {**os.environ, "EDGE_CHAT_MODELS": str(tmp_path), "COLUMNS": "40"}
    p = subprocess.run([sys.executable, "-m", "edge_chat", "models"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "…" not in p.stdout
    assert "a-rather-long-model-name-for-the-table-q8_0" in p.stdout and "template" in p.stdout
    def stat(x):
        return {"median": x, "min": x * 0.9, "max": x * 1.1}
    result = {"model": "a-rather-long-model-name-q4_k_m", "format": "gguf", "quant": "q4_k_m",
              "size_bytes": 491_000_000, "load_s": 0.56, "peak_rss": 788_000_000,
              "second_turn": {"history_tokens": 1536, "first_ttft": stat(8.2),
                              "second_ttft": stat(0.2), "ratio": 0.025},
              "lengths": [{"prompt_tokens": 128, "gen_tokens": 64, "ttft": stat(0.6),
                           "prefill_tps": stat(205.0), "decode_tps": stat(41.8)}]}
    out = io.StringIO()
    print_table(bench_table([result]), Console(file=out))
    text = out.getvalue()
    assert "…" not in text and "1st-turn TTFT ms" in text and "decode tok/s" in text
