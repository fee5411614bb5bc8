"""Chat messages in the OpenAI shape: {"role": ..., "content": str | [text parts]}."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge_chat.atomic import write_json_atomic
from edge_chat.chat.tools import check_tool_history
from edge_chat.errors import EdgeChatError

ROLES = ("system", "developer", "user", "assistant", "tool")


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            if kind in ("image_url", "input_image", "image", "input_audio", "file"):
                raise EdgeChatError(f"{where}.content[{j}]: a '{kind}' part cannot be read by "
                                    "a text-only model: send text parts only",
                                    param=f"{where}.content")
            if not isinstance(part, dict) or kind != "text" \
                    or not isinstance(part.get("text"), str):
                raise EdgeChatError(
                    f"{where}.content[{j}]: only text parts are supported (got {kind!r})",
                    param=f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise EdgeChatError(f"{where}.content must be a string or a list of text parts",
                        param=f"{where}.content")


def normalize_messages(messages: Any) -> list[dict]:
    """Validate OpenAI-shaped messages; return plain dicts with string content
    (`developer` becomes `system`). Raises EdgeChatError naming the bad field."""
    if not isinstance(messages, list):
        raise EdgeChatError("messages must be a list", param="messages")
    if not messages:
        raise EdgeChatError("messages must not be empty", param="messages")
    out = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise EdgeChatError(f"{where} must be an object with 'role' and 'content'", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise EdgeChatError(
                f"{where}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})",
                param=f"{where}.role")
        content = m.get("content")
        if content is None and role == "assistant" and m.get("tool_calls"):
            content = ""
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role,
                               "content": _content_text(content, where)}
        for key in ("name", "tool_calls", "tool_call_id"):
            if m.get(key) is not None:
                msg[key] = m[key]
        out.append(msg)
    check_tool_history(out, messages)
    return out


def load_messages(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgeChatError(f"no such file: {path}") from None
    except (OSError, ValueError) as e:
        raise EdgeChatError(f"{path}: not a JSON messages file ({e})") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    return normalize_messages(data)


def save_messages(path: Path, messages: list[dict]) -> None:
    write_json_atomic(Path(path), {"messages": messages})
