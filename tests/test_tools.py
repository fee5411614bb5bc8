"""Tool calls without a model: request validation, history, the family of a
template, and the streaming parser on the strings each family's models write
(Qwen2.5 / Hermes, Llama 3.1+, Mistral, bare JSON), fed in every chunking."""

from __future__ import annotations

import json

import pytest

from edge_chat.chat.structured import check_response_format, tools_grammar
from edge_chat.chat.messages import normalize_messages
from edge_chat.chat.template import BUILTIN, ChatTemplate
from edge_chat.chat.tool_parse import ToolParser, json_end, parse_calls
from edge_chat.chat.tools import ToolCall, parse_tools, template_messages, tool_family
from edge_chat.errors import EdgeChatError

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
EMAIL = {"type": "function", "function": {"name": "send_email", "parameters": {
    "type": "object", "properties": {"to": {"type": "string"}}}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {"type": "object", "properties": {
        "a": {"type": "number"}, "b": {"type": "number"}}, "required": ["a", "b"]}}}
FNS = parse_tools([WEATHER, ADD, EMAIL]).functions

#: what the models write: Qwen2.5-Coder-0.5B-Instruct (Q4_K_M, greedy, captured through
#: edge_chat) answers with a bare JSON object or a ```json fence, not its template's tags;
#: bigger Qwen2.5 / Hermes models use the <tool_call> tags; the Llama 3.1 and Mistral forms
#: are those of their model cards
QWEN_05B_FENCED = ('```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris",'
                   '\n    "unit": "celsius"\n  }\n}\n```')
QWEN_05B_BARE = ('{"name": "send_email", "arguments": {"to": "dave@example.com", "subject": "Hi", '
                 '"body": "Hello Dave"}}')
QWEN_ONE = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
QWEN_TWO = (QWEN_ONE + '\n<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n'
            '</tool_call>')
LLAMA_TAG = '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
LLAMA_BARE = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
MISTRAL = ('[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}, '
           '"id": "a1b2c3d4e"}, {"name": "add", "arguments": {"a": 2, "b": 3}, "id": "f5g6h7i8j"}]')


def run(family: str, text: str, size: int, parallel: bool = True) -> list:
    """Feed `text` in chunks of `size` characters; merge adjacent content."""
    p = ToolParser(family, FNS, parallel)
    out: list = []
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    for piece in pieces:
        out += p.feed(piece)
    out += p.finish()
    merged: list = []
    for x in out:
        if isinstance(x, str) and merged and isinstance(merged[-1], str):
            merged[-1] += x
        else:
            merged.append(x)
    return merged


def calls(out: list) -> list[tuple[str, dict]]:
    return [(c.name, json.loads(c.arguments)) for c in out if isinstance(c, ToolCall)]


def content(out: list) -> str:
    return "".join(x for x in out if isinstance(x, str))


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
@pytest.mark.parametrize("family,text,expected", [
    ("hermes", QWEN_05B_FENCED, [("get_weather", {"city": "Paris", "unit": "celsius"})]),
    ("hermes", QWEN_05B_BARE, [("send_email", {"to": "dave@example.com", "subject": "Hi",
                                              "body": "Hello Dave"})]),
    ("hermes", QWEN_ONE, [("get_weather", {"city": "Paris"})]),
    ("hermes", QWEN_TWO, [("get_weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})]),
    ("hermes", "```json\n" + LLAMA_BARE.replace("parameters", "arguments") + "\n```",
     [("get_weather", {"city": "Paris"})]),
    ("llama3", LLAMA_TAG, [("get_weather", {"city": "Paris"})]),
    ("llama3", LLAMA_BARE, [("get_weather", {"city": "Paris"})]),
    ("mistral", MISTRAL, [("get_weather", {"city": "Paris"}), ("add", {"a": 2, "b": 3})]),
    ("generic", '{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 1}"}', [("add", {"a": 1, "b": 1})]),
])
def test_each_family_in_every_chunking(family, text, expected, size):
    out = run(family, text, size)
    assert calls(out) == expected
    assert content(out) == ""                     # no markup leaks into the content
    assert all(c.id.startswith("call_") for c in out if isinstance(c, ToolCall))


@pytest.mark.parametrize("size", [1, 4, 1000])
def test_text_around_calls_and_plain_answers(size):
    out = run("hermes", "Let me check. " + QWEN_ONE, size)
    assert content(out) == "Let me check. " and len(calls(out)) == 1
    for text in ["Paris is the capital of France.", "Use a<b and x < tool.",
                 "```python\nprint({'a': 1})\n```", "[1] A footnote.", '{"answer": 42}']:
        out = run("hermes", text, size)
        assert content(out) == text and calls(out) == []


def test_malformed_calls_come_back_as_content(caplog):
    bad = '<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>'
    unknown = '<tool_call>\n{"name": "rm_rf", "arguments": {}}\n</tool_call>'
    for text in (bad, unknown):
        out = run("hermes", text, 3)         # its text without the markup
        assert content(out) == text.removeprefix("<tool_call>\n").removesuffix(
            "\n</tool_call>") and calls(out) == []
    assert "not a call of an offered function" in caplog.text
    # a call cut off by max_tokens: content, not a 500
    assert content(run("hermes", QWEN_ONE[:30], 5)) == QWEN_ONE[12:30]


def test_parallel_false_keeps_the_first_call():
    assert calls(run("hermes", QWEN_TWO, 4, parallel=False)) == [("get_weather", {"city": "Paris"})]


def test_json_end_and_parse_calls():
    assert json_end('{"a": "}", "b": [1, {"c": 2}]} tail') == len('{"a": "}", "b": [1, {"c": 2}]}')
    assert json_end('{"a": "\\"}') is None
    assert json_end("```json\n{}\n``` x") == len("```json\n{}\n```")
    assert parse_calls('{"name": "add", "arguments": {}}; {"name": "add"}', FNS)[1].arguments == "{}"
    assert parse_calls('{"name": "add", "arguments": [1]}', FNS) is None
    assert parse_calls('{"function": {"name": "add", "arguments": "{}"}}', FNS)[0].name == "add"


# -- request validation -------------------------------------------------------------
@pytest.mark.parametrize("tools,choice,param", [
    ("f", None, "tools"),
    ([{"type": "retrieval"}], None, "tools[0].type"),
    ([{"type": "function", "function": {"parameters": {}}}], None, "tools[0].function.name"),
    ([{"type": "function", "function": {"name": "a b"}}], None, "tools[0].function.name"),
    ([WEATHER, WEATHER], None, "tools[1].function.name"),
    ([{"type": "function", "function": {"name": "f", "parameters": "x"}}], None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "strin"}}}], None,
     "tools[0].function.parameters"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None,
     "tools[0].function.parameters"),
    ([WEATHER], "always", "tool_choice"),
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
    (None, "required", "tool_choice"),
])
def test_bad_tools_name_the_field(tools, choice, param):
    with pytest.raises(EdgeChatError) as e:
        parse_tools(tools, choice)
    assert e.value.param == param and e.value.status == 400


def test_tool_choice_variants():
    assert parse_tools(None) is None
    spec = parse_tools([WEATHER, ADD])
    assert spec.choice == "auto" and spec.active and not spec.forced and spec.parallel
    assert not parse_tools([WEATHER], "none").active
    assert parse_tools([WEATHER], "required").forced
    named = parse_tools([WEATHER, ADD], {"type": "function", "function": {"name": "add"}}, False)
    assert named.forced and list(named.allowed()) == ["add"] and not named.parallel
    with pytest.raises(EdgeChatError, match="parallel_tool_calls"):
        parse_tools([WEATHER], None, "yes")


def test_history_arguments_become_objects_and_ids_are_checked():
    call = {"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    msgs = normalize_messages([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 3}'}])
    assert msgs[1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'  # as sent
    shown = template_messages(msgs)
    assert shown[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Oslo"}
    assert shown[2]["name"] == "get_weather"
    bad_args = {**call, "function": {"name": "get_weather", "arguments": "{city: Oslo"}}
    with pytest.raises(EdgeChatError) as e:
        normalize_messages([{"role": "assistant", "content": None, "tool_calls": [bad_args]}])
    assert e.value.param == "messages[0].tool_calls[0].function.arguments"
    with pytest.raises(EdgeChatError) as e:
        normalize_messages([{"role": "assistant", "content": "", "tool_calls": [call]},
                            {"role": "tool", "tool_call_id": "call_9", "content": "x"}])
    assert e.value.param == "messages[1].tool_call_id"


def test_content_parts_and_images():
    msgs = normalize_messages([{"role": "developer", "content": [
        {"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]}])
    assert msgs == [{"role": "system", "content": "Be brief."}]
    with pytest.raises(EdgeChatError, match="text-only model") as e:
        normalize_messages([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}])
    assert e.value.param == "messages[0].content"


def test_family_from_the_template():
    assert tool_family(BUILTIN["chatml"]) is None          # no tools in it: 400 with tools
    assert tool_family("{{ tools }} <tool_call>") == "hermes"
    assert tool_family("{{ '<|python_tag|>' }}{% if tools %}{% endif %}") == "llama3"
    assert tool_family("[TOOL_CALLS] {{ tools }}") == "mistral"
    assert tool_family("{% if tools %}{{ tools | tojson }}{% endif %}", "llama") == "llama3"
    assert tool_family("{% if tools %}{{ tools | tojson }}{% endif %}", "phi3") == "generic"


def test_forced_grammar_and_response_format_shapes():
    g = tools_grammar(parse_tools([WEATHER, ADD], "required"), "hermes")
    assert '"<tool_call>\\n{\\"name\\": \\"get_weather\\", \\"arguments\\": "' in g.lark
    assert g.param == "tool_choice" and "call_1" in g.lark
    assert tools_grammar(parse_tools([WEATHER]), "hermes") is None        # auto: free text
    assert check_response_format({"type": "json_object"}) == {"type": "object"}
    assert check_response_format({"type": "text"}) is None
    for bad in ({"type": "json_object", "schema": 3}, {"type": "yaml"}, "json",
                {"type": "json_schema", "json_schema": {"schema": []}},
                {"type": "json_schema"}):
        with pytest.raises(EdgeChatError) as e:
            check_response_format(bad)
        assert e.value.param == "response_format"


def test_template_renders_the_history_like_transformers():
    # Qwen2.5's way: arguments as an object, written with tojson (not double-encoded)
    t = ChatTemplate("{% for m in messages %}{% for c in m.tool_calls or [] %}"
                     "{{ c.function.arguments | tojson }}{% endfor %}{% endfor %}")
    msgs = normalize_messages([{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]}])
    assert t.render(msgs, add_generation_prompt=False) == '{"x": 1}'
