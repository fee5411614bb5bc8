"""The GPU layer budget (`fit_gpu_layers`, from a GGUF's tensor sizes) and `parse_size`."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from edge_chat.errors import EdgeChatError

if TYPE_CHECKING:
    from edge_chat.engines.gguf_file import GGUFFile

#: VRAM kept free for the compute buffers, CUDA context, scratch...
DEFAULT_GPU_RESERVE = 512 * 1024 ** 2


def fit_gpu_layers(gguf: GGUFFile, vram_bytes: int, n_ctx: int,
                   kv_bytes_per_token_per_layer: int | None = None,
                   reserve_bytes: int = DEFAULT_GPU_RESERVE) -> int:
    """How many layers to offload (llama.cpp's n_gpu_layers) within `vram_bytes`.

    llama.cpp offloads the *last* N blocks; each costs its weights plus its KV cache
    (n_ctx tokens). `n_layers + 1` means every block and the output layer too (what
    llama.cpp does for n_gpu_layers > n_layers). `reserve_bytes` is kept free for
    compute buffers. 0 when not even one block fits."""
    per_layer, _ = gguf.layer_bytes()
    n_layers = gguf.n_layers
    per_layer = (per_layer + [0] * n_layers)[:n_layers]
    if kv_bytes_per_token_per_layer is None:
        kv_bytes_per_token_per_layer = gguf.kv_bytes_per_token_per_layer()
    kv_layer = int(n_ctx) * int(kv_bytes_per_token_per_layer)
    budget = int(vram_bytes) - int(reserve_bytes)
    used = fitted = 0
    for weights in reversed(per_layer):
        cost = weights + kv_layer
        if used + cost > budget:
            return fitted
        used += cost
        fitted += 1
    if used + gguf.output_bytes() <= budget:
        return n_layers + 1
    return n_layers


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.I)
_UNITS = {"": 1, "b": 1,
          "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4,
          "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3, "tib": 1024 ** 4,
          "kb": 1000, "mb": 1000 ** 2, "gb": 1000 ** 3, "tb": 1000 ** 4}


def parse_size(text: str | int) -> int:
    """'4GB' -> 4*10^9, '512MiB' -> 512*2^20, '4g' -> 4*2^30, '1024' -> 1024 bytes.
    SI suffixes (KB, MB, GB, TB) are decimal; KiB.. and bare k/m/g/t are binary."""
    if isinstance(text, int):
        return text
    m = _SIZE_RE.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise EdgeChatError(f"invalid size '{text}': use e.g. 4GB, 512MiB, 4g or a number of bytes",
                            param="vram")
    return int(float(m.group(1)) * _UNITS[unit])
