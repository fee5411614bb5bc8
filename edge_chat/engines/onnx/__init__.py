"""onnxruntime: engine.py (OnnxEngine: sessions, KV buffers, batch rows), vocab.py
(the tokenizer side), providers.py (execution providers, KV device)."""
