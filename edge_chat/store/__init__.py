"""Model files on disk, with no engine needed: paths.py (where the store is, names, split
GGUF parts, describe), gguf_file.py (a GGUF header reader), gguf_check.py (the metadata
values llama.cpp trusts, checked before a load)."""
