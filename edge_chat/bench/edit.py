"""`edge_chat bench`'s code-edit workload: speculative decoding measured.

Each edit (edge_chat/data/code_edits.json: a 30-40 line Python function and an
instruction to rename one identifier or make one small change, answered whole) is
run greedily three times on the same prompt: plain decoding (speculation off),
speculative decoding as configured (--speculative, default auto: prompt lookup,
or the --draft model), and the same with the original code as the prediction
(OpenAI's Predicted Outputs). Reported: effective decode tok/s of each (completion
tokens after the first / decode seconds, summed over the edits), the speed-up over
plain, the share of drafted tokens kept, and whether all three answers were the
same text (greedy speculation must not change the answer)."""

from __future__ import annotations

import json
from pathlib import Path

WORKLOAD = Path(__file__).resolve().parents[1] / "data" / "code_edits.json"
RUNS = ("plain", "speculative", "prediction")


def load_workload() -> dict:
    return json.loads(WORKLOAD.read_text(encoding="utf-8"))


def edit_message(edit: dict) -> str:
    return f"{edit['instruction']}\n\n```python\n{edit['code']}```"


def code_edit(model, edits: int, max_tokens: int, say=None) -> dict:
    """The workload on `edits` edits for one ChatModel."""
    from edge_chat.params import make_params
    from edge_chat.errors import EdgeChatError
    engine = model.engine
    mode = engine.speculative
    totals = {r: {"tokens": 0, "seconds": 0.0, "drafted": 0, "accepted": 0} for r in RUNS}
    identical = 0
    chosen = load_workload()["code_edits"][:edits]
    for edit in chosen:
        if say:
            say(f"{model.info.name}: code edit '{edit['name']}' (plain, {mode}, prediction)")
        text = edit_message(edit)
        msgs = [{"role": "user", "content": text}]
        n = model.count_tokens(msgs) if model.template is not None else \
            len(engine.tokenize(text, add_bos=model.info.add_bos))
        room = model.n_ctx - n - 1
        if room < 16:
            raise EdgeChatError(f"the code edit '{edit['name']}' takes {n} tokens of the "
                                f"{model.n_ctx}-token window: pass --ctx-size, or --edits 0",
                                param="edits")
        params = make_params(temperature=0, max_tokens=min(max_tokens, room))
        prompt = model.prepare(msgs, params) if model.template is not None else \
            model.prepare_text(text, params)
        answers = []
        for run in RUNS:
            engine.speculative = "off" if run == "plain" else mode
            try:
                c = model.complete(None, params, prompt=prompt,
                                   prediction=edit["code"] if run == "prediction" else None)
            finally:
                engine.speculative = mode
            st, t = c.stats[0], totals[run]
            t["tokens"] += max(st.completion_tokens - 1, 0)
            t["seconds"] += max(st.seconds - st.ttft, 0.0)
            t["drafted"] += st.draft_tokens
            t["accepted"] += st.accepted_tokens
            answers.append(c.choices[0].text)
        identical += len(set(answers)) == 1
    out = {"mode": mode, "edits": len(chosen), "identical": identical}
    plain_tps = _tps(totals["plain"])
    for run, t in totals.items():
        tps = _tps(t)
        out[run] = {"decode_tps": tps, "tokens": t["tokens"],
                    "acceptance": t["accepted"] / t["drafted"] if t["drafted"] else None,
                    "speedup": tps / plain_tps if plain_tps else None}
    return out


def _tps(t: dict) -> float:
    return t["tokens"] / t["seconds"] if t["seconds"] > 0 else 0.0


def edit_table(results: list[dict]):
    """The rich table of the code-edit workload (None when no result has one)."""
    rows = [r for r in results if r.get("code_edit")]
    if not rows:
        return None
    from rich.table import Table
    t = Table(title="code edits: speculative vs plain decoding (greedy)")
    for col in ("model", "plain tok/s", "speculative", "accepted", "predicted", "accepted",
                "same"):
        t.add_column(col, justify="left" if col == "model" else "right")

    def pct(v):
        return "-" if v is None else f"{v:.0%}"

    for r in rows:
        e = r["code_edit"]
        s, p = e["speculative"], e["prediction"]
        t.add_row(r["model"], f"{e['plain']['decode_tps']:.1f}",
                  f"{e['mode']} {s['decode_tps']:.1f} ({s['speedup'] or 0:.2f}x)",
                  pct(s["acceptance"]), f"{p['decode_tps']:.1f} ({p['speedup'] or 0:.2f}x)",
                  pct(p["acceptance"]), f"{e['identical']}/{e['edits']}")
    return t
