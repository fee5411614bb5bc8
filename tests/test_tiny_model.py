"""The tiny trained model: its GGUF tokenizes exactly like transformers, answers the same,
and stops at <|im_end|>. Every later test that asserts answers relies on this."""

from __future__ import annotations

import llama_cpp  # a core dependency: fail loudly if missing, never skip
import pytest

from tests.support.tiny_model import (IM_END, IM_START, TRAINED_QA, hf_greedy,
                                      prompt_ids, torch_threads)


PLAIN_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today?",
    " leading space, double  spaces and a trailing space ",
    "Numbers: 12, 345 and 6789; 3.14 and -42.",
    "Line one\nLine two\n\nTabs\tand    runs of spaces.",
    "Unseen words: xylophone, quixotic, zephyr, Mississippi.",
    "Accents and scripts: café, naïve, Straße, 日本語, Ελληνικά, emoji 🙂.",
    "Quotes 'single' \"double\" and symbols #$%&*()[]{}<>/\\|~`^_=+@",
    "a\n b\n  c\n   d",
    "UPPER lower MiXeD CamelCaseWords snake_case_words",
]


@pytest.fixture(scope="module")
def hf_tok(tiny_hf):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_hf)


@pytest.fixture(scope="module")
def hf_model(tiny_hf):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(tiny_hf).eval()


@pytest.fixture(scope="module")
def gguf_vocab(tiny_gguf):
    return llama_cpp.Llama(str(tiny_gguf["f16"]), vocab_only=True, verbose=False)


@pytest.fixture(scope="module")
def hf_answers(hf_model, hf_tok):
    """transformers' greedy new token ids for every TRAINED_QA item (ends with <|im_end|>)."""
    with torch_threads(1):
        return [hf_greedy(hf_model, hf_tok, qa.messages)[0] for qa in TRAINED_QA]


@pytest.fixture(scope="module")
def llm(tiny_gguf):
    """quant -> a llama_cpp.Llama of the tiny GGUF, loaded once per module."""
    loaded: dict = {}

    def get(quant: str):
        if quant not in loaded:
            loaded[quant] = llama_cpp.Llama(str(tiny_gguf[quant]), n_ctx=512, n_threads=1,
                                            n_batch=512, seed=0, verbose=False)
        return loaded[quant]
    yield get
    for m in loaded.values():
        m.close()


def _hf_ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _chat_texts(tok) -> list[str]:
    texts = [tok.apply_chat_template(qa.messages, tokenize=False, add_generation_prompt=True)
             for qa in TRAINED_QA]
    texts += [tok.apply_chat_template(qa.messages + [{"role": "assistant", "content": qa.answer}],
                                      tokenize=False) for qa in TRAINED_QA]
    texts.append(f"x{IM_START}user\n Hi  there{IM_END}{IM_END}\n\n{IM_START}assistant\n")
    return texts


def llama_greedy(llm, ids: list[int], max_new: int = 40) -> list[int]:
    """Raw llama.cpp greedy continuation of `ids`, up to and including an end-of-generation token."""
    vocab = llm._model.vocab
    out: list[int] = []
    for t in llm.generate(ids, temp=0.0, reset=True):
        out.append(t)
        if llama_cpp.llama_vocab_is_eog(vocab, t) or len(out) >= max_new:
            break
    return out


# -- tokenizer -----------------------------------------------------------------------------

def test_chatml_tokens_are_single_and_special(hf_tok, gguf_vocab):
    for t in (IM_START, IM_END):
        hf = _hf_ids(hf_tok, t)
        assert len(hf) == 1, t
        assert gguf_vocab.tokenize(t.encode(), add_bos=False, special=True) == hf
        # not special-parsed -> spelled out as ordinary text, so it must differ
        assert gguf_vocab.tokenize(t.encode(), add_bos=False, special=False) != hf
    im_end = hf_tok.convert_tokens_to_ids(IM_END)
    assert hf_tok.eos_token == IM_END and hf_tok.eos_token_id == im_end
    assert gguf_vocab.token_eos() == im_end
    md = gguf_vocab.metadata
    assert md["tokenizer.ggml.add_space_prefix"] == "false"
    assert md["tokenizer.ggml.add_bos_token"] == "false"
    assert md["tokenizer.chat_template"] == hf_tok.chat_template


def test_chatml_tokenization_matches_transformers(hf_tok, gguf_vocab, tiny_hf):
    from tokenizers import Tokenizer
    raw = Tokenizer.from_file(str(tiny_hf / "tokenizer.json"))   # what the ONNX engine reads
    for text in _chat_texts(hf_tok):
        hf = _hf_ids(hf_tok, text)
        assert gguf_vocab.tokenize(text.encode(), add_bos=False, special=True) == hf, repr(text)
        assert raw.encode(text, add_special_tokens=False).ids == hf, repr(text)


@pytest.mark.parametrize("text", PLAIN_TEXTS)
def test_plain_tokenization_matches_transformers(hf_tok, gguf_vocab, tiny_hf, text):
    from tokenizers import Tokenizer
    hf = _hf_ids(hf_tok, text)
    assert gguf_vocab.tokenize(text.encode(), add_bos=False, special=True) == hf
    assert gguf_vocab.tokenize(text.encode(), add_bos=False, special=False) == hf
    assert Tokenizer.from_file(str(tiny_hf / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids == hf
    # and both detokenize back to the very same text (no dummy prefix, byte fallback)
    assert gguf_vocab.detokenize(hf).decode("utf-8") == text
    assert hf_tok.decode(hf) == text


def test_no_dummy_prefix(hf_tok):
    """'Hello' at the start and ' Hello' are different tokens (add_dummy_prefix=False)."""
    assert _hf_ids(hf_tok, "Hello")[0] != _hf_ids(hf_tok, " Hello")[0]


# -- answers -------------------------------------------------------------------------------

def test_transformers_answers_are_the_trained_ones(hf_tok, hf_answers):
    im_end = hf_tok.convert_tokens_to_ids(IM_END)
    for qa, ids in zip(TRAINED_QA, hf_answers):
        assert ids[-1] == im_end
        assert hf_tok.decode(ids, skip_special_tokens=True) == qa.answer


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_gguf_greedy_equals_transformers(quant, llm, hf_tok, hf_answers):
    model = llm(quant)
    wrong = []
    for qa, expected in zip(TRAINED_QA, hf_answers):
        got = llama_greedy(model, prompt_ids(hf_tok, qa.messages))
        if got != expected:
            wrong.append((qa.messages[-1]["content"], hf_tok.decode(got), qa.answer))
    assert not wrong, f"{quant}: {len(wrong)}/{len(TRAINED_QA)} answers differ: {wrong}"


def test_q4_k_m_agreement(llm, hf_tok, hf_answers):
    # Measured (llama-cpp-python 0.3.36, this tiny model): 20/20 greedy answers identical
    # to transformers, token for token. The trained answers have wide logit margins, so
    # even 4-bit weights keep every argmax; allow one miss before calling it a regression.
    model = llm("q4_k_m")
    same = sum(llama_greedy(model, prompt_ids(hf_tok, qa.messages)) == ids
               for qa, ids in zip(TRAINED_QA, hf_answers))
    assert same >= len(TRAINED_QA) - 1, f"q4_k_m agrees on only {same}/{len(TRAINED_QA)}"


def test_im_end_ends_generation(llm, hf_tok):
    model = llm("f16")
    im_end = hf_tok.convert_tokens_to_ids(IM_END)
    assert llama_cpp.llama_vocab_is_eog(model._model.vocab, im_end)
    assert not llama_cpp.llama_vocab_is_eog(model._model.vocab,
                                            hf_tok.convert_tokens_to_ids(IM_START))
    qa = TRAINED_QA[0]
    ids = prompt_ids(hf_tok, qa.messages)
    n_answer = len(_hf_ids(hf_tok, qa.answer))
    # the high-level completion API stops by itself at <|im_end|>, well before max_tokens
    out = model.create_completion(ids, max_tokens=64, temperature=0.0, seed=0)
    choice = out["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert choice["text"] == qa.answer
    assert out["usage"]["completion_tokens"] in (n_answer, n_answer + 1)


def test_q4_k_m_uses_k_quants_everywhere(tiny_gguf):
    """Every row length is a multiple of 256, so no weight falls back to a legacy type."""
    gguf = pytest.importorskip("gguf")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tiny_gguf["q4_k_m"]).tensors}
    weights = {n: t for n, t in types.items() if not n.endswith("norm.weight")}
    assert set(weights.values()) <= {"Q4_K", "Q6_K"}, weights
    assert list(weights.values()).count("Q4_K") > len(weights) // 2
