"""Models from the Hugging Face hub: ready-made GGUF and ONNX repos pulled into the
store with huggingface_hub only (no torch, no transformers); safetensors repos are
downloaded and converted (the `convert` extra).

repo.py lists a repo and picks what to fetch, download.py fetches it (progress, resume,
SHA-256), pull.py lands it in the store and finds pulled models again by hub id.
This module imports nothing: the store names the default model without a circle."""

#: the model `edge_chat chat` suggests when the store is empty: small, chat-tuned, Q4_K_M ~490 MB
DEFAULT_MODEL = "Qwen/Qwen2.5-0.5B-Instruct-GGUF"
#: the GGUF quant taken when none is asked for (what Ollama and LM Studio default to)
DEFAULT_QUANT = "q4_k_m"
