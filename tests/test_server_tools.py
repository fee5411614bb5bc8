"""Tool calls, structured output and logprobs through the API, on both tiny
engines (GGUF and ONNX), driven by the official `openai` client and raw HTTP
against a real `edge_chat serve`. The tiny models never call a tool by themselves,
so calls here come from constrained decoding (tool_choice "required" / named);
the free "auto" parsing is tested on real model output in test_real_clients.py
and on the families' strings in test_tools.py."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from tests.support.server import FAST, Server, make_store, no_eog, sse_events
from tests.support.tiny_model import TRAINED_QA
from tests.support.tools_data import HERMES, SCHEMAS, TOOLS

GGUF, ONNX = "tiny-q8_0", "tiny-onnx-int8"
MODELS = (GGUF, ONNX)
FRANCE = TRAINED_QA[0]


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_onnx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tools")
    store = make_store(tmp / "store", {f"{GGUF}.gguf": tiny_gguf["q8_0"],
                                       ONNX: tiny_onnx["int8"]})
    (tmp / "hermes.jinja").write_text(HERMES)
    s = Server(store, *FAST, "--chat-template", str(tmp / "hermes.jinja"),
               log=tmp / "server.log")
    s.eog = no_eog(tiny_gguf["q8_0"])
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="x", max_retries=0, timeout=120)


def ask(client, model, **kw):
    kw = {"messages": FRANCE.messages, "temperature": 0, "max_tokens": 120, **kw}
    return client.chat.completions.create(model=model, **kw)


def check_call(call) -> dict:
    assert call.type == "function" and call.id.startswith("call_")
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, SCHEMAS[call.function.name])
    return True


@pytest.mark.parametrize("model", MODELS)
def test_required_gives_valid_calls(client, model):
    for seed in range(3):
        # several calls allowed: the tiny model may go on calling until max_tokens
        r = ask(client, model, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed)
        c = r.choices[0]
        assert c.message.content is None and c.finish_reason in ("tool_calls", "length"), c
        assert c.message.tool_calls and all(check_call(t) for t in c.message.tool_calls)
        r = ask(client, model, tools=TOOLS, tool_choice="required", temperature=1.0, seed=seed,
                parallel_tool_calls=False)
        c = r.choices[0]
        assert c.message.content is None and c.finish_reason == "tool_calls", c
        assert len(c.message.tool_calls) == 1 and check_call(c.message.tool_calls[0])


@pytest.mark.parametrize("model", MODELS)
def test_named_function_streamed_like_openai(client, model, server):
    chunks = list(ask(client, model, tools=TOOLS, stream=True, parallel_tool_calls=False,
                      tool_choice={"type": "function", "function": {"name": "add"}}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert all(not d.content for d in deltas)                 # no markup as content
    parts = [tc for d in deltas for tc in d.tool_calls or []]
    assert parts[0].id.startswith("call_") and parts[0].function.name == "add"
    assert parts[0].type == "function" and parts[0].index == 0
    assert all(p.index == 0 and p.id is None and not p.function.name for p in parts[1:])
    args = json.loads("".join(p.function.arguments or "" for p in parts))
    jsonschema.validate(args, SCHEMAS["add"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("model", MODELS)
def test_auto_and_none_leave_plain_answers_alone(client, model):
    for choice in ("auto", "none"):
        c = ask(client, model, tools=TOOLS, tool_choice=choice).choices[0]
        assert c.message.tool_calls is None and c.finish_reason in ("stop", "length")
        assert "<tool_call>" not in (c.message.content or "")


@pytest.mark.parametrize("model", MODELS)
def test_history_with_calls_and_results(client, model):
    msgs = FRANCE.messages + [
        {"role": "assistant", "content": None, "tool_calls": [{
            "id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temp": 21}'}]
    r = ask(client, model, messages=msgs, tools=TOOLS, max_tokens=8)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("model", MODELS)
def test_json_schema_and_object_on_both_engines(client, model):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 12},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["answer", "n"], "additionalProperties": False}
    r = ask(client, model, max_tokens=200, response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = ask(client, model, max_tokens=200, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize("model", MODELS)
def test_chat_logprobs(client, model):
    r = ask(client, model, logprobs=True, top_logprobs=3)
    c = r.choices[0]
    content = c.logprobs.content
    assert "".join(t.token for t in content) == c.message.content
    for t in content:
        assert t.logprob <= 0 and bytes(t.bytes).decode("utf-8", "replace") == t.token
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob >= t.top_logprobs[-1].logprob
        assert t.logprob <= t.top_logprobs[0].logprob + 1e-6         # greedy: the best one
    chunks = list(ask(client, model, logprobs=True, top_logprobs=2, stream=True))
    streamed = [t for ch in chunks if ch.choices and ch.choices[0].logprobs
                for t in ch.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [round(t.logprob, 4) for t in streamed] == [round(t.logprob, 4) for t in content]
    assert ask(client, model).choices[0].logprobs is None


@pytest.mark.parametrize("model", MODELS)
def test_completion_logprobs_and_default_max_tokens(server, model):
    body = {"model": model, "prompt": "The capital of France", "temperature": 0,
            "logit_bias": server.eog}
    r = httpx.post(f"{server.url}/completions", json={**body, "logprobs": 2}, timeout=60).json()
    c = r["choices"][0]
    assert r["usage"]["completion_tokens"] == 16                   # OpenAI's default
    lp = c["logprobs"]
    assert "".join(lp["tokens"]) == c["text"] and len(lp["token_logprobs"]) == 16
    assert all(len(t) <= 2 for t in lp["top_logprobs"])
    assert lp["text_offset"][0] == 0
    assert all(lp["text_offset"][i + 1] == lp["text_offset"][i] + len(lp["tokens"][i])
               for i in range(15))
    with httpx.stream("POST", f"{server.url}/completions",
                      json={**body, "logprobs": 1, "stream": True, "max_tokens": 5},
                      timeout=60) as s:
        events = sse_events(s)
    offsets = [o for e in events[:-1] if e["choices"] and e["choices"][0]["logprobs"]
               for o in e["choices"][0]["logprobs"]["text_offset"]]
    assert len(offsets) == 5 and offsets[0] == 0 and offsets == sorted(offsets)


def test_request_fields_accepted(client):
    r = ask(client, GGUF, messages=[
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": FRANCE.messages[-1]["content"]}]}],
        stop="zzz", seed=1, user="u1", max_completion_tokens=50, metadata={"a": "b"},
        store=False, service_tier="auto")
    assert r.choices[0].message.content


@pytest.mark.parametrize("body,param", [
    ({"tools": [{"type": "function", "function": {"parameters": {"type": "object"}}}]},
     "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
     "tools[0].function.parameters"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "zz"}}},
     "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": 3}, "logprobs"),
    ({"messages": [{"role": "user", "content": "x"},
                   {"role": "tool", "tool_call_id": "call_nothing", "content": "1"}]},
     "messages[1].tool_call_id"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [{
        "id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages[0].tool_calls[0].function.arguments"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]},
     "messages[0].content"),
    ({"response_format": {"type": "json_object", "schema": "x"}, "max_tokens": 10**9},
     "response_format"),
    ({"response_format": {"type": "yaml"}, "max_tokens": 1}, "response_format"),
])
def test_bad_inputs_are_400_with_param(server, body, param):
    full = {"model": GGUF, "messages": FRANCE.messages, **body}
    r = httpx.post(f"{server.url}/chat/completions", json=full, timeout=60)
    assert r.status_code == 400, r.text
    e = r.json()["error"]
    assert e["param"] == param and e["type"] == "invalid_request_error", e
    assert httpx.get(f"{server.root}/health", timeout=10).status_code == 200


def test_completion_logprobs_range(server):
    r = httpx.post(f"{server.url}/completions",
                   json={"model": GGUF, "prompt": "x", "logprobs": 6}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["param"] == "logprobs"


@pytest.mark.parametrize("model", MODELS)
def test_api_logprobs_equal_an_independent_scoring(client, model, tiny_gguf, tiny_onnx, tmp_path):
    """The server's logprobs for a greedy answer = the engine's `logprobs()` scoring
    of prompt + answer tokens, computed here in another process (within 1e-3)."""
    from edge_chat.params import make_params
    from edge_chat.engines import EngineOptions
    from edge_chat.runtime import open_chat
    r = ask(client, model, logprobs=True, top_logprobs=1, max_tokens=24)
    served = [t.logprob for t in r.choices[0].logprobs.content]
    (tmp_path / "hermes.jinja").write_text(HERMES)
    path = tiny_gguf["q8_0"] if model == GGUF else tiny_onnx["int8"]
    m = open_chat(str(path), EngineOptions(threads=1), chat_template=str(tmp_path / "hermes.jinja"))
    try:
        greedy = make_params(temperature=0, max_tokens=24)
        prompt = m.prepare(FRANCE.messages, greedy).tokens
        ids = []
        for tok in m.engine.generate(prompt, greedy):
            if m.engine.is_eog(tok.id) or len(ids) == 24:
                break
            ids.append(tok.id)
        scored = m.engine.logprobs(prompt + ids)[len(prompt) - 1:]
    finally:
        m.engine.close()
    assert len(served) == len(ids) > 3
    assert max(abs(a - b) for a, b in zip(served, scored)) < 1e-3
