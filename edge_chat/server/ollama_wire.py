"""Ollama's wire format (https://github.com/ollama/ollama/blob/main/docs/api.md): request
bodies in → the chat core's messages, params and response_format; response bodies out.

Parsing raises nothing but EdgeChatError (→ Ollama's `{"error": ...}` with 400)."""

from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict

from edge_chat.chat.completion import Event, TokenLogprob, Usage
from edge_chat.chat.messages import normalize_messages
from edge_chat.chat.structured import check_response_format
from edge_chat.chat.tools import ToolCall, ToolSpec, parse_tools
from edge_chat.errors import EdgeChatError
from edge_chat.params import SamplingParams, chat_params
from edge_chat.server.protocol import MAX_TOP_LOGPROBS
from edge_chat.system import parse_duration

#: Ollama `options` → SamplingParams fields (the others, num_ctx, num_thread..., are ignored)
OPTIONS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
           "stop": "stop", "seed": "seed", "num_predict": "max_tokens",
           "repeat_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
           "frequency_penalty": "frequency_penalty"}


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    stream: bool | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: str | int | float | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None

    def params(self) -> SamplingParams:
        return ollama_params(self.options)

    def response_format(self) -> dict | None:
        return response_format(self.format)

    @property
    def streamed(self) -> bool:
        return self.stream is not False             # Ollama streams by default

    @property
    def n_logprobs(self) -> int | None:
        k = self.top_logprobs or 0
        if not 0 <= k <= MAX_TOP_LOGPROBS:
            raise EdgeChatError(f"invalid 'top_logprobs': must be between 0 and "
                                f"{MAX_TOP_LOGPROBS}", param="top_logprobs")
        return k if self.logprobs else None


class ChatBody(_Base):
    messages: Any = None
    tools: Any = None

    def chat_messages(self) -> list[dict]:
        return openai_messages(self.messages)

    def tool_spec(self) -> ToolSpec | None:
        return parse_tools(self.tools or None)


class GenerateBody(_Base):
    prompt: str | None = None
    system: str | None = None
    raw: bool | None = None
    suffix: str | None = None
    template: str | None = None
    images: Any = None
    context: Any = None             # the old conversation state: ignored

    def check(self) -> None:
        if self.suffix:
            raise EdgeChatError("'suffix' (fill in the middle) is not supported", param="suffix")
        if self.images:
            raise EdgeChatError("'images': this is a text-only model", param="images")
        if self.template:
            raise EdgeChatError("'template' is not supported: the model's own chat template "
                                "is used (or the server's --chat-template)", param="template")


class ModelBody(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    name: str | None = None         # older clients

    @property
    def which(self) -> str:
        if not (self.model or self.name):
            raise EdgeChatError("'model' is required", param="model")
        return self.model or self.name


def store_name(name: str | None) -> str | None:
    """'tiny:latest' → 'tiny' (every stored model is its own ':latest')."""
    return name.removesuffix(":latest") if isinstance(name, str) else name


def ollama_params(options: dict[str, Any] | None) -> SamplingParams:
    values: dict[str, Any] = {}
    for key, value in (options or {}).items():
        field = OPTIONS.get(key)
        if field is None or value is None:
            continue
        if field == "max_tokens" and isinstance(value, int) and value < 0:
            continue                                # -1, -2: no limit but the window
        values[field] = value
    try:
        return chat_params(**values)
    except EdgeChatError as e:
        name = next((k for k, f in OPTIONS.items() if f == e.param), e.param)
        raise EdgeChatError(e.message.replace(f"'{e.param}'", f"'options.{name}'"),
                            param=f"options.{name}") from None


def response_format(fmt: Any) -> dict | None:
    """`format`: "json" or a JSON schema → the chat core's response_format."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        rf = {"type": "json_object"}
    elif isinstance(fmt, dict):
        rf = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    else:
        raise EdgeChatError("'format' must be \"json\" or a JSON schema object", param="format")
    try:
        check_response_format(rf)
    except EdgeChatError as e:
        raise EdgeChatError(e.message.replace("response_format", "format"),
                            param="format") from None
    return rf


def _calls(calls: Any, where: str, i: int) -> list[dict]:
    """An assistant's Ollama tool_calls ({"function": {"name", "arguments": {...}}}) in
    OpenAI's shape, with ids the tool messages after it are matched to."""
    if not isinstance(calls, list):
        raise EdgeChatError(f"{where}.tool_calls must be a list", param=f"{where}.tool_calls")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise EdgeChatError(f"{where}.tool_calls[{j}] must be {{\"function\": {{\"name\", "
                                f"\"arguments\"}}}}", param=f"{where}.tool_calls[{j}]")
        out.append({"id": f"call_{i}_{j}", "type": "function",
                    "function": {"name": fn["name"], "arguments": fn.get("arguments") or {}}})
    return out


def openai_messages(messages: Any) -> list[dict]:
    """Ollama chat messages → the chat core's (OpenAI-shaped, validated) messages. A tool
    message answers the earliest unanswered call of its `tool_name` (else the earliest)."""
    if not isinstance(messages, list):
        raise EdgeChatError("'messages' must be a list", param="messages")
    out: list[dict] = []
    pending: list[tuple[str, str]] = []             # (call id, function name)
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise EdgeChatError(f"{where} must be an object with 'role' and 'content'",
                                param=where)
        if m.get("images"):
            raise EdgeChatError(f"{where}.images: this is a text-only model",
                                param=f"{where}.images")
        msg = {"role": m.get("role"), "content": m.get("content") or ""}
        if m.get("tool_calls"):
            msg["tool_calls"] = _calls(m["tool_calls"], where, i)
            pending += [(c["id"], c["function"]["name"]) for c in msg["tool_calls"]]
        if m.get("role") == "tool":
            name = m.get("tool_name") or m.get("name")
            match = [p for p in pending if p[1] == name] or pending
            if not match:
                raise EdgeChatError(f"{where}: a 'tool' message answers no earlier tool call",
                                    param=f"{where}.role")
            pending.remove(match[0])
            msg["tool_call_id"] = match[0][0]
        out.append(msg)
    return normalize_messages(out)


def keep_alive_seconds(value: Any) -> float | None:
    """`keep_alive`: seconds (a number or "300"), a Go duration ("5m", "0"), negative =
    forever (inf); None: the server's --keep-alive. A bad value is a 400."""
    return None if value is None else parse_duration(value, "keep_alive")


# -- responses ----------------------------------------------------------------
def timestamp(t: float | None = None) -> str:
    """RFC 3339 in UTC, as Ollama writes `created_at`."""
    d = datetime.fromtimestamp(time.time() if t is None else t, timezone.utc)
    return d.isoformat().replace("+00:00", "Z")


def ollama_calls(calls: list[ToolCall]) -> list[dict]:
    return [{"function": {"name": c.name, "arguments": json.loads(c.arguments or "{}")}}
            for c in calls]


def ollama_logprobs(entries: list[TokenLogprob]) -> list[dict]:
    return [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes),
             "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": list(a.bytes)}
                              for a in t.top]} for t in entries]


def final_fields(ev: Event | None, usage: Usage | None, started: int) -> dict:
    """The last object's `done_reason` and counts; durations in nanoseconds."""
    stats = ev.stats if ev is not None else None
    ttft = int(stats.ttft * 1e9) if stats else 0
    spent = int(stats.seconds * 1e9) if stats else 0
    reason = "length" if ev is not None and ev.finish_reason == "length" else "stop"
    return {"done": True, "done_reason": reason,
            "total_duration": time.perf_counter_ns() - started, "load_duration": 0,
            "prompt_eval_count": usage.prompt_tokens if usage else 0,
            "prompt_eval_duration": ttft,
            "eval_count": usage.completion_tokens if usage else 0,
            "eval_duration": max(spent - ttft, 0)}


def parameter_size(n: Any) -> str:
    if not isinstance(n, int) or n <= 0:
        return ""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}".replace(".0" + unit, unit)
    return str(n)


def details(meta: dict) -> dict:
    arch = meta.get("arch") or ""
    return {"parent_model": "", "format": meta.get("format") or "", "family": arch,
            "families": [arch] if arch else [], "parameter_size": parameter_size(
                meta.get("n_params")), "quantization_level": meta.get("quant") or ""}


def digest(name: str, meta: dict) -> str:
    """An identifier of the stored file's version (name, size, time), not a hash of its
    bytes: reading gigabytes for a listing would be too slow."""
    key = f"{name}:{meta.get('size_bytes')}:{meta.get('created')}"
    return hashlib.sha256(key.encode()).hexdigest()


def tag(name: str, meta: dict) -> dict:
    """A /api/tags entry."""
    return {"name": f"{name}:latest", "model": f"{name}:latest",
            "modified_at": timestamp(meta.get("created") or 0),
            "size": meta.get("size_bytes") or 0, "digest": digest(name, meta),
            "details": details(meta)}


def show(name: str, meta: dict) -> dict:
    """A /api/show answer: what the store knows without loading the model."""
    arch = meta.get("arch") or "unknown"
    info = {"general.architecture": arch, "general.parameter_count": meta.get("n_params"),
            f"{arch}.context_length": meta.get("context_length")}
    return {"modelfile": f"# edge_chat model {name}\nFROM {name}\n", "parameters": "",
            "template": "", "details": details(meta), "model_info": info,
            "capabilities": ["completion"], "modified_at": timestamp(meta.get("created") or 0)}
