"""Speculative decoding inside continuous batching (engines/batch_draft.py) on both
engines (tiny trained model): drafts verified in the batch's steps give the answers
of plain decoding, alone and next to another request; predictions are accepted and
counted; the drafting budget takes a draft only while the batch gains from it; and
`serve` with its defaults honours `prediction`."""

import threading

import pytest

from edge_chat.engines import EngineOptions, load_engine
from edge_chat.engines.batch_draft import PRIOR, SeqSpec, StepCost, plan
from edge_chat.engines.speculative import Drafters
from edge_chat.params import make_params

GREEDY = make_params(temperature=0)
COPY_ME = "Say hello. Say hello. What is the capital of France? Say hello."


class FlatCost(StepCost):
    """A step costs the same whatever its tokens, so every draft pays: verification is
    tested here whatever this machine's timing (the budget is tested on its own below)."""

    def record(self, n_tokens, seconds):
        pass

    def estimate(self, n, base):
        return 1.0


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def batch(request):
    path = (request.getfixturevalue("tiny_gguf")["f16"] if request.param == "gguf"
            else request.getfixturevalue("tiny_onnx")["fp32"])
    eng = load_engine(path, EngineOptions(threads=1, parallel=3, cache_ram="0"))
    assert eng.capabilities.slots == 3
    eng._cost = FlatCost()
    yield eng
    eng.close()


def chatml(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def run(engine, prompt, mode="auto", limit=40, **kw):
    """(token ids, the request's speculation statistics)."""
    engine.speculative = mode
    view = engine.session()
    out = []
    try:
        for tok in view.generate(prompt, GREEDY, **kw):
            out.append(tok.id)
            if len(out) >= limit:
                break
    finally:
        engine.speculative = "auto"
    return out, view.speculation


def test_drafts_in_the_batch_give_the_plain_answers(batch, tiny_qa):
    texts = [chatml(q) for q in ("What is the capital of France?", COPY_ME)]
    texts += ["".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                      for m in qa.messages) + "<|im_start|>assistant\n" for qa in tiny_qa[:3]]
    for prompt in map(batch.tokenize, texts):
        plain, stats = run(batch, prompt, mode="off")
        assert stats.rounds == 0
        assert run(batch, prompt, mode="lookup")[0] == plain
        got, stats = run(batch, prompt, mode="off", prediction=plain)
        assert got == plain
        if len(plain) > 2:
            assert stats.rounds > 0 and stats.prediction_accepted > 0
            assert stats.prediction_rejected == 0
        wrong = batch.tokenize("Grass is green. The sky is blue. 1, 2, 3, 4, 5.")
        got, stats = run(batch, prompt, mode="off", prediction=wrong)
        assert got == plain


def test_a_drafting_request_next_to_another_gets_both_plain_answers(batch, tiny_qa):
    a = batch.tokenize(chatml(COPY_ME))
    b = batch.tokenize(chatml("Count to five."))
    want_a, _ = run(batch, a, mode="off")
    want_b, _ = run(batch, b, mode="off")
    got = {}

    def other():
        got["b"], _ = run(batch, b, mode="off")

    t = threading.Thread(target=other)
    t.start()
    got["a"], stats = run(batch, a, prediction=want_a)
    t.join(timeout=120)
    assert got["a"] == want_a and got["b"] == want_b
    assert stats.prediction_accepted > 0


def _spec(rate: float) -> SeqSpec:
    s = SeqSpec(Drafters([]))
    s.rate = rate
    return s


def test_the_budget_takes_a_draft_only_while_the_batch_gains():
    cost = StepCost()
    for n, seconds in ((1, 0.020), (4, 0.030), (25, 0.060), (28, 0.070)):
        cost.record(n, 1.0)                 # a size's first pass (allocation) is not counted
        cost.record(n, seconds)
    draft = list(range(24))
    # alone: 1 + 0.9 x 24 tokens in 60 ms beat 1 token in 20 ms
    assert plan(cost, 1, [(_spec(0.9), draft)]) == {0}
    # alone with a poor draft: 1 + 0.02 x 24 tokens in 60 ms lose to 1 in 20 ms
    assert plan(cost, 1, [(_spec(0.02), draft)]) == set()
    # beside 3 others: 4 + 0.1 x 24 in 70 ms lose to 4 in 30 ms; 0.9 x 24 wins
    assert plan(cost, 4, [(_spec(0.1), draft)]) == set()
    assert plan(cost, 4, [(_spec(0.9), draft)]) == {0}
    # before anything is timed, a draft token costs COST_PER_DRAFT of a step
    assert plan(StepCost(), 1, [(_spec(PRIOR), draft)]) == {0}


def test_a_request_whose_drafts_lose_stops_drafting_for_a_while():
    s = _spec(0.15)
    s.settle(24, 0, produced=10)
    assert s.off_until == 10 + 16 and s.propose(20, 100) == []
    assert s.stats.rounds == 1 and s.stats.drafted == 24 and s.stats.accepted == 0


def test_predicted_outputs_with_serve_defaults(tiny_gguf, tiny_onnx, tiny_qa, tmp_path):
    """`edge_chat serve` with its defaults (batching) honours `prediction`: the same
    answer, accepted and rejected prediction tokens in usage."""
    import openai

    from tests.support.server import FAST, Server, make_store
    store = make_store(tmp_path / "store", {"tiny.gguf": tiny_gguf["f16"],
                                            "tiny-onnx": tiny_onnx["fp32"]})
    server = Server(store, *FAST, log=tmp_path / "server.log")
    try:
        client = openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0)
        assert server.health()["parallel"] > 1
        qa = tiny_qa[0]
        for model in ("tiny", "tiny-onnx"):
            plain = client.chat.completions.create(model=model, messages=qa.messages,
                                                   temperature=0)
            r = client.chat.completions.create(
                model=model, messages=qa.messages, temperature=0,
                prediction={"type": "content", "content": qa.answer})
            assert r.choices[0].message.content == plain.choices[0].message.content
            d = r.usage.completion_tokens_details
            assert d.accepted_prediction_tokens > 0 and d.rejected_prediction_tokens == 0
    finally:
        server.stop()
