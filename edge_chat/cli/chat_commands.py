"""The chat commands of `edge_chat`: chat, complete, ui, serve, bench."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from edge_chat.cli.app import (
    ContextPolicyOpt,
    ModelArg,
    SpecialOpt,
    TemplateOpt,
    YesOpt,
    check_policy,
    command,
    engine_options,
    err,
    in_store,
)
from edge_chat.engines import EngineOptions
from edge_chat.errors import EdgeChatError


def _sampling(temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty,
              repeat_penalty, seed, stop, max_tokens, logit_bias):
    from edge_chat.params import chat_params, parse_logit_bias
    return chat_params(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                       presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                       repeat_penalty=repeat_penalty, seed=seed, stop=stop or None,
                       max_tokens=max_tokens,
                       logit_bias=parse_logit_bias(logit_bias) if logit_bias else None)


# -- chat ---------------------------------------------------------------------
@command
@engine_options
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
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="A JSON schema file: "
                                               "every answer is JSON valid against it."),
    tools: Optional[Path] = typer.Option(None, "--tools", help="A JSON file with a list of "
                                         "OpenAI function tools the model may call."),
    context_policy: str = ContextPolicyOpt,
    chat_template: Optional[str] = TemplateOpt, allow_special: bool = SpecialOpt,
    engine: EngineOptions = None,
    base_url: Optional[str] = typer.Option(None, "--base-url", help="Chat with a model on an "
                                           "OpenAI-compatible server, e.g. http://host:8000/v1."),
    model_name: Optional[str] = typer.Option(None, "--model", "-m",
                                             help="With --base-url: the server's model name."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGE_CHAT_API_KEY",
                                          help="With --base-url: the server's API key."),
    yes: bool = YesOpt,
):
    """Chat with a model: a streaming REPL, or one answer (--prompt or piped stdin)."""
    from edge_chat.cli.repl import ChatSession, run_repl, structure_options
    from edge_chat.runtime import open_chat
    check_policy(context_policy)
    params = _sampling(temperature, top_p, top_k, min_p, presence_penalty, frequency_penalty,
                       repeat_penalty, seed, stop, max_tokens, logit_bias)
    response_format, tool_list = structure_options(json_schema, tools)
    piped = prompt is None and not sys.stdin.isatty()
    if piped:
        prompt = sys.stdin.read()
        if not prompt.strip():
            raise EdgeChatError("empty input on stdin: nothing to answer")
    if base_url:
        from edge_chat.chat.remote import open_remote
        model_ = open_remote(base_url, model_name or model, api_key=api_key)
    else:
        model_ = open_chat(in_store(model, yes), engine,
                           chat_template=chat_template, context_policy=context_policy, warn=err,
                           allow_special=allow_special)
    try:
        session = ChatSession(model_, params, system=system, show_stats=stats, tools=tool_list,
                              response_format=response_format)
        session.model.grammar(tool_list, response_format)      # refused before the first turn
        if prompt is not None:
            session.ask(prompt.strip("\n"))
        else:
            run_repl(session)
    finally:
        model_.engine.close()


# -- complete -----------------------------------------------------------------
@command
@engine_options
def complete(
    model: Optional[str] = ModelArg,
    text: str = typer.Argument(..., help="The text to continue ('-' reads stdin)."),
    temperature: Optional[float] = typer.Option(None), top_p: Optional[float] = typer.Option(None),
    top_k: Optional[int] = typer.Option(None), seed: Optional[int] = typer.Option(None),
    stop: Optional[List[str]] = typer.Option(None, "--stop"),
    max_tokens: int = typer.Option(128, help="Most tokens to add."),
    engine: EngineOptions = None,
):
    """Continue a text with no chat template (for base models)."""
    from edge_chat.runtime import open_chat
    if text == "-":
        text = sys.stdin.read()
    params = _sampling(temperature, top_p, top_k, None, None, None, None, seed, stop,
                       max_tokens, None)
    m = open_chat(model, engine, need_template=False)
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
@engine_options
def ui(
    model: Optional[str] = typer.Argument(None, help="The model to load first: a .gguf file, an "
                                                     "ONNX folder or a store name (default: the "
                                                     "store's first model)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only)."),
    port: int = typer.Option(7860, "--port", help="Port of the page."),
    auth: Optional[str] = typer.Option(None, "--auth", help="USER:PASSWORD asked before the page opens."),
    export_dir: Optional[Path] = typer.Option(None, "--export-dir",
                                              help="Where Export writes files (default: a temporary folder)."),
    yes: bool = YesOpt,
    context_policy: str = ContextPolicyOpt,
    tools: Optional[Path] = typer.Option(None, "--tools", help="A JSON file with a list of OpenAI "
                                         "function tools: the page shows the model's calls."),
    chat_template: Optional[str] = TemplateOpt, allow_special: bool = SpecialOpt,
    engine: EngineOptions = None,
):
    """A local chat page (Gradio) at http://HOST:PORT, fully offline: streaming, Stop, model picker, export."""
    from edge_chat.cli.repl import structure_options
    from edge_chat.ui.page import parse_auth, run_ui
    check_policy(context_policy)
    model = in_store(model, yes)
    run_ui(model, host=host, port=port, auth=parse_auth(auth),
           options=engine,
           chat_template=chat_template, context_policy=context_policy, export_dir=export_dir,
           warn=err, allow_special=allow_special, tools=structure_options(None, tools)[1])


# -- serve --------------------------------------------------------------------
@command
@engine_options
def serve(
    models: Optional[List[str]] = typer.Argument(None, help="Serve only these models (names "
                                                 "or paths); default: every model in the store."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: all)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGE_CHAT_API_KEY",
                                          help="Require the key on every API route "
                                          "('Authorization: Bearer KEY' or 'x-api-key: KEY')."),
    max_loaded: int = typer.Option(2, "--max-loaded", help="Models kept in memory at once."),
    keep_alive: str = typer.Option("5m", "--keep-alive", help="How long an idle model stays "
                                   "loaded (e.g. 30s, 5m, 1h; -1: until --max-loaded evicts it)."),
    max_queue: int = typer.Option(8, "--max-queue", help="Requests waiting per model beyond "
                                  "its --parallel slots (then 503)."),
    parallel: int = typer.Option(4, "--parallel", "-np", help="Requests decoded together per "
                                 "model (continuous batching, GGUF and fused ONNX; each slot "
                                 "has its own --ctx-size window); 1: one at a time."),
    cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin",
                                                    help="Allow this browser origin (repeatable)."),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
    yes: bool = YesOpt,
    allowed_host: Optional[List[str]] = typer.Option(
        None, "--allowed-host", help="Also answer requests for this Host name (repeatable; "
                                     "'*': any). Default: localhost names and the --host address."),
    max_body: str = typer.Option("4MiB", "--max-body", help="Largest request body (then 413)."),
    max_responses: int = typer.Option(1000, "--max-responses", help="Responses kept on disk "
                                      "for previous_response_id (/v1/responses; the oldest go "
                                      "first; 0: none)."),
    chat_template: Optional[str] = TemplateOpt, allow_special: bool = SpecialOpt,
    engine: EngineOptions = None,
):
    """Serve OpenAI's API (/v1/chat/completions, /v1/responses, /v1/completions, /v1/models),
    Ollama's (/api/chat, /api/generate, /api/tags...) and Anthropic's Messages (/v1/messages)."""
    from dataclasses import replace

    from edge_chat.system import parse_duration, parse_size
    from edge_chat.server import ServerConfig
    from edge_chat.server import serve as run_server
    models = [in_store(m, yes) for m in models or []]
    run_server(ServerConfig(
        models=models or None, host=host, port=port, api_key=api_key or None,
        max_loaded=max_loaded, max_queue=max_queue, cors_origins=cors_origin or [],
        chat_template=chat_template, allowed_hosts=allowed_host or [],
        max_body=parse_size(max_body), allow_special=allow_special,
        keep_alive=parse_duration(keep_alive, "keep-alive"), max_responses=max_responses,
        engine=replace(engine, parallel=parallel)),
        log_level=log_level)


# -- bench --------------------------------------------------------------------
@command
@engine_options
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
    engine: EngineOptions = None,
):
    """Measure load time, peak memory, time to first token, prefill/decode tok/s and second-turn TTFT."""
    import json
    from dataclasses import asdict

    from edge_chat.bench.measure import BenchConfig, bench_models, parse_lengths, table
    from edge_chat.bench.plot import plot as write_plot
    from edge_chat.bench.plot import require_matplotlib
    from edge_chat.store.paths import resolve_model
    paths = [str(resolve_model(m)) for m in models]
    if plot is not None:
        require_matplotlib()
    opts = asdict(engine)
    cfg = BenchConfig(prompt_lengths=parse_lengths(prompt_lengths), gen=gen, reps=reps,
                      history=history, edits=edits, chat_template=chat_template, options=opts,
                      concurrency=parse_lengths(concurrency, "--concurrency", 1)
                      if concurrency else [])
    results = bench_models(paths, cfg, quiet=json_out)
    if json_out:
        print(json.dumps(results, indent=2))
    else:
        from edge_chat.tables import print_table
        print_table(table(results))
    if plot is not None:
        err(f"plot written to {write_plot(results, plot)}")
    failed = [r for r in results if "error" in r]
    for r in failed:
        err(f"error: {r['model']}: {r['error']}")
    if failed:
        raise typer.Exit(1)
