"""The terminal front-end: one-shot (typer runner and a real process with
piped stdin), the REPL through a pseudo-terminal, models/info, bad input."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_chat.cli import app

EXE = [sys.executable, "-m", "edge_chat"]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_gguf):
    root = tmp_path_factory.mktemp("store")
    for quant, path in tiny_gguf.items():
        os.symlink(path, root / f"tiny-{quant}.gguf")
    return root


@pytest.fixture
def env(store, monkeypatch):
    monkeypatch.setenv("EDGE_CHAT_MODELS", str(store))
    return {**os.environ, "EDGE_CHAT_MODELS": str(store)}


def test_one_shot_through_the_runner(env, tiny_qa):
    qa = tiny_qa[0]
    r = CliRunner().invoke(app, ["chat", "tiny-f16", "-p", qa.messages[-1]["content"],
                                 "--temperature", "0"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == qa.answer


def test_piped_stdin_answers_on_stdout_only(env, tiny_qa):
    for quant in ("f16", "q8_0"):
        qa = tiny_qa[1]
        p = subprocess.run(EXE + ["chat", f"tiny-{quant}", "--temperature", "0", "--stats"],
                           input=qa.messages[-1]["content"] + "\n", capture_output=True,
                           text=True, env=env, timeout=120)
        assert p.returncode == 0, p.stderr
        assert p.stdout == qa.answer + "\n"
        assert "tok/s" in p.stderr          # --stats goes to stderr


def test_system_option_changes_the_answer(env, tiny_qa):
    with_system = [qa for qa in tiny_qa if qa.messages[0]["role"] == "system"
                   and len(qa.messages) == 2]
    assert with_system, "the tiny model is trained with system prompts"
    qa = with_system[0]
    r = CliRunner().invoke(app, ["chat", "tiny-f16", "--temperature", "0",
                                 "--system", qa.messages[0]["content"],
                                 "-p", qa.messages[1]["content"]])
    assert r.exit_code == 0 and r.stdout.strip() == qa.answer


def test_models_and_info(env, store):
    r = CliRunner().invoke(app, ["models", "--json"])
    assert r.exit_code == 0, r.output
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"tiny-f16", "tiny-q8_0", "tiny-q4_k_m"}
    assert rows["tiny-q4_k_m"]["quant"] == "q4_k_m" and rows["tiny-f16"]["arch"] == "llama"
    assert rows["tiny-f16"]["context"] == 1024 and rows["tiny-f16"]["chat_template"] is True
    assert rows["tiny-q4_k_m"]["size_bytes"] < rows["tiny-f16"]["size_bytes"]
    r = CliRunner().invoke(app, ["models"])
    assert r.exit_code == 0 and "tiny-q8_0" in r.stdout
    r = CliRunner().invoke(app, ["info", "tiny-q8_0"])
    assert r.exit_code == 0 and "q8_0" in r.stdout and "llama" in r.stdout


def test_no_model_given_picks_the_only_one_or_explains(tmp_path, tiny_gguf, tiny_qa):
    env = {**os.environ, "EDGE_CHAT_MODELS": str(tmp_path)}
    p = subprocess.run(EXE + ["chat", "-p", "hi"], capture_output=True, text=True, env=env)
    assert p.returncode == 1 and "edge_chat convert" in p.stderr
    os.symlink(tiny_gguf["f16"], tmp_path / "only.gguf")
    qa = tiny_qa[0]
    p = subprocess.run(EXE + ["chat", "-p", qa.messages[-1]["content"], "--temperature", "0"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == qa.answer


def one_line_error(args, env, match, stdin=None):
    p = subprocess.run(EXE + args, capture_output=True, text=True, env=env, input=stdin,
                       timeout=120)
    assert p.returncode != 0
    lines = [x for x in p.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert "Traceback" not in p.stderr
    assert match in lines[0], lines[0]
    return lines[0]


def test_bad_input_gets_one_clear_line(env, tmp_path, tiny_gguf):
    one_line_error(["chat", str(tmp_path / "missing.gguf"), "-p", "hi"], env, "not found")
    one_line_error(["chat", "no-such-model", "-p", "hi"], env, "not found")
    (tmp_path / "text.gguf").write_text("hello, not a model")
    one_line_error(["chat", str(tmp_path / "text.gguf"), "-p", "hi"], env, "not a GGUF file")
    data = tiny_gguf["q8_0"].read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    one_line_error(["chat", str(tmp_path / "cut.gguf"), "-p", "hi"], env, "truncated")
    one_line_error(["chat", "tiny-f16", "-p", "hi", "--temperature", "3"], env, "temperature")
    one_line_error(["chat", "tiny-f16", "-p", "hi", "--stop", "a", "--stop", "b", "--stop", "c",
                    "--stop", "d", "--stop", "e"], env, "stop")
    one_line_error(["chat", "tiny-f16"], env, "empty input", stdin="   \n")
    one_line_error(["chat", "tiny-f16", "-p", "hi", "--gpu-layers", "auto"], env, "--vram")
    one_line_error(["info", str(tmp_path)], env, "not an ONNX model")


def test_convert_bad_input(env, tmp_path, tiny_hf):
    out = tmp_path / "out"
    out.mkdir()
    one_line_error(["convert", str(tiny_hf), "--to", "gguf", "--quant", "q9_z",
                    "-o", str(out / "x.gguf")], env, "unknown gguf quant")
    one_line_error(["convert", str(tiny_hf), "--to", "tflite"], env, "--to")
    one_line_error(["convert", str(tmp_path / "nothing")], env, "no such folder")
    one_line_error(["convert", str(tiny_hf), "--to", "gguf", "--graph", "fused"], env,
                   "--graph applies to --to onnx only")
    one_line_error(["convert", str(tiny_hf), "--to", "onnx", "--graph", "turbo",
                    "-o", str(out / "t")], env, "unknown ONNX graph")
    weird = tmp_path / "weird"
    shutil.copytree(tiny_hf, weird)
    cfg = json.loads((weird / "config.json").read_text())
    cfg["architectures"] = ["FooBarForCausalLM"]
    cfg["model_type"] = "foobar"
    (weird / "config.json").write_text(json.dumps(cfg))
    one_line_error(["convert", str(weird), "--to", "gguf", "--quant", "f16",
                    "-o", str(out / "w.gguf")], env, "FooBarForCausalLM")
    assert list(out.iterdir()) == []          # nothing half-written


def test_convert_to_the_store_and_chat(tmp_path, tiny_hf, tiny_qa):
    env = {**os.environ, "EDGE_CHAT_MODELS": str(tmp_path / "store")}
    p = subprocess.run(EXE + ["convert", str(tiny_hf), "--to", "gguf", "--quant", "q4_k_m"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    name = f"{Path(tiny_hf).name.lower()}-q4_k_m"
    out = tmp_path / "store" / f"{name}.gguf"
    assert out.is_file() and p.stdout.strip() == str(out)
    assert "ratio" in p.stderr and "output size" in p.stderr
    assert [x.name for x in (tmp_path / "store").iterdir()] == [out.name]
    p = subprocess.run(EXE + ["chat", name, "--temperature", "0"], capture_output=True,
                       text=True, env=env, input=tiny_qa[0].messages[-1]["content"], timeout=120)
    assert p.returncode == 0 and p.stdout.strip()


def test_same_answer_through_gguf_and_onnx(tmp_path, tiny_gguf, tiny_onnx, tiny_qa):
    os.symlink(tiny_gguf["f16"], tmp_path / "tiny-f16.gguf")
    os.symlink(tiny_onnx["fp32"], tmp_path / "tiny-onnx-fp32")
    env = {**os.environ, "EDGE_CHAT_MODELS": str(tmp_path)}
    r = CliRunner().invoke(app, ["models", "--json"], env=env)
    kinds = {row["name"]: row["format"] for row in json.loads(r.stdout)}
    assert kinds == {"tiny-f16": "gguf", "tiny-onnx-fp32": "onnx"}
    for qa in tiny_qa[:3]:
        outs = []
        for name in ("tiny-f16", "tiny-onnx-fp32"):
            p = subprocess.run(EXE + ["chat", name, "--temperature", "0"], env=env,
                               input=qa.messages[-1]["content"], capture_output=True, text=True,
                               timeout=120)
            assert p.returncode == 0, p.stderr
            outs.append(p.stdout)
        assert outs[0] == outs[1] == qa.answer + "\n"
    one_line_error(["chat", "tiny-onnx-fp32", "--provider", "cuda", "-p", "hi"], env,
                   "CPUExecutionProvider")
