"""Decode speed with constrained output active: a response_format json_schema and a
tool_choice "required" call, against plain decoding of the same prompt length on the
same model, runs interleaved round by round (target: both >= 0.9x plain).

    python benchmarks/grammar_decode.py [MODEL...] [--reps 3] [--tokens 128] [--threads 2]

MODEL: a .gguf file or an ONNX folder (default: the real Qwen2.5-Coder-0.5B-Instruct
Q4_K_M, and its int4 ONNX conversion when the test cache has it). Greedy; plain
decoding bans the end-of-generation tokens so every run writes --tokens tokens; the
constrained runs are made long by their schemas (minItems / minLength)."""

from __future__ import annotations

import argparse
from pathlib import Path

import _common as C  # noqa: E402  (puts the repo on sys.path)

from edge_chat.params import make_params  # noqa: E402
from edge_chat.chat.tools import parse_tools  # noqa: E402
from edge_chat.engines import EngineOptions  # noqa: E402
from edge_chat.runtime import open_chat  # noqa: E402

PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "city": {"type": "string"}, "hobbies": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "city", "hobbies"], "additionalProperties": False}
PEOPLE = {"type": "object", "properties": {"people": {"type": "array", "items": PERSON,
                                                      "minItems": 12}},
          "required": ["people"], "additionalProperties": False}
EMAIL = [{"type": "function", "function": {"name": "send_email", "parameters": {
    "type": "object", "properties": {"to": {"type": "string"}, "subject": {"type": "string"},
                                     "body": {"type": "string", "minLength": 600}},
    "required": ["to", "subject", "body"], "additionalProperties": False}}}]
ASK_PEOPLE = [{"role": "user", "content": "List twelve made-up people as JSON."}]
ASK_EMAIL = [{"role": "user", "content": "Email bob@example.com a long, friendly update "
                                         "about the garden project."}]


def default_models() -> list[Path]:
    from tests.support.real_models import QWEN_GGUF
    out = [p for p in [C.real_model(QWEN_GGUF)] if p]
    cache = Path.home() / ".cache" / "edge-chat-tests"
    out += sorted(cache.glob("real-*/qwen-onnx-int4"))[:1]
    return out


def measure(path: Path, reps: int, tokens: int, threads: int) -> list:
    # speculation off for both: drafting pays differently on free text and on JSON, and
    # what is measured here is what the grammar costs per token
    m = open_chat(str(path), EngineOptions(threads=threads, speculative="off"))
    try:
        eog = {t: -100.0 for t in range(m.engine.n_vocab) if m.engine.is_eog(t)}
        plain = make_params(temperature=0, max_tokens=tokens, logit_bias=eog)
        greedy = make_params(temperature=0, max_tokens=tokens)
        schema = {"type": "json_schema", "json_schema": {"name": "people", "schema": PEOPLE}}
        required = parse_tools(EMAIL, "required", False)

        def run(messages, params, **kw):
            def once(_warmup: bool) -> dict:
                c = m.complete(messages, params, **kw)
                return {"tps": c.stats[0].decode_tps, "n": c.usage.completion_tokens}
            return once

        runs = C.interleave(reps, {
            "plain": run(ASK_PEOPLE, plain),
            "json_schema": run(ASK_PEOPLE, greedy, response_format=schema),
            "plain2": run(ASK_EMAIL, plain),
            "required tool": run(ASK_EMAIL, greedy, tools=required)})
    finally:
        m.engine.close()
    tps = {k: C.column(v, "tps") for k, v in runs.items()}
    n = {k: C.med(C.column(v, "n")) for k, v in runs.items()}
    rows = []
    for name, base in (("json_schema", "plain"), ("required tool", "plain2")):
        ratio = C.paired(tps[name], tps[base])
        rows.append([path.name, name, f"{C.cell(tps[base], 'tps')}",
                     f"{C.cell(tps[name], 'tps')} ({n[name]:.0f} tokens)",
                     f"{ratio:.3f}x", C.verdict(ratio >= 0.9)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", type=Path)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-wait", action="store_true",
                    help="do not wait for idle CPUs before each round (a quick check)")
    args = ap.parse_args()
    if args.no_wait:
        C.wait_quiet = lambda *a, **k: 0.0
    models = args.models or default_models()
    if not models:
        raise SystemExit("no model: pass a .gguf file or an ONNX folder")
    print(C.machine())
    rows = [r for p in models for r in measure(p, args.reps, args.tokens, args.threads)]
    C.print_rows(f"decode tok/s with constrained output ({args.reps} rounds, median of "
                 "per-round ratios; target >= 0.9x plain)",
                 ["model", "constraint", "plain tok/s", "constrained tok/s", "ratio", "verdict"],
                 rows)


if __name__ == "__main__":
    main()
