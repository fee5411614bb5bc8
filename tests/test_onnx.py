"""ONNX export/quantization (edge_chat.convert.to_onnx), the ONNX engine and the sampler."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_chat.params import make_params
from edge_chat.convert import to_onnx as conv
from edge_chat.engines.onnx.engine import OnnxEngine
from edge_chat.engines.onnx.providers import select_providers
from edge_chat.engines.onnx.vocab import TokenBytes
from edge_chat.engines.sampler import Sampler
from edge_chat.errors import (
    ContextLengthExceeded,
    ConvertError,
    EdgeChatError,
    ModelLoadError,
)

REPO = Path(__file__).resolve().parent.parent


def chatml(messages: list[dict]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) \
        + "<|im_start|>assistant\n"


def run(engine, prompt, limit=64, **params) -> list[int]:
    out = []
    for tok in engine.generate(prompt, make_params(**params)):
        out.append(tok.id)
        if len(out) >= limit:
            break
    return out


def answer(engine, messages) -> str:
    toks = run(engine, engine.tokenize(chatml(messages)), temperature=0)
    assert toks and engine.is_eog(toks[-1])
    return b"".join(engine.token_bytes(t) for t in toks).decode("utf-8")


@pytest.fixture(scope="module")
def engines(tiny_onnx):
    es = {q: OnnxEngine(p) for q, p in tiny_onnx.items()}
    yield es
    for e in es.values():
        e.close()


@pytest.fixture
def store(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "store"
    monkeypatch.setenv("EDGE_CHAT_MODELS", str(root))
    return root


def assert_empty(store: Path) -> None:
    assert not store.exists() or list(store.iterdir()) == [], list(store.iterdir())


def one_line(err) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


# -- agreement with transformers ---------------------------------------------------

def test_fp32_greedy_equals_transformers(tiny_hf, engines, tiny_qa):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # a shared 2-core machine: more threads only contend
    try:
        _greedy_vs_torch(tiny_hf, engines["fp32"], tiny_qa)
    finally:
        torch.set_num_threads(threads)


def _greedy_vs_torch(tiny_hf, eng, tiny_qa):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(tiny_hf)
    eog = eng.info.extra["eog_ids"]
    for qa in tiny_qa[:3] + tiny_qa[-3:]:
        text = chatml(qa.messages)
        prompt = eng.tokenize(text)
        assert prompt == hf_tok(text, add_special_tokens=False)["input_ids"]
        # end-of-turn banned on both sides so the continuation runs on for 40 tokens
        ids, ref = torch.tensor([prompt]), []
        with torch.no_grad():
            for _ in range(40):
                logits = model(input_ids=ids).logits[0, -1]
                logits[eog] = -float("inf")
                ref.append(int(logits.argmax()))
                ids = torch.cat([ids, torch.tensor([[ref[-1]]])], dim=1)
        got = run(eng, prompt, limit=40, temperature=0, logit_bias={t: -100 for t in eog})
        assert got == ref
        assert eng.detokenize(got) == hf_tok.decode(ref, skip_special_tokens=True)


@pytest.mark.parametrize("quant", ["fp32", "int8", "int4"])
def test_trained_answers(engines, tiny_qa, quant):
    # measured: fp32 20/20, int8 20/20, int4 20/20 exact answers (int8 top-1 agreement with
    # PyTorch on the convert sample ~96%, int4 ~91-97%: the answers survive it)
    eng = engines[quant]
    wrong = [(qa.answer, a) for qa in tiny_qa if (a := answer(eng, qa.messages)) != qa.answer]
    assert wrong == []


def test_outputs_and_manifest(tiny_onnx, tiny_hf, engines):
    import jinja2
    import onnx

    sizes = {}
    for quant, path in tiny_onnx.items():
        m = json.loads((path / "edge_chat.json").read_text())
        assert m["format"] == "onnx" and m["quant"] == quant and m["arch"] == "llama"
        assert m["n_layers"] == 2 and m["context_length"] == 1024 and m["add_bos"] is False
        assert m["eos_token"] == "<|im_end|>" and m["bos_token"] == "<s>" and m["eos_ids"]
        assert m["export_max_abs_logit_diff"] <= conv.EXPORT_ATOL
        assert m["tools"]["onnxruntime"] and m["created"] and m["source_bytes"] > 0
        for f in ("model.onnx", conv.DATA_FILE, "tokenizer.json", "tokenizer_config.json",
                  "config.json", "generation_config.json"):
            assert (path / f).is_file(), f
        sizes[quant] = m["output_bytes"]
        ops = {n.op_type for n in onnx.load(str(path / "model.onnx"),
                                             load_external_data=False).graph.node}
        if quant == "int8":
            assert "MatMulInteger" in ops
        if quant == "int4":
            assert m["block_size"] == 32
            assert {"MatMulNBits", "GatherBlockQuantized"} <= ops   # embedding in 4 bits too
        info = engines[quant].info
        assert info.quant == quant and info.format == "onnx" and info.n_ctx == 1024
        msgs = [{"role": "user", "content": "hi"}]
        assert jinja2.Template(info.chat_template).render(
            messages=msgs, add_generation_prompt=True) == chatml(msgs)
    # measured: fp32 6.9 MB, int8 2.7 MB, int4 1.24 MB (source safetensors 6.8 MB)
    assert sizes["int4"] < sizes["int8"] < sizes["fp32"]
    assert sizes["int4"] < sizes["fp32"] / 4


def test_convert_from_tokenizer_model_into_store(tiny_hf, tiny_qa, tmp_path, store):
    src = tmp_path / "Tiny SP"
    shutil.copytree(tiny_hf, src)
    (src / "tokenizer.json").unlink()       # only the SentencePiece tokenizer.model left
    res = conv.convert_to_onnx(src, "fp16")
    assert res.output == store / "tiny-sp-onnx-fp16" and res.format == "onnx"
    assert res.output_bytes > 0 and res.source_bytes > res.output_bytes
    assert any("GPU" in n for n in res.notes) and any("export check" in n for n in res.notes)
    assert sorted(p.name for p in store.iterdir()) == ["tiny-sp-onnx-fp16"]
    assert (res.output / "tokenizer.json").is_file()
    with OnnxEngine(res.output) as eng:   # fp16 also runs on the CPU provider
        for qa in tiny_qa[:4]:
            assert answer(eng, qa.messages) == qa.answer


# -- engine behaviour ----------------------------------------------------------------

def test_token_bytes_and_detokenize(engines, tiny_qa):
    eng = engines["fp32"]
    text = "Café 東京 ok"          # characters outside the vocab go through byte fallback
    ids = eng.tokenize(text)
    assert b"".join(eng.token_bytes(t) for t in ids) == text.encode()
    assert eng.detokenize(ids) == text
    im_end = eng.tokenize("<|im_end|>")
    assert len(im_end) == 1 and eng.is_eog(im_end[0]) and eng.token_bytes(im_end[0]) == b""
    assert eng.tokenize("x", add_bos=True)[0] == eng.tokenize("<s>")[0]
    assert not eng.is_eog(eng.tokenize("Paris")[0])


def test_token_bytes_byte_level_bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["héllo wörld 東京 tab\there"] * 5, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    special = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    table = TokenBytes(tok, tok.get_vocab_size(), special)
    text = "héllo 東京\there wörld<|end|>"
    ids = tok.encode(text).ids
    assert b"".join(table[i] for i in ids) == "héllo 東京\there wörld".encode()
    assert table[-1] == table[10**6] == b""


def test_prefix_reuse_across_turns(tiny_onnx, engines, tiny_qa):
    eng = engines["fp32"]
    first = [{"role": "user", "content": "My name is Alice."}]
    p1 = eng.tokenize(chatml(first))
    a1 = run(eng, p1, temperature=0)
    assert eng.detokenize(a1) == "Nice to meet you, Alice!" and eng.is_eog(a1[-1])
    p2 = p1 + a1 + eng.tokenize("\n<|im_start|>user\nWhat is my name?<|im_end|>\n"
                                "<|im_start|>assistant\n")
    a2 = run(eng, p2, temperature=0)
    # the cache holds p1 and the answer except its final <|im_end|> (never evaluated)
    assert eng.n_prompt_evaluated == len(p2) - (len(p1) + len(a1) - 1)
    assert eng.detokenize(a2) == "Your name is Alice."
    with OnnxEngine(tiny_onnx["fp32"]) as fresh:
        assert run(fresh, p2, temperature=0) == a2
        assert fresh.n_prompt_evaluated == len(p2)
    run(eng, p2, temperature=0)                  # the very same prompt again
    assert eng.n_prompt_evaluated == 1
    shorter = p2[:10] + eng.tokenize("Say hello.")
    run(eng, shorter, limit=3, temperature=0)    # diverges early: the cache is cut at 10
    assert eng.n_prompt_evaluated == len(shorter) - 10


def test_seeded_sampling(engines):
    eng = engines["int4"]
    prompt = eng.tokenize(chatml([{"role": "user", "content": "Name a fruit."}]))
    ban = {t: -100 for t in eng.info.extra["eog_ids"]}
    kw = dict(limit=24, temperature=1.5, logit_bias=ban)
    a = run(eng, prompt, seed=7, **kw)
    assert len(a) == 24 and run(eng, prompt, seed=7, **kw) == a
    others = [run(eng, prompt, seed=s, **kw) for s in (1, 2, 3)]
    assert any(o != a for o in others)
    greedy = run(eng, prompt, temperature=0)
    assert run(eng, prompt, temperature=1.0, top_k=1, seed=3) == greedy


def test_context_window_and_cancel(tiny_onnx, engines):
    prompt = engines["fp32"].tokenize(chatml([{"role": "user", "content": "Count to five."}]))
    with OnnxEngine(tiny_onnx["fp32"], n_ctx=len(prompt) + 3) as eng:
        assert eng.info.n_ctx == len(prompt) + 3
        assert len(run(eng, prompt, temperature=0)) == 4   # 3 evaluated + the last sampled
        with pytest.raises(ContextLengthExceeded):
            eng.generate(prompt + prompt, make_params())
    eng = engines["fp32"]
    got = []
    for tok in eng.generate(prompt, make_params(temperature=0)):
        got.append(tok)
        eng.cancel()
    assert len(got) == 1
    with pytest.raises(EdgeChatError, match="logit_bias"):
        eng.generate(prompt, make_params(logit_bias={10**6: 1}))


def test_engine_imports_neither_torch_nor_transformers(tiny_onnx):
    code = (
        "import sys\nfrom pathlib import Path\n"
        "from edge_chat.engines.onnx.engine import OnnxEngine\n"
        "from edge_chat.params import make_params\n"
        f"e = OnnxEngine(Path({str(tiny_onnx['int4'])!r}))\n"
        "ids = e.tokenize('<|im_start|>user\\nSay hello.<|im_end|>\\n<|im_start|>assistant\\n')\n"
        "print(e.detokenize([t.id for t in e.generate(ids, make_params(temperature=0))]))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'transformers', 'optimum')))\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["Hello! How can I help you?", "[]"]


# -- bad inputs ------------------------------------------------------------------------

def test_bad_model_folders(tiny_onnx, tmp_path):
    with pytest.raises(ModelLoadError) as e:
        OnnxEngine(tmp_path)
    assert "model.onnx" in one_line(e)
    good = tiny_onnx["int4"]
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "model.onnx").write_bytes(b"\x00not a protobuf" * 100)
    with pytest.raises(ModelLoadError) as e:
        OnnxEngine(corrupt)
    assert "cannot be loaded" in one_line(e)
    truncated = tmp_path / "truncated"
    shutil.copytree(good, truncated)
    data = truncated / conv.DATA_FILE
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelLoadError):
        OnnxEngine(truncated)
    notok = tmp_path / "notok"
    shutil.copytree(good, notok)
    (notok / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError) as e:
        OnnxEngine(notok)
    assert "tokenizer.json" in one_line(e)


def test_convert_bad_inputs_leave_nothing(tiny_hf, tmp_path, store):
    with pytest.raises(ConvertError) as e:
        conv.convert_to_onnx(tiny_hf, "q4_k_m")
    assert "fp32, fp16, int8, int4" in one_line(e)
    with pytest.raises(ConvertError):
        conv.convert_to_onnx(tiny_hf, "int4", block_size=24)
    mamba = tmp_path / "mamba"
    mamba.mkdir()
    (mamba / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    shutil.copy(tiny_hf / "tokenizer.json", mamba)
    with pytest.raises(ConvertError) as e:
        conv.convert_to_onnx(mamba, "int8")
    assert "'mamba' cannot be exported" in one_line(e)
    notok = tmp_path / "notok"
    shutil.copytree(tiny_hf, notok, ignore=shutil.ignore_patterns("tokenizer*"))
    with pytest.raises(ConvertError) as e:
        conv.convert_to_onnx(notok, "int4")
    assert "no tokenizer" in one_line(e)
    with pytest.raises(ConvertError):
        conv.convert_to_onnx(tmp_path / "missing", "int4")
    with pytest.raises(ConvertError) as e:
        conv.convert_to_onnx(tiny_hf, "int4", graph="turbo")
    assert "auto, fused, optimum" in one_line(e)
    gelu = tmp_path / "gelu"
    shutil.copytree(tiny_hf, gelu)
    cfg = json.loads((gelu / "config.json").read_text())
    (gelu / "config.json").write_text(json.dumps({**cfg, "hidden_act": "gelu"}))
    with pytest.raises(ConvertError) as e:
        conv.convert_to_onnx(gelu, "int4", graph="fused")
    assert "no fused ONNX graph" in one_line(e) and "--graph optimum" in one_line(e)
    assert_empty(store)


def test_convert_failure_midway_leaves_nothing(tiny_hf, store, monkeypatch):
    monkeypatch.setattr(conv, "EXPORT_ATOL", -1.0)   # no export can pass: fails after export
    with pytest.raises(ConvertError) as e:
        conv.convert_to_onnx(tiny_hf, "int4")
    assert "export check failed" in one_line(e)
    assert_empty(store)


# -- providers --------------------------------------------------------------------------

def test_provider_selection(tiny_onnx):
    cpu = ["AzureExecutionProvider", "CPUExecutionProvider"]
    gpu = ["CUDAExecutionProvider", "DmlExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("cpu", cpu) == ["CPUExecutionProvider"]
    assert select_providers("cuda", gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert select_providers("CUDAExecutionProvider", gpu)[0] == "CUDAExecutionProvider"
    assert select_providers("DirectML", gpu)[0] == "DmlExecutionProvider"
    for bad in ("cuda", "directml", "AzureExecutionProvider", "tpu"):
        with pytest.raises(EdgeChatError) as e:
            select_providers(bad, cpu)
        msg = one_line(e)
        assert msg.endswith("installed: cpu (CPUExecutionProvider)")   # Azure is not local
        assert e.value.param == "provider"
    with pytest.raises(EdgeChatError, match="onnxruntime-gpu"):
        OnnxEngine(tiny_onnx["int4"], provider="cuda")    # no GPU build installed here


# -- sampler (hand-made logits) -----------------------------------------------------------

def sample(logits, context=(), generated=(), **params) -> int:
    s = Sampler(make_params(**params), context=context)
    for t in generated:
        s.accept(t)
    return s.sample(np.array(logits, dtype=np.float32))


def draws(logits, n=400, **params) -> set[int]:
    s = Sampler(make_params(seed=0, **params))
    return {s.sample(np.array(logits, dtype=np.float32)) for _ in range(n)}


def test_sampler_greedy_bias_and_ban():
    assert sample([1, 3, 2], temperature=0) == 1
    assert sample([1, 3, 2], temperature=0, logit_bias={0: 5}) == 0
    assert sample([1, 3, 2], temperature=0, logit_bias={1: -100}) == 2   # -100 bans
    assert draws([0, 0, 0], logit_bias={1: -100}) == {0, 2}
    for temperature in (0, 1):
        with pytest.raises(EdgeChatError, match="banned every token"):
            sample([1, 2], temperature=temperature, logit_bias={0: -100, 1: -100})
    assert sample([1, 3, 2], temperature=0, repeat_penalty=1.5, logit_bias={2: 1.5}) == 2
    with pytest.raises(EdgeChatError, match="out of range"):
        sample([1, 2], logit_bias={5: 1})


def test_sampler_penalties():
    # repeat_penalty (llama.cpp): positive logits divided, negative multiplied
    s = Sampler(make_params(repeat_penalty=2.0), context=[0, 1, 1])
    np.testing.assert_allclose(s.adjust(np.array([4.0, -1.0, 3.0])), [2.0, -2.0, 3.0])
    assert sample([4, -1, 3], context=[0], temperature=0, repeat_penalty=2.0) == 2
    # only the last 64 tokens count
    assert sample([3, 2.9, -5], context=[0] + [2] * 64, temperature=0, repeat_penalty=4.0) == 0
    assert sample([3, 2.9, -5], context=[0] + [2] * 63, temperature=0, repeat_penalty=4.0) == 1
    # presence/frequency (OpenAI): over generated tokens only
    s = Sampler(make_params(presence_penalty=0.5, frequency_penalty=1.0), context=[2, 2])
    for t in (0, 0, 1):
        s.accept(t)
    np.testing.assert_allclose(s.adjust(np.array([5.0, 5.0, 5.0])), [2.5, 3.5, 5.0])
    assert sample([5, 4.5, 1], generated=[0], temperature=0, presence_penalty=1.0) == 1


def test_sampler_truncation_and_temperature():
    logits = np.log([0.5, 0.3, 0.15, 0.05])
    assert draws(logits) == {0, 1, 2, 3}
    assert draws(logits, top_k=2) == {0, 1}
    assert draws(logits, top_p=0.7) == {0, 1}          # 0.5 + 0.3 reaches 0.7
    assert draws(logits, top_p=0.45) == {0}
    assert draws(logits, min_p=0.25) == {0, 1, 2}      # >= 0.125
    assert draws(logits, min_p=0.5) == {0, 1}          # >= 0.25
    assert draws(logits, top_k=3, top_p=0.9, min_p=0.4) == {0, 1}
    # temperature: low sharpens, high flattens
    low = Sampler(make_params(seed=1, temperature=0.02))
    assert all(low.sample(logits) == 0 for _ in range(200))
    hot = Sampler(make_params(seed=1, temperature=2.0))
    counts = np.bincount([hot.sample(logits) for _ in range(4000)], minlength=4) / 4000
    assert counts[3] > 0.09                            # 0.05 at temperature 1, ~0.12 at 2


def test_sampler_seed_reproducible():
    logits = np.random.default_rng(0).normal(size=500).astype(np.float32)

    def seq(seed):
        s = Sampler(make_params(seed=seed))
        return [s.sample(logits) for _ in range(30)]

    assert seq(42) == seq(42)
    assert seq(42) != seq(43)


def _graph(folder: Path):
    import onnx
    return onnx.load(str(folder / "model.onnx"), load_external_data=False).graph


def test_fused_graph_shares_the_kv_buffer(tiny_onnx, engines, tiny_qa):
    """Every quant of a Llama-family model gets the fused graph: one GroupQueryAttention
    per layer (rotary inside, q/k/v in one MatMul), fused norms, no KV concatenation;
    the engine binds one buffer as past and present, so trimming the cache is free and
    what lies past the kept positions is never read."""
    for quant, folder in tiny_onnx.items():
        m = json.loads((folder / "edge_chat.json").read_text())
        assert m["graph"] == "fused" and m["kv_share_buffer"] is True, quant
        graph = _graph(folder)
        ops = [n.op_type for n in graph.node]
        assert ops.count("GroupQueryAttention") == m["n_layers"] == 2, quant
        assert "logits_to_keep" in {i.name for i in graph.input}, quant
        assert ops.count("SkipSimplifiedLayerNormalization") == 2 * m["n_layers"], quant
        assert "Concat" not in ops and "Expand" not in ops, quant
    eng = engines["fp32"]
    long_p = eng.tokenize(chatml(tiny_qa[0].messages + [
        {"role": "assistant", "content": tiny_qa[0].answer}] + tiny_qa[1].messages))
    run(eng, long_p, temperature=0)
    short_p = eng.tokenize(chatml(tiny_qa[2].messages))
    got = run(eng, short_p, temperature=0)      # the cache is cut back, stale rows stay
    with OnnxEngine(tiny_onnx["fp32"]) as fresh:
        assert run(fresh, short_p, temperature=0) == got
    assert eng.detokenize(got) == tiny_qa[2].answer


def test_optimum_graph_does_not_copy_the_kv_cache(tiny_onnx_optimum, tiny_qa):
    """--graph optimum: optimum's export, whose repeat_kv (Expand of K and V to every
    head) is rewritten into broadcasting MatMuls in every layer; the engine grows the
    KV cache run by run."""
    folder = tiny_onnx_optimum
    manifest = json.loads((folder / "edge_chat.json").read_text())
    assert manifest["graph"] == "optimum" and "kv_share_buffer" not in manifest
    assert any("repeat_kv removed in 2 attention layers" in n for n in manifest["notes"])
    graph = _graph(folder)
    assert "GroupQueryAttention" not in {n.op_type for n in graph.node}
    presents = {o.name for o in graph.output if o.name.startswith("present")}
    producer = {o: n for n in graph.node for o in n.output}
    copies = [n for n in graph.node if n.op_type == "Expand"
              and producer.get(n.input[0]) is not None
              and producer[n.input[0]].op_type == "Unsqueeze"
              and producer[n.input[0]].input[0] in presents]
    assert presents and not copies
    assert not (folder / "model.onnx.orig").exists()
    with OnnxEngine(folder) as eng:
        assert answer(eng, tiny_qa[0].messages) == tiny_qa[0].answer


def test_fused_graph_falls_back_to_optimum_when_its_check_fails(tiny_hf, tmp_path, monkeypatch):
    real = conv.write_fused_decoder

    def wrong(model, cfg, out, data_file):      # a fused graph whose logits are off
        real(model, {**cfg, "rms_norm_eps": 0.5}, out, data_file)

    monkeypatch.setattr(conv, "write_fused_decoder", wrong)
    res = conv.convert_to_onnx(tiny_hf, "fp32", tmp_path / "out")
    m = json.loads((res.output / "edge_chat.json").read_text())
    assert m["graph"] == "optimum" and m["export_max_abs_logit_diff"] <= conv.EXPORT_ATOL
    assert any("no fused graph: its logits differ" in n for n in res.notes)
    with pytest.raises(ConvertError) as e:      # asked for explicitly: an error instead
        conv.convert_to_onnx(tiny_hf, "fp32", tmp_path / "out2", graph="fused")
    assert "--graph optimum" in one_line(e)
    assert not (tmp_path / "out2").exists()
