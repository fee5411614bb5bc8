"""The REPL driven through a pseudo-terminal, as a person would use it."""

import json
import os
import sys

import pexpect
import pytest

PROMPT = ">>> "


@pytest.fixture
def repl(tmp_path, tiny_gguf):
    env = {**os.environ, "EDGE_CHAT_MODELS": str(tmp_path), "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "edge_chat", "chat", str(tiny_gguf["f16"]),
                                           "--temperature", "0"],
                          env=env, cwd=str(tmp_path), encoding="utf-8", timeout=60)
    child.expect_exact(PROMPT)
    yield child
    child.close(force=True)


def ask(child, text):
    child.sendline(text)
    child.expect_exact(PROMPT)
    # what was printed between the echoed input and the next prompt
    return child.before.replace("\r", "").split("\n", 1)[-1].strip()


def test_conversation_commands(repl, tmp_path, tiny_qa):
    plain = [qa for qa in tiny_qa if len(qa.messages) == 1]
    system_qa = next(qa for qa in tiny_qa if qa.messages[0]["role"] == "system")
    assert ask(repl, plain[0].messages[0]["content"]) == plain[0].answer
    # /save writes OpenAI messages, atomically
    ask(repl, "/save conv.json")
    saved = json.loads((tmp_path / "conv.json").read_text())["messages"]
    assert saved == plain[0].messages + [{"role": "assistant", "content": plain[0].answer}]
    # /system changes the answer
    ask(repl, "/clear")
    ask(repl, "/system " + system_qa.messages[0]["content"])
    assert ask(repl, system_qa.messages[1]["content"]) == system_qa.answer
    # /load brings the saved conversation back
    assert "loaded 2 messages" in ask(repl, "/load conv.json")
    ask(repl, "/save again.json")
    assert json.loads((tmp_path / "again.json").read_text())["messages"] == saved
    # /retry answers the last message again; /set changes a parameter
    assert ask(repl, "/retry") == plain[0].answer
    assert "max_tokens = 2" in ask(repl, "/set max_tokens 2")
    short = ask(repl, plain[1].messages[0]["content"])
    assert plain[1].answer.startswith(short.split("\n")[0]) and short != plain[1].answer
    assert "max_tokens = 2" in ask(repl, "/params")
    # a bad command or value is one line and the session goes on
    assert "error:" in ask(repl, "/set temperature 9")
    assert "error:" in ask(repl, "/frobnicate")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "wizard", "content": "x"}]))
    assert "unknown role" in ask(repl, f"/load {bad}")
    bad.write_text("[]")
    assert "must not be empty" in ask(repl, f"/load {bad}")
    repl.sendline("/exit")
    repl.expect(pexpect.EOF)


def test_multiline_input(repl, tiny_qa):
    qa = tiny_qa[0]
    words = qa.messages[0]["content"].split(" ")
    repl.sendline(" ".join(words[:2]) + " \\")
    repl.expect_exact("... ")
    assert ask(repl, " ".join(words[2:])) == qa.answer


@pytest.fixture(scope="module")
def eog_ids(tiny_gguf):
    from edge_chat.engines.gguf.engine import GGUFEngine
    e = GGUFEngine(tiny_gguf["f16"], n_ctx=64)
    try:
        return [t for t in range(e.n_vocab) if e.is_eog(t)]
    finally:
        e.close()


def test_ctrl_c_stops_the_answer_and_keeps_the_session(tmp_path, tiny_gguf, tiny_qa, eog_ids):
    env = {**os.environ, "EDGE_CHAT_MODELS": str(tmp_path), "TERM": "dumb"}
    # end-of-turn banned and a wide window: only Ctrl-C ends this answer soon
    bans = [arg for t in eog_ids for arg in ("--logit-bias", f"{t}:-100")]
    child = pexpect.spawn(sys.executable, ["-m", "edge_chat", "chat", str(tiny_gguf["f16"]),
                                           "--temperature", "0", "--ctx-size", "16384", *bans],
                          env=env, encoding="utf-8", timeout=60)
    try:
        child.expect_exact(PROMPT)
        child.sendline(tiny_qa[0].messages[0]["content"])
        child.expect_exact(tiny_qa[0].answer[:10])      # the answer is streaming
        child.sendintr()
        child.expect_exact("[stopped]")
        child.expect_exact(PROMPT)
        assert "logit_bias = {}" in ask(child, "/set logit_bias none")
        ask(child, "/clear")
        assert ask(child, tiny_qa[1].messages[0]["content"]) == tiny_qa[1].answer
    finally:
        child.close(force=True)
