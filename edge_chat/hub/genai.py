"""onnxruntime-genai's model folders (genai_config.json, the decoder .onnx, tokenizer):
whether edge_chat's ONNX engine can run one, and the edge_chat.json that tells the
engine what genai_config.json says."""

from __future__ import annotations

import re

from edge_chat.errors import PullError

#: what edge_chat's engine feeds and reads (engines/onnx/engine.py)
_PAST, _PRESENT = "past_key_values.", "present."


def check_genai(cfg: dict, files: set[str], where: str) -> str:
    """Raise PullError saying why the engine cannot run this genai folder; else return
    the decoder's file name."""
    model = cfg.get("model") or {}
    extra = [k for k in ("vision", "speech", "embedding", "encoder") if k in model]
    if extra:
        raise PullError(f"{where} is a multimodal onnxruntime-genai model ({', '.join(extra)} "
                        "parts): edge_chat runs text decoders only")
    dec = model.get("decoder") or {}
    if "pipeline" in dec or not dec.get("filename"):
        raise PullError(f"{where} splits its decoder into several ONNX sessions "
                        "(an onnxruntime-genai pipeline): edge_chat runs one decoder file")
    if dec["filename"] not in files:
        raise PullError(f"{where}: genai_config.json names {dec['filename']}, which is not in "
                        "the repo")
    if "tokenizer.json" not in files:
        raise PullError(f"{where} has no tokenizer.json: edge_chat tokenizes with it")
    ins, outs = dec.get("inputs") or {}, dec.get("outputs") or {}
    names = {"input_ids": ins.get("input_ids", "input_ids"),
             "past keys": ins.get("past_key_names", "past_key_values.%d.key"),
             "present keys": outs.get("present_key_names", "present.%d.key"),
             "logits": outs.get("logits", "logits")}
    want = {"input_ids": "input_ids", "past keys": _PAST, "present keys": _PRESENT,
            "logits": "logits"}
    wrong = [f"{k} '{v}'" for k, v in names.items() if not str(v).startswith(want[k])]
    if wrong:
        raise PullError(f"{where} names its decoder's tensors {', '.join(wrong)}; edge_chat's "
                        "engine needs input_ids, past_key_values.N.key/value, present.N.key/value "
                        "and logits")
    if share_buffer(cfg) and "position_ids" in ins:
        raise PullError(f"{where} shares the past/present KV buffer and takes position_ids: "
                        "edge_chat's engine shares the buffer only without position_ids")
    return dec["filename"]


def share_buffer(cfg: dict) -> bool:
    return bool((cfg.get("search") or {}).get("past_present_share_buffer"))


def genai_manifest(cfg: dict, label: str, source: str) -> dict:
    """edge_chat.json for a genai folder: what the engine would otherwise read from our
    own converter's manifest."""
    model = cfg.get("model") or {}
    dec = model.get("decoder") or {}
    eos = model.get("eos_token_id")
    quant = next((t for t in re.split(r"[-_/.]+", label.lower())
                  if re.fullmatch(r"(int|fp|uint|q)\d+|bf16|f16|f32", t)), "genai")
    out = {"format": "onnx", "layout": "onnxruntime-genai", "quant": quant,
           "arch": model.get("type") or "unknown", "context_length": model.get("context_length"),
           "n_layers": dec.get("num_hidden_layers"), "kv_share_buffer": share_buffer(cfg),
           "source": source}
    if eos is not None:
        out["eos_ids"] = eos if isinstance(eos, list) else [eos]
    return {k: v for k, v in out.items() if v is not None}
