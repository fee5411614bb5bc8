"""OpenAI's Responses API (/v1/responses) through the official `openai` client, raw HTTP and
openai-agents' Responses model, against a real `edge_chat serve` and the tiny trained models
on both engines (GGUF and ONNX)."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest

from tests.support.server import FAST, Server, error_of, make_store, sse_events
from tests.support.tiny_model import TRAINED_QA
from tests.support.tools_data import ADD, HERMES, SCHEMAS, TOOLS

GGUF, ONNX = "tiny-q8_0", "tiny-onnx-int8"
MODELS = (GGUF, ONNX)
FRANCE, PIRATE = TRAINED_QA[0], TRAINED_QA[11]
ALICE, BOB = TRAINED_QA[15], TRAINED_QA[16]
ALICE_NAME = TRAINED_QA[17]
#: the tools in Responses' flat shape
R_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]
CITY = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                         "big": {"type": "boolean"}},
        "required": ["name", "big"], "additionalProperties": False}
#: the events of a streamed text answer, in order (deltas in the middle)
TEXT_EVENTS = ["response.created", "response.in_progress", "response.output_item.added",
               "response.content_part.added", "response.output_text.delta"]
TEXT_END = ["response.output_text.done", "response.content_part.done",
            "response.output_item.done", "response.completed"]


@pytest.fixture(scope="module")
def hermes(tmp_path_factory):
    path = tmp_path_factory.mktemp("responses-template") / "hermes.jinja"
    path.write_text(HERMES)
    return path


@pytest.fixture(scope="module")
def store(tiny_gguf, tiny_onnx, tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("responses") / "store",
                      {f"{GGUF}.gguf": tiny_gguf["q8_0"], ONNX: tiny_onnx["int8"]})


@pytest.fixture(scope="module")
def server(store, hermes, tmp_path_factory):
    s = Server(store, *FAST, "--chat-template", str(hermes), "--api-key", "k1",
               log=tmp_path_factory.mktemp("responses-log") / "server.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="k1", max_retries=0, timeout=120)


def user(qa) -> str:
    return qa.messages[-1]["content"]


def ask(client, model, qa=FRANCE, **kw):
    kw = {"input": user(qa), "temperature": 0, "max_output_tokens": 60, **kw}
    return client.responses.create(model=model, **kw)


@pytest.mark.parametrize("model", MODELS)
def test_create(client, model):
    r = ask(client, model)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == model
    assert r.status == "completed" and r.error is None and r.incomplete_details is None
    assert r.output_text == FRANCE.answer
    [msg] = r.output
    assert msg.type == "message" and msg.role == "assistant" and msg.status == "completed"
    assert msg.id.startswith("msg_") and msg.content[0].type == "output_text"
    u = r.usage
    assert u.input_tokens > 5 and u.output_tokens > 3
    assert u.total_tokens == u.input_tokens + u.output_tokens
    assert 0 <= u.input_tokens_details.cached_tokens < u.input_tokens
    assert r.temperature == 0 and r.max_output_tokens == 60 and r.store is True
    # instructions are the system prompt; items with content parts read as the string
    r = ask(client, model, PIRATE, instructions=PIRATE.messages[0]["content"])
    assert r.output_text == PIRATE.answer and r.instructions == PIRATE.messages[0]["content"]
    items = [{"role": "developer", "content": PIRATE.messages[0]["content"]},
             {"type": "message", "role": "user",
              "content": [{"type": "input_text", "text": user(PIRATE)}]}]
    assert ask(client, model, input=items).output_text == PIRATE.answer


@pytest.mark.parametrize("model", MODELS)
def test_stream(client, model):
    whole = ask(client, model)
    with client.responses.stream(model=model, input=user(FRANCE), temperature=0,
                                 max_output_tokens=60) as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    n = kinds.count("response.output_text.delta")
    assert n >= 3 and kinds == TEXT_EVENTS + ["response.output_text.delta"] * (n - 1) + TEXT_END
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text == whole.output_text == FRANCE.answer
    created, done = events[0].response, events[-2]
    assert created.status == "in_progress" and created.output == [] and created.id == final.id
    assert done.item.id == final.output[0].id and done.output_index == 0
    assert final.status == "completed" and final.usage.output_tokens == whole.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_max_output_tokens_is_incomplete(client, model, server):
    r = ask(client, model, max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3 and r.output[0].status == "incomplete"
    assert FRANCE.answer.startswith(r.output_text) and r.output_text
    with httpx.stream("POST", f"{server.url}/responses", headers={"x-api-key": "k1"},
                      json={"model": model, "input": user(FRANCE), "max_output_tokens": 3,
                            "temperature": 0, "stream": True}, timeout=60) as resp:
        events = sse_events(resp)
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["output"][0]["content"][0]["text"] == r.output_text


@pytest.mark.parametrize("model", MODELS)
def test_logprobs(client, model):
    kw = {"include": ["message.output_text.logprobs"], "top_logprobs": 2}
    r = ask(client, model, **kw)
    lp = r.output[0].content[0].logprobs
    assert "".join(t.token for t in lp) == r.output_text == FRANCE.answer
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in lp)
    assert lp[0].bytes == list(lp[0].token.encode())
    with client.responses.stream(model=model, input=user(FRANCE), temperature=0,
                                 max_output_tokens=60, **kw) as s:
        events = list(s)
    streamed = [t for e in events if e.type == "response.output_text.delta" for t in e.logprobs]
    assert [t.token for t in streamed] == [t.token for t in lp]
    assert ask(client, model).output[0].content[0].logprobs == []


@pytest.mark.parametrize("model", MODELS)
def test_truncation(client, model):
    """A conversation longer than the window: a 400 naming `input`, or with
    `truncation: auto` its oldest turns dropped."""
    turn = "The river flows from the mountains down to the sea."
    items = [{"role": r, "content": turn} for _ in range(60) for r in ("user", "assistant")]
    items.append({"role": "user", "content": user(FRANCE)})
    with pytest.raises(openai.BadRequestError) as e:
        ask(client, model, input=items)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["param"] == "input"
    r = ask(client, model, input=items, truncation="auto")
    ctx = client.models.retrieve(model).model_extra["context_length"]
    assert r.status == "completed" and r.usage.input_tokens + 60 <= ctx
    assert r.truncation == "auto"


@pytest.mark.parametrize("model", MODELS)
def test_tool_round_trip(client, model):
    r = ask(client, model, tools=R_TOOLS, tool_choice={"type": "function", "name": "add"},
            max_output_tokens=120)
    [call] = r.output
    assert call.type == "function_call" and call.name == "add" and call.status == "completed"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), ADD["function"]["parameters"])
    assert r.output_text == "" and r.tool_choice.name == "add" and r.tools[1].name == "add"
    # the call and its result sent back as input items ...
    back = [{"role": "user", "content": user(FRANCE)}, call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "5"}]
    r2 = ask(client, model, input=back, tools=R_TOOLS, max_output_tokens=12)
    assert r2.status in ("completed", "incomplete") and r2.usage.input_tokens > \
        r.usage.input_tokens
    # ... or continued from the stored response: the same prompt, the same answer
    r3 = ask(client, model, input=[back[-1]], previous_response_id=r.id, tools=R_TOOLS,
             max_output_tokens=12)
    assert r3.output_text == r2.output_text and r3.previous_response_id == r.id
    assert r3.usage.input_tokens == r2.usage.input_tokens
    # streamed, any of the tools, one call
    with client.responses.stream(model=model, input=user(FRANCE), tools=R_TOOLS,
                                 tool_choice="required", parallel_tool_calls=False,
                                 temperature=0, max_output_tokens=120) as s:
        events = list(s)
        final = s.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[-5:] == ["response.output_item.added", "response.function_call_arguments.delta",
                          "response.function_call_arguments.done",
                          "response.output_item.done", "response.completed"]
    [call] = [o for o in final.output if o.type == "function_call"]
    assert events[-3].arguments == call.arguments and events[-3].name == call.name
    jsonschema.validate(json.loads(call.arguments), SCHEMAS[call.name])


@pytest.mark.parametrize("model", MODELS)
def test_previous_response_id(client, model):
    for intro, then in ((ALICE, ALICE_NAME), (BOB, TRAINED_QA[18])):
        first = ask(client, model, intro)
        assert first.output_text == intro.answer
        second = ask(client, model, then, previous_response_id=first.id)
        assert second.output_text == then.answer and second.previous_response_id == first.id
        # the continued prompt starts with the earlier one: its tokens come from a cache
        assert second.usage.input_tokens_details.cached_tokens >= first.usage.input_tokens
    # a streamed response is stored too
    with client.responses.stream(model=model, input=user(ALICE), temperature=0) as s:
        first = s.get_final_response()
    assert ask(client, model, ALICE_NAME, previous_response_id=first.id).output_text == \
        ALICE_NAME.answer


def test_store_false(client):
    r = ask(client, GGUF, ALICE, store=False)
    assert r.output_text == ALICE.answer and r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, GGUF, ALICE_NAME, previous_response_id=r.id)
    assert e.value.body["param"] == "previous_response_id" and r.id in e.value.body["message"]


def test_retrieve_delete_and_input_items(client):
    r = ask(client, GGUF, instructions="Be brief.", input=[
        {"role": "user", "content": user(FRANCE)}], metadata={"run": "7"})
    got = client.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump() and got.metadata == {"run": "7"}
    [item] = client.responses.input_items.list(r.id).data
    assert item.type == "message" and item.role == "user"
    assert item.content[0].text == user(FRANCE)
    assert client.responses.delete(r.id) is None
    for call in (client.responses.retrieve, client.responses.delete,
                 client.responses.input_items.list):
        with pytest.raises(openai.NotFoundError) as e:
            call(r.id)
        assert r.id in e.value.body["message"] and e.value.body["type"] == \
            "invalid_request_error"


def test_input_items_pages(client, server):
    items = [{"role": "user", "content": f"{i}"} for i in range(4)] + \
        [{"role": "user", "content": user(FRANCE)}]
    r = ask(client, GGUF, input=items, max_output_tokens=1)
    pages = client.responses.input_items.list(r.id, limit=2, order="asc")
    assert [it.content[0].text for it in pages] == ["0", "1", "2", "3", user(FRANCE)]
    first = client.responses.input_items.list(r.id, limit=2)
    assert [it.content[0].text for it in first.data] == [user(FRANCE), "3"] and first.has_more
    bad = httpx.get(f"{server.url}/responses/{r.id}/input_items?limit=0",
                    headers={"x-api-key": "k1"})
    assert error_of(bad, 400)["param"] == "limit"


@pytest.mark.parametrize("rid", ["resp_0123", "resp_" + "0" * 32, "../../etc/passwd", "x" * 300])
def test_unknown_id_is_404(server, rid):
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{server.url}/responses/{rid}", headers={"x-api-key": "k1"})
        if r.status_code == 404 and "/" in rid:
            continue                         # a path that matches no route: 404 too
        assert error_of(r, 404)["message"].startswith("Response with id")


@pytest.mark.parametrize("model", MODELS)
def test_text_format_json_schema(client, model):
    r = ask(client, model, text={"format": {"type": "json_schema", "name": "city",
                                            "schema": CITY, "strict": True}},
            max_output_tokens=60)
    assert r.status == "completed", r
    jsonschema.validate(json.loads(r.output_text), CITY)
    assert r.text.format.type == "json_schema" and r.text.format.name == "city"
    r = ask(client, model, text={"format": {"type": "json_object"}}, max_output_tokens=60)
    assert r.status != "completed" or isinstance(json.loads(r.output_text), dict)


@pytest.mark.parametrize("body,param,words", [
    ({"input": [{"type": "hologram"}]}, "input[0].type", "'hologram'"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input[0].content[0].type", "text-only"),
    ({"input": [{"role": "user", "content": [{"type": "sparkle", "text": "x"}]}]},
     "input[0].content[0].type", "'sparkle'"),
    ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "'tool'"),
    ({"input": [{"type": "function_call_output", "call_id": "call_x", "output": "5"}]},
     "input[0].call_id", "call_x"),
    ({"input": [{"type": "function_call", "call_id": "c", "name": "add", "arguments": "{"}]},
     "input[0].arguments", "JSON"),
    ({"input": []}, "input", "non-empty"),
    ({"input": None}, "input", "required"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'web_search'"),
    ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name", "letters"),
    ({"tools": R_TOOLS, "tool_choice": {"type": "file_search"}}, "tool_choice",
     "'file_search'"),
    ({"tools": R_TOOLS, "tool_choice": "always"}, "tool_choice", "auto"),
    ({"text": {"format": {"type": "xml"}}}, "text.format.type", "'xml'"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema",
     "schema"),
    ({"temperature": 7}, "temperature", "temperature"),
    ({"max_output_tokens": 0}, "max_output_tokens", "max_output_tokens"),
    ({"background": True}, "background", "background"),
    ({"conversation": "conv_1"}, "conversation", "previous_response_id"),
    ({"truncation": "middle"}, "truncation", "truncation"),
    ({"previous_response_id": "resp_nope"}, "previous_response_id", "resp_nope"),
])
def test_bad_requests_name_the_field(server, body, param, words):
    full = {"model": GGUF, "input": "hi", **body}
    full = {k: v for k, v in full.items() if v is not None}
    r = httpx.post(f"{server.url}/responses", json=full, headers={"x-api-key": "k1"})
    err = error_of(r, 404 if param == "previous_response_id" else 400)
    assert err["param"] == param and words in err["message"], err


def test_auth(server):
    r = httpx.post(f"{server.url}/responses", json={"model": GGUF, "input": "hi"})
    assert error_of(r, 401)["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/responses/resp_x").status_code == 401


def test_stored_on_disk_and_bounded(store, hermes, tmp_path):
    """Stored responses outlive a restart; --max-responses keeps the newest."""
    env = {"EDGE_CHAT_CACHE": str(tmp_path / "cache")}

    def start(*args):
        return Server(store, *FAST, "--chat-template", str(hermes), *args,
                      log=tmp_path / "server.log", env=env)

    s = start()
    try:
        c = openai.OpenAI(base_url=s.url, api_key="x", max_retries=0, timeout=120)
        first = ask(c, GGUF, ALICE)
    finally:
        s.stop()
    assert (tmp_path / "cache" / "responses" / f"{first.id}.json").is_file()
    s = start("--max-responses", "2")
    try:
        c = openai.OpenAI(base_url=s.url, api_key="x", max_retries=0, timeout=120)
        assert c.responses.retrieve(first.id).output_text == ALICE.answer
        assert ask(c, GGUF, ALICE_NAME, previous_response_id=first.id).output_text == \
            ALICE_NAME.answer
        newer = ask(c, GGUF, BOB)
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(first.id)               # the oldest of three: evicted
        assert c.responses.retrieve(newer.id).output_text == BOB.answer
        assert len(list((tmp_path / "cache" / "responses").glob("resp_*.json"))) == 2
    finally:
        s.stop()


def test_unwritable_store_still_answers(store, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "responses").write_text("a file where the folder should be")
    s = Server(store, *FAST, log=tmp_path / "server.log",
               env={"EDGE_CHAT_CACHE": str(tmp_path / "cache")})
    try:
        c = openai.OpenAI(base_url=s.url, api_key="x", max_retries=0, timeout=120)
        r = ask(c, GGUF)
        assert r.output_text == FRANCE.answer
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve(r.id)
    finally:
        s.stop()
    assert "could not store the response" in s.output()


@pytest.mark.parametrize("model", MODELS)
def test_openai_agents_responses_model(server, model):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)
    calls = []

    @agents.function_tool
    def weather(city: Literal["Paris", "Rome", "Tokyo"]) -> str:
        """The weather in a city."""
        calls.append(city)
        return f"Sunny in {city}"

    client = openai.AsyncOpenAI(base_url=server.url, api_key="k1", max_retries=0)
    agent = agents.Agent(name="forecaster", instructions="Use the tool.", tools=[weather],
                         model=agents.OpenAIResponsesModel(model=model, openai_client=client),
                         tool_use_behavior="stop_on_first_tool",
                         model_settings=agents.ModelSettings(temperature=0, max_tokens=120,
                                                             tool_choice="required"))

    async def runs():
        first = await agents.Runner.run(agent, user(FRANCE), max_turns=3)
        # streamed, and with the tool's result sent back for a final answer (tool_choice
        # goes back to auto after a call)
        again = agent.clone(tool_use_behavior="run_llm_again")
        run = agents.Runner.run_streamed(again, user(FRANCE), max_turns=3)
        kinds = [e.type async for e in run.stream_events()]
        return first, run, kinds

    first, run, kinds = asyncio.run(runs())
    [city, again] = calls
    assert first.final_output == f"Sunny in {city}" and again == city
    assert "raw_response_event" in kinds and isinstance(run.final_output, str)
    outputs = [i for i in run.new_items if i.type == "tool_call_output_item"]
    assert [o.output for o in outputs] == [first.final_output]
