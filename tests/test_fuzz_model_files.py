"""Mutation fuzz of model files (issue 14): over 300 broken GGUF files and ONNX folders
made from the tiny fixtures — out-of-range values in every metadata and tensor-info
field, bit flips in the header, a cut at every section, arrays nested 5,000 deep, keys of
control bytes; ONNX folders with parts missing, cut or flipped.

Every file goes through what `info`/`models` do (describe) and through a load, in this
process: the engine's first load runs in a probe child (engines/probe.py), so files that
crash llama.cpp are safe here — a crash would end this test run. A sample goes through
real `edge_chat chat`, `info` and `models` processes, and another through a running
`edge_chat serve`, which must answer the good model after each. Each outcome is a
one-line error (or, for a harmless mutation, a working model)."""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from edge_chat.engines import EngineOptions, load_engine
from edge_chat.errors import EdgeChatError
from edge_chat.store.paths import describe
from tests.support.gguf_mutate import (control_key_gguf, fields, flip_bits,
                                       nested_array_gguf, odd_values, set_field)
from tests.support.server import FAST, PY, REPO, Server, edge_env, make_store

OPTS = EngineOptions(n_ctx=256, threads=1)
#: fields whose odd values are known to reach llama.cpp's asserts (always in the sample)
MUST = ("llama.block_count", "llama.attention.head_count", "llama.embedding_length",
        "llama.attention.layer_norm_rms_epsilon", "output_norm.weight.type",
        "tokenizer.ggml.scores.count", "llama.context_length")


def gguf_mutations(data: bytes, seed: int = 14) -> list[tuple[str, bytes]]:
    rng = random.Random(seed)
    fl, infos_end = fields(data)
    values = [(f"{f.name}={v}", set_field(data, f, v)) for f in fl
              for v in odd_values(f, data) if not ("[" in f.name and "[0]" not in f.name)]
    must = [m for m in values if m[0].split("=")[0] in MUST]
    rest = [m for m in values if m not in must]
    out = must + rng.sample(rest, 170)
    # a cut inside every section: header, each of the first keys, the tensor infos, data
    kv_starts = sorted({f.offset for f in fl if f.section == "kv"})
    cuts = [4, 8, 12, 20, 23, 24, 30, *kv_starts[:: max(1, len(kv_starts) // 30)],
            infos_end - 13, infos_end - 1, infos_end, infos_end + 40, len(data) // 2,
            len(data) - 1]
    out += [(f"cut at {c}", data[:c]) for c in sorted(set(cuts)) if 0 < c < len(data)]
    out += [(f"bit flips #{i}", flip_bits(data, rng, 4, infos_end)) for i in range(60)]
    out += [("arrays nested 5000 deep", nested_array_gguf(5000)),
            ("arrays nested 5 deep", nested_array_gguf(5)),
            ("control bytes in a key", control_key_gguf(data)),
            ("empty file", b""), ("magic only", b"GGUF")]
    return out


def onnx_mutations(folder: Path, tmp: Path, seed: int = 14) -> list[tuple[str, Path]]:
    rng = random.Random(seed)
    out = []

    def variant(name: str, change) -> None:
        d = tmp / f"onnx-{len(out):03d}"
        shutil.copytree(folder, d, symlinks=False)
        change(d)
        out.append((name, d))

    def cut(rel: str, keep: float):
        return lambda d: (d / rel).write_bytes((d / rel).read_bytes()[:int((d / rel).stat().st_size * keep)])

    def flip(rel: str, n: int):
        def go(d: Path) -> None:
            raw = bytearray((d / rel).read_bytes())
            for _ in range(n):
                i = rng.randrange(len(raw))
                raw[i] ^= 1 << rng.randrange(8)
            (d / rel).write_bytes(bytes(raw))
        return go

    files = [p.name for p in folder.iterdir() if p.is_file()]
    for rel in files:
        variant(f"{rel} missing", lambda d, rel=rel: (d / rel).unlink())
        variant(f"{rel} empty", lambda d, rel=rel: (d / rel).write_bytes(b""))
    for rel in ("model.onnx", "model.onnx.data", "tokenizer.json"):
        if (folder / rel).exists():
            for keep in (0.01, 0.5, 0.99):
                variant(f"{rel} cut to {keep:.0%}", cut(rel, keep))
    for i in range(12):
        variant(f"model.onnx bit flips #{i}", flip("model.onnx", 4))
    for rel in ("edge_chat.json", "config.json", "tokenizer_config.json", "generation_config.json"):
        if (folder / rel).exists():
            for bad in ("[1, 2]", '{"vocab_size": -5, "eos_token_id": [1e400]}', "{",
                        '{"chat_template": "{% for %}", "context_length": 1e99}'):
                variant(f"{rel} = {bad}", lambda d, rel=rel, bad=bad: (d / rel).write_text(bad))
    return out


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert msg and "\n" not in msg and "Traceback" not in msg, repr(msg)
    return msg


def try_in_process(path: Path) -> str:
    """describe + load + one token; 'ok' or the error line. Only EdgeChatError may come out."""
    try:
        describe(path)
    except EdgeChatError as e:
        one_line(e)
    try:
        engine = load_engine(path, OPTS)
    except EdgeChatError as e:
        return one_line(e)
    try:
        from edge_chat.params import make_params
        gen = engine.generate(engine.tokenize("Hi") or [1], make_params(temperature=0))
        next(gen, None)
        gen.close()
    except EdgeChatError as e:
        return one_line(e)
    finally:
        engine.close()
    return "ok"


@pytest.fixture(scope="module")
def corpus(tiny_gguf, tiny_onnx, tmp_path_factory) -> list[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    data = Path(tiny_gguf["q8_0"]).read_bytes()
    files = []
    for i, (name, raw) in enumerate(gguf_mutations(data)):
        p = tmp / f"m{i:03d}.gguf"
        p.write_bytes(raw)
        files.append((name, p))
    files += onnx_mutations(Path(tiny_onnx["int8"]), tmp)
    return files


def test_every_mutated_file_is_a_one_line_error_or_a_model(corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_CHAT_CACHE", str(tmp_path / "cache"))
    assert len(corpus) >= 300
    outcomes: dict[str, str] = {}
    for name, path in corpus:
        outcomes[name] = try_in_process(path)
    crashed = [n for n, o in outcomes.items() if "crashed" in o]
    errors = [n for n, o in outcomes.items() if o != "ok"]
    # the known crashers: caught by the checks, or by the probe
    assert "block_count" in outcomes["llama.block_count=0"]
    assert "block_count" in outcomes["llama.block_count=2007"]
    assert "head_count" in outcomes["llama.attention.head_count=0"]
    assert "nests arrays" in outcomes["arrays nested 5000 deep"]
    assert "\\x1b" in outcomes["control bytes in a key"]
    assert "SIGABRT" in outcomes["output_norm.weight.type=1"]          # the probe's catch
    assert crashed and len(errors) > len(corpus) // 2, (len(crashed), len(errors))
    print(f"{len(corpus)} files: {len(errors)} errors ({len(crashed)} engine crashes caught "
          f"by the probe), {len(corpus) - len(errors)} harmless")


def _sample(corpus, names: tuple[str, ...], n: int, seed: int) -> list[tuple[str, Path]]:
    chosen = [c for c in corpus if c[0] in names]
    rest = [c for c in corpus if c[0] not in names]
    return chosen + random.Random(seed).sample(rest, n)


CRASHERS = ("output_norm.weight.type=1", "llama.block_count=0", "llama.block_count=2007",
            "arrays nested 5000 deep", "control bytes in a key",
            "llama.attention.layer_norm_rms_epsilon=nan", "model.onnx bit flips #0")


def test_cli_commands_give_one_line(corpus, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    env = edge_env(store, EDGE_CHAT_CACHE=str(tmp_path / "cache"))
    for i, (name, path) in enumerate(_sample(corpus, CRASHERS, 8, 1)):
        link = store / (f"f{i:02d}.gguf" if path.is_file() else f"f{i:02d}")
        link.symlink_to(path)
        for args in (["info", str(link)], ["chat", "-p", "Hi", "--max-tokens", "2", *FAST,
                                           "--ctx-size", "256", str(link)]):
            r = subprocess.run([PY, "-m", "edge_chat", *args], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=180, check=False)
            assert r.returncode in (0, 1), (name, args[0], r.returncode, r.stderr[-500:])
            if r.returncode:
                lines = r.stderr.strip().splitlines()
                assert lines[-1].startswith("error:") and "Traceback" not in r.stderr, \
                    (name, r.stderr[-800:])
    r = subprocess.run([PY, "-m", "edge_chat", "models"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and "Traceback" not in r.stderr and "broken" in r.stdout, r.stderr


def test_server_survives_every_bad_model(corpus, tiny_gguf, tmp_path):
    store = make_store(tmp_path / "store", {"good.gguf": tiny_gguf["q8_0"]})
    good = {"model": "good", "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 2, "temperature": 0}
    sample = _sample(corpus, CRASHERS, 20, 2)
    server = Server(store, *FAST, "--ctx-size", "256", "--max-loaded", "1",
                    log=tmp_path / "server.log")
    try:
        for i, (name, path) in enumerate(sample):
            link = store / (f"bad{i:02d}.gguf" if path.is_file() else f"bad{i:02d}")
            link.symlink_to(path)
            for _ in range(2):                     # the second time the verdict is cached
                r = httpx.post(f"{server.url}/chat/completions", timeout=180,
                               json=dict(good, model=f"bad{i:02d}"))
                assert r.status_code in (200, 400, 404, 500), (name, r.status_code, r.text)
                if r.status_code != 200:
                    err = r.json()["error"]
                    assert "\n" not in err["message"] and str(tmp_path) not in err["message"]
            assert server.proc.poll() is None, f"the server died on {name}:\n{server.output()}"
            ok = httpx.post(f"{server.url}/chat/completions", json=good, timeout=120)
            assert ok.status_code == 200, (name, ok.text)
            link.unlink()
    finally:
        server.stop()
    assert "Traceback" not in server.output()
