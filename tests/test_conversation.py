"""edge_chat.chat.conversation.Conversation, the one conversation behind the terminal
chat and the page, on the tiny trained model (real engine)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from edge_chat.chat.conversation import Conversation
from edge_chat.params import make_params
from edge_chat.chat.tools import parse_tools
from edge_chat.engines import EngineOptions
from edge_chat.errors import EdgeChatError
from edge_chat.runtime import open_chat
from tests.support.tiny_model import TRAINED_QA
from tests.support.tools_data import HERMES, SCHEMAS, TOOLS

GREEDY = make_params(temperature=0, max_tokens=80)
FRANCE = TRAINED_QA[0]
ALICE = next(qa for qa in TRAINED_QA if len(qa.messages) == 3 and "Alice" in qa.answer)
PIRATE = next(qa for qa in TRAINED_QA if qa.messages[0]["content"] == "You are a pirate.")


@pytest.fixture(scope="module")
def model(tiny_gguf):
    m = open_chat(str(tiny_gguf["q8_0"]), EngineOptions(threads=1))
    yield m
    m.engine.close()


def run(conv: Conversation, events) -> list:
    """Iterate an answer; each event's delta is already in the growing message."""
    seen = []
    for ev in events:
        seen.append(ev)
        assert conv.messages[-1]["content"] == "".join(e.delta for e in seen)
    return seen


def test_answer_streams_events_and_joins_the_history(model):
    conv = Conversation()
    conv.add_user(FRANCE.messages[0]["content"])
    events = conv.answer(model, GREEDY)
    # prepared at once: the empty answer is already in the history
    assert conv.messages[-1] == {"role": "assistant", "content": ""} and conv.dropped == 0
    seen = run(conv, events)
    assert len([e for e in seen if e.delta]) >= 3 and seen[-1].finish_reason == "stop"
    assert conv.openai() == FRANCE.messages + [{"role": "assistant", "content": FRANCE.answer}]
    assert conv.finish_reason == "stop" and conv.stats.completion_tokens > 3
    assert not conv.answered_nothing()
    # a second turn sees the first
    conv.clear()
    for m in ALICE.messages[:-1]:
        if m["role"] == "user":
            conv.add_user(m["content"])
            run(conv, conv.answer(model, GREEDY))
    assert conv.messages[1]["content"] == ALICE.messages[1]["content"]
    conv.add_user(ALICE.messages[-1]["content"])
    run(conv, conv.answer(model, GREEDY))
    assert conv.messages[-1]["content"] == ALICE.answer


def test_system_prompt_set_removed_and_kept_by_clear(model):
    conv = Conversation(system=PIRATE.messages[0]["content"])
    conv.add_user(PIRATE.messages[1]["content"])
    run(conv, conv.answer(model, GREEDY))
    assert conv.messages[-1]["content"] == PIRATE.answer
    assert conv.openai()[0] == PIRATE.messages[0]
    conv.clear()
    assert conv.messages == [] and conv.openai() == [PIRATE.messages[0]]
    conv.set_system("   ")
    assert conv.system is None and conv.openai() == []


def test_retry_drops_the_last_answer_and_answers_again(model):
    conv = Conversation([{"role": "user", "content": FRANCE.messages[0]["content"]},
                         {"role": "assistant", "content": "Something else.", "footer": "x"}])
    run(conv, conv.retry(model, GREEDY))
    assert conv.openai() == FRANCE.messages + [{"role": "assistant", "content": FRANCE.answer}]
    assert Conversation().retry(model, GREEDY) is None
    assert Conversation([{"role": "assistant", "content": "hi"}]).retry(model, GREEDY) is None


def test_closing_keeps_the_partial_answer(model):
    conv = Conversation()
    conv.add_user(FRANCE.messages[0]["content"])
    events = conv.answer(model, GREEDY)
    first = next(e for e in events if e.delta)
    events.close()                               # Stop on the page, Ctrl-C in the terminal
    partial = conv.messages[-1]["content"]
    assert partial == first.delta and FRANCE.answer.startswith(partial)
    assert partial != FRANCE.answer and conv.finish_reason is None
    run(conv, conv.retry(model, GREEDY))         # the engine is free: a whole answer
    assert conv.messages[-1]["content"] == FRANCE.answer


def test_cancel_ends_the_answer_with_a_finish(model):
    conv = Conversation()
    conv.add_user(FRANCE.messages[0]["content"])
    seen = []
    for ev in conv.answer(model, GREEDY):
        seen.append(ev)
        if ev.delta:
            model.cancel()                       # what the page's Stop does
    assert seen[-1].finish_reason is not None and conv.stats is not None
    assert FRANCE.answer.startswith(conv.messages[-1]["content"])
    assert conv.messages[-1]["content"] != FRANCE.answer


def test_an_error_before_any_text_leaves_no_empty_answer(model):
    conv = Conversation()
    conv.add_user(FRANCE.messages[0]["content"])
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "wizard"}}}
    events = conv.answer(model, GREEDY, response_format=bad)
    assert conv.messages[-1] == {"role": "assistant", "content": ""}
    with pytest.raises(EdgeChatError):           # the grammar is checked as streaming starts
        run(conv, events)
    assert conv.messages == [{"role": "user", "content": FRANCE.messages[0]["content"]}]
    with pytest.raises(EdgeChatError, match="context window"):   # raised at once
        conv.answer(model, make_params(max_tokens=model.n_ctx + 1))
    assert len(conv.messages) == 1


def test_response_format_is_followed(model):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}},
              "required": ["city"], "additionalProperties": False}
    conv = Conversation()
    conv.add_user(FRANCE.messages[0]["content"])
    run(conv, conv.answer(model, GREEDY, response_format={
        "type": "json_schema", "json_schema": {"name": "c", "schema": schema}}))
    jsonschema.validate(json.loads(conv.messages[-1]["content"]), schema)


def test_trimming_drops_the_oldest_turns_and_says_how_many(tiny_gguf):
    small = open_chat(str(tiny_gguf["q8_0"]), EngineOptions(threads=1, n_ctx=160))
    try:
        history = []
        for i in range(8):
            history += [{"role": "user", "content": f"My name is Alice. Message {i}."},
                        {"role": "assistant", "content": "Nice to meet you, Alice!",
                         "footer": f"answer {i}"}]
        conv = Conversation(history, system="You are a robot.")
        conv.add_user("What color is grass?")
        events = conv.answer(small, make_params(temperature=0, max_tokens=16))
        assert conv.dropped > 0 and conv.dropped % 2 == 0          # whole turns
        assert len(conv.messages) == len(history) + 2 - conv.dropped
        kept = history[conv.dropped:]
        assert conv.messages[:len(kept)] == kept                 # front-end keys stay
        assert conv.system == "You are a robot."
        run(conv, events)
        assert conv.stats.prompt_tokens + conv.stats.completion_tokens <= 160
    finally:
        small.engine.close()


def test_tool_calls_join_the_history_and_results_answer_them(tiny_gguf, tmp_path):
    (tmp_path / "hermes.jinja").write_text(HERMES)
    m = open_chat(str(tiny_gguf["q8_0"]), EngineOptions(threads=1),
                  chat_template=str(tmp_path / "hermes.jinja"))
    try:
        named = parse_tools(TOOLS, {"type": "function", "function": {"name": "add"}}, False)
        conv = Conversation()
        conv.add_user(FRANCE.messages[0]["content"])
        seen = list(conv.answer(m, GREEDY, named))
        (call,) = conv.messages[-1]["tool_calls"]
        assert [c.as_dict() for e in seen for c in e.tool_calls] == [call]
        assert conv.finish_reason == "tool_calls"
        assert "<tool_call>" not in conv.messages[-1]["content"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS["add"])
        assert conv.pending_tool_calls() == [call]
        assert conv.add_tool_result("42") is True
        assert conv.messages[-1] == {"role": "tool", "tool_call_id": call["id"],
                                     "content": "42"}
        assert conv.pending_tool_calls() == []
        with pytest.raises(EdgeChatError, match="no tool call"):
            conv.add_tool_result("43")
        run(conv, conv.answer(m, GREEDY))                    # the model goes on
        after = conv.messages[-1]
        assert after["role"] == "assistant"
        assert [x["role"] for x in conv.openai()] == ["user", "assistant", "tool", "assistant"]
        run(conv, conv.retry(m, GREEDY))                     # retry answers the result again
        assert conv.messages[-1] == after and len(conv.messages) == 4
    finally:
        m.engine.close()


def test_save_and_load_round_trip(tmp_path):
    conv = Conversation([{"role": "user", "content": "hi"},
                         {"role": "assistant", "content": "hello", "footer": "12 tok/s"}],
                        system="Be brief.")
    conv.save(tmp_path / "c.json")
    saved = json.loads((tmp_path / "c.json").read_text())["messages"]
    assert saved == [{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    back = Conversation()
    back.load(tmp_path / "c.json")
    assert back.system == "Be brief." and back.openai() == saved
    (tmp_path / "bad.json").write_text(json.dumps([{"role": "wizard", "content": "x"}]))
    with pytest.raises(EdgeChatError, match="unknown role"):
        back.load(tmp_path / "bad.json")
    assert back.openai() == saved                # a bad file changes nothing
