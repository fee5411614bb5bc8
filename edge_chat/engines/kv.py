"""KV-cache bookkeeping and the prompt check shared by every local engine.

`KVCache` records which token sits at each cached position (position i holds
tokens[i]); the engine keeps the keys/values themselves. `check_prompt` is the
one validation of a generate() request, so both engines raise the same errors."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from edge_chat.errors import ContextLengthExceeded, EdgeChatError

if TYPE_CHECKING:
    from edge_chat.params import SamplingParams


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class KVCache:
    """The tokens whose keys/values are in an engine's cache, in position order."""

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def pos(self) -> int:
        """The position the next evaluated token gets."""
        return len(self.tokens)

    def common_prefix(self, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` the cache already holds."""
        return common_prefix(self.tokens, prompt)

    def reusable(self, prompt: Sequence[int]) -> int:
        """Cached positions a generate() over `prompt` keeps: the common prefix,
        but never the prompt's last token, which is always evaluated on its own
        for fresh logits (so the same request gives the same answer whatever
        the cache held: a batch decode rounds differently)."""
        return min(self.common_prefix(prompt), len(prompt) - 1)

    def append(self, tokens: Iterable[int]) -> None:
        self.tokens.extend(int(t) for t in tokens)

    def trim(self, n: int) -> None:
        """Keep the first `n` positions."""
        del self.tokens[max(n, 0):]


def check_prompt(prompt: Sequence[int], params: SamplingParams, n_ctx: int,
                 n_vocab: int) -> None:
    """The checks of a generate() request: a non-empty prompt that leaves room
    in the window, token ids and logit_bias ids in the vocabulary."""
    if not prompt:
        raise EdgeChatError("empty prompt: nothing to continue", param="messages")
    if len(prompt) >= n_ctx:
        raise ContextLengthExceeded(
            f"the prompt has {len(prompt)} tokens but the context window is {n_ctx}")
    bad = next((t for t in prompt if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise EdgeChatError(f"token id {bad} is out of range (the model has {n_vocab} tokens)",
                            param="prompt")
    bad = next((t for t in params.logit_bias if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise EdgeChatError(f"logit_bias token id {bad} is out of range (the model has "
                            f"{n_vocab} tokens)", param="logit_bias")


def check_window(tokens: Sequence[int], n_ctx: int) -> None:
    """Tokens scored at once (perplexity) must fit the window."""
    if len(tokens) > n_ctx:
        raise ContextLengthExceeded(f"{len(tokens)} tokens do not fit the context window "
                                    f"of {n_ctx}")
