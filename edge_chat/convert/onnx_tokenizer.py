"""The tokenizer files of an ONNX model folder, made with transformers at convert time
(tokenizer.json, from tokenizer.model if need be; the chat template inside
tokenizer_config.json), and the sample prompt the export checks run on."""

from __future__ import annotations

import json
from pathlib import Path

from edge_chat.convert.common import first_line
from edge_chat.errors import ConvertError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
_SAMPLE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
_SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog. 1, 2, 3: hello!"


def save_tokenizer(src: Path, dst: Path, notes: list[str]):
    """Fast tokenizer of `src` saved to `dst` (tokenizer.json made from tokenizer.model if
    needed, chat template inside tokenizer_config.json); returns (tokenizer, manifest keys)."""
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(str(src), use_fast=True)
    except Exception as e:
        raise ConvertError(f"cannot load the tokenizer of {src}: {type(e).__name__}: "
                           f"{first_line(e)}") from None
    if not getattr(tok, "is_fast", False):
        raise ConvertError(f"the tokenizer of {src} has no fast (tokenizer.json) version")
    tok.save_pretrained(str(dst), save_jinja_files=False)
    if not (dst / "tokenizer.json").is_file():
        raise ConvertError(f"could not write tokenizer.json for {src}")
    if not (src / "tokenizer.json").is_file():
        notes.append("tokenizer.json made from tokenizer.model (transformers fast conversion)")
        _compare_slow_fast(src, tok, notes)
    if not tok.chat_template:
        notes.append("the model has no chat template")
    cfg_path = dst / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text())
    if tok.chat_template and not tcfg.get("chat_template"):
        tcfg["chat_template"] = tok.chat_template
        cfg_path.write_text(json.dumps(tcfg, indent=2, ensure_ascii=False) + "\n")
    eos_ids = _eos_ids(src, tok)
    probe = tok("hello", add_special_tokens=True)["input_ids"]
    add_bos = tok.bos_token_id is not None and probe[:1] == [tok.bos_token_id]
    return tok, {"bos_token": tok.bos_token or "", "eos_token": tok.eos_token or "",
                 "bos_id": tok.bos_token_id, "eos_ids": eos_ids, "add_bos": add_bos,
                 "vocab_size": len(tok)}


def _compare_slow_fast(src: Path, fast, notes: list[str]) -> None:
    from transformers import AutoTokenizer
    try:
        slow = AutoTokenizer.from_pretrained(str(src), use_fast=False)
    except Exception:
        return
    texts = [_SAMPLE_TEXT, " Two  spaces\nand a line. Café 東京"]
    bad = [t for t in texts if slow(t, add_special_tokens=False)["input_ids"]
           != fast(t, add_special_tokens=False)["input_ids"]]
    if bad:
        notes.append(f"warning: the converted tokenizer.json splits {len(bad)} sample text(s) "
                     "differently from tokenizer.model")


def _eos_ids(src: Path, tok) -> list[int]:
    ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        p = src / name
        if p.is_file():
            v = json.loads(p.read_text()).get("eos_token_id")
            ids += v if isinstance(v, list) else [v] if isinstance(v, int) else []
    if tok.eos_token_id is not None:
        ids.append(tok.eos_token_id)
    return sorted(set(ids))


def sample_ids(tok) -> list[int]:
    text = _SAMPLE_TEXT
    if tok.chat_template:
        try:
            text = tok.apply_chat_template(_SAMPLE, tokenize=False, add_generation_prompt=True)
        except Exception:
            pass
    ids = tok(text, add_special_tokens=True)["input_ids"]
    return ids[:64] if len(ids) >= 4 else (ids + tok(_SAMPLE_TEXT)["input_ids"])[:64]
