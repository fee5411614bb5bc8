"""Speculative decoding on the real Qwen2.5-Coder-0.5B-Instruct, side by side in one run:

  * plain  - edge_chat with --speculative off (GGUF Q4_K_M, and our int4 ONNX)
  * lookup - edge_chat's default (--speculative auto: prompt lookup, adaptive)
  * predicted - edge_chat with the original code as OpenAI's `prediction`
  * llama-cpp-python's LlamaPromptLookupDecoding (its high-level Llama with
    draft_model=..., greedy) on the same GGUF file and the same prompt tokens

Workloads (edge_chat/data/code_edits.json, written for this benchmark):
  * code edits: a 30-40 line Python function, "rename X" / "change Y", answered whole;
  * open-ended questions (20, nothing to copy): speculation must not slow them down;
  * greedy identity: answers with speculation equal the plain answers token for
    token on 50 prompts (the 6 edits, 24 more instructions on the same functions,
    the 20 questions), on both engines; where one differs, how close the plain run's
    two best tokens were at the first token that differs (a near-tie, or a real bug).

    python benchmarks/spec_vs_peers.py [--gguf FILE] [--onnx FOLDER] [--threads 2]
        [--rounds 3] [--edits 6] [--questions 20] [--identity 50] [--max-tokens 512]

Decode tok/s = (completion tokens - 1) / (seconds after the first token), summed over
a workload's prompts; ratios are per engine against its own plain decode, measured
round by round (interleaved, waiting for quiet CPUs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import interleave, llama_greedy, machine, med, print_rows, real_model, say, verdict

QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_HF = "qwen2.5-coder-0.5b-instruct-hf"
MORE_INSTRUCTIONS = (
    "Add type hints to every parameter and return value. Return the whole code.",
    "Explain in three sentences what this code does.",
    "Add a comment above each loop saying what it does. Return the whole code.",
    "Write one pytest test for this code.",
)


def prompts(a) -> dict[str, list[tuple[str, str | None]]]:
    """Workload -> [(user message, prediction)]."""
    from edge_chat.bench.edit import edit_message, load_workload
    w = load_workload()
    edits = [(edit_message(e), e["code"]) for e in w["code_edits"]]
    more = [(f"{i}\n\n```python\n{e['code']}```", None)
            for e in w["code_edits"] for i in MORE_INSTRUCTIONS]
    questions = [(q, None) for q in w["open_questions"]]
    return {"edits": edits[:a.edits], "questions": questions[:a.questions],
            "identity": (edits + more + questions)[:a.identity]}


def ours(model, text: str, max_tokens: int, mode: str, prediction: str | None = None) -> dict:
    from edge_chat.params import make_params
    params = make_params(temperature=0, max_tokens=max_tokens)
    model.engine.speculative = mode
    c = model.complete([{"role": "user", "content": text}], params, prediction=prediction)
    st = c.stats[0]
    return {"tokens": max(st.completion_tokens - 1, 0), "seconds": st.seconds - st.ttft,
            "drafted": st.draft_tokens, "accepted": st.accepted_tokens,
            "text": c.choices[0].text}


def identical(model, text: str, prediction: str | None, max_tokens: int) -> float | None:
    """None if the greedy answer with speculation (and the prediction) equals the plain
    one token for token; else how close the plain run's two best tokens were where the
    answers part (logprob gap, nats: a near-tie that rounding can flip is ~0.01)."""
    from edge_chat.params import make_params
    params = make_params(temperature=0, max_tokens=max_tokens)
    answers = []
    for mode, pred in (("off", None), ("auto", prediction)):
        model.engine.speculative = mode
        c = model.complete([{"role": "user", "content": text}], params, prediction=pred,
                           logprobs=2)
        answers.append(c.choices[0].logprobs)
    plain, spec = answers
    for a, b in zip(plain, spec):
        if a.bytes != b.bytes:
            return a.top[0].logprob - a.top[1].logprob
    return None if len(plain) == len(spec) else float("nan")


def llama_lookup(llm, model, text: str, max_tokens: int) -> dict:
    """llama-cpp-python's prompt lookup on the same prompt tokens (greedy)."""
    from edge_chat.params import make_params
    tokens = model.prepare([{"role": "user", "content": text}],
                           make_params(max_tokens=max_tokens)).tokens
    try:
        g = llama_greedy(llm, tokens, max_tokens, model.engine.is_eog)
    except ValueError as e:     # its scores buffer overflowing (see logits_all below)
        say(f"LlamaPromptLookupDecoding failed: {e}")
        return {"error": str(e)}
    return {"tokens": max(g["n"] - 1, 0), "seconds": g["end"] - g["first"]}


def workload(runs: dict, names: list[str]) -> dict[str, float]:
    """name -> decode tok/s of each round (tokens / seconds summed over the prompts)."""
    out = {}
    for name in names:
        out[name] = [sum(r["tokens"] for r in rnd) / max(sum(r["seconds"] for r in rnd), 1e-9)
                     for rnd in runs[name] if not any("error" in r for r in rnd)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gguf", type=Path)
    ap.add_argument("--onnx", type=Path, help="our int4 ONNX folder (default: converted from "
                    "the real Qwen HF folder by onnx_vs_peers' cache; --no-onnx skips)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--edits", type=int, default=6)
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--identity", type=int, default=50)
    ap.add_argument("--max-tokens", type=int, default=512)
    a = ap.parse_args()

    import llama_cpp
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    from edge_chat.engines import EngineOptions
    from edge_chat.runtime import open_chat

    gguf = a.gguf or real_model(QWEN)
    if gguf is None:
        raise SystemExit("no GGUF model: pass --gguf or fetch the real models")
    paths = {"gguf": gguf}
    if not a.no_onnx:
        onnx = a.onnx
        if onnx is None and real_model(QWEN_HF) is not None:
            from onnx_vs_peers import our_model
            onnx = our_model(real_model(QWEN_HF), None)
        if onnx is not None:
            paths["onnx"] = onnx
    print(f"# spec_vs_peers: {', '.join(f'{k} {v.name}' for k, v in paths.items())}; "
          f"{a.threads} threads, {a.rounds} rounds, max {a.max_tokens} tokens, "
          f"llama-cpp-python {llama_cpp.__version__}")
    print(f"# {machine()}")
    work = prompts(a)
    opts = EngineOptions(n_ctx=4096, threads=a.threads)
    models = {k: open_chat(str(p), opts) for k, p in paths.items()}
    # logits_all=True: with a draft model llama-cpp-python needs the scores of every
    # position but sizes its buffer from this argument (n_batch rows otherwise: past
    # 512 tokens its generate() fails with a broadcast error)
    llm = llama_cpp.Llama(str(gguf), n_ctx=4096, n_threads=a.threads, n_threads_batch=a.threads,
                          n_batch=512, verbose=False, logits_all=True,
                          draft_model=LlamaPromptLookupDecoding(num_pred_tokens=10))
    mt = a.max_tokens

    def over(fn, items):
        return lambda _warmup: [fn(text, pred) for text, pred in items]

    peers = {}
    for k, m in models.items():
        peers[f"{k} plain"] = over(lambda t, p, m=m: ours(m, t, mt, "off"), work["edits"])
        peers[f"{k} lookup"] = over(lambda t, p, m=m: ours(m, t, mt, "auto"), work["edits"])
        peers[f"{k} predicted"] = over(lambda t, p, m=m: ours(m, t, mt, "auto", p), work["edits"])
        peers[f"{k} q plain"] = over(lambda t, p, m=m: ours(m, t, mt, "off"), work["questions"])
        peers[f"{k} q auto"] = over(lambda t, p, m=m: ours(m, t, mt, "auto"), work["questions"])
    peers["llama-cpp-python lookup"] = over(
        lambda t, p: llama_lookup(llm, models["gguf"], t, mt), work["edits"])
    say(f"{len(peers)} runs per round over {len(work['edits'])} edits and "
        f"{len(work['questions'])} questions ...")
    runs = interleave(a.rounds, peers)
    tps = workload(runs, list(peers))

    rows, checks = [], []
    for k in models:
        plain, lookup, pred = tps[f"{k} plain"], tps[f"{k} lookup"], tps[f"{k} predicted"]
        ratio = [x / y for x, y in zip(lookup, plain)]
        pratio = [x / y for x, y in zip(pred, plain)]
        acc = [sum(r["accepted"] for r in rnd) / max(sum(r["drafted"] for r in rnd), 1)
               for rnd in runs[f"{k} lookup"]]
        rows.append([k, f"{med(plain):.1f}", f"{med(lookup):.1f}", f"{med(ratio):.2f}x",
                     f"{med(acc):.0%}", f"{med(pred):.1f}", f"{med(pratio):.2f}x"])
        checks.append([f"{k}: code edits, lookup vs plain", f"{med(ratio):.2f}x", ">= 2.0x",
                       verdict(med(ratio) >= 2.0)])
        checks.append([f"{k}: code edits, prediction vs plain", f"{med(pratio):.2f}x",
                       ">= 2.5x", verdict(med(pratio) >= 2.5)])
        q = [x / y for x, y in zip(tps[f"{k} q auto"], tps[f"{k} q plain"])]
        checks.append([f"{k}: open questions, auto vs plain", f"{med(q):.2f}x", ">= 0.97x",
                       verdict(med(q) >= 0.97)])
    peer = tps["llama-cpp-python lookup"]
    if peer:
        vs = [x / y for x, y in zip(tps["gguf lookup"], peer)]
        rows.append(["llama-cpp-python LlamaPromptLookupDecoding", "-", f"{med(peer):.1f}", "-",
                     "-", "-", "-"])
        checks.append(["gguf: code edits, lookup vs LlamaPromptLookupDecoding",
                       f"{med(vs):.2f}x", ">= 1.3x", verdict(med(vs) >= 1.3)])
    else:
        checks.append(["gguf: code edits, lookup vs LlamaPromptLookupDecoding",
                       "its runs failed (see the log)", ">= 1.3x", verdict(None)])
    print_rows("code edits: decode tok/s (median of the rounds)",
               ["engine", "plain", "lookup (auto)", "x plain", "accepted", "predicted",
                "x plain"], rows)

    say(f"greedy identity on {len(work['identity'])} prompts ...")
    for k, m in models.items():
        runs = [identical(m, t, p, min(mt, 256)) for t, p in work["identity"]]
        same = sum(r is None for r in runs)
        gaps = ", ".join(f"{g:.3f}" for g in sorted(r for r in runs if r is not None))
        checks.append([f"{k}: greedy answers identical with speculation", f"{same}/"
                       f"{len(work['identity'])}" + (f" (first differing token: the plain "
                                                     f"run's top-2 gap {gaps} nats)" if gaps
                                                     else ""),
                       "all", verdict(same == len(work["identity"]))])
    print_rows("targets", ["check", "measured", "target", "verdict"], checks)
    llm.close()
    for m in models.values():
        m.engine.close()


if __name__ == "__main__":
    main()
