"""`edge_chat bench --concurrency 1,2,4`: several clients at once on one model.

The model is opened with --parallel = the largest concurrency (continuous
batching on GGUF; ONNX serves one at a time, so its streams queue as in the
server, and their TTFT includes the wait). For each
concurrency c, c threads start together, each streaming `gen` greedy tokens
(end-of-generation banned) after its own prompt of the first --prompt-lengths
size (different text per stream, so no stream reuses another's cache).
Reported per c: aggregate tok/s (all generated tokens / wall time from the start
to the last token), per-stream decode tok/s (tokens after the first / the time
after the first; median over the streams), TTFT (median and worst), and the
aggregate against c = 1."""

from __future__ import annotations

import statistics
import threading
import time


def concurrency(model, cfg, filler: list[int], say=None) -> list[dict]:
    """The workload for one ChatModel opened with --parallel max(cfg.concurrency)."""
    from edge_chat.bench.prompts import eog_ids, exact_prompt
    from edge_chat.chat.completion import Prompt
    from edge_chat.params import make_params
    params = make_params(temperature=0.0, max_tokens=cfg.gen,
                         logit_bias={t: -100 for t in eog_ids(model.engine)})
    n = cfg.prompt_lengths[0]
    rows: list[dict] = []
    for c in cfg.concurrency:
        if say:
            say(f"{model.info.name}: {c} concurrent stream(s) of {cfg.gen} tokens")
        # stream i's text starts `i * 7` tokens into the filler: a different prompt each
        prompts = [exact_prompt(model, n, filler[i * 7:]) for i in range(c)]
        stats: list = [None] * c
        start = threading.Barrier(c + 1)
        slots = threading.Semaphore(model.engine.capabilities.slots)   # the others queue

        def stream(i: int) -> None:
            view = _view(model)
            start.wait()
            with slots:
                for ev in view.stream(None, params, prompt=Prompt([], "", prompts[i])):
                    if ev.stats is not None:
                        stats[i] = ev.stats

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(c)]
        for t in threads:
            t.start()
        start.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done = [s for s in stats if s is not None]
        tokens = sum(s.completion_tokens for s in done)
        ttfts = [s.ttft for s in done]
        rows.append({"concurrency": c, "streams": len(done), "tokens": tokens, "seconds": wall,
                     "aggregate_tps": tokens / wall if wall > 0 else 0.0,
                     "stream_decode_tps": statistics.median(s.decode_tps for s in done),
                     "ttft_median": statistics.median(ttfts), "ttft_max": max(ttfts)})
    base = rows[0]["aggregate_tps"] if rows and rows[0]["concurrency"] == 1 else None
    for r in rows:
        r["x_single"] = r["aggregate_tps"] / base if base else None
    return rows


def _view(model):
    """The ChatModel over the engine's per-request view (its own counts)."""
    import copy

    from edge_chat.engines import request_view
    view = copy.copy(model)
    view.engine = request_view(model.engine)
    return view


def concurrency_table(results: list[dict]):
    """The rich table of the concurrency workload (None when no result has one)."""
    rows = [r for r in results if r.get("concurrency")]
    if not rows:
        return None
    from rich.table import Table
    t = Table(title="concurrent streams (greedy, end-of-generation banned)")
    for col in ("model", "slots", "clients", "aggregate tok/s", "x 1 client",
                "per-stream decode tok/s", "TTFT ms (median / worst)"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        for row in r["concurrency"]:
            x = row["x_single"]
            t.add_row(r["model"], str(r.get("slots", 1)), str(row["concurrency"]),
                      f"{row['aggregate_tps']:.1f}", "-" if x is None else f"{x:.2f}",
                      f"{row['stream_decode_tps']:.1f}",
                      f"{row['ttft_median'] * 1000:.0f} / {row['ttft_max'] * 1000:.0f}")
    return t
