"""The prompt cache on both engines (GGUF f16 and the fused ONNX fp32 of the tiny
trained model), one request at a time and batched: a long prefix computed once is
restored in another sequence, another conversation, another process; the answers are
the same as without the cache; damaged, partial and foreign files are never used."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_chat.engines import EngineOptions, load_engine
from edge_chat.engines.cache_disk import SUFFIX, list_folders
from edge_chat.engines.prompt_cache import _CACHES, MIN_TOKENS
from edge_chat.params import make_params

GREEDY = make_params(temperature=0)
REPO = Path(__file__).resolve().parent.parent
SYSTEM = ("You are a careful assistant. Answer briefly, in plain words, and keep to the "
          "facts the user gives you. ") * 14


def chatml(question: str) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
            "<|im_start|>assistant\n")


@pytest.fixture(params=["gguf", "onnx"])
def model_path(request):
    if request.param == "gguf":
        return request.getfixturevalue("tiny_gguf")["f16"]
    return request.getfixturevalue("tiny_onnx")["fp32"]


@pytest.fixture
def folder(tmp_path):
    _CACHES.clear()         # the RAM tier of earlier tests is not this test's
    yield tmp_path / "prompts"
    _CACHES.clear()


def open_engine(path, folder, parallel=1, **kw):
    return load_engine(path, EngineOptions(threads=1, parallel=parallel, cache_dir=str(folder),
                                           **kw))


def take(gen, limit: int) -> list[int]:
    """The first `limit` token ids of a generation (fewer at its end); left open."""
    out = []
    for tok in gen:
        out.append(tok.id)
        if len(out) >= limit:
            break
    return out


def answer(engine, question: str, limit=12):
    """(greedy token ids, prompt tokens evaluated) of one question."""
    view = engine.session() if engine.capabilities.slots > 1 else engine
    prompt = engine.tokenize(chatml(question))
    assert len(prompt) > MIN_TOKENS + 20
    gen = view.generate(prompt, GREEDY)
    out = take(gen, limit)
    gen.close()
    return out, view.n_prompt_evaluated


def flush(engine):
    cache = engine.prompt_cache
    cache.disk.flush()
    return cache


@pytest.mark.parametrize("parallel", [1, 3])
def test_another_conversation_restores_the_shared_prefix_with_the_same_answer(
        model_path, folder, parallel):
    plain = open_engine(model_path, folder, parallel, cache_ram="0")
    assert plain.prompt_cache is None
    want_a, n_a = answer(plain, "What is the capital of France?")
    want_b, _ = answer(plain, "Name a color.")
    plain.close()

    eng = open_engine(model_path, folder, parallel)
    view = eng.session() if parallel > 1 else eng
    gen_a = view.generate(eng.tokenize(chatml("What is the capital of France?")), GREEDY)
    assert take(gen_a, 12) == want_a and view.n_prompt_evaluated == n_a    # nothing cached yet
    if parallel == 1:       # one sequence: another prompt displaces its own cache
        gen_a.close()
        take(eng.generate(eng.tokenize("<|im_start|>user\nSay hello.<|im_end|>\n"), GREEDY), 2)
    # batched, A's stream stays open and unread while B arrives (it takes another slot)
    got_b, evaluated = answer(eng, "Name a color.")
    assert got_b == want_b
    assert evaluated < 40, "the system prompt came from the cache, not from a new prefill"
    summary = eng.prompt_cache.summary()
    assert summary["hits"] >= 1 and summary["hit_tokens"] > MIN_TOKENS
    # B adds only a short tail to A's entry: no second copy of the system prompt
    assert summary["saved"] == 1 and summary["entries"] == 1
    gen_a.close()
    eng.close()


def test_a_restart_reads_the_prefix_back_from_disk(model_path, folder):
    script = (
        "import sys, json\n"
        "from edge_chat.engines import EngineOptions, load_engine\n"
        "from edge_chat.params import make_params\n"
        "e = load_engine(sys.argv[1], EngineOptions(threads=1, cache_dir=sys.argv[2]))\n"
        "p = e.tokenize(sys.argv[3])\n"
        "g = e.generate(p, make_params(temperature=0))\n"
        "out = [next(g).id for _ in range(8)]\n"
        "g.close(); e.prompt_cache.disk.flush()\n"
        "print(json.dumps([out, e.n_prompt_evaluated, len(p)]))\n")
    prompt = chatml("What is the capital of France?")

    def run():
        p = subprocess.run([sys.executable, "-c", script, str(model_path), str(folder), prompt],
                           capture_output=True, text=True, cwd=REPO, timeout=300)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])

    first_out, first_n, n_prompt = run()
    assert first_n == n_prompt
    [row] = list_folders(folder)
    assert row["entries"] == 1 and row["longest_tokens"] == n_prompt     # the whole prompt
    second_out, second_n, _ = run()
    assert second_out == first_out and second_n == 1


def test_a_damaged_or_partial_file_is_never_used(model_path, folder, caplog):
    eng = open_engine(model_path, folder)
    want, full = answer(eng, "What is the capital of France?")
    flush(eng)
    eng.close()
    [entry] = list(folder.glob(f"*/*{SUFFIX}"))
    data = bytearray(entry.read_bytes())
    data[-5] ^= 0xFF                                # one byte of the keys/values edited
    entry.write_bytes(bytes(data))
    (entry.parent / f".{entry.name}.123.tmp").write_bytes(bytes(data[:1000]))   # a killed write
    _CACHES.clear()                                 # a restart: RAM is empty

    eng = open_engine(model_path, folder)
    with caplog.at_level(logging.WARNING, logger="edge_chat.cache"):
        got, evaluated = answer(eng, "What is the capital of France?")
    assert got == want and evaluated == full        # recomputed, same answer
    assert "checksum" in caplog.text
    flush(eng)
    eng.close()
    [entry2] = list(folder.glob(f"*/*{SUFFIX}"))    # the damaged one replaced by a good one
    assert entry2.name == entry.name and entry2.read_bytes() != bytes(data)


def test_another_model_or_setting_never_reads_the_entries(tiny_gguf, folder):
    eng = open_engine(tiny_gguf["f16"], folder)
    answer(eng, "What is the capital of France?")
    flush(eng)
    eng.close()
    _CACHES.clear()
    for path, kw in ((tiny_gguf["q8_0"], {}), (tiny_gguf["f16"], {"kv_type": "q8_0"})):
        other = open_engine(path, folder, **kw)
        _, evaluated = answer(other, "What is the capital of France?")
        assert evaluated > MIN_TOKENS
        flush(other)
        other.close()
    assert len(list_folders(folder)) == 3          # one folder per model and setting


def test_an_unwritable_folder_keeps_the_cache_in_ram(tiny_gguf, tmp_path, caplog):
    _CACHES.clear()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="edge_chat.cache"):
        eng = open_engine(tiny_gguf["f16"], blocker / "prompts")
    assert "RAM only" in caplog.text
    answer(eng, "What is the capital of France?")
    _, evaluated = answer(eng, "Name a color.")
    assert evaluated < 40
    eng.close()
    _CACHES.clear()


def test_the_disk_budget_is_kept(tiny_gguf, folder):
    eng = open_engine(tiny_gguf["f16"], folder)
    answer(eng, "What is the capital of France?")
    one = flush(eng).disk.used()
    eng.close()
    _CACHES.clear()
    eng = open_engine(tiny_gguf["f16"], folder, cache_disk=str(int(one * 1.5)))
    for q in ("Name a color.", "Say hello.", "Count to three."):
        answer(eng, q)
        flush(eng)
        assert eng.prompt_cache.disk.used() <= int(one * 1.5)
    eng.close()


def test_the_cache_command_lists_and_clears(tiny_gguf, folder):
    eng = open_engine(tiny_gguf["f16"], folder)
    answer(eng, "What is the capital of France?")
    flush(eng)
    eng.close()
    exe = [sys.executable, "-m", "edge_chat", "cache", "--cache-dir", str(folder)]
    env = dict(os.environ, COLUMNS="200")
    listed = subprocess.run(exe + ["--json"], capture_output=True, text=True, env=env, cwd=REPO)
    assert listed.returncode == 0
    [row] = json.loads(listed.stdout)
    assert row["model"] == eng.info.name and row["entries"] == 1
    cleared = subprocess.run(exe + ["--clear"], capture_output=True, text=True, env=env, cwd=REPO)
    assert cleared.returncode == 0 and "removed" in cleared.stderr
    assert not list(folder.glob(f"*/*{SUFFIX}"))
    bad = subprocess.run([sys.executable, "-m", "edge_chat", "chat", str(tiny_gguf["f16"]),
                          "--cache-ram", "lots"], capture_output=True, text=True, cwd=REPO,
                         input="hi\n")
    assert bad.returncode != 0 and bad.stderr.strip().startswith("error:")
    assert "--cache-ram" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
