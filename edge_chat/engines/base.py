"""The engine contracts, at token level: `Engine` (what the chat core needs of a
backend) and `BatchBackend` (what continuous batching needs of one).

An engine knows tokens and logits; it knows nothing of messages, templates,
stop strings or max_tokens (the chat core does that)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from edge_chat.engines.prompt_cache import PromptCache
    from edge_chat.engines.speculative import SpecStats
    from edge_chat.params import SamplingParams

#: (the tokens generated so far in this answer, the float32 logits row of the next
#: position) -> modifies the row in place (e.g. -inf on tokens a grammar forbids).
#: Called before sampling for every position the engine samples (with speculative
#: decoding also for each verified draft position: a stateful processor such as a
#: grammar matcher must follow `tokens`, rolling back when it gets shorter).
LogitsProcessor = Callable[[Sequence[int], np.ndarray], None]


class Token(NamedTuple):
    """One generated token."""
    id: int
    #: log-softmax of the RAW logits (before processors, bias, penalties,
    #: temperature) at `id`; None unless generate() was asked for logprobs
    logprob: float | None = None
    #: the k best (id, logprob), best first
    top_logprobs: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True)
class Capabilities:
    """What an engine can do, declared by each engine (callers never hasattr())."""
    logits_processors: bool = False     # generate() applies `processors`
    logprobs: bool = False              # generate() fills Token.logprob/top_logprobs
    eval_many: bool = False             # evaluates k tokens with logits for each and
                                        # trims the KV cache (speculative decoding)
    slots: int = 1                      # generations served at once (continuous batching:
                                        # engines/batch.py)
    prompt_cache: bool = False          # seq_state/load_seq_state: KV of a sequence saved
                                        # and restored (engines/prompt_cache.py)


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


def log_softmax(row: np.ndarray) -> np.ndarray:
    """float64 log-probabilities of a logits row."""
    x = np.asarray(row, dtype=np.float64)
    mx = np.max(x, axis=-1, keepdims=True)
    return x - (mx + np.log(np.exp(x - mx).sum(axis=-1, keepdims=True)))


def token_logprobs(lp: np.ndarray, token: int, k: int) -> Token:
    """`token` with its logprob in `lp` (log_softmax of a raw logits row) and
    the `k` best alternatives."""
    top: tuple[tuple[int, float], ...] = ()
    if k > 0:
        k = min(k, lp.shape[0])
        ids = np.argpartition(-lp, k - 1)[:k]
        ids = ids[np.argsort(-lp[ids], kind="stable")]
        top = tuple((int(i), float(lp[i])) for i in ids)
    return Token(int(token), float(lp[token]), top)


@runtime_checkable
class Engine(Protocol):
    info: ModelInfo
    capabilities: Capabilities
    n_vocab: int
    #: how many prompt tokens the last `generate` call really evaluated
    #: (the rest came from the KV cache: prefix reuse)
    n_prompt_evaluated: int
    #: speculative decoding in the last `generate` call (drafted, accepted, ...)
    speculation: "SpecStats"
    #: long prompt prefixes shared across requests and restarts (None: off)
    prompt_cache: "PromptCache | None"

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        """Token ids of `text`; special tokens written in the text
        (e.g. ``<|im_start|>``) become their ids, or stay plain text
        with `special=False`."""

    def detokenize(self, tokens: list[int]) -> str:
        """Plain text of `tokens` (control tokens dropped)."""

    def token_bytes(self, token: int) -> bytes:
        """The bytes one token adds to the output (b"" for control tokens);
        may be part of a multi-byte UTF-8 character."""

    def is_eog(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, <|im_end|>, <end_of_turn>...)."""

    def generate(self, prompt: list[int], params: "SamplingParams", *,
                 processors: Sequence[LogitsProcessor] = (),
                 logprobs: int | None = None,
                 prediction: Sequence[int] | None = None) -> Iterator[Token]:
        """Yield sampled tokens after `prompt`, forever or until an
        end-of-generation token (which is yielded too), a full window or
        `cancel()`. Reuses the KV cache for the longest common prefix with
        the previous call. Closing the iterator stops the work.
        `processors` modify each logits row before sampling; `logprobs`
        None leaves Token.logprob None, k >= 0 fills the chosen token's raw
        logprob and the k best alternatives. `prediction`: tokens the answer
        is expected to repeat (Predicted Outputs), drafted for speculative
        decoding - the answer is the same with or without it."""

    def logprobs(self, tokens: list[int]) -> np.ndarray:
        """log p(tokens[i+1] | tokens[:i+1]) for each i (perplexity)."""

    def cancel(self) -> None:
        """Ask a running `generate` to stop after the current token
        (thread-safe)."""

    def close(self) -> None:
        """Free the model."""


class TokenSampler(Protocol):
    def sample(self, row: np.ndarray) -> int:
        """The next token from a logits row (does not accept it)."""

    def accept(self, token: int) -> None:
        """Record a generated token (penalties)."""

    def close(self) -> None: ...


#: one item of a batched forward pass: (sequence id, its first position, the tokens,
#: whether the logits row of its last token is wanted)
BatchItem = tuple[int, int, Sequence[int], bool]


@runtime_checkable
class BatchBackend(Protocol):
    """What `engines/batch.py` needs of an engine opened with `n_seq` sequences:
    one forward pass over several sequences, each with its own KV region, and the
    sampling step of `LocalEngine` (both engines implement it)."""
    info: ModelInfo
    capabilities: Capabilities
    n_vocab: int
    #: sequences (slots) the engine was opened with
    n_seq: int
    #: tokens one `decode_many` call takes at most
    max_batch_tokens: int
    #: the prompt cache shared by the sequences (None: off)
    prompt_cache: "PromptCache | None"

    def decode_many(self, items: Sequence[BatchItem]) -> list[np.ndarray]:
        """One forward pass over `items`; a copy of the logits row of each item
        that asks for one, in order."""

    def trim_seq(self, seq: int, n: int) -> int:
        """Cut sequence `seq` back to its first `n` positions; how many it kept
        (0 when the engine could only clear it)."""

    def sampler(self, params: "SamplingParams", prompt: Sequence[int]) -> TokenSampler:
        """A sampler for one request (its seed, penalties, bias)."""

    def pick(self, row: np.ndarray, out: Sequence[int], sampler: TokenSampler,
             processors: Sequence[LogitsProcessor], logprobs: int | None) -> Token:
        """The next token from a logits row: raw logprobs, processors, sampler."""

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_eog(self, token: int) -> bool: ...

    def seq_state(self, seq: int, n: int) -> bytes:
        """The KV state of sequence `seq`, holding `n` positions (b"": cannot)."""

    def load_seq_state(self, seq: int, state: bytes, n_state: int, keep: int) -> int:
        """Sequence `seq` from a `seq_state` of `n_state` positions, cut to `keep`;
        the positions it holds (0: not loaded)."""

    def close(self) -> None: ...
