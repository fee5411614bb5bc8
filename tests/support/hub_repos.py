"""Hub repos made on the spot from the tiny fixture, for the stand-in hub
(tests/support/hub_standin.py), and the CLI run against it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_cli(env: dict, *args: str, stdin: str | None = "", timeout: float = 300,
            cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge_chat", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def folder_files(folder: Path, prefix: str = "") -> dict[str, Path]:
    """A model folder as repo files under `prefix/`."""
    return {f"{prefix}{p.relative_to(folder).as_posix()}": p
            for p in sorted(folder.rglob("*")) if p.is_file()}


def split_gguf(src: Path, out: Path, parts: int) -> list[Path]:
    """`src` written as `parts` split files (`<out stem>-0000i-of-0000n.gguf`) by gguf-py's
    writer, the format llama.cpp's gguf-split writes: all metadata in the first part,
    split.no / split.count / split.tensors.count in every part."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    r = GGUFReader(src)
    out.parent.mkdir(parents=True, exist_ok=True)
    arch = r.fields["general.architecture"].contents()
    w = GGUFWriter(out, arch, split_max_tensors=-(-len(r.tensors) // parts))
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vt = f.types[0]
        w.add_key_value(f.name, f.contents(), vt,
                        sub_type=f.types[-1] if vt == GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    files = sorted(out.parent.glob(f"{out.stem}-*-of-*.gguf"))
    assert len(files) == parts, files
    return files


def genai_folder(onnx_dir: Path, dest: Path, *, filename: str = "decoder.onnx",
                 **changes) -> Path:
    """edge_chat's fused ONNX export laid out as onnxruntime-genai lays out a model:
    genai_config.json (the decoder's file and tensor names, the KV buffer sharing, EOS,
    context), the decoder under another name, the tokenizer files, no edge_chat.json.
    `changes` overrides parts of model.decoder (e.g. inputs) or adds model sections."""
    man = json.loads((onnx_dir / "edge_chat.json").read_text())
    cfg_hf = json.loads((onnx_dir / "config.json").read_text())
    dest.mkdir(parents=True)
    for p in onnx_dir.iterdir():
        if p.name in ("edge_chat.json", "config.json"):
            continue
        (dest / (filename if p.name == "model.onnx" else p.name)).write_bytes(p.read_bytes())
    dec = {"filename": filename, "num_hidden_layers": cfg_hf["num_hidden_layers"],
           "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                      "past_key_names": "past_key_values.%d.key",
                      "past_value_names": "past_key_values.%d.value"},
           "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                       "present_value_names": "present.%d.value"}}
    dec.update(changes.pop("decoder", {}))
    model = {"type": cfg_hf["model_type"], "context_length": cfg_hf["max_position_embeddings"],
             "eos_token_id": man.get("eos_ids") or cfg_hf.get("eos_token_id"),
             "vocab_size": cfg_hf["vocab_size"], "decoder": dec, **changes}
    cfg = {"model": model, "search": {"past_present_share_buffer": bool(man.get("kv_share_buffer")),
                                      "max_length": cfg_hf["max_position_embeddings"]}}
    (dest / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return dest
