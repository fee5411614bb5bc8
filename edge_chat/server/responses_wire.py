"""OpenAI's Responses wire format (`POST /v1/responses`): the request body in → the chat
core's messages, tools, params and response_format; output items, usage and the
response object out.

Parsing raises nothing but EdgeChatError (→ OpenAI's error shape, 400 naming the field);
an input item, content part, tool or `tool_choice` of a type this server does not take is
a 400 naming the type."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from edge_chat.chat.completion import TokenLogprob, Usage
from edge_chat.chat.structured import check_response_format
from edge_chat.chat.tools import ToolCall, ToolSpec, parse_tools
from edge_chat.errors import EdgeChatError, printable
from edge_chat.params import SamplingParams, chat_params
from edge_chat.server.protocol import MAX_TOP_LOGPROBS, Int

#: content parts a text-only model cannot read
MEDIA = ("input_image", "input_file", "input_audio")
#: the text parts of a message (`refusal` is an assistant's earlier refusal, read as text)
TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
ROLES = ("user", "system", "developer", "assistant")
#: `include` value that asks for the tokens' logprobs in output_text parts
LOGPROBS = "message.output_text.logprobs"


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _bad(message: str, param: str) -> EdgeChatError:
    return EdgeChatError(message, param=param)


def _kind(value: Any) -> str:
    """A type name for an error message (never the whole value)."""
    return printable(str(value), 40) if isinstance(value, str) else type(value).__name__


class ResponsesBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    input: Any = None
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool | None = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    text: Any = None
    max_output_tokens: Int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_logprobs: Int | None = None
    include: list[str] | None = None
    truncation: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    # accepted and ignored: reasoning (HOOK: a thinking model's effort), service_tier,
    # prompt_cache_key, safety_identifier, stream_options, max_tool_calls, ...

    def check(self) -> None:
        if self.background:
            raise _bad("'background' responses are not supported: send the request and wait "
                       "(or stream it)", "background")
        for field, hint in (("conversation", "use 'previous_response_id'"),
                            ("prompt", "send the prompt's text as 'instructions'")):
            if getattr(self, field) is not None:
                raise _bad(f"'{field}' is not supported: {hint}", field)
        if self.input is None:
            raise _bad("'input' is required", "input")
        if self.truncation not in (None, "auto", "disabled"):
            raise _bad("'truncation' must be 'auto' or 'disabled'", "truncation")
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise _bad(f"invalid 'top_logprobs': must be between 0 and {MAX_TOP_LOGPROBS}",
                       "top_logprobs")

    @property
    def n_logprobs(self) -> int | None:
        """None: no logprobs (asked with include "message.output_text.logprobs")."""
        return (self.top_logprobs or 0) if LOGPROBS in (self.include or ()) else None

    @property
    def policy(self) -> str:
        """The context policy: `truncation: auto` drops the oldest turns to fit."""
        return "truncate" if self.truncation == "auto" else "error"

    def params(self) -> SamplingParams:
        try:
            return chat_params(temperature=self.temperature, top_p=self.top_p,
                               max_tokens=self.max_output_tokens)
        except EdgeChatError as e:
            if e.param != "max_tokens":
                raise
            raise _bad(e.message.replace("'max_tokens'", "'max_output_tokens'"),
                       "max_output_tokens") from None

    def response_format(self) -> dict | None:
        """`text.format` as the chat core's response_format."""
        if self.text is None:
            return None
        fmt = self.text.get("format") if isinstance(self.text, dict) else None
        if not isinstance(self.text, dict) or not isinstance(fmt, (dict, type(None))):
            raise _bad("'text' must be {\"format\": {\"type\": ...}}", "text")
        kind = (fmt or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return {"type": "json_object"}
        if kind != "json_schema":
            raise _bad(f"text.format.type: unsupported type '{_kind(kind)}' (text, json_object "
                       "or json_schema)", "text.format.type")
        rf = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict") if k in fmt}}
        if not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format.schema: a JSON schema object is required",
                       "text.format.schema")
        try:
            check_response_format(rf)
        except EdgeChatError as e:
            raise _bad(e.message.replace("response_format.json_schema", "text.format"),
                       "text.format") from None
        return rf

    def tool_spec(self) -> ToolSpec | None:
        return chat_tools(self.tools, self.tool_choice, self.parallel_tool_calls)

    def echo(self) -> dict:
        """The request's fields a response object repeats (with OpenAI's defaults)."""
        return {"instructions": self.instructions, "max_output_tokens": self.max_output_tokens,
                "parallel_tool_calls": self.parallel_tool_calls is not False,
                "previous_response_id": self.previous_response_id,
                "store": self.store is not False,
                "temperature": 1.0 if self.temperature is None else self.temperature,
                "top_p": 1.0 if self.top_p is None else self.top_p,
                "top_logprobs": self.top_logprobs,
                "text": {"format": (self.text or {}).get("format") or {"type": "text"}},
                "tool_choice": "auto" if self.tool_choice is None else self.tool_choice,
                "tools": self.tools or [], "truncation": self.truncation or "disabled",
                "metadata": self.metadata or {},
                "reasoning": {"effort": None, "summary": None}, "background": False,
                "service_tier": "default", **({"user": self.user} if self.user else {})}


# -- tools ------------------------------------------------------------------------
def _function_tool(t: Any, where: str) -> dict:
    kind = t.get("type") if isinstance(t, dict) else None
    if kind != "function":
        raise _bad(f"{where}: unsupported tool type '{_kind(kind)}' (only 'function' tools: "
                   "{\"type\": \"function\", \"name\", \"parameters\"})", f"{where}.type")
    fn = {k: t[k] for k in ("name", "description", "parameters", "strict")
          if t.get(k) is not None}
    return {"type": "function", "function": fn}


def chat_tools(tools: Any, choice: Any, parallel: bool | None) -> ToolSpec | None:
    """Responses' flat function tools `{"type": "function", "name", "parameters"}` and
    `tool_choice` → a ToolSpec (`allowed_tools` keeps only the tools it lists)."""
    if tools is not None and not isinstance(tools, list):
        raise _bad("'tools' must be a list of function tools", "tools")
    converted = [_function_tool(t, f"tools[{i}]") for i, t in enumerate(tools or [])]
    mode: Any = choice
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function":
            mode = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind == "allowed_tools":
            allowed = choice.get("tools")
            names = {t.get("name") for t in allowed if isinstance(t, dict)} \
                if isinstance(allowed, list) else None
            if not names or choice.get("mode", "auto") not in ("auto", "required"):
                raise _bad("tool_choice: allowed_tools needs 'mode' (auto or required) and "
                           "'tools' [{\"type\": \"function\", \"name\"}]", "tool_choice")
            converted = [t for t in converted if t["function"].get("name") in names]
            mode = choice.get("mode", "auto")
        else:
            raise _bad(f"tool_choice: unsupported type '{_kind(kind)}' (auto, none, required, "
                       "{\"type\": \"function\", \"name\"} or allowed_tools)", "tool_choice")
    elif choice not in (None, "auto", "none", "required"):
        raise _bad("tool_choice must be 'auto', 'none', 'required' or {\"type\": \"function\", "
                   "\"name\"}", "tool_choice")
    try:
        return parse_tools(converted or None, mode, parallel)
    except EdgeChatError as e:
        def flat(s: str | None) -> str | None:
            return s and s.replace(".function.", ".")
        raise EdgeChatError(flat(e.message), param=flat(e.param)) from None


# -- input --------------------------------------------------------------------------
def _text(content: Any, where: str) -> str:
    """A string, or the text of a list of text parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts", where)
    out = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        w = f"{where}[{j}]"
        if kind in MEDIA:
            raise _bad(f"{w}: an '{kind}' part cannot be read by this text-only model",
                       f"{w}.type")
        key = TEXT_PARTS.get(kind) if isinstance(kind, str) else None
        if key is None:
            raise _bad(f"{w}: unsupported content type '{_kind(kind)}' (input_text or "
                       "output_text)", f"{w}.type")
        if not isinstance(part.get(key), str):
            raise _bad(f"{w}.{key} must be a string", f"{w}.{key}")
        out.append(part[key])
    return "".join(out)


def _json_args(args: Any, where: str) -> str:
    if not isinstance(args, str):
        raise _bad(f"{where} must be a JSON string", where)
    try:
        json.loads(args or "{}")
    except ValueError:
        raise _bad(f"{where} is not valid JSON: {printable(args, 80)!r}", where) from None
    return args


class InputReader:
    """Input items → chat messages (function_call items become an assistant message's
    tool_calls, function_call_output items `tool` messages) and the same items with ids,
    as `input_items` lists them. `calls`: the call ids already in the conversation."""

    def __init__(self, calls: set[str]):
        self.calls = calls
        self.messages: list[dict] = []
        self.items: list[dict] = []

    def read(self, value: Any) -> InputReader:
        if isinstance(value, str):
            value = [{"type": "message", "role": "user", "content": value}]
        if not isinstance(value, list) or not value:
            raise _bad("'input' must be a string or a non-empty list of items", "input")
        for i, item in enumerate(value):
            where = f"input[{i}]"
            if not isinstance(item, dict):
                raise _bad(f"{where} must be an item object", where)
            if "type" not in item and "role" not in item:
                raise _bad(f"{where}: an item needs a 'type' (message, function_call or "
                           "function_call_output) or, for a message, a 'role'", where)
            kind = item.get("type", "message")
            if kind == "message":
                self.message(item, where)
            elif kind == "function_call":
                self.call(item, where)
            elif kind == "function_call_output":
                self.output(item, where)
            elif kind == "reasoning":
                continue        # HOOK: a thinking model's earlier reasoning (dropped for now)
            else:
                raise _bad(f"{where}: unsupported item type '{_kind(kind)}' (message, "
                           "function_call or function_call_output)", f"{where}.type")
        return self

    def message(self, item: dict, where: str) -> None:
        role = item.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role: unknown role '{_kind(role)}' (user, system, developer "
                       "or assistant)", f"{where}.role")
        text = _text(item.get("content"), f"{where}.content")
        self.messages.append({"role": role, "content": text})
        if role == "assistant":
            self.items.append(message_item(item.get("id") or new_id("msg"), text, "completed"))
        else:
            self.items.append({"id": new_id("msg"), "type": "message", "role": role,
                               "status": "completed",
                               "content": [{"type": "input_text", "text": text}]})

    def call(self, item: dict, where: str) -> None:
        call_id, name = item.get("call_id"), item.get("name")
        if not isinstance(call_id, str) or not call_id or not isinstance(name, str):
            raise _bad(f"{where}: a function_call item needs 'call_id' and 'name'", where)
        args = _json_args(item.get("arguments", "{}"), f"{where}.arguments")
        call = {"id": call_id, "type": "function", "function": {"name": name,
                                                                "arguments": args}}
        last = self.messages[-1] if self.messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            self.messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        self.calls.add(call_id)
        self.items.append(call_item(item.get("id") or new_id("fc"),
                                    ToolCall(name, args, call_id), "completed"))

    def output(self, item: dict, where: str) -> None:
        call_id = item.get("call_id")
        if call_id not in self.calls:
            raise _bad(f"{where}.call_id '{_kind(call_id)}' answers no earlier function_call",
                       f"{where}.call_id")
        text = _text(item.get("output"), f"{where}.output")
        self.messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        self.items.append({"id": item.get("id") or new_id("fco"),
                           "type": "function_call_output", "call_id": call_id,
                           "output": text, "status": "completed"})


def call_ids(messages: list[dict]) -> set[str]:
    """The tool-call ids of a conversation's messages."""
    return {c["id"] for m in messages for c in m.get("tool_calls") or ()}


# -- output ---------------------------------------------------------------------------
def message_item(item_id: str, text: str, status: str, logprobs: list | None = None) -> dict:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [],
                         "logprobs": logprobs or []}]}


def call_item(item_id: str, call: ToolCall, status: str) -> dict:
    return {"id": item_id, "type": "function_call", "status": status, "call_id": call.id,
            "name": call.name, "arguments": call.arguments}


def item_messages(items: list[dict]) -> list[dict]:
    """Output items → the chat messages a continuation (`previous_response_id`) reads."""
    return InputReader(set()).read(items).messages if items else []


def text_logprobs(entries: list[TokenLogprob]) -> list[dict]:
    """An output_text part's `logprobs`."""
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
             "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": list(a.bytes)}
                              for a in t.top]} for t in entries]


def delta_logprobs(entries: list[TokenLogprob]) -> list[dict]:
    """An output_text.delta event's `logprobs`."""
    return [{"token": t.token, "logprob": t.logprob,
             "top_logprobs": [{"token": a.token, "logprob": a.logprob} for a in t.top]}
            for t in entries]


def usage_body(usage: Usage | None) -> dict:
    """`input_tokens` count every prompt token; `cached_tokens` those read from a cache
    (the slot's KV or the prompt cache)."""
    u = usage or Usage(0, 0)
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
            "output_tokens": u.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def response_body(rid: str, model: str, echo: dict, created: float, status: str,
                  output: list[dict], usage: Usage | None = None,
                  error: dict | None = None) -> dict:
    """The response object (`status`: in_progress, completed, incomplete or failed)."""
    out = {"id": rid, "object": "response", "created_at": created, "status": status,
           "completed_at": int(time.time()) if status == "completed" else None,
           "error": error, "model": model, "output": output,
           "incomplete_details": {"reason": "max_output_tokens"}
           if status == "incomplete" else None, **echo}
    if status not in ("in_progress", "failed"):
        out["usage"] = usage_body(usage)
    return out
