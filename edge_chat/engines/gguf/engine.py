"""GGUF engine: llama.cpp's C API through llama-cpp-python's low-level bindings
(model, context, batch, memory/KV sequence calls, sampler chain) - mmap, KV cache
reuse, GPU layers."""

from __future__ import annotations

import ctypes
import random
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edge_chat.engines.base import Capabilities, ModelInfo, default_n_ctx
from edge_chat.engines.decode import LocalEngine
from edge_chat.store.gguf_file import read_gguf
from edge_chat.engines.gguf.gpu_budget import fit_gpu_layers
from edge_chat.system import parse_size
from edge_chat.engines.gguf.sampling import ChainSampler
from edge_chat.errors import EdgeChatError, ModelLoadError
from edge_chat.store.paths import model_name
from edge_chat.system import physical_cores

if TYPE_CHECKING:
    from edge_chat.params import SamplingParams

KV_TYPES = {"f16": 1, "q8_0": 8}   # ggml type ids
#: tokens per llama_decode call (prompt chunks; the batch holds this many)
N_BATCH = 512


def gpu_layers_for(gguf, gpu_layers: int | str | None, vram: str | int | None, n_ctx: int,
                   kv_type: str = "f16") -> int:
    """n_gpu_layers from the CLI's `--gpu-layers N|auto` and `--vram SIZE`."""
    if gpu_layers in (None, 0, "0"):
        return 0
    if gpu_layers == "auto":
        if vram is None:
            raise EdgeChatError("--gpu-layers auto needs --vram SIZE (e.g. --vram 4GB)",
                                param="vram")
        per_value = 1.0625 if kv_type == "q8_0" else 2.0   # q8_0: 34 bytes per 32 values
        return fit_gpu_layers(gguf, parse_size(vram), n_ctx,
                              gguf.kv_bytes_per_token_per_layer(per_value))
    try:
        n = int(gpu_layers)
    except (TypeError, ValueError):
        raise EdgeChatError(f"--gpu-layers must be a number or 'auto', not '{gpu_layers}'",
                            param="gpu_layers") from None
    if n < -1:
        raise EdgeChatError("--gpu-layers must be >= 0 (or -1 for all)", param="gpu_layers")
    return n


_log = {"quiet": True, "lines": []}
_init_lock = threading.Lock()


def _llama():
    """llama_cpp's low-level bindings, the backend initialised once, its log
    kept (the last lines explain a failed load) instead of printed."""
    import llama_cpp as lc
    with _init_lock:        # serve's warm-up thread may race a first load
        if "cb" not in _log:
            _init_backend(lc)
    return lc


def _init_backend(lc) -> None:
    @lc.llama_log_callback
    def cb(level, text, _user):
        line = text.decode("utf-8", "replace")
        if not _log["quiet"]:
            sys.stderr.write(line)
        _log["lines"] = (_log["lines"] + [line])[-8:]
    _log["cb"] = cb     # the C side holds a pointer: keep the callback alive
    lc.llama_log_set(cb, ctypes.c_void_p(0))
    lc.llama_backend_init()


def _last_log() -> str:
    lines = [ln.strip() for ln in _log["lines"] if ln.strip()]
    return f" ({lines[-1][:200]})" if lines else ""


class GGUFEngine(LocalEngine):
    """One llama.cpp model and context. `generate` serves one generation at a
    time on sequence 0; with `n_seq` > 1 the context holds that many sequences,
    each with its own KV region of `n_ctx` tokens, for `decode_many`
    (continuous batching: engines/batch.py)."""

    capabilities = Capabilities(logits_processors=True, logprobs=True, eval_many=True,
                                prompt_cache=True)

    def __init__(self, path: Path, *, n_ctx: int | None = None, threads: int | None = None,
                 gpu_layers: int | str | None = 0, vram: str | int | None = None,
                 kv_type: str = "f16", mmap: bool = True, verbose: bool = False,
                 n_seq: int = 1, header=None):
        path = Path(path)
        # `header`: the file's read_gguf, when the caller has it (clear errors for
        # non-GGUF / truncated files)
        gguf = header if header is not None else read_gguf(path)
        if kv_type not in KV_TYPES:
            raise EdgeChatError(f"--kv-type must be one of {', '.join(KV_TYPES)}", param="kv_type")
        ctx = default_n_ctx(gguf.context_length, n_ctx)
        if ctx < 1:
            raise EdgeChatError(f"n_ctx must be positive, not {n_ctx}", param="n_ctx")
        n_seq = max(1, int(n_seq))
        self.n_gpu_layers = gpu_layers_for(gguf, gpu_layers, vram, ctx * n_seq, kv_type)
        lc = self._lc = _llama()
        _log["quiet"] = not verbose
        threads = threads or physical_cores()
        self._model = self._ctx = self._batch = None
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = self.n_gpu_layers
        mp.use_mmap = mmap
        _log["lines"] = []
        self._model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise ModelLoadError(f"llama.cpp cannot load {path}{_last_log()}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = ctx * n_seq          # `ctx` is each sequence's window
        cp.n_batch = cp.n_ubatch = N_BATCH
        cp.n_seq_max = n_seq
        if n_seq > 1:   # one KV stream per sequence: its own window, its own cells only
            cp.kv_unified = False
        cp.n_threads = cp.n_threads_batch = threads
        cp.type_k = cp.type_v = KV_TYPES[kv_type]
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if kv_type != "f16" \
            else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED     # a quantized V cache needs it
        # a full-size sliding-window cache can be cut at any position, which
        # prefix reuse and speculation need (Gemma 3 and other SWA models)
        cp.swa_full = gguf.arch_value("attention.sliding_window") is not None
        cp.no_perf = True
        self._ctx = lc.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise ModelLoadError(f"llama.cpp cannot open a context of {ctx * n_seq} tokens for "
                                 f"{path}{_last_log()}")
        self._mem = lc.llama_get_memory(self._ctx)
        self._vocab = lc.llama_model_get_vocab(self._model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        self._batch = lc.llama_batch_init(N_BATCH, 0, 1)
        b = self._batch
        self._b_token = np.ctypeslib.as_array(b.token, shape=(N_BATCH,))
        self._b_pos = np.ctypeslib.as_array(b.pos, shape=(N_BATCH,))
        self._b_logits = np.ctypeslib.as_array(b.logits, shape=(N_BATCH,))
        np.ctypeslib.as_array(b.n_seq_id, shape=(N_BATCH,))[:] = 1
        for i in range(N_BATCH):
            b.seq_id[i][0] = 0
        self._pieces: dict[int, bytes] = {}
        self._init_decoding()
        self._b_seq = [0] * N_BATCH     # the seq_id each batch row holds
        self.n_seq = n_seq
        self.max_batch_tokens = N_BATCH
        per_value = 1.0625 if kv_type == "q8_0" else 2.0
        kv_token = gguf.kv_bytes_per_token_per_layer(per_value) * (gguf.n_layers or 0)
        bos, eos = lc.llama_vocab_bos(self._vocab), lc.llama_vocab_eos(self._vocab)
        self.info = ModelInfo(
            name=model_name(path), path=path, format="gguf", arch=gguf.arch,
            quant=gguf.quant_name, n_ctx_train=gguf.context_length or ctx,
            n_ctx=min(ctx, int(lc.llama_n_ctx_seq(self._ctx))),
            size_bytes=path.stat().st_size, chat_template=gguf.chat_template,
            bos_token=self._text(bos), eos_token=self._text(eos),
            add_bos=bool(lc.llama_vocab_get_add_bos(self._vocab)), n_params=gguf.n_params,
            n_layers=gguf.n_layers,
            extra={"threads": threads, "n_gpu_layers": self.n_gpu_layers, "kv_type": kv_type,
                   "general.name": gguf.name, "kv_bytes_per_token": kv_token})

    def _text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._lc.llama_vocab_get_text(self._vocab, token).decode("utf-8", "replace")

    # -- tokens -------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        lc = self._lc
        if not text:
            bos = lc.llama_vocab_bos(self._vocab)
            return [bos] if add_bos and bos >= 0 else []
        data = text.encode("utf-8")
        cap = len(data) + 2
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            lc = self._lc
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:max(n, 0)]
            self._pieces[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(self._lc.llama_vocab_is_eog(self._vocab, token))

    # -- the steps (decode.LocalEngine builds generate on them) ---------------
    def sampler(self, params: "SamplingParams", prompt) -> ChainSampler:
        seed = params.seed if params.seed is not None else random.getrandbits(32)
        return ChainSampler(self._lc, self.n_vocab, params, seed)

    def eval(self, tokens, all_logits: bool = False) -> np.ndarray:
        lc = self._lc
        rows, n = [], len(tokens)
        for i in range(0, n, N_BATCH):
            chunk = [int(t) for t in tokens[i:i + N_BATCH]]
            k = len(chunk)
            self._fill(0, 0, self.kv.pos, chunk)
            self._b_logits[:k] = 1 if all_logits else 0
            self._b_logits[k - 1] = 1
            self._batch.n_tokens = k
            rc = lc.llama_decode(self._ctx, self._batch)
            if rc != 0:
                self.trim(0)    # a failed decode may leave part of the batch in the cache
                raise EdgeChatError(f"llama.cpp could not evaluate {k} tokens at position "
                                    f"{self.kv.pos} (llama_decode returned {rc})")
            self.kv.append(chunk)
            if all_logits:
                rows.append(np.ctypeslib.as_array(lc.llama_get_logits(self._ctx),
                                                  shape=(k, self.n_vocab)).copy())
        if all_logits:
            return np.concatenate(rows)
        # a view of llama.cpp's buffer: processors write into it, the sampler reads it
        return np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, k - 1),
                                     shape=(self.n_vocab,))

    def _fill(self, row: int, seq: int, pos: int, toks) -> None:
        """Batch rows from `row` on: `toks` of sequence `seq` from position `pos`."""
        m = len(toks)
        self._b_token[row:row + m] = toks
        self._b_pos[row:row + m] = np.arange(pos, pos + m)
        for i in range(row, row + m):
            if self._b_seq[i] != seq:
                self._batch.seq_id[i][0] = self._b_seq[i] = seq

    def decode_many(self, items) -> list[np.ndarray]:
        """One llama_decode over several sequences: `items` are (seq_id, first
        position, tokens, how many logits rows: 0, 1 (the last token's) or k (the last
        k tokens', speculative verification)); at most N_BATCH tokens in all. For each
        item asking: a copy of its row, or of its (k, n_vocab) rows, in order."""
        lc = self._lc
        k = 0
        want: list[range] = []
        for seq, pos, toks, rows in items:
            m, w = len(toks), int(rows)
            self._fill(k, seq, pos, toks)
            self._b_logits[k:k + m] = 0
            k += m
            if w:
                self._b_logits[k - w:k] = 1
                want.append(range(k - w, k))
        self._batch.n_tokens = k
        rc = lc.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise EdgeChatError(f"llama.cpp could not evaluate a batch of {k} tokens "
                                f"(llama_decode returned {rc})")
        out = []
        for rows in want:
            got = [np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, i),
                                         shape=(self.n_vocab,)) for i in rows]
            out.append(got[0].copy() if len(got) == 1 else np.stack(got))
        return out

    def trim_seq(self, seq: int, n: int) -> int:
        """Cut sequence `seq` back to its first `n` positions; how many it keeps."""
        n = max(n, 0)
        if n == 0 or not self._lc.llama_memory_seq_rm(self._mem, seq, n, -1):
            self._lc.llama_memory_seq_rm(self._mem, seq, 0, -1)
            n = 0
        return n

    # -- the prompt cache (engines/prompt_cache.py) ---------------------------------
    def cache_identity(self) -> dict:
        """What changes the keys and values this engine computes."""
        import llama_cpp
        st = self.info.path.stat()
        return {"engine": "llama.cpp", "version": llama_cpp.__version__,
                "model": str(self.info.path.resolve()), "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "kv_type": self.info.extra["kv_type"],
                "gpu_layers": self.n_gpu_layers}

    def seq_state(self, seq: int, n: int) -> bytes:
        """llama.cpp's state of sequence `seq`, which must hold exactly `n` positions
        (b"" otherwise)."""
        lc = self._lc
        if lc.llama_memory_seq_pos_max(self._mem, seq) + 1 != n:
            return b""
        size = lc.llama_state_seq_get_size(self._ctx, seq)
        buf = (ctypes.c_uint8 * size)()
        got = lc.llama_state_seq_get_data(self._ctx, buf, size, seq)
        return ctypes.string_at(buf, got) if got else b""

    def load_seq_state(self, seq: int, state: bytes, n_state: int, keep: int) -> int:
        """Sequence `seq` from a `seq_state` of `n_state` positions, cut to its first
        `keep`; the positions it holds (0: not loaded, the sequence is empty)."""
        lc = self._lc
        lc.llama_memory_seq_rm(self._mem, seq, 0, -1)
        src = ctypes.cast(ctypes.c_char_p(state), ctypes.POINTER(ctypes.c_uint8))
        if not lc.llama_state_seq_set_data(self._ctx, src, len(state), seq):
            lc.llama_memory_seq_rm(self._mem, seq, 0, -1)
            return 0
        return self.trim_seq(seq, keep) if keep < n_state else n_state

    def trim(self, n: int) -> int:
        n = max(n, 0)
        if n >= len(self.kv):
            return len(self.kv)
        if n == 0 or not self._lc.llama_memory_seq_rm(self._mem, 0, n, -1):
            self._lc.llama_memory_clear(self._mem, True)
            n = 0
        self.kv.trim(n)
        return n

    def _free(self) -> None:
        lc = getattr(self, "_lc", None)
        if lc is None:
            return
        batch, self._batch = getattr(self, "_batch", None), None
        ctx, self._ctx = getattr(self, "_ctx", None), None
        model, self._model = getattr(self, "_model", None), None
        if batch is not None:
            lc.llama_batch_free(batch)
        if ctx:
            lc.llama_free(ctx)
        if model:
            lc.llama_model_free(model)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001  interpreter shutting down
            pass
