"""Hugging Face folder -> ONNX decoder folder (fp32, fp16, int8, int4).

The decoder with past key/values is written as the fused graph of onnx_build.py
(Llama family: GroupQueryAttention, fused norms) or exported by optimum (task
``text-generation-with-past``, any architecture it knows; `graph` chooses), checked
against PyTorch, and its weights are then quantized with onnxruntime's own tools:

  * int8: dynamic quantization of the MatMul weights (MatMulInteger), int8 per channel;
  * int4: MatMulNBits (block-wise, symmetric, ``block_size`` weights per block, int8
    activations on CPU) for the MatMuls, and the embedding table block-quantized to
    4 bits too (GatherBlockQuantized, blocks along the hidden axis), since for real
    models the embedding is a large part of the size;
  * fp16: all floats halved (inputs/outputs too, so the KV cache is fp16) - meant for
    GPUs (CUDA/DirectML); on a CPU it is slower than fp32, use int8/int4 there.

The output folder holds model.onnx + model.onnx.data (weights always stored outside),
tokenizer.json, tokenizer_config.json (with the chat template), config.json,
generation_config.json and the manifest edge_chat.json. It is built in a temporary
folder and renamed into place at the end."""

from __future__ import annotations

import datetime as _dt
import gc
import logging
import os
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from edge_chat.convert.onnx_build import fused_unsupported, write_fused_decoder
from edge_chat.convert.onnx_graph import remove_repeat_kv
from edge_chat.convert.onnx_tokenizer import TOKENIZER_FILES, sample_ids, save_tokenizer
from edge_chat.convert.common import (ConvertResult, Progress, first_line, model_basename,
                                      no_progress, read_hf_config, temp_dir, weights_size)
from edge_chat.atomic import atomic_path, write_json_atomic
from edge_chat.store.paths import path_size
from edge_chat.errors import ConvertError

ONNX_QUANTS = ("fp32", "fp16", "int8", "int4")
ONNX_GRAPHS = ("auto", "fused", "optimum")
TASK = "text-generation-with-past"
#: the exported fp32 model must match PyTorch's logits within this
EXPORT_ATOL = 1e-3
DATA_FILE = "model.onnx.data"
#: MatMulNBits accuracy_level: 4 = int8 activations on CPU (faster; GPUs ignore it)
INT4_ACCURACY_LEVEL = 4


def default_output(src: Path, quant: str) -> Path:
    from edge_chat.store.paths import models_dir
    return models_dir() / f"{model_basename(src)}-onnx-{quant}"


def convert_to_onnx(src: Path, quant: str, out: Path | None = None, block_size: int = 32,
                    progress: Progress = no_progress, graph: str = "auto") -> ConvertResult:
    """Export `src` (a local HF folder) to an ONNX folder at `out` and quantize it.
    `graph`: "fused" (onnxruntime's fused attention/norm ops, Llama family only),
    "optimum" (optimum's traced graph: plain ONNX ops, any architecture optimum knows) or
    "auto" (fused where possible)."""
    t0 = time.monotonic()
    quant = str(quant).lower()
    if quant not in ONNX_QUANTS:
        raise ConvertError(f"unknown ONNX quant '{quant}': choose one of {', '.join(ONNX_QUANTS)}")
    graph = str(graph).lower()
    if graph not in ONNX_GRAPHS:
        raise ConvertError(f"unknown ONNX graph '{graph}': choose one of {', '.join(ONNX_GRAPHS)}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ConvertError(f"block_size must be a power of two >= 16, not {block_size}")
    src = Path(src).expanduser()
    if not src.is_dir():
        raise ConvertError(f"{src}: no such model folder")
    cfg = read_hf_config(src)
    arch = _check_arch(cfg)
    if graph == "fused" and fused_unsupported(cfg):
        raise ConvertError(f"no fused ONNX graph for this model ({fused_unsupported(cfg)}): "
                           "use --graph optimum")
    if not any((src / f).is_file() for f in TOKENIZER_FILES):
        raise ConvertError(f"{src} has no tokenizer (tokenizer.json or tokenizer.model): "
                           "copy the tokenizer files of the model into the folder")
    out = Path(out).expanduser() if out is not None else default_output(src, quant)
    notes: list[str] = []
    if quant == "fp16":
        notes.append("fp16 is meant for GPUs (CUDA/DirectML); on a CPU it is slower than "
                     "fp32: use int8 or int4 there")

    with atomic_path(out, is_dir=True) as tmp, temp_dir(out.parent) as work, _quiet():
        progress("tokenizer", 0.0)
        tok, tok_info = save_tokenizer(src, tmp, notes)
        sample = sample_ids(tok)
        progress("loading the PyTorch model", 0.05)
        model = _load_model(src)
        n_params = sum(p.numel() for p in model.parameters())
        model.config.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        ref = _torch_logits(model, sample)
        exported, diff, graph = _export(model, cfg, arch, work / "export", sample, ref,
                                        notes, progress, graph)
        del model
        gc.collect()
        notes.append(f"export check: max |logit diff| ONNX fp32 vs PyTorch = {diff:.2e}")
        if not diff <= EXPORT_ATOL:
            raise ConvertError(f"export check failed: ONNX logits differ from PyTorch by "
                               f"{diff:.2e} (> {EXPORT_ATOL:g})")

        progress(f"writing {quant}", 0.6)
        _write_quant(exported, tmp, quant, block_size)
        quant_check = None
        if quant != "fp32":
            progress(f"checking {quant}", 0.9)
            qdiff, agree = _compare(tmp / "model.onnx", sample, ref)
            quant_check = {"max_abs_logit_diff": qdiff, "top1_agreement": agree,
                           "n_tokens": len(sample)}
            notes.append(f"{quant} check: max |logit diff| vs PyTorch = {qdiff:.3f}, "
                         f"top-1 agreement {agree:.0%} over {len(sample)} positions")

        n_ctx_train = _context_length(cfg)
        src_bytes = weights_size(src)
        out_bytes = path_size(tmp)
        manifest = {
            "format": "onnx", "quant": quant, "block_size": block_size if quant == "int4" else None,
            "source": str(src.resolve()), "source_bytes": src_bytes, "output_bytes": out_bytes,
            "arch": arch, "graph": graph, "n_layers": cfg.get("num_hidden_layers") or cfg.get("n_layer"),
            "n_params": n_params, "context_length": n_ctx_train, **tok_info,
            "export_max_abs_logit_diff": diff, "quant_check": quant_check,
            "tools": _versions(), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(
                timespec="seconds"), "notes": notes,
        }
        if graph == "fused":
            manifest["kv_share_buffer"] = True
        if quant == "int4":
            manifest["int4"] = {"matmul": "MatMulNBits", "embedding": "GatherBlockQuantized",
                                "symmetric": True, "accuracy_level": INT4_ACCURACY_LEVEL}
        write_json_atomic(tmp / "edge_chat.json", manifest)
        _publish_modes(tmp)
        progress("done", 1.0)

    return ConvertResult(output=out, format="onnx", quant=quant, source_bytes=src_bytes,
                         output_bytes=path_size(out), seconds=time.monotonic() - t0, notes=notes)


# -- export ---------------------------------------------------------------------

def _export(model, cfg: dict, arch: str, export_dir: Path, sample: list[int],
            ref: np.ndarray, notes: list[str], progress: Progress,
            graph: str) -> tuple[Path, float, str]:
    """The fp32 decoder in `export_dir`: the fused graph where the architecture has one
    and it passes the check (unless `graph` is "optimum"), else optimum's.
    Returns (model.onnx, logit diff, graph)."""
    export_dir.mkdir(parents=True, exist_ok=True)
    exported = export_dir / "model.onnx"
    why = "--graph optimum" if graph == "optimum" else fused_unsupported(cfg)
    if why is None:
        progress("writing the fused ONNX graph", 0.15)
        write_fused_decoder(model, cfg, exported, DATA_FILE)
        progress("checking the export against PyTorch", 0.45)
        diff, _ = _compare(exported, sample, ref)
        if diff <= EXPORT_ATOL:
            notes.append("graph: fused (GroupQueryAttention with a shared KV buffer, "
                         "SkipSimplifiedLayerNormalization)")
            return exported, diff, "fused"
        if graph == "fused":
            raise ConvertError(f"export check failed: the fused graph's logits differ from "
                               f"PyTorch by {diff:.2e} (> {EXPORT_ATOL:g}); try --graph optimum")
        why = f"its logits differ from PyTorch by {diff:.2e}"
        for f in export_dir.iterdir():
            f.unlink()
    why = "asked for" if graph == "optimum" else f"no fused graph: {why}"
    notes.append(f"graph: optimum's export ({why})")
    progress("exporting with optimum", 0.15)
    try:
        from optimum.exporters.onnx.convert import onnx_export_from_model
        onnx_export_from_model(model, export_dir, task=TASK, do_validation=False)
    except (ConvertError, KeyboardInterrupt):
        raise
    except Exception as e:
        raise ConvertError(f"optimum could not export {arch} to ONNX: "
                           f"{type(e).__name__}: {first_line(e)}") from None
    if not exported.is_file():
        raise ConvertError(f"optimum did not write a single decoder model.onnx for {arch}")
    progress("checking the export against PyTorch", 0.5)
    try:
        n_gqa = remove_repeat_kv(exported, cfg)
    except Exception:       # a graph it does not know: leave it alone
        n_gqa = 0
    try:
        diff, _ = _compare(exported, sample, ref)
    except Exception:
        if not n_gqa:
            raise
        diff = float("inf")
    if n_gqa and not diff <= EXPORT_ATOL:
        # the rewrite is wrong for this graph: keep optimum's graph as it was
        (export_dir / "model.onnx.orig").replace(exported)
        notes.append(f"repeat_kv rewrite undone (logit diff {diff:.2e})")
        n_gqa = 0
        diff, _ = _compare(exported, sample, ref)
    if n_gqa:
        notes.append(f"repeat_kv removed in {n_gqa} attention layers (broadcasting MatMuls)")
    return exported, diff, "optimum"


# -- checks ---------------------------------------------------------------------

def _check_arch(cfg: dict) -> str:
    arch = cfg.get("model_type")
    if not arch:
        raise ConvertError("config.json has no model_type: cannot tell the architecture")
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(
            arch, "onnx", library_name="transformers")
    except KeyError:
        tasks = {}
    if TASK not in tasks:
        raise ConvertError(f"architecture '{arch}' cannot be exported to ONNX by optimum "
                           f"{_version('optimum-onnx')} (decoders it knows: {_known_archs()})")
    return arch


def _known_archs() -> str:
    from optimum.exporters.tasks import TasksManager
    names = [m for m, per in TasksManager._SUPPORTED_MODEL_TYPE.items()
             if TASK in per.get("onnx", {})]
    return ", ".join(sorted(names)[:40]) + (", ..." if len(names) > 40 else "")


# -- model, check ----------------------------------------------------------------

def _load_model(src: Path):
    import torch
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    except Exception as e:
        raise ConvertError(f"cannot load {src} with transformers: {type(e).__name__}: "
                           f"{first_line(e)}") from None
    return model.eval()


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    import torch
    with torch.no_grad():
        x = torch.tensor([ids])
        return model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()


def _compare(model_path: Path, ids: list[int], ref: np.ndarray) -> tuple[float, float]:
    """Run the ONNX model on the first half of `ids`, then the rest with the past it
    returned; (max |logit - ref|, top-1 agreement) over all positions."""
    import onnxruntime as ort
    sess = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    half = max(1, len(ids) // 2)
    past: dict[str, np.ndarray] = {}
    for inp in sess.get_inputs():
        if inp.name.startswith("past_key_values"):
            shape = [1 if isinstance(d, str) and "batch" in d else 0 if isinstance(d, str)
                     else d for d in inp.shape]
            past[inp.name] = np.zeros(shape, np.float16 if "float16" in inp.type else np.float32)
    names = {i.name for i in sess.get_inputs()}
    outs, start = [], 0
    for part in (ids[:half], ids[half:]):
        if not part:
            continue
        feeds = {"input_ids": np.array([part], np.int64), **past}
        if "attention_mask" in names:
            feeds["attention_mask"] = np.ones((1, start + len(part)), np.int64)
        if "position_ids" in names:
            feeds["position_ids"] = np.arange(start, start + len(part), dtype=np.int64)[None]
        if "logits_to_keep" in names:
            feeds["logits_to_keep"] = np.array([len(part)], np.int64)
        res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
        outs.append(res["logits"][0].astype(np.float32))
        past = {k.replace("present", "past_key_values", 1): v for k, v in res.items()
                if k.startswith("present")}
        start += len(part)
    got = np.concatenate(outs)
    return float(np.abs(got - ref).max()), float((got.argmax(-1) == ref.argmax(-1)).mean())


# -- quantization -----------------------------------------------------------------

def _write_quant(fp32: Path, dst: Path, quant: str, block_size: int) -> None:
    import onnx
    target = dst / "model.onnx"
    if quant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic
        # shape inference cannot type the outputs of contrib ops (fused graph): say float
        # per-channel weight scales: Qwen2.5-0.5B's top-1 agreement with PyTorch goes
        # from 49 % (per tensor) to 73 %
        quantize_dynamic(fp32, target, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"], use_external_data_format=True,
                         extra_options={"DefaultTensorType": 1})
        return
    model = onnx.load(str(fp32))
    if quant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        model = convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)
    elif quant == "int4":
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
        # int4 initializers (GatherBlockQuantized) need opset 21 / IR 10: set them up front
        for op in model.opset_import:
            if op.domain in ("", "ai.onnx") and op.version < 21:
                op.version = 21
        model.ir_version = max(model.ir_version, 10)
        q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True,
                                 accuracy_level=INT4_ACCURACY_LEVEL,
                                 op_types_to_quantize=("MatMul", "Gather"),
                                 quant_axes=(("MatMul", 0), ("Gather", 1)))
        q.process()
        model = q.model.model
    onnx.save_model(model, str(target), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)


def _publish_modes(folder: Path) -> None:
    """Temporary files are private (0600/0700); the model folder is not."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(0o666 & ~umask)


# -- metadata ---------------------------------------------------------------------

def _context_length(cfg: dict) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length",
                "seq_length", "n_ctx"):
        if isinstance(cfg.get(key), int):
            return cfg[key]
    return 2048


def _version(dist: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict:
    import edge_chat
    names = ("onnxruntime", "onnx", "optimum", "optimum-onnx", "transformers", "torch",
             "tokenizers")
    return {"edge_chat": edge_chat.__version__, **{n: _version(n) for n in names}}


@contextmanager
def _quiet() -> Iterator[None]:
    """Hide the exporters' tracer/quantizer chatter (warnings, INFO logs)."""
    loggers = [logging.getLogger(n) for n in ("onnxruntime", "optimum", "root", "")]
    levels = [lg.level for lg in loggers]
    try:
        from transformers.utils import logging as hf_logging
        hf_level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
    except ImportError:
        hf_logging = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, lv in zip(loggers, levels):
                lg.setLevel(lv)
            if hf_logging is not None:
                hf_logging.set_verbosity(hf_level)
