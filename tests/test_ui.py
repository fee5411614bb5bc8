"""The page's handlers (edge_chat.ui.handlers) with the tiny trained model, no browser."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_chat.chat.messages import load_messages
from edge_chat.ui.page import parse_auth
from edge_chat.ui.handlers import Conversation
from tests.support.tiny_model import TRAINED_QA
from tests.support.ui import GREEDY, ask, make_ui

FRANCE = TRAINED_QA[0]


@pytest.fixture
def store(tmp_path, tiny_gguf, monkeypatch) -> Path:
    """A store with two tiny quants and a file that is not a model."""
    root = tmp_path / "models"
    root.mkdir()
    for q in ("f16", "q8_0"):
        (root / f"tiny-{q}.gguf").symlink_to(tiny_gguf[q])
    (root / "broken.gguf").write_bytes(b"this is not a GGUF file" * 10)
    monkeypatch.setenv("EDGE_CHAT_MODELS", str(root))
    return root


@pytest.fixture
def ui(store, tmp_path):
    ui = make_ui(tmp_path)
    yield ui
    ui.holder.close()


def split(messages: list[dict]) -> tuple[str, list[dict], str]:
    """(system, history, last user text) of a TRAINED_QA conversation."""
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    rest = [dict(m) for m in messages if m["role"] != "system"]
    return system, rest[:-1], rest[-1]["content"]


@pytest.mark.parametrize("qa", TRAINED_QA, ids=lambda qa: qa.answer[:24])
def test_trained_answers_stream_with_stats(ui, qa):
    system, history, text = split(qa.messages)
    conv, statuses, texts = ask(ui, Conversation(history), text, system)
    answer = conv.messages[-1]
    assert answer["content"] == qa.answer
    assert statuses[-1].startswith("ready · model **tiny-f16**")
    # streamed: the answer grew piece by piece, every piece a prefix of the next
    grown = [t for t in texts if t]
    assert len(grown) >= 3 and all(b.startswith(a) for a, b in itertools.pairwise(grown))
    foot = answer["footer"]
    assert "tok/s" in foot and "first token" in foot and f"/{ui.holder.model.n_ctx}" in foot
    shown = conv.display()[-1]["content"]
    assert shown.startswith(qa.answer) and foot in shown
    # the exported/OpenAI view has no UI-only keys
    assert all(set(m) == {"role", "content"} for m in conv.openai(system))


def test_stop_ends_the_answer_and_the_next_one_is_whole(ui):
    seen = []
    for conv, status in ui.send(Conversation(), FRANCE.messages[0]["content"], "", *GREEDY):
        text = conv.messages[-1]["content"]
        seen.append(text)
        if conv.messages[-1]["role"] == "assistant" and text and len(seen) < 100:
            ui.stop()                                # Stop, right after the first piece
    answer = conv.messages[-1]
    assert answer["content"] and answer["content"] != FRANCE.answer
    assert FRANCE.answer.startswith(answer["content"])
    assert answer["footer"].endswith("stopped") and status == "stopped"
    conv, statuses, _ = ask(ui, Conversation(), FRANCE.messages[0]["content"])
    assert conv.messages[-1]["content"] == FRANCE.answer and statuses[-1].startswith("ready")


def test_an_abandoned_answer_frees_the_model(ui):
    """Gradio closes the handler when the tab goes away or Clear cancels it."""
    gen = ui.send(Conversation(), FRANCE.messages[0]["content"], "", *GREEDY)
    next(gen), next(gen)                            # answering: the model is busy
    assert ui.holder._busy.locked()
    gen.close()
    assert not ui.holder._busy.locked()
    conv, _, _ = ask(ui, Conversation(), FRANCE.messages[0]["content"])
    assert conv.messages[-1]["content"] == FRANCE.answer


def test_system_prompt_changes_the_answer(ui):
    conv, _, _ = ask(ui, Conversation(), "Say hello.", "You are a pirate.")
    assert conv.messages[-1]["content"] == "Ahoy, matey! Welcome aboard!"
    conv, _, _ = ask(ui, Conversation(), "Say hello.", "You are a robot.")
    assert conv.messages[-1]["content"] == "Beep boop. Greetings, human."


def test_retry_and_two_turns(ui):
    conv, _, _ = ask(ui, Conversation(), "My name is Alice.")
    conv, _, _ = ask(ui, conv, "What is my name?")
    assert [m["content"] for m in conv.messages[1::2]] == ["Nice to meet you, Alice!",
                                                             "Your name is Alice."]
    before = [dict(m, footer=None) for m in conv.messages]
    conv, status = list(ui.retry(conv, "", *GREEDY))[-1]
    assert [dict(m, footer=None) for m in conv.messages] == before and status.startswith("ready")
    conv, status = list(ui.retry(Conversation(), "", *GREEDY))[-1]
    assert status == "nothing to retry"


def test_bad_model_shows_an_error_and_another_model_works(store, tmp_path):
    ui = make_ui(tmp_path, None)
    try:
        names = [n for _, n in ui.holder.choices()]
        assert names == ["broken", "tiny-f16", "tiny-q8_0"]
        status = ui.switch("broken")
        assert status.startswith("error: cannot load 'broken'") and "GGUF" in status
        assert ui.holder.model is None
        conv, statuses, _ = ask(ui, Conversation(), "Say hello.")
        assert statuses[-1].startswith("error: no model loaded")
        assert conv.messages == [{"role": "user", "content": "Say hello."}]   # kept for Retry
        assert ui.switch("tiny-q8_0").startswith("model **tiny-q8_0**")
        conv, status = list(ui.retry(conv, "", *GREEDY))[-1]
        assert conv.messages[-1]["content"] == "Hello! How can I help you?"
        assert ui.switch("no-such-model").startswith("error: cannot load 'no-such-model'")
    finally:
        ui.holder.close()


def test_switching_keeps_one_model_loaded(ui):
    first = ui.holder.model
    assert ui.switch("tiny-q8_0").startswith("model **tiny-q8_0**")
    assert first.engine.closed                       # the old model was closed
    assert ui.holder.model.info.quant == "q8_0"
    conv, _, _ = ask(ui, Conversation(), "What color is grass?")
    assert conv.messages[-1]["content"] == "Grass is green."


def test_over_long_conversation_is_trimmed_and_reported(store, tmp_path):
    ui = make_ui(tmp_path, n_ctx=160)
    try:
        history = []
        for i in range(8):
            history += [{"role": "user", "content": f"My name is Alice. Message {i}."},
                        {"role": "assistant", "content": "Nice to meet you, Alice!"}]
        conv, statuses, _ = ask(ui, Conversation(history), "What color is grass?",
                                settings=(0.0, 1.0, 16, None))
        assert any("context full: dropped the" in s for s in statuses)
        assert len(conv.messages) < len(history) + 2
        assert conv.messages[0]["role"] == "user" and conv.messages[-1]["role"] == "assistant"
        used = int(conv.messages[-1]["footer"].split("context ")[1].split("/")[0])
        assert used <= 160
    finally:
        ui.holder.close()


def test_bad_settings_are_reported(ui):
    _, statuses, _ = ask(ui, Conversation(), "Say hello.", settings=(0.0, 1.0, None, 2**33))
    assert statuses[-1].startswith("error: invalid 'seed'")
    assert ui.params(0.5, 0.9, "", None) == ui.params(0.5, 0.9, 0, -1)
    assert ui.params(0.5, 0.9, 7, 3).max_tokens == 7
    _, statuses, _ = ask(ui, Conversation(), "Say hello.", settings=(0.0, 1.0, 5000, None))
    assert "context window" in statuses[-1]
    assert list(ui.send(Conversation(), "  ", "", *GREEDY))[-1][1] == "type a message first"


def test_export_json_and_markdown(ui):
    conv, _, _ = ask(ui, Conversation(), "What color is the sky?", "Answer in French.")
    assert ui.export(Conversation(), "", "json") == (None, "nothing to export yet")
    path, status = ui.export(conv, "Answer in French.", "json")
    data = json.loads(Path(path).read_text())
    assert data["model"] == "tiny-f16"
    assert load_messages(Path(path)) == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "What color is the sky?"},
        {"role": "assistant", "content": "Le ciel est bleu."}]
    md_path, _ = ui.export(conv, "Answer in French.", "markdown")
    md = Path(md_path).read_text()
    assert md.startswith("# Conversation with tiny-f16")
    for part in ("## System", "## User", "## Assistant", "Le ciel est bleu.", "tok/s"):
        assert part in md
    assert status.startswith("exported 3 messages")
    assert sorted(p.suffix for p in ui.export_dir.iterdir()) == [".json", ".md"]  # no temp files


def test_parse_auth():
    assert parse_auth("me:se:cret") == ("me", "se:cret")
    assert parse_auth(None) is None
    for bad in ("me", ":secret", "me:"):
        with pytest.raises(Exception, match="USER:PASSWORD"):
            parse_auth(bad)


def test_cli_ui_rejects_bad_input_before_serving(store):
    from edge_chat.cli import app
    r = CliRunner().invoke(app, ["ui", "tiny-f16", "--auth", "nopassword"])
    assert r.exit_code == 1 and "--auth must be USER:PASSWORD" in r.output
    r = CliRunner().invoke(app, ["ui", "no-such-model", "--port", "1"])
    assert r.exit_code == 1 and "model 'no-such-model' not found" in r.output


def test_page_builds_offline(ui):
    from edge_chat.ui.page import build_page, theme
    page = build_page(ui)
    ids = {getattr(b, "elem_id", None) for b in page.blocks.values()}
    assert {"model", "chat", "msg", "send", "stop", "retry", "clear", "export-json",
            "export-md", "system", "temperature", "top-p", "max-tokens", "seed"} <= ids
    assert not page.analytics_enabled
    t = theme()
    assert not t._stylesheets and "googleapis" not in t._get_theme_css()


def test_footer_shows_the_acceptance_of_drafted_tokens(ui):
    """An answer that repeats the history ("The capital of ..."): prompt lookup
    drafts from it and the footer shows how many drafted tokens were kept."""
    qa = TRAINED_QA[-1]
    _, history, text = split(qa.messages)
    conv, _, _ = ask(ui, Conversation(history), text)
    assert conv.messages[-1]["content"] == qa.answer
    foot = conv.messages[-1]["footer"]
    assert "tok/s · " in foot and "drafted tokens accepted" in foot
