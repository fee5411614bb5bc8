"""The `edge_chat` command: parse, call the library, print. Nothing else."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edge_chat.errors import EdgeChatError
from edge_chat.store import fmt_size

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Offline, quantized chat: convert, chat, serve, ui, models, bench.")


def _err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


def command(fn):
    """Register a command whose bad input ends in one line on stderr and exit 1."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeChatError as e:
            _err(f"error: {e}")
            raise typer.Exit(1)
        except KeyboardInterrupt:
            _err("interrupted")
            raise typer.Exit(130)
    return app.command()(run)


# -- shared options -----------------------------------------------------------
ModelArg = typer.Argument(None, help="A .gguf file, an ONNX folder or a name in the store "
                                     "(default: the store's only model).")
CtxOpt = typer.Option(None, "--ctx-size", "-c", help="Context window (default: min(trained, 4096)).")
ThreadsOpt = typer.Option(None, "--threads", "-t", help="CPU threads (default: physical cores).")
GpuOpt = typer.Option("0", "--gpu-layers", help="GGUF: layers on the GPU: N or 'auto' (with --vram).")
VramOpt = typer.Option(None, "--vram", help="GGUF: GPU memory budget for --gpu-layers auto, e.g. 4GB.")
KvOpt = typer.Option("f16", "--kv-type", help="GGUF: KV cache type: f16 or q8_0.")
MmapOpt = typer.Option(True, "--mmap/--no-mmap", help="GGUF: memory-map the weights.")
ProviderOpt = typer.Option("cpu", "--provider", help="ONNX: execution provider (cpu, cuda, ...).")
SpecOpt = typer.Option("auto", "--speculative", help="Speculative decoding: auto, lookup "
                       "(prompt lookup), draft (--draft model) or off.")
DraftOpt = typer.Option(None, "--draft", help="A small draft model with the same vocabulary "
                        "(GGUF file, ONNX folder or store name) for speculative decoding.")
TemplateOpt = typer.Option(None, "--chat-template",
                           help="A Jinja file or a built-in name (chatml, gemma, llama3, phi3, mistral).")


def _engine_options(ctx_size, threads, gpu_layers, vram, kv_type, mmap, provider,
                    speculative="auto", draft=None, parallel=1):
    from edge_chat.engines import EngineOptions
    if draft is not None:
        from edge_chat.store import resolve_model
        try:
            draft = str(resolve_model(draft))
        except EdgeChatError as e:
            raise EdgeChatError(f"draft model: {e}", param="draft") from None
    return EngineOptions(n_ctx=ctx_size, threads=threads, gpu_layers=gpu_layers, vram=vram,
                         kv_type=kv_type, mmap=mmap, provider=provider,
                         speculative=speculative, draft=draft, parallel=parallel)


def _sampling(temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty,
              repeat_penalty, seed, stop, max_tokens, logit_bias):
    from edge_chat.chat.params import chat_params, parse_logit_bias
    return chat_params(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                       presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                       repeat_penalty=repeat_penalty, seed=seed, stop=stop or None,
                       max_tokens=max_tokens,
                       logit_bias=parse_logit_bias(logit_bias) if logit_bias else None)


# -- chat ---------------------------------------------------------------------
@command
def chat(
    model: Optional[str] = ModelArg,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Answer one message and exit."),
    system: Optional[str] = typer.Option(None, "--system", "-s", help="System prompt."),
    temperature: Optional[float] = typer.Option(None, help="0..2 (default 0.8; 0 = greedy)."),
    top_p: Optional[float] = typer.Option(None, help="0..1 (default 0.95)."),
    top_k: Optional[int] = typer.Option(None, help=">= 0, 0 = off (default 40)."),
    min_p: Optional[float] = typer.Option(None, help="0..1 (default 0.05)."),
    presence_penalty: Optional[float] = typer.Option(None, help="-2..2."),
    frequency_penalty: Optional[float] = typer.Option(None, help="-2..2."),
    repeat_penalty: Optional[float] = typer.Option(None, help="> 0, 1 = off."),
    seed: Optional[int] = typer.Option(None, help="Seed for reproducible sampling."),
    stop: Optional[List[str]] = typer.Option(None, "--stop", help="Stop string (up to 4)."),
    max_tokens: Optional[int] = typer.Option(None, help="Most tokens in one answer."),
    logit_bias: Optional[List[str]] = typer.Option(None, "--logit-bias", help="TOKEN_ID:BIAS (-100..100)."),
    stats: bool = typer.Option(False, "--stats", help="Print tokens/s and time to first token."),
    context_policy: str = typer.Option("truncate", "--context-policy",
                                       help="When the window is full: truncate (drop oldest turns) or error."),
    chat_template: Optional[str] = TemplateOpt,
    ctx_size: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    gpu_layers: str = GpuOpt, vram: Optional[str] = VramOpt, kv_type: str = KvOpt,
    mmap: bool = MmapOpt, provider: str = ProviderOpt,
    speculative: str = SpecOpt, draft: Optional[str] = DraftOpt,
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Chat with a model on an "
                                           "OpenAI-compatible server, e.g. http://host:8000/v1."),
    model_name: Optional[str] = typer.Option(None, "--model", "-m",
                                             help="With --base-url: the server's model name."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGE_CHAT_API_KEY",
                                          help="With --base-url: the server's API key."),
):
    """Chat with a model: a streaming REPL, or one answer (--prompt or piped stdin)."""
    from edge_chat.chat.context import POLICIES
    from edge_chat.repl import ChatSession, run_repl
    from edge_chat.runtime import open_chat
    if context_policy not in POLICIES:
        raise EdgeChatError(f"--context-policy must be one of {', '.join(POLICIES)}")
    params = _sampling(temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty,
                       repeat_penalty, seed, stop, max_tokens, logit_bias)
    piped = prompt is None and not sys.stdin.isatty()
    if piped:
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise EdgeChatError("empty input on stdin: nothing to answer")
    if base_url:
        from edge_chat.engines.remote import open_remote
        model_ = open_remote(base_url, model_name or model, api_key=api_key)
    else:
        model_ = open_chat(model, _engine_options(ctx_size, threads, gpu_layers, vram, kv_type,
                                                  mmap, provider, speculative, draft),
                           chat_template=chat_template, context_policy=context_policy, warn=_err)
    try:
        session = ChatSession(model_, params, system=system, show_stats=stats)
        if prompt is not None:
            session.ask(prompt.strip("\n"))
        else:
            run_repl(session)
    finally:
        model_.engine.close()


# -- complete -----------------------------------------------------------------
@command
def complete(
    model: Optional[str] = ModelArg,
    text: str = typer.Argument(..., help="The text to continue ('-' reads stdin)."),
    temperature: Optional[float] = typer.Option(None), top_p: Optional[float] = typer.Option(None),
    top_k: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    stop: Optional[List[str]] = typer.Option(None, "--stop"),
    max_tokens: int = typer.Option(128, help="Most tokens to add."),
    ctx_size: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    gpu_layers: str = GpuOpt, vram: Optional[str] = VramOpt, kv_type: str = KvOpt,
    mmap: bool = MmapOpt, provider: str = ProviderOpt,
    speculative: str = SpecOpt, draft: Optional[str] = DraftOpt,
):
    """Continue a text with no chat template (for base models)."""
    from edge_chat.runtime import open_chat
    if text == "-":
        text = sys.stdin.read()
    params = _sampling(temperature, top_p, top_k, None, None, None, None, seed, stop,
                       max_tokens, None)
    m = open_chat(model, _engine_options(ctx_size, threads, gpu_layers, vram, kv_type, mmap,
                                         provider, speculative, draft), need_template=False)
    try:
        prompt = m.prepare_text(text, params)
        for ev in m.stream(None, params, prompt=prompt):
            sys.stdout.write(ev.delta)
            sys.stdout.flush()
        sys.stdout.write("\n")
    finally:
        m.engine.close()


# -- ui -----------------------------------------------------------------------
@command
def ui(
    model: Optional[str] = typer.Argument(None, help="The model to load first: a .gguf file, an "
                                                     "ONNX folder or a store name (default: the "
                                                     "store's first model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(7860, "--port", help="Port of the page."),
    auth: Optional[str] = typer.Option(None, "--auth", help="USER:PASSWORD asked before the page opens."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir",
                                              help="Where Export writes files (default: a temporary folder)."),
    context_policy: str = typer.Option("truncate", "--context-policy",
                                       help="When the window is full: truncate (drop oldest turns) or error."),
    chat_template: Optional[str] = TemplateOpt,
    ctx_size: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    gpu_layers: str = GpuOpt, vram: Optional[str] = VramOpt, kv_type: str = KvOpt,
    mmap: bool = MmapOpt, provider: str = ProviderOpt,
    speculative: str = SpecOpt, draft: Optional[str] = DraftOpt,
):
    """A local chat page (Gradio) at http://HOST:PORT, fully offline: streaming, Stop, model picker, export."""
    from edge_chat.chat.context import POLICIES
    from edge_chat.ui.app import parse_auth, run_ui
    if context_policy not in POLICIES:
        raise EdgeChatError(f"--context-policy must be one of {', '.join(POLICIES)}")
    run_ui(model, host=host, port=port, auth=parse_auth(auth),
           options=_engine_options(ctx_size, threads, gpu_layers, vram, kv_type, mmap, provider,
                                   speculative, draft),
           chat_template=chat_template, context_policy=context_policy, export_dir=export_dir,
           warn=_err)


# -- serve --------------------------------------------------------------------
@command
def serve(
    models: Optional[List[str]] = typer.Argument(None, help="Serve only these models (names "
                                                 "or paths); default: every model in the store."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGE_CHAT_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' on /v1/*."),
    max_loaded: int = typer.Option(2, "--max-loaded", help="Models kept in memory at once."),
    max_queue: int = typer.Option(8, "--max-queue", help="Requests waiting per model beyond "
                                  "its --parallel slots (then 503)."),
    parallel: int = typer.Option(4, "--parallel", "-np", help="Requests decoded together per "
                                 "GGUF model (continuous batching; each slot has its own "
                                 "--ctx-size window); 1: one at a time."),
    cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin",
                                                    help="Allow this browser origin (repeatable)."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
    chat_template: Optional[str] = TemplateOpt,
    ctx_size: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    gpu_layers: str = GpuOpt, vram: Optional[str] = VramOpt, kv_type: str = KvOpt,
    mmap: bool = MmapOpt, provider: str = ProviderOpt,
    speculative: str = SpecOpt, draft: Optional[str] = DraftOpt,
):
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models)."""
    from edge_chat.server import ServerConfig
    from edge_chat.server import serve as run_server
    run_server(ServerConfig(
        models=models or None, host=host, port=port, api_key=api_key or None,
        max_loaded=max_loaded, max_queue=max_queue, cors_origins=cors_origin or [],
        chat_template=chat_template,
        engine=_engine_options(ctx_size, threads, gpu_layers, vram, kv_type, mmap, provider,
                               speculative, draft, parallel)),
        log_level=log_level)


# -- models / info ------------------------------------------------------------


@command
def models(json_out: bool = typer.Option(False, "--json", help="Print JSON.")):
    """List the models in the store ($EDGE_CHAT_MODELS or ./models)."""
    import json
    import shutil

    from rich.console import Console
    from rich.table import Table

    from edge_chat.store import describe, list_models, models_dir
    rows = []
    for p in list_models():
        try:
            rows.append(describe(p))
        except EdgeChatError as e:
            rows.append({"name": p.name, "format": "broken", "error": str(e),
                         "size_bytes": None})
    if json_out:
        print(json.dumps(rows, indent=2))
        return
    root = models_dir()
    if not rows:
        _err(f"no models in {root}: make one with "
             "'edge_chat convert HF_FOLDER --to gguf --quant q4_k_m'")
        return
    t = Table(title=f"models in {root}")
    for col in ("name", "format", "quant", "size", "arch", "context", "template"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r.get("format", "?"), str(r.get("quant", "")),
                  fmt_size(r.get("size_bytes")), str(r.get("arch", r.get("error", ""))),
                  str(r.get("context") or "?"), "yes" if r.get("chat_template") else "no")
    Console().print(t)
    free = shutil.disk_usage(root if root.exists() else Path.cwd()).free
    _err(f"{len(rows)} model(s), {fmt_size(sum(r.get('size_bytes') or 0 for r in rows))}; "
         f"{fmt_size(free)} free on disk")


@command
def info(model: str = typer.Argument(..., help="A path or a name in the store."),
         json_out: bool = typer.Option(False, "--json", help="Print JSON.")):
    """Show a model's metadata: arch, parameters, quant, context, template, size."""
    import json

    from edge_chat.store import describe, resolve_model
    row = describe(resolve_model(model))
    if json_out:
        print(json.dumps(row, indent=2))
        return
    for k, v in row.items():
        if k == "size_bytes":
            v = f"{fmt_size(v)} ({v} bytes)"
        print(f"{k:14} {v}")


# -- convert ------------------------------------------------------------------
@command
def convert(
    src: str = typer.Argument(..., help="A Hugging Face model folder (or a hub id when online)."),
    to: str = typer.Option("gguf", "--to", help="gguf or onnx."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q",
                                        help="gguf: f32 f16 bf16 q8_0 q6_k q5_k_m q5_0 q4_k_m "
                                             "q4_k_s q4_0 q3_k_m q2_k (default q4_k_m); "
                                             "onnx: fp32 fp16 int8 int4 (default int4); "
                                             "all: every one."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output path."),
    block_size: int = typer.Option(32, "--block-size", help="onnx int4: quantization block size."),
    graph: str = typer.Option("auto", "--graph",
                              help="onnx: fused (onnxruntime's fused attention, Llama family), "
                                   "optimum (plain ONNX ops, any architecture) or auto."),
    evaluate: Optional[bool] = typer.Option(None, "--eval/--no-eval",
                                            help="Perplexity of the source and the result "
                                                 "(default: on for a local folder)."),
    recommend: bool = typer.Option(False, "--recommend",
                                   help="Pick the quant with the least perplexity loss that fits --ram."),
    ram: Optional[str] = typer.Option(None, "--ram",
                                      help="RAM budget for --recommend (default: 60% of free memory)."),
):
    """Convert a Hugging Face model to GGUF or ONNX, quantized."""
    from edge_chat.convert.run import run_convert
    from edge_chat.engines.gguf_file import parse_size
    run_convert(src, to, quant, output, block_size, graph=graph, evaluate=evaluate, recommend=recommend,
                budget=parse_size(ram) if ram else None)


@command
def pull(
    hub_id: str = typer.Argument(..., help="A Hugging Face hub id, e.g. HuggingFaceTB/SmolLM2-135M-Instruct."),
    to: str = typer.Option("gguf", "--to", help="gguf or onnx."),
    quant: Optional[str] = typer.Option(None, "--quant", "-q", help="As in convert."),
):
    """Download a model from the hub and convert it into the store (needs internet)."""
    from edge_chat.convert.run import run_convert
    if Path(hub_id).exists() or hub_id.count("/") != 1:
        raise EdgeChatError(f"'{hub_id}' is not a hub id (org/name); for a local folder use convert")
    run_convert(hub_id, to, quant, None, evaluate=False)


@command
def rm(names: List[str] = typer.Argument(..., help="Names in the store."),
       yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask.")):
    """Remove models from the store."""
    from edge_chat.atomic import remove
    from edge_chat.store import find_in_store, model_name, path_size
    paths = [find_in_store(n) for n in names]
    total = sum(path_size(p) for p in paths)
    if not yes and sys.stdin.isatty() and not typer.confirm(
            f"remove {', '.join(model_name(p) for p in paths)} ({fmt_size(total)})?"):
        raise typer.Exit(1)
    for p in paths:
        remove(p)
        _err(f"removed {p}")


# -- bench --------------------------------------------------------------------
@command
def bench(
    models: List[str] = typer.Argument(..., help="GGUF files, ONNX folders or store names "
                                                 "(each measured in its own process)."),
    prompt_lengths: str = typer.Option("128,1024", "--prompt-lengths",
                                       help="Prompt sizes in tokens, comma-separated."),
    gen: int = typer.Option(64, "--gen", min=2, help="Tokens generated per run (greedy, EOS banned)."),
    reps: int = typer.Option(3, "--reps", min=1, help="Measured runs per prompt length (after a warm-up)."),
    history: int = typer.Option(1536, "--history", min=0,
                                help="Tokens of history before the second turn (0: skip it)."),
    edits: int = typer.Option(3, "--edits", min=0, help="Code edits answered plain, speculative "
                              "and with a prediction (acceptance, effective tok/s); 0: skip."),
    concurrency: Optional[str] = typer.Option(
        None, "--concurrency", help="Clients at once, comma-separated (e.g. 1,2,4): aggregate "
        "and per-stream tok/s and TTFT with continuous batching (only this workload)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write bar charts to this PNG."),
    chat_template: Optional[str] = TemplateOpt,
    ctx_size: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    gpu_layers: str = GpuOpt, vram: Optional[str] = VramOpt, kv_type: str = KvOpt,
    mmap: bool = MmapOpt, provider: str = ProviderOpt,
    speculative: str = SpecOpt, draft: Optional[str] = DraftOpt,
):
    """Measure load time, peak memory, time to first token, prefill/decode tok/s and second-turn TTFT."""
    import json
    from dataclasses import asdict

    from edge_chat.bench import BenchConfig, bench_models, parse_lengths, table
    from edge_chat.bench_plot import plot as write_plot
    from edge_chat.bench_plot import require_matplotlib
    from edge_chat.store import resolve_model
    paths = [str(resolve_model(m)) for m in models]
    if plot is not None:
        require_matplotlib()
    opts = asdict(_engine_options(ctx_size, threads, gpu_layers, vram, kv_type, mmap, provider,
                                  speculative, draft))
    cfg = BenchConfig(prompt_lengths=parse_lengths(prompt_lengths), gen=gen, reps=reps,
                      history=history, edits=edits, chat_template=chat_template, options=opts,
                      concurrency=parse_lengths(concurrency, "--concurrency", 1)
                      if concurrency else [])
    results = bench_models(paths, cfg, quiet=json_out)
    if json_out:
        print(json.dumps(results, indent=2))
    else:
        from rich.console import Console
        Console().print(table(results))
    if plot is not None:
        _err(f"plot written to {write_plot(results, plot)}")
    failed = [r for r in results if "error" in r]
    for r in failed:
        _err(f"error: {r['model']}: {r['error']}")
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
