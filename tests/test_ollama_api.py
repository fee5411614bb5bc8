"""Ollama's API (/api/chat, /api/generate, /api/tags, /api/show, /api/ps) through the
official `ollama` client and raw HTTP, against a real `edge_chat serve` and the tiny
trained models on both engines (GGUF and ONNX)."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest

from tests.support.server import FAST, Server, chatml, make_store
from tests.support.tiny_model import TRAINED_QA
from tests.support.tools_data import ADD, HERMES, TOOLS

GGUF, ONNX = "tiny-q8_0", "tiny-onnx-int8"
MODELS = (GGUF, ONNX)
FRANCE = TRAINED_QA[0]
GREEDY = {"temperature": 0, "num_predict": 60}


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_onnx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ollama")
    store = make_store(tmp / "store", {f"{GGUF}.gguf": tiny_gguf["q8_0"],
                                       ONNX: tiny_onnx["int8"]})
    (tmp / "hermes.jinja").write_text(HERMES)
    s = Server(store, *FAST, "--chat-template", str(tmp / "hermes.jinja"),
               log=tmp / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.root, timeout=120)


@pytest.mark.parametrize("model", MODELS)
def test_chat(client, model):
    r = client.chat(model=f"{model}:latest", messages=FRANCE.messages, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content == FRANCE.answer
    assert r.done and r.done_reason == "stop" and r.model == f"{model}:latest"
    assert r.prompt_eval_count > 5 and r.eval_count > 3
    assert r.total_duration >= r.prompt_eval_duration > 0 and r.eval_duration > 0
    assert r.created_at.endswith("Z")


@pytest.mark.parametrize("model", MODELS)
def test_chat_streamed(client, model):
    parts = list(client.chat(model=model, messages=FRANCE.messages, options=GREEDY,
                             stream=True))
    assert all(not p.done for p in parts[:-1]) and len(parts) > 2
    assert "".join(p.message.content for p in parts) == FRANCE.answer
    last = parts[-1]
    assert last.done and last.done_reason == "stop" and last.message.content == ""
    assert last.eval_count == len(parts) - 1 or last.eval_count >= 3


@pytest.mark.parametrize("model", MODELS)
def test_logprobs(client, model):
    r = client.chat(model=model, messages=FRANCE.messages, options=GREEDY, logprobs=True,
                    top_logprobs=2)
    assert "".join(t.token for t in r.logprobs) == r.message.content == FRANCE.answer
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in r.logprobs)
    parts = list(client.generate(model=model, prompt=FRANCE.messages[0]["content"],
                                 options=GREEDY, logprobs=True, stream=True))
    assert [t.token for p in parts for t in p.logprobs or []] == [t.token for t in r.logprobs]
    assert client.chat(model=model, messages=FRANCE.messages, options=GREEDY).logprobs is None


@pytest.mark.parametrize("model", MODELS)
def test_num_predict_and_stop(client, model):
    r = client.chat(model=model, messages=FRANCE.messages,
                    options={"temperature": 0, "num_predict": 3})
    assert r.done_reason == "length" and r.eval_count == 3
    r = client.chat(model=model, messages=FRANCE.messages,
                    options={"temperature": 0, "stop": ["France"], "num_predict": -1})
    assert r.message.content == FRANCE.answer.split("France")[0]


@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip(client, model):
    """The tiny model never calls a tool by itself: `format` holds it to a bare JSON
    call of `add`, which the server's tool parser turns into a tool call (as it would
    the call a real model writes); then the result goes back as a tool message."""
    call_schema = {"type": "object", "properties": {
        "name": {"const": "add"}, "arguments": ADD["function"]["parameters"]},
        "required": ["name", "arguments"], "additionalProperties": False}
    r = client.chat(model=model, messages=FRANCE.messages, tools=TOOLS, format=call_schema,
                    options={"temperature": 0, "num_predict": 80})
    calls = r.message.tool_calls
    assert calls and calls[0].function.name == "add", r
    assert r.message.content == ""
    jsonschema.validate(dict(calls[0].function.arguments), ADD["function"]["parameters"])
    history = FRANCE.messages + [r.message, {"role": "tool", "tool_name": "add",
                                             "content": "5"}]
    r2 = client.chat(model=model, messages=history, tools=TOOLS,
                     options={"temperature": 0, "num_predict": 12})
    assert r2.done and r2.done_reason in ("stop", "length") and not r2.message.tool_calls


@pytest.mark.parametrize("model", MODELS)
def test_format_json_and_schema(client, model):
    r = client.chat(model=model, messages=FRANCE.messages, format="json",
                    options={"temperature": 0, "num_predict": 150})
    assert isinstance(json.loads(r.message.content), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    r = client.generate(model=model, prompt=FRANCE.messages[0]["content"], format=schema,
                        options={"temperature": 0, "num_predict": 60})
    jsonschema.validate(json.loads(r.response), schema)


@pytest.mark.parametrize("model", MODELS)
def test_generate(client, model):
    q = FRANCE.messages[0]["content"]
    r = client.generate(model=model, prompt=q, options=GREEDY)
    assert r.response == FRANCE.answer and r.done and r.done_reason == "stop"
    parts = list(client.generate(model=model, prompt=q, options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == FRANCE.answer and parts[-1].done
    pirate = TRAINED_QA[11]
    r = client.generate(model=model, prompt=pirate.messages[1]["content"],
                        system=pirate.messages[0]["content"], options=GREEDY)
    assert r.response == pirate.answer
    r = client.generate(model=model, prompt=chatml(FRANCE.messages), raw=True, options=GREEDY)
    assert r.response == FRANCE.answer


def test_load_list_show_ps(client, server):
    r = client.generate(model=ONNX)                 # the "load" idiom: no prompt
    assert r.done and r.done_reason == "load" and r.response == ""
    r = client.chat(model=GGUF, messages=[])
    assert r.done and r.done_reason == "load" and r.message.content == ""
    names = {m.model for m in client.list().models}
    assert names == {f"{GGUF}:latest", f"{ONNX}:latest"}
    gguf = next(m for m in client.list().models if m.model == f"{GGUF}:latest")
    assert gguf.size > 0 and len(gguf.digest) == 64 and gguf.modified_at is not None
    assert gguf.details.format == "gguf" and gguf.details.quantization_level
    s = client.show(f"{GGUF}:latest")
    assert s.details.format == "gguf" and s.modelinfo["general.architecture"] == "llama"
    assert "completion" in s.capabilities
    loaded = {m.model for m in client.ps().models}
    assert f"{ONNX}:latest" in loaded
    p = next(m for m in client.ps().models if m.model == f"{ONNX}:latest")
    assert p.size_vram == 0 and p.expires_at is not None and p.context_length > 0
    assert httpx.get(f"{server.root}/api/version").json()["version"]
    assert httpx.get(server.root + "/").text.startswith("Ollama is running")
    assert httpx.head(server.root + "/").status_code == 200


def test_missing_model_is_404(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope", messages=FRANCE.messages)
    assert e.value.status_code == 404 and e.value.error == "model 'nope' not found"
    with pytest.raises(ollama.ResponseError) as e:
        client.show("../etc")
    assert e.value.status_code == 404


@pytest.mark.parametrize("path,body,words", [
    ("chat", {"messages": [{"role": "user", "content": "hi", "images": ["AAAA"]}]},
     "text-only"),
    ("chat", {"messages": FRANCE.messages, "options": {"temperature": 9}},
     "options.temperature"),
    ("chat", {"messages": FRANCE.messages, "options": {"num_predict": 0}},
     "options.num_predict"),
    ("chat", {"messages": FRANCE.messages, "format": "yaml"}, "format"),
    ("chat", {"messages": FRANCE.messages, "keep_alive": "soon"}, "keep_alive"),
    ("chat", {"messages": FRANCE.messages, "stream": "no"}, "stream"),
    ("chat", {"messages": FRANCE.messages, "logprobs": True, "top_logprobs": 21},
     "top_logprobs"),
    ("chat", {"messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("chat", {"messages": FRANCE.messages + [{"role": "tool", "content": "1"}]}, "tool"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image"}]}]}, "image"),
    ("chat", {"messages": FRANCE.messages, "tools": [{"type": "retrieval"}]}, "tools[0]"),
    ("generate", {"prompt": "x", "suffix": "y"}, "suffix"),
    ("generate", {"prompt": "x", "images": ["AAAA"]}, "text-only"),
    ("generate", {"prompt": "x", "template": "{{ .Prompt }}"}, "template"),
])
def test_bad_requests_are_400_in_ollamas_shape(server, path, body, words):
    r = httpx.post(f"{server.root}/api/{path}", json={"model": GGUF, "stream": False, **body},
                   timeout=60)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and words in r.json()["error"], r.json()


def test_other_errors_in_ollamas_shape(server):
    r = httpx.post(f"{server.root}/api/chat", content=b"{oops",
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(f"{server.root}/api/chat", content=b"{}",
                   headers={"content-type": "text/plain"})
    assert r.status_code == 415 and isinstance(r.json()["error"], str)
    r = httpx.post(f"{server.root}/api/pull", json={"model": "x"})
    assert r.status_code == 501 and "edge_chat pull" in r.json()["error"]
    r = httpx.get(f"{server.root}/api/nothing")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = httpx.post(f"{server.url}/chat/completions", json={"model": "nope", "messages": FRANCE.messages})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_api_key(tiny_gguf, tmp_path):
    store = make_store(tmp_path / "store", {f"{GGUF}.gguf": tiny_gguf["q8_0"]})
    s = Server(store, *FAST, "--api-key", "sekret", log=tmp_path / "server.log")
    try:
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=s.root).list()
        assert e.value.status_code == 401
        authed = ollama.Client(host=s.root, headers={"Authorization": "Bearer sekret"})
        assert [m.model for m in authed.list().models] == [f"{GGUF}:latest"]
        r = authed.chat(model=GGUF, messages=FRANCE.messages, options=GREEDY)
        assert r.message.content == FRANCE.answer
        assert httpx.head(s.root + "/").status_code == 200           # no key: a liveness check
    finally:
        s.stop()


def test_keep_alive(tiny_gguf, tmp_path):
    """--keep-alive unloads an idle model; a request's keep_alive overrides it (0: unload
    after this request, -1: for ever); /api/ps shows the deadline."""
    import time
    from datetime import datetime, timezone
    store = make_store(tmp_path / "store", {f"{GGUF}.gguf": tiny_gguf["q8_0"]})
    s = Server(store, *FAST, "--keep-alive", "2s", log=tmp_path / "server.log")
    try:
        client = ollama.Client(host=s.root, timeout=60)
        assert client.generate(model=GGUF).done_reason == "load"
        [m] = client.ps().models
        left = (m.expires_at - datetime.now(timezone.utc)).total_seconds()
        assert -1 < left <= 2.5, left

        def unloaded(within: float) -> bool:
            deadline = time.monotonic() + within
            while client.ps().models:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.1)
            return True

        assert unloaded(15), "the idle model was not unloaded"
        r = client.chat(model=GGUF, messages=FRANCE.messages, options=GREEDY, keep_alive=0)
        assert r.message.content == FRANCE.answer and unloaded(1.5)     # before the 2 s
        client.chat(model=GGUF, messages=FRANCE.messages, options=GREEDY, keep_alive="-1")
        time.sleep(3)
        [m] = client.ps().models
        assert m.expires_at.year == 9999
        r = client.generate(model=GGUF, keep_alive=0)
        assert r.done_reason == "unload" and client.ps().models == []
        assert s.health()["loaded"] == []
    finally:
        s.stop()
