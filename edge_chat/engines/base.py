"""The Engine protocol: what the chat core needs of a backend, at token level.

An engine knows tokens and logits; it knows nothing of messages, templates,
stop strings or max_tokens (the chat core does that)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Protocol, runtime_checkable

if TYPE_CHECKING:
    from edge_chat.chat.params import SamplingParams


DEFAULT_MAX_CTX = 4096


def default_n_ctx(trained: int | None, requested: int | None = None) -> int:
    """The window an engine opens: the requested one, else min(trained, 4096)."""
    if requested:
        return int(requested)
    return min(int(trained or DEFAULT_MAX_CTX), DEFAULT_MAX_CTX)


@dataclass
class ModelInfo:
    name: str
    path: Path
    format: str                    # "gguf" | "onnx"
    arch: str                      # "llama", "qwen2", "gemma3", ...
    quant: str                     # "q4_k_m", "f16", "int4", ...
    n_ctx_train: int               # context the model was trained with
    n_ctx: int                     # context window this engine was opened with
    size_bytes: int
    chat_template: str | None      # the model's own Jinja template, if any
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = False          # does the tokenizer add BOS to a prompt
    n_params: int | None = None
    n_layers: int | None = None
    extra: dict = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    info: ModelInfo
    #: how many prompt tokens the last `generate` call really evaluated
    #: (the rest came from the KV cache: prefix reuse)
    n_prompt_evaluated: int

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        """Token ids of `text`; with `special`, special tokens written in the text
        (e.g. ``<|im_start|>``) become their ids; without, that text stays text."""

    def detokenize(self, tokens: list[int]) -> str:
        """Plain text of `tokens` (control tokens dropped)."""

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token adds to the output (b"" for control tokens);
        may be part of a multi-byte UTF-8 character."""

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, <|im_end|>, <end_of_turn>...)."""

    def generate(self, prompt: list[int], params: "SamplingParams") -> Iterator[int]:
        """Yield sampled token ids after `prompt`, forever or until an
        end-of-generation token (which is yielded too) or `cancel()`.
        Reuses the KV cache for the longest common prefix with the previous
        call. Closing the iterator stops the work."""

    def cancel(self) -> None:
        """Ask a running `generate` to stop after the current token
        (thread-safe)."""

    def close(self) -> None:
        """Free the model."""
