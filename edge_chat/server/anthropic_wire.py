"""Anthropic's Messages wire format (https://docs.anthropic.com/en/api/messages): request
bodies in → the chat core's messages, tools and params; response bodies and stream events
out.

Parsing raises nothing but EdgeChatError (→ Anthropic's error shape, 400); a content block
or tool of a type this server does not take is a 400 naming the type."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict

from edge_chat.chat.completion import Choice, Event, Usage
from edge_chat.chat.messages import normalize_messages
from edge_chat.chat.tools import ToolCall, ToolSpec, parse_tools
from edge_chat.errors import EdgeChatError
from edge_chat.params import SamplingParams, chat_params
from edge_chat.server.protocol import Int

#: block types a text-only model cannot read
MEDIA = ("image", "document", "search_result", "container_upload")


class MessagesBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    max_tokens: Int | None = None
    messages: Any = None
    system: Any = None
    tools: Any = None
    tool_choice: Any = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: Int | None = None
    stream: bool | None = None
    # accepted and ignored: metadata, thinking, service_tier, ...

    def check(self, counting: bool = False) -> None:
        if not self.model:
            raise EdgeChatError("model: field required", param="model")
        if self.max_tokens is None and not counting:
            raise EdgeChatError("max_tokens: field required", param="max_tokens")

    def params(self) -> SamplingParams:
        try:
            return chat_params(temperature=self.temperature, top_p=self.top_p,
                               top_k=self.top_k, stop=self.stop_sequences,
                               max_tokens=self.max_tokens)
        except EdgeChatError as e:
            if e.param != "stop":
                raise
            raise EdgeChatError(e.message.replace("'stop'", "'stop_sequences'"),
                                param="stop_sequences") from None

    def chat_messages(self) -> list[dict]:
        return openai_messages(self.system, self.messages)

    def tool_spec(self) -> ToolSpec | None:
        return openai_tools(self.tools, self.tool_choice)


def _text(content: Any, where: str) -> str:
    """A string, or text blocks joined (a tool_result's content, the system prompt)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise EdgeChatError(f"{where} must be a string or a list of text blocks", param=where)
    parts = []
    for j, b in enumerate(content):
        kind = b.get("type") if isinstance(b, dict) else type(b).__name__
        if kind in MEDIA:
            raise EdgeChatError(f"{where}[{j}]: a '{kind}' block cannot be read by this "
                                "text-only model", param=f"{where}[{j}].type")
        if kind != "text" or not isinstance(b.get("text"), str):
            raise EdgeChatError(f"{where}[{j}]: unsupported block type {str(kind)[:40]!r} "
                                "(only 'text' here)", param=f"{where}[{j}].type")
        parts.append(b["text"])
    return "".join(parts)


def _blocks(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise EdgeChatError(f"{where} must be a string or a list of content blocks",
                            param=where)
    for j, b in enumerate(content):
        if not isinstance(b, dict):
            raise EdgeChatError(f"{where}[{j}] must be a content block object",
                                param=f"{where}[{j}]")
    return content


def _turn(role: str, content: Any, where: str) -> list[dict]:
    """One Anthropic message → OpenAI messages: tool results become `tool` messages
    (before the user's text), tool_use blocks the assistant's tool_calls."""
    text, calls, out = [], [], []
    for j, b in enumerate(_blocks(content, f"{where}.content")):
        kind, w = b.get("type"), f"{where}.content[{j}]"
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise EdgeChatError(f"{w}: a tool_use block needs 'id' and 'name'", param=w)
            calls.append({"id": b["id"], "type": "function", "function": {
                "name": b["name"], "arguments": b.get("input") or {}}})
        elif kind == "tool_result" and role == "user":
            body = _text(b.get("content") or "", f"{w}.content")
            if b.get("is_error"):
                body = f"Error: {body}"
            out.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": body})
        elif kind in ("thinking", "redacted_thinking") and role == "assistant":
            continue                                # no model here thinks: dropped
        elif kind in MEDIA:
            raise EdgeChatError(f"{w}: a '{kind}' block cannot be read by this text-only "
                                "model", param=f"{w}.type")
        else:
            raise EdgeChatError(f"{w}: unsupported content block type {str(kind)[:40]!r} in "
                                f"a {role} message", param=f"{w}.type")
    if text or calls or not out:
        msg: dict[str, Any] = {"role": role, "content": "".join(text)}
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return out


def openai_messages(system: Any, messages: Any) -> list[dict]:
    """`system` + Anthropic messages → the chat core's (validated) messages."""
    if not isinstance(messages, list) or not messages:
        raise EdgeChatError("messages: a non-empty list is required", param="messages")
    out = []
    if system:
        out.append({"role": "system", "content": _text(system, "system")})
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise EdgeChatError(f"{where}.role: must be 'user' or 'assistant' (the system "
                                "prompt goes in 'system')", param=f"{where}.role")
        out += _turn(role, m.get("content"), where)
    if out[-1]["role"] == "assistant":
        raise EdgeChatError("the last message is the assistant's: continuing a prefilled "
                            "answer is not supported", param=f"messages[{len(messages) - 1}]")
    return normalize_messages(out)


def openai_tools(tools: Any, choice: Any) -> ToolSpec | None:
    """`tools` [{name, description, input_schema}] and `tool_choice` → a ToolSpec."""
    if tools is not None and not isinstance(tools, list):
        raise EdgeChatError("tools must be a list", param="tools")
    converted = []
    for i, t in enumerate(tools or []):
        kind = t.get("type", "custom") if isinstance(t, dict) else None
        if kind not in ("custom", None):
            raise EdgeChatError(f"tools[{i}]: unsupported tool type {str(kind)[:40]!r} (only "
                                "client tools with an input_schema)", param=f"tools[{i}].type")
        converted.append({"type": "function", "function": {
            "name": t.get("name"), "description": t.get("description"),
            "parameters": t.get("input_schema")}})
    mode, parallel = None, None
    if choice is not None:
        if not isinstance(choice, dict):
            raise EdgeChatError("tool_choice must be an object", param="tool_choice")
        kind = choice.get("type")
        mode = {"auto": "auto", "any": "required", "none": "none"}.get(kind)
        if kind == "tool":
            mode = {"type": "function", "function": {"name": choice.get("name")}}
        elif mode is None:
            raise EdgeChatError(f"tool_choice.type: unsupported type {str(kind)[:40]!r} "
                                "(auto, any, tool or none)", param="tool_choice.type")
        if choice.get("disable_parallel_tool_use") is True:
            parallel = False
    try:
        return parse_tools(converted or None, mode, parallel)
    except EdgeChatError as e:
        param = (e.param or "").replace(".function.parameters", ".input_schema")
        raise EdgeChatError(e.message.replace(".function.parameters", ".input_schema")
                            .replace(".function.name", ".name"),
                            param=param.replace(".function.name", ".name")) from None


# -- responses ----------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def stop_reason(ev: Event | None) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence) of a finished answer."""
    if ev is None:
        return "end_turn", None
    if ev.finish_reason == "length":
        return "max_tokens", None
    if ev.finish_reason == "tool_calls":
        return "tool_use", None
    hit = ev.stats.stop if ev.stats is not None else None
    return ("stop_sequence", hit) if hit else ("end_turn", None)


def usage_body(usage: Usage | None) -> dict:
    """Anthropic's usage: `input_tokens` are the prompt tokens not read from a cache
    (the slot's KV or the prompt cache), `cache_read_input_tokens` the others."""
    cached = usage.cached_tokens if usage else 0
    return {"input_tokens": usage.prompt_tokens - cached if usage else 0,
            "output_tokens": usage.completion_tokens if usage else 0,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def tool_use(call: ToolCall) -> dict:
    return {"type": "tool_use", "id": "toolu_" + call.id.removeprefix("call_"),
            "name": call.name, "input": json.loads(call.arguments or "{}")}


def message(model: str, choice: Choice, usage: Usage | None, last: Event | None) -> dict:
    """The non-streamed response."""
    content = [{"type": "text", "text": choice.text}] if choice.text or not choice.tool_calls \
        else []
    content += [tool_use(c) for c in choice.tool_calls]
    reason, seq = stop_reason(last)
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": seq,
            "usage": usage_body(usage)}
