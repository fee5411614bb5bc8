"""How long should speculative drafts be on this machine? A study of one model:

  1. the verification cost curve: evaluating n tokens in one pass, relative to one
     step (n = 1..33, best of a few runs, in process);
  2. the greedy answers to the code-edit prompts and open questions of
     `edge_chat/data/code_edits.json` (plain decoding, recorded once);
  3. a replay of edge_chat's draft policy (engines/speculative.py: its drafters
     and `Adaptive`) over those answers at several K_MAX, against an oracle
     that drafts exactly what will be kept - decode speed
     relative to plain, computed from the cost curve (no timing noise; the Python
     around each round is not counted, so real runs come out ~5-10 % lower).

    python benchmarks/spec_policy.py [MODEL] [--threads 2] [--max-tokens 256]

MODEL: a .gguf file or an ONNX folder (default: the real Qwen2.5-Coder-0.5B Q4_K_M)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import _common as C  # noqa: E402  (puts the repo on sys.path)

from edge_chat.bench.edit import edit_message, load_workload  # noqa: E402
from edge_chat.params import make_params  # noqa: E402
from edge_chat.engines import EngineOptions  # noqa: E402
from edge_chat.engines import speculative as S  # noqa: E402
from edge_chat.runtime import open_chat  # noqa: E402

SIZES = (1, 2, 3, 4, 5, 6, 8, 9, 12, 13, 16, 17, 21, 25, 29, 33)


def cost_curve(engine, reps: int = 4) -> list[float]:
    """cost[n - 1] = seconds to evaluate n tokens / seconds for one, n = 1..33."""
    prompt = engine.tokenize("def add(a, b):\n    return a + b\n" * 40)[:400]
    engine.trim(0)
    engine.eval(prompt[:-1])
    base = len(engine.kv)
    best = {}
    for n in SIZES:
        for _ in range(reps):
            engine.trim(base)
            t = time.perf_counter()
            engine.eval(prompt[-1:] + [100 + j for j in range(n - 1)], all_logits=n > 1)
            best[n] = min(best.get(n, 1e9), time.perf_counter() - t)
    engine.trim(0)
    xs = np.array(SIZES)
    ys = np.maximum.accumulate([best[n] / best[1] for n in SIZES])     # never cheaper when longer
    return [float(v) for v in np.interp(np.arange(1, 34), xs, ys)]


def record(model, max_tokens: int) -> list[dict]:
    w = load_workload()
    items = [(edit_message(e), e["code"]) for e in w["code_edits"]] + \
        [(q, None) for q in w["open_questions"][:6]]
    params = make_params(temperature=0, max_tokens=max_tokens)
    out = []
    for text, code in items:
        prompt = model.prepare([{"role": "user", "content": text}], params).tokens
        toks = []
        for t in model.engine.generate(prompt, params):
            toks.append(t.id)
            if len(toks) >= max_tokens or model.engine.is_eog(t.id):
                break
        out.append({"prompt": prompt, "out": toks, "edit": code is not None,
                    "prediction": model.engine.tokenize(code) if code else None})
    return out


def replay(answers, cost, k_max: int, prediction: bool = False, oracle: bool = False) -> float:
    """Decode speed relative to plain over `answers` with the given policy."""
    saved = S.K_MAX
    S.K_MAX = k_max
    try:
        tokens = steps = 0.0
        for a in answers:
            out = a["out"]
            d = S.drafters_for("auto", a["prompt"], a["prediction"] if prediction else None)
            ctl = S.Adaptive()
            ctl.plain(1.0)
            d.feed(out[:1])
            i = 1
            while i < len(out):
                k = k_max if oracle else ctl.length(i)
                draft = d.draft(k) if k > 0 else []
                kept = next((j for j, t in enumerate(draft) if i + j >= len(out)
                             or out[i + j] != t), len(draft))
                if oracle:      # draft exactly what is kept, when that pays
                    draft = draft[:kept] if cost[kept] < kept + 1 else []
                    kept = len(draft)
                c = cost[min(len(draft), len(cost) - 1)]
                emit = min(kept + 1, len(out) - i)
                d.feed(out[i:i + emit])
                i += emit
                steps += c
                if draft:
                    ctl.update(len(draft), kept, c, i)
                else:
                    ctl.plain(c)
            tokens += len(out) - 1
        return tokens / steps
    finally:
        S.K_MAX = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=256)
    a = ap.parse_args()
    path = C.model_or_qwen(a.model)
    print(f"# {C.machine()}\n# {path.name}, {a.threads} threads")
    model = open_chat(str(path), EngineOptions(threads=a.threads, speculative="off"))
    C.wait_quiet(timeout=60)
    cost = cost_curve(model.engine)
    print("verification cost (n tokens / one step): " + ", ".join(
        f"{n}: {cost[n - 1]:.2f}" for n in (2, 4, 8, 17, 25, 33)))
    answers = record(model, a.max_tokens)
    edits = [x for x in answers if x["edit"]]
    questions = [x for x in answers if not x["edit"]]
    rows = []
    for label, kw in [(f"edge_chat policy, K_MAX {k}", {"k_max": k}) for k in (12, 16, 24, 32)] \
            + [("oracle (drafts what is kept, up to 24)", {"k_max": 24, "oracle": True})]:
        rows.append([label, f"{replay(edits, cost, **kw):.2f}x",
                     f"{replay(edits, cost, prediction=True, **kw):.2f}x",
                     f"{replay(questions, cost, **kw):.2f}x"])
    C.print_rows("decode speed relative to plain (replayed; current K_MAX "
                 f"{S.K_MAX})", ["policy", "code edits", "with prediction", "open questions"],
                 rows)


if __name__ == "__main__":
    main()
