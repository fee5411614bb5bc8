"""Shared helpers of the benchmark scripts (not part of the edge_chat package).

Cache folder: $EDGE_CHAT_BENCH_CACHE or ~/.cache/edge-chat-bench (llama.cpp tools,
the onnxruntime-genai venv, converted models, the SmolLM2-135M-shaped model)."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MB = 1e6


def cache_dir() -> Path:
    env = os.environ.get("EDGE_CHAT_BENCH_CACHE")
    d = Path(env).expanduser() if env else Path.home() / ".cache" / "edge-chat-bench"
    d.mkdir(parents=True, exist_ok=True)
    return d


def real_model(name: str) -> Path | None:
    """A real model from ../shared/models/get-real-models, if fetched."""
    from tests.support.real_models import find_real_models
    return find_real_models().get(name)


def model_or_qwen(given: Path | None) -> Path:
    """The model a script was given, else the real Qwen2.5-Coder-0.5B Q4_K_M; one line and
    exit when there is neither."""
    path = given or real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    if path is None:
        raise SystemExit("no model: pass a .gguf file or an ONNX folder (or fetch the real "
                         "models)")
    if not path.exists():
        raise SystemExit(f"no such model: {path}")
    return path


def machine() -> str:
    from edge_chat.system import available_memory, physical_cores
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}, {physical_cores()} cores "
            f"({os.cpu_count()} logical), {available_memory() / 2**30:.0f} GiB free, no GPU; "
            f"load average {os.getloadavg()[0]:.1f}; {platform.platform()}")


def med(xs) -> float:
    return statistics.median(list(xs))


def spread(xs) -> str:
    xs = list(xs)
    m = med(xs)
    return f"±{(max(xs) - min(xs)) / 2 / m * 100:.0f}%" if m else ""


def read_bandwidth(threads: int, mbytes: int = 512, rounds: int = 5) -> float:
    """Bytes/s the CPU reads from memory: `threads` threads summing their own slice of
    a large float32 array (numpy releases the GIL); best of `rounds`."""
    import numpy as np
    a = np.ones(mbytes * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(a, threads)
    best = 0.0
    for _ in range(rounds):
        out = [0.0] * threads

        def work(i: int, out=out) -> None:
            out[i] = float(parts[i].sum(dtype=np.float32))

        ts = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        best = max(best, a.nbytes / (time.perf_counter() - t))
    return best


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("meets" if ok else "MISSES")


def print_rows(title: str, header: list[str], rows: list[list]) -> None:
    """A plain text table (copied into benchmarks/README.md as is)."""
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, text=True, **kw)


def say(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


def cpu_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy over `seconds` (everyone's processes, from /proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v), v[3] + v[4]                  # total, idle + iowait
    t0, i0 = snap()
    time.sleep(seconds)
    t1, i1 = snap()
    return 1 - (i1 - i0) / max(t1 - t0, 1)


def wait_quiet(max_busy: float = 0.15, timeout: float = 300) -> float:
    """Wait (up to `timeout` s) until other processes leave the CPUs nearly idle: this
    machine is shared, and a busy core slows multi-threaded llama.cpp/onnxruntime many
    times over. Returns the last busy fraction seen."""
    end = time.monotonic() + timeout
    busy = cpu_busy()
    while busy > max_busy and time.monotonic() < end:
        busy = cpu_busy(2.0)
    return busy


def interleave(reps: int, peers: dict) -> dict[str, list[dict]]:
    """Run each peer (name -> function(warmup: bool) -> result dict, or {} to skip that
    round) once per round, in order, every round after waiting for quiet CPUs; the first
    round is a warm-up and not kept. Returns name -> the kept results."""
    runs: dict[str, list[dict]] = {name: [] for name in peers}
    for i in range(reps + 1):
        wait_quiet()
        for name, run_once in peers.items():
            result = run_once(i == 0)
            if i and result:
                runs[name].append(result)
    return runs


def llama_greedy(llm, tokens: list[int], limit: int, stop=lambda _tok: False) -> dict:
    """llama-cpp-python's own Llama.generate, greedy, on `tokens` (fresh cache) until
    `limit` tokens or stop(token): {"n", "start", "first", "end"} (perf_counter times)."""
    llm.reset()
    start = time.perf_counter()
    first, n = 0.0, 0
    it = llm.generate(tokens, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0,
                      reset=True)
    try:
        for tok in it:
            n += 1
            if n == 1:
                first = time.perf_counter()
            if n >= limit or stop(tok):
                break
    finally:
        it.close()
    return {"n": n, "start": start, "first": first or start, "end": time.perf_counter()}


def column(runs: list[dict], key: str) -> list:
    return [x[key] for x in runs]


def paired(ours, peer) -> float | None:
    """Median of the per-round ratios ours/peer (runs interleaved round by round, so
    slow drifts of the shared machine cancel)."""
    pairs = [o / p for o, p in zip(ours, peer) if p]
    return med(pairs) if pairs else None


def best(xs, key: str) -> float:
    """The least-disturbed run: highest tok/s, lowest TTFT."""
    xs = list(xs)
    return min(xs) if key == "ttft" else max(xs)


def cell(xs, key: str) -> str:
    """'median ±spread (best …)' for a table cell; TTFT in ms."""
    scale, nd = (1000, 0) if key == "ttft" else (1, 1)
    return (f"{med(xs) * scale:.{nd}f} {spread(xs)} (best {best(xs, key) * scale:.{nd}f})"
            if xs else "-")
