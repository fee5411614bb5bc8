"""Our ONNX engine vs its peers on the same Hugging Face model, prompt tokens, token
count and thread count:

  * ours     — edge_chat's OnnxEngine through ChatModel, on the folder made by
               `edge_chat convert HF --to onnx --quant int4` (the fused graph)
  * optimum  — optimum's ORTModelForCausalLM.generate on the folder made by
               `edge_chat convert HF --to onnx --quant int4 --graph optimum`
               (optimum's own export, int4 with the same quantizer; our repeat_kv
               rewrite makes it faster than a stock optimum export, so the ratio is
               conservative)
  * genai    — onnxruntime-genai with a model made by its own builder (int4, CPU) from
               the same HF folder. Its builder needs a newer transformers than
               optimum-onnx allows, so it lives in its own venv
               ($EDGE_CHAT_BENCH_CACHE/venv-genai, made on first use) and runs as a
               subprocess (benchmarks/genai_runner.py). Not a dependency of edge_chat.

Ours and optimum run interleaved rep by rep in this process; ours' load time, peak
RSS and second-turn TTFT come from `edge_chat bench`'s child process.

    python benchmarks/onnx_vs_peers.py [--hf HF_FOLDER] [--threads N] [--prompt 512] [--gen 128]

Default model: the real Qwen2.5-Coder-0.5B HF folder when fetched, else the
SmolLM2-135M-shaped random model (benchmarks/bench_model.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _common import (MB, best, cache_dir, cell, column, interleave, machine, paired, print_rows,
                     real_model, say, verdict, wait_quiet)

from edge_chat.bench.measure import BenchConfig, Runner, measure_in_child  # noqa: E402
from edge_chat.bench.prompts import exact_prompt

QWEN_HF = "qwen2.5-coder-0.5b-instruct-hf"
GENAI_PACKAGES = ["onnxruntime-genai", "transformers", "onnx", "onnx_ir", "torch==2.13.0"]
HERE = Path(__file__).resolve().parent


def genai_python() -> Path:
    """The onnxruntime-genai venv's python (made on first use, ~1 GB download)."""
    venv = cache_dir() / "venv-genai"
    py = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        say(f"making {venv}: pip install {' '.join(GENAI_PACKAGES)} ...")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *GENAI_PACKAGES], check=True)
        (venv / ".complete").write_text("ok\n")
    return py


def _key(hf: Path) -> str:
    """A cache name for an HF folder: its name plus a hash of its full path."""
    import hashlib
    return f"{hf.name}-{hashlib.sha256(str(hf.resolve()).encode()).hexdigest()[:8]}"


def genai_model(hf: Path, py: Path) -> Path:
    out = cache_dir() / "genai" / f"{_key(hf)}-int4"
    if not (out / "genai_config.json").is_file():
        say(f"onnxruntime-genai builder: {hf} -> {out} (int4, cpu) ...")
        tmp = out.with_name(out.name + ".tmp")
        log = out.with_name(out.name + ".log")
        out.parent.mkdir(parents=True, exist_ok=True)      # a fresh machine has no genai/ yet
        with open(log, "w") as f:
            proc = subprocess.run([str(py), "-m", "onnxruntime_genai.models.builder", "-i",
                                   str(hf), "-o", str(tmp), "-p", "int4", "-e", "cpu",
                                   "-c", str(cache_dir() / "genai" / "hf-cache")],
                                  stdout=f, stderr=subprocess.STDOUT, check=False)
        if proc.returncode:
            raise SystemExit(f"onnxruntime-genai builder failed: see {log}")
        tmp.rename(out)
    return out


def our_model(hf: Path, explicit: Path | None, graph: str = "auto") -> Path:
    if explicit:
        return explicit
    out = cache_dir() / "onnx" / f"{_key(hf)}-int4-{graph}"
    if not (out / "model.onnx").is_file():
        from edge_chat.convert.to_onnx import convert_to_onnx
        say(f"edge_chat convert {hf} --to onnx --quant int4 --graph {graph} -o {out} ...")
        out.parent.mkdir(parents=True, exist_ok=True)
        convert_to_onnx(hf, "int4", out, graph=graph)
    return out


class Clock:
    """A transformers streamer that only notes when each put() comes (the first is
    the prompt, then one per generated token)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def optimum_run(model, tokens: list[int], gen: int) -> dict:
    import torch
    ids = torch.tensor([tokens])
    clock = Clock()
    t0 = time.perf_counter()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                         max_new_tokens=gen, min_new_tokens=gen, streamer=clock,
                         pad_token_id=0)
    end = time.perf_counter()
    n = out.shape[1] - len(tokens)
    first = clock.times[1]
    return {"ttft": first - t0, "prefill_tps": len(tokens) / (first - t0),
            "decode_tps": (n - 1) / (end - first)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hf", type=Path, help="Hugging Face folder (default: real Qwen or the bench model)")
    ap.add_argument("--onnx", type=Path, help="our ONNX folder (default: converted from --hf, cached)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-genai", action="store_true", help="skip onnxruntime-genai")
    a = ap.parse_args()

    import onnxruntime as ort

    from edge_chat.engines import EngineOptions
    from edge_chat.runtime import open_chat
    from edge_chat.system import physical_cores

    if a.hf is None:
        a.hf = real_model(QWEN_HF)
        if a.hf is None:
            from bench_model import hf as bench_hf
            a.hf = bench_hf()
    threads = a.threads or physical_cores()
    ours_dir = our_model(a.hf, a.onnx)
    opt_dir = our_model(a.hf, None, "optimum")
    from edge_chat.store.paths import path_size
    size = path_size(ours_dir)
    print(f"# onnx_vs_peers: {a.hf.name} -> {ours_dir.name} ({size / MB:.0f} MB); prompt "
          f"{a.prompt} tokens, {a.gen} generated, {a.reps} reps, {threads} threads, "
          f"onnxruntime {ort.__version__}")
    print(f"# {machine()}")

    say("ours in a child process: load time, peak RSS, second turn ...")
    wait_quiet()
    child = measure_in_child(str(ours_dir), BenchConfig(
        prompt_lengths=[a.prompt], gen=a.gen, reps=a.reps, options={"threads": threads}),
        quiet=True)
    if "error" in child:
        raise SystemExit(f"edge_chat bench failed: {child['error']}")

    # prefill is measured: no prompt cache
    model = open_chat(str(ours_dir), EngineOptions(threads=threads, cache_ram="0"),
                      need_template=False)
    runner = Runner(model, BenchConfig(prompt_lengths=[a.prompt], gen=a.gen))
    tokens = exact_prompt(model, a.prompt, runner.filler)
    from optimum.onnxruntime import ORTModelForCausalLM
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    t = time.perf_counter()
    opt = ORTModelForCausalLM.from_pretrained(opt_dir, provider="CPUExecutionProvider",
                                              session_options=so, use_cache=True)
    opt_load = time.perf_counter() - t

    genai = proc = None
    if not a.no_genai:
        py = genai_python()
        gdir = genai_model(a.hf, py)
        tok_file = cache_dir() / "genai" / "prompt-tokens.json"
        tok_file.write_text(json.dumps(tokens))
        proc = subprocess.Popen([str(py), str(HERE / "genai_runner.py"), str(gdir), str(tok_file),
                                 str(a.gen), str(threads)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        genai = json.loads(proc.stdout.readline())
        genai["size"] = sum(p.stat().st_size for p in gdir.iterdir())

    say("ours, optimum" + (", onnxruntime-genai" if proc else "") + ", interleaved run by run ...")
    def ours(_warmup):
        runner.reset_cache(tokens[0])
        return runner.run(tokens)

    def genai_once(_warmup):
        proc.stdin.write("run\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    peers = {"ours": ours, "optimum": lambda _warmup: optimum_run(opt, tokens, a.gen)}
    if proc:
        peers["genai"] = genai_once
    runs = interleave(a.reps, peers)
    ours_runs, opt_runs, g_runs = runs["ours"], runs["optimum"], runs.get("genai", [])
    if proc:
        proc.stdin.close()
        proc.wait()
        genai["peak_rss"] = max(g["peak_rss"] for g in g_runs)
    model.engine.close()

    def ratio(o, p, key):
        return f"{paired(o, p):.2f} / {best(o, key) / best(p, key):.2f}" if p else "-"

    rows = []
    for key, label in (("decode_tps", "decode tok/s"), ("prefill_tps", "prefill tok/s"),
                       ("ttft", "TTFT ms")):
        o, p, g = column(ours_runs, key), column(opt_runs, key), column(g_runs, key)
        rows.append([label, cell(o, key), cell(p, key), cell(g, key), ratio(o, p, key),
                     ratio(o, g, key)])
    rows.append(["load s", f"{child['load_s']:.2f}", f"{opt_load:.2f}",
                 f"{genai['load_s']:.2f}" if genai else "-", "", ""])
    rows.append(["model MB", f"{size / MB:.0f}", f"{path_size(opt_dir) / MB:.0f}",
                 f"{genai['size'] / MB:.0f}" if genai else "-", "", ""])
    print_rows("speed (median ±half range (best) of the reps; ratios ours/peer: median of the "
               "per-round ratios / best vs best; TTFT: lower is better)",
               ["metric", "ours", "optimum", f"onnxruntime-genai {genai['version'] if genai else ''}",
                "ours/optimum", "ours/genai"], rows)

    vs_opt = paired(column(ours_runs, "decode_tps"), column(opt_runs, "decode_tps"))
    vs_g = paired(column(ours_runs, "decode_tps"), column(g_runs, "decode_tps"))
    st = child["second_turn"]
    checks = [
        ["decode vs optimum (paired median)", f"{vs_opt:.2f}x", ">= 1.5x", verdict(vs_opt >= 1.5)],
        ["decode vs onnxruntime-genai int4 (paired median)", f"{vs_g:.2f}x" if vs_g else "-",
         ">= 1.0x", verdict(vs_g >= 1.0 if vs_g else None)],
        ["second-turn TTFT / first", f"{st['ratio']:.3f} ({st['second_ttft']['median'] * 1000:.0f}"
         f" / {st['first_ttft']['median'] * 1000:.0f} ms; evaluated "
         f"{st['second_n_prompt_evaluated']} of {st['second_prompt_tokens']} tokens)", "<= 0.2",
         verdict(st["ratio"] <= 0.2)],
        ["peak RSS", f"ours {child['peak_rss'] / MB:.0f} MB (model {size / MB:.0f} MB)"
         + (f"; onnxruntime-genai {genai['peak_rss'] / MB:.0f} MB (model {genai['size'] / MB:.0f} MB)"
            if genai else ""), "(info)", ""],
    ]
    print_rows("targets", ["check", "measured", "target", "verdict"], checks)


if __name__ == "__main__":
    main()
