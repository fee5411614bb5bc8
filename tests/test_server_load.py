"""Concurrency: a bounded per-model queue (503 beyond it), and clients that
leave stop their generation (counted by the server's /health stats)."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.server import FAST, Server, make_store, no_eog
from tests.support.tiny_model import TRAINED_QA

GGUF = "tiny-q8_0"
LONG = 4000      # tokens; the window is 4096


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load")
    store = make_store(tmp / "store", {"tiny-q8_0.gguf": tiny_gguf["q8_0"]})
    s = Server(store, *FAST, "--parallel", "1", "--max-queue", "4", "--ctx-size", "4096",
               log=tmp / "server.log")
    s.no_eog = no_eog(tiny_gguf["q8_0"])
    yield s
    s.stop()


def long_body(server, **kw) -> dict:
    """An answer that goes on until max_tokens: the end-of-turn tokens are banned."""
    return {"model": GGUF, "messages": TRAINED_QA[0].messages, "temperature": 1.0, "seed": 3,
            "max_tokens": LONG, "logit_bias": server.no_eog, **kw}


def stats(server) -> dict:
    return server.health()["stats"]


def test_16_streaming_clients_with_queue_of_4(server):
    n_clients, max_tokens = 16, 1000
    start = threading.Barrier(n_clients)

    def client(i: int):
        qa = TRAINED_QA[i % len(TRAINED_QA)]
        body = {"model": GGUF, "messages": qa.messages, "temperature": 0, "stream": True,
                "max_tokens": max_tokens, "logit_bias": server.no_eog,
                "stream_options": {"include_usage": True}}
        with httpx.Client(timeout=300) as c:
            start.wait()
            with c.stream("POST", f"{server.url}/chat/completions", json=body) as r:
                if r.status_code == 503:
                    r.read()
                    return qa, 503, r.json(), r.headers.get("retry-after")
                assert r.status_code == 200, r.read()
                datas = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
        return qa, 200, datas, None

    with ThreadPoolExecutor(n_clients) as pool:
        results = list(pool.map(client, range(n_clients)))
    ok = busy = 0
    for qa, status, payload, retry in results:
        if status == 503:
            busy += 1
            assert payload["error"]["type"] == "server_error" and retry
            continue
        ok += 1
        assert payload[-1] == "[DONE]"
        chunks = [json.loads(d) for d in payload[:-1]]
        text = "".join(c["choices"][0]["delta"].get("content", "")
                       for c in chunks if c["choices"])
        assert text.startswith(qa.answer)            # greedy: the trained answer, then more
        assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] \
            == "length"
        assert chunks[-1]["usage"]["completion_tokens"] == max_tokens
    assert ok + busy == n_clients and ok >= 5 and busy >= 1, (ok, busy)
    h = server.wait_idle()
    assert h["status"] == "ok" and h["stats"]["rejected"] >= busy


def _generated_after(server, before: dict) -> int:
    time.sleep(0.3)
    after = server.wait_idle()["stats"]
    return after["tokens_generated"] - before["tokens_generated"]


def test_disconnect_mid_stream_stops_generation(server):
    before = stats(server)
    body = long_body(server, stream=True, n=4)
    with httpx.stream("POST", f"{server.url}/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        seen = 0
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"] \
                    .get("content"):
                seen += 1
                if seen == 3:
                    break
    generated = _generated_after(server, before)
    after = stats(server)
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["max_cancel_overrun"] <= 2          # stopped within two tokens of the cancel
    assert 3 <= generated < LONG, generated           # far from the 4 x 4000 asked


def test_disconnect_of_non_streamed_request(server):
    before = stats(server)
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/chat/completions", json=long_body(server, n=4),
                   timeout=httpx.Timeout(60, read=0.5))
    generated = _generated_after(server, before)
    assert stats(server)["cancelled"] == before["cancelled"] + 1
    assert generated < LONG * 2, generated


def test_queued_client_that_leaves_is_dropped(server):
    before = stats(server)
    with httpx.stream("POST", f"{server.url}/chat/completions",
                      json=long_body(server, stream=True, n=4), timeout=60) as r:
        next(ln for ln in r.iter_lines() if '"content"' in ln)
        with pytest.raises(httpx.TimeoutException):      # waits behind the stream, gives up
            httpx.post(f"{server.url}/chat/completions", json=long_body(server),
                       timeout=httpx.Timeout(60, read=0.6))
    generated = _generated_after(server, before)
    after = stats(server)
    assert after["cancelled"] == before["cancelled"] + 2
    assert after["requests"] == before["requests"] + 2
    assert generated < LONG * 4, generated


def test_health_after_load(server):
    h = server.health()
    assert h["status"] == "ok" and [m["id"] for m in h["loaded"]] == [GGUF]
    assert h["loaded"][0]["pending"] == 0 and not h["loaded"][0]["busy"]
    r = httpx.post(f"{server.url}/chat/completions", timeout=60, json={
        "model": GGUF, "messages": TRAINED_QA[0].messages, "temperature": 0})
    assert r.json()["choices"][0]["message"]["content"] == TRAINED_QA[0].answer
