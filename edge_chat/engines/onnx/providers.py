"""onnxruntime execution providers: which one a `--provider` name means, and where
the KV cache lives for it."""

from __future__ import annotations

from collections.abc import Sequence

from edge_chat.errors import EdgeChatError

PROVIDER_ALIASES = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
    "directml": "DmlExecutionProvider", "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider", "migraphx": "MIGraphXExecutionProvider",
    "openvino": "OpenVINOExecutionProvider", "coreml": "CoreMLExecutionProvider",
    "qnn": "QNNExecutionProvider", "webgpu": "WebGpuExecutionProvider",
}
#: where the KV cache lives for a provider (OrtValue device names)
KV_DEVICE = {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}
#: providers that do not compute locally
_NOT_LOCAL = {"AzureExecutionProvider"}


def select_providers(provider: str, available: Sequence[str] | None = None) -> list[str]:
    """onnxruntime providers for `provider` ("cpu", "cuda", "directml", ... or a full
    name like "CUDAExecutionProvider"), CPU last as fallback for unsupported nodes.
    Raises EdgeChatError naming the installed ones."""
    if available is None:
        import onnxruntime as ort
        available = ort.get_available_providers()
    local = [a for a in available if a not in _NOT_LOCAL]
    want = PROVIDER_ALIASES.get(provider.strip().lower(), provider.strip())
    match = next((a for a in local if a.lower() == want.lower()), None)
    if match is None:
        short = {v: k for k, v in reversed(list(PROVIDER_ALIASES.items()))}
        names = ", ".join(f"{short.get(a, a)} ({a})" for a in local) or "none"
        hint = {"CUDAExecutionProvider": " (pip install onnxruntime-gpu)",
                "DmlExecutionProvider": " (pip install onnxruntime-directml)"}.get(want, "")
        raise EdgeChatError(f"onnxruntime execution provider '{provider}' is not available"
                            f"{hint}; installed: {names}", param="provider")
    return [match] if match == "CPUExecutionProvider" else [match, "CPUExecutionProvider"]
