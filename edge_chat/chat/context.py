"""Context window management: keep history + the answer inside the window."""

from __future__ import annotations

from typing import Callable

from edge_chat.errors import ContextLengthExceeded

POLICIES = ("truncate", "error")


def reserve_for_answer(n_ctx: int, max_tokens: int | None) -> int:
    """Tokens kept free for the answer: max_tokens, else a quarter of the
    window (at most 512) so a trimmed history still leaves room to answer."""
    return max_tokens if max_tokens is not None else min(512, n_ctx // 4)


def fit_messages(messages: list[dict], count: Callable[[list[dict]], int], n_ctx: int,
                 max_tokens: int | None, policy: str = "truncate") -> tuple[list[dict], int]:
    """Messages whose prompt plus the answer fit `n_ctx`, and how many were dropped.

    policy "truncate" drops the oldest non-system turns (whole turns: a
    conversation never starts with an assistant reply); "error" raises
    ContextLengthExceeded as OpenAI's API does."""
    if policy not in POLICIES:
        raise ValueError(f"context policy must be one of {POLICIES}")
    reserve = reserve_for_answer(n_ctx, max_tokens)
    n_prompt = count(messages)
    if n_prompt + reserve <= n_ctx:
        return messages, 0
    if policy == "error":
        raise ContextLengthExceeded(
            f"this model's context window is {n_ctx} tokens; the messages take {n_prompt} and "
            f"max_tokens asks for {reserve} more ({n_prompt + reserve} in all)")
    kept = list(messages)
    dropped = 0
    while n_prompt + reserve > n_ctx:
        idx = [i for i, m in enumerate(kept) if m["role"] != "system"]
        if len(idx) <= 1:
            raise ContextLengthExceeded(
                f"the last message alone takes {n_prompt} tokens and the answer {reserve}: "
                f"more than the context window of {n_ctx}; shorten it or lower max_tokens")
        del kept[idx[0]]
        dropped += 1
        # drop up to the next user turn, so the kept history starts with the user
        while True:
            rest = [i for i, m in enumerate(kept) if m["role"] != "system"]
            if len(rest) > 1 and kept[rest[0]]["role"] != "user":
                del kept[rest[0]]
                dropped += 1
            else:
                break
        n_prompt = count(kept)
    return kept, dropped


#: more bytes of text than any token of the tokenizers we know stands for (the longest
#: pieces are runs of spaces or punctuation: 128 bytes in Qwen2's vocabulary)
MAX_TOKEN_BYTES = 256


def check_prompt_bytes(messages: list[dict], n_ctx: int, policy: str = "error") -> None:
    """ContextLengthExceeded, before any tokenizing, for contents whose bytes cannot fit
    `n_ctx` tokens whatever the tokenizer. With "truncate" only what cannot be dropped
    counts (system messages and the last message)."""
    keep = messages if policy == "error" else \
        [m for m in messages[:-1] if m.get("role") == "system"] + messages[-1:]
    size = sum(len(m["content"].encode("utf-8", "surrogatepass")) for m in keep
               if isinstance(m.get("content"), str))
    if size > n_ctx * MAX_TOKEN_BYTES:
        raise ContextLengthExceeded(
            f"this model's context window is {n_ctx} tokens; the messages hold {size} bytes of "
            f"text, more than {n_ctx} tokens can (at most {MAX_TOKEN_BYTES} bytes each)")
