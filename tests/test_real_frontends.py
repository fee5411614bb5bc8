"""Real models through the front-ends (issue 8): the HTTP API via the official `openai`
client (one `edge_chat serve` process for the module) and the page's handlers (no
browser). Qwen2.5-Coder-0.5B-Instruct is a real chat model; Gemma 3 270M is a base model
with no chat template. Skipped when ../shared/models/get-real-models has not run.
(tests/test_real_models.py covers the same models through the chat core and the CLI.)"""

from __future__ import annotations

import openai
import pytest

from edge_chat.ui.handlers import Conversation
from tests.support.real_models import GEMMA_GGUF, QWEN_GGUF, find_real_models
from tests.support.server import FAST, Server, make_store
from tests.support.ui import GREEDY, ask, make_ui

pytestmark = pytest.mark.real_model
QWEN, GEMMA = "qwen", "gemma"
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]
PIRATE = [{"role": "system", "content": "You are a pirate. Always start with 'Arr'."}] + FRANCE
SEA = [{"role": "user", "content": "Write one sentence about the sea."}]
COLOUR = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store of symlinks to the real models present (each test also asks for the
    fixture of the model it needs, so an absent model skips just its tests)."""
    found = find_real_models()
    models = {f"{name}.gguf": found[file] for name, file in ((QWEN, QWEN_GGUF),
                                                             (GEMMA, GEMMA_GGUF)) if file in found}
    if not models:
        pytest.skip("no real GGUF model present (run ../shared/models/get-real-models)")
    return make_store(tmp_path_factory.mktemp("real_frontends") / "store", models)


@pytest.fixture(scope="module")
def server(store):
    s = Server(store, *FAST, log=store.parent / "server.log", timeout=180)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def qwen(real_qwen_gguf, client):
    def chat(messages, **kw):
        kw.setdefault("temperature", 0)
        kw.setdefault("max_tokens", 48)
        return client.chat.completions.create(model=QWEN, messages=messages, **kw)
    return chat


def warm(qwen, messages) -> None:
    """Leave `messages`' prompt plus an answer token in the KV cache: every request for the
    same messages after this one replays just the last prompt token, so the requests compared
    next start from the same state (see test_greedy_answer_ignores_the_previous_request).
    (max_tokens=1 would leave exactly the prompt, whose batched logits are reused as is.)"""
    qwen(messages, max_tokens=2)


# -- Qwen through the API -----------------------------------------------------
def test_answer_and_system_prompt(qwen):
    r = qwen(FRANCE)
    c = r.choices[0]
    assert "Paris" in c.message.content and c.finish_reason == "stop"
    assert r.model == QWEN and r.usage.completion_tokens > 0
    pirate = qwen(PIRATE).choices[0].message.content
    assert pirate.startswith("Arr"), pirate


def test_second_turn_reuses_the_prefix(qwen):
    msgs = [{"role": "user", "content": "My name is Alice. Remember it."}]
    first = qwen(msgs)
    msgs += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "What is my name?"}]
    second = qwen(msgs)
    assert "Alice" in second.choices[0].message.content
    cached = second.usage.prompt_tokens_details.cached_tokens
    # the whole first prompt was still in the KV cache (not just the shared system prefix)
    assert first.usage.prompt_tokens <= cached < second.usage.prompt_tokens


def test_stream_equals_non_streamed(qwen):
    warm(qwen, FRANCE)
    whole = qwen(FRANCE)
    chunks = list(qwen(FRANCE, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_stop_string_and_max_tokens(qwen):
    c = qwen(FRANCE, stop=["Paris"]).choices[0]
    assert c.message.content == "The capital of France is " and c.finish_reason == "stop"
    r = qwen(FRANCE, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_n2_and_seed(qwen):
    def hot(seed, n):
        r = qwen(SEA, temperature=1.0, seed=seed, n=n, max_tokens=16)
        assert [c.index for c in r.choices] == list(range(n))
        return [c.message.content for c in r.choices]
    warm(qwen, SEA)
    one = hot(11, 1)
    assert one == hot(11, 1) and one[0]
    two = hot(11, 2)
    assert len(two) == 2 and all(two) and two == hot(11, 2)
    assert two[0] == one[0] and two[1] != two[0]          # choice i is sampled with seed + i


def test_greedy_answer_ignores_the_previous_request(qwen):
    """The prompt's last token is always decoded alone, so a request answers the same
    whether the cache held another conversation or this prompt with an earlier answer."""
    qwen(COLOUR, max_tokens=1)          # only the shared system prefix is reusable next
    after_other = qwen(SEA, max_tokens=16).choices[0].message.content
    after_same = qwen(SEA, max_tokens=16).choices[0].message.content       # all but 1 cached
    assert after_other == after_same


# -- Gemma (base model, no template) through the API --------------------------
def test_gemma_chat_uses_the_builtin_format(real_gemma_gguf, client, server):
    """No template in the file: the server falls back to the built-in 'gemma' turn format
    (logged once at load) and answers. The base model only echoes the question, but the
    answer is never a silent empty 200."""
    r = client.chat.completions.create(model=GEMMA, messages=FRANCE, temperature=0,
                                       max_tokens=16)
    c = r.choices[0]
    assert c.message.content.strip(), f"an empty 200 from a base model: {r.model_dump()}"
    assert c.finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
    assert r.usage.prompt_tokens < 24                    # the turn markers are special tokens
    log = server.output()
    assert log.count("gemma: the model has no chat template") == 1, log
    assert "built-in 'gemma' turn format" in log


def test_gemma_text_completion(real_gemma_gguf, client):
    r = client.completions.create(
        model=GEMMA, prompt="The capital of France is Paris. The capital of Germany is",
        temperature=0, max_tokens=12)
    assert "Berlin" in r.choices[0].text and r.usage.prompt_tokens > 0


# -- the page's handlers with Qwen (no browser) -------------------------------
def test_page_answers_with_stats(real_qwen_gguf, store, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_CHAT_MODELS", str(store))
    ui = make_ui(tmp_path, QWEN)
    try:
        conv, statuses, texts = ask(ui, Conversation(), FRANCE[0]["content"],
                                    settings=GREEDY)
    finally:
        ui.holder.close()
    answer = conv.messages[-1]
    assert answer["role"] == "assistant" and "Paris" in answer["content"]
    assert statuses[-1].startswith(f"ready · model **{QWEN}**"), statuses[-1]
    assert len([t for t in texts if t]) > 3                        # it streamed
    foot = answer["footer"]
    assert "tok/s" in foot and "first token" in foot and "context " in foot, foot
    assert conv.display()[-1]["content"].endswith(f"<sub>{foot}</sub>")
