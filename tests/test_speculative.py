"""Speculative decoding on both engines (tiny trained model): the same answers as
plain decoding (greedy and seeded sampling), the acceptance rule, drafts from the
prompt, a prediction and a draft model, processors and stop strings with drafts,
the rejected tail cut from the cache."""

import math

import numpy as np
import pytest

from edge_chat.params import make_params
from edge_chat.engines import EngineOptions, load_engine
from edge_chat.errors import EdgeChatError
from edge_chat.runtime import open_chat

GREEDY = make_params(temperature=0)
#: a prompt that repeats the text it asks for: prompt lookup has runs to copy
COPY_ME = "Say hello. Say hello. What is the capital of France? Say hello."


def _path(request, kind):
    if kind == "gguf":
        return request.getfixturevalue("tiny_gguf")["f16"]
    return request.getfixturevalue("tiny_onnx")["fp32"]


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def engine(request, kind):
    eng = load_engine(_path(request, kind), EngineOptions(threads=1))
    yield eng
    eng.close()


def chatml(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def run(engine, prompt, params=GREEDY, mode="auto", limit=40, **kw) -> list[int]:
    engine.speculative = mode
    out = []
    try:
        for tok in engine.generate(prompt, params, **kw):
            out.append(tok.id)
            if len(out) >= limit:
                break
    finally:
        engine.speculative = "auto"
    return out


def prompts(engine, tiny_qa):
    texts = [chatml(q) for q in ("What is the capital of France?", COPY_ME, "Count to five.")]
    out = [engine.tokenize(t) for t in texts]
    for qa in tiny_qa:
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                       for m in qa.messages) + "<|im_start|>assistant\n"
        out.append(engine.tokenize(text))
    return out


def test_greedy_output_identical_to_plain_decoding(engine, tiny_qa):
    for prompt in prompts(engine, tiny_qa):
        plain = run(engine, prompt, mode="off")
        assert engine.speculation.rounds == 0
        assert run(engine, prompt, mode="lookup") == plain
        # the answer itself as the prediction: drafted, verified, all kept
        assert run(engine, prompt, mode="off", prediction=plain) == plain
        stats = engine.speculation
        if len(plain) > 2:
            assert stats.rounds > 0 and stats.prediction_accepted > 0
            assert stats.prediction_rejected == 0
        # a wrong prediction: rejected, and still the same answer
        wrong = engine.tokenize("Grass is green. The sky is blue. 1, 2, 3, 4, 5.")
        assert run(engine, prompt, mode="off", prediction=wrong) == plain


def test_seeded_sampling_identical_to_plain_decoding(engine):
    prompt = engine.tokenize(chatml(COPY_ME))
    hot = make_params(temperature=1.2, top_k=0, top_p=1.0, min_p=0.0, max_tokens=16)
    for seed in range(6):
        p = hot.model_copy(update={"seed": seed})
        plain = run(engine, prompt, p, mode="off", limit=16)
        guess = run(engine, prompt, GREEDY, mode="off", limit=16)
        assert run(engine, prompt, p, mode="off", prediction=guess, limit=16) == plain
        assert run(engine, prompt, p, mode="lookup", limit=16) == plain


def test_acceptance_rule_keeps_a_draft_with_its_probability(engine):
    """Drafts are one-hot, so the rule accepts draft d with probability p(d)
    (and otherwise draws from p without d): over seeds, the share of rounds
    that keep d matches p(d) from the model's logprobs."""
    prompt = engine.tokenize(chatml("hello"))     # untrained: an uncertain answer
    first = run(engine, prompt, mode="off", limit=1)[0]
    # the exact distribution of the second token: softmax of the raw logits row
    engine.trim(0)
    engine.eval(prompt)
    row = engine.eval([first]).astype(np.float64)
    temp = 1.0
    p = np.exp((row - row.max()) / temp)
    p /= p.sum()
    draft = int(np.argsort(-p)[1])          # a likely but not certain token
    assert 0.1 < p[draft] < 0.9, "need an uncertain position"
    params = make_params(temperature=temp, top_k=0, top_p=1.0, min_p=0.0)
    n, kept, rounds = 0, 0, []
    for seed in range(300):
        out = run(engine, prompt, params.model_copy(update={"seed": seed}), mode="off",
                  limit=2, prediction=[first, draft, draft])
        if out[0] != first:
            continue
        n += 1
        kept += out[1] == draft
        rounds.append(engine.speculation.rounds)
    assert n >= 30 and all(r >= 1 for r in rounds), "the draft was verified every time"
    share = kept / n
    sigma = math.sqrt(p[draft] * (1 - p[draft]) / n)
    assert abs(share - p[draft]) < 4 * sigma + 1e-9, (share, p[draft], n)


def test_rejected_tail_leaves_the_cache(engine):
    prompt = engine.tokenize(chatml("What is the capital of France?"))
    plain = run(engine, prompt, mode="off")
    wrong = plain[:3] + engine.tokenize(" Grass is green and the sky is blue")
    out = run(engine, prompt, mode="off", prediction=wrong)
    assert out == plain and engine.speculation.prediction_rejected > 0
    assert engine.kv.tokens in (prompt + out[:-1], prompt + out)


def test_processors_and_stop_strings_with_drafts(request, kind, tiny_qa):
    model = open_chat(str(_path(request, kind)), EngineOptions(threads=1))
    try:
        qa = tiny_qa[0]
        answer = model.complete(qa.messages, GREEDY).choices[0].text
        word = answer.split()[3]
        stop = make_params(temperature=0, stop=[word])
        c = model.complete(qa.messages, stop, prediction=answer)
        assert c.choices[0].text == answer[:answer.index(word)]
        first = model.engine.tokenize(answer)[0]

        def ban_first(tokens, row):
            if not tokens:
                row[first] = -np.inf
        model.engine.speculative = "off"
        plain = model.complete(qa.messages, GREEDY, processors=[ban_first]).choices[0].text
        model.engine.speculative = "auto"
        drafted = model.complete(qa.messages, GREEDY, processors=[ban_first], prediction=answer)
        assert drafted.choices[0].text == plain != answer
        # Predicted Outputs usage: the answer predicted exactly is all accepted
        c = model.complete(qa.messages, GREEDY, prediction=answer)
        assert c.choices[0].text == answer
        assert c.usage.accepted_prediction_tokens > 0
        assert c.usage.as_dict()["completion_tokens_details"]["rejected_prediction_tokens"] == 0
        # the grammar processor (llguidance) follows verified drafts, on both engines
        fmt = {"type": "json_object"}
        p = make_params(temperature=0, max_tokens=60)
        model.engine.speculative = "off"
        a = model.complete(qa.messages, p, response_format=fmt).choices[0].text
        model.engine.speculative = "auto"
        b = model.complete(qa.messages, p, response_format=fmt, prediction=a).choices[0].text
        assert a == b and a.lstrip().startswith("{")
    finally:
        model.engine.close()


def test_draft_model(request, kind, tiny_qa):
    """A draft model with the same vocabulary (here the same model at another
    precision, in the other format too) drafts; the answers stay the same."""
    drafts = [request.getfixturevalue("tiny_gguf")["q8_0"],
              request.getfixturevalue("tiny_onnx")["int8"]]
    for draft in drafts:
        eng = load_engine(_path(request, kind), EngineOptions(threads=1, speculative="draft",
                                                              draft=str(draft)))
        try:
            assert eng.draft_engine is not None
            for prompt in prompts(eng, tiny_qa)[:6]:
                plain = run(eng, prompt, mode="off")
                assert run(eng, prompt, mode="draft") == plain
                stats = eng.speculation
                if len(plain) > 3:
                    assert stats.drafted > 0 and stats.accepted > 0
        finally:
            eng.close()
        assert eng.closed and eng.draft_engine is None


def test_bad_options_are_one_line_errors(request):
    path = _path(request, "gguf")
    with pytest.raises(EdgeChatError, match="--speculative must be one of"):
        load_engine(path, EngineOptions(speculative="sometimes"))
    with pytest.raises(EdgeChatError, match="needs --draft"):
        load_engine(path, EngineOptions(speculative="draft"))
    with pytest.raises(EdgeChatError, match="draft model: .*not found") as e:
        load_engine(path, EngineOptions(draft="/no/such/model.gguf"))
    assert e.value.param == "draft"


def test_small_draft_model_trained_on_the_same_corpus(request, kind, tiny_qa, tiny_draft_gguf):
    """The fixture pair: a 1-layer model trained on the same conversations and
    tokenizer drafts for the tiny model; greedy answers stay the plain ones and
    some drafted tokens are accepted."""
    eng = load_engine(_path(request, kind), EngineOptions(threads=1, speculative="draft",
                                                          draft=str(tiny_draft_gguf)))
    try:
        drafted = accepted = 0
        for prompt in prompts(eng, tiny_qa):
            plain = run(eng, prompt, mode="off")
            assert run(eng, prompt, mode="draft") == plain
            drafted += eng.speculation.drafted
            accepted += eng.speculation.accepted
        assert drafted > 0 and 0 < accepted <= drafted
    finally:
        eng.close()


@pytest.mark.real_model
def test_draft_model_with_another_vocabulary_is_one_line_error(request, real_gemma_gguf):
    gemma = real_gemma_gguf
    with pytest.raises(EdgeChatError, match="different vocabulary") as e:
        load_engine(_path(request, "gguf"), EngineOptions(threads=1, draft=str(gemma)))
    assert e.value.param == "draft" and "\n" not in str(e.value)


def test_adaptive_switching_off():
    """The controller alone (timings given): drafting at K_MAX while rounds win; rounds
    slower per token than plain steps turn drafting off for 16 tokens, then 32; a new
    request starts drafting again."""
    from edge_chat.engines.speculative import K_MAX, Adaptive
    a = Adaptive()
    a.plain(0.010)                               # a plain step: 10 ms
    assert a.length(0) == K_MAX
    a.update(4, 4, 0.015, 5)                     # 5 tokens in 15 ms: wins
    a.update(K_MAX, 2, 0.025, 30)                # 3 tokens in 25 ms: still wins on average
    assert a.length(30) == K_MAX
    for produced in range(31, 41):               # 1 token per 20 ms: loses
        a.update(3, 0, 0.020, produced)
        if a.length(produced) == 0:
            break
    assert a.length(produced) == 0 and a.length(produced + 15) == 0
    assert a.length(produced + 16) > 0           # back after 16 tokens
    a.update(1, 0, 0.020, produced + 16)         # loses again: off for 32
    assert a.length(produced + 16 + 31) == 0 and a.length(produced + 16 + 32) > 0
    a.begin()                                    # a new request starts drafting again
    assert a.length(0) == K_MAX and a.t_plain == 0.010


def test_draft_model_length_follows_what_was_kept():
    from edge_chat.engines.speculative import K_MAX, next_length
    assert next_length(4, 4, 4) == 8 and next_length(8, 8, 8) == min(16, K_MAX)
    assert next_length(K_MAX, K_MAX, K_MAX) == K_MAX
    assert next_length(K_MAX, K_MAX, 2) == 3 and next_length(3, 3, 0) == 1


def test_lookup_and_prediction_drafts():
    from edge_chat.engines.speculative import Lookup, Prediction
    look = Lookup([1, 2, 3, 4, 5, 9, 1, 2, 3])
    assert look.draft(3) == [4, 5, 9]            # "1 2 3" was followed by "4 5 9"
    look.feed([7])
    assert look.draft(3) == []                   # "2 3 7" never seen
    assert Lookup([5, 6, 1, 5, 6]).draft(2) == []   # two-token matches are too weak
    # as far as the occurrence matches backwards: 3 tokens of context -> at most 3
    assert Lookup([8, 1, 2, 3, 4, 5, 6, 7, 9, 1, 2, 3]).draft(16) == [4, 5, 6]
    # a copied run of 10 tokens drafts 10 (up to the length asked)
    code = list(range(20, 40))
    look = Lookup(code + [0] + code[:10])
    assert look.draft(16) == code[10:20] and look.draft(4) == code[10:14]
    pred = Prediction([10, 11, 12, 13, 14, 15, 16])
    assert pred.draft(3) == [10, 11, 12]         # nothing generated yet: from the start
    pred.feed([10, 11, 99])                      # an edit: off the prediction
    assert pred.draft(2) == []
    pred.feed([13, 14])                          # back on it: found again by n-gram
    assert pred.draft(2) == [15, 16]


def test_cli_options(tiny_gguf, tiny_draft_gguf, tiny_qa):
    """`chat --speculative/--draft`: the answer and the acceptance on stderr with
    --stats; bad values are one `error:` line."""
    import os
    import subprocess
    import sys
    exe = [sys.executable, "-m", "edge_chat", "chat", str(tiny_gguf["f16"]), "--threads", "1",
           "--temperature", "0"]
    env = dict(os.environ)
    qa = tiny_qa[0]
    p = subprocess.run(exe + ["-p", qa.messages[-1]["content"], "--stats", "--speculative",
                              "draft", "--draft", str(tiny_draft_gguf)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == qa.answer and "drafted accepted" in p.stderr
    for args, match in ((["--speculative", "sometimes"], "--speculative must be one of"),
                        (["--draft", "/no/such.gguf"], "draft model: ")):
        p = subprocess.run(exe + ["-p", "hi", *args], capture_output=True, text=True, env=env,
                           timeout=300)
        assert p.returncode != 0 and p.stderr.startswith("error:") and match in p.stderr
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_predicted_outputs_through_the_api(tiny_gguf, tiny_onnx, tiny_qa, tmp_path):
    """OpenAI's `prediction` through a real `edge_chat serve` and the openai client:
    the same answer, accepted/rejected prediction tokens in usage; a bad shape is a 400."""
    import openai

    from tests.support.server import FAST, Server, make_store
    store = make_store(tmp_path / "store", {"tiny.gguf": tiny_gguf["f16"],
                                            "tiny-onnx": tiny_onnx["int8"]})
    server = Server(store, *FAST, "--parallel", "1", log=tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        qa = tiny_qa[0]
        for model in ("tiny", "tiny-onnx"):
            plain = client.chat.completions.create(model=model, messages=qa.messages,
                                                   temperature=0)
            assert plain.usage.completion_tokens_details is None
            r = client.chat.completions.create(
                model=model, messages=qa.messages, temperature=0,
                prediction={"type": "content", "content": qa.answer})
            assert r.choices[0].message.content == plain.choices[0].message.content
            d = r.usage.completion_tokens_details
            assert d.accepted_prediction_tokens > 0 and d.rejected_prediction_tokens == 0
            wrong = client.chat.completions.create(
                model=model, messages=qa.messages, temperature=0,
                prediction={"type": "content", "content": [
                    {"type": "text", "text": "The capital of Spain is Madrid, of course."}]})
            assert wrong.choices[0].message.content == plain.choices[0].message.content
            assert wrong.usage.completion_tokens_details.rejected_prediction_tokens > 0
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=qa.messages,
                                           prediction={"type": "content", "content": 3})
        assert e.value.body["param"] == "prediction"
    finally:
        server.stop()
