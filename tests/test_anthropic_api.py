"""Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens) through the
official `anthropic` client and raw HTTP, against a real `edge_chat serve` and the tiny
trained models on both engines (GGUF and ONNX)."""

from __future__ import annotations

import anthropic
import httpx
import jsonschema
import pytest

from tests.support.server import FAST, Server, make_store, sse_events
from tests.support.tiny_model import TRAINED_QA
from tests.support.tools_data import ADD, HERMES, TOOLS

GGUF, ONNX = "tiny-q8_0", "tiny-onnx-int8"
MODELS = (GGUF, ONNX)
FRANCE = TRAINED_QA[0]
PIRATE = TRAINED_QA[11]
GREEDY = {"temperature": 0}
#: the tools in Anthropic's shape
A_TOOLS = [{"name": t["function"]["name"], "description": t["function"].get("description", ""),
            "input_schema": t["function"]["parameters"]} for t in TOOLS]


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_onnx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("anthropic")
    store = make_store(tmp / "store", {f"{GGUF}.gguf": tiny_gguf["q8_0"],
                                       ONNX: tiny_onnx["int8"]})
    (tmp / "hermes.jinja").write_text(HERMES)
    s = Server(store, *FAST, "--chat-template", str(tmp / "hermes.jinja"), "--api-key", "k1",
               log=tmp / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return anthropic.Anthropic(base_url=server.root, api_key="k1", max_retries=0, timeout=120)


def ask(client, model, **kw):
    kw = {"messages": FRANCE.messages, "max_tokens": 60, "extra_body": GREEDY, **kw}
    return client.messages.create(model=model, **kw)


@pytest.mark.parametrize("model", MODELS)
def test_create(client, model):
    r = ask(client, model)
    assert r.type == "message" and r.role == "assistant" and r.id.startswith("msg_")
    assert r.model == model and r.stop_reason == "end_turn" and r.stop_sequence is None
    assert [b.type for b in r.content] == ["text"] and r.content[0].text == FRANCE.answer
    assert r.usage.input_tokens + r.usage.cache_read_input_tokens > 5
    assert r.usage.output_tokens > 3
    r = ask(client, model, system=PIRATE.messages[0]["content"],
            messages=[PIRATE.messages[1]])
    assert r.content[0].text == PIRATE.answer
    r = ask(client, model, system=[{"type": "text", "text": PIRATE.messages[0]["content"]}],
            messages=[{"role": "user", "content": [
                {"type": "text", "text": PIRATE.messages[1]["content"]}]}])
    assert r.content[0].text == PIRATE.answer


@pytest.mark.parametrize("model", MODELS)
def test_max_tokens_and_stop_sequence(client, model):
    r = ask(client, model, max_tokens=3)
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 3
    r = ask(client, model, stop_sequences=["France"])
    assert r.stop_reason == "stop_sequence" and r.stop_sequence == "France"
    assert r.content[0].text == FRANCE.answer.split("France")[0]


@pytest.mark.parametrize("model", MODELS)
def test_stream(client, model, server):
    with client.messages.stream(model=model, messages=FRANCE.messages, max_tokens=60,
                                extra_body=GREEDY) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == FRANCE.answer and final.content[0].text == FRANCE.answer
    assert final.stop_reason == "end_turn" and final.usage.output_tokens > 3
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens > 5
    with httpx.stream("POST", f"{server.root}/v1/messages", headers={"x-api-key": "k1"},
                      json={"model": model, "messages": FRANCE.messages, "max_tokens": 60,
                            "stream": True, "temperature": 0}, timeout=60) as r:
        kinds = [e["type"] for e in sse_events(r)]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}


@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip(client, model):
    r = ask(client, model, tools=A_TOOLS, tool_choice={"type": "tool", "name": "add"},
            max_tokens=120)
    assert r.stop_reason == "tool_use", r
    use = [b for b in r.content if b.type == "tool_use"]
    assert use and use[0].name == "add" and use[0].id.startswith("toolu_")
    jsonschema.validate(use[0].input, ADD["function"]["parameters"])
    history = FRANCE.messages + [
        {"role": "assistant", "content": r.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use[0].id,
                                      "content": [{"type": "text", "text": "5"}]}]}]
    r2 = ask(client, model, messages=history, tools=A_TOOLS, max_tokens=12)
    assert r2.stop_reason in ("end_turn", "max_tokens")
    with client.messages.stream(model=model, messages=FRANCE.messages, max_tokens=120,
                                tools=A_TOOLS, tool_choice={"type": "any",
                                                            "disable_parallel_tool_use": True},
                                extra_body=GREEDY) as s:
        final = s.get_final_message()
    calls = [b for b in final.content if b.type == "tool_use"]
    assert final.stop_reason == "tool_use" and len(calls) == 1
    jsonschema.validate(calls[0].input, A_TOOLS[[t["name"] for t in A_TOOLS]
                                               .index(calls[0].name)]["input_schema"])


@pytest.mark.parametrize("model", MODELS)
def test_count_tokens(client, model):
    n = client.messages.count_tokens(model=model, messages=FRANCE.messages).input_tokens
    usage = ask(client, model, max_tokens=1).usage          # the prompt, partly cached
    assert n == usage.input_tokens + usage.cache_read_input_tokens > 5
    with_tools = client.messages.count_tokens(model=model, messages=FRANCE.messages,
                                              tools=A_TOOLS).input_tokens
    assert with_tools > n


@pytest.mark.parametrize("body,words", [
    ({"max_tokens": None}, "max_tokens"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
     "'image'"),
    ({"messages": [{"role": "user", "content": [{"type": "hologram"}]}]}, "'hologram'"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
     "'web_search_20250305'"),
    ({"tool_choice": {"type": "sometimes"}}, "'sometimes'"),
    ({"temperature": 7}, "temperature"),
    ({"stop_sequences": ["a", "b", "c", "d", "e"]}, "stop_sequences"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"messages": FRANCE.messages + [{"role": "assistant", "content": "The"}]}, "prefill"),
])
def test_bad_requests_are_400_in_anthropics_shape(client, body, words):
    full = {"model": GGUF, "messages": FRANCE.messages, "max_tokens": 10, **body}
    full = {k: v for k, v in full.items() if v is not None}
    with pytest.raises(anthropic.BadRequestError) as e:
        client.post("/v1/messages", body=full, cast_to=httpx.Response)
    err = e.value.body
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert words in err["error"]["message"], err


def test_missing_model_and_auth(client, server):
    with pytest.raises(anthropic.NotFoundError) as e:
        ask(client, "nope")
    assert e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.AuthenticationError) as e:
        ask(anthropic.Anthropic(base_url=server.root, api_key="wrong", max_retries=0), GGUF)
    assert e.value.body["error"]["type"] == "authentication_error"
    bearer = anthropic.Anthropic(base_url=server.root, auth_token="k1", max_retries=0)
    assert ask(bearer, GGUF).content[0].text == FRANCE.answer
    r = httpx.post(f"{server.root}/v1/chat/completions", headers={"x-api-key": "k1"},
                   json={"model": GGUF, "messages": FRANCE.messages, "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] == FRANCE.answer
