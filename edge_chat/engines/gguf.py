"""GGUF engine: llama.cpp through llama-cpp-python (mmap, KV cache, GPU layers)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edge_chat.engines.base import ModelInfo, default_n_ctx
from edge_chat.engines.gguf_file import fit_gpu_layers, parse_size, read_gguf
from edge_chat.errors import EdgeChatError, ModelLoadError
from edge_chat.store import model_name
from edge_chat.system import physical_cores

if TYPE_CHECKING:
    import numpy as np

    from edge_chat.chat.params import SamplingParams

KV_TYPES = {"f16": 1, "q8_0": 8}   # ggml type ids


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


def p_ids(params: "SamplingParams", prompt: list[int]):
    """Every token id a request names: the prompt's and logit_bias's."""
    yield from params.logit_bias
    yield from prompt


class GGUFEngine:
    """One llama.cpp context. Not thread-safe: one generation at a time."""

    def __init__(self, path: Path, *, n_ctx: int | None = None, threads: int | None = None,
                 gpu_layers: int | str | None = 0, vram: str | int | None = None,
                 kv_type: str = "f16", mmap: bool = True, verbose: bool = False):
        path = Path(path)
        gguf = read_gguf(path)          # clear errors for non-GGUF / truncated files
        if kv_type not in KV_TYPES:
            raise EdgeChatError(f"--kv-type must be one of {', '.join(KV_TYPES)}", param="kv_type")
        ctx = default_n_ctx(gguf.context_length, n_ctx)
        self.n_gpu_layers = gpu_layers_for(gguf, gpu_layers, vram, ctx, kv_type)
        import llama_cpp
        self._llama_cpp = llama_cpp
        threads = threads or physical_cores()
        try:
            self._llm = llama_cpp.Llama(
                str(path), n_ctx=ctx, n_threads=threads, n_threads_batch=threads,
                n_gpu_layers=self.n_gpu_layers, use_mmap=mmap, n_batch=512,
                type_k=KV_TYPES[kv_type], type_v=KV_TYPES[kv_type],
                flash_attn=kv_type != "f16", verbose=verbose,
                # a full-size sliding-window cache can be cut at any position,
                # which prefix reuse needs (Gemma 3 and other SWA models)
                swa_full=gguf.arch_value("attention.sliding_window") is not None or None)
        except (ValueError, RuntimeError, OSError) as e:
            raise ModelLoadError(f"llama.cpp cannot load {path}: {e}") from None
        llm = self._llm
        self._vocab = llm._model.vocab
        self._cancel = threading.Event()
        self._pieces: dict[int, bytes] = {}
        self.n_prompt_evaluated = 0
        bos = llm.token_bos()
        eos = llm.token_eos()
        self.info = ModelInfo(
            name=model_name(path), path=path, format="gguf", arch=gguf.arch,
            quant=gguf.quant_name, n_ctx_train=gguf.context_length or ctx, n_ctx=min(ctx, llm.n_ctx()),
            size_bytes=path.stat().st_size, chat_template=gguf.chat_template,
            bos_token=llm._model.token_get_text(bos) if bos >= 0 else "",
            eos_token=llm._model.token_get_text(eos) if eos >= 0 else "",
            add_bos=llm._model.add_bos_token(), n_params=gguf.n_params,
            n_layers=gguf.n_layers,
            extra={"threads": threads, "n_gpu_layers": self.n_gpu_layers, "kv_type": kv_type,
                   "general.name": gguf.name})
        llm._init_sampler = self._make_sampler   # our sampler chain (adds logit_bias)
        self._params: "SamplingParams | None" = None
        self._grammar = None
        self._seed = 0

    # -- tokens -------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool = False, special: bool = True) -> list[int]:
        if not text:
            return [self._llm.token_bos()] if add_bos else []
        return self._llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            import ctypes
            lc = self._llama_cpp
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:max(n, 0)]
            self._pieces[token] = piece
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token))

    # -- generation ---------------------------------------------------------
    def _make_sampler(self, **_ignored):
        from llama_cpp._internals import LlamaSampler
        p = self._params
        s = LlamaSampler()
        n_vocab = self._llm.n_vocab()
        if p.logit_bias:
            s.add_logit_bias(n_vocab, p.logit_bias)
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            s.add_penalties(n_vocab=n_vocab, penalty_last_n=64, penalty_repeat=p.repeat_penalty,
                            penalty_freq=p.frequency_penalty,
                            penalty_present=p.presence_penalty)
        if self._grammar is not None:
            s.add_grammar(self._llm._model, self._grammar)
        if p.temperature == 0.0:
            s.add_greedy()
            return s
        if p.top_k > 0:
            s.add_top_k(p.top_k)
        if p.top_p < 1.0:
            s.add_top_p(p.top_p, 1)
        if p.min_p > 0.0:
            s.add_min_p(p.min_p, 1)
        s.add_temp(p.temperature)
        s.add_dist(self._seed)
        return s

    def _reusable(self, prompt: list[int]) -> int:
        """Prompt tokens llama-cpp-python will take from the KV cache (it
        replays the last prompt token for fresh logits unless the cache holds
        exactly this prompt). A cache that cannot be cut (sliding-window
        attention) is reused not at all."""
        llm = self._llm
        hit = 0
        for a, b in zip(llm._input_ids[:llm.n_tokens], prompt):
            if a != b:
                break
            hit += 1
        if hit == len(prompt) == llm.n_tokens and not llm._requires_eval:
            return hit
        reuse = hit - 1 if hit == len(prompt) else hit
        if reuse > 0 and not llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            return 0
        return reuse

    def generate(self, prompt: list[int], params: "SamplingParams",
                 grammar: str | None = None) -> Iterator[int]:
        import random
        llm = self._llm
        if not prompt:
            raise EdgeChatError("empty prompt", param="messages")
        if len(prompt) >= self.info.n_ctx:
            raise EdgeChatError(f"prompt of {len(prompt)} tokens does not fit the context "
                                f"window of {self.info.n_ctx}", code="context_length_exceeded")
        n_vocab = llm.n_vocab()
        bad = next((t for t in p_ids(params, prompt) if not 0 <= t < n_vocab), None)
        if bad is not None:
            raise EdgeChatError(f"token id {bad} is out of range (the model has {n_vocab} tokens)",
                                param="logit_bias" if bad in params.logit_bias else "prompt")
        self._cancel.clear()
        self._params = params
        self._seed = params.seed if params.seed is not None else random.getrandbits(32)
        self._grammar = None
        if grammar is not None:
            self._grammar = self._llama_cpp.LlamaGrammar.from_string(grammar, verbose=False)
        reuse = self._reusable(prompt)
        self.n_prompt_evaluated = len(prompt) - reuse
        if reuse < len(prompt) - 1:
            # the prompt's last token is always decoded on its own, as it is when the
            # rest comes from the cache: the same request gives the same answer
            # whatever the cache held before (a batch decode rounds differently)
            llm.n_tokens = reuse
            llm.eval(prompt[reuse:-1])
        gen = llm.generate(prompt, reset=True)
        try:
            for tok in gen:
                yield tok
                if self._cancel.is_set() or self.is_eog(tok):
                    return
        finally:
            gen.close()

    def logprobs(self, tokens: list[int]) -> "np.ndarray":
        """log p(tokens[i+1] | tokens[:i+1]) for each i (perplexity). Uses
        the KV cache from position 0 (the next generate re-evaluates)."""
        import numpy as np
        llm = self._llm
        if len(tokens) > self.info.n_ctx:
            raise EdgeChatError(f"{len(tokens)} tokens do not fit the window of {self.info.n_ctx}")
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.n_tokens = 0
        llm._requires_eval = True
        n_vocab = llm.n_vocab()
        out = []
        for i in range(0, len(tokens), llm.n_batch):
            batch = tokens[i:i + llm.n_batch]
            llm._batch.set_batch(batch=batch, n_past=i, logits_all=True)
            llm._ctx.decode(llm._batch)
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(batch) * n_vocab,))
            out.append(logits.reshape(len(batch), n_vocab).astype(np.float64))
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        logits = np.concatenate(out)[:-1]
        mx = logits.max(axis=1, keepdims=True)
        lse = mx[:, 0] + np.log(np.exp(logits - mx).sum(axis=1))
        return logits[np.arange(len(tokens) - 1), tokens[1:]] - lse

    def grammar_for(self, response_format: dict) -> str | None:
        return response_format_grammar(response_format)

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        llm, self._llm = getattr(self, "_llm", None), None
        if llm is not None:
            llm.close()


def response_format_grammar(response_format: dict | None) -> str | None:
    """GBNF text for an OpenAI `response_format` (None for plain text):
    json_object → llama.cpp's JSON grammar; json_schema → the schema converted
    by llama.cpp. Bad shapes raise EdgeChatError(param="response_format")."""
    import json

    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "text":
        return None
    from llama_cpp import llama_grammar
    if kind == "json_object":
        return llama_grammar.JSON_GBNF
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise EdgeChatError("response_format.json_schema.schema must be a JSON schema object",
                                param="response_format")
        try:
            return llama_grammar.json_schema_to_gbnf(json.dumps(schema))
        except Exception as e:  # the converter raises bare Exceptions on unsupported schemas
            raise EdgeChatError(f"response_format: unsupported JSON schema ({e})",
                                param="response_format") from None
    raise EdgeChatError("response_format.type must be 'text', 'json_object' or 'json_schema'",
                        param="response_format")
