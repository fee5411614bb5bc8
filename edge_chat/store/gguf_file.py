"""A small, dependency-free GGUF reader (header, metadata, tensor table).

Reads only the header: metadata and the tensor table, never the weights. Big
arrays (the tokenizer's 100k+ tokens) are kept as their length only unless asked
for.

GGUF layout (v2/v3): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv, the
key/values, the tensor infos (name, n_dims, dims, type, offset), padding to
`general.alignment` (32), then the tensor data."""

from __future__ import annotations

import mmap
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from edge_chat.errors import ModelLoadError, printable

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: arrays with more elements than this are stored as `GGUFArray` (length only)
SMALL_ARRAY = 64
#: arrays of arrays deeper than this are a corrupt file (llama.cpp writes none)
MAX_ARRAY_DEPTH = 4

# ggml type id -> (name, elements per block, bytes per block)
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("f32", 1, 4), 1: ("f16", 1, 2),
    2: ("q4_0", 32, 18), 3: ("q4_1", 32, 20), 6: ("q5_0", 32, 22), 7: ("q5_1", 32, 24),
    8: ("q8_0", 32, 34), 9: ("q8_1", 32, 40),
    10: ("q2_k", 256, 84), 11: ("q3_k", 256, 110), 12: ("q4_k", 256, 144),
    13: ("q5_k", 256, 176), 14: ("q6_k", 256, 210), 15: ("q8_k", 256, 292),
    16: ("iq2_xxs", 256, 66), 17: ("iq2_xs", 256, 74), 18: ("iq3_xxs", 256, 98),
    19: ("iq1_s", 256, 50), 20: ("iq4_nl", 32, 18), 21: ("iq3_s", 256, 110),
    22: ("iq2_s", 256, 82), 23: ("iq4_xs", 256, 136),
    24: ("i8", 1, 1), 25: ("i16", 1, 2), 26: ("i32", 1, 4), 27: ("i64", 1, 8),
    28: ("f64", 1, 8), 29: ("iq1_m", 256, 56), 30: ("bf16", 1, 2),
    34: ("tq1_0", 256, 54), 35: ("tq2_0", 256, 66), 39: ("mxfp4", 32, 17),
    40: ("nvfp4", 64, 36), 41: ("q1_0", 128, 18), 42: ("q2_0", 64, 18),
}

# general.file_type (llama_ftype) -> quant name
FILE_TYPES: dict[int, str] = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1",
    10: "q2_k", 11: "q3_k_s", 12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m",
    16: "q5_k_s", 17: "q5_k_m", 18: "q6_k", 19: "iq2_xxs", 20: "iq2_xs", 21: "q2_k_s",
    22: "iq3_xs", 23: "iq3_xxs", 24: "iq1_s", 25: "iq4_nl", 26: "iq3_s", 27: "iq3_m",
    28: "iq2_s", 29: "iq2_m", 30: "iq4_xs", 31: "iq1_m", 32: "bf16", 36: "tq1_0",
    37: "tq2_0", 38: "mxfp4_moe", 39: "nvfp4",
}

# metadata value type id -> struct code (scalars); 8 = string, 9 = array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
            10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_VALUE_TYPE_NAMES = {0: "uint8", 1: "int8", 2: "uint16", 3: "int16", 4: "uint32",
                     5: "int32", 6: "float32", 7: "bool", 8: "string", 9: "array",
                     10: "uint64", 11: "int64", 12: "float64"}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class GGUFArray:
    """A big metadata array that was not loaded: its element type and length."""
    elem_type: str
    length: int

    def __len__(self) -> int:
        return self.length


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    type: str                  # ggml type name: "f16", "q4_k", ...
    shape: tuple[int, ...]     # ggml order: shape[0] is the row length (contiguous)
    offset: int                # absolute offset of the data in the file
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[GGUFTensor]
    data_offset: int
    file_size: int
    alignment: int = DEFAULT_ALIGNMENT
    byte_order: str = "little"

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        """`{arch}.{suffix}`, e.g. arch_value('block_count')."""
        return self.metadata.get(f"{self.arch}.{suffix}", default)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def name(self) -> str | None:
        return self.metadata.get("general.name")

    @property
    def context_length(self) -> int | None:
        v = self.arch_value("context_length")
        return int(v) if v is not None else None

    @property
    def n_layers(self) -> int:
        v = self.arch_value("block_count")
        if v is not None:
            return int(v)
        per_layer, _ = self.layer_bytes()
        return len(per_layer)

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    @property
    def file_type(self) -> int | None:
        v = self.metadata.get("general.file_type")
        return int(v) if v is not None else None

    @property
    def quant_name(self) -> str:
        """'q4_k_m', 'f16'...; from general.file_type, else the most common weight type."""
        ft = self.file_type
        if ft is not None:
            return FILE_TYPES.get(ft, f"ftype{ft}")
        return self.main_tensor_type() or "unknown"

    def main_tensor_type(self) -> str | None:
        """The type of most bytes among 2-D+ tensors."""
        sizes: Counter[str] = Counter()
        for t in self.tensors:
            if len(t.shape) >= 2:
                sizes[t.type] += t.nbytes
        return sizes.most_common(1)[0][0] if sizes else None

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    def tensor(self, name: str) -> GGUFTensor | None:
        return next((t for t in self.tensors if t.name == name), None)

    def layer_bytes(self) -> tuple[list[int], int]:
        """(bytes of each block `blk.N.*` indexed by N, bytes of everything else)."""
        per: dict[int, int] = {}
        other = 0
        for t in self.tensors:
            m = _LAYER_RE.match(t.name)
            if m:
                i = int(m.group(1))
                per[i] = per.get(i, 0) + t.nbytes
            else:
                other += t.nbytes
        n = max(per, default=-1) + 1
        return [per.get(i, 0) for i in range(n)], other

    def output_bytes(self) -> int:
        """Bytes llama.cpp puts on the GPU with the output layer (n_gpu_layers > n_layers):
        output norm + output matrix (the token embedding when tied)."""
        total = 0
        for name in ("output_norm.weight", "output_norm.bias", "output.bias"):
            t = self.tensor(name)
            total += t.nbytes if t else 0
        out = self.tensor("output.weight") or self.tensor("token_embd.weight")
        return total + (out.nbytes if out else 0)

    def kv_bytes_per_token_per_layer(self, bytes_per_value: float = 2.0) -> int:
        """K + V cache bytes for one token in one layer (f16 cache by default)."""
        n_head = _first_int(self.arch_value("attention.head_count")) or 1
        n_kv = _first_int(self.arch_value("attention.head_count_kv")) or n_head
        embd = int(self.arch_value("embedding_length") or 0)
        k_len = int(self.arch_value("attention.key_length") or embd // n_head)
        v_len = int(self.arch_value("attention.value_length") or embd // n_head)
        return int(n_kv * (k_len + v_len) * bytes_per_value)


def _first_int(v: Any) -> int | None:
    """head_count_kv can be a per-layer array: take the largest."""
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        return max((int(x) for x in v), default=None)
    return int(v)


class _Cursor:
    """Bounds-checked little/big-endian reads over the mapped file."""

    def __init__(self, buf: mmap.mmap | bytes, path: Path, endian: str):
        self.buf, self.pos, self.path, self.e = buf, 0, path, endian
        self.size = len(buf)

    def truncated(self, what: str) -> ModelLoadError:
        return ModelLoadError(f"{self.path} is truncated or corrupt: the header ends inside "
                              f"{what} (file is {self.size} bytes)")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.truncated(what)

    def unpack(self, code: str, what: str):
        n = struct.calcsize(code)
        self.need(n, what)
        v = struct.unpack_from(self.e + code, self.buf, self.pos)[0]
        self.pos += n
        return v

    def u32(self, what: str) -> int:
        return self.unpack("I", what)

    def u64(self, what: str) -> int:
        return self.unpack("Q", what)

    def string(self, what: str) -> str:
        n = self.u64(what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Step over `count` strings (a tokenizer's 150k tokens or merges: one tight
        loop rather than a call per string)."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, struct.unpack_from
        code = self.e + "Q"
        for _ in range(count):
            if pos + 8 > size:
                raise self.truncated(what)
            pos += 8 + unpack(code, buf, pos)[0]
        if pos > size:
            raise self.truncated(what)
        self.pos = pos


def _read_value(cur: _Cursor, vtype: int, key: str, load_array: bool, depth: int = 0) -> Any:
    what = f"the value of '{printable(key)}'"
    if vtype in _SCALARS:
        return cur.unpack(_SCALARS[vtype], what)
    if vtype == _STRING:
        return cur.string(what)
    if vtype != _ARRAY:
        raise ModelLoadError(f"{cur.path}: corrupt GGUF metadata: '{printable(key)}' has unknown "
                             f"value type {vtype}")
    if depth >= MAX_ARRAY_DEPTH:
        raise ModelLoadError(f"{cur.path}: corrupt GGUF metadata: '{printable(key)}' nests arrays "
                             f"more than {MAX_ARRAY_DEPTH} deep")
    etype = cur.u32(what)
    n = cur.u64(what)
    if etype in _SCALARS:
        size = struct.calcsize(_SCALARS[etype])
        cur.need(n * size, what)
        if not load_array and n > SMALL_ARRAY:
            cur.pos += n * size
            return GGUFArray(_VALUE_TYPE_NAMES[etype], n)
        vals = list(struct.unpack_from(f"{cur.e}{n}{_SCALARS[etype]}", cur.buf, cur.pos))
        cur.pos += n * size
        return vals
    if etype == _STRING:
        cur.need(n * 8, what)  # at least a length per element
        if not load_array and n > SMALL_ARRAY:
            cur.skip_strings(n, what)
            return GGUFArray("string", n)
        return [cur.string(what) for _ in range(n)]
    if etype == _ARRAY:  # nested arrays: rare, always loaded
        cur.need(n * 12, what)  # at least a type and a length per element
        return [_read_value(cur, _ARRAY, key, load_array, depth + 1) for _ in range(n)]
    raise ModelLoadError(f"{cur.path}: corrupt GGUF metadata: '{printable(key)}' is an array of "
                         f"unknown type {etype}")


def read_gguf(path: str | Path, load_arrays: bool | Iterable[str] = False) -> GGUFFile:
    """Parse a GGUF header. `load_arrays`: True, or the keys whose big arrays to load
    (others over SMALL_ARRAY elements become `GGUFArray`). Raises ModelLoadError."""
    path = Path(path)
    wanted = load_arrays if isinstance(load_arrays, bool) else set(load_arrays)
    try:
        with open(path, "rb") as f:
            size = path.stat().st_size
            if size < 24:
                head = f.read(4)
                if head != GGUF_MAGIC:
                    raise ModelLoadError(f"{path} is not a GGUF file (bad magic {head!r})")
                raise ModelLoadError(f"{path} is truncated: {size} bytes, shorter than a GGUF header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, path, size, wanted)
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e.strerror or e}") from None


def _parse(buf: mmap.mmap, path: Path, size: int, wanted: bool | set[str]) -> GGUFFile:
    if buf[:4] != GGUF_MAGIC:
        raise ModelLoadError(f"{path} is not a GGUF file (bad magic {bytes(buf[:4])!r})")
    endian = "<"
    version = struct.unpack_from("<I", buf, 4)[0]
    if version not in SUPPORTED_VERSIONS and struct.unpack_from(">I", buf, 4)[0] in SUPPORTED_VERSIONS:
        endian = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version not in SUPPORTED_VERSIONS:
        raise ModelLoadError(f"{path}: unsupported GGUF version {version} (supported: "
                             f"{', '.join(map(str, SUPPORTED_VERSIONS))})")
    cur = _Cursor(buf, path, endian)
    cur.pos = 8
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    # every entry takes at least 8+4 bytes: catches garbage counts before looping
    if (n_tensors + n_kv) * 12 > size:
        raise ModelLoadError(f"{path} is truncated or corrupt: it claims {n_tensors} tensors "
                             f"and {n_kv} metadata entries in {size} bytes")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        vtype = cur.u32(f"the type of '{printable(key)}'")
        load = wanted if isinstance(wanted, bool) else key in wanted
        metadata[key] = _read_value(cur, vtype, key, load)

    infos = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        label = f"tensor '{printable(name)}'"
        n_dims = cur.u32(label)
        if not 1 <= n_dims <= 4:
            raise ModelLoadError(f"{path}: corrupt GGUF: {label} has {n_dims} dimensions")
        shape = tuple(cur.u64(label) for _ in range(n_dims))
        type_id = cur.u32(label)
        rel = cur.u64(label)
        infos.append((name, shape, type_id, rel))

    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelLoadError(f"{path}: corrupt GGUF: general.alignment = {alignment!r}")
    data_offset = -(-cur.pos // alignment) * alignment

    tensors = []
    for name, shape, type_id, rel in infos:
        label = f"tensor '{printable(name)}'"
        if type_id not in GGML_TYPES:
            raise ModelLoadError(f"{path}: {label} has unknown ggml type {type_id} "
                                 "(a newer quantization than this version knows?)")
        tname, block, block_bytes = GGML_TYPES[type_id]
        if shape[0] % block or 0 in shape:
            raise ModelLoadError(f"{path}: corrupt GGUF: {label} ({tname}) has the shape "
                                 f"{list(shape)} (rows must be a non-zero multiple of {block})")
        if rel % alignment:
            raise ModelLoadError(f"{path}: corrupt GGUF: {label} starts at {rel}, not a "
                                 f"multiple of the alignment {alignment}")
        n = 1
        for d in shape:
            n *= d
        nbytes = n // block * block_bytes
        offset = data_offset + rel
        if offset + nbytes > size:
            raise ModelLoadError(f"{path} is truncated: {label} data ends at byte "
                                 f"{offset + nbytes} but the file has {size} bytes")
        tensors.append(GGUFTensor(name, tname, shape, offset, nbytes))

    return GGUFFile(path=path, version=version, metadata=metadata, tensors=tensors,
                    data_offset=data_offset, file_size=size, alignment=alignment,
                    byte_order="little" if endian == "<" else "big")
