"""How much a conversion costs in quality: perplexity of the source model
(transformers) and of the result (through our engine) on a bundled text."""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

CHUNK = 512      # tokens per window; the first token of each window is not scored
KV_OVERHEAD = 250 * 1000**2   # compute buffers, tokenizer, Python: beside weights + KV cache


def eval_text() -> str:
    """A few thousand tokens of plain English written for this project."""
    return resources.files("edge_chat.data").joinpath("eval.txt").read_text(encoding="utf-8")


def windows(ids: list[int], size: int) -> list[list[int]]:
    return [ids[i:i + size] for i in range(0, len(ids), size) if len(ids[i:i + size]) > 1]


def _ppl(total_logprob: float, n: int) -> float:
    return math.exp(-total_logprob / n) if n else float("nan")


@dataclass
class Perplexity:
    value: float
    tokens: int       # scored tokens


def engine_perplexity(engine, text: str | None = None) -> Perplexity:
    """Perplexity through an Engine that has `logprobs(tokens)`."""
    text = text or eval_text()
    ids = engine.tokenize(text, add_bos=engine.info.add_bos)
    total, n = 0.0, 0
    for w in windows(ids, min(CHUNK, engine.info.n_ctx)):
        lp = engine.logprobs(w)
        total += float(lp.sum())
        n += len(lp)
    return Perplexity(_ppl(total, n), n)


def hf_perplexity(folder: Path, text: str | None = None, n_ctx: int = CHUNK) -> Perplexity:
    """Perplexity of the source Hugging Face model (float32, CPU)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()      # "sequence longer than the model's maximum": we window it
    text = text or eval_text()
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.eval()
    ids = tok(text).input_ids
    total, n = 0.0, 0
    with torch.no_grad():
        for w in windows(ids, min(CHUNK, n_ctx)):
            logits = model(torch.tensor([w])).logits[0, :-1].double()
            lp = torch.log_softmax(logits, -1)[torch.arange(len(w) - 1), torch.tensor(w[1:])]
            total += float(lp.sum())
            n += len(w) - 1
    return Perplexity(_ppl(total, n), n)


def output_perplexity(path: Path) -> Perplexity:
    from edge_chat.engines import EngineOptions, load_engine
    engine = load_engine(path, EngineOptions(n_ctx=CHUNK))
    try:
        return engine_perplexity(engine)
    finally:
        engine.close()


def kv_cache_bytes(config: dict, n_ctx: int, bytes_per_value: float) -> int:
    """K and V for every layer at `n_ctx` tokens, from an HF config."""
    text = config.get("text_config", config)
    layers = int(text.get("num_hidden_layers", 0))
    heads = int(text.get("num_attention_heads", 1))
    kv_heads = int(text.get("num_key_value_heads") or heads)
    head_dim = int(text.get("head_dim") or text.get("hidden_size", 0) // heads)
    return int(2 * layers * kv_heads * head_dim * n_ctx * bytes_per_value)


def memory_needed(size_bytes: int, config: dict, fmt: str) -> int:
    """RAM to chat with a converted model: weights + KV cache at the default
    window (min(trained, 4096)) + a fixed overhead."""
    text = config.get("text_config", config)
    n_ctx = min(int(text.get("max_position_embeddings") or 4096), 4096)
    per_value = 2.0 if fmt == "gguf" else 4.0          # f16 KV in llama.cpp, fp32 in ONNX
    return size_bytes + kv_cache_bytes(config, n_ctx, per_value) + KV_OVERHEAD


def recommend(rows: list[dict], budget: int) -> dict | None:
    """The row with the lowest perplexity among those whose `memory` fits
    `budget` (the smaller file on a tie); None when nothing fits."""
    fits = [r for r in rows if r["memory"] <= budget and r.get("ppl") is not None
            and not math.isnan(r["ppl"])]
    return min(fits, key=lambda r: (round(r["ppl"], 6), r["size"])) if fits else None
