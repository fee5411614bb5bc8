"""Runs inside the onnxruntime-genai venv (see onnx_vs_peers.py); imports nothing of
edge_chat. Loads the model, prints {"load_s", "version"} as one JSON line, then for
each line "run" on stdin generates exactly GEN tokens greedily after the prompt token
ids and prints {"ttft", "prefill_tps", "decode_tps", "gen"}; exits at end of input.
(One run per request lets the caller interleave it with the other peers.)

    python genai_runner.py MODEL_DIR TOKENS_JSON GEN THREADS"""

import json
import resource
import sys
import time

import onnxruntime_genai as og


def run(model, tokens: list[int], gen: int) -> dict:
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(tokens) + gen,
                              min_length=len(tokens) + gen)
    g = og.Generator(model, params)
    t0 = time.perf_counter()
    g.append_tokens(tokens)
    g.generate_next_token()
    first = time.perf_counter()
    n = 1
    while n < gen and not g.is_done():
        g.generate_next_token()
        n += 1
    end = time.perf_counter()
    ttft = first - t0
    return {"ttft": ttft, "prefill_tps": len(tokens) / ttft,
            "decode_tps": (n - 1) / (end - first), "gen": n}


def main() -> None:
    folder, tokens_file, gen, threads = sys.argv[1:5]
    with open(tokens_file) as f:
        tokens = json.load(f)
    t = time.perf_counter()
    config = og.Config(folder)
    config.clear_providers()                      # CPU
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    print(json.dumps({"load_s": time.perf_counter() - t, "version": og.__version__}), flush=True)
    for line in sys.stdin:
        if line.strip() == "run":
            r = run(model, tokens, int(gen))
            r["peak_rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            print(json.dumps(r), flush=True)


if __name__ == "__main__":
    main()
