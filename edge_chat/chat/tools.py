"""Tool calls: the request's `tools` / `tool_choice` / `parallel_tool_calls`, the
tool-call history in `messages`, and which call format a model writes.

The format (family) is chosen from the chat template (the markup it teaches the
model), then the architecture:
  hermes   `<tool_call>{"name": …, "arguments": {…}}</tool_call>` (Qwen2.5, Hermes, many)
  llama3   `<|python_tag|>{"name": …, "parameters": {…}}` or the bare JSON object
  mistral  `[TOOL_CALLS][{"name": …, "arguments": {…}}]`
  generic  a bare JSON object `{"name": …, "arguments": {…}}` (or a list of them)
The parser for model output is in tool_parse.py."""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from edge_chat.errors import EdgeChatError

FAMILIES = ("hermes", "llama3", "mistral", "generic")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SCHEMA_TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


@dataclass
class ToolCall:
    name: str
    arguments: str                       # JSON text of an object, as OpenAI sends it
    id: str = field(default_factory=new_call_id)

    def as_dict(self) -> dict:
        return {"id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass
class ToolSpec:
    """A validated `tools` request: the function definitions by name, what
    `tool_choice` asks ("auto" | "none" | "required" | "function" with `name`)."""
    tools: list[dict]                          # the request's tools, validated
    functions: dict[str, dict]                 # name -> {"name", "description", "parameters"}
    choice: str = "auto"
    name: str | None = None                    # the named function (choice "function")
    parallel: bool = True

    @property
    def active(self) -> bool:
        """Does the answer get parsed for calls (not "none")?"""
        return self.choice != "none"

    @property
    def forced(self) -> bool:
        """Must the answer be calls only (constrained decoding)?"""
        return self.choice in ("required", "function")

    def allowed(self) -> dict[str, dict]:
        """The functions the answer may call."""
        if self.choice == "function":
            return {self.name: self.functions[self.name]}
        return self.functions


def _schema_ok(schema: Any) -> str | None:
    """Why `schema` is not a usable JSON schema (None when it is)."""
    if not isinstance(schema, dict):
        return "must be a JSON schema object"
    t = schema.get("type")
    types = t if isinstance(t, list) else [t] if t is not None else []
    if not all(isinstance(x, str) and x in _SCHEMA_TYPES for x in types):
        return f"has an unknown 'type' {t!r}"
    props = schema.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            return "'properties' must be an object"
        for k, sub in props.items():
            why = _schema_ok(sub) if not isinstance(sub, bool) else None
            if why:
                return f"property '{k}' {why}"
    req = schema.get("required")
    if req is not None and not (isinstance(req, list) and all(isinstance(x, str) for x in req)):
        return "'required' must be a list of property names"
    return None


def parse_tools(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None
                ) -> ToolSpec | None:
    """Validate the request's tool fields (EdgeChatError with `param` on bad
    input); None when no tools are given."""
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise EdgeChatError("'parallel_tool_calls' must be a boolean", param="parallel_tool_calls")
    if tools is None or tools == []:
        if tool_choice not in (None, "none", "auto"):
            raise EdgeChatError("'tool_choice' is only allowed when 'tools' are given",
                                param="tool_choice")
        return None
    if not isinstance(tools, list):
        raise EdgeChatError("'tools' must be a list of function tools", param="tools")
    functions: dict[str, dict] = {}
    for i, t in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(t, dict) or t.get("type") != "function":
            raise EdgeChatError(f"{where}: only tools of type 'function' are supported",
                                param=f"{where}.type")
        fn = t.get("function")
        if not isinstance(fn, dict):
            raise EdgeChatError(f"{where}.function must be an object", param=f"{where}.function")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise EdgeChatError(f"{where}.function.name must be 1-64 letters, digits, '_', '-' "
                                f"or '.' (got {name!r})", param=f"{where}.function.name")
        if name in functions:
            raise EdgeChatError(f"{where}: the function name '{name}' is given twice",
                                param=f"{where}.function.name")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise EdgeChatError(f"{where}.function.description must be a string",
                                param=f"{where}.function.description")
        params = fn.get("parameters", {"type": "object", "properties": {}})
        why = _schema_ok(params)
        if why is None and params.get("type", "object") != "object":
            why = "must describe an object (type 'object')"
        if why:
            raise EdgeChatError(f"{where}.function.parameters {why}",
                                param=f"{where}.function.parameters")
        if "strict" in fn and not isinstance(fn["strict"], bool):
            raise EdgeChatError(f"{where}.function.strict must be a boolean",
                                param=f"{where}.function.strict")
        functions[name] = {"name": name, "description": desc or "", "parameters": params}
    spec = ToolSpec(tools, functions, parallel=parallel_tool_calls is not False)
    c = "auto" if tool_choice is None else tool_choice
    if isinstance(c, str):
        if c not in ("auto", "none", "required"):
            raise EdgeChatError("'tool_choice' must be 'auto', 'none', 'required' or "
                                "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                                param="tool_choice")
        spec.choice = c
        return spec
    fname = c.get("function", {}).get("name") if isinstance(c, dict) and \
        c.get("type") == "function" and isinstance(c.get("function"), dict) else None
    if not isinstance(fname, str):
        raise EdgeChatError("'tool_choice' must be 'auto', 'none', 'required' or "
                            "{\"type\": \"function\", \"function\": {\"name\": ...}}",
                            param="tool_choice")
    if fname not in functions:
        raise EdgeChatError(f"tool_choice names the function '{fname}', which is not among "
                            f"the tools ({', '.join(functions)})", param="tool_choice")
    spec.choice, spec.name = "function", fname
    return spec


# -- history -------------------------------------------------------------------
def check_tool_history(messages: list[dict], raw: list) -> None:
    """Validate assistant `tool_calls` and `role: tool` messages (normalized
    `messages`, `raw` as sent, for the error's field names)."""
    ids: set[str] = set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        calls = m.get("tool_calls")
        if calls is not None:
            if m["role"] != "assistant":
                raise EdgeChatError(f"{where}: only assistant messages carry tool_calls",
                                    param=f"{where}.tool_calls")
            if not isinstance(calls, list):
                raise EdgeChatError(f"{where}.tool_calls must be a list",
                                    param=f"{where}.tool_calls")
            for j, c in enumerate(calls):
                w = f"{where}.tool_calls[{j}]"
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise EdgeChatError(f"{w} must be {{\"id\", \"type\": \"function\", "
                                        f"\"function\": {{\"name\", \"arguments\"}}}}", param=w)
                args = fn.get("arguments", "{}")
                if isinstance(args, str):
                    try:
                        json.loads(args or "{}")
                    except ValueError:
                        raise EdgeChatError(f"{w}.function.arguments is not valid JSON: "
                                            f"{args[:80]!r}",
                                            param=f"{w}.function.arguments") from None
                elif not isinstance(args, dict):
                    raise EdgeChatError(f"{w}.function.arguments must be a JSON string",
                                        param=f"{w}.function.arguments")
                if isinstance(c.get("id"), str):
                    ids.add(c["id"])
        if m["role"] == "tool":
            tid = raw[i].get("tool_call_id") if isinstance(raw[i], dict) else None
            if not isinstance(tid, str) or not tid:
                raise EdgeChatError(f"{where}: a 'tool' message needs 'tool_call_id'",
                                    param=f"{where}.tool_call_id")
            if tid not in ids:
                raise EdgeChatError(f"{where}.tool_call_id '{tid}' matches no earlier assistant "
                                    "tool call", param=f"{where}.tool_call_id")


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates expect them: tool-call `arguments` as objects
    (a JSON string would be written double-encoded), and `tool` messages with the
    function's `name` filled in from the call they answer."""
    names: dict[str, str] = {}
    out = []
    for m in messages:
        calls = m.get("tool_calls")
        if calls:
            m = dict(m)
            fixed = []
            for c in calls:
                fn = dict(c["function"])
                args = fn.get("arguments")
                if isinstance(args, str):
                    try:
                        fn["arguments"] = json.loads(args or "{}")
                    except ValueError:      # (normalize_messages refuses these first)
                        pass
                fixed.append({**c, "type": "function", "function": fn})
                if isinstance(c.get("id"), str):
                    names[c["id"]] = fn["name"]
            m["tool_calls"] = fixed
        elif m["role"] == "tool" and "name" not in m and m.get("tool_call_id") in names:
            m = {**m, "name": names[m["tool_call_id"]]}
        out.append(m)
    return out


# -- the model's format -------------------------------------------------------------
def tool_family(template_source: str | None, arch: str = "") -> str | None:
    """The call format a model writes, from its chat template (None: the
    template does not take tools)."""
    src = template_source or ""
    if "<tool_call>" in src:
        return "hermes"
    if "[TOOL_CALLS]" in src:
        return "mistral"
    if "<|python_tag|>" in src or "ipython" in src:
        return "llama3"
    if not re.search(r"\btools\b", src):
        return None
    if arch.startswith("mistral"):
        return "mistral"
    if arch.startswith("llama"):
        return "llama3"
    return "generic"


def require_family(template_source: str | None, arch: str, model: str) -> str:
    family = tool_family(template_source, arch)
    if family is None:
        raise EdgeChatError(f"the model '{model}' has a chat template without tool support: "
                            "it cannot take 'tools' (use --chat-template with one that does)",
                            param="tools")
    return family


def call_frame(family: str, name: str) -> tuple[str, str]:
    """The text a model of `family` writes before and after one call's
    arguments object (the form constrained decoding forces)."""
    key = "parameters" if family == "llama3" else "arguments"
    head = f'{{"name": {json.dumps(name)}, "{key}": '
    if family == "hermes":
        return "<tool_call>\n" + head, "}\n</tool_call>"
    return head, "}"


#: how several forced calls are joined: (before, between, after)
def calls_frame(family: str) -> tuple[str, str, str]:
    if family == "hermes":
        return "", "\n", ""
    return "[", ", ", "]"    # a JSON list (mistral: always; others: for two or more)
