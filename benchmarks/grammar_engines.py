"""Which grammar library masks Qwen's 151k-token vocabulary faster: llguidance or
xgrammar? Both compile the same JSON schema over the same vocabulary (the bytes of
every token of a tokenizer.json) and follow the same answer token by token; the
script prints the compile time and the per-token mask time (median, p90, max).

    python benchmarks/grammar_engines.py [HF_FOLDER] [--reps 3]

HF_FOLDER defaults to the real Qwen2.5-Coder-0.5B-Instruct folder. xgrammar needs
torch and transformers at import (it is not an edge_chat dependency): when it is
missing, only llguidance is measured (to measure it without adding it to the venv:
`pip install --no-deps --target /tmp/xg xgrammar apache-tvm-ffi` and PYTHONPATH=/tmp/xg,
with torch and transformers installed)."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge_chat.engines.onnx.vocab import Vocab  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"},
    "email": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}},
    "address": {"type": "object", "properties": {"city": {"type": "string"},
                                                 "zip": {"type": "string"}},
                "required": ["city", "zip"]}},
    "required": ["name", "age", "email", "tags", "address"], "additionalProperties": False}
ANSWER = json.dumps({"name": "Ada Lovelace", "age": 36, "email": "ada@example.org",
                     "tags": ["math", "engines", "poetry"],
                     "address": {"city": "London", "zip": "W1"}})


class FolderVocab:
    """The engine-side view llguidance needs, from a tokenizer.json folder."""

    def __init__(self, folder: Path):
        self.v = Vocab(folder, {}, json.loads((folder / "config.json").read_text()))
        self.n_vocab = self.v.n_vocab

    def token_bytes(self, i: int) -> bytes:
        return self.v.token_bytes[i]

    def is_eog(self, i: int) -> bool:
        return i in self.v.eog

    def tokenize(self, text: str, add_bos: bool = False) -> list[int]:
        return self.v.tokenize(text)


def run_llguidance(vocab: FolderVocab, ids: list[int]) -> tuple[float, list[float]]:
    from edge_chat.engines.grammar_processor import GrammarProcessor, vocab_tokenizer
    vocab_tokenizer(vocab)
    t0 = time.perf_counter()
    proc = GrammarProcessor(vocab, "start: %json " + json.dumps(SCHEMA))
    compile_s = time.perf_counter() - t0
    row = np.zeros(vocab.n_vocab, dtype=np.float32)
    times = []
    for n in range(len(ids)):
        row[:] = 0
        t = time.perf_counter()
        proc(ids[:n], row)
        times.append(time.perf_counter() - t)
        assert np.isfinite(row[ids[n]]), "llguidance masked the answer's own token"
    return compile_s, times


def run_xgrammar(vocab: FolderVocab, ids: list[int]) -> tuple[float, list[float]] | None:
    try:
        import torch
        import xgrammar as xgr
    except ImportError as e:
        print(f"xgrammar: not measured ({e})")
        return None
    encoded = [vocab.token_bytes(i) or f"<special_{i}>".encode() for i in range(vocab.n_vocab)]
    info = xgr.TokenizerInfo(encoded, vocab_type=xgr.VocabType.RAW, vocab_size=vocab.n_vocab,
                             stop_token_ids=sorted(vocab.v.eog))
    compiler = xgr.GrammarCompiler(info)
    t0 = time.perf_counter()
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=True)
    compile_s = time.perf_counter() - t0
    matcher = xgr.GrammarMatcher(compiled)
    mask = xgr.allocate_token_bitmask(1, vocab.n_vocab)
    row = torch.zeros((1, vocab.n_vocab), dtype=torch.float32)
    times = []
    for tok in ids:
        row.zero_()
        t = time.perf_counter()
        matcher.fill_next_token_bitmask(mask)
        xgr.apply_token_bitmask_inplace(row, mask)
        times.append(time.perf_counter() - t)
        assert torch.isfinite(row[0, tok]), "xgrammar masked the answer's own token"
        matcher.accept_token(tok)
    return compile_s, times


def summary(name: str, compile_s: float, times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    return (f"| {name} | {compile_s * 1000:.1f} | {statistics.median(ms):.3f} | "
            f"{ms[int(len(ms) * 0.9)]:.3f} | {ms[-1]:.2f} | {sum(ms):.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", nargs="?", type=Path, default=Path.home() / ".cache" /
                    "edge-chat-real-models" / "qwen2.5-coder-0.5b-instruct-hf")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    vocab = FolderVocab(args.folder)
    ids = vocab.tokenize(ANSWER)
    print(f"vocabulary {vocab.n_vocab} tokens; answer {len(ids)} tokens; {args.reps} reps\n")
    print("| library | compile ms | mask ms median | p90 | max | total ms per answer |")
    print("|---|---|---|---|---|---|")
    for name, fn in (("llguidance", run_llguidance), ("xgrammar", run_xgrammar)):
        first = fn(vocab, ids)
        if first is None:
            continue
        runs = [first] + [fn(vocab, ids) for _ in range(args.reps - 1)]
        best = min(runs, key=lambda r: sum(r[1]))
        print(summary(name, statistics.median(r[0] for r in runs), best[1]))


if __name__ == "__main__":
    main()
