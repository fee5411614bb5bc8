"""The GPU layer budget (`fit_gpu_layers`, from a GGUF's tensor sizes) for `--gpu-layers auto`."""

from __future__ import annotations

from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from edge_chat.store.gguf_file import GGUFFile

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
