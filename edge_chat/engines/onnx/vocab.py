"""The tokenizer side of an ONNX model folder: tokenizer.json run by `tokenizers` (never
transformers), BOS and end-of-generation tokens, the chat template, and the bytes each
token adds to the output."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from edge_chat.errors import ModelLoadError

#: end-of-turn tokens of common chat formats (EOG when present as special tokens)
EOG_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<end_of_turn>",
              "<|endoftext|>", "<|end|>", "</s>", "<|return|>")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data


def _token_str(v) -> str:
    if isinstance(v, dict):
        return v.get("content") or ""
    return v if isinstance(v, str) else ""


class Vocab:
    """tokenizer.json plus what tokenizer_config.json, generation_config.json, config.json
    and the manifest say about special tokens (the manifest wins)."""

    def __init__(self, folder: Path, manifest: dict, config: dict):
        from tokenizers import Tokenizer
        try:
            self.tok = tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:
            raise ModelLoadError(f"{folder / 'tokenizer.json'} cannot be read: "
                                 f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self._plain = threading.Lock()      # guards encode_special_tokens
        tcfg = read_json(folder / "tokenizer_config.json")
        gen = read_json(folder / "generation_config.json")
        self.chat_template = _chat_template(folder, tcfg)
        self.n_vocab = max(tok.get_vocab_size(with_added_tokens=True),
                           int(config.get("vocab_size") or 0))
        self.special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        self.token_bytes = TokenBytes(tok, self.n_vocab, self.special)
        self.bos_token = manifest.get("bos_token", _token_str(tcfg.get("bos_token")))
        self.eos_token = manifest.get("eos_token", _token_str(tcfg.get("eos_token")))
        if "add_bos" in manifest:
            self.add_bos = bool(manifest["add_bos"])
        else:
            self.add_bos = bool(tcfg.get("add_bos_token", False)) and bool(self.bos_token)
        self.bos_id = tok.token_to_id(self.bos_token) if self.bos_token else None
        eog: set[int] = set(manifest.get("eos_ids") or [])
        for src in (gen, config):
            v = src.get("eos_token_id")
            eog.update(v if isinstance(v, list) else [v] if isinstance(v, int) else [])
        for t in (self.eos_token, *EOG_TOKENS):
            i = tok.token_to_id(t) if t else None
            if i is not None and (t == self.eos_token or i in self.special):
                eog.add(i)
        self.eog = frozenset(eog)

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        """`special=False`: special-token text (``<|im_end|>``) stays text."""
        with self._plain:
            self.tok.encode_special_tokens = not special
            try:
                ids = self.tok.encode(text, add_special_tokens=False).ids
            finally:
                self.tok.encode_special_tokens = False
        if add_bos and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def detokenize(self, tokens: list[int]) -> str:
        return self.tok.decode([int(t) for t in tokens], skip_special_tokens=True)


def _chat_template(path: Path, tcfg: dict) -> str | None:
    t = tcfg.get("chat_template")
    if isinstance(t, list):     # named templates: take "default"
        t = next((x.get("template") for x in t if x.get("name") == "default"), None)
    if isinstance(t, str) and t:
        return t
    jinja = path / "chat_template.jinja"
    return jinja.read_text(encoding="utf-8") if jinja.is_file() else None


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map of the 256 bytes onto printable characters."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _types(node) -> set[str]:
    """Every component "type" in a tokenizer.json decoder / pre_tokenizer tree."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.add(node["type"])
        for v in node.values():
            found |= _types(v)
    elif isinstance(node, list):
        for v in node:
            found |= _types(v)
    return found


def _component(obj) -> dict:
    """The JSON of a tokenizers component (decoder, pre_tokenizer), {} if none."""
    try:
        return json.loads(obj.__getstate__()) if obj is not None else {}
    except Exception:
        return {}


class TokenBytes:
    """The bytes each token id adds to the output, worked out on first use (a table for
    a 150k vocabulary takes ~0.7 s to build up front): byte-level BPE pieces mapped back
    through the GPT-2 byte<->unicode table; SentencePiece pieces with the metaspace
    "\u2581" as a space and <0xNN> byte-fallback pieces as that byte; added tokens as
    their text; special tokens and ids outside the vocabulary b""."""

    def __init__(self, tok, n_vocab: int, special: set[int]):
        kinds = _types(_component(tok.decoder)) | _types(_component(tok.pre_tokenizer))
        self._tok, self._n, self._special = tok, n_vocab, special
        self._byte_level = "ByteLevel" in kinds
        self._byte_fallback = bool(getattr(tok.model, "byte_fallback", False)) \
            or "ByteFallback" in kinds
        self._added = {i: t.content for i, t in tok.get_added_tokens_decoder().items()}
        self._u2b = {c: b for b, c in _byte_to_unicode().items()}
        self._cache: dict[int, bytes] = {}

    def __getitem__(self, i: int) -> bytes:
        got = self._cache.get(i)
        if got is None:
            got = self._cache[i] = self._bytes(i)
        return got

    def _bytes(self, i: int) -> bytes:
        piece = self._tok.id_to_token(i) if 0 <= i < self._n else None
        if piece is None or i in self._special:
            return b""
        if i in self._added:                     # added tokens are stored as plain text
            return self._added[i].encode("utf-8")
        if self._byte_level:
            u2b = self._u2b
            return b"".join(bytes([u2b[c]]) if c in u2b else c.encode("utf-8") for c in piece)
        if self._byte_fallback and len(piece) == 6 and piece.startswith("<0x") \
                and piece[5] == ">" and all(c in "0123456789abcdefABCDEF" for c in piece[3:5]):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")
