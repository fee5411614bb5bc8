"""Mutations of a real GGUF file for the fuzz tests: where each metadata value and
tensor-info field sits in the header, and copies with one of them changed, bits
flipped, or the file cut inside a section. (No tests here.)"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?",
            10: "Q", 11: "q", 12: "d"}


@dataclass
class Field:
    section: str          # "header", "kv", "tensor"
    name: str             # key or tensor name (+ ".dims" / ".type" / ".offset")
    offset: int           # where the value's bytes start
    code: str             # struct code of the value ("s" for a string's length)


def fields(data: bytes) -> tuple[list[Field], int]:
    """Every scalar field of the header (counts, metadata scalars, array and string
    lengths, tensor dims/types/offsets) and where the tensor infos end."""
    out = [Field("header", "version", 4, "I"), Field("header", "n_tensors", 8, "Q"),
           Field("header", "n_kv", 16, "Q")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24

    def string(pos: int, name: str) -> tuple[str, int]:
        n = struct.unpack_from("<Q", data, pos)[0]
        out.append(Field("kv" if name.startswith("kv") else "tensor", name + ".len", pos, "Q"))
        return data[pos + 8:pos + 8 + n].decode("utf-8", "replace"), pos + 8 + n

    def value(pos: int, vtype: int, key: str) -> int:
        if vtype in _SCALARS:
            out.append(Field("kv", key, pos, _SCALARS[vtype]))
            return pos + struct.calcsize(_SCALARS[vtype])
        if vtype == 8:
            return string(pos, f"kv {key}")[1]
        etype, n = struct.unpack_from("<IQ", data, pos)
        out.append(Field("kv", key + ".elem_type", pos, "I"))
        out.append(Field("kv", key + ".count", pos + 4, "Q"))
        pos += 12
        for i in range(n):
            if etype in _SCALARS:
                if i < 4:
                    out.append(Field("kv", f"{key}[{i}]", pos, _SCALARS[etype]))
                pos += struct.calcsize(_SCALARS[etype])
            elif etype == 8:
                n_s = struct.unpack_from("<Q", data, pos)[0]
                if i < 2:
                    out.append(Field("kv", f"{key}[{i}].len", pos, "Q"))
                pos += 8 + n_s
            else:
                pos = value(pos, etype, f"{key}[{i}]")
        return pos

    for _ in range(n_kv):
        key, pos = string(pos, "kv key")
        vtype = struct.unpack_from("<I", data, pos)[0]
        out.append(Field("kv", key + ".type", pos, "I"))
        pos = value(pos + 4, vtype, key)
    for _ in range(n_tensors):
        name, pos = string(pos, "tensor name")
        n_dims = struct.unpack_from("<I", data, pos)[0]
        out.append(Field("tensor", name + ".n_dims", pos, "I"))
        pos += 4
        for d in range(n_dims):
            out.append(Field("tensor", f"{name}.dim{d}", pos, "Q"))
            pos += 8
        out.append(Field("tensor", name + ".type", pos, "I"))
        out.append(Field("tensor", name + ".offset", pos + 4, "Q"))
        pos += 12
    return out, pos


def set_field(data: bytes, f: Field, value) -> bytes:
    buf = bytearray(data)
    code = f.code
    if code in "fd":
        value = float(value)
    elif code == "?":
        value = bool(value)
    else:
        size = struct.calcsize(code)
        bits = size * 8
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if code.islower() else (0, (1 << bits) - 1)
        value = min(max(int(value), lo), hi)
    struct.pack_into("<" + code, buf, f.offset, value)
    return bytes(buf)


def odd_values(f: Field, data: bytes) -> list:
    """Out-of-range values for a field: 0, 1, -1/max, huge, and its own value x 1000."""
    if f.code in "fd":
        return [0.0, -1.0, float("inf"), float("nan"), 1e30]
    if f.code == "?":
        return [2]
    cur = struct.unpack_from("<" + f.code, data, f.offset)[0]
    size = struct.calcsize(f.code)
    return [0, 1, (1 << (size * 8 - 1)) - 1, -1, cur * 1000 + 7, cur + 1]


def flip_bits(data: bytes, rng: random.Random, start: int, end: int, n: int = 3) -> bytes:
    buf = bytearray(data)
    for _ in range(n):
        i = rng.randrange(start, end)
        buf[i] ^= 1 << rng.randrange(8)
    return bytes(buf)


def nested_array_gguf(depth: int) -> bytes:
    """A GGUF whose only metadata value is an array of arrays `depth` deep."""
    key = b"evil.nested"
    body = struct.pack("<I", 9)                          # the value type: array
    for _ in range(depth - 1):
        body += struct.pack("<IQ", 9, 1)                 # an array holding one array
    body += struct.pack("<IQ", 4, 0)                     # ... of zero uint32
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", len(key)) + key
    return head + body


def control_key_gguf(data: bytes) -> bytes:
    """`data` with its first metadata key's bytes replaced by terminal escape sequences
    and that key's value type broken (so the reader's error names the key)."""
    n = struct.unpack_from("<Q", data, 24)[0]
    evil = (b"\x1b[31m\x07\r" * n)[:n]
    return data[:32] + evil + struct.pack("<I", 77) + data[36 + n:]
