"""The ONNX engine: an exported decoder with past key/values run by onnxruntime.

Imports only onnxruntime, tokenizers and numpy (never torch/transformers). The KV
cache stays in onnxruntime OrtValues between steps and between calls, and `generate`
reuses the longest common prefix with the tokens already in the cache. Two layouts:

  * growing (optimum's graphs): the present outputs of one run, one position longer,
    are bound as the past inputs of the next;
  * shared (the fused GroupQueryAttention graph, manifest "kv_share_buffer"): one
    buffer of n_ctx positions per layer is bound as both past input and present
    output, the attention writes the new positions in place and reads the length
    from the attention mask - no copy per step, and trimming the cache is free.

With `n_seq` > 1 (shared layout only) the buffers hold that many sequences (rows
of the batch axis, a window each) for `decode_many`: continuous batching
(engines/batch.py) runs the next token of every running sequence as one batch,
binding the rows from the first running sequence to the last."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_chat.engines.base import DEFAULT_MAX_CTX, ModelInfo, default_n_ctx
from edge_chat.engines.decode import LocalEngine
from edge_chat.engines.onnx.providers import KV_DEVICE, select_providers
from edge_chat.engines.onnx.vocab import Vocab, read_json
from edge_chat.engines.sampler import Sampler
from edge_chat.errors import EdgeChatError, ModelLoadError
from edge_chat.system import collapse_to_huge_pages, physical_cores

if TYPE_CHECKING:
    from edge_chat.params import SamplingParams

#: prompt tokens evaluated per run (bounds the logits buffer: chunk x vocab floats)
PROMPT_CHUNK = 256


class OnnxEngine(LocalEngine):
    """Engine over an ONNX model folder made by `convert_to_onnx` (or optimum)."""

    def __init__(self, path: Path, n_ctx: int | None = None, threads: int | None = None,
                 provider: str = "cpu", n_seq: int = 1):
        path = Path(path).expanduser()
        model_file = path / "model.onnx"
        if not model_file.is_file():
            raise ModelLoadError(f"{path} has no model.onnx: not an ONNX model folder")
        if not (path / "tokenizer.json").is_file():
            raise ModelLoadError(f"{path} has no tokenizer.json: re-run "
                                 "'edge_chat convert ... --to onnx' to make one")
        providers = select_providers(provider)
        import onnxruntime as ort

        manifest = read_json(path / "edge_chat.json")
        config = read_json(path / "config.json")
        self.threads = threads or physical_cores()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # onnxruntime releases the GIL while it builds the session (prepacking the
        # weights is most of it), so the tokenizer loads meanwhile
        with ThreadPoolExecutor(1, thread_name_prefix="onnx-load") as pool:
            session = pool.submit(ort.InferenceSession, str(model_file), sess_options=opts,
                                  providers=providers)
            self.vocab = Vocab(path, manifest, config)
            try:
                self._sess = session.result()
            except Exception as e:
                msg = " ".join(str(e).split())[:200]
                raise ModelLoadError(f"{model_file} cannot be loaded by onnxruntime "
                                     f"(corrupt or incomplete?): {msg}") from None
        if self._sess.get_providers()[0] != providers[0]:
            raise EdgeChatError(f"onnxruntime could not start {providers[0]} (missing GPU "
                                "libraries or drivers?); use provider 'cpu'", param="provider")
        self.provider = providers[0]
        # the session's prepacked weights onto huge pages (in the background)
        self._huge_pages = collapse_to_huge_pages() if self.provider == \
            "CPUExecutionProvider" else None
        self._kv_device = KV_DEVICE.get(self.provider, "cpu")
        self._shared_kv = bool(manifest.get("kv_share_buffer"))
        # the prompt cache reads and writes the shared KV buffers in place
        self.capabilities = replace(LocalEngine.capabilities,
                                    prompt_cache=self._shared_kv and self._kv_device == "cpu")
        self._setup_io(model_file)
        self.n_vocab = self.vocab.n_vocab
        n_ctx_train = int(manifest.get("context_length") or config.get("max_position_embeddings")
                          or DEFAULT_MAX_CTX)
        self.n_ctx = default_n_ctx(n_ctx_train, n_ctx)
        if self._shared_kv:     # the fused graph's rotary tables end at the trained length
            self.n_ctx = min(self.n_ctx, n_ctx_train)
        if self.n_ctx < 1:
            raise EdgeChatError(f"n_ctx must be positive, not {n_ctx}", param="n_ctx")
        from edge_chat.store.paths import path_size
        self.info = ModelInfo(
            name=path.name, path=path, format="onnx",
            arch=manifest.get("arch") or config.get("model_type") or "unknown",
            quant=manifest.get("quant") or "unknown", n_ctx_train=n_ctx_train, n_ctx=self.n_ctx,
            size_bytes=path_size(path), chat_template=self.vocab.chat_template,
            bos_token=self.vocab.bos_token, eos_token=self.vocab.eos_token,
            add_bos=self.vocab.add_bos,
            n_params=manifest.get("n_params"),
            n_layers=manifest.get("n_layers") or config.get("num_hidden_layers"),
            extra={"provider": self.provider, "threads": self.threads,
                   "eog_ids": sorted(self.vocab.eog), "n_vocab": self.n_vocab},
        )
        #: sequences the cache holds (batching needs the shared layout, and rows that
        #: do not change each other: int8's activations are quantized per tensor)
        self.n_seq = max(1, int(n_seq)) if self._shared_kv and self.info.quant != "int8" else 1
        if self.n_seq < n_seq:
            self.info.extra["no_batching"] = (
                "its int8 weights quantize activations over the whole batch, so an answer "
                "would depend on the other requests; int4 and fp16/fp32 models batch"
                if self._shared_kv else "continuous batching needs the fused graph of "
                "'edge_chat convert --to onnx' (this is optimum's)")
        self.max_batch_tokens = PROMPT_CHUNK
        if self._shared_kv:
            self.info.extra["kv_bytes_per_token"] = sum(
                a.shape[1] * a.shape[3] * a.itemsize for a in self._empty.values())
        self._init_decoding()               # self.kv: the tokens whose keys/values are cached
        self._past: dict[str, object] = {}  # past input name -> OrtValue
        self._io = None                      # shared layout: the binding kept across runs
        self._reset_cache()

    # -- loading ---------------------------------------------------------------

    def _setup_io(self, model_file: Path) -> None:
        inputs = {i.name: i for i in self._sess.get_inputs()}
        if "input_ids" not in inputs or "logits" not in {o.name for o in self._sess.get_outputs()}:
            raise ModelLoadError(f"{model_file} is not a causal language model "
                                 "(needs input_ids in, logits out)")
        self._past_inputs = {n: i for n, i in inputs.items() if n.startswith("past_key_values")}
        if not self._past_inputs:
            raise ModelLoadError(f"{model_file} has no past key/values inputs: export it "
                                 "with the text-generation-with-past task")
        outs = [o.name for o in self._sess.get_outputs()]
        self._present = {}
        for name in self._past_inputs:
            pres = "present" + name[len("past_key_values"):]
            if pres not in outs:
                raise ModelLoadError(f"{model_file} has {name} but no {pres} output")
            self._present[pres] = name
        self._present_of = {past: pres for pres, past in self._present.items()}
        self._has_mask = "attention_mask" in inputs
        self._has_pos = "position_ids" in inputs
        self._has_keep = "logits_to_keep" in inputs     # fused graph: only the rows asked for
        self._ids_dtype = np.int32 if "int32" in inputs["input_ids"].type else np.int64
        logits_out = next(o for o in self._sess.get_outputs() if o.name == "logits")
        self._logits_dtype = np.float16 if "float16" in logits_out.type else np.float32
        self._logits_dim = logits_out.shape[-1] if isinstance(logits_out.shape[-1], int) else None
        # the empty past of each input: symbolic batch -> 1, the sequence axis -> 0
        self._empty, self._seq_axis = {}, {}
        for name, inp in self._past_inputs.items():
            dt = np.float16 if "float16" in inp.type else np.float32
            shape, axis = [], None
            for k, d in enumerate(inp.shape):
                if isinstance(d, int):
                    shape.append(d)
                elif "batch" in str(d).lower():
                    shape.append(1)
                else:
                    shape.append(0)
                    axis = k if axis is None else axis
            self._seq_axis[name] = axis if axis is not None else len(shape) - 2
            self._empty[name] = np.zeros(shape, dt)
        if self._shared_kv and (self._has_pos or not self._has_mask or any(
                a.ndim != 4 or a.shape[-1] == 0 for a in self._empty.values())):
            raise ModelLoadError(f"{model_file} does not have the shared KV cache layout "
                                 "its edge_chat.json announces")

    # -- tokens ----------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        return self.vocab.tokenize(text, add_bos, special)

    def detokenize(self, tokens: list[int]) -> str:
        return self.vocab.detokenize(tokens)

    def token_bytes(self, token: int) -> bytes:
        return self.vocab.token_bytes[token]

    def is_eog(self, token: int) -> bool:
        return token in self.vocab.eog

    # -- the steps (decode.LocalEngine builds generate on them) -------------------

    def sampler(self, params: SamplingParams, prompt: Sequence[int]) -> Sampler:
        return Sampler(params, context=prompt)

    def trim(self, n: int) -> int:
        """Keep the first `n` cached positions."""
        n = max(n, 0)
        if n >= len(self.kv):
            return len(self.kv)
        if self._shared_kv:         # positions past the mask's length are never read
            self.kv.trim(n)
            return n
        if n == 0:
            self._reset_cache()
            return 0
        import onnxruntime as ort
        for name, ov in self._past.items():
            arr = ov.numpy()
            idx = [slice(None)] * arr.ndim
            idx[self._seq_axis[name]] = slice(0, n)
            self._past[name] = ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(arr[tuple(idx)]), self._kv_device, 0)
        self.kv.trim(n)
        return n

    def _reset_cache(self) -> None:
        import onnxruntime as ort
        self.kv.trim(0)
        if self._shared_kv:
            if self._io is None:    # the buffers, allocated once for good
                self._io = self._sess.io_binding()
                # the batch row of an idle sequence writes one position past its
                # cache, which may be full: one spare position when batching
                kv_len = self.n_ctx + (self.n_seq > 1)
                self._kv = {name: ort.OrtValue.ortvalue_from_numpy(
                    np.zeros((self.n_seq, a.shape[1], kv_len, a.shape[3]), a.dtype),
                    self._kv_device, 0) for name, a in self._empty.items()}
                self._lens = [0] * self.n_seq       # positions each sequence holds
                self._logits_out: dict = {}         # (rows, keep) -> (buffer, OrtValue)
                self._bound = None
                self._bind_rows(0, 1)
            return
        self._past = {n: ort.OrtValue.ortvalue_from_numpy(a, self._kv_device, 0)
                      for n, a in self._empty.items()}

    def _bind_rows(self, lo: int, hi: int) -> None:
        """(shared layout) Bind sequences lo..hi-1 of the KV buffers as the
        batch: past input and present output at the same memory."""
        if self._bound == (lo, hi):
            return
        for name, ov in self._kv.items():
            shape, dt = ov.shape(), self._empty[name].dtype
            row = int(np.prod(shape[1:])) * dt.itemsize
            ptr, dims = ov.data_ptr() + lo * row, [hi - lo, *shape[1:]]
            self._io.bind_input(name, self._kv_device, 0, dt, dims, ptr)
            self._io.bind_output(self._present_of[name], self._kv_device, 0, dt, dims, ptr)
        self._bound = (lo, hi)

    def eval(self, tokens: Sequence[int], all_logits: bool = False) -> np.ndarray:
        """Run `tokens` after the cache; the logits row of the last one
        (float32), or of every one with `all_logits`."""
        tokens = [int(t) for t in tokens]
        if self._shared_kv:
            self._bind_rows(0, 1)       # generate() runs on sequence 0
        all_rows = all_logits
        logits = None
        rows = []
        for i in range(0, len(tokens), PROMPT_CHUNK):
            chunk = tokens[i:i + PROMPT_CHUNK]
            start, n = self.kv.pos, len(chunk)
            io = self._io if self._shared_kv else self._sess.io_binding()
            feeds = {"input_ids": np.array([chunk], dtype=self._ids_dtype)}
            if self._has_mask:
                feeds["attention_mask"] = np.ones((1, start + n), dtype=np.int64)
            if self._has_pos:
                feeds["position_ids"] = np.arange(start, start + n, dtype=np.int64)[None]
            if self._has_keep:
                feeds["logits_to_keep"] = np.array([n if all_rows else 1], np.int64)
            for name, arr in feeds.items():
                io.bind_cpu_input(name, arr)
            presents = [] if self._shared_kv else list(self._present)
            for name in presents:
                io.bind_ortvalue_input(self._present[name], self._past[self._present[name]])
                io.bind_output(name, self._kv_device)
            if self._shared_kv and n == 1 and not all_rows:
                # one token: ORT writes the row straight into our numpy buffer
                buf, ov = self._logits_buffer(1, 1)
                io.bind_ortvalue_output("logits", ov)
                self._sess.run_with_iobinding(io)
                self.kv.append(chunk)
                # a float32 copy: another thread's run may refill the buffer before we sample
                logits = buf[0, 0].astype(np.float32)
                continue
            io.bind_output("logits", "cpu")
            self._sess.run_with_iobinding(io)
            outs = io.get_outputs()      # in binding order: logits is bound last
            out = outs[-1].numpy()[0]
            if all_rows:
                rows.append(np.asarray(out, dtype=np.float32))
            logits = np.asarray(out[-1], dtype=np.float32)
            # growing layout: the presents become the next past, kept as OrtValues (no copy)
            self._past.update({self._present[p]: ov for p, ov in zip(presents, outs)})
            self.kv.append(chunk)
        return np.concatenate(rows) if all_rows else logits

    def decode_many(self, items) -> list[np.ndarray]:
        """As GGUFEngine.decode_many: `items` are (seq_id, first position, tokens, how
        many logits rows). The one-token items run as one batch over the sequences from
        the first of them to the last (a sequence in between that is not in it
        evaluates a throwaway token one position past its cache, which is never read);
        longer ones (prompt chunks, drafts to verify) run alone: onnxruntime's
        GroupQueryAttention takes several new tokens with a cache for one row only."""
        out: dict[int, np.ndarray] = {}
        steps = [(i, it) for i, it in enumerate(items) if len(it[2]) == 1 and it[3]]
        if steps:
            lo, hi = min(it[0] for _, it in steps), max(it[0] for _, it in steps) + 1
            ids, ends = [0] * (hi - lo), [self._lens[s] + 1 for s in range(lo, hi)]
            for _, (seq, pos, toks, _) in steps:
                ids[seq - lo], ends[seq - lo] = toks[0], pos + 1
            logits = self._run(lo, hi, [[t] for t in ids], ends, keep=1)
            for i, (seq, pos, toks, _) in steps:
                self._lens[seq] = pos + 1
                out[i] = np.array(logits[seq - lo, -1], dtype=np.float32)
        for i, (seq, pos, toks, rows) in enumerate(items):
            if i in out:
                continue
            for c in range(0, len(toks), PROMPT_CHUNK):
                chunk = [int(t) for t in toks[c:c + PROMPT_CHUNK]]
                last = c + PROMPT_CHUNK >= len(toks)
                keep = min(int(rows), len(chunk)) if last and rows else 1
                logits = self._run(seq, seq + 1, [chunk], [pos + c + len(chunk)], keep=keep)
                self._lens[seq] = pos + c + len(chunk)
            if rows:
                got = logits[0, -int(rows):]
                out[i] = np.array(got[0] if int(rows) == 1 else got, dtype=np.float32)
        return [out[i] for i in sorted(out)]

    def _run(self, lo: int, hi: int, ids: list[list[int]], ends: list[int],
             keep: int) -> np.ndarray:
        """One run over sequences lo..hi-1 (shared layout): `ids` rows of equal
        length ending at positions `ends`; the last `keep` logits rows of each."""
        if any(e > self.n_ctx + (self.n_seq > 1) for e in ends):
            raise EdgeChatError(f"a sequence would pass the {self.n_ctx}-token window")
        self._bind_rows(lo, hi)
        mask = np.zeros((hi - lo, max(ends)), dtype=np.int64)
        for r, e in enumerate(ends):
            mask[r, :e] = 1
        io = self._io
        io.bind_cpu_input("input_ids", np.array(ids, dtype=self._ids_dtype))
        io.bind_cpu_input("attention_mask", mask)
        if self._has_keep:
            io.bind_cpu_input("logits_to_keep", np.array([keep], np.int64))
        buf, ov = self._logits_buffer(hi - lo, keep)
        io.bind_ortvalue_output("logits", ov)
        self._sess.run_with_iobinding(io)
        return buf

    def _logits_buffer(self, rows: int, keep: int) -> tuple[np.ndarray, object]:
        """(shared layout) The buffer ORT writes `rows` x `keep` logits rows
        straight into, kept per shape, and its OrtValue."""
        out = self._logits_out.get((rows, keep))
        if out is None:
            import onnxruntime as ort
            buf = np.zeros((rows, keep, self._logits_dim or self.n_vocab), self._logits_dtype)
            out = self._logits_out[rows, keep] = (buf, ort.OrtValue.ortvalue_from_numpy(buf))
        return out

    def trim_seq(self, seq: int, n: int) -> int:
        """Cut sequence `seq` back to its first `n` positions (free: positions
        past the mask's length are never read)."""
        n = max(0, min(n, self._lens[seq]))
        self._lens[seq] = n
        return n

    # -- the prompt cache (engines/prompt_cache.py; fused graph, KV on the CPU) -------
    def cache_identity(self) -> dict:
        """What changes the keys and values this engine computes."""
        import onnxruntime as ort
        files = sorted(p for p in self.info.path.iterdir() if p.name.startswith("model.onnx"))
        return {"engine": "onnxruntime", "version": ort.__version__,
                "model": str(self.info.path.resolve()), "provider": self.provider,
                "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]}

    def _kv_rows(self, name: str) -> np.ndarray:
        """A numpy view of one layer's KV buffer (sequences, heads, positions, dim)."""
        import ctypes
        ov, dt = self._kv[name], self._empty[name].dtype
        shape = ov.shape()
        raw = (ctypes.c_char * (int(np.prod(shape)) * dt.itemsize)).from_address(ov.data_ptr())
        return np.frombuffer(raw, dtype=dt).reshape(shape)

    def seq_state(self, seq: int, n: int) -> bytes:
        """The first `n` KV positions of sequence `seq`, every layer in name order."""
        if not self.capabilities.prompt_cache or not self._kv:
            return b""
        return b"".join(np.ascontiguousarray(self._kv_rows(name)[seq, :, :n]).tobytes()
                        for name in sorted(self._kv))

    def load_seq_state(self, seq: int, state: bytes, n_state: int, keep: int) -> int:
        """Sequence `seq` from a `seq_state` of `n_state` positions, cut to its first
        `keep`; the positions it holds (0: the state does not fit this model)."""
        if not self.capabilities.prompt_cache:
            return 0
        if not self._kv:
            self._reset_cache()
        rows = {name: self._kv_rows(name) for name in sorted(self._kv)}
        sizes = [v.shape[1] * n_state * v.shape[3] for v in rows.values()]
        if sum(s * v.dtype.itemsize for s, v in zip(sizes, rows.values())) != len(state) or \
                keep > next(iter(rows.values())).shape[2]:
            return 0
        off = 0
        for (name, v), count in zip(rows.items(), sizes):
            a = np.frombuffer(state, v.dtype, count, off).reshape(v.shape[1], n_state, v.shape[3])
            v[seq, :, :keep] = a[:, :keep]
            off += count * v.dtype.itemsize
        self._lens[seq] = keep
        return keep

    def _free(self) -> None:
        self._kv = {}
        self._past = {}
        self.kv.trim(0)
        self._io = None
        self._sess = None

    def __enter__(self) -> OnnxEngine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
