"""Tool calls and structured output in the other front-ends: the terminal chat
(`ChatSession`, `edge_chat chat --json-schema/--tools`), and the remote backend passing
calls and logprobs through from a real `edge_chat serve` (tiny model, Hermes-style
template, calls forced by tool_choice)."""

from __future__ import annotations

import io
import json
import subprocess

import jsonschema
import pytest

from edge_chat.params import make_params
from edge_chat.chat.tools import parse_tools
from edge_chat.engines import EngineOptions
from edge_chat.chat.remote import RemoteChat
from edge_chat.cli.repl import ChatSession
from edge_chat.runtime import open_chat
from tests.support.server import FAST, PY, REPO, Server, edge_env, make_store
from tests.support.tiny_model import TRAINED_QA
from tests.support.tools_data import ADD, HERMES, SCHEMAS, TOOLS

FRANCE = TRAINED_QA[0]
GREEDY = make_params(temperature=0, max_tokens=80)


@pytest.fixture(scope="module")
def hermes(tmp_path_factory):
    path = tmp_path_factory.mktemp("tmpl") / "hermes.jinja"
    path.write_text(HERMES)
    return path


@pytest.fixture(scope="module")
def model(tiny_gguf, hermes):
    m = open_chat(str(tiny_gguf["q8_0"]), EngineOptions(threads=1), chat_template=str(hermes))
    yield m
    m.engine.close()


def test_repl_shows_calls_and_answers_them(model):
    out, err = io.StringIO(), io.StringIO()
    named = parse_tools(TOOLS, {"type": "function", "function": {"name": "add"}}, False)
    s = ChatSession(model, GREEDY, out=out, err=err, tools=named)
    s.ask(FRANCE.messages[-1]["content"])
    call = s.messages[-1]["tool_calls"][0]
    assert call["function"]["name"] == "add" and call["id"] in out.getvalue()
    jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS["add"])
    assert f"add({call['function']['arguments']})" in out.getvalue()
    assert "<tool_call>" not in out.getvalue()
    s.command("/tool 42")                  # the result goes back; the model answers again
    assert s.messages[-2] == {"role": "tool", "tool_call_id": call["id"], "content": "42"}
    assert s.messages[-1]["role"] == "assistant"
    s.command("/tool 43")
    assert "no tool call to answer" in err.getvalue() or s.messages[-1]["role"] == "assistant"


def test_repl_json_schema(model):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
              "required": ["city"], "additionalProperties": False}
    out = io.StringIO()
    rf = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    s = ChatSession(model, GREEDY, out=out, err=io.StringIO(), response_format=rf)
    jsonschema.validate(json.loads(s.ask(FRANCE.messages[-1]["content"])), schema)


def run_chat(store, *args):
    return subprocess.run([PY, "-m", "edge_chat", "chat", *args], cwd=REPO, env=edge_env(store),
                          capture_output=True, text=True, timeout=300)


def test_cli_json_schema_and_tools_options(tiny_gguf, tmp_path):
    store = make_store(tmp_path / "store", {"tiny.gguf": tiny_gguf["q8_0"]})
    schema = tmp_path / "answer.json"
    schema.write_text(json.dumps({"type": "object", "properties": {
        "answer": {"type": "string", "maxLength": 20}}, "required": ["answer"],
        "additionalProperties": False}))
    p = run_chat(store, "tiny", "--json-schema", str(schema), "--temperature", "0",
                 "--threads", "1", "-p", FRANCE.messages[-1]["content"])
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)) == {"answer"}
    # bad files and a template without tools: one line, exit 1
    (tmp_path / "bad.json").write_text("{nope")
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([ADD]))
    for args, words in ((["--json-schema", str(tmp_path / "none.json")], "no such file"),
                        (["--json-schema", str(tmp_path / "bad.json")], "not a JSON file"),
                        (["--tools", str(tools)], "'tools'")):
        p = run_chat(store, "tiny", *args, "--threads", "1", "-p", "hi")
        assert p.returncode != 0 and p.stderr.startswith("error:") and words in p.stderr, p.stderr
        assert "Traceback" not in p.stderr


def test_remote_backend_passes_calls_and_logprobs_through(tiny_gguf, hermes, tmp_path):
    store = make_store(tmp_path / "store", {"tiny.gguf": tiny_gguf["q8_0"]})
    server = Server(store, *FAST, "--chat-template", str(hermes), log=tmp_path / "server.log")
    try:
        remote = RemoteChat(server.url, "tiny")
        spec = parse_tools(TOOLS, "required", False)
        events = list(remote.stream(FRANCE.messages, GREEDY, spec))
        calls = [c for ev in events for c in ev.tool_calls]
        assert len(calls) == 1 and calls[0].id.startswith("call_")
        jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS[calls[0].name])
        assert events[-1].finish_reason == "tool_calls"
        assert "".join(ev.delta for ev in events) == ""
        events = list(remote.stream(FRANCE.messages, GREEDY, logprobs=2))
        lps = [t for ev in events for t in ev.logprobs]
        assert "".join(t.token for t in lps) == "".join(ev.delta for ev in events)
        assert all(len(t.top) == 2 and t.logprob <= 0 for t in lps)
        remote.engine.close()
    finally:
        server.stop()


def test_page_shows_calls(tiny_gguf, hermes, tmp_path, monkeypatch):
    from edge_chat.ui.handlers import ChatUI, Conversation, ModelHolder
    monkeypatch.setenv("EDGE_CHAT_MODELS", str(make_store(tmp_path / "store",
                                                          {"tiny.gguf": tiny_gguf["q8_0"]})))
    holder = ModelHolder(EngineOptions(threads=1), chat_template=str(hermes))
    try:
        assert holder.load("tiny").startswith("model **")
        ui = ChatUI(holder, tmp_path / "exports", parse_tools(TOOLS, "required", False))
        *_, (conv, status) = ui.send(Conversation(), FRANCE.messages[-1]["content"], "",
                                     0.0, 1.0, 80, -1)
        reply = conv.messages[-1]
        (call,) = reply["tool_calls"]
        assert "error" not in status and "<tool_call>" not in reply["content"]
        assert f"🔧 tool call `{call['function']['name']}(" in conv.display()[-1]["content"]
        assert conv.openai()[-1]["tool_calls"] == [call]          # exported with the call
    finally:
        holder.close()
