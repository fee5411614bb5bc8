"""The GGUF metadata values llama.cpp trusts: checked before llama.cpp sees the file.

llama.cpp validates the file's structure (gguf.cpp returns an error), but takes many
hyper-parameters as they come: a `block_count` of 0 or above its layer limit, a head
count of 0 (a division by zero), a scores array shorter than the token list (a read past
its end) end in an assertion or a crash that takes the whole process down. This is the
first line of defence; the second is the probe (probe.py) that loads a model the first
time in a child process."""

from __future__ import annotations

from typing import Any

from edge_chat.store.gguf_file import GGUFFile
from edge_chat.errors import ModelLoadError, printable

#: llama.cpp's LLAMA_MAX_LAYERS and LLAMA_MAX_EXPERTS
MAX_LAYERS = 512
MAX_EXPERTS = 512
#: generous ceilings: no released model comes near them
MAX_EMBD = 1 << 17
MAX_CONTEXT = 1 << 24
MAX_HEADS = 1 << 12
MAX_HEAD_DIM = 1 << 12
MAX_FFN = 1 << 20
MAX_VOCAB = 1 << 22
TOKEN_ID_KEYS = ("bos", "eos", "eot", "eom", "unknown", "separator", "padding", "mask",
                 "cls", "prefix", "suffix", "middle")


def _bad(g: GGUFFile, key: str, value: Any, why: str) -> ModelLoadError:
    shown = printable(repr(value), 60)
    return ModelLoadError(f"{g.path}: unusable GGUF metadata: {printable(key)} = {shown} ({why})")


def _int(g: GGUFFile, key: str, lo: int, hi: int, *, required: bool = False,
         per_layer: int | None = None) -> int | list[int] | None:
    """The integer (or, with `per_layer`, the per-layer array) at `key`, in [lo, hi]."""
    v = g.metadata.get(key)
    if v is None:
        if required:
            raise ModelLoadError(f"{g.path}: unusable GGUF metadata: {printable(key)} is missing")
        return None
    values = v if isinstance(v, list) and per_layer is not None else [v]
    if per_layer is not None and isinstance(v, list) and len(v) != per_layer:
        raise _bad(g, key, f"{len(v)} values", f"one per layer: {per_layer}")
    for x in values:
        if isinstance(x, bool) or not isinstance(x, int):
            raise _bad(g, key, x, "not an integer")
        if not lo <= x <= hi:
            raise _bad(g, key, x, f"must be in {lo}..{hi}")
    return v


def check_gguf(g: GGUFFile) -> None:
    """Raise ModelLoadError (one line naming the key) for a value llama.cpp would
    assert on or divide by."""
    arch = g.metadata.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise _bad(g, "general.architecture", arch, "must be a non-empty string")
    if not arch.replace("-", "").replace("_", "").replace(".", "").isalnum() or len(arch) > 64:
        raise _bad(g, "general.architecture", arch, "not an architecture name")
    p = f"{arch}."
    n_layer = _int(g, p + "block_count", 1, MAX_LAYERS, required=True)
    n_embd = _int(g, p + "embedding_length", 1, MAX_EMBD, required=True)
    _int(g, p + "context_length", 1, MAX_CONTEXT)
    heads = _int(g, p + "attention.head_count", 0, MAX_HEADS, per_layer=n_layer)
    heads_kv = _int(g, p + "attention.head_count_kv", 0, MAX_HEADS, per_layer=n_layer)
    _int(g, p + "feed_forward_length", 0, MAX_FFN, per_layer=n_layer)
    k_len = _int(g, p + "attention.key_length", 1, MAX_HEAD_DIM)
    _int(g, p + "attention.value_length", 1, MAX_HEAD_DIM)
    n_expert = _int(g, p + "expert_count", 0, MAX_EXPERTS) or 0
    _int(g, p + "expert_used_count", 0, n_expert)
    _int(g, p + "rope.dimension_count", 0, MAX_HEAD_DIM)
    _int(g, p + "attention.sliding_window", 0, MAX_CONTEXT)
    for name in ("attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon"):
        eps = g.metadata.get(p + name)
        if eps is not None and (not isinstance(eps, (int, float)) or not 0 <= eps < 1):
            raise _bad(g, p + name, eps, "a norm's epsilon must be in [0, 1)")   # NaN too
    if heads is not None:
        first = heads[0] if isinstance(heads, list) else heads
        if isinstance(heads, int) and heads == 0:
            raise _bad(g, p + "attention.head_count", 0, "must be at least 1")
        if k_len is None and first and n_embd % first:
            raise _bad(g, p + "attention.head_count", first,
                       f"does not divide the embedding length {n_embd}")
        pairs = zip(heads if isinstance(heads, list) else [heads] * n_layer,
                    heads_kv if isinstance(heads_kv, list) else [heads_kv] * n_layer)
        for h, kv in pairs:
            if kv is not None and (kv > h or (kv and h % kv)):
                raise _bad(g, p + "attention.head_count_kv", kv,
                           f"must divide the head count {h}")
    _check_vocab(g, n_embd)


def _check_vocab(g: GGUFFile, n_embd: int) -> None:
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        return
    n_vocab = len(tokens) if hasattr(tokens, "__len__") else -1
    if not 1 <= n_vocab <= MAX_VOCAB:
        raise _bad(g, "tokenizer.ggml.tokens", f"{n_vocab} tokens", f"must be 1..{MAX_VOCAB}")
    for key in ("tokenizer.ggml.scores", "tokenizer.ggml.token_type"):
        v = g.metadata.get(key)
        if v is not None and (not hasattr(v, "__len__") or len(v) != n_vocab):
            raise _bad(g, key, f"{len(v) if hasattr(v, '__len__') else v}",
                       f"one per token: {n_vocab}")
    for name in TOKEN_ID_KEYS:
        key = f"tokenizer.ggml.{name}_token_id"
        v = g.metadata.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < -1):
            raise _bad(g, key, v, "not a token id")
    embd = g.tensor("token_embd.weight")
    if embd is not None and len(embd.shape) == 2 and embd.shape[0] != n_embd:
        raise _bad(g, "token_embd.weight", list(embd.shape),
                   f"rows must have the embedding length {n_embd}")
