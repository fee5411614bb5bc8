"""The page's logic, without gradio: one loaded model at a time, a
conversation, and the handlers the page's buttons call.

Everything here calls the chat core as the terminal does (runtime.open_chat,
ChatModel.prepare / stream / cancel); page.py only lays out widgets and wires
them to these methods, so all of it is testable without a browser."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edge_chat.atomic import write_json_atomic, write_text_atomic
from edge_chat.chat.completion import ChatModelLike, Stats
from edge_chat.chat.conversation import Conversation as ChatConversation
from edge_chat.params import SamplingParams, chat_params
from edge_chat.engines import EngineOptions
from edge_chat.errors import EdgeChatError
from edge_chat.store.paths import describe, find_in_store, list_models, model_name, models_dir

BUSY_TIMEOUT = 60.0   # seconds a switch waits for a stopped answer to end


def _number(value: Any, unset_below: int) -> int | None:
    """A page number field: blank or below `unset_below` means unset (None)."""
    if value is None or value == "":
        return None
    value = int(value)
    return None if value < unset_below else value


def footer(stats: Stats, n_ctx: int, finish: str, stopped: bool = False) -> str:
    """The line under an answer: speed, first-token latency, context used."""
    used = stats.prompt_tokens + stats.completion_tokens
    line = f"{stats.decode_tps:.1f} tok/s · "
    if stats.acceptance is not None:     # speculative decoding drafted in this answer
        line += f"{stats.acceptance:.0%} of {stats.draft_tokens} drafted tokens accepted · "
    line += (f"first token {stats.ttft * 1000:.0f} ms · "
             f"context {used}/{n_ctx} · {stats.completion_tokens} tokens")
    if stopped:
        line += " · stopped"
    elif finish == "length":
        line += " · max_tokens or the context window reached"
    return line


class Conversation(ChatConversation):
    """The page's conversation (its gradio State). An assistant turn may carry a
    `footer` (the stats line), shown in the page and left out of exports; the system
    prompt comes from the page's System prompt box with each answer and export."""

    def openai(self, system: str | None = None) -> list[dict]:
        """The OpenAI messages, with `system` (the box's text) as the system prompt
        when given."""
        if system is not None:
            return ChatConversation(self.messages, system).openai()
        return super().openai()

    def display(self) -> list[dict]:
        """The turns as gradio Chatbot messages, stats under each answer."""
        out = []
        for m in self.messages:
            text = m["content"]
            for c in m.get("tool_calls") or []:
                fn = c["function"]
                text += f"\n\n🔧 tool call `{fn['name']}({fn['arguments']})`"
            if m.get("footer"):
                if text.count("```") % 2:          # close an unfinished code block
                    text += "\n```"
                text += f"\n\n<sub>{m['footer']}</sub>"
            out.append({"role": m["role"], "content": text})
        return out


class ModelHolder:
    """The one loaded model. Switching closes the old model before opening
    the new one, so at most one is in memory; a generation holds `_busy`."""

    def __init__(self, options: EngineOptions | None = None, *, chat_template: str | None = None,
                 context_policy: str = "truncate",
                 opener: Callable[..., ChatModelLike] | None = None,
                 allow_special: bool = False):
        from functools import partial

        from edge_chat.runtime import open_chat
        self.options = options
        self.chat_template = chat_template
        self.context_policy = context_policy
        self._open = opener or partial(open_chat, allow_special=allow_special)
        self._paths: dict[str, Path] = {}      # models given by path, outside the store
        self.model: ChatModelLike | None = None
        self.name: str | None = None
        self.status = ""
        self._busy = threading.Lock()
        self._stop = threading.Event()

    # -- the picker -----------------------------------------------------------
    def choices(self) -> list[tuple[str, str]]:
        """(label, name) for each model in the store, plus models given by path."""
        paths = {model_name(p): p for p in list_models()}
        paths.update({n: p for n, p in self._paths.items() if n not in paths})
        out = []
        for name, path in paths.items():
            try:
                d = describe(path)
                label = f"{name} ({d.get('format')} {d.get('quant', '?')})"
            except Exception:                               # noqa: BLE001  shown, not fatal
                label = f"{name} (unreadable)"
            out.append((label, name))
        return out

    def add(self, spec: str) -> str:
        """The picker name of a CLI model argument (a store name or a path)."""
        from edge_chat.store.paths import resolve_model
        path = resolve_model(spec)
        name = model_name(path)
        if path.parent.resolve() != models_dir().resolve():
            self._paths[name] = path
        return name

    def first(self) -> str | None:
        models = list_models()
        return model_name(models[0]) if models else None

    # -- loading --------------------------------------------------------------
    def load(self, name: str | None) -> str:
        """Make `name` the loaded model; returns a status line (errors included:
        a model that fails to load leaves the page usable with another)."""
        if not name:
            self.status = (f"no model: put a .gguf file or an ONNX folder in {models_dir()} "
                           "(edge_chat convert ...) and reload the page")
            return self.status
        if name == self.name and self.model is not None:
            return self.status
        self.stop()
        if not self._busy.acquire(timeout=BUSY_TIMEOUT):
            return "error: the model is still answering; press Stop and try again"
        try:
            self._unload()
            notes: list[str] = []
            try:
                path = self._paths.get(name) or find_in_store(name)
                self.model = self._open(str(path), self.options, chat_template=self.chat_template,
                                        context_policy=self.context_policy, warn=notes.append)
            except EdgeChatError as e:
                self.status = f"error: cannot load '{name}': {e}"
                return self.status
            except Exception as e:                          # noqa: BLE001  keep the page alive
                self.status = f"error: cannot load '{name}': {type(e).__name__}: {e}"
                return self.status
            self.name = name
            info = self.model.info
            self.status = (f"model **{info.name}** · {info.format} {info.quant} · "
                           f"context window {info.n_ctx} tokens")
            if notes:
                self.status += " · " + " ".join(notes)
            return self.status
        finally:
            self._busy.release()

    def _unload(self) -> None:
        model, self.model, self.name = self.model, None, None
        if model is not None:
            model.engine.close()

    def close(self) -> None:
        self.stop()
        with self._busy:
            self._unload()

    # -- generation -----------------------------------------------------------
    @contextmanager
    def generation(self) -> Iterator[ChatModelLike]:
        """The loaded model, for one answer (one at a time)."""
        if not self._busy.acquire(timeout=BUSY_TIMEOUT):
            raise EdgeChatError("the model is busy with another answer; try again")
        try:
            if self.model is None:
                raise EdgeChatError("no model loaded: pick one in the Model list")
            self._stop.clear()
            yield self.model
        finally:
            self._busy.release()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """End the current answer after the current token (ChatModel.cancel)."""
        self._stop.set()
        model = self.model
        if model is not None:
            model.cancel()


class ChatUI:
    """The handlers behind the page. Generators yield (conversation, status)."""

    def __init__(self, holder: ModelHolder, export_dir: Path, tools: list | None = None):
        self.holder = holder
        self.export_dir = Path(export_dir)
        self.tools = tools          # OpenAI function tools the model may call (shown as calls)

    @staticmethod
    def params(temperature: float | None, top_p: float | None, max_tokens: Any,
               seed: Any) -> SamplingParams:
        """The sampling params of the page's fields (max_tokens 0: up to the
        window; seed -1: random), validated by the chat core."""
        return chat_params(temperature=temperature, top_p=top_p,
                           max_tokens=_number(max_tokens, 1), seed=_number(seed, 0))

    def send(self, conv: Conversation, text: str, system: str | None, *settings
             ) -> Iterator[tuple[Conversation, str]]:
        text = (text or "").strip()
        if not text:
            yield conv, "type a message first"
            return
        conv.add_user(text)
        yield from self._answer(conv, system, settings)

    def retry(self, conv: Conversation, system: str | None, *settings
              ) -> Iterator[tuple[Conversation, str]]:
        """Answer the last user message again."""
        yield from self._answer(conv, system, settings, again=True)

    def stop(self) -> str:
        self.holder.stop()
        return "stopped"

    def switch(self, name: str | None) -> str:
        return self.holder.load(name)

    def _answer(self, conv: Conversation, system: str | None, settings: tuple,
                again: bool = False) -> Iterator[tuple[Conversation, str]]:
        notes: list[str] = []
        try:
            params = self.params(*settings)
            with self.holder.generation() as model:
                conv.set_system(system)
                events = (conv.retry if again else conv.answer)(model, params, self.tools)
                if events is None:
                    notes.append("nothing to retry")
                else:
                    yield from self._stream(conv, model, events, notes)
        except EdgeChatError as e:
            notes.append(f"error: {e}")
        except Exception as e:                              # noqa: BLE001  keep the page alive
            notes.append(f"error: {type(e).__name__}: {e}")
        yield conv, " · ".join(notes) or f"ready · {self.holder.status}"

    def _stream(self, conv: Conversation, model: ChatModelLike, events: Iterator,
                notes: list[str]) -> Iterator[tuple[Conversation, str]]:
        """Show an answer as it grows; the footer and notes when it ends."""
        if conv.dropped:
            notes.append(f"context full: dropped the {conv.dropped} oldest "
                         "message(s) to fit the window")
        reply = conv.messages[-1]
        status = " · ".join(notes) or f"answering with {self.holder.name}…"
        yield conv, status
        try:
            for ev in events:
                if self.holder.stopping:
                    model.cancel()      # engines clear the flag when they start
                if ev.delta or ev.tool_calls:
                    yield conv, status
        finally:
            events.close()              # the page went away: free the engine now
        stopped = self.holder.stopping
        if conv.stats is not None:
            reply["footer"] = footer(conv.stats, model.n_ctx, conv.finish_reason, stopped)
        if stopped:
            notes.append("stopped")
        elif conv.answered_nothing():
            notes.append("the model gave an empty answer (a base model? try --chat-template)")

    # -- export ---------------------------------------------------------------
    def export(self, conv: Conversation, system: str | None, fmt: str) -> tuple[str | None, str]:
        """Write the conversation (atomically) as OpenAI JSON or Markdown;
        returns (path, status)."""
        if not conv.messages:
            return None, "nothing to export yet"
        stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
        path = self.export_dir / f"conversation-{stamp}.{'md' if fmt == 'markdown' else 'json'}"
        msgs = conv.openai(system)
        if fmt == "markdown":
            write_text_atomic(path, to_markdown(msgs, self.holder.name, conv))
        else:
            write_json_atomic(path, {"model": self.holder.name, "messages": msgs})
        return str(path), f"exported {len(msgs)} messages to {path}"


def to_markdown(msgs: list[dict], model: str | None, conv: Conversation | None = None) -> str:
    footers = [m.get("footer") for m in conv.messages if m["role"] == "assistant"] if conv else []
    lines = [f"# Conversation with {model or 'a model'}", ""]
    answers = 0
    for m in msgs:
        lines += [f"## {m['role'].capitalize()}", "", m["content"], ""]
        if m["role"] == "assistant":
            if answers < len(footers) and footers[answers]:
                lines += [f"*{footers[answers]}*", ""]
            answers += 1
    return "\n".join(lines)
