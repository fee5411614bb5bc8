"""Tool calls out of a model's streamed text, one family's format at a time
(see tools.py). `ToolParser.feed(text)` returns what is decided so far: plain
text (content) and ToolCall objects; text that may still turn out to be the start
of a call is held back, so call markup never reaches the content.

What is held: a suffix that could begin the family's start marker
(`<tool_call>`, `<|python_tag|>`, `[TOOL_CALLS]`); an answer (or the text after
a call) that opens with `{`, `[` or a ```json fence, until the JSON value
closes and it is known whether it is a call. A call that does not parse as a
call of an offered function is given back as content without its markup (and logged)."""

from __future__ import annotations

import json
import logging
from typing import Any, Union

from edge_chat.chat.tools import ToolCall

log = logging.getLogger("edge_chat.tools")

#: family -> (start marker, end marker); None: the call runs to the end of the answer
MARKERS: dict[str, tuple[str | None, str | None]] = {
    "hermes": ("<tool_call>", "</tool_call>"),
    "llama3": ("<|python_tag|>", None),
    "mistral": ("[TOOL_CALLS]", None),
    "generic": (None, None),
}
FENCE = "```"

Piece = Union[str, ToolCall]


def json_end(text: str) -> int | None:
    """The end of the JSON object/array that `text` starts with (or of the
    ``` fence around it), None while it is still open."""
    if text.startswith(FENCE):
        nl = text.find("\n")
        close = text.find(FENCE, nl + 1) if nl >= 0 else -1
        return close + len(FENCE) if close >= 0 else None
    depth, in_str, esc = 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _one_call(obj: Any, functions: dict[str, dict]) -> ToolCall | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):          # the OpenAI shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in functions:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):                            # double-encoded
        try:
            args = json.loads(args or "{}")
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name, json.dumps(args, ensure_ascii=False))


def parse_calls(text: str, functions: dict[str, dict]) -> list[ToolCall] | None:
    """The calls written in `text` (JSON objects or lists of them, optionally in a
    ``` fence, separated by whitespace, ',' or ';'), None unless all of it is calls."""
    s = text.strip()
    if s.startswith(FENCE) and s.endswith(FENCE) and "\n" in s:
        s = s[s.index("\n") + 1:-len(FENCE)].strip()
    dec = json.JSONDecoder()
    calls: list[ToolCall] = []
    i = 0
    while i < len(s):
        try:
            obj, i = dec.raw_decode(s, i)
        except ValueError:
            return None
        for o in obj if isinstance(obj, list) else [obj]:
            call = _one_call(o, functions)
            if call is None:
                return None
            calls.append(call)
        while i < len(s) and s[i] in " \t\r\n,;":
            i += 1
    return calls or None


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of `text` that is a start of `marker`."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class ToolParser:
    """Splits one answer's text into content and tool calls as it streams."""

    def __init__(self, family: str, functions: dict[str, dict], parallel: bool = True,
                 forced: bool = False):
        self.open, self.close = MARKERS[family]
        self.functions = functions
        self.parallel = parallel
        self.forced = forced        # constrained to calls: markup left over is a cut-off call
        self.buf = ""
        self.mode = "start"        # start | content | after (a call) | call | bare
        self.calls: list[ToolCall] = []

    def feed(self, text: str) -> list[Piece]:
        self.buf += text
        out: list[Piece] = []
        while self._step(out):
            pass
        return out

    def finish(self) -> list[Piece]:
        """Everything still held, decided now that the answer is complete."""
        out: list[Piece] = []
        buf, self.buf = self.buf, ""
        if self.mode == "call":
            body = buf.removesuffix(self.close or "\0")
            self._decide(body, self.open + buf, out)
        elif self.mode == "bare":
            self._decide(buf, buf, out, quiet=True)
        elif buf and not (self.mode == "after" and not buf.strip()):
            out.append(buf)
        return out

    # -- internals ------------------------------------------------------------
    def _emit(self, out: list[Piece], text: str) -> None:
        if text:
            out.append(text)
            if text.strip():
                self.mode = "content"

    def _decide(self, body: str, raw: str, out: list[Piece], quiet: bool = False) -> None:
        calls = parse_calls(body, self.functions)
        if calls is None and self.forced:
            log.info("a call cut off before its end was dropped: %.200r", raw)
            return
        if calls is None:
            if not quiet:
                log.warning("tool call markup that is not a call of an offered function "
                            "(its text returned as content): %.200r", raw)
            self._emit(out, raw if quiet else body.strip())
            return
        if not self.parallel and self.calls:
            log.warning("parallel_tool_calls is false: dropped %d more call(s)", len(calls))
            calls = []
        elif not self.parallel:
            calls = calls[:1]
        self.calls.extend(calls)
        out.extend(calls)
        self.mode = "after"

    def _step(self, out: list[Piece]) -> bool:
        """One decision on the buffer; False when it must wait for more text."""
        buf = self.buf
        if self.mode == "call":
            if self.close is None:
                return False
            q = buf.find(self.close)
            if q < 0:
                return False
            self.buf = buf[q + len(self.close):]
            self._decide(buf[:q], self.open + buf[:q + len(self.close)], out)
            return True
        if self.mode == "bare":
            end = json_end(buf)
            if end is None:
                return False
            self.buf = buf[end:]
            self._decide(buf[:end], buf[:end], out, quiet=True)
            return True
        p = buf.find(self.open) if self.open else -1
        if p >= 0:
            if self.mode != "after" or buf[:p].strip():
                self._emit(out, buf[:p])
            self.buf = buf[p + len(self.open):]
            self.mode = "call"
            return True
        if self.mode in ("start", "after"):
            s = buf.lstrip(" \t\r\n;,")
            if not s or FENCE.startswith(s) or (self.open and self.open.startswith(s)):
                return False                        # not decided yet
            if s.startswith(FENCE):
                if "\n" not in s:
                    return False                    # the fence's language is not known yet
                if s[len(FENCE):s.index("\n")].strip().lower() in ("", "json"):
                    self.buf, self.mode = s, "bare"
                    return True
            elif s[0] in "{[":
                self.buf, self.mode = s, "bare"
                return True
            if self.mode == "after":
                buf = s
        keep = _partial_suffix(buf, self.open) if self.open else 0
        self._emit(out, buf[:len(buf) - keep])
        self.buf = buf[len(buf) - keep:]
        return False
