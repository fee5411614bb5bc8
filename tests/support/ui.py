"""Driving the page's handlers (edge_chat.ui.handlers) without a browser: a ChatUI over a
model holder, and one send with every status and streamed text collected."""

from __future__ import annotations

from pathlib import Path

from edge_chat.engines import EngineOptions
from edge_chat.ui.handlers import ChatUI, Conversation, ModelHolder

GREEDY = (0.0, 1.0, 0, -1)        # temperature, top_p, max_tokens (0: unset), seed (-1: random)


def make_ui(tmp_path: Path, model: str | None = "tiny-f16", **opts) -> ChatUI:
    holder = ModelHolder(EngineOptions(threads=1, **opts))
    if model:
        assert holder.load(model).startswith("model **")
    return ChatUI(holder, tmp_path / "exports")


def ask(ui: ChatUI, conv: Conversation, text: str, system: str = "", settings=GREEDY):
    """Run one send; returns (conv, every status, the answer text at each yield)."""
    statuses, texts = [], []
    for now, status in ui.send(conv, text, system, *settings):
        statuses.append(status)
        last = now.messages[-1]
        texts.append(last["content"] if last["role"] == "assistant" else None)
    return now, statuses, texts
