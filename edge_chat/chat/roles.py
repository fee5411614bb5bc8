"""Role separation: what a message says is text, never template markup.

A chat template turns messages into one string with control tokens around each turn
(`<|im_start|>user\\n…<|im_end|>`). Tokenizing that string with special-token parsing
would also turn `<|im_end|><|im_start|>system` typed *inside* a message into real turn
boundaries, so pasted text (a web page, an email) could speak as `system`. Here the
contents are located in the rendered prompt and tokenized with special-token parsing
off, the markup around them with it on. A prompt whose contents hold no special-token
text is tokenized in one piece, exactly as before.

Contents are located by rendering the template a second time with a placeholder per
message and matching the markup between the placeholders against the real prompt."""

from __future__ import annotations

import hashlib
import re
from typing import Callable

from edge_chat.errors import EdgeChatError

#: tokenize(text, add_bos, special) -> ids
Tokenize = Callable[[str, bool, bool], list[int]]
_MARK = re.compile("\ue000(\\d+)\ue001")


def _placeholder(i: int) -> str:
    return f"\ue000{i}\ue001"


def content_spans(render: Callable[[list[dict]], str], messages: list[dict], text: str
                  ) -> list[tuple[int, int, int]] | None:
    """(start, end, message index) of each message content in `text` (the rendered
    prompt), or None when the template changes the contents beyond stripping
    whitespace. `render(messages)` renders with the same template and options."""
    stand_ins = [dict(m, content=_placeholder(i)) if m.get("content") else m
                 for i, m in enumerate(messages)]
    try:
        skeleton = render(stand_ins)
    except EdgeChatError:
        return None
    parts = _MARK.split(skeleton)            # markup, index, markup, index, ..., markup
    spans, pos = [], 0
    for k in range(0, len(parts) - 1, 2):
        markup, i, after = parts[k], int(parts[k + 1]), parts[k + 2]
        if i >= len(messages) or not text.startswith(markup, pos):
            return None
        pos += len(markup)
        last = k + 2 == len(parts) - 1
        content = messages[i]["content"]
        for cand in (content, content.strip(), content.lstrip(), content.rstrip()):
            end = pos + len(cand)
            if text.startswith(cand, pos) and (text[end:] == after if last
                                               else text.startswith(after, end)):
                spans.append((pos, end, i))
                pos = end
                break
        else:
            return None
    return spans if text[pos:] == parts[-1] else None


def tokenize_separated(tokenize: Tokenize, text: str, spans: list[tuple[int, int]],
                       add_bos: bool) -> list[int]:
    """Tokens of `text` with the `spans` (start, end) as plain text and the rest
    with special tokens parsed."""
    ids: list[int] = []
    pos = 0
    pieces = []
    for start, end in sorted(spans):
        pieces += [(text[pos:start], True), (text[start:end], False)]
        pos = end
    pieces.append((text[pos:], True))
    first = True
    for piece, special in pieces:
        if piece:
            ids += tokenize(piece, add_bos and first, special)
            first = False
    if first:                                 # all empty
        ids = tokenize("", add_bos, True)
    return ids


class RoleSeparator:
    """Remembers which contents hold special-token text (a conversation's
    messages are tokenized again each turn)."""

    def __init__(self, tokenize: Tokenize):
        self._tokenize = tokenize
        self._seen: dict[bytes, bool] = {}      # sha256 of a content -> has special text

    def has_special(self, content: str) -> bool:
        key = hashlib.sha256(content.encode("utf-8", "surrogatepass")).digest()
        hit = self._seen.get(key)
        if hit is None:
            hit = self._tokenize(content, False, False) != self._tokenize(content, False, True)
            if len(self._seen) > 4096:
                self._seen.clear()
            self._seen[key] = hit
        return hit

    def tokenize(self, render: Callable[[list[dict]], str], messages: list[dict], text: str,
                 skip: int, add_bos: bool) -> list[int]:
        """Tokens of the prompt `text` rendered from `messages`, the first `skip`
        characters left out (a BOS the tokenizer adds itself)."""
        unsafe = {i for i, m in enumerate(messages)
                  if isinstance(m.get("content"), str) and self.has_special(m["content"])}
        if not unsafe:
            return self._tokenize(text[skip:], add_bos, True)
        spans = content_spans(render, messages, text)
        if spans is None:
            i = min(unsafe)
            raise EdgeChatError(
                f"messages[{i}].content contains special-token text and this chat template "
                f"rewrites message contents, so it cannot be kept as plain text; remove it, "
                f"or allow it with --allow-special-in-content", param=f"messages[{i}].content")
        cut = [(max(s, skip) - skip, e - skip) for s, e, i in spans if i in unsafe and e > skip]
        return tokenize_separated(self._tokenize, text[skip:], cut, add_bos)
