"""Models from the Hugging Face hub: ready-made GGUF and ONNX repos pulled into the
store with huggingface_hub only (no torch, no transformers); safetensors repos are
downloaded and converted (the `convert` extra).

repo.py lists a repo and picks what to fetch, download.py fetches it (progress, resume,
SHA-256), pull.py lands it in the store and finds pulled models again by hub id.
The default model `chat` suggests is the store's (`store.paths.DEFAULT_MODEL`)."""

#: the GGUF quant taken when none is asked for (what Ollama and LM Studio default to)
DEFAULT_QUANT = "q4_k_m"
