"""A draft model for the tiny model: a smaller Llama (1 layer, hidden 64) trained on the
same conversations with the same tokenizer, so it drafts well but not perfectly - the
fixture pair of the speculative decoding tests (`tiny_draft_gguf`).

`build_tiny_draft(tiny_hf, out)` writes a Hugging Face folder (the tiny model's
tokenizer files, copied, and the small model's weights)."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.tiny_model import IM_END, SEED, torch_threads, train, training_examples

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "chat_template.jinja")


def build_tiny_draft(tiny_hf: Path, out: Path) -> Path:
    with torch_threads(1):
        return _build(Path(tiny_hf), Path(out))


def _build(tiny_hf: Path, out: Path) -> Path:
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tiny_hf / name).is_file():
            shutil.copy2(tiny_hf / name, out / name)
    tok = AutoTokenizer.from_pretrained(str(out))
    im_end = tok.convert_tokens_to_ids(IM_END)
    torch.manual_seed(SEED + 1)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024,
        rope_theta=10000.0, rms_norm_eps=1e-6, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=im_end, pad_token_id=None,
        torch_dtype="float32")
    model = LlamaForCausalLM(cfg)
    train(model, training_examples(tok, im_end), pad_id=im_end)
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id,
                                               eos_token_id=im_end, pad_token_id=im_end)
    model.save_pretrained(str(out), safe_serialization=True)
    return out
