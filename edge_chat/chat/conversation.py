"""One conversation, shared by the terminal chat and the page: the messages, the system
prompt, answers streamed over a ChatModel, tool results, trimming, save and load.

Front-ends keep only presentation: they iterate the ChatModel's Events that
`Conversation.answer` yields and print or show them their own way."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from edge_chat.chat.messages import load_messages, save_messages
from edge_chat.errors import EdgeChatError

if TYPE_CHECKING:
    from edge_chat.chat.completion import ChatModelLike, Event, Stats
    from edge_chat.params import SamplingParams
    from edge_chat.chat.tools import ToolSpec

#: the keys of an OpenAI message; front-ends may keep their own keys beside them
OPENAI_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


class Conversation:
    """The system prompt and the turns (OpenAI-shaped dicts, `messages`).

    After `answer` is called, `dropped` is the number of oldest messages trimmed
    to fit the context window; once the answer ends, `finish_reason` and `stats`
    are the ChatModel's (None while streaming, or when the answer was stopped
    without an end)."""

    def __init__(self, messages: list[dict] | None = None, system: str | None = None):
        self.messages: list[dict] = list(messages or [])
        self.system: str | None = None
        self.dropped = 0
        self.finish_reason: str | None = None
        self.stats: Stats | None = None
        if system is not None:
            self.set_system(system)

    # -- the history ----------------------------------------------------------
    def set_system(self, text: str | None) -> None:
        """Set the system prompt (None or blank: remove it); it replaces every
        system message of the history."""
        self.system = text if text and text.strip() else None
        self.messages = [m for m in self.messages if m["role"] != "system"]

    def clear(self) -> None:
        """Forget the turns; the system prompt stays."""
        self.messages = []

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def pending_tool_calls(self) -> list[dict]:
        """The last answer's tool calls that no tool message answers yet, in order."""
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        answered = {m.get("tool_call_id") for m in self.messages if m["role"] == "tool"}
        return [c for c in (last or {}).get("tool_calls") or [] if c["id"] not in answered]

    def add_tool_result(self, content: str) -> bool:
        """Answer the first pending tool call with `content`; True when no call is
        left waiting (the model can go on). Call only with a pending call."""
        pending = self.pending_tool_calls()
        if not pending:
            raise EdgeChatError("no tool call to answer")
        self.messages.append({"role": "tool", "tool_call_id": pending[0]["id"],
                              "content": content})
        return len(pending) == 1

    def openai(self) -> list[dict]:
        """The messages to send or save: the system prompt first, OpenAI keys only."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{k: m[k] for k in OPENAI_KEYS if k in m} for m in self.messages]

    def save(self, path: Path) -> None:
        """Write the OpenAI messages (atomically) as {"messages": [...]}."""
        save_messages(Path(path), self.openai())

    def load(self, path: Path) -> None:
        """Replace the conversation by a saved one (validated; a first system
        message becomes the system prompt)."""
        self.set_openai(load_messages(Path(path)))

    def set_openai(self, messages: list[dict]) -> None:
        msgs = list(messages)
        system = msgs.pop(0)["content"] if msgs and msgs[0]["role"] == "system" else None
        self.system, self.messages = (system if system and system.strip() else None), msgs

    # -- answers --------------------------------------------------------------
    def answer(self, model: ChatModelLike, params: SamplingParams,
               tools: list | ToolSpec | None = None, response_format: dict | None = None
               ) -> Iterator[Event]:
        """Start an answer to the messages: the prompt is prepared here (errors are
        raised at once; `dropped` says how many old messages were trimmed) and an empty
        assistant message joins the history. Iterate the result for the ChatModel's
        events: the message grows with each (text, then `tool_calls`). Closing the
        iterator or Ctrl-C stops the answer and keeps the part already written; an
        error before any text removes the empty message."""
        params = params.model_copy(update={"n": 1})
        self.dropped, self.finish_reason, self.stats = 0, None, None
        prompt = model.prepare(self.openai(), params, tools)
        self.dropped = prompt.dropped
        self._drop_oldest(prompt.dropped)
        reply: dict = {"role": "assistant", "content": ""}
        self.messages.append(reply)
        events = model.stream(None, params, tools, prompt=prompt,
                              response_format=response_format)
        return self._grow(reply, events)

    def retry(self, model: ChatModelLike, params: SamplingParams,
              tools: list | ToolSpec | None = None, response_format: dict | None = None
              ) -> Iterator[Event] | None:
        """Drop the last answer and answer again (as `answer`); None when no user
        message, or tool result with no call still waiting, is left to answer."""
        while self.messages and self.messages[-1]["role"] == "assistant":
            self.messages.pop()
        last = self.messages[-1]["role"] if self.messages else None
        if last != "user" and (last != "tool" or self.pending_tool_calls()):
            return None
        return self.answer(model, params, tools, response_format)

    def answered_nothing(self) -> bool:
        """The last answer ended at once: no text, no tool call (what a base
        model without a chat template often does)."""
        last = self.messages[-1] if self.messages else {}
        return (self.finish_reason is not None and last.get("role") == "assistant"
                and not last["content"].strip() and not last.get("tool_calls"))

    def _grow(self, reply: dict, events: Iterator[Event]) -> Iterator[Event]:
        try:
            for ev in events:
                reply["content"] += ev.delta
                if ev.tool_calls:
                    reply.setdefault("tool_calls", []).extend(c.as_dict() for c in ev.tool_calls)
                if ev.finish_reason is not None:
                    self.finish_reason, self.stats = ev.finish_reason, ev.stats
                yield ev
        except Exception:
            if not reply["content"] and not reply.get("tool_calls") \
                    and self.messages and self.messages[-1] is reply:
                self.messages.pop()
            raise
        finally:
            events.close()          # stopped or abandoned: free the engine now

    def _drop_oldest(self, n: int) -> None:
        """Remove the `n` oldest non-system messages (what the context trimming dropped)."""
        kept = []
        for m in self.messages:
            if n and m["role"] != "system":
                n -= 1
                continue
            kept.append(m)
        self.messages = kept
