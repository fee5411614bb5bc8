"""Quality in convert: perplexity through our engines equals transformers' at
full precision; --quant all --recommend; the store commands rm and pull."""

import os
import re
import subprocess
import sys

import pytest

from edge_chat.convert.quality import (KV_OVERHEAD, engine_perplexity, hf_perplexity,
                                       kv_cache_bytes, memory_needed, recommend)
from edge_chat.engines import EngineOptions, load_engine

EXE = [sys.executable, "-m", "edge_chat"]


@pytest.fixture(scope="module")
def source_ppl(tiny_hf):
    return hf_perplexity(tiny_hf)


@pytest.mark.parametrize("kind", ["gguf", "onnx"])
def test_full_precision_perplexity_equals_transformers(request, kind, source_ppl):
    path = request.getfixturevalue("tiny_gguf")["f16"] if kind == "gguf" \
        else request.getfixturevalue("tiny_onnx")["fp32"]
    engine = load_engine(path, EngineOptions(n_ctx=512))
    try:
        ours = engine_perplexity(engine)
    finally:
        engine.close()
    assert ours.tokens == source_ppl.tokens > 1000
    assert abs(ours.value / source_ppl.value - 1) < 0.01, (ours.value, source_ppl.value)


def test_memory_and_recommendation_arithmetic():
    cfg = {"num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "hidden_size": 256, "max_position_embeddings": 1024}
    assert kv_cache_bytes(cfg, 1024, 2.0) == 2 * 2 * 2 * 64 * 1024 * 2
    assert memory_needed(1000, cfg, "gguf") == 1000 + 2 * 2 * 2 * 64 * 1024 * 2 + KV_OVERHEAD
    rows = [{"quant": "f16", "ppl": 10.0, "size": 300, "memory": 900},
            {"quant": "q8_0", "ppl": 10.1, "size": 160, "memory": 700},
            {"quant": "q4_k_m", "ppl": 11.0, "size": 90, "memory": 500}]
    assert recommend(rows, 1000)["quant"] == "f16"
    assert recommend(rows, 800)["quant"] == "q8_0"
    assert recommend(rows, 500)["quant"] == "q4_k_m"
    assert recommend(rows, 499) is None


def test_convert_all_with_eval_and_recommend(tmp_path, tiny_hf):
    out = tmp_path / "store"
    out.mkdir()
    env = {**os.environ, "EDGE_CHAT_MODELS": str(out)}
    # a budget that fits 2 MB of weights beside the KV cache and overhead
    kv = 2 * 2 * 2 * 64 * 1024 * 2
    budget = KV_OVERHEAD + kv + 2_000_000
    p = subprocess.run(EXE + ["convert", str(tiny_hf), "--to", "gguf", "--quant", "all",
                              "--recommend", "--ram", str(budget)],
                       capture_output=True, text=True, env={**env, "COLUMNS": "200"}, timeout=1200)
    assert p.returncode == 0, p.stderr
    assert len(list(out.glob("*.gguf"))) == 12
    rows = {}
    for line in p.stderr.splitlines():
        m = re.match(r"\W*(\w+)\s*│\s*([\d.]+ [KMG]?B)\s*│.*│\s*([\d.]+)\s*│\s*([+-][\d.]+) %", line)
        if m:
            rows[m.group(1)] = (float(m.group(3)), m.group(2))
    assert len(rows) == 12, p.stderr
    best = re.search(r"recommended for a budget of .*?: (\w+)", p.stderr).group(1)
    fitting = {q: v for q, v in rows.items()
               if (out / f"{tiny_hf.name.lower()}-{q}.gguf").stat().st_size + kv + KV_OVERHEAD <= budget}
    assert best in fitting
    assert rows[best][0] == min(v[0] for v in fitting.values())


def test_rm_and_pull(tmp_path, tiny_gguf):
    env = {**os.environ, "EDGE_CHAT_MODELS": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    (tmp_path / "a.gguf").write_bytes(tiny_gguf["q4_k_m"].read_bytes())
    p = subprocess.run(EXE + ["rm", "../a", "--yes"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "not found" in p.stderr and (tmp_path / "a.gguf").exists()
    p = subprocess.run(EXE + ["rm", "a", "--yes"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and not (tmp_path / "a.gguf").exists()
    p = subprocess.run(EXE + ["pull", "HuggingFaceTB/SmolLM2-135M-Instruct"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 1 and "HF_HUB_OFFLINE" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
