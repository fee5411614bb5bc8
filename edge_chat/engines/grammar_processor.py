"""Grammar-constrained decoding for every engine: llguidance (the library llama.cpp
and onnxruntime-genai use) as a LogitsProcessor over the engine's own vocabulary.

The vocabulary (the bytes of every token, which ones are control tokens, the
end-of-generation ids) is read once per engine through the Engine protocol
(`token_bytes`, `is_eog`, `tokenize`) and cached; each generation gets its own
matcher. The matcher follows the `tokens` it is shown (rolling back when a
caller shows fewer, as speculative decoding does), masks every token the
grammar forbids with -inf, and once the grammar is complete leaves only the
end-of-generation tokens."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge_chat.errors import EdgeChatError

if TYPE_CHECKING:
    from edge_chat.engines.base import Engine

_lock = threading.Lock()
_tokenizers: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()


class _Vocab:
    """What llguidance's TokenizerWrapper reads: the bytes of each token (control
    tokens as 0xFF + their name, so no text can produce them), EOS and a tokenizer."""

    def __init__(self, engine: "Engine", n_vocab: int):
        self.tokens: list[bytes] = []
        self.special_token_ids: list[int] = []
        eog = []
        for i in range(n_vocab):
            b = engine.token_bytes(i)
            if engine.is_eog(i):
                eog.append(i)
            if not b:
                b = b"\xff<[" + str(i).encode() + b"]>"
                self.special_token_ids.append(i)
            self.tokens.append(b)
        self.eog = eog
        self.eos_token_id = eog[0] if eog else 0
        self.bos_token_id = None
        self._engine = engine

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return self._engine.tokenize(text)


def vocab_tokenizer(engine: "Engine"):
    """The llguidance LLTokenizer of `engine`'s vocabulary (built once: ~1 s for 150k tokens)."""
    with _lock:
        tok = _tokenizers.get(engine)
        if tok is None:
            try:
                import llguidance
            except ImportError:
                raise EdgeChatError("constrained output needs llguidance: "
                                    "pip install llguidance") from None
            vocab = _Vocab(engine, engine.n_vocab)
            tok = llguidance.LLTokenizer(llguidance.TokenizerWrapper(vocab), n_vocab=engine.n_vocab,
                                         eos_token=vocab.eog or None)
            _tokenizers[engine] = tok
        return tok


def check_grammar(lark: str, param: str) -> str:
    """llguidance's grammar text for a Lark grammar; EdgeChatError(param) if it is invalid
    (an unsupported JSON schema, say)."""
    import llguidance
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, msgs = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise EdgeChatError(f"{param}: the schema cannot be used for constrained output: "
                            f"{msgs[0] if msgs else 'invalid'}", param=param)
    return grammar


class GrammarProcessor:
    """A LogitsProcessor: -inf on every token the grammar does not allow next."""

    def __init__(self, engine: "Engine", lark: str, param: str = "response_format"):
        import llguidance
        self._tok = vocab_tokenizer(engine)
        self.matcher = llguidance.LLMatcher(self._tok, check_grammar(lark, param), log_level=0)
        if self.matcher.is_error():
            raise EdgeChatError(f"{param}: {self.matcher.get_error()}", param=param)
        self.n_vocab = engine.n_vocab
        self._mask = np.zeros((self.n_vocab + 31) // 32, dtype=np.int32)
        self._eog = np.array(sorted(set(self._tok.eos_tokens)), dtype=np.int64)
        self._seen: list[int] = []

    def _follow(self, tokens: Sequence[int]) -> None:
        """Bring the matcher to the state after `tokens` (rolling back if needed)."""
        seen = self._seen
        common = 0
        for a, b in zip(seen, tokens):
            if a != b:
                break
            common += 1
        if common < len(seen):
            self.matcher.rollback(len(seen) - common)
            del seen[common:]
        for t in tokens[common:]:
            t = int(t)
            if not self.matcher.consume_token(t):
                raise EdgeChatError(f"the engine produced token {t}, which the grammar does "
                                    f"not allow: {self.matcher.get_error()}")
            seen.append(t)

    def __call__(self, tokens: Sequence[int], logits: np.ndarray) -> None:
        self._follow(tokens)
        m = self.matcher
        if m.is_stopped():
            keep = np.zeros(logits.shape[0], dtype=bool)
            keep[self._eog[self._eog < logits.shape[0]]] = True
        else:
            m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
            bits = np.unpackbits(self._mask.view(np.uint8), bitorder="little")
            keep = bits[:logits.shape[0]].astype(bool)
        logits[~keep] = -np.inf
