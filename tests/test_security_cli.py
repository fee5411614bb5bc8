"""Issue 14 in the terminal: bad names, bad files and crashing files give one line and a
non-zero exit (never a traceback, never exit 134); `models --all` shows the leftovers
of interrupted converts; CLI logit_bias keys are plain decimals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support.gguf_mutate import fields, nested_array_gguf, set_field
from tests.support.server import FAST, PY, REPO, edge_env, make_store


@pytest.fixture()
def env(tiny_gguf, tmp_path):
    store = make_store(tmp_path / "store", {"tiny.gguf": tiny_gguf["q8_0"]})
    return edge_env(store, EDGE_CHAT_CACHE=str(tmp_path / "cache"))


def run(env, *args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "edge_chat", *args], cwd=REPO, env=env, input=stdin,
                          capture_output=True, text=True, timeout=180, check=False)


def one_line_error(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: "), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and len(lines[-1]) < 600, r.stderr[-2000:]
    for w in words:
        assert w in lines[-1], lines[-1]
    return lines[-1]


@pytest.mark.parametrize("name", ["x" * 300, "é" * 130, "a\x1b[31mb", "../" * 2000 + "etc"])
def test_every_command_gives_one_line_for_a_bad_name(env, name):
    for args in (["chat", "-p", "hi", name], ["info", name], ["rm", "--yes", name],
                 ["complete", name, "hi"], ["bench", name], ["serve", name, "--port", "9"]):
        line = one_line_error(run(env, *args))
        assert "\x1b" not in line


def test_info_on_files_that_are_not_models(env, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    one_line_error(run(env, "info", str(text)), "not a model")
    nested = tmp_path / "nested.gguf"
    nested.write_bytes(nested_array_gguf(5000))
    for cmd in (["info", str(nested)], ["chat", "-p", "hi", str(nested)]):
        one_line_error(run(env, *cmd), "nests arrays")


def test_gguf_values_llama_cpp_asserts_on(env, tiny_gguf, tmp_path):
    data = Path(tiny_gguf["q8_0"]).read_bytes()
    fl, _ = fields(data)
    by_name = {f.name: f for f in fl}
    for key, value in (("llama.block_count", 0), ("llama.block_count", 1000),
                       ("llama.attention.head_count", 0), ("llama.embedding_length", 0)):
        p = tmp_path / f"bad-{value}.gguf"
        p.write_bytes(set_field(data, by_name[key], value))
        one_line_error(run(env, "chat", "-p", "hi", *FAST, str(p)), key)
        one_line_error(run(env, "info", str(p)), key)


def test_a_file_that_crashes_llama_cpp_costs_one_line(env, tiny_gguf, tmp_path):
    """Passes every check, aborts llama.cpp (an f16 norm weight): the probe child dies,
    `chat` prints one line; the verdict is remembered (the second run loads nothing)."""
    data = Path(tiny_gguf["q8_0"]).read_bytes()
    f = next(f for f in fields(data)[0] if f.name == "output_norm.weight.type")
    p = tmp_path / "crash.gguf"
    p.write_bytes(set_field(data, f, 1))
    for _ in range(2):
        one_line_error(run(env, "chat", "-p", "hi", *FAST, str(p)), "'crash'", "SIGABRT")
    assert "crashed" in (Path(env["EDGE_CHAT_CACHE"]) / "probed.json").read_text()


def test_control_bytes_in_a_key_are_escaped(env, tiny_gguf, tmp_path):
    from tests.support.gguf_mutate import control_key_gguf
    data = Path(tiny_gguf["q8_0"]).read_bytes()
    p = tmp_path / "ctl.gguf"
    p.write_bytes(control_key_gguf(data))
    for cmd in (["info", str(p)], ["models"]):
        r = run(env, *cmd)
        assert "\x1b" not in r.stderr + r.stdout and "\x07" not in r.stderr + r.stdout
    assert "\\x1b" in one_line_error(run(env, "info", str(p)))


def test_models_all_lists_leftovers(env, tmp_path):
    store = Path(env["EDGE_CHAT_MODELS"])
    (store / ".edge_chat-abcd1234").mkdir()
    (store / ".edge_chat-abcd1234" / "converted-f16.gguf").write_bytes(b"x" * 1000)
    (store / f".tiny2.gguf.{2**22 + 12345}.x1y2z3w4.tmp").write_bytes(b"y" * 500)
    (store / ".my-notes.old").write_text("not ours")
    r = run(env, "models")
    assert r.returncode == 0 and ".edge_chat" not in r.stdout
    r = run(env, "models", "--all", "--json")
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows[".edge_chat-abcd1234"]["format"] == "leftover"
    assert rows[f".tiny2.gguf.{2**22 + 12345}.x1y2z3w4.tmp"]["size_bytes"] == 500
    assert ".my-notes.old" not in rows and "tiny" in rows


@pytest.mark.parametrize("item", ["7_0:5", "٧:1", " 7:1", "0x7:1", "7:nan", "7"])
def test_cli_logit_bias_keys(env, item):
    one_line_error(run(env, "chat", "-p", "hi", "--logit-bias", item), "logit_bias")


def test_probe_off_switch(env):
    """EDGE_CHAT_PROBE=0 loads in-process at once (no probe child, nothing remembered)."""
    e = dict(env, EDGE_CHAT_PROBE="0")
    r = run(e, "chat", "-p", "hi", "--max-tokens", "2", *FAST, "tiny")
    assert r.returncode == 0, r.stderr
    assert not (Path(env["EDGE_CHAT_CACHE"]) / "probed.json").exists()
    r = run(env, "chat", "-p", "hi", "--max-tokens", "2", *FAST, "tiny")
    assert r.returncode == 0 and '"ok"' in (Path(env["EDGE_CHAT_CACHE"]) / "probed.json").read_text()
