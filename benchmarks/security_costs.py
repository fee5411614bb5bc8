"""What issue 14's protections cost, on the real Qwen2.5-Coder-0.5B Q4_K_M GGUF.

1. The probe (engines/probe.py): a model's first load runs in a child process first.
   Measured, each in a fresh process: load with the probe off, the first load (probe
   child + load), a later load (verdict cached). Then decode tok/s of an engine opened
   with the probe and without: generation never crosses a process (the target: < 2 %
   per-token overhead; by construction 0).
2. The body limit: a 20 MB body's 413 (the target: within 1 s) while another client's
   answer streams, against a running `edge_chat serve`.

    python benchmarks/security_costs.py [--rounds 3] [--model PATH]

Numbers are noisy on a busy machine (the script prints how busy it was)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _common import REPO, cpu_busy, machine, med, print_rows, real_model, say

LOAD = """
import json, sys, time
t = time.perf_counter()
from edge_chat.engines import EngineOptions, load_engine
from edge_chat.params import make_params
e = load_engine(sys.argv[1], EngineOptions(n_ctx=1024, threads=int(sys.argv[2])))
load = time.perf_counter() - t
ids = e.tokenize("Write a long story about a lighthouse keeper.")
gen = e.generate(ids, make_params(temperature=0))
next(gen); t = time.perf_counter(); n = 0
for tok in gen:
    n += 1
    if n == 64:
        break
print(json.dumps({"load": load, "decode_tps": n / (time.perf_counter() - t)}))
"""


def measure(model: Path, threads: int, env: dict) -> dict:
    r = subprocess.run([sys.executable, "-c", LOAD, str(model), str(threads)], cwd=REPO,
                       env=env, capture_output=True, text=True, check=True, timeout=600)
    return json.loads(r.stdout.strip().splitlines()[-1])


def probe_costs(model: Path, rounds: int, threads: int) -> None:
    rows = {"probe off": [], "first load (probe)": [], "later load (cached)": []}
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as cache:
            base = dict(os.environ, PYTHONPATH=str(REPO), EDGE_CHAT_CACHE=cache)
            rows["probe off"].append(measure(model, threads, dict(base, EDGE_CHAT_PROBE="0")))
            rows["first load (probe)"].append(measure(model, threads, base))
            rows["later load (cached)"].append(measure(model, threads, base))
    off = med([r["decode_tps"] for r in rows["probe off"]])
    table = []
    for name, runs in rows.items():
        tps = med([r["decode_tps"] for r in runs])
        table.append([name, f"{med([r['load'] for r in runs]):.2f} s", f"{tps:.1f}",
                      f"{(off - tps) / off * 100:+.1f} %"])
    print_rows(f"probe cost ({model.name}, {threads} threads, {rounds} round(s))",
               ["", "load", "decode tok/s", "per-token overhead vs off"], table)


def body_limit(model: Path, threads: int) -> None:
    import httpx

    from tests.support.server import Server, make_store
    with tempfile.TemporaryDirectory() as tmp:
        store = make_store(Path(tmp) / "store", {"m.gguf": model})
        server = Server(store, "--threads", str(threads), log=Path(tmp) / "log")
        try:
            body = {"model": "m", "stream": True, "max_tokens": 200, "temperature": 0,
                    "messages": [{"role": "user", "content": "Tell me a long story."}]}
            httpx.post(f"{server.url}/chat/completions", json=dict(body, stream=False,
                                                                   max_tokens=1), timeout=300)
            streamed = []

            def stream():
                with httpx.stream("POST", f"{server.url}/chat/completions", json=body,
                                  timeout=300) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: {"):
                            streamed.append(time.perf_counter())

            t = threading.Thread(target=stream)
            t.start()
            while not streamed:
                time.sleep(0.01)
            huge = b'{"model": "m", "messages": [{"role": "user", "content": "' \
                + b"a" * (20 * 1024 * 1024) + b'"}]}'
            t0 = time.perf_counter()
            r = httpx.post(f"{server.url}/chat/completions", content=huge, timeout=60,
                           headers={"content-type": "application/json"})
            took = time.perf_counter() - t0
            during = sum(t0 <= s <= t0 + took for s in streamed)
            t.join()
            print_rows("20 MB body", ["status", "seconds to the answer", "target",
                                      "chunks the other client got meanwhile"],
                       [[r.status_code, f"{took:.3f}", "< 1 s: " + ("meets" if took < 1 else "misses"),
                         during]])
        finally:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    model = a.model or real_model("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
    if model is None:
        sys.exit("no model: pass --model PATH (or fetch the real models)")
    say(machine())
    say(f"CPU busy before: {cpu_busy() * 100:.0f} %")
    probe_costs(model, a.rounds, a.threads)
    body_limit(model, a.threads)


if __name__ == "__main__":
    main()
