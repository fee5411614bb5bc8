"""Where does speculation's rounding difference come from? Greedy answers with drafts
can part from plain decoding at near-ties on the real quantized models; this splits
the cause. One greedy answer is decoded plainly (one token per step), then replayed
teacher-forced three ways, comparing each logits row with plain decoding's:

  * batch rows: the answer evaluated in batches of K tokens, as verification does
    (the batch's own kernels AND a cache the batches wrote);
  * single step on a batch-written cache: each position evaluated alone, after the
    tokens before it in its batch were evaluated together (the cache only);
  * plain again: the control (must be 0).

If the single steps differ as much as the batch rows, re-deciding near-ties with a
single step cannot restore identity: the difference is already in the cache.

    python benchmarks/spec_rounding.py [MODEL] [--tokens 96] [--batch 8] [--threads 2]

MODEL: a .gguf file or an ONNX folder (default: the real Qwen2.5-Coder-0.5B Q4_K_M)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

import _common as C  # noqa: E402  (puts the repo on sys.path)

from edge_chat.engines import EngineOptions, load_engine  # noqa: E402

QUESTION = "Explain in a paragraph why the sky is blue and how sunsets get their colours."


def compare(rows: list[np.ndarray], plain: list[np.ndarray]) -> list[str]:
    d = [np.abs(a - b) for a, b in zip(rows, plain)]
    flips = sum(int(np.argmax(a) != np.argmax(b)) for a, b in zip(rows, plain))
    return [f"{np.mean([x.mean() for x in d]):.3f}", f"{max(x.max() for x in d):.3f}",
            f"{flips}/{len(rows)}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", type=Path)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    path = C.model_or_qwen(a.model)
    e = load_engine(path, EngineOptions(threads=a.threads, n_ctx=2048, speculative="off"),
                    probe=False)
    try:
        prompt = e.tokenize(f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")
        n, k, base = a.tokens, a.batch, len(prompt) - 1

        def one(tok: int) -> np.ndarray:
            return np.array(e.eval([tok]))          # a copy: the engine reuses its buffer

        e.trim(0)
        e.eval(prompt[:-1])
        plain, seq = [], list(prompt)
        for _ in range(n):
            plain.append(one(seq[-1]))
            seq.append(int(np.argmax(plain[-1])))
        e.trim(base)
        batch = [np.array(r) for j in range(0, n, k)
                 for r in e.eval(seq[base + j: base + min(j + k, n)], all_logits=True)]
        on_batch_cache = []
        for p in range(n):
            j = p - p % k                           # its batch starts here
            e.trim(base + j)
            if p > j:
                e.eval(seq[base + j: base + p])
            on_batch_cache.append(one(seq[base + p]))
        e.trim(base)
        again = [one(seq[base + p]) for p in range(n)]
        print(f"# {C.machine()}\n# {path.name}: {n} answer tokens, batches of {k}, "
              f"{a.threads} threads")
        C.print_rows("logits against plain decoding (teacher-forced)",
                     ["rows", "mean abs diff", "max abs diff", "argmax differs"],
                     [["batch rows (kernels + cache)", *compare(batch, plain)],
                      ["single step on a batch-written cache", *compare(on_batch_cache, plain)],
                      ["plain again (control)", *compare(again, plain)]])
    finally:
        e.close()


if __name__ == "__main__":
    main()
