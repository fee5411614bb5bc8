"""The prompt we build equals transformers' for the tiny model; engine options;
the hub download path when offline."""

import os
import subprocess
import sys

import pytest

from edge_chat.engines.base import default_n_ctx
from edge_chat.engines.gguf.engine import gpu_layers_for
from edge_chat.store.gguf_file import read_gguf
from edge_chat.errors import EdgeChatError
from edge_chat.runtime import open_chat


def test_rendered_prompt_and_ids_equal_transformers(tiny_hf, tiny_gguf, tiny_qa):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_hf)
    m = open_chat(str(tiny_gguf["f16"]))
    try:
        for qa in tiny_qa:
            ours = m.render(qa.messages)
            theirs = tok.apply_chat_template(qa.messages, tokenize=False, add_generation_prompt=True)
            assert ours == theirs
            assert m.prepare(qa.messages, m_params()).tokens == \
                tok(theirs, add_special_tokens=False).input_ids
    finally:
        m.engine.close()


def m_params():
    from edge_chat.params import make_params
    return make_params(temperature=0)


def test_gpu_layer_options(tiny_gguf):
    g = read_gguf(tiny_gguf["f16"])
    assert gpu_layers_for(g, "0", None, 512) == 0
    assert gpu_layers_for(g, "7", None, 512) == 7
    assert gpu_layers_for(g, "auto", "64GB", 512) == g.n_layers + 1     # everything fits
    assert gpu_layers_for(g, "auto", "1MB", 512) == 0                   # nothing fits
    with pytest.raises(EdgeChatError, match="--vram"):
        gpu_layers_for(g, "auto", None, 512)
    with pytest.raises(EdgeChatError, match="number or 'auto'"):
        gpu_layers_for(g, "lots", None, 512)
    assert default_n_ctx(32768, None) == 4096 and default_n_ctx(1024, None) == 1024
    assert default_n_ctx(1024, 2048) == 2048


def test_hub_id_offline_is_a_clear_error(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EDGE_CHAT_MODELS": str(tmp_path)}
    p = subprocess.run([sys.executable, "-m", "edge_chat", "convert", "HuggingFaceTB/SmolLM2-135M",
                        "--to", "gguf", "--quant", "q4_k_m"], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=120)
    assert p.returncode == 1
    assert "offline?" in p.stderr and "local folder" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_q8_0_kv_cache_and_no_mmap_still_answer(tiny_gguf, tiny_qa):
    from edge_chat.engines import EngineOptions
    m = open_chat(str(tiny_gguf["f16"]), EngineOptions(kv_type="q8_0", mmap=False, threads=1))
    try:
        assert m.info.extra["kv_type"] == "q8_0" and m.info.extra["threads"] == 1
        for qa in tiny_qa[:5]:
            assert m.complete(qa.messages, m_params()).choices[0].text == qa.answer
    finally:
        m.engine.close()
    with pytest.raises(EdgeChatError, match="kv-type"):
        open_chat(str(tiny_gguf["f16"]), EngineOptions(kv_type="q4"))
