"""A fused ONNX decoder graph for Llama-style models, written from the PyTorch weights.

optimum traces the Python attention code into dozens of small ops per layer and
concatenates the KV cache at every step. For the Llama family (llama, qwen2,
mistral: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU) this module
writes the graph onnxruntime has fused kernels for instead:

  Gather (embedding) -> per layer:
    SimplifiedLayerNormalization | SkipSimplifiedLayerNormalization (norm + residual add)
    MatMul (q, k and v in one) [+ Add bias]
    GroupQueryAttention (com.microsoft): rotary inside, past/present KV [B, kv, T, D]
        that may share one buffer (the engine binds the same OrtValue for both)
    MatMul (o) -> SkipSimplifiedLayerNormalization -> MatMul gate, MatMul up,
    x * sigmoid(x) * up -> MatMul (down)
  -> SkipSimplifiedLayerNormalization (final norm) -> MatMul (lm_head) -> logits

The inputs and outputs are optimum's (input_ids, attention_mask,
past_key_values.N.key/value -> logits, present.N.key/value), so the same checks and the
same quantizers apply, plus `logits_to_keep` ([1] int64): the logits of only the last
that many positions are computed (1 while generating; all of them for perplexity).
Positions come from the attention mask (no position_ids)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

#: architectures whose decoder this module writes (others go through optimum's graph)
FUSED_ARCHS = ("llama", "qwen2", "mistral")
MS = "com.microsoft"


def fused_unsupported(cfg: dict) -> str | None:
    """Why the fused graph cannot represent the model of `cfg` (None: it can)."""
    arch = cfg.get("model_type")
    if arch not in FUSED_ARCHS:
        return f"architecture {arch} has no fused graph"
    if cfg.get("hidden_act", "silu") != "silu":
        return f"activation {cfg.get('hidden_act')}"
    n_heads = cfg.get("num_attention_heads")
    n_kv = cfg.get("num_key_value_heads") or n_heads
    if not isinstance(n_heads, int) or not isinstance(n_kv, int) or n_heads % n_kv:
        return "heads not a multiple of the KV heads"
    if cfg.get("mlp_bias"):
        return "MLP biases"
    rope = cfg.get("rope_scaling") or {}
    if (rope.get("rope_type") or rope.get("type")) in ("longrope", "yarn", "dynamic"):
        return f"rope scaling {rope.get('rope_type') or rope.get('type')}"
    w = cfg.get("sliding_window")
    if isinstance(w, int) and 0 < w < int(cfg.get("max_position_embeddings") or 0) \
            and cfg.get("use_sliding_window") is not False:
        return "sliding-window attention"
    return None


def write_fused_decoder(model, cfg: dict, out: Path, data_file: str) -> None:
    """Write the fused fp32 decoder of `model` (a transformers Llama-style causal LM) to
    `out` (weights in `data_file` beside it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n_layers = int(cfg["num_hidden_layers"])
    n_heads = int(cfg["num_attention_heads"])
    n_kv = int(cfg.get("num_key_value_heads") or n_heads)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // n_heads)
    eps = float(cfg.get("rms_norm_eps") or 1e-6)
    max_pos = int(cfg.get("max_position_embeddings") or 2048)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    vocab = sd["model.embed_tokens.weight"].shape[0]

    inits: list = []
    nodes: list = []

    def init(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs):
        nodes.append(helper.make_node(op, inputs, outputs, name=outputs[0] + "/node",
                                      domain=domain, **attrs))
        return outputs

    def linear(x: str, names: list[str], out: str) -> str:
        """x @ W.T (+ b) for the torch Linear weights `names` (concatenated outputs)."""
        w = np.concatenate([sd[n + ".weight"] for n in names], axis=0).T
        y = node("MatMul", [x, init(out + ".weight", w)], [out + "/MatMul"])[0]
        biases = [sd.get(n + ".bias") for n in names]
        if all(b is None for b in biases):
            return y
        b = np.concatenate([sd.get(n + ".bias", np.zeros(sd[n + ".weight"].shape[0],
                                                         np.float32)) for n in names])
        return node("Add", [y, init(out + ".bias", b.astype(np.float32))], [out + "/Add"])[0]

    # rotary tables from the model's own inverse frequencies (covers llama3 scaling)
    rot = model.model.rotary_emb
    inv_freq = rot.inv_freq.detach().double().numpy()
    scaling = float(getattr(rot, "attention_scaling", 1.0) or 1.0)
    freqs = np.outer(np.arange(max_pos, dtype=np.float64), inv_freq)
    init("cos_cache", (np.cos(freqs) * scaling).astype(np.float32))
    init("sin_cache", (np.sin(freqs) * scaling).astype(np.float32))

    # seqlens_k (the index of each row's last token) and the total length, from the mask
    init("one_i64", np.array(1, np.int64))
    init("axis1", np.array([1], np.int64))
    node("ReduceSum", ["attention_mask", "axis1"], ["mask_sum"], keepdims=0)
    node("Sub", ["mask_sum", "one_i64"], ["mask_last"])
    node("Cast", ["mask_last"], ["seqlens_k"], to=TensorProto.INT32)
    node("Shape", ["attention_mask"], ["mask_shape"])
    node("Gather", ["mask_shape", "one_i64"], ["total_len_i64"], axis=0)
    node("Cast", ["total_len_i64"], ["total_seq_len"], to=TensorProto.INT32)

    x = node("Gather", [init("model.embed_tokens.weight", sd["model.embed_tokens.weight"]),
                        "input_ids"], ["embeddings"])[0]
    residual = x
    h = node("SimplifiedLayerNormalization",
             [x, init("model.layers.0.input_layernorm.weight",
                      sd["model.layers.0.input_layernorm.weight"])],
             ["layers.0/input_norm"], axis=-1, epsilon=eps, stash_type=1)[0]
    gqa_attrs = {"num_heads": n_heads, "kv_num_heads": n_kv, "scale": head_dim ** -0.5,
                 "do_rotary": 1, "rotary_interleaved": 0, "local_window_size": -1}

    def skip_norm(res: str, add: str, weight: str, out: str) -> tuple[str, str]:
        o = node("SkipSimplifiedLayerNormalization", [res, add, init(weight, sd[weight])],
                 [out, "", "", out + "/residual"], domain=MS, epsilon=eps)
        return o[0], o[3]

    for i in range(n_layers):
        p = f"model.layers.{i}"
        a = f"{p}.self_attn"
        qkv = linear(h, [f"{a}.q_proj", f"{a}.k_proj", f"{a}.v_proj"], f"layers.{i}/qkv")
        att = node("GroupQueryAttention",
                   [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value",
                    "seqlens_k", "total_seq_len", "cos_cache", "sin_cache"],
                   [f"layers.{i}/attn", f"present.{i}.key", f"present.{i}.value"],
                   domain=MS, **gqa_attrs)[0]
        o = linear(att, [f"{a}.o_proj"], f"layers.{i}/o_proj")
        h, residual = skip_norm(residual, o, f"{p}.post_attention_layernorm.weight",
                                f"layers.{i}/post_attn_norm")
        m = f"{p}.mlp"
        gate = linear(h, [f"{m}.gate_proj"], f"layers.{i}/gate")
        up = linear(h, [f"{m}.up_proj"], f"layers.{i}/up")
        sig = node("Sigmoid", [gate], [f"layers.{i}/sigmoid"])[0]
        act = node("Mul", [gate, sig], [f"layers.{i}/silu"])[0]
        prod = node("Mul", [act, up], [f"layers.{i}/gated"])[0]
        down = linear(prod, [f"{m}.down_proj"], f"layers.{i}/down")
        nxt = f"model.layers.{i + 1}.input_layernorm.weight" if i + 1 < n_layers \
            else "model.norm.weight"
        h, residual = skip_norm(residual, down, nxt, f"layers.{i + 1}/input_norm"
                                if i + 1 < n_layers else "final_norm")

    # logits of the last `logits_to_keep` positions only: generation needs one row, and
    # the vocabulary projection of a whole prompt chunk is a large part of prefill
    init("int64_max", np.array([np.iinfo(np.int64).max], np.int64))
    node("Neg", ["logits_to_keep"], ["keep_start"])
    h = node("Slice", [h, "keep_start", "int64_max", "axis1"], ["kept_hidden"])[0]
    head = "lm_head.weight" if "lm_head.weight" in sd else "model.embed_tokens.weight"
    node("MatMul", [h, init("lm_head.weight.T", sd[head].T)], ["logits"])

    f32 = TensorProto.FLOAT
    kv_shape = ["batch_size", n_kv, "past_sequence_length", head_dim]
    present_shape = ["batch_size", n_kv, "total_sequence_length", head_dim]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                            ["batch_size", "sequence_length"]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64,
                                            ["batch_size", "total_sequence_length"]),
              helper.make_tensor_value_info("logits_to_keep", TensorProto.INT64, [1])]
    outputs = [helper.make_tensor_value_info("logits", f32,
                                             ["batch_size", "logits_length", vocab])]
    for i in range(n_layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", f32,
                                                        kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", f32,
                                                         present_shape))
    graph = helper.make_graph(nodes, "edge_chat_fused_decoder", inputs, outputs, inits)
    onnx_model = helper.make_model(
        graph, producer_name="edge_chat",
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(MS, 1)])
    onnx_model.ir_version = 10
    onnx.save_model(onnx_model, str(out), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=data_file, size_threshold=1024)
