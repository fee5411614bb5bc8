"""The page's layout (gradio) and `run_ui`, behind `edge_chat ui`.

Offline by construction: analytics off, share off, system fonts only (no web
fonts), no server-side rendering (no node), bound to 127.0.0.1 unless asked."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from edge_chat.params import CHAT_DEFAULTS
from edge_chat.engines import EngineOptions
from edge_chat.errors import EdgeChatError
from edge_chat.ui.handlers import ChatUI, Conversation, ModelHolder

SANS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue",
        "Arial", "sans-serif"]
MONO = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "Liberation Mono", "monospace"]
CSS = """
#chat sub { opacity: 0.65; }
footer { display: none !important; }
"""


def _gradio():
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"   # before gradio reads it
    try:
        import gradio as gr
    except ImportError:
        raise EdgeChatError("the page needs gradio: pip install 'edge-chat[ui]'") from None
    return gr


def theme():
    gr = _gradio()
    return gr.themes.Base(font=SANS, font_mono=MONO)


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """'USER:PASSWORD' → (user, password)."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise EdgeChatError("--auth must be USER:PASSWORD (both non-empty)", param="auth")
    return user, password


def build_page(ui: ChatUI):
    """The gradio Blocks of the page; every event calls a ChatUI method."""
    gr = _gradio()
    holder = ui.holder

    with gr.Blocks(title="edge_chat", analytics_enabled=False) as page:
        conv = gr.State(Conversation())
        with gr.Row(equal_height=True):
            model = gr.Dropdown(choices=holder.choices(), value=holder.name, label="Model",
                                elem_id="model", scale=2, interactive=True)
            status = gr.Markdown(holder.status, elem_id="status")
        chat = gr.Chatbot(label="edge_chat", elem_id="chat", height=440, buttons=["copy"],
                          placeholder="Offline chat: nothing you type leaves this machine.")
        with gr.Row(equal_height=True):
            msg = gr.Textbox(placeholder="Type a message, Enter to send", show_label=False,
                             elem_id="msg", scale=6, autofocus=True, lines=1, max_lines=8)
            send = gr.Button("Send", variant="primary", elem_id="send", scale=1, min_width=80)
            stop = gr.Button("Stop", variant="stop", elem_id="stop", scale=1, min_width=80)
        with gr.Row():
            retry = gr.Button("Retry", elem_id="retry", size="sm")
            clear = gr.Button("Clear", elem_id="clear", size="sm")
            export_json = gr.Button("Export JSON", elem_id="export-json", size="sm")
            export_md = gr.Button("Export Markdown", elem_id="export-md", size="sm")
        exported = gr.File(label="Exported conversation", elem_id="exported", interactive=False,
                           visible=False)
        with gr.Accordion("Settings", open=True):
            system = gr.Textbox(label="System prompt", lines=2, elem_id="system",
                                placeholder="e.g. You are a concise assistant.")
            with gr.Row():
                temperature = gr.Slider(0.0, 2.0, value=CHAT_DEFAULTS["temperature"], step=0.05,
                                        label="temperature (0 = greedy)", elem_id="temperature")
                top_p = gr.Slider(0.0, 1.0, value=CHAT_DEFAULTS["top_p"], step=0.01,
                                  label="top_p", elem_id="top-p")
                max_tokens = gr.Number(0, label="max_tokens (0 = up to the window)",
                                       precision=0, minimum=0, elem_id="max-tokens")
                seed = gr.Number(-1, label="seed (-1 = random)", precision=0, minimum=-1,
                                 elem_id="seed")

        settings = [system, temperature, top_p, max_tokens, seed]

        def on_send(text, c, *s):
            for now, st in ui.send(c, text, *s):
                yield "", now.display(), now, st

        def on_retry(c, *s):
            for now, st in ui.retry(c, *s):
                yield now.display(), now, st

        answer = {"concurrency_id": "answer", "concurrency_limit": 1, "show_progress": "hidden"}
        events = [
            msg.submit(on_send, [msg, conv, *settings], [msg, chat, conv, status], **answer),
            send.click(on_send, [msg, conv, *settings], [msg, chat, conv, status], **answer),
            retry.click(on_retry, [conv, *settings], [chat, conv, status], **answer),
        ]
        stop.click(ui.stop, None, [status], concurrency_limit=None, show_progress="hidden")
        for ev in (clear.click, chat.clear):          # our button and the chat's own bin
            ev(lambda: (Conversation(), [], "conversation cleared"), None, [conv, chat, status],
               cancels=events, show_progress="hidden")
        model.input(ui.switch, [model], [status], concurrency_id="load", concurrency_limit=1)

        def on_export(fmt):
            def run(c, s):
                path, st = ui.export(c, s, fmt)
                return gr.File(value=path, visible=path is not None), st
            return run

        export_json.click(on_export("json"), [conv, system], [exported, status])
        export_md.click(on_export("markdown"), [conv, system], [exported, status])
        # a new tab: refresh the store listing and show the loaded model
        page.load(lambda: (gr.Dropdown(choices=holder.choices(), value=holder.name),
                           holder.status), None, [model, status], show_progress="hidden")
    return page


def run_ui(model: str | None = None, *, host: str = "127.0.0.1", port: int = 7860,
           auth: tuple[str, str] | None = None, options: EngineOptions | None = None,
           chat_template: str | None = None, context_policy: str = "truncate",
           export_dir: Path | None = None, warn: Callable[[str], None] | None = None,
           allow_special: bool = False, tools: list | None = None) -> None:
    """Load `model` (default: the store's first), serve the page until Ctrl-C."""
    _gradio()                       # a clear error before loading anything
    holder = ModelHolder(options, chat_template=chat_template, context_policy=context_policy,
                         allow_special=allow_special)
    name = holder.add(model) if model is not None else holder.first()
    status = holder.load(name)
    if warn and (status.startswith("error") or name is None):
        warn(status)
    export = Path(export_dir) if export_dir else Path(tempfile.mkdtemp(prefix="edge_chat_ui_"))
    ui = ChatUI(holder, export, tools)
    page = build_page(ui)
    page.queue(default_concurrency_limit=1)
    try:
        page.launch(server_name=host, server_port=port, share=False, auth=auth,
                    inbrowser=False, show_error=True, ssr_mode=False, pwa=False,
                    mcp_server=False, footer_links=[], theme=theme(), css=CSS,
                    allowed_paths=[str(export)])
    except OSError as e:
        if "Cannot find empty port" in str(e):
            raise EdgeChatError(f"port {port} on {host} is in use: pick another with --port") \
                from None
        raise EdgeChatError(f"cannot serve on {host}:{port}: {e}") from None
    finally:
        holder.close()
