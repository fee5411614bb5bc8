"""edge_chat: offline, quantized chat on a laptop or a small GPU."""

__version__ = "0.1.0"
