"""One contract, both engines: the chat loop over GGUF (f16) and ONNX (fp32)
on the tiny trained model gives the trained answers and honours every knob."""

import pytest

from edge_chat.params import make_params
from edge_chat.engines import EngineOptions
from edge_chat.errors import ContextLengthExceeded
from edge_chat.runtime import open_chat

GREEDY = make_params(temperature=0)


def _path(request, kind):
    if kind == "gguf":
        return request.getfixturevalue("tiny_gguf")["f16"]
    if kind == "onnx-optimum":      # optimum's graph: the growing KV cache layout
        return request.getfixturevalue("tiny_onnx_optimum")
    return request.getfixturevalue("tiny_onnx")["fp32"]


@pytest.fixture(scope="module", params=["gguf", "onnx", "onnx-optimum"])
def model(request):
    m = open_chat(str(_path(request, request.param)))
    yield m
    m.engine.close()


def test_greedy_answers_are_the_trained_ones(model, tiny_qa):
    for qa in tiny_qa:
        c = model.complete(qa.messages, GREEDY)
        assert c.choices[0].text == qa.answer, qa.messages
        assert c.choices[0].finish_reason == "stop"
        assert c.usage.prompt_tokens == len(c.prompt.tokens)
        assert c.usage.completion_tokens >= len(qa.answer.split())


def test_max_tokens_gives_length(model, tiny_qa):
    qa = tiny_qa[0]
    c = model.complete(qa.messages, make_params(temperature=0, max_tokens=2))
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 2
    assert qa.answer.startswith(c.choices[0].text)


def test_stop_string_cuts_before_it(model, tiny_qa):
    qa = tiny_qa[0]
    word = qa.answer.split()[2]                    # a stop in the middle of the answer
    c = model.complete(qa.messages, make_params(temperature=0, stop=[word, "zzz"]))
    assert c.choices[0].text == qa.answer[:qa.answer.index(word)]
    assert c.choices[0].finish_reason == "stop"
    # a stop split over several tokens
    tail = qa.answer[-6:]
    c = model.complete(qa.messages, make_params(temperature=0, stop=tail))
    assert c.choices[0].text == qa.answer[:-6]


def test_seed_reproducible_and_n_choices(model, tiny_qa):
    msgs = tiny_qa[0].messages
    hot = dict(temperature=2.0, top_k=0, top_p=1.0, max_tokens=12)
    a = model.complete(msgs, make_params(seed=7, **hot))
    b = model.complete(msgs, make_params(seed=7, **hot))
    assert a.choices[0].text == b.choices[0].text
    outs = {model.complete(msgs, make_params(seed=s, **hot)).choices[0].text for s in range(6)}
    assert len(outs) > 1, "different seeds never differ"
    two = model.complete(msgs, make_params(seed=7, n=2, **hot))
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == a.choices[0].text
    assert two.usage.completion_tokens == sum(s.completion_tokens for s in two.stats)


def test_logit_bias_bans_a_token(model, tiny_qa):
    qa = tiny_qa[0]
    first = model.complete(qa.messages, GREEDY)
    tokens = model.engine.tokenize(first.choices[0].text)
    banned = model.complete(qa.messages, make_params(temperature=0, max_tokens=len(tokens),
                                                     logit_bias={tokens[0]: -100}))
    assert banned.choices[0].text != first.choices[0].text


def test_second_turn_evaluates_only_new_tokens(model, tiny_qa):
    qa = tiny_qa[0]
    first = model.complete(qa.messages, GREEDY)
    n1 = len(first.prompt.tokens)
    msgs = qa.messages + [{"role": "assistant", "content": first.choices[0].text},
                          {"role": "user", "content": "What is the capital of Italy?"}]
    second = model.complete(msgs, GREEDY)
    new = len(second.prompt.tokens) - n1 - first.usage.completion_tokens
    assert model.engine.n_prompt_evaluated <= new + 2       # the turn markers around the answer
    assert second.usage.cached_tokens >= n1
    fresh_answer = second.choices[0].text
    # the cached run answers exactly as a cold one
    assert fresh_answer == model.complete(msgs, GREEDY).choices[0].text


def test_context_window_trimming_and_error(request, tiny_qa):
    path = request.getfixturevalue("tiny_gguf")["f16"]
    m = open_chat(str(path), EngineOptions(n_ctx=96))
    try:
        qa = tiny_qa[0]
        history = []
        for _ in range(6):
            history += [{"role": "user", "content": "What color is grass?"},
                        {"role": "assistant", "content": "Grass is green."}]
        msgs = history + qa.messages
        c = m.complete(msgs, make_params(temperature=0, max_tokens=16))
        assert c.prompt.dropped > 0
        assert c.prompt.messages[-1] == qa.messages[-1]
        assert len(c.prompt.tokens) + 16 <= 96
        # the trimmed history still leads to the question's answer
        assert c.choices[0].text.startswith(qa.answer.rsplit(" ", 1)[0])
        with pytest.raises(ContextLengthExceeded):
            m.complete(msgs, make_params(temperature=0, max_tokens=16), policy="error")
    finally:
        m.engine.close()


def test_same_request_same_answer_whatever_the_cache_held(model, tiny_qa):
    hot = make_params(temperature=1.5, top_k=0, top_p=1.0, seed=3, max_tokens=12)
    for qa in tiny_qa[:4]:
        model.complete(tiny_qa[-1].messages, GREEDY)        # something else in the cache
        cold = model.complete(qa.messages, hot).choices[0].text
        again = model.complete(qa.messages, hot).choices[0].text   # prompt + answer cached
        assert cold == again
        assert model.engine.n_prompt_evaluated == 1
