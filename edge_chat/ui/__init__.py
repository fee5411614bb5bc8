"""`edge_chat ui`: a local Gradio chat page over the chat core.

handlers.py holds the logic (no gradio import); page.py the layout and launch."""

from __future__ import annotations


def run_ui(*args, **kwargs) -> None:
    from edge_chat.ui.page import run_ui as _run
    _run(*args, **kwargs)
