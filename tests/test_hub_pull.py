"""`edge_chat pull` and the first run, through the real huggingface_hub client against a
stand-in hub on 127.0.0.1 (tests/support/hub_standin.py) serving repos made from the tiny model:
GGUF by quant, by file, split; ONNX in edge_chat's and onnxruntime-genai's layouts;
safetensors converted; resume, corruption, bad repos; then chat with what was pulled."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect

from edge_chat.store.paths import DEFAULT_MODEL
from tests.support.hub_repos import folder_files, genai_folder, run_cli, split_gguf


def store_of(env) -> Path:
    return Path(env["EDGE_CHAT_MODELS"])


def models_in(env) -> dict[str, dict]:
    p = run_cli(env, "models", "--json")
    assert p.returncode == 0, p.stderr
    return {r["name"]: r for r in json.loads(p.stdout)}


def ask(env, model, qa, *extra) -> subprocess.CompletedProcess:
    return run_cli(env, "chat", model, "--temperature", "0", "--threads", "1", *extra,
                   stdin=qa.messages[-1]["content"] + "\n")


def one_line_error(p, *needles):
    """Exit 1 and one `error:` line, the last (progress may come before it)."""
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in errors[0], errors[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def visible(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) \
        if store.is_dir() else []


def run_without_torch(env, *args) -> subprocess.CompletedProcess:
    """The CLI with torch and transformers hidden from the import system, as without
    the convert extra: importing either fails."""
    code = ("import sys\n"
            "class Hide:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'transformers'):\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Hide())\n"
            "from edge_chat.cli import main\n"
            f"sys.argv = ['edge_chat', *{list(args)!r}]\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_gguf_repo_by_quant_by_file_and_list(hub, hub_env, tiny_gguf, tiny_qa):
    hub.add("org/Tiny-GGUF", {"Tiny-Q4_K_M.gguf": tiny_gguf["q4_k_m"],
                              "Tiny-Q8_0.gguf": tiny_gguf["q8_0"],
                              "fp/tiny.F16.gguf": tiny_gguf["f16"], "README.md": b"# tiny\n"})
    store = store_of(hub_env)
    p = run_cli(hub_env, "pull", "org/Tiny-GGUF", "--list")
    assert p.returncode == 0, p.stderr
    for quant in ("q4_k_m", "q8_0", "f16", "quant / variant", "store name"):
        assert quant in p.stdout            # piped: the headers are whole
    assert "…" not in p.stdout
    assert "MB" in p.stdout and not store.exists()          # --list downloads nothing
    # the default quant: q4_k_m, byte for byte, under a short store name; no torch needed
    p = run_without_torch(hub_env, "pull", "org/Tiny-GGUF")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(store / "tiny-q4_k_m.gguf")
    assert sha(store / "tiny-q4_k_m.gguf") == sha(tiny_gguf["q4_k_m"])
    assert not (store / ".pull").exists() or not any((store / ".pull").iterdir())
    # another quant, in another spelling
    assert run_cli(hub_env, "pull", "org/Tiny-GGUF", "--quant", "Q8-0").returncode == 0
    # an exact file in a folder of the repo, as org/name:FILE
    p = run_cli(hub_env, "pull", "org/Tiny-GGUF:tiny.F16.gguf")
    assert p.returncode == 0, p.stderr
    assert visible(store) == ["tiny-q4_k_m.gguf", "tiny-q8_0.gguf", "tiny.f16.gguf"]
    one_line_error(run_cli(hub_env, "pull", "org/Tiny-GGUF", "--quant", "q2_k"),
                   "no q2_k GGUF", "q4_k_m", "q8_0")
    one_line_error(run_cli(hub_env, "pull", "org/Tiny-GGUF:nope.gguf"), "no file 'nope.gguf'")
    # pulled again: nothing is fetched
    served = sum(hub.served.values())
    assert run_cli(hub_env, "pull", "org/Tiny-GGUF").returncode == 0
    assert sum(hub.served.values()) == served
    # another repo's file of the same name is not taken for this one
    hub.add("other/Tiny-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf["q4_k_m"]})
    one_line_error(run_cli(hub_env, "pull", "other/Tiny-GGUF"),
                   "already has a model named tiny-q8_0", "edge_chat rm tiny-q8_0")
    # chat by store name and by hub id (found in the store, so no question, no download)
    qa = tiny_qa[0]
    for model in ("tiny-q8_0", "org/Tiny-GGUF:tiny.F16.gguf", "org/tiny-gguf:Q8_0"):
        p = ask(hub_env, model, qa)
        assert p.returncode == 0 and p.stdout == qa.answer + "\n", (model, p.stderr)
    assert ask(hub_env, "org/Tiny-GGUF", qa).stdout.strip()        # the q4_k_m one
    assert sum(hub.served.values()) == served
    rows = models_in(hub_env)
    assert rows["tiny-q4_k_m"]["quant"] == "q4_k_m" and rows["tiny.f16"]["quant"] == "f16"


def test_split_gguf_is_one_model(hub, hub_env, tiny_gguf, tiny_qa, tmp_path):
    parts = split_gguf(tiny_gguf["f16"], tmp_path / "split" / "Tiny-F16.gguf", 3)
    files = {f"F16/{p.name}": p for p in parts}
    files["Tiny-Q8_0.gguf"] = tiny_gguf["q8_0"]
    files["Broken-Q4_K_M-00001-of-00002.gguf"] = parts[0]         # its part 2 is missing
    hub.add("org/Split-GGUF", files)
    store = store_of(hub_env)
    listing = run_cli(hub_env, "pull", "org/Split-GGUF", "--list").stdout
    assert "(+2)" in listing and "Broken" not in listing
    p = run_cli(hub_env, "pull", "org/Split-GGUF", "-q", "f16")
    assert p.returncode == 0, p.stderr
    assert visible(store) == [f"tiny-f16-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    for i, part in enumerate(parts, 1):
        assert sha(store / f"tiny-f16-0000{i}-of-00003.gguf") == sha(part)
    rows = models_in(hub_env)
    assert list(rows) == ["tiny-f16"]
    assert rows["tiny-f16"]["size_bytes"] == sum(p.stat().st_size for p in parts)
    assert rows["tiny-f16"]["n_params"] == models_in({**hub_env, "EDGE_CHAT_MODELS": str(
        tiny_gguf["f16"].parent)})["tiny-f16"]["n_params"]            # all parts counted
    qa = tiny_qa[1]
    p = ask(hub_env, "tiny-f16", qa)                  # llama.cpp finds parts 2 and 3 beside 1
    assert p.returncode == 0 and p.stdout == qa.answer + "\n", p.stderr
    assert run_cli(hub_env, "rm", "tiny-f16", "--yes").returncode == 0
    assert visible(store) == []


def test_onnx_repos_edge_chat_and_genai_layouts(hub, hub_env, tiny_onnx, tiny_qa, tmp_path):
    hub.add("org/tiny-onnx", {**folder_files(tiny_onnx["int4"], "tiny-onnx-int4/"),
                              **folder_files(tiny_onnx["fp32"], "tiny-onnx-fp32/")})
    store = store_of(hub_env)
    p = run_cli(hub_env, "pull", "org/tiny-onnx")                  # int4 is the default
    assert p.returncode == 0, p.stderr
    assert (store / "tiny-onnx-int4" / "model.onnx").is_file()
    assert run_cli(hub_env, "pull", "org/tiny-onnx", "--quant", "fp32").returncode == 0
    qa = tiny_qa[2]
    assert ask(hub_env, "tiny-onnx-int4", qa).stdout.strip()
    p = ask(hub_env, "tiny-onnx-fp32", qa)
    assert p.returncode == 0 and p.stdout == qa.answer + "\n", p.stderr
    # onnxruntime-genai's layout: genai_config.json names the decoder and its tensors
    g = genai_folder(tiny_onnx["fp32"], tmp_path / "g" / "cpu-fp32")
    hub.add("org/tiny-genai-onnx", folder_files(g, "cpu_and_mobile/cpu-fp32/"))
    p = run_cli(hub_env, "pull", "org/tiny-genai-onnx")
    assert p.returncode == 0, p.stderr
    out = store / "tiny-genai-onnx-cpu-fp32"
    assert (out / "model.onnx").is_file() and not (out / "decoder.onnx").exists()
    man = json.loads((out / "edge_chat.json").read_text())
    assert man["layout"] == "onnxruntime-genai" and man["quant"] == "fp32"
    assert man["source"].startswith("org/tiny-genai-onnx/cpu_and_mobile/cpu-fp32@")
    p = ask(hub_env, "org/tiny-genai-onnx", qa)
    assert p.returncode == 0 and p.stdout == qa.answer + "\n", p.stderr
    # genai folders the engine cannot run: a clear reason, nothing in the store
    before = visible(store)
    bad = genai_folder(tiny_onnx["fp32"], tmp_path / "g" / "names", filename="model.onnx",
                       decoder={"inputs": {"input_ids": "input_ids",
                                           "past_key_names": "past_key_%d"}})
    hub.add("org/odd-names-onnx", folder_files(bad))
    one_line_error(run_cli(hub_env, "pull", "org/odd-names-onnx"), "past_key_%d",
                   "past_key_values.N.key")
    vision = genai_folder(tiny_onnx["fp32"], tmp_path / "g" / "vision",
                          vision={"filename": "vision.onnx"})
    hub.add("org/vision-onnx", folder_files(vision))
    one_line_error(run_cli(hub_env, "pull", "org/vision-onnx"), "multimodal")
    assert visible(store) == before


def _staged(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / ".pull").rglob("*.incomplete"))


def test_resume_after_a_download_killed_half_way(hub, hub_env, tiny_gguf, tiny_qa):
    src = tiny_gguf["f16"]
    size = src.stat().st_size
    assert size > 2 * (1 << 20), "the resume test needs a file over two download chunks"
    hub.add("org/Big-GGUF", {"Tiny-F16.gguf": src})
    hub.stall["Tiny-F16.gguf"] = size // 2
    store = store_of(hub_env)
    proc = subprocess.Popen([sys.executable, "-m", "edge_chat", "pull", "org/Big-GGUF"],
                            env=hub_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert hub.stalled.wait(120), "the download never started"
        deadline = time.monotonic() + 60
        while _staged(store) < (1 << 20) and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)                            # Ctrl-C
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    kept = _staged(store)
    assert 0 < kept < size
    assert visible(store) == [] and models_in(hub_env) == {}       # no partial model
    first = hub.served["org/Big-GGUF/Tiny-F16.gguf"]
    hub.stall.clear()
    hub.release.set()
    p = run_cli(hub_env, "pull", "org/Big-GGUF")
    assert p.returncode == 0, p.stderr
    assert "resuming" in p.stderr
    assert hub.ranges[-1] == ("Tiny-F16.gguf", f"bytes={kept}-")
    assert hub.served["org/Big-GGUF/Tiny-F16.gguf"] - first == size - kept   # only the rest
    assert sha(store / "tiny-f16.gguf") == sha(src)
    p = ask(hub_env, "tiny-f16", tiny_qa[0])
    assert p.returncode == 0 and p.stdout == tiny_qa[0].answer + "\n", p.stderr


def test_a_broken_connection_is_resumed_by_the_next_pull(hub, hub_env, tiny_gguf):
    src = tiny_gguf["f16"]
    size = src.stat().st_size
    hub.add("org/Flaky-GGUF", {"Tiny-F16.gguf": src})
    hub.drop["Tiny-F16.gguf"] = size - 1000
    p = run_cli(hub_env, "pull", "org/Flaky-GGUF")
    one_line_error(p, "the download of Tiny-F16.gguf broke off", "pull again to resume")
    store = store_of(hub_env)
    kept = _staged(store)
    assert kept >= 1 << 20 and visible(store) == []
    p = run_cli(hub_env, "pull", "org/Flaky-GGUF")
    assert p.returncode == 0, p.stderr
    assert hub.ranges[-1] == ("Tiny-F16.gguf", f"bytes={kept}-")
    assert sha(store / "tiny-f16.gguf") == sha(src)


def test_corrupt_download_is_refused(hub, hub_env, tiny_gguf):
    hub.add("org/Bad-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf["q8_0"]})
    hub.corrupt("org/Bad-GGUF", "Tiny-Q8_0.gguf")
    p = run_cli(hub_env, "pull", "org/Bad-GGUF")
    one_line_error(p, "Tiny-Q8_0.gguf is corrupt", "SHA-256", "nothing was added")
    store = store_of(hub_env)
    assert visible(store) == [] and not list(store.rglob("*.gguf"))


def test_bad_repos_and_no_network_are_one_line(hub, hub_env):
    one_line_error(run_cli(hub_env, "pull", "org/nope"), "no model 'org/nope'", hub.url)
    hub.add("org/docs", {"README.md": b"# nothing\n", "LICENSE": b"MIT\n"})
    one_line_error(run_cli(hub_env, "pull", "org/docs"), "no GGUF, ONNX or safetensors",
                   "README.md")
    hub.add("org/web-onnx", {"onnx/model.onnx": b"x" * 10, "tokenizer.json": b"{}"})
    one_line_error(run_cli(hub_env, "pull", "org/web-onnx"), "layout edge_chat cannot run")
    one_line_error(run_cli(hub_env, "pull", "not-a-hub-id"), "not a hub id")
    hub.add("org/Gated-GGUF", {"README.md": b"# gated\n"})
    hub.gated["org/Gated-GGUF"] = "hf_secret"
    one_line_error(run_cli(hub_env, "pull", "org/Gated-GGUF"), "is gated", "HF_TOKEN")
    p = run_cli({**hub_env, "HF_TOKEN": "hf_secret"}, "pull", "org/Gated-GGUF")
    one_line_error(p, "no GGUF, ONNX or safetensors")            # in: the token was sent
    offline = {**hub_env, "HF_HUB_OFFLINE": "1"}
    one_line_error(run_cli(offline, "pull", "org/docs"), "HF_HUB_OFFLINE")
    closed = {**hub_env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    one_line_error(run_cli(closed, "pull", "org/docs"), "cannot reach the hub", "offline?")
    assert visible(store_of(hub_env)) == []


def test_safetensors_repo_is_converted_or_names_the_extra(hub, hub_env, tiny_hf, tiny_qa):
    hub.add("org/tiny-hf", folder_files(tiny_hf))
    # without the convert extra
    p = run_without_torch(hub_env, "pull", "org/tiny-hf")
    one_line_error(p, "safetensors", "pip install 'edge-chat[convert]'")
    p = run_cli(hub_env, "pull", "org/tiny-hf", "--quant", "q8_0", timeout=600)
    assert p.returncode == 0, p.stderr
    assert visible(store_of(hub_env)) == ["tiny-hf-q8_0.gguf"]
    p = ask(hub_env, "org/tiny-hf", tiny_qa[0])
    assert p.returncode == 0 and p.stdout == tiny_qa[0].answer + "\n", p.stderr


def test_first_run_offers_to_pull_on_a_terminal_only(hub, hub_env, tiny_gguf, tiny_qa):
    hub.add("org/Tiny-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf["q8_0"]})
    store = store_of(hub_env)
    qa = tiny_qa[0]
    # not a terminal: never pulls silently
    p = ask(hub_env, "org/Tiny-GGUF", qa)
    one_line_error(p, "not in the store", "edge_chat pull org/Tiny-GGUF", "--yes")
    assert visible(store) == [] and not hub.served
    # on a terminal: a question, then the REPL
    args = ["-m", "edge_chat", "chat", "org/Tiny-GGUF", "--temperature", "0", "--threads", "1"]
    child = pexpect.spawn(sys.executable, args, env=hub_env, encoding="utf-8", timeout=120)
    try:
        child.expect(r"Pull q8_0 \(.*MB\) into .*\? \[Y/n\]")
        child.sendline("n")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert "error: not pulled" in child.before and visible(store) == []
    child = pexpect.spawn(sys.executable, args, env=hub_env, encoding="utf-8", timeout=120)
    try:
        child.expect(r"\[Y/n\]")
        child.sendline("")                                          # the default: yes
        child.expect_exact(">>> ")
        child.sendline(qa.messages[-1]["content"])
        child.expect_exact(">>> ")
        assert qa.answer in child.before.replace("\r", "")
        child.sendline("/exit")
    finally:
        child.close(force=True)
    assert visible(store) == ["tiny-q8_0.gguf"]
    served = sum(hub.served.values())
    child = pexpect.spawn(sys.executable, args, env=hub_env, encoding="utf-8", timeout=120)
    try:
        child.expect_exact(">>> ")                                  # known now: no question
        assert "Pull" not in child.before
    finally:
        child.close(force=True)
    assert sum(hub.served.values()) == served
    # offline, the pulled model is still found by its hub id
    p = ask({**hub_env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"},
            "org/Tiny-GGUF", qa)
    assert p.returncode == 0 and p.stdout == qa.answer + "\n", p.stderr
    # serve and ui ask the same way: never a silent pull without a terminal
    for cmd in ("serve", "ui"):
        one_line_error(run_cli(hub_env, cmd, "org/Unknown-GGUF"), "edge_chat pull org/Unknown-GGUF")
    # --yes pulls without a terminal
    hub.add("org/Other-GGUF", {"Other-F16.gguf": tiny_gguf["f16"]})
    p = ask(hub_env, "org/Other-GGUF", qa, "--yes")
    assert p.returncode == 0 and p.stdout == qa.answer + "\n", p.stderr


def test_default_store_and_the_empty_store_hint(tmp_path, tiny_gguf):
    env = {k: v for k, v in os.environ.items() if k != "EDGE_CHAT_MODELS"}
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    work = tmp_path / "work"
    work.mkdir()
    per_user = tmp_path / "xdg" / "edge_chat" / "models"
    p = run_cli(env, "models", cwd=work)
    assert p.returncode == 0 and str(per_user) in p.stderr and "per-user" in p.stderr
    assert f"edge_chat pull {DEFAULT_MODEL}" in p.stderr
    p = run_cli(env, "chat", cwd=work, stdin="hello\n")
    one_line_error(p, f"edge_chat pull {DEFAULT_MODEL}", str(per_user))
    (work / "models").mkdir()
    os.symlink(tiny_gguf["q8_0"], work / "models" / "tiny-q8_0.gguf")
    p = run_cli(env, "models", cwd=work)
    assert p.returncode == 0 and "./models" in p.stdout and "tiny-q8_0" in p.stdout
    env["EDGE_CHAT_MODELS"] = str(tmp_path / "elsewhere")
    assert "$EDGE_CHAT_MODELS" in run_cli(env, "models", cwd=work).stderr


def test_serve_pulls_a_hub_id_with_yes(hub, hub_env, tiny_gguf, tiny_qa, tmp_path, monkeypatch):
    from openai import OpenAI

    from tests.support.server import FAST, Server
    hub.add("org/Tiny-GGUF", {"Tiny-Q8_0.gguf": tiny_gguf["q8_0"]})
    for k in ("HF_ENDPOINT", "HF_HOME"):
        monkeypatch.setenv(k, hub_env[k])
    server = Server(store_of(hub_env), "org/Tiny-GGUF", "--yes", *FAST, log=tmp_path / "log")
    try:
        client = OpenAI(base_url=server.url, api_key="unused")
        assert [m.id for m in client.models.list()] == ["tiny-q8_0"]
        qa = tiny_qa[0]
        r = client.chat.completions.create(model="tiny-q8_0", messages=qa.messages,
                                           temperature=0)
        assert r.choices[0].message.content == qa.answer
    finally:
        server.stop()
