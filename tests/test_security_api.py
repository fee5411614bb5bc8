"""Issue 14 on the API: validation before any job, the body limit and the byte check
before tokenizing, Host and Content-Type checks (CORS unchanged), model names, no
server path in errors, whole-number floats and logit_bias keys. A real `edge_chat
serve` on the tiny model, real HTTP clients."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import FAST, Server, error_of, make_store, no_eog, sse_events
from tests.support.tiny_model import TRAINED_QA

GGUF = "tiny-q8_0"
MSGS = TRAINED_QA[0].messages


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("security")
    store = make_store(tmp / "store", {"tiny-q8_0.gguf": tiny_gguf["q8_0"]})
    (store / "broken.gguf").write_bytes(Path(tiny_gguf["q8_0"]).read_bytes()[:5000])
    s = Server(store, *FAST, "--ctx-size", "512", "--max-body", "4MiB",
               "--cors-origin", "http://app.example", "--allowed-host", "api.example",
               log=tmp / "server.log")
    s.tmp = tmp
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


def chat(http, **body):
    return http.post("/chat/completions", json={"model": GGUF, "messages": MSGS, **body})


# -- point 2: every validation before a job starts ------------------------------------
def test_include_usage_must_be_a_boolean_and_starts_no_job(http, server):
    before = server.wait_idle()["stats"]
    for value in (1, "yes", None, [True]):
        r = chat(http, stream=True, max_tokens=200, stream_options={"include_usage": value})
        assert error_of(r, 400)["param"] == "stream_options"
    after = server.wait_idle()["stats"]
    assert after["requests"] == before["requests"]              # no job was queued
    r = chat(http, stream=True, stream_options={"include_usage": True}, temperature=0)
    events = sse_events(r)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] > 0


# -- point 3: body limit, byte check before tokenizing ----------------------------------
def test_big_body_is_413_at_once_while_another_client_streams(http, server, tiny_gguf):
    body = {"model": GGUF, "messages": MSGS, "stream": True, "max_tokens": 400,
            "temperature": 1.0, "seed": 3, "logit_bias": no_eog(tiny_gguf["q8_0"])}
    seen_after: list[int] = []
    with http.stream("POST", "/chat/completions", json=body) as long:
        assert long.status_code == 200
        lines = long.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
        huge = b'{"model": "tiny-q8_0", "messages": [{"role": "user", "content": "' \
            + b"a" * (20 * 1024 * 1024) + b'"}]}'
        r = httpx.post(f"{server.url}/chat/completions", content=huge, timeout=60,
                       headers={"content-type": "application/json"})
        e = error_of(r, 413)
        assert e["code"] == "request_too_large"

        def chunks():                                      # no Content-Length: chunked
            for _ in range(40):
                yield b"x" * (512 * 1024)

        r = httpx.post(f"{server.url}/chat/completions", content=chunks(), timeout=60,
                       headers={"content-type": "application/json"})
        assert error_of(r, 413)["code"] == "request_too_large"
        for line in lines:                                 # the other client kept streaming
            if line.startswith("data: {"):
                seen_after.append(1)
                if len(seen_after) > 20:
                    break
    assert len(seen_after) > 20


def test_text_that_cannot_fit_is_rejected_before_tokenizing(http, server):
    before = server.wait_idle()["stats"]["requests"]
    big = [{"role": "user", "content": "word " * 700_000}]         # 3.5 MB, window 512
    e = error_of(http.post("/chat/completions", json={"model": GGUF, "messages": big}), 400)
    assert e["code"] == "context_length_exceeded" and "bytes" in e["message"]
    r = http.post("/completions", json={"model": GGUF, "prompt": "word " * 700_000})
    assert error_of(r, 400)["code"] == "context_length_exceeded"
    assert server.wait_idle()["stats"]["requests"] == before         # no job was queued


# -- point 4: names, paths ----------------------------------------------------------------
@pytest.mark.parametrize("name", ["x" * 256, "é" * 200, "a\x1bb", "a\nb", "\udcff"])
def test_bad_model_names_are_404_without_paths(http, server, name):
    r = http.post("/chat/completions", content=json.dumps({"model": name, "messages": MSGS}),
                  headers={"content-type": "application/json"})
    if r.status_code == 400:                      # a lone surrogate is not valid JSON text
        return
    e = error_of(r, 404)
    assert e["code"] == "model_not_found" and str(server.tmp) not in e["message"]
    assert len(e["message"]) < 300
    assert error_of(http.get(f"/models/{'y' * 300}"), 404)["code"] == "model_not_found"


def test_load_errors_name_no_server_path(http, server):
    e = error_of(chat(http, model="broken"), 400)
    assert "broken" in e["message"] and str(server.tmp) not in e["message"], e
    assert not re.search(r"(^|[\s'(])/\w", e["message"]), e


# -- point 6: Host allow-list, JSON only, CORS kept ------------------------------------------
@pytest.mark.parametrize("host,ok", [
    ("evil.example", False), ("evil.example:8000", False), ("127.0.0.1.evil.example", False),
    ("localhost", True), ("LOCALHOST:1234", True), ("127.0.0.1", True), ("[::1]:80", True),
    ("api.example", True), ("api.example:443", True)])
def test_host_header_allow_list(server, host, ok):
    r = httpx.get(f"{server.url}/models", headers={"Host": host}, timeout=30)
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert error_of(r, 403)["code"] == "host_not_allowed"
        r = httpx.post(f"{server.url}/chat/completions", headers={"Host": host}, timeout=30,
                       json={"model": GGUF, "messages": MSGS})
        assert r.status_code == 403
    assert httpx.get(f"{server.root}/health", headers={"Host": host}).status_code \
        == (200 if ok else 403)


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/jsonx"])
def test_post_needs_json_content_type(server, ctype):
    before = server.health()["stats"]["requests"]
    headers = {"content-type": ctype} if ctype else {}
    body = b'{"model": "tiny-q8_0", "messages": [{"role": "user", "content": "Hi"}]}'
    r = httpx.post(f"{server.url}/chat/completions", content=body, headers=headers, timeout=30)
    assert error_of(r, 415)["code"] == "unsupported_media_type"
    assert server.health()["stats"]["requests"] == before
    ok = httpx.post(f"{server.url}/chat/completions", content=body, timeout=60,
                    headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_cors_still_answers_the_allowed_origin(server):
    r = httpx.options(f"{server.url}/chat/completions", timeout=30, headers={
        "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    r = httpx.post(f"{server.url}/chat/completions", timeout=60,
                   headers={"Origin": "http://app.example"},
                   json={"model": GGUF, "messages": MSGS, "max_tokens": 2})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    r = httpx.post(f"{server.url}/chat/completions", timeout=60, content=b"{}",
                   headers={"Origin": "http://evil.example", "content-type": "text/plain"})
    assert r.status_code == 415 and "access-control-allow-origin" not in r.headers


# -- point 8: whole-number floats, logit_bias keys --------------------------------------------
def test_whole_number_floats_are_integers(http, server):
    r = chat(http, max_tokens=3.0, n=2.0, seed=7.0, temperature=0)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 2 and r.json()["usage"]["completion_tokens"] <= 6
    for field in ("max_tokens", "n", "seed", "top_k", "max_completion_tokens"):
        assert error_of(chat(http, **{field: 2.5}), 400)["param"] == field
    r = openai.OpenAI(base_url=server.url, api_key="x", max_retries=0).chat.completions \
        .create(model=GGUF, messages=MSGS, max_tokens=2, temperature=0,
                extra_body={"max_tokens": 2.0})
    assert r.choices[0].finish_reason in ("length", "stop")


@pytest.mark.parametrize("key", ["7_0", " 7", "7 ", "+7", "٧", "0x1f", "1e2", "", "7.0"])
def test_logit_bias_keys_are_plain_decimal(http, key):
    assert error_of(chat(http, logit_bias={key: 1}), 400)["param"] == "logit_bias"


def test_host_policy_of_a_server_on_the_network():
    """Bound to 0.0.0.0 the server answers IP literals and this machine's name (clients
    on the network), never another domain name (what a DNS-rebinding page sends)."""
    import socket

    from edge_chat.server.guard import HostPolicy
    p = HostPolicy("0.0.0.0")
    for ok in ("192.168.1.20:8000", "[fe80::1]:80", "localhost", socket.gethostname(), None):
        assert p.allows(ok), ok
    for bad in ("evil.example", "192.168.1.20.nip.io", "attacker.localhost.evil"):
        assert not p.allows(bad), bad
    local = HostPolicy("127.0.0.1", ["api.example"])
    assert not local.allows("192.168.1.20") and local.allows("api.example:1")
    assert HostPolicy("127.0.0.1", ["*"]).allows("anything.example")
