"""The remote backend: `edge_chat chat --base-url ... --model ...` (and RemoteChat
in-process) against our own `edge_chat serve` subprocess."""

from __future__ import annotations

import io
import subprocess
import threading

import pytest

from edge_chat.params import chat_params, make_params
from edge_chat.chat.remote import RemoteChat
from edge_chat.errors import EdgeChatError
from edge_chat.cli.repl import ChatSession
from tests.support.server import (
    FAST,
    PY,
    REPO,
    Server,
    edge_env,
    make_store,
    no_eog,
)
from tests.support.tiny_model import TRAINED_QA

KEY = "sk-remote-test"
GGUF = "tiny-q8_0"
FRANCE = TRAINED_QA[0]
ORIGIN = "http://localhost:3000"


@pytest.fixture(scope="module")
def server(tiny_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("remote")
    store = make_store(tmp / "store", {"tiny-q8_0.gguf": tiny_gguf["q8_0"],
                                       "tiny-q4_k_m.gguf": tiny_gguf["q4_k_m"]})
    # `serve NAME PATH`: only these two, though the store has more
    s = Server(store, GGUF, str(tiny_gguf["f16"]), *FAST, "--api-key", KEY, "--ctx-size", "2048",
               "--cors-origin", ORIGIN, log=tmp / "server.log")
    s.empty_store = make_store(tmp / "empty", {})
    s.no_eog = no_eog(tiny_gguf["q8_0"])
    yield s
    s.stop()


def test_serve_named_models_only(server):
    import httpx
    auth = {"Authorization": f"Bearer {KEY}"}
    r = httpx.get(f"{server.url}/models", headers=auth)
    assert [m["id"] for m in r.json()["data"]] == [GGUF, "tiny-f16"]
    r = httpx.post(f"{server.url}/chat/completions", headers=auth, json={
        "model": "tiny-q4_k_m", "messages": FRANCE.messages})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert KEY not in server.output()
    assert "API key required" in server.output() and "127.0.0.1" in server.output()


def test_cors_origin(server):
    import httpx
    pre = {"Access-Control-Request-Method": "POST",
           "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(f"{server.url}/chat/completions", headers={"Origin": ORIGIN, **pre})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    r = httpx.options(f"{server.url}/chat/completions",
                      headers={"Origin": "http://evil.example", **pre})
    assert r.headers.get("access-control-allow-origin") != "http://evil.example"
    r = httpx.get(f"{server.url}/models", headers={"Origin": ORIGIN,
                                                    "Authorization": f"Bearer {KEY}"})
    assert r.headers["access-control-allow-origin"] == ORIGIN


def edge_chat(server, *args: str, stdin: str | None = None, key: str | None = KEY, **env):
    """Run `edge_chat chat --base-url URL ARGS` (no local model anywhere in reach)."""
    extra = {"EDGE_CHAT_API_KEY": key} if key else {}
    return subprocess.run(
        [PY, "-m", "edge_chat", "chat", "--base-url", server.url, *args], cwd=REPO,
        env=edge_env(server.empty_store, **extra, **env), input=stdin, text=True,
        capture_output=True, timeout=120, check=False, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_cli_one_answer(server):
    r = edge_chat(server, "--model", GGUF, "-p", FRANCE.messages[0]["content"],
                  "--temperature", "0", "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout == FRANCE.answer + "\n"
    assert "tokens" in r.stderr and "prompt" in r.stderr


def test_cli_system_prompt_and_model_option_spellings(server):
    pirate = TRAINED_QA[11]
    assert pirate.messages[0]["role"] == "system"
    r = edge_chat(server, "tiny-f16", "-s", pirate.messages[0]["content"],
                  "-p", pirate.messages[1]["content"], "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == pirate.answer + "\n"


def test_cli_piped_stdin_and_api_key_option(server):
    qa = TRAINED_QA[3]
    r = edge_chat(server, "-m", GGUF, "--api-key", KEY, "--temperature", "0",
                  stdin=qa.messages[0]["content"] + "\n", key=None)
    assert r.returncode == 0, r.stderr
    assert r.stdout == qa.answer + "\n"


def test_cli_errors(server):
    r = edge_chat(server, "--model", GGUF, "-p", "hi", key="wrong")
    assert r.returncode == 1 and r.stderr.startswith("error:") and "API key" in r.stderr
    assert "Traceback" not in r.stderr
    r = edge_chat(server, "--model", "nope", "-p", "hi")
    assert r.returncode == 1 and "no model 'nope'" in r.stderr and GGUF in r.stderr
    r = edge_chat(server, "-p", "hi")            # two models on the server: name one
    assert r.returncode == 1 and "--model" in r.stderr
    r = edge_chat(server, "--model", GGUF, "-p", "hi", "--temperature", "7")
    assert r.returncode == 1 and "temperature" in r.stderr
    r = subprocess.run([PY, "-m", "edge_chat", "chat", "--base-url", server.root, "-p", "hi"],
                       cwd=REPO, env=edge_env(server.empty_store, EDGE_CHAT_API_KEY=KEY),
                       capture_output=True, text=True, timeout=60, check=False,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "/v1" in r.stderr           # the hint for a base URL
    r = subprocess.run([PY, "-m", "edge_chat", "chat", "--base-url", "http://127.0.0.1:9/v1",
                        "-p", "hi"], cwd=REPO, env=edge_env(server.empty_store),
                       capture_output=True, text=True, timeout=60, check=False,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "cannot reach" in r.stderr


@pytest.fixture
def remote(server):
    m = RemoteChat(server.url, GGUF, api_key=KEY)
    yield m
    m.engine.close()


def test_remote_info(remote):
    info = remote.info
    assert info.name == GGUF and info.format == "remote" and info.quant == "q8_0"
    assert info.n_ctx > 0 and info.extra["base_url"].endswith("/v1")


def test_chat_session_over_remote(remote):
    out, err = io.StringIO(), io.StringIO()
    s = ChatSession(remote, chat_params(temperature=0), out=out, err=err, show_stats=True)
    alice = TRAINED_QA[17]
    assert s.ask(alice.messages[0]["content"]) == alice.messages[1]["content"]
    assert s.ask(alice.messages[2]["content"]) == alice.answer
    assert [m["role"] for m in s.messages] == ["user", "assistant"] * 2
    assert out.getvalue() == f"{alice.messages[1]['content']}\n{alice.answer}\n"
    assert "tok/s" in err.getvalue()
    assert s.retry() == alice.answer


def test_stream_events_and_usage(remote):
    p = make_params(temperature=0, n=2, stop=["Paris"])
    events = list(remote.stream(FRANCE.messages, p))
    finals = [e for e in events if e.finish_reason]
    assert [e.index for e in finals] == [0, 1] and finals[-1].usage is not None
    for i in (0, 1):
        assert "".join(e.delta for e in events if e.index == i) == "The capital of France is "
    u = finals[-1].usage
    assert u.prompt_tokens > 0 and u.completion_tokens > 0


def test_server_errors_become_edge_chat_errors(remote):
    long = [{"role": "user", "content": "The quick brown fox. " * 2000}]
    with pytest.raises(EdgeChatError) as e:
        list(remote.stream(long, make_params()))
    assert e.value.code == "context_length_exceeded" and e.value.status == 400
    with pytest.raises(EdgeChatError, match="roles?|role"):
        remote.prepare([{"role": "wizard", "content": "x"}], make_params())


def _long(server):
    return make_params(temperature=1.0, seed=1, max_tokens=1900,
                       logit_bias={int(k): v for k, v in server.no_eog.items()})


def test_closing_the_stream_stops_the_server(remote, server):
    before = server.health()["stats"]
    events = remote.stream(FRANCE.messages, _long(server))
    got = [next(events) for _ in range(3)]
    assert all(e.delta for e in got)
    events.close()                       # what ChatSession does on Ctrl-C
    after = server.wait_idle()["stats"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < 1900


def test_cancel_from_another_thread(remote, server):
    before = server.health()["stats"]
    events = remote.stream(FRANCE.messages, _long(server))
    next(events)
    threading.Timer(0.05, remote.cancel).start()
    rest = list(events)
    assert rest[-1].finish_reason is not None
    after = server.wait_idle()["stats"]
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < 1900


def test_repl_over_remote(server):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(PY, ["-m", "edge_chat", "chat", "--base-url", server.url, "-m", GGUF,
                               "--temperature", "0"], cwd=str(REPO),
                          env=edge_env(server.empty_store, EDGE_CHAT_API_KEY=KEY),
                          encoding="utf-8", timeout=60)
    try:
        child.expect(f"{GGUF} \\(remote, q8_0")
        child.expect(">>> ")
        child.sendline(TRAINED_QA[16].messages[0]["content"])      # My name is Bob.
        child.expect_exact(TRAINED_QA[16].answer)
        child.expect(">>> ")
        child.sendline("What is my name?")
        child.expect_exact(TRAINED_QA[18].answer)
        child.expect(">>> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
