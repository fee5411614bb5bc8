"""Our GGUF engine vs its peers on the same model file, thread count and prompt tokens:

  * ours   — edge_chat's GGUFEngine through ChatModel (what every front-end runs)
  * raw    — llama-cpp-python's own Llama.generate on the same prompt tokens (greedy)
  * llama-bench — llama.cpp's benchmark tool built from the same llama.cpp release
    (benchmarks/build_llama_cpp_tools.sh; skipped when absent; $LLAMA_BENCH overrides)

Ours and raw run interleaved in one process (rep by rep) so machine noise hits both;
ours' load time, peak RSS and second-turn TTFT come from `edge_chat bench`'s child
process. Also: the memory-bandwidth bound of decoding (read bandwidth measured here
with numpy, bytes per token ≈ file size).

    python benchmarks/gguf_vs_peers.py [--model FILE.gguf] [--threads N] [--prompt 512] [--gen 128]

Default model: the real Qwen2.5-Coder-0.5B Q4_K_M when fetched, else the
SmolLM2-135M-shaped random model (benchmarks/bench_model.py)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

from _common import (MB, best, cache_dir, cell, column, interleave, llama_greedy, machine, paired,
                     print_rows, read_bandwidth, real_model, say, verdict, wait_quiet)

from edge_chat.bench.measure import BenchConfig, Runner, measure_in_child  # noqa: E402
from edge_chat.bench.prompts import exact_prompt

QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def find_llama_bench(explicit: str | None) -> Path | None:
    for cand in (explicit, os.environ.get("LLAMA_BENCH"), shutil.which("llama-bench")):
        if cand and Path(cand).is_file():
            return Path(cand)
    found = sorted(cache_dir().glob("llama.cpp-*/bin/llama-bench"))
    return found[-1] if found else None


def raw_run(llm, tokens: list[int], gen: int) -> dict:
    """llama-cpp-python alone: fresh cache, greedy, `gen` tokens (generate() never stops
    at EOS by itself)."""
    g = llama_greedy(llm, tokens, gen)
    ttft = g["first"] - g["start"]
    return {"ttft": ttft, "prefill_tps": len(tokens) / ttft,
            "decode_tps": (g["n"] - 1) / (g["end"] - g["first"])}


def llama_bench(exe: Path, model: Path, threads: int, prompt: int, gen: int) -> dict:
    """One llama-bench measurement (it warms up itself): prefill (pp, empty cache) and
    decode (tg after `prompt` tokens in the cache: -d)."""
    base = [str(exe), "-m", str(model), "-t", str(threads), "-r", "1", "-o", "json",
            "-b", "512", "-ub", "512", "-fa", "off", "-ngl", "0"]
    out = {}
    for key, extra in (("prefill_tps", ["-p", str(prompt), "-n", "0"]),
                       ("decode_tps", ["-p", "0", "-n", str(gen), "-d", str(prompt)])):
        proc = subprocess.run(base + extra, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            say(f"llama-bench failed: {proc.stderr.strip().splitlines()[-1:]}")
            return {}
        out[key] = json.loads(proc.stdout)[0]["avg_ts"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--prompt", type=int, default=512, help="prompt tokens (default 512)")
    ap.add_argument("--gen", type=int, default=128, help="generated tokens (default 128)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ctx-size", type=int, default=4096)
    ap.add_argument("--llama-bench", help="path of llama-bench (default: the build cache)")
    a = ap.parse_args()

    import llama_cpp

    from edge_chat.engines import EngineOptions
    from edge_chat.store.gguf_file import read_gguf
    from edge_chat.runtime import open_chat
    from edge_chat.system import physical_cores

    if a.model is None:
        a.model = real_model(QWEN)
        if a.model is None:
            from bench_model import gguf
            a.model = gguf("q4_k_m")
    threads = a.threads or physical_cores()
    size = a.model.stat().st_size
    g = read_gguf(a.model)
    kv = a.ctx_size * g.n_layers * g.kv_bytes_per_token_per_layer(2.0)
    say(f"model {a.model} ({size / MB:.0f} MB), {threads} threads")
    print(f"# gguf_vs_peers: {a.model.name}, {size / MB:.0f} MB, {g.quant_name}; "
          f"prompt {a.prompt} tokens, {a.gen} generated, {a.reps} reps, {threads} threads, "
          f"n_ctx {a.ctx_size}, llama-cpp-python {llama_cpp.__version__}")
    print(f"# {machine()}")

    say("memory read bandwidth ...")
    bw = read_bandwidth(threads)
    bound = bw / size

    say("ours in a child process: load time, peak RSS, second turn ...")
    wait_quiet()
    opts = {"n_ctx": a.ctx_size, "threads": threads}
    child = measure_in_child(str(a.model), BenchConfig(prompt_lengths=[a.prompt], gen=a.gen,
                                                       reps=a.reps, options=opts), quiet=True)
    if "error" in child:
        raise SystemExit(f"edge_chat bench failed: {child['error']}")

    say("ours, raw llama-cpp-python and llama-bench, interleaved run by run ...")
    # prefill is measured: no prompt cache
    model = open_chat(str(a.model), EngineOptions(n_ctx=a.ctx_size, threads=threads,
                                                  cache_ram="0"),
                      need_template=False)
    runner = Runner(model, BenchConfig(prompt_lengths=[a.prompt], gen=a.gen))
    tokens = exact_prompt(model, a.prompt, runner.filler)
    raw = llama_cpp.Llama(str(a.model), n_ctx=a.ctx_size, n_threads=threads,
                          n_threads_batch=threads, n_batch=512, verbose=False)
    lb_exe = find_llama_bench(a.llama_bench)
    if lb_exe is None:
        say("llama-bench not built (benchmarks/build_llama_cpp_tools.sh): skipped")
    else:
        say(f"llama-bench: {lb_exe}")
    def ours(_warmup):
        runner.reset_cache(tokens[0])
        return runner.run(tokens)

    runs = interleave(a.reps, {
        "ours": ours,
        "raw": lambda _warmup: raw_run(raw, tokens, a.gen),
        # llama-bench warms up by itself: not run in the warm-up round
        "llama-bench": lambda warmup: {} if warmup or not lb_exe else
        llama_bench(lb_exe, a.model, threads, a.prompt, a.gen)})
    ours_runs, raw_runs, lb_runs = runs["ours"], runs["raw"], runs["llama-bench"]
    raw.close()
    model.engine.close()
    lb = {k: [x[k] for x in lb_runs] for k in ("prefill_tps", "decode_tps")} if lb_runs else {}

    rows = []
    for key, label in (("decode_tps", "decode tok/s"), ("prefill_tps", "prefill tok/s"),
                       ("ttft", "TTFT ms")):
        o, r, lbx = column(ours_runs, key), column(raw_runs, key), lb.get(key, [])
        rows.append([label, cell(o, key), cell(r, key), cell(lbx, key),
                     f"{paired(o, r):.3f} / {best(o, key) / best(r, key):.3f}",
                     f"{paired(o, lbx):.3f} / {best(o, key) / best(lbx, key):.3f}" if lbx else "-"])
    print_rows("speed (median ±half range (best) of the reps; ratios ours/peer: median of the "
               "per-round ratios / best vs best; TTFT: lower is better; llama-bench has no TTFT)",
               ["metric", "ours", "raw llama-cpp-python", "llama-bench", "ours/raw",
                "ours/llama-bench"], rows)

    dec = best(column(ours_runs, "decode_tps"), "decode_tps")
    vs_raw = paired(column(ours_runs, "decode_tps"), column(raw_runs, "decode_tps"))
    vs_lb = paired(column(ours_runs, "decode_tps"), lb["decode_tps"]) if lb else None
    st = child["second_turn"]
    peak, load = child["peak_rss"], child["load_s"]
    load_target = max(0.5, 0.5 * size / 150e6)
    checks = [
        ["decode vs raw llama-cpp-python (paired median)", f"{vs_raw:.3f}x", ">= 1.0x",
         verdict(vs_raw >= 1.0)],
        ["decode vs llama-bench (paired median)", f"{vs_lb:.3f}x" if vs_lb else "-", ">= 0.97x",
         verdict(vs_lb >= 0.97 if vs_lb else None)],
        ["second-turn TTFT / first", f"{st['ratio']:.3f} ({st['second_ttft']['median'] * 1000:.0f} / "
         f"{st['first_ttft']['median'] * 1000:.0f} ms; evaluated {st['second_n_prompt_evaluated']} "
         f"of {st['second_prompt_tokens']} tokens)", "<= 0.2", verdict(st["ratio"] <= 0.2)],
        ["peak RSS", f"{peak / MB:.0f} MB (file {size / MB:.0f} + KV {kv / MB:.0f} MB)",
         f"<= {(size + kv) / MB + 300:.0f} MB", verdict(peak <= size + kv + 300 * MB)],
        ["load time", f"{load:.2f} s", f"<= {load_target:.2f} s (0.5 s per 150 MB)",
         verdict(load <= load_target)],
        ["decode (best) vs memory-bandwidth bound", f"{dec / bound:.2f} of {bound:.0f} tok/s "
         f"({bw / 1e9:.1f} GB/s read / {size / MB:.0f} MB per token)", "(info)", ""],
    ]
    print_rows("targets", ["check", "measured", "target", "verdict"], checks)


if __name__ == "__main__":
    main()
