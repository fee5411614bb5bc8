"""Chat core without a model: params, messages, stop strings, context window."""

import json

import pytest

from edge_chat.chat.context import fit_messages
from edge_chat.chat.messages import load_messages, normalize_messages, save_messages
from edge_chat.params import chat_params, make_params, parse_value, update_params
from edge_chat.chat.stops import StopMatcher
from edge_chat.chat.template import BUILTIN, ChatTemplate, resolve_template
from edge_chat.errors import ContextLengthExceeded, EdgeChatError


@pytest.mark.parametrize("field,value", [
    ("temperature", 2.5), ("temperature", -0.1), ("top_p", 1.5), ("top_k", -1),
    ("min_p", 2), ("presence_penalty", 3), ("frequency_penalty", -2.5),
    ("repeat_penalty", 0), ("seed", -1), ("max_tokens", 0), ("n", 0), ("n", 17),
    ("stop", ["a", "b", "c", "d", "e"]), ("stop", 5), ("stop", [""]),
    ("logit_bias", {"x": 1}), ("logit_bias", {"5": 101}), ("logit_bias", {"-3": 1}),
])
def test_out_of_range_names_the_field(field, value):
    with pytest.raises(EdgeChatError) as e:
        make_params(**{field: value})
    assert e.value.param == field
    assert field in str(e.value)


def test_unknown_param_is_an_error():
    with pytest.raises(EdgeChatError, match="unknown sampling parameter 'temp'"):
        make_params(temp=1)


def test_params_normalize_and_update():
    p = make_params(stop="###", logit_bias={"42": -100})
    assert p.stop == ["###"] and p.logit_bias == {42: -100.0}
    q = update_params(p, temperature=0.3)
    assert q.temperature == 0.3 and q.stop == ["###"]
    assert chat_params(temperature=0).temperature == 0 and chat_params().top_k == 40
    assert parse_value("temperature", "0.3") == 0.3
    assert parse_value("stop", '["a", "b"]') == ["a", "b"]
    assert parse_value("logit_bias", "5:-1 6:2") == {5: -1.0, 6: 2.0}
    with pytest.raises(EdgeChatError):
        parse_value("nope", "1")


def test_messages_validation():
    msgs = normalize_messages([
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
    assert msgs == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ab"}]
    for bad, param in [([], "messages"), ("x", "messages"),
                       ([{"role": "wizard", "content": "x"}], "messages[0].role"),
                       ([{"role": "user", "content": 5}], "messages[0].content"),
                       ([{"role": "user", "content": [{"type": "image_url"}]}], "messages[0].content")]:
        with pytest.raises(EdgeChatError) as e:
            normalize_messages(bad)
        assert e.value.param == param


def test_save_and_load_messages(tmp_path):
    msgs = [{"role": "system", "content": "s"}, {"role": "user", "content": "héllo"}]
    f = tmp_path / "c.json"
    save_messages(f, msgs)
    assert load_messages(f) == msgs
    assert json.loads(f.read_text())["messages"] == msgs
    assert not list(tmp_path.glob(".*tmp"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EdgeChatError, match="not a JSON messages file"):
        load_messages(tmp_path / "bad.json")


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    return out + m.flush(), m.hit


@pytest.mark.parametrize("pieces", [["Hello ##", "# world"], ["Hello #", "#", "#", " world"],
                                    ["Hello ###", " world"], ["H", "e", "l", "l", "o", " ", "###"]])
def test_stop_across_token_boundaries(pieces):
    assert feed_all(["###"], pieces) == ("Hello ", "###")


def test_stop_never_prints_part_of_a_stop():
    m = StopMatcher(["STOP"])
    shown = [m.feed(p) for p in ["abc S", "T", "O"]]
    assert "".join(shown) == "abc "          # "STO" held back
    assert m.feed("x") == "STOx"             # not a stop after all
    assert feed_all(["a", "bc"], ["xb", "c"]) == ("x", "bc")
    assert feed_all(["end", "nd!"], ["the e", "nd!"]) == ("the ", "end")
    assert feed_all([], ["a", "b"]) == ("ab", None)


def count_words(msgs):
    return sum(len(m["content"].split()) + 1 for m in msgs)


def test_context_trims_oldest_turns_keeps_system():
    msgs = [{"role": "system", "content": "sys"}]
    for i in range(6):
        msgs += [{"role": "user", "content": f"q{i} " * 5}, {"role": "assistant", "content": f"a{i} " * 5}]
    msgs.append({"role": "user", "content": "last question"})
    kept, dropped = fit_messages(msgs, count_words, n_ctx=40, max_tokens=10)
    assert kept[0]["role"] == "system" and kept[1]["role"] == "user"
    assert kept[-1]["content"] == "last question"
    assert count_words(kept) + 10 <= 40 and dropped == len(msgs) - len(kept) and dropped % 2 == 0
    same, none = fit_messages(msgs, count_words, n_ctx=1000, max_tokens=10)
    assert same == msgs and none == 0


def test_context_error_policy_and_impossible_fit():
    msgs = [{"role": "user", "content": "w " * 50}]
    with pytest.raises(ContextLengthExceeded) as e:
        fit_messages(msgs, count_words, n_ctx=40, max_tokens=10, policy="error")
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(ContextLengthExceeded):
        fit_messages(msgs, count_words, n_ctx=40, max_tokens=10)


def test_template_sandbox_and_errors():
    with pytest.raises(EdgeChatError, match="does not compile"):
        ChatTemplate("{% for %}")
    evil = ChatTemplate("{{ messages.__class__.__mro__ }}")
    with pytest.raises(EdgeChatError):
        evil.render([{"role": "user", "content": "x"}])
    t = ChatTemplate("{{ raise_exception('System role not supported') }}")
    with pytest.raises(EdgeChatError, match="System role not supported"):
        t.render([{"role": "user", "content": "x"}])
    chatml = ChatTemplate(BUILTIN["chatml"])
    with pytest.raises(EdgeChatError, match="no 'tool' role"):
        chatml.render([{"role": "tool", "content": "x"}])


def test_template_resolution():
    t, note = resolve_template("{{ 'x' }}", "llama")
    assert t.origin == "model" and note is None
    t, note = resolve_template(None, "gemma3")
    assert t.origin == "builtin:gemma" and "--chat-template" in note
    with pytest.raises(EdgeChatError, match="--chat-template"):
        resolve_template(None, "weirdarch")
    t, _ = resolve_template("{{ 'x' }}", "llama", override="chatml")
    assert t.origin == "builtin:chatml"
    with pytest.raises(EdgeChatError, match="neither a file"):
        resolve_template(None, "llama", override="/no/such/file.jinja")
    rendered = ChatTemplate(BUILTIN["gemma"], bos_token="<bos>").render(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}])
    assert rendered == "<bos><start_of_turn>user\nS\n\nhi<end_of_turn>\n<start_of_turn>model\n"
