"""Many clients at once on the real Qwen: `edge_chat serve --parallel N` (continuous
batching) on the GGUF file and on our int4 ONNX conversion vs llama-cpp-python's own
server on the GGUF (one request at a time), and llama.cpp's `llama-batched-bench` when
benchmarks/build_llama_cpp_tools.sh has built it.

For each concurrency c, c streaming clients start together, each with its own prompt,
greedy, end-of-generation banned (exactly --gen tokens each). Reported: aggregate tok/s
(c x gen / wall time), per-stream decode tok/s ((gen - 1) / time after the first
chunk, median over the streams), TTFT (median and worst), the ratios of the issue's
targets, whether every greedy answer under load equals the same request alone, and the
longest stall of 3 running streams while a 2,000-token prompt is prefilled (ours).
The servers run one after the other, never side by side.

    python benchmarks/batch_vs_peers.py [--model FILE.gguf] [--onnx FOLDER | --no-onnx]
                                        [--threads 2] [--gen 128] [--concurrency 1,2,4,8]
                                        [--no-peer] [--no-engine-steps]

Also timed: one decode step over B sequences on each of our engines alone (no server,
no HTTP), which bounds what batching can give on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import _common as C

PROMPTS = [f"Write a short Python function that {task}. Explain it in two sentences."
           for task in ("reverses a string", "checks whether a number is prime",
                        "merges two sorted lists", "counts the words in a text",
                        "parses an ISO date", "computes a moving average",
                        "flattens a nested list", "validates an email address")]


class Srv:
    """A server subprocess on a free localhost port until stop()."""

    def __init__(self, cmd: list[str], port: int, log: Path):
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONPATH=str(C.REPO)))
        import httpx
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{cmd[:4]} exited; see {log}")
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{cmd[:4]} did not start; see {log}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def eog_bias(model: Path) -> dict[str, int]:
    import llama_cpp
    llm = llama_cpp.Llama(str(model), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        return {str(t): -100 for t in range(llm.n_vocab())
                if llama_cpp.llama_vocab_is_eog(vocab, t)}
    finally:
        llm.close()


def stream_once(url: str, model: str, prompt: str, gen: int, bias: dict) -> dict:
    import httpx
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "temperature": 0, "max_tokens": gen, "logit_bias": bias}
    t0 = time.perf_counter()
    first = last = None
    text = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=1800) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            delta = choices[0].get("delta", {}).get("content")
            if delta:
                last = time.perf_counter()
                first = first or last
                text.append(delta)
    return {"ttft": (first or t0) - t0, "decode_tps": (gen - 1) / (last - first)
            if first and last > first else 0.0, "end": last or t0, "start": t0,
            "text": "".join(text)}


def clients(url: str, model: str, c: int, gen: int, bias: dict) -> dict:
    out: list = [None] * c
    go = threading.Barrier(c)

    def one(i: int) -> None:
        go.wait()
        try:
            out[i] = stream_once(url, model, PROMPTS[i % len(PROMPTS)], gen, bias)
        except Exception as e:  # noqa: BLE001  counted as a failed client
            C.say(f"client {i} failed: {e}")

    ts = [threading.Thread(target=one, args=(i,)) for i in range(c)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    failed = sum(r is None for r in out)
    out = [r for r in out if r is not None] or [{"end": 1.0, "start": 0.0, "decode_tps": 0.0,
                                                 "ttft": 0.0, "text": ""}]
    wall = max(r["end"] for r in out) - min(r["start"] for r in out)
    return {"clients": c, "failed": failed, "aggregate_tps": (c - failed) * gen / wall,
            "stream_tps": C.med(r["decode_tps"] for r in out),
            "ttft": C.med(r["ttft"] for r in out), "ttft_max": max(r["ttft"] for r in out),
            "texts": [r["text"] for r in out]}


def stall(url: str, model: str, bias: dict, n_long: int = 2000) -> dict:
    """Three streams run; a prompt of ~n_long tokens arrives. The longest gap between two
    tokens of a running stream while the long prompt is prefilled, against their usual gap."""
    import httpx
    from edge_chat.bench.prompts import FILLER
    times: list[list[float]] = [[], [], []]
    stop = threading.Event()

    def run(i: int) -> None:
        body = {"model": model, "messages": [{"role": "user", "content": PROMPTS[i]}],
                "stream": True, "temperature": 0, "max_tokens": 2000, "logit_bias": bias}
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=1800) as r:
            for line in r.iter_lines():
                if '"content"' in line:
                    times[i].append(time.perf_counter())
                if stop.is_set():
                    return

    ts = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    while min(len(x) for x in times) < 10:
        time.sleep(0.05)
    words = (FILLER * (n_long // 100 + 1)).split()[: int(n_long * 0.75)]
    t_send = time.perf_counter()
    long = stream_once(url, model, " ".join(words) + "\nSummarize.", 4, bias)
    t_first = long["start"] + long["ttft"]
    stop.set()
    for t in ts:
        t.join()

    def gaps(x, a, b):
        return [q - p for p, q in zip(x, x[1:]) if a <= q <= b]

    during = [g for x in times for g in gaps(x, t_send, t_first + 0.5)]
    before = [g for x in times for g in gaps(x, 0, t_send)]
    return {"long_ttft": long["ttft"], "max_gap": max(during or [0.0]),
            "usual_gap": C.med(before) if before else 0.0}


def serve_and_measure(name: str, cmd: list[str], port: int, model: str, levels, gen, bias,
                      log: Path, lone: list | None = None,
                      stall_row: dict | None = None) -> list[dict]:
    """Rows per concurrency level; `lone` (a list) gets each prompt's answer served alone,
    `stall_row` (a dict) the stall measurement."""
    C.say(f"{name}: starting")
    srv = Srv(cmd, port, log)
    try:
        clients(srv.url, model, 1, 8, bias)          # warm-up
        if lone is not None:
            C.say(f"{name}: each prompt alone")
            lone += [stream_once(srv.url, model, p, gen, bias)["text"]
                     for p in PROMPTS[:max(levels)]]
        rows = []
        if stall_row is not None:
            C.say(f"{name}: a 2,000-token prompt arrives while 3 streams run")
            stall_row.update(stall(srv.url, model, bias))
        for c in levels:
            clients(srv.url, model, c, 8, bias)     # warm-up at this batch size
            C.wait_quiet(timeout=60)
            C.say(f"{name}: {c} client(s)")
            rows.append({"peer": name, **clients(srv.url, model, c, gen, bias)})
        return rows
    finally:
        srv.stop()


def batched_bench(exe: Path | None, model: Path, threads: int, prompt: int, gen: int,
                  levels) -> list[dict]:
    """llama-batched-bench's decode rate per number of parallel sequences."""
    if exe is None or not exe.exists():
        return []
    n_ctx = max(levels) * (prompt + gen) + 64
    p = subprocess.run([str(exe), "-m", str(model), "-c", str(n_ctx), "-t", str(threads),
                        "-npp", str(prompt), "-ntg", str(gen),
                        "-npl", ",".join(map(str, levels))],
                       capture_output=True, text=True, check=False)
    rows = []
    for line in p.stdout.splitlines():
        cols = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(cols) >= 8 and re.fullmatch(r"\d+", cols[2] or ""):
            rows.append({"peer": "llama-batched-bench", "clients": int(cols[2]),
                         "aggregate_tps": float(cols[7]), "stream_tps": float(cols[7]) /
                         int(cols[2]), "ttft": float(cols[4]), "ttft_max": float(cols[4])})
    return rows


def engine_steps(path: Path, threads: int, levels, n_steps: int = 40) -> dict[int, float]:
    """The runtime's own cost of a batch, without the server: seconds of one decode
    step (decode_many over B rows, B = each level) on the engine `serve --parallel`
    opens, median over `n_steps` steps after each row's prompt. The ratios
    B x t(1) / t(B) bound what batching can give over HTTP on this machine."""
    from edge_chat.engines import EngineOptions, load_engine
    batch = load_engine(path, EngineOptions(threads=threads, n_ctx=1024, parallel=max(levels),
                                            speculative="off"), probe=False)
    engine = getattr(batch, "engine", batch)    # the engine under the scheduler
    try:
        prompts = [engine.tokenize(p) for p in PROMPTS]
        out = {}
        for b in levels:
            C.wait_quiet(timeout=60)
            rows = [(s, prompts[s % len(prompts)]) for s in range(b)]
            for s, toks in rows:
                engine.trim_seq(s, 0)
                engine.decode_many([(s, 0, toks[:-1], False)])
            pos = {s: len(toks) - 1 for s, toks in rows}
            times = []
            for i in range(n_steps):
                t0 = time.perf_counter()
                engine.decode_many([(s, pos[s] + i, [toks[-1]], True) for s, toks in rows])
                times.append(time.perf_counter() - t0)
            out[b] = C.med(times[3:])
        return out
    finally:
        batch.close()


def ours(model: Path, label: str, a, levels, bias, logs: Path) -> tuple[list, list, dict]:
    """`edge_chat serve --parallel` on a GGUF file or an ONNX folder: (rows, lone answers,
    the stall measurement)."""
    port = free_port()
    lone: list[str] = []
    stalled: dict = {}
    name = model.stem if model.is_file() else model.name
    rows = serve_and_measure(
        label, [sys.executable, "-m", "edge_chat", "serve", str(model),
                "--parallel", str(max(levels)), "--threads", str(a.threads),
                "--port", str(port), "--log-level", "warning"],
        port, name, levels, a.gen, bias, logs / f"edge_chat-{name}.log", lone, stalled)
    return rows, lone, stalled


def targets(rows: list[dict], label: str, lone: list[str], stalled: dict) -> list[list]:
    """The issue's targets for one of our servers."""
    ours = {r["clients"]: r for r in rows if r["peer"] == label}
    if 1 not in ours:
        return []
    one = ours[1]
    checks = []
    for c, agg, per in ((4, 2.5, 0.6), (8, 3.0, None)):
        if c in ours:
            x = ours[c]["aggregate_tps"] / one["aggregate_tps"]
            checks.append([label, f"{c} clients: aggregate x 1 client", f"{x:.2f}",
                           f">= {agg}", C.verdict(x >= agg)])
            if per:
                y = ours[c]["stream_tps"] / one["stream_tps"]
                checks.append([label, f"{c} clients: per stream x 1 client", f"{y:.2f}",
                               f">= {per}", C.verdict(y >= per)])
    pairs = [(t, lone[i % len(PROMPTS)]) for r in ours.values()
             for i, t in enumerate(r["texts"])]
    same = sum(t == want for t, want in pairs)
    checks.append([label, "greedy answers under load equal to the lone answer",
                   f"{same}/{len(pairs)}", "all", C.verdict(same == len(pairs))])
    if stalled:
        gap, usual = stalled["max_gap"], stalled["usual_gap"]
        steps = f" ({gap / usual:.1f} usual gaps)" if usual else ""
        checks.append([label, "longest stall of a running stream while 2k tokens prefill",
                       f"{gap:.2f} s{steps}", "<= 0.5 s", C.verdict(gap <= 0.5)])
    return checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--onnx", type=Path, default=None,
                    help="also our int4 ONNX folder (default: the test cache's conversion)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--no-peer", action="store_true", help="skip llama-cpp-python's server")
    ap.add_argument("--no-engine-steps", action="store_true",
                    help="skip timing the engines' batched steps without a server")
    ap.add_argument("--batched-bench", type=Path, default=os.environ.get("LLAMA_BATCHED_BENCH"))
    a = ap.parse_args()
    model = a.model or C.real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    if model is None:
        sys.exit("no model: pass --model FILE.gguf")
    onnx = None if a.no_onnx else a.onnx or next(iter(sorted(
        (Path.home() / ".cache" / "edge-chat-tests").glob("real-*/qwen-onnx-int4"))), None)
    levels = [int(x) for x in a.concurrency.split(",")]
    bias = eog_bias(model)          # the ONNX conversion has the same vocabulary
    logs = C.cache_dir() / "batch-logs"
    logs.mkdir(exist_ok=True)
    print(f"# {C.machine()}\n# model {model.name}{f' and {onnx}' if onnx else ''}, "
          f"{a.threads} threads, {a.gen} tokens per client")
    rows, checks = [], []
    for path, label in ((model, "edge_chat GGUF"), (onnx, "edge_chat ONNX")):
        if path is not None:
            r, lone, stalled = ours(path, label, a, levels, bias, logs)
            rows += r
            checks += targets(r, label, lone, stalled)
    if not a.no_peer:
        port = free_port()
        rows += serve_and_measure(
            "llama-cpp-python server", [sys.executable, "-m", "llama_cpp.server", "--model",
                                        str(model), "--n_threads", str(a.threads),
                                        "--n_ctx", "4096", "--port", str(port),
                                        # queue concurrent requests (its default: a new
                                        # request interrupts the running stream)
                                        "--interrupt_requests", "False"],
            port, model.stem, levels, a.gen, bias, logs / "llama_cpp_server.log")
    exe = a.batched_bench
    if exe is None:
        import llama_cpp
        exe = C.cache_dir() / f"llama.cpp-{llama_cpp.__version__}" / "bin" / "llama-batched-bench"
    rows += batched_bench(Path(exe), model, a.threads, 64, a.gen, levels)
    C.print_rows("concurrent streaming clients (greedy, EOG banned)",
                 ["peer", "clients", "failed", "aggregate tok/s", "per-stream tok/s",
                  "TTFT ms (med/worst)"],
                 [[r["peer"], r["clients"], r.get("failed", 0), f"{r['aggregate_tps']:.1f}",
                   f"{r['stream_tps']:.1f}", f"{r['ttft'] * 1000:.0f}/{r['ttft_max'] * 1000:.0f}"]
                  for r in rows])
    ceiling = []
    for path, label in ((model, "edge_chat GGUF"), (onnx, "edge_chat ONNX")):
        if path is not None and not a.no_engine_steps:
            t = engine_steps(path, a.threads, levels)
            ceiling += [[label, b, f"{t[b] * 1000:.1f}", f"{b * t[1] / t[b]:.2f}x",
                         f"{t[1] / t[b]:.2f}x"] for b in levels if 1 in t]
    if ceiling:
        C.print_rows("the engines alone: one decode step over B sequences, no server",
                     ["engine", "B", "step ms", "aggregate x B=1", "per stream x B=1"], ceiling)
    if checks:
        C.print_rows("targets (noisy on a shared machine)",
                     ["server", "what", "value", "target", ""], checks)


if __name__ == "__main__":
    main()
