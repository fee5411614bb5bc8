"""The API through the official `openai` client (sync and async, streamed or not),
against a real `edge_chat serve` process and the tiny trained models."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.support.server import FAST, Server, chatml, make_store
from tests.support.tiny_model import TRAINED_QA

FRANCE = TRAINED_QA[0]
GGUF = "tiny-q8_0"
ONNX = "tiny-onnx-int8"


@pytest.fixture(scope="module")
def server(tiny_gguf, tiny_onnx, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    store = make_store(tmp / "store", {
        **{f"tiny-{q}.gguf": p for q, p in tiny_gguf.items()},
        ONNX: tiny_onnx["int8"]})
    (store / "broken.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    s = Server(store, *FAST, "--max-loaded", "2", log=tmp / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def ask(client, qa=FRANCE, model=GGUF, **kw):
    return client.chat.completions.create(model=model, messages=qa.messages, temperature=0, **kw)


def test_models_listed_and_retrieved(client):
    ids = [m.id for m in client.models.list()]
    assert {GGUF, "tiny-f16", "tiny-q4_k_m", ONNX} <= set(ids)
    m = client.models.retrieve(GGUF)
    assert m.id == GGUF and m.object == "model" and m.owned_by == "edge_chat"
    assert m.model_extra["format"] == "gguf" and m.model_extra["quant"] == "q8_0"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.parametrize("qa", TRAINED_QA, ids=lambda qa: qa.messages[-1]["content"][:24])
def test_trained_answers(client, qa):
    r = ask(client, qa)
    c = r.choices[0]
    assert c.message.content == qa.answer
    assert c.message.role == "assistant" and c.finish_reason == "stop" and c.index == 0
    u = r.usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens is not None
    assert r.object == "chat.completion" and r.model == GGUF and r.id.startswith("chatcmpl-")
    assert r.system_fingerprint and r.created > 0


def test_every_quant_and_onnx_answer(client, server):
    for model in ("tiny-f16", "tiny-q4_k_m", ONNX, GGUF):
        assert ask(client, model=model).choices[0].message.content == FRANCE.answer, model
    loaded = [m["id"] for m in server.health()["loaded"]]
    assert len(loaded) <= 2 and loaded[-1] == GGUF        # --max-loaded 2: LRU unloading


def test_stream_sync(client):
    chunks = list(ask(client, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == FRANCE.answer
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_without_usage(client):
    chunks = list(ask(client, stream=True))
    assert all(c.usage is None for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


def test_async_client(server):
    async def main():
        c = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0)
        r = await c.chat.completions.create(model=GGUF, messages=FRANCE.messages,
                                            temperature=0)
        parts = []
        stream = await c.chat.completions.create(model=GGUF, messages=TRAINED_QA[1].messages,
                                                 temperature=0, stream=True)
        async for chunk in stream:
            parts.append(chunk.choices[0].delta.content or "")
        both = await asyncio.gather(*(c.chat.completions.create(
            model=GGUF, messages=qa.messages, temperature=0) for qa in TRAINED_QA[2:5]))
        await c.close()
        return r, "".join(parts), both

    r, streamed, both = asyncio.run(main())
    assert r.choices[0].message.content == FRANCE.answer
    assert streamed == TRAINED_QA[1].answer
    assert [b.choices[0].message.content for b in both] == [qa.answer for qa in TRAINED_QA[2:5]]


def test_n2(client):
    one = ask(client)
    r = ask(client, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.message.content for c in r.choices] == [FRANCE.answer] * 2
    assert r.usage.completion_tokens == 2 * one.usage.completion_tokens
    chunks = list(ask(client, n=2, stream=True))
    for i in (0, 1):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == i]
        assert "".join(c.delta.content or "" for c in mine) == FRANCE.answer
        assert mine[-1].finish_reason == "stop"


def test_stop_and_length(client):
    r = ask(client, stop=["Paris"])
    assert r.choices[0].message.content == "The capital of France is "
    assert r.choices[0].finish_reason == "stop"
    r = ask(client, stop="capital")
    assert r.choices[0].message.content == "The "
    r = ask(client, max_tokens=2)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 2
    r = ask(client, max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_seed_reproducible(client):
    def sample(seed):
        return client.chat.completions.create(
            model=GGUF, messages=FRANCE.messages, temperature=1.5, top_p=1.0, seed=seed,
            max_tokens=24, extra_body={"top_k": 0, "min_p": 0.0}).choices[0].message.content
    a, b = sample(7), sample(7)
    assert a == b
    assert len({sample(s) for s in range(1, 9)}) > 1      # the seed does change the sampling


def test_extras_and_unknown_fields(client):
    r = ask(client, extra_body={"top_k": 1, "min_p": 0.1, "repeat_penalty": 1.1,
                                "no_such_field": 3}, user="u1", presence_penalty=0.0,
            frequency_penalty=0.0, logit_bias={"5": 0})
    assert r.choices[0].message.content == FRANCE.answer


def test_tools_need_a_template_that_takes_them(client):
    # the tiny model's ChatML template has no tools: a 400 naming the model and `tools`
    # (tool calls through a template that takes them: test_server_tools.py)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, tools=tools)
    assert e.value.body["param"] == "tools" and GGUF in e.value.body["message"]
    r = ask(client, tools=tools, tool_choice="none")       # the tools are not used at all
    assert r.choices[0].message.content == FRANCE.answer


def test_plain_text_response_format(client):
    # json_object / json_schema on both engines: test_server_tools.py
    r = ask(client, model=ONNX, response_format={"type": "text"})
    assert r.choices[0].message.content == FRANCE.answer


def test_text_completions(client):
    prompt = chatml(FRANCE.messages)
    r = client.completions.create(model=GGUF, prompt=prompt, temperature=0, max_tokens=40)
    assert r.object == "text_completion" and r.choices[0].text == FRANCE.answer
    assert r.choices[0].finish_reason == "stop" and r.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model=GGUF, prompt=prompt, temperature=0,
                                            max_tokens=40, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == FRANCE.answer
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    r = client.completions.create(model=GGUF, prompt=prompt, temperature=0, max_tokens=3,
                                  echo=True)
    assert r.choices[0].text.startswith(prompt) and r.choices[0].finish_reason == "length"


def test_raw_stream_shape(server):
    body = {"model": GGUF, "messages": FRANCE.messages, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln.strip()]
    assert lines[-1] == "data: [DONE]"
    assert all(ln.startswith("data: ") for ln in lines)


def test_prompt_cache_is_reported(client):
    ask(client, TRAINED_QA[17])
    r = ask(client, TRAINED_QA[17])
    assert 0 < r.usage.prompt_tokens_details.cached_tokens < r.usage.prompt_tokens


def test_broken_model_is_a_clean_error(client, server):
    assert "broken" in [m.id for m in client.models.list()]
    for _ in range(2):                   # not cached as loaded: each request tries again
        with pytest.raises(openai.BadRequestError) as e:
            ask(client, model="broken")
        assert "broken" in e.value.body["message"]
    assert "broken" not in [m["id"] for m in server.health()["loaded"]]
    assert ask(client).choices[0].message.content == FRANCE.answer
