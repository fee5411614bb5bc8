"""Issue 12's targets for tool calls and structured output, on a real model, through
a real `edge_chat serve` and the official `openai` client:

  * 20 requests that clearly need one of 4 offered tools: in "auto" mode the share
    that comes back as a parsed call of the right function (target >= 90 %);
  * the same 20 with tool_choice "required" and with the right function named: the
    share whose arguments validate against the function's schema (target 100 %);
  * raw call markup in `content` or streamed `delta.content`: count (target 0);
  * 20 prompts with a response_format json_schema: the share of schema-valid answers
    (target 100 %).

    python benchmarks/tool_eval.py MODEL [MODEL...] [--threads 2] [--limit 20]

MODEL: a .gguf file, an ONNX folder or a store name. Greedy decoding."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.server import Server, make_store  # noqa: E402

TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Get the current weather in a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "convert_units", "description": "Convert a quantity from one unit to another.",
        "parameters": {"type": "object", "properties": {
            "value": {"type": "number"}, "from_unit": {"type": "string"},
            "to_unit": {"type": "string"}}, "required": ["value", "from_unit", "to_unit"]}}},
    {"type": "function", "function": {
        "name": "send_email", "description": "Send an email to someone.",
        "parameters": {"type": "object", "properties": {
            "to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
            "required": ["to", "subject", "body"]}}},
    {"type": "function", "function": {
        "name": "search_web", "description": "Search the web for a query.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"]}}},
]

PROMPTS = [
    ("What's the weather like in Paris right now?", "get_weather"),
    ("Is it raining in London today?", "get_weather"),
    ("Tell me the current temperature in Tokyo in fahrenheit.", "get_weather"),
    ("How hot is it in Cairo at the moment?", "get_weather"),
    ("Check the weather in New York for me.", "get_weather"),
    ("Convert 10 kilometers to miles.", "convert_units"),
    ("How many pounds is 5 kilograms?", "convert_units"),
    ("Convert 100 fahrenheit to celsius.", "convert_units"),
    ("What is 3 feet in meters?", "convert_units"),
    ("Convert 2.5 liters to gallons.", "convert_units"),
    ("Send an email to bob@example.com with subject 'Lunch' saying 'See you at noon'.", "send_email"),
    ("Email alice@example.com that the meeting moved to 3pm, subject 'Meeting'.", "send_email"),
    ("Write to carol@example.com, subject 'Report', body 'The report is attached.'", "send_email"),
    ("Send dave@example.com an email titled 'Hi' with the text 'Hello Dave'.", "send_email"),
    ("Please email eve@example.com: subject 'Invoice', body 'Invoice 42 is paid.'", "send_email"),
    ("Search the web for the latest Python release.", "search_web"),
    ("Look up who won the 2022 World Cup on the web.", "search_web"),
    ("Find information online about the James Webb telescope.", "search_web"),
    ("Search for reviews of the Framework laptop.", "search_web"),
    ("Do a web search for 'best hiking trails in Norway'.", "search_web"),
]

SCHEMA_PROMPTS = [
    "Describe a fictional person.", "Give me a made-up user profile.",
    "Invent a character for a novel.", "Create a sample employee record.",
    "Describe your favourite scientist.", "Make up a customer.", "Describe a chess player.",
    "Invent a musician.", "Describe a painter from history.", "Create a test user.",
    "Describe a pilot.", "Invent a chef.", "Describe an astronaut.", "Make up a teacher.",
    "Describe a programmer.", "Invent a doctor.", "Describe a gardener.", "Make up a poet.",
    "Describe an athlete.", "Invent an explorer.",
]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "occupation": {"type": "string"}, "skills": {"type": "array", "items": {"type": "string"},
                                                 "maxItems": 5}},
    "required": ["name", "age", "occupation", "skills"], "additionalProperties": False}
MARKUP = ("<tool_call>", "</tool_call>", "<|python_tag|>", "[TOOL_CALLS]")


def valid(instance, schema) -> bool:
    import jsonschema
    try:
        jsonschema.validate(instance, schema)
        return True
    except jsonschema.ValidationError:
        return False


def schema_of(name: str) -> dict:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


def evaluate(client, model: str, limit: int) -> dict:
    msgs = lambda q: [{"role": "user", "content": q}]  # noqa: E731
    out = {"auto_right": 0, "required_valid": 0, "named_valid": 0, "markup": 0,
           "schema_valid": 0, "n": min(limit, len(PROMPTS))}
    for q, want in PROMPTS[:limit]:
        r = client.chat.completions.create(model=model, messages=msgs(q), tools=TOOLS,
                                           temperature=0, max_tokens=200)
        m = r.choices[0].message
        out["markup"] += any(k in (m.content or "") for k in MARKUP)
        if m.tool_calls and m.tool_calls[0].function.name == want:
            out["auto_right"] += 1
        for choice, key in (("required", "required_valid"),
                            ({"type": "function", "function": {"name": want}}, "named_valid")):
            text, calls = "", {}
            for ch in client.chat.completions.create(
                    model=model, messages=msgs(q), tools=TOOLS, tool_choice=choice,
                    temperature=0, max_tokens=200, stream=True):
                d = ch.choices[0].delta if ch.choices else None
                if d is None:
                    continue
                text += d.content or ""
                for tc in d.tool_calls or []:
                    c = calls.setdefault(tc.index, {"name": "", "arguments": ""})
                    c["name"] += tc.function.name or ""
                    c["arguments"] += tc.function.arguments or ""
            out["markup"] += any(k in text for k in MARKUP)
            ok = bool(calls) and all(
                c["name"] in {t["function"]["name"] for t in TOOLS}
                and valid(json.loads(c["arguments"]), schema_of(c["name"]))
                for c in calls.values())
            out[key] += ok and (key != "named_valid" or calls[0]["name"] == want)
    for q in SCHEMA_PROMPTS[:limit]:
        r = client.chat.completions.create(
            model=model, messages=msgs(q), temperature=0, max_tokens=300,
            response_format={"type": "json_schema", "json_schema": {
                "name": "person", "schema": PERSON, "strict": True}})
        try:
            out["schema_valid"] += valid(json.loads(r.choices[0].message.content), PERSON)
        except ValueError:
            pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=20, help="prompts per measure (max 20)")
    args = ap.parse_args()
    import openai
    from edge_chat.store.paths import resolve_model
    tmp = Path(tempfile.mkdtemp(prefix="tool_eval_"))
    paths = {Path(resolve_model(m)).name: Path(resolve_model(m)) for m in args.models}
    store = make_store(tmp / "store", paths)
    server = Server(store, "--threads", str(args.threads), log=tmp / "server.log", timeout=300)
    try:
        client = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=600)
        print("| model | auto: right function | required: valid | named: valid | "
              "markup in content | json_schema: valid |")
        print("|---|---|---|---|---|---|")
        for name in paths:
            model = name.removesuffix(".gguf")
            r = evaluate(client, model, args.limit)
            n = r["n"]
            pct = lambda k: f"{r[k]}/{n} ({100 * r[k] / n:.0f} %)"  # noqa: E731
            print(f"| {model} | {pct('auto_right')} | {pct('required_valid')} | "
                  f"{pct('named_valid')} | {r['markup']} | {pct('schema_valid')} |", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
