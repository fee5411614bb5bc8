"""Continuous batching (`serve --parallel N`, engines/batch.py) on the tiny model, GGUF
and the fused ONNX graph: concurrent greedy answers equal lone ones, per-request
sampling/stop/max_tokens, disconnects free their slot, 50 clients through 4 slots, the
queue's 503, a long prompt prefilled in chunks between the running streams' steps, slot
prefix reuse, a new request packed next to the running ones, idle sequences between
running ones keeping their cache."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from edge_chat.params import SamplingParams
from edge_chat.engines import EngineOptions, load_engine
from tests.support.server import FAST, Server, chatml, make_store, no_eog, sse_events
from tests.support.tiny_model import TRAINED_QA

GGUF = "tiny-q8_0"
ONNX = "tiny-onnx-int4"
#: 20 different prompts: the trained questions, then variations the model did not learn
PROMPTS = [qa.messages for qa in TRAINED_QA] + \
    [[{"role": "user", "content": f"Tell me about the number {i}."}] for i in range(20)]
PROMPTS = PROMPTS[:20]


def tiny_model(kind: str, request) -> tuple[str, dict]:
    """(model name, store files) of the tiny model as GGUF q8_0 or fused-graph ONNX int4."""
    if kind == "gguf":
        return GGUF, {"tiny-q8_0.gguf": request.getfixturevalue("tiny_gguf")["q8_0"]}
    return ONNX, {ONNX: request.getfixturevalue("tiny_onnx")["int4"]}


@pytest.fixture(scope="module", params=["gguf", "onnx"])
def servers(request, tiny_gguf, tmp_path_factory):
    """A server batching 4 requests and one serving one at a time, same model."""
    tmp = tmp_path_factory.mktemp("batching")
    model, files = tiny_model(request.param, request)
    store = make_store(tmp / "store", files)
    ctx = 4096 if request.param == "gguf" else 1024     # the ONNX graph's trained window
    batched = Server(store, *FAST, "--parallel", "4", "--max-queue", "64", "--ctx-size",
                     str(ctx), log=tmp / "batched.log")
    try:
        alone = Server(store, *FAST, "--parallel", "1", "--ctx-size", str(ctx // 4),
                       log=tmp / "alone.log")
    except BaseException:
        batched.stop()
        raise
    batched.no_eog = no_eog(tiny_gguf["q8_0"])      # one tokenizer for both formats
    batched.model = alone.model = model
    batched.ctx = ctx
    yield batched, alone
    batched.stop()
    alone.stop()


def client(server):
    from openai import OpenAI
    return OpenAI(base_url=server.url, api_key="none", max_retries=0, timeout=120)


def ask(server, messages, **kw) -> tuple[list[str], list[str], int]:
    """(texts, finish reasons, completion tokens) of a chat completion."""
    r = client(server).chat.completions.create(model=server.model, messages=messages, **kw)
    return ([c.message.content for c in r.choices], [c.finish_reason for c in r.choices],
            r.usage.completion_tokens)


def concurrently(fn, items, workers: int | None = None) -> list:
    """fn(item) for every item, all started at once."""
    items = list(items)
    start = threading.Barrier(len(items) if workers is None else workers)

    def run(item):
        start.wait(60)
        return fn(item)
    with ThreadPoolExecutor(workers or len(items)) as pool:
        return list(pool.map(run, items))


def test_concurrent_greedy_answers_equal_lone_answers(servers):
    batched, alone = servers
    kw = {"temperature": 0, "max_tokens": 24, "logit_bias": batched.no_eog}
    lone = [ask(alone, m, **kw) for m in PROMPTS]
    lone_same_server = [ask(batched, m, **kw) for m in PROMPTS[:5]]
    together = concurrently(lambda m: ask(batched, m, **kw), PROMPTS)
    assert lone_same_server == lone[:5]
    for got, want in zip(together, lone):
        assert got == want
        assert got[1] == ["length"] and got[2] == 24
    # the trained answers are still the trained answers
    short = concurrently(lambda qa: ask(batched, qa.messages, temperature=0)[0][0],
                         TRAINED_QA[:8])
    assert short == [qa.answer for qa in TRAINED_QA[:8]]
    h = batched.wait_idle()
    m = h["loaded"][0]
    assert h["parallel"] == 4 and m["slots"] == 4 and m["ctx_per_slot"] == batched.ctx
    assert m["kv_bytes_total"] == 4 * m["kv_bytes_per_slot"] > 0
    one = alone.wait_idle()["loaded"][0]          # --parallel 1: one slot of the same size
    assert one["slots"] == 1 and one["kv_bytes_total"] == one["kv_bytes_per_slot"] > 0
    assert one["kv_bytes_per_slot"] == m["kv_bytes_per_slot"] // 4   # a quarter of the window


def test_per_request_seed_stop_max_tokens_and_n(servers):
    batched, alone = servers
    msgs = TRAINED_QA[0].messages
    requests = [
        {"temperature": 1.0, "seed": 1, "max_tokens": 12, "logit_bias": batched.no_eog},
        {"temperature": 1.0, "seed": 2, "max_tokens": 20, "logit_bias": batched.no_eog},
        {"temperature": 0.7, "top_p": 0.9, "seed": 3, "max_tokens": 7, "n": 3},
        {"temperature": 0, "stop": ["Paris"], "max_tokens": 30},
        {"temperature": 0, "stop": ["is"], "max_tokens": 30},
        {"temperature": 0, "max_tokens": 3},
        {"temperature": 1.2, "seed": 9, "presence_penalty": 1.0, "max_tokens": 16},
        {"temperature": 0, "max_tokens": 16, "logprobs": True, "top_logprobs": 2},
        {"temperature": 0, "max_tokens": 24, "response_format": {"type": "json_object"}},
        {"temperature": 0.8, "seed": 4, "max_tokens": 24,
         "response_format": {"type": "json_object"}},
    ]
    lone = [ask(alone, msgs, **kw) for kw in requests]
    together = concurrently(lambda kw: ask(batched, msgs, **kw), requests)
    assert together == lone
    assert together[3][0] == ["The capital of France is "] and together[3][1] == ["stop"]
    assert together[5][1] == ["length"] and together[5][2] == 3
    assert len(together[2][0]) == 3 and together[0][0] != together[1][0]
    assert together[8][0][0].lstrip().startswith("{")      # the grammar held under batching


def test_disconnects_free_their_slots(servers):
    batched, _ = servers
    body = {"model": batched.model, "messages": TRAINED_QA[0].messages, "temperature": 1.0,
            "seed": 5,
            "stream": True, "max_tokens": batched.ctx - 100, "logit_bias": batched.no_eog}
    before = batched.health()["stats"]
    with httpx.Client(timeout=60) as c:
        streams = [c.stream("POST", f"{batched.url}/chat/completions", json=body)
                   for _ in range(4)]
        responses = [s.__enter__() for s in streams]
        lines = [r.iter_lines() for r in responses]
        for it in lines:                         # all four slots are decoding
            next(ln for ln in it if '"content"' in ln)
        for s in streams[:2]:                   # two clients leave
            s.__exit__(None, None, None)
        # their slots serve new requests while the other two streams still run
        got = concurrently(lambda qa: ask(batched, qa.messages, temperature=0)[0][0],
                           TRAINED_QA[:2])
        assert got == [qa.answer for qa in TRAINED_QA[:2]]
        assert batched.health()["loaded"][0]["running"] >= 2    # the two streams
        for it in lines[2:]:
            next(ln for ln in it if '"content"' in ln)          # still streaming
        for s in streams[2:]:
            s.__exit__(None, None, None)
    h = batched.wait_idle()
    assert h["stats"]["cancelled"] == before["cancelled"] + 4
    assert h["stats"]["max_cancel_overrun"] <= 2      # each stopped within two steps


def test_fifty_clients_through_four_slots(servers):
    batched, alone = servers
    qas = [TRAINED_QA[i % 11] for i in range(50)]

    def one(qa):
        body = {"model": batched.model, "prompt": chatml(qa.messages), "temperature": 0,
                "max_tokens": 32, "stream": True}
        with httpx.Client(timeout=120) as c:
            with c.stream("POST", f"{batched.url}/completions", json=body) as r:
                assert r.status_code == 200, r.read()
                events = sse_events(r)
        assert events[-1] == "[DONE]"
        return "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"])

    texts = concurrently(one, qas)
    assert texts == [qa.answer for qa in qas]          # none garbled, none mixed up
    h = batched.wait_idle()
    assert h["status"] == "ok" and h["loaded"][0]["running"] == 0


def test_queue_full_beyond_slots_is_503(tiny_gguf, tmp_path):
    store = make_store(tmp_path / "store", {"tiny-q8_0.gguf": tiny_gguf["q8_0"]})
    s = Server(store, *FAST, "--parallel", "2", "--max-queue", "1", "--ctx-size", "2048",
               log=tmp_path / "server.log")
    try:
        body = {"model": GGUF, "messages": TRAINED_QA[0].messages, "temperature": 0,
                "max_tokens": 1500, "logit_bias": no_eog(tiny_gguf["q8_0"])}
        statuses = concurrently(lambda _: httpx.post(f"{s.url}/chat/completions", json=body,
                                                     timeout=300).status_code, range(6))
        assert sorted(statuses) == [200, 200, 200, 503, 503, 503]
    finally:
        s.stop()


# -- the scheduler, in process ---------------------------------------------------------
@pytest.fixture(scope="module", params=["gguf", "onnx"])
def batch_engine(request, tiny_gguf):
    _, files = tiny_model(request.param, request)
    # the scheduler alone: no prompt cache (tests/test_prompt_cache.py tests it)
    engine = load_engine(next(iter(files.values())),
                         EngineOptions(threads=1, parallel=4, n_ctx=2048, cache_ram="0"))
    yield engine
    engine.close()


def tokens_of(engine, messages) -> list[int]:
    return engine.tokenize(chatml(messages))


def drain(gen, n: int) -> list[int]:
    out = []
    for tok in gen:
        out.append(tok.id)
        if len(out) >= n:
            break
    gen.close()
    return out


def test_long_prompt_is_prefilled_between_decode_steps(batch_engine, tiny_gguf):
    eng = batch_engine
    ban = {int(t): -100.0 for t in no_eog(tiny_gguf["q8_0"])}
    params = SamplingParams(temperature=0, max_tokens=400, logit_bias=ban)
    steps: list[list[tuple]] = []
    eng.on_step = steps.append
    try:
        streams = [eng.session().generate(tokens_of(eng, qa.messages), params)
                   for qa in TRAINED_QA[:3]]
        firsts = [next(g) for g in streams]          # three sequences decoding
        assert all(firsts)
        # 1,800 tokens (900 on the ONNX one: its graph's window is the trained 1,024)
        long_prompt = tokens_of(eng, [{"role": "user", "content": "word " * 2000}])[
            :min(1800, eng.info.n_ctx - 124)]
        pumps = [threading.Thread(target=drain, args=(g, 300)) for g in streams]
        for p in pumps:
            p.start()
        start = len(steps)
        first_long = drain(eng.session().generate(long_prompt, params), 1)
        for p in pumps:
            p.join(120)
    finally:
        eng.on_step = None
    assert first_long
    chunks = [(i, ev[2]) for i, step in enumerate(steps) if i >= start
              for ev in step if ev[0] == "prefill"]
    assert len(chunks) >= 4 and sum(n for _, n in chunks) == len(long_prompt) - 1
    for i, n in chunks:
        decoded = {ev[1] for ev in steps[i] if ev[0] == "decode"}
        # while the streams run, every prefill step is also a decode step of all three
        if any(ev[0] == "decode" for ev in steps[i]):
            assert len(decoded) == 3
    assert sum(1 for i, _ in chunks if len(steps[i]) > 1) >= 3


def test_a_conversation_coming_back_reuses_its_slot(batch_engine):
    eng = batch_engine
    params = SamplingParams(temperature=0)
    convs = [tokens_of(eng, qa.messages) for qa in TRAINED_QA[:4]]
    answers = []
    for prompt in convs:                            # four conversations fill four slots
        s = eng.session()
        answers.append(drain(s.generate(prompt, params), 64))
    for prompt, answer in zip(convs, answers):      # each comes back with a follow-up
        follow = prompt + answer + eng.tokenize("\n<|im_start|>user\nAnd?<|im_end|>\n")
        s = eng.session()
        drain(s.generate(follow, params), 4)
        # the cache held the prompt and the answer but its last (end-of-turn) token
        assert s.n_prompt_evaluated == len(follow) - (len(prompt) + len(answer) - 1)
    again = eng.session()                          # the same prompt again (regenerate)
    assert drain(again.generate(convs[0], params), 64) == answers[0]
    assert again.n_prompt_evaluated == 1            # only its last token, for fresh logits


def test_a_new_request_joins_next_to_the_running_ones(batch_engine, tiny_gguf):
    """A step computes every sequence from the first running one to the last (ONNX: a
    batch row each, llama.cpp: a KV stream each), so a request arriving while others
    run takes a free slot next to them, not the least recently used one."""
    eng = batch_engine
    greedy = SamplingParams(temperature=0)
    prompts = [tokens_of(eng, [{"role": "user", "content": f"Slot test {i}, hello."}])
               for i in range(6)]

    def slot_of(prompt):
        return next(s.seq for s in eng.slots if s.kv.common_prefix(prompt) >= len(prompt) - 1)

    for p in prompts[:4]:                   # one after another: each takes a slot of its own
        drain(eng.session().generate(p, greedy), 2)
    held = {slot_of(p): p for p in prompts[:4]}
    assert sorted(held) == [0, 1, 2, 3]
    for seq in (1, 3):                      # back again: slots 1 and 3 are the newest
        drain(eng.session().generate(held[seq], greedy), 2)
    # least recently used now: 0 and 2, in some order
    endless = SamplingParams(temperature=0, max_tokens=500,
                             logit_bias={int(t): -100.0 for t in no_eog(tiny_gguf["q8_0"])})
    first = eng.session().generate(prompts[4], endless)
    second = eng.session().generate(prompts[5], endless)
    try:
        next(first)
        a = next(s.seq for s in eng.slots if s.req is not None)
        assert a in (0, 2)
        next(second)
        b = next(s.seq for s in eng.slots if s.req is not None and s.seq != a)
    finally:
        first.close()
        second.close()
    assert abs(b - a) == 1          # next to the running one, not the other LRU slot (2 - a)


def test_idle_sequences_between_running_ones_keep_their_cache(batch_engine):
    """Sequences 0 and 2 decode in one batch while 1 holds a prompt (the ONNX batch
    spans it with a throwaway row): 1 then continues exactly as a lone generation."""
    eng = batch_engine.engine
    prompts = [tokens_of(eng, qa.messages) for qa in TRAINED_QA[:3]]
    for s, p in enumerate(prompts):
        eng.trim_seq(s, 0)
        eng.decode_many([(s, 0, p[:-1], False)])
    pending = {s: p[-1] for s, p in enumerate(prompts)}
    pos = {s: len(p) - 1 for s, p in enumerate(prompts)}
    outs: dict[int, list[int]] = {0: [], 1: [], 2: []}

    def step(seqs):
        rows = eng.decode_many([(s, pos[s], [pending[s]], True) for s in seqs])
        for s, row in zip(seqs, rows):
            pos[s] += 1
            pending[s] = int(row.argmax())
            outs[s].append(pending[s])
    try:
        for _ in range(6):
            step([0, 2])
        for _ in range(6):
            step([1])
    finally:        # the slots' records no longer match what their sequences hold
        for slot in batch_engine.slots:
            slot.kv.trim(eng.trim_seq(slot.seq, 0))
    lone = load_engine(eng.info.path, EngineOptions(threads=1, n_ctx=2048))
    try:
        answers = {s: drain(lone.generate(p, SamplingParams(temperature=0)), 6)
                   for s, p in enumerate(prompts)}
    finally:
        lone.close()
    assert outs == answers


@pytest.mark.parametrize("graph", ["optimum", "int8"])
def test_onnx_models_that_cannot_batch_serve_one_request_at_a_time(graph, tiny_onnx,
                                                                  tiny_onnx_optimum, tmp_path):
    """optimum's graph (a growing KV cache) and int8 (activations quantized over the whole
    batch, so a row would depend on the others) fall back, saying why."""
    folder = tiny_onnx_optimum if graph == "optimum" else tiny_onnx["int8"]
    store = make_store(tmp_path / "store", {"tiny-onnx": folder})
    s = Server(store, *FAST, "--parallel", "4",
               log=tmp_path / "server.log")
    try:
        qas = TRAINED_QA[:4]

        def one(qa):
            r = httpx.post(f"{s.url}/chat/completions", timeout=120, json={
                "model": "tiny-onnx", "messages": qa.messages, "temperature": 0})
            return r.json()["choices"][0]["message"]["content"]

        assert concurrently(one, qas) == [qa.answer for qa in qas]
        m = s.wait_idle()["loaded"][0]
        assert m["slots"] == 1 and m["ctx_per_slot"] > 0
        assert "serves one request at a time" in s.output()
        assert ("fused graph" if graph == "optimum" else "int8") in s.output()
    finally:
        s.stop()


def test_cancel_frees_the_slot_within_two_steps(batch_engine, tiny_gguf):
    eng = batch_engine
    ban = {int(t): -100.0 for t in no_eog(tiny_gguf["q8_0"])}
    params = SamplingParams(temperature=0, max_tokens=400, logit_bias=ban)
    steps: list[list[tuple]] = []
    sessions = [eng.session() for _ in range(2)]
    gens = [s.generate(tokens_of(eng, qa.messages), params)
            for s, qa in zip(sessions, TRAINED_QA[3:5])]
    for g in gens:
        next(g)
    seqs = set()
    eng.on_step = steps.append
    try:
        while len(steps) < 3:           # both decode, step after step
            next(gens[0])
        seqs = {ev[1] for ev in steps[-1] if ev[0] == "decode"}
        assert len(seqs) == 2
        mark = len(steps)
        sessions[1].cancel()            # the client of the second one left
        for _ in range(6):
            next(gens[0])
    finally:
        eng.on_step = None
        for g in gens:
            g.close()
    after = [{ev[1] for ev in step if ev[0] == "decode"} for step in steps[mark:]]
    assert len(after) >= 3 and all(len(s) == 1 for s in after[2:])


# -- the real Qwen --------------------------------------------------------------------
@pytest.mark.real_model
@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_real_qwen_four_clients_at_once(fmt, request, tmp_path):
    """Four different questions decoded together on the real model (Q4_K_M GGUF, our int4
    ONNX): every answer right, each stream and the server's counts intact. (Greedy answers
    are not asserted equal to lone ones on quantized weights: batched and single-row kernels
    round differently - README.)"""
    if fmt == "gguf":
        files = {"qwen.gguf": request.getfixturevalue("real_qwen_gguf")}
    else:
        files = {"qwen": request.getfixturevalue("real_qwen_converted").get("onnx", "int4")}
    store = make_store(tmp_path / "store", files)
    s = Server(store, *FAST, "--parallel", "4", "--ctx-size", "1024", log=tmp_path / "s.log",
               timeout=180)
    try:
        asks = [("What is the capital of France? One word.", "Paris"),
                ("What is the capital of Germany? One word.", "Berlin"),
                ("What is the capital of Japan? One word.", "Tokyo"),
                ("What is 2 + 2? Answer with a digit.", "4")]

        def one(item):
            q, _ = item
            r = httpx.post(f"{s.url}/chat/completions", timeout=600, json={
                "model": "qwen", "messages": [{"role": "user", "content": q}],
                "temperature": 0, "max_tokens": 24})
            return r.json()["choices"][0]["message"]["content"]

        answers = concurrently(one, asks)
        for (q, want), got in zip(asks, answers):
            assert want in got, (q, got)
        m = s.wait_idle()["loaded"][0]
        # K and V: 24 layers x 2 KV heads x 64 dims x 2 (K, V) x 2 bytes (f16) or 4 (fp32)
        per_value = 2 if fmt == "gguf" else 4
        assert m["slots"] == 4
        assert m["kv_bytes_per_slot"] == 1024 * 24 * 2 * 64 * 2 * per_value
    finally:
        s.stop()
