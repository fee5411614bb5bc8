"""`edge_chat convert` on a real Hugging Face folder (Qwen2.5-Coder-0.5B-Instruct):
the GGUF and ONNX results answer as transformers does on the folder."""

import pytest

from edge_chat.params import make_params
from edge_chat.runtime import open_chat

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

QUESTIONS = ["What is the capital of France?", "Name three primary colors.",
             "Write a Python function that adds two numbers.", "What is 12 times 12?"]
KEYWORDS = ["Paris", "red", "def", "144"]
N = 32


@pytest.fixture(scope="module")
def reference(real_qwen_hf):
    """transformers' greedy continuation (first N tokens) of each question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(real_qwen_hf)
    model = AutoModelForCausalLM.from_pretrained(real_qwen_hf, torch_dtype=torch.float32)
    out = {}
    for q in QUESTIONS:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True)
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=N, do_sample=False)
        new = gen[0, len(ids):].tolist()
        eos = [i for i, t in enumerate(new) if t in (tok.eos_token_id, 151645, 151643)]
        out[q] = (ids, new[:eos[0] + 1] if eos else new)
    return out


def greedy_tokens(model, prompt, n):
    toks = []
    gen = model.engine.generate(prompt, make_params(temperature=0))
    for t in gen:
        toks.append(t.id)
        if model.engine.is_eog(t.id) or len(toks) >= n:
            break
    gen.close()
    return toks


def check_same_tokens(path, reference):
    m = open_chat(str(path))
    try:
        for q, (ids, expected) in reference.items():
            prompt = m.prepare([{"role": "user", "content": q}], make_params(temperature=0)).tokens
            assert prompt == ids, "prompt tokens differ from transformers'"
            assert greedy_tokens(m, prompt, N) == expected, q
    finally:
        m.engine.close()


def check_keywords(path):
    m = open_chat(str(path))
    try:
        for q, kw in zip(QUESTIONS, KEYWORDS):
            text = m.complete([{"role": "user", "content": q}],
                              make_params(temperature=0, max_tokens=64)).choices[0].text
            assert kw.lower() in text.lower(), (q, text)
    finally:
        m.engine.close()


def test_gguf_q8_0_equals_transformers(real_qwen_converted, reference):
    check_same_tokens(real_qwen_converted.get("gguf", "q8_0"), reference)


def test_gguf_q4_k_m_answers(real_qwen_converted):
    check_keywords(real_qwen_converted.get("gguf", "q4_k_m"))


def test_gguf_tokenizer_equals_the_folder(real_qwen_converted, real_qwen_hf):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(real_qwen_hf)
    m = open_chat(str(real_qwen_converted.get("gguf", "q8_0")))
    try:
        for text in ["Hello, world! It's 3.14.", "def f(x):\n    return x ** 2  # square\n",
                     "北京是中国的首都。", "emoji 🎉🚀 and ünïcödé", "  two  spaces\n\n\tand a tab"]:
            assert m.engine.tokenize(text) == tok(text, add_special_tokens=False).input_ids
    finally:
        m.engine.close()


def test_onnx_fp32_equals_transformers(real_qwen_converted, reference):
    check_same_tokens(real_qwen_converted.get("onnx", "fp32"), reference)


# int8 (dynamic, activations quantized per tensor at run time) answers the real Qwen's
# questions off-topic since 2026-12-04 - with the same fp32 graph and the quantizers and
# runtimes of onnxruntime 1.23.2, 1.31.1 and 1.32.0 alike, per channel or per tensor, with
# or without the lm_head quantized; the tree of the commit before reproduces it. Strict:
# the day it answers again, this fails and the mark goes. (ONNX quantization: issue 26.)
INT8_OFF_TOPIC = pytest.mark.xfail(strict=True, reason="int8 ONNX of the real Qwen answers "
                                   "off-topic (docs/commands.md)")


@pytest.mark.parametrize("quant", [pytest.param("int8", marks=INT8_OFF_TOPIC), "int4"])
def test_onnx_quantized_answers(real_qwen_converted, quant):
    check_keywords(real_qwen_converted.get("onnx", quant))


def test_onnx_int4_size_near_gguf_q4_k_m(real_qwen_converted, real_qwen_gguf):
    from edge_chat.store.paths import path_size
    onnx = path_size(real_qwen_converted.get("onnx", "int4"))
    gguf = real_qwen_gguf.stat().st_size
    assert onnx <= 1.2 * gguf, f"int4 ONNX is {onnx / gguf:.2f}× the Q4_K_M GGUF"
