"""The engine layer's contract on both engines (GGUF f16 and ONNX fp32, the tiny
trained model): declared capabilities, logits processors, logprobs, tokenize
special=False, the shared prompt check, and the eval/trim steps speculation uses."""

import numpy as np
import pytest

from edge_chat.params import make_params
from edge_chat.engines import load_engine
from edge_chat.engines.base import Capabilities, Engine, Token
from edge_chat.errors import ContextLengthExceeded, EdgeChatError

GREEDY = make_params(temperature=0)


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def engine(request):
    if request.param == "gguf":
        path = request.getfixturevalue("tiny_gguf")["f16"]
    else:
        path = request.getfixturevalue("tiny_onnx")["fp32"]
    from edge_chat.engines import EngineOptions
    eng = load_engine(path, EngineOptions(threads=1))
    yield eng
    eng.close()


def chatml(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def greedy(engine, prompt, limit=24, **kw) -> list[Token]:
    out = []
    for tok in engine.generate(prompt, GREEDY, **kw):
        out.append(tok)
        if len(out) >= limit:
            break
    return out


def test_declares_the_protocol_and_capabilities(engine):
    assert isinstance(engine, Engine)
    caps = engine.capabilities
    assert isinstance(caps, Capabilities)
    assert caps.logits_processors and caps.logprobs and caps.eval_many
    toks = greedy(engine, engine.tokenize(chatml("What is the capital of France?")))
    assert all(isinstance(t, Token) and t.logprob is None and t.top_logprobs == () for t in toks)
    assert engine.is_eog(toks[-1].id)


def test_a_processor_banning_the_greedy_token_changes_the_answer(engine):
    prompt = engine.tokenize(chatml("What is the capital of France?"))
    plain = [t.id for t in greedy(engine, prompt)]
    seen: list[list[int]] = []

    def ban_first(tokens, row):
        seen.append(list(tokens))
        assert row.dtype == np.float32 and row.shape[0] >= engine.n_vocab
        if not tokens:
            row[plain[0]] = -np.inf

    banned = [t.id for t in greedy(engine, prompt, processors=[ban_first])]
    assert banned[0] != plain[0]
    # called once per sampled position with the answer so far
    assert seen == [banned[:i] for i in range(len(banned))]
    # a processor that bans nothing leaves the answer as it was
    assert [t.id for t in greedy(engine, prompt, processors=[lambda t, r: None])] == plain


def test_logprobs_match_scoring_the_same_tokens(engine):
    prompt = engine.tokenize(chatml("What color is the sky?"))
    toks = greedy(engine, prompt, logprobs=3)
    ids = [t.id for t in toks]
    scored = engine.logprobs(prompt + ids)[len(prompt) - 1:]
    for tok, want in zip(toks, scored):
        assert abs(tok.logprob - want) < 1e-3
        assert len(tok.top_logprobs) == 3
        assert tok.top_logprobs[0][0] == tok.id       # greedy: the best one
        lps = [lp for _, lp in tok.top_logprobs]
        assert lps == sorted(lps, reverse=True) and all(lp <= 0 for lp in lps)
    # logprobs=0: the chosen token only
    assert all(t.top_logprobs == () and t.logprob is not None
               for t in greedy(engine, prompt, limit=3, logprobs=0))
    # raw logprobs: a processor does not change them
    biased = greedy(engine, prompt, limit=1, logprobs=1,
                    processors=[lambda t, r: r.__setitem__(ids[0], r[ids[0]] + 5.0)])
    assert abs(biased[0].logprob - toks[0].logprob) < 1e-3


def test_tokenize_special_false_keeps_special_text_plain(engine):
    text = "<|im_end|>"
    special = engine.tokenize(text)
    assert len(special) == 1 and engine.is_eog(special[0])
    plain = engine.tokenize(text, special=False)
    assert len(plain) > 1 and special[0] not in plain
    assert engine.detokenize(plain) == text


def test_one_prompt_check_for_both_engines(engine):
    n_ctx, n_vocab = engine.info.n_ctx, engine.n_vocab
    with pytest.raises(ContextLengthExceeded, match="context window"):
        engine.generate([1] * n_ctx, GREEDY)
    with pytest.raises(EdgeChatError, match="empty prompt") as e:
        engine.generate([], GREEDY)
    assert e.value.param == "messages"
    with pytest.raises(EdgeChatError, match="out of range") as e:
        engine.generate([1, n_vocab], GREEDY)
    assert e.value.param == "prompt"
    with pytest.raises(EdgeChatError, match="out of range") as e:
        engine.generate([1, 2], make_params(logit_bias={n_vocab + 5: 1}))
    assert e.value.param == "logit_bias"
    with pytest.raises(ContextLengthExceeded):
        engine.logprobs([1] * (n_ctx + 1))


def test_eval_many_and_trim(engine):
    """k tokens in one eval give the rows one-by-one evaluation gives; trimming
    the cache and evaluating again continues from the cut."""
    prompt = engine.tokenize(chatml("What is the capital of France?"))
    answer = [t.id for t in greedy(engine, prompt)]
    engine.trim(0)
    assert len(engine.kv) == 0
    engine.eval(prompt[:-1])
    rows = engine.eval([prompt[-1]] + answer[:4], all_logits=True)
    assert rows.shape[0] == 5 and len(engine.kv) == len(prompt) + 4
    assert [int(np.argmax(r)) for r in rows] == answer[:5]
    assert engine.trim(len(prompt) + 1) == len(prompt) + 1
    assert engine.kv.tokens == prompt + answer[:1]
    again = engine.eval(answer[1:3], all_logits=True)
    assert np.allclose(again, rows[2:4], atol=1e-3)
    one = engine.eval([answer[3]], all_logits=True)     # one token: one row
    assert one.shape[0] == 1 and int(np.argmax(one[0])) == answer[4]
    # generate() reuses what the steps left in the cache
    assert [t.id for t in greedy(engine, prompt)] == answer
    assert engine.n_prompt_evaluated == 1
