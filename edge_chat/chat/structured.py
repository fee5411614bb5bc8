"""What an answer must look like, as a grammar: `response_format` (json_object,
json_schema) and forced tool calls (tool_choice "required" or a named function)
become one llguidance Lark grammar, which the engines apply as a token mask
(engines/grammar_processor.py). Pure text work here: no tokenizer, no engine."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge_chat.chat.tools import ToolSpec, call_frame, calls_frame
from edge_chat.errors import EdgeChatError


@dataclass(frozen=True)
class Grammar:
    """A Lark grammar (llguidance's dialect) and the request field it comes from."""
    lark: str
    param: str        # "response_format" | "tool_choice"


def _lit(text: str) -> str:
    """A Lark string literal (JSON escapes are Lark escapes)."""
    return json.dumps(text, ensure_ascii=False)


#: JSON as json.dumps writes it: `{"a": 1, "b": [2, 3]}` (llguidance's default lets the
#: model put any whitespace between tokens, and small models then ramble in it)
JSON_LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def _json(schema: dict) -> str:
    return "%json " + json.dumps({**schema, "x-guidance": JSON_LAYOUT}, ensure_ascii=False)


def check_response_format(rf: Any) -> dict | None:
    """The JSON schema `response_format` asks for ({"type": "object"} for
    json_object), None for plain text; a wrong shape → EdgeChatError."""
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise EdgeChatError("response_format must be an object with a 'type'",
                            param="response_format")
    kind = rf.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        schema = rf.get("schema", {"type": "object"})
        if not isinstance(schema, dict):
            raise EdgeChatError("response_format.schema must be a JSON schema object",
                                param="response_format")
        return {"type": "object", **schema}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict):
            raise EdgeChatError("response_format.json_schema must be an object with 'name' "
                                "and 'schema'", param="response_format")
        name = spec.get("name")
        if name is not None and not isinstance(name, str):
            raise EdgeChatError("response_format.json_schema.name must be a string",
                                param="response_format")
        if "strict" in spec and not isinstance(spec["strict"], (bool, type(None))):
            raise EdgeChatError("response_format.json_schema.strict must be a boolean",
                                param="response_format")
        schema = spec.get("schema", {})
        if not isinstance(schema, dict):
            raise EdgeChatError("response_format.json_schema.schema must be a JSON schema "
                                "object", param="response_format")
        return schema
    raise EdgeChatError(f"response_format.type must be 'text', 'json_object' or 'json_schema' "
                        f"(got {kind!r})", param="response_format")


def response_format_grammar(rf: Any) -> Grammar | None:
    schema = check_response_format(rf)
    if schema is None:
        return None
    return Grammar(f"start: {_json(schema)}\n", "response_format")


def tools_grammar(spec: ToolSpec, family: str) -> Grammar | None:
    """For tool_choice "required" or a named function: the answer is one call
    (or, with parallel_tool_calls, several) of the allowed functions, written
    in the model's own format, arguments valid against their schema."""
    if not spec.forced:
        return None
    rules = []
    alts = []
    for i, (name, fn) in enumerate(spec.allowed().items()):
        head, tail = call_frame(family, name)
        rules.append(f"call_{i}: {_lit(head)} {_json(fn['parameters'])} {_lit(tail)}")
        alts.append(f"call_{i}")
    before, between, after = calls_frame(family)
    one = "call"
    if family == "hermes":
        top = f"call ({_lit(between)} call)*" if spec.parallel else one
    elif family == "mistral":
        many = f" ({_lit(between)} call)*" if spec.parallel else ""
        top = f"{_lit(before)} call{many} {_lit(after)}"
    else:
        top = one + (f" | {_lit(before)} call ({_lit(between)} call)+ {_lit(after)}"
                     if spec.parallel else "")
    lines = [f"start: {top}", f"call: {' | '.join(alts)}", *rules]
    return Grammar("\n".join(lines) + "\n", "tool_choice")
