"""A benchmark model with the real shape of SmolLM2-135M and random weights, for
machines without the real models: Llama, hidden 576, 30 layers, 9 heads, 3 KV heads,
intermediate 1536, vocabulary 49152, tied embeddings, bf16 (like the release).
The tokenizer is the tiny test model's SentencePiece one (tests/support/tiny_model.py), its
vocabulary padded to 49152 by the converters; speed depends on the shapes, not on
what the tokens mean.

    python benchmarks/bench_model.py [gguf q4_k_m | onnx int4 | hf]   # prints the path

Built once into $EDGE_CHAT_BENCH_CACHE/smollm2-135m-shape-<hash>/ (hf/, *.gguf, onnx-*/)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

from _common import cache_dir, say  # noqa: E402  (puts the repo on sys.path)

SHAPE = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
             num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
             tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=100000.0,
             rms_norm_eps=1e-5, hidden_act="silu")
SEED = 135
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "chat_template.jinja")


def _folder() -> Path:
    key = hashlib.sha256(repr((SHAPE, SEED, TOKENIZER_FILES)).encode()).hexdigest()[:10]
    return cache_dir() / f"smollm2-135m-shape-{key}"


def _build_hf(out: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.support.tiny_builds import tiny_hf_dir
    tiny = tiny_hf_dir()
    out.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        if (tiny / name).is_file():
            shutil.copy(tiny / name, out / name)
    tcfg = __import__("json").loads((tiny / "config.json").read_text())
    torch.manual_seed(SEED)
    cfg = LlamaConfig(**SHAPE, bos_token_id=tcfg["bos_token_id"],
                      eos_token_id=tcfg["eos_token_id"], torch_dtype="bfloat16")
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    say(f"built {out} ({model.num_parameters() / 1e6:.1f} M parameters, random weights)")
    return out


def _once(final: Path, build) -> Path:
    from tests.support.cache import build_once as _build_once
    return _build_once(final, build)


def hf() -> Path:
    folder = _folder()
    folder.mkdir(parents=True, exist_ok=True)
    return _once(folder / "hf", lambda tmp: _build_hf(tmp / "hf"))


def gguf(quant: str = "q4_k_m") -> Path:
    from edge_chat.convert.to_gguf import convert_to_gguf
    src = hf()
    return _once(src.parent / f"smollm2-135m-shape-{quant}.gguf",
                 lambda tmp: Path(convert_to_gguf(src, quant, tmp / f"m-{quant}.gguf").output))


def onnx(quant: str = "int4") -> Path:
    from edge_chat.convert.to_onnx import convert_to_onnx
    src = hf()
    return _once(src.parent / f"onnx-{quant}",
                 lambda tmp: Path(convert_to_onnx(src, quant, tmp / f"onnx-{quant}").output))


if __name__ == "__main__":
    kind, *rest = sys.argv[1:] or ["gguf"]
    print({"gguf": gguf, "onnx": onnx, "hf": hf}[kind](*rest))
