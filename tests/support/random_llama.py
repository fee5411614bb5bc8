"""A random-weight tiny Llama HF folder with a tokenizer trained on the spot, the input of
the GGUF converter and GGUF reader tests (no trained answers: see tiny_model.py for that)."""

from __future__ import annotations

import io
import json
from pathlib import Path

CHAT_TEMPLATE = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
VOCAB = 300


def make_tiny_llama(folder: Path, intermediate: int = 512, arch: str = "LlamaForCausalLM") -> Path:
    """A random-weight Llama (hidden 256, 2 layers, 4 heads / 2 KV heads, context 512)
    with a SentencePiece BPE tokenizer trained on the spot."""
    import sentencepiece as spm
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    words = ("the quick brown fox jumps over a lazy dog while small models chat "
             "offline on tiny laptops and answer every question").split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(12)) + f" {i}"
             for i in range(400)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=VOCAB, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, minloglevel=2,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=256, intermediate_size=intermediate,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=1, eos_token_id=2,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(folder, safe_serialization=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "chat_template": CHAT_TEMPLATE}))
    if arch != "LlamaForCausalLM":
        cfg_path = folder / "config.json"
        cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "architectures": [arch]}))
    return folder
