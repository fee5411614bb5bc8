"""The terminal chat: a streaming REPL with slash commands, over a ChatModelLike
(a local ChatModel or a RemoteChat)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from edge_chat.chat.completion import ChatModelLike, Event, Stats
from edge_chat.chat.conversation import Conversation
from edge_chat.chat.structured import check_response_format
from edge_chat.params import FIELDS, SamplingParams, parse_value, update_params
from edge_chat.chat.tools import parse_tools
from edge_chat.errors import EdgeChatError

HELP = """\
Type a message and press Enter. End a line with \\ to continue on the next one,
or wrap several lines in \"\"\" ... \"\"\".
  /system TEXT     set the system prompt (no TEXT: remove it)
  /clear           forget the conversation (keeps the system prompt)
  /retry           answer the last message again
  /set NAME VALUE  change a sampling parameter (/set temperature 0.3)
  /params          show the sampling parameters
  /tool TEXT       answer the model's last tool call with TEXT (with --tools)
  /save FILE       save the conversation (OpenAI messages JSON)
  /load FILE       load a conversation
  /help            this help
  /exit            quit (or Ctrl-D)
Ctrl-C stops the current answer and keeps the session."""


def stats_line(s: Stats) -> str:
    spec = "" if s.acceptance is None else \
        f", {s.acceptance:.0%} of {s.draft_tokens} drafted accepted"
    return (f"[{s.completion_tokens} tokens, {s.decode_tps:.1f} tok/s{spec}, "
            f"first token {s.ttft * 1000:.0f} ms, prompt {s.prompt_tokens} "
            f"({s.cached_tokens} cached)]")


class ChatSession:
    """The terminal's side of a Conversation: how answers reach the screen."""

    def __init__(self, model: ChatModelLike, params: SamplingParams, *, system: str | None = None,
                 out: TextIO | None = None, err: TextIO | None = None, show_stats: bool = False,
                 tools: list | None = None, response_format: dict | None = None):
        self.model = model
        self.params = params
        self.tools = tools
        self.response_format = response_format
        self.conv = Conversation(system=system)
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.show_stats = show_stats

    @property
    def messages(self) -> list[dict]:
        """The conversation as OpenAI messages (the system prompt first)."""
        return self.conv.openai()

    def ask(self, text: str) -> str:
        self.conv.add_user(text)
        return self.answer()

    def answer(self) -> str:
        """Stream an answer to the conversation; Ctrl-C keeps the part already written."""
        return self._show(self.conv.answer(self.model, self.params, self.tools,
                                           self.response_format))

    def tool_result(self, text: str) -> str | None:
        """Answer the first pending tool call with `text`; the model goes on once
        every call of its last answer has a result."""
        if not self.conv.pending_tool_calls():
            self.err.write("no tool call to answer\n")
            return None
        return self.answer() if self.conv.add_tool_result(text) else None

    def retry(self) -> str | None:
        events = self.conv.retry(self.model, self.params, self.tools, self.response_format)
        if events is None:
            self.err.write("nothing to retry\n")
            return None
        return self._show(events)

    def _show(self, events: Iterator[Event]) -> str:
        """Print an answer's events as they come; returns its text."""
        if self.conv.dropped:
            self.err.write(f"[context full: dropped the {self.conv.dropped} oldest message(s)]\n")
        reply = self.conv.messages[-1]
        try:
            for ev in events:
                if ev.delta:
                    self.out.write(ev.delta)
                    self.out.flush()
                for call in ev.tool_calls:
                    lead = "\n" if reply["content"] else ""
                    self.out.write(f"{lead}[tool call {call.id}] {call.name}({call.arguments})\n")
                    self.out.flush()
                if ev.finish_reason == "length":
                    self.err.write("\n[stopped: max_tokens or the context window reached]")
        except KeyboardInterrupt:
            events.close()
            self.err.write("\n[stopped]")
        self.out.write("\n")
        self.out.flush()
        if self.conv.answered_nothing():
            self.err.write("[the model gave an empty answer: it ended its turn at once. A base "
                           "model? try 'edge_chat complete' or --chat-template]\n")
        if self.conv.stats is not None and self.show_stats:
            self.err.write(stats_line(self.conv.stats) + "\n")
        self.err.flush()
        return reply["content"]

    def command(self, line: str) -> bool:
        """Run a slash command; False means quit."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("exit", "quit", "bye"):
            return False
        if name == "help":
            self.err.write(HELP + "\n")
        elif name == "system":
            self.conv.set_system(arg or None)
            self.err.write("[system prompt set]\n" if arg else "[system prompt removed]\n")
        elif name == "clear":
            self.conv.clear()
            self.err.write("[conversation cleared]\n")
        elif name == "retry":
            self.retry()
        elif name == "tool":
            self.tool_result(arg)
        elif name == "params":
            for k, v in self.params.model_dump().items():
                self.err.write(f"  {k} = {v}\n")
        elif name == "set":
            field, _, value = arg.partition(" ")
            self.params = update_params(self.params, **{field: parse_value(field, value)})
            self.err.write(f"[{field} = {getattr(self.params, field)}]\n")
        elif name == "save":
            if not arg:
                raise EdgeChatError("usage: /save FILE")
            self.conv.save(Path(shlex.split(arg)[0]))
            self.err.write(f"[saved {len(self.messages)} messages to {arg}]\n")
        elif name == "load":
            if not arg:
                raise EdgeChatError("usage: /load FILE")
            self.conv.load(Path(shlex.split(arg)[0]))
            self.err.write(f"[loaded {len(self.messages)} messages]\n")
        else:
            raise EdgeChatError(f"unknown command /{name}: /help lists them "
                                f"(parameters: {', '.join(FIELDS)})")
        return True


def _read_json(path: Path, option: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EdgeChatError(f"{option}: no such file: {path}") from None
    except (OSError, ValueError) as e:
        raise EdgeChatError(f"{option}: {path} is not a JSON file ({e})") from None


def structure_options(json_schema: Path | None, tools: Path | None
                      ) -> tuple[dict | None, list | None]:
    """(response_format, tools) from --json-schema FILE and --tools FILE, validated."""
    rf = tool_list = None
    if json_schema is not None:
        rf = {"type": "json_schema", "json_schema": {
            "name": Path(json_schema).stem, "schema": _read_json(json_schema, "--json-schema"),
            "strict": True}}
        check_response_format(rf)
    if tools is not None:
        tool_list = _read_json(tools, "--tools")
        if isinstance(tool_list, dict) and "tools" in tool_list:
            tool_list = tool_list["tools"]
        parse_tools(tool_list)
    return rf, tool_list


def read_message(prompt: str = ">>> ") -> str:
    """One message from the terminal: continued lines end with \\, or a
    block between \"\"\" lines."""
    line = input(prompt)
    if line.strip() == '"""' or (line.startswith('"""') and not line.rstrip().endswith('"""')):
        lines = [line.strip()[3:]] if line.strip() != '"""' else []
        while True:
            more = input("... ")
            if more.rstrip().endswith('"""'):
                lines.append(more.rstrip()[:-3])
                break
            lines.append(more)
        return "\n".join(x for x in lines).strip("\n")
    lines = []
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = input("... ")
    lines.append(line)
    return "\n".join(lines)


def run_repl(session: ChatSession) -> None:
    err = session.err
    info = session.model.info
    err.write(f"edge_chat · {info.name} ({info.format}, {info.quant}, context {info.n_ctx}) · "
              "/help for commands, Ctrl-D to quit\n")
    while True:
        try:
            text = read_message()
        except EOFError:
            err.write("\n")
            return
        except KeyboardInterrupt:
            err.write("\n[Ctrl-C: use /exit or Ctrl-D to quit]\n")
            continue
        if not text.strip():
            continue
        try:
            if text.startswith("/"):
                if not session.command(text.strip()):
                    return
            else:
                session.ask(text)
        except EdgeChatError as e:
            err.write(f"error: {e}\n")
