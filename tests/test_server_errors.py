"""Every error of the API in OpenAI's shape, over raw HTTP (httpx) and the
openai client: 400 (with param), context_length_exceeded, 401, 404, 405, 503."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.server import FAST, Server, error_of, make_store, no_eog
from tests.support.tiny_model import TRAINED_QA

KEY = "sk-test-secret"
GGUF = "tiny-q8_0"
MSGS = TRAINED_QA[0].messages


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    store = make_store(tmp / "store", {"tiny-q8_0.gguf": tiny_gguf["q8_0"]})
    (tmp / "secret.gguf").write_bytes(b"GGUF not really")       # outside the store
    s = Server(store, *FAST, "--parallel", "1", "--api-key", KEY, "--max-queue", "0",
               "--ctx-size", "4096",
               log=tmp / "server.log")
    s.outside = tmp / "secret.gguf"
    yield s
    s.stop()


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"},
                      timeout=60) as c:
        yield c


def chat(http, **body):
    return http.post("/chat/completions", json={"model": GGUF, "messages": MSGS, **body})


# -- 401 ------------------------------------------------------------------------
def test_api_key_required(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                    {"Authorization": "Basic " + KEY}):
        for method, path in (("GET", "/models"), ("POST", "/chat/completions"),
                             ("GET", f"/models/{GGUF}"), ("POST", "/completions")):
            r = httpx.request(method, server.url + path, headers=headers, json={}, timeout=10)
            e = error_of(r, 401)
            assert e["code"] == "invalid_api_key" and KEY not in e["message"]
    assert httpx.get(f"{server.root}/health").status_code == 200          # open
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url, api_key="nope", max_retries=0).models.list()
    ok = openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0)
    assert ok.chat.completions.create(model=GGUF, messages=MSGS, temperature=0) \
        .choices[0].message.content == TRAINED_QA[0].answer


# -- 400: bodies and types ---------------------------------------------------------
@pytest.mark.parametrize("raw", [b"{not json", b"", b"   ", b"[1, 2]", b'"text"', b"null",
                                 b'{"model": "x",', b"\xff\xfe"])
def test_malformed_body(http, raw):
    r = http.post("/chat/completions", content=raw, headers={"content-type": "application/json"})
    e = error_of(r, 400)
    assert e["type"] == "invalid_request_error"


@pytest.mark.parametrize("field,value", [
    ("temperature", "hot"), ("temperature", "0.5"), ("temperature", 5), ("temperature", -1),
    ("top_p", 2), ("n", True), ("n", 0), ("n", 1.5), ("max_tokens", "10"), ("max_tokens", 0),
    ("max_completion_tokens", -3), ("stop", [1]), ("stop", ["a", "b", "c", "d", "e"]),
    ("stop", {"x": 1}), ("seed", "s"), ("seed", -1), ("stream", "yes"), ("logit_bias", [1]),
    ("logit_bias", {"x": 1}), ("logit_bias", {"5": 500}), ("presence_penalty", 9),
    ("frequency_penalty", "0"), ("top_k", -1), ("min_p", 3), ("repeat_penalty", 0),
    ("model", 5), ("user", 1), ("tools", "f"), ("response_format", "json"),
    ("stream_options", 1),
])
def test_wrong_types_name_the_field(http, field, value):
    e = error_of(chat(http, **{field: value}), 400)
    assert e["param"] == field, e
    assert field in e["message"]


@pytest.mark.parametrize("messages,param", [
    ([], "messages"), ("hi", "messages"), (None, "messages"), ({"role": "user"}, "messages"),
    ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
    ([{"content": "hi"}], "messages[0].role"),
    ([{"role": "user", "content": "a"}, "b"], "messages[1]"),
    ([{"role": "user", "content": 5}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content"),
])
def test_bad_messages(http, messages, param):
    r = http.post("/chat/completions", json={"model": GGUF, "messages": messages})
    assert error_of(r, 400)["param"] == param


def test_missing_fields(http):
    assert error_of(http.post("/chat/completions", json={"model": GGUF}), 400)["param"] \
        == "messages"
    assert error_of(http.post("/completions", json={"model": GGUF}), 400)["param"] == "prompt"
    assert error_of(http.post("/completions", json={"model": GGUF, "prompt": ["a", "b"]}),
                    400)["param"] == "prompt"
    # the only model of the server is the default
    r = http.post("/chat/completions", json={"messages": MSGS, "temperature": 0})
    assert r.status_code == 200 and r.json()["model"] == GGUF


def test_bad_response_format(http):
    for rf in ({"type": "xml"}, {"type": "json_schema"},
               {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}):
        assert error_of(chat(http, response_format=rf), 400)["param"] == "response_format"


def test_streamed_request_errors_are_json_not_sse(http):
    r = chat(http, stream=True, temperature=9)
    assert error_of(r, 400)["param"] == "temperature"


# -- 400: context window --------------------------------------------------------------
def test_huge_max_tokens(http):
    for body in ({"max_tokens": 10**9}, {"max_completion_tokens": 4096}):
        e = error_of(chat(http, **body), 400)
        assert e["code"] == "context_length_exceeded" and e["param"] == "messages"
    r = http.post("/completions", json={"model": GGUF, "prompt": "Hi", "max_tokens": 10**6})
    assert error_of(r, 400)["code"] == "context_length_exceeded"


def test_prompt_too_long(http, server):
    long = [{"role": "user", "content": "The quick brown fox. " * 3000}]
    e = error_of(http.post("/chat/completions", json={"model": GGUF, "messages": long}), 400)
    assert e["code"] == "context_length_exceeded" and "4096" in e["message"]
    with pytest.raises(openai.BadRequestError) as exc:
        openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0).chat.completions.create(
            model=GGUF, messages=long)
    assert exc.value.code == "context_length_exceeded"


# -- 404 / 405 ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["no-such-model", "../tiny-q8_0", "../../etc/passwd",
                                  "/etc/passwd", "store/tiny-q8_0", "..", ".", "", "~",
                                  "tiny-q8_0/../tiny-q8_0", "..\\secret", "../secret",
                                  "secret", "tiny-q8_0\x00"])
def test_unknown_or_escaping_model_is_404(http, server, name):
    e = error_of(chat(http, model=name), 404)
    assert e["code"] == "model_not_found" and e["param"] == "model"
    r = http.post("/completions", json={"model": name, "prompt": "Hi"})
    assert error_of(r, 404)["code"] == "model_not_found"


def test_absolute_path_to_a_real_model_is_404(http, tiny_gguf, server):
    for name in (str(tiny_gguf["q8_0"]), str(server.outside)):
        assert error_of(chat(http, model=name), 404)["code"] == "model_not_found"


@pytest.mark.parametrize("path", ["/models/no-such", "/models/..%2F..%2Fetc%2Fpasswd",
                                  "/models/%2Fetc%2Fpasswd", "/models/a/b",
                                  "/models/..%2Fsecret"])
def test_model_lookup_404(http, path):
    assert error_of(http.get(path), 404)["code"] == "model_not_found"


def test_routes(http, server):
    assert error_of(http.get("/nope"), 404)
    assert error_of(http.get("/chat/completions"), 405)
    assert error_of(httpx.get(f"{server.root}/nope"), 404)


def test_cors_off_by_default(server):
    r = httpx.options(f"{server.url}/models", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers


# -- 503 ------------------------------------------------------------------------------
def test_queue_full_is_503_with_retry_after(http, server, tiny_gguf):
    """--max-queue 0: while one answer streams, the next request is turned away."""
    body = {"model": GGUF, "messages": MSGS, "stream": True, "max_tokens": 3500,
            "temperature": 1.0, "seed": 1, "logit_bias": no_eog(tiny_gguf["q8_0"])}
    with http.stream("POST", "/chat/completions", json=body) as long:
        assert long.status_code == 200
        lines = long.iter_lines()
        while not next(lines).startswith('data: {"id"'):
            pass
        r = chat(http)
        e = error_of(r, 503)
        assert r.headers["retry-after"].isdigit() and e["type"] == "server_error"
        with pytest.raises(openai.InternalServerError) as exc:
            openai.OpenAI(base_url=server.url, api_key=KEY, max_retries=0).chat.completions \
                .create(model=GGUF, messages=MSGS)
        assert exc.value.status_code == 503
    h = server.wait_idle()
    assert h["stats"]["rejected"] >= 2
    assert chat(http, temperature=0).json()["choices"][0]["message"]["content"] \
        == TRAINED_QA[0].answer


@pytest.mark.parametrize("args,needle", [
    (["no-such-model"], "not found"),
    (["/nonexistent/model.gguf"], "not found"),
    (["--chat-template", "no-such-template"], "--chat-template"),
    (["--max-queue", "-1"], "--max-queue"),
    (["--max-loaded", "0"], "--max-loaded"),
    (["--parallel", "0"], "--parallel"),
    (["--log-level", "loud"], "--log-level"),
])
def test_serve_refuses_bad_options_before_binding(tmp_path, args, needle):
    import subprocess

    from tests.support.server import PY, REPO, edge_env
    r = subprocess.run([PY, "-m", "edge_chat", "serve", *args, "--port", "9"], cwd=REPO,
                       env=edge_env(tmp_path), capture_output=True, text=True, timeout=60,
                       check=False)
    assert r.returncode == 1 and r.stderr.startswith("error:") and needle in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
