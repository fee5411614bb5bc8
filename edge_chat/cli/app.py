"""What every `edge_chat` command shares: the typer app, one-line errors, and the
options several commands take (the engine options are generated from EngineOptions)."""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import fields
from typing import Optional

import typer

from edge_chat.engines import EngineOptions
from edge_chat.errors import EdgeChatError, printable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Offline, quantized chat: convert, chat, serve, ui, models, bench.")


def err(text: str) -> None:
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()


class Terminated(KeyboardInterrupt):
    """SIGTERM (timeout, systemd, docker stop), raised where Ctrl-C would be, so the
    same clean-up runs."""


def _on_sigterm(_signum, _frame):
    raise Terminated()


def command(fn=None, *, sigterm: bool = False):
    """Register a command whose bad input ends in one line on stderr and exit 1.
    `sigterm`: SIGTERM is handled like Ctrl-C (partial output removed, exit 143)."""
    if fn is None:
        return functools.partial(command, sigterm=sigterm)

    @functools.wraps(fn)
    def run(*args, **kwargs):
        if sigterm:
            import signal
            signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            return fn(*args, **kwargs)
        except EdgeChatError as e:
            err(f"error: {printable(str(e), 2000)}")
            raise typer.Exit(1)
        except Terminated:
            err("error: terminated (SIGTERM); partial output removed")
            raise typer.Exit(143)
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(130)
    return app.command()(run)


# -- options several commands share ---------------------------------------------
ModelArg = typer.Argument(None, help="A .gguf file, an ONNX folder or a name in the store "
                                     "(default: the store's only model).")
YesOpt = typer.Option(False, "--yes", "-y", help="Pull a hub id not in the store without asking.")
TemplateOpt = typer.Option(None, "--chat-template",
                           help="A Jinja file or a built-in name (chatml, gemma, llama3, phi3, mistral).")
SpecialOpt = typer.Option(False, "--allow-special-in-content",
                          help="Let special-token text in messages (<|im_end|>...) act as template "
                               "markup (default: it is plain text).")
ContextPolicyOpt = typer.Option("truncate", "--context-policy",
                                help="When the window is full: truncate (drop oldest turns) or error.")


def _engine_parameters() -> list[inspect.Parameter]:
    out = []
    for f in fields(EngineOptions):
        meta = f.metadata
        if "flags" not in meta:         # set by one command's own option (serve --parallel)
            continue
        flags = meta["flags"]
        decls = [flags] if meta["cli_type"] is bool else flags.split("/")
        out.append(inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, annotation=meta["cli_type"],
            default=typer.Option(f.default, *decls, help=meta["help"])))
    return out


def engine_options(fn):
    """Give a command every EngineOptions flag (--ctx-size, --threads, --gpu-layers, ...,
    --draft); the command receives them as one `engine: EngineOptions` argument."""
    sig = inspect.signature(fn)
    extra = _engine_parameters()
    names = [p.name for p in extra]

    @functools.wraps(fn)
    def run(*args, **kwargs):
        opts = EngineOptions(**{n: kwargs.pop(n) for n in names})
        if opts.draft is not None:
            from edge_chat.store.paths import resolve_model
            try:
                opts.draft = str(resolve_model(opts.draft))
            except EdgeChatError as e:
                raise EdgeChatError(f"draft model: {e}", param="draft") from None
        return fn(*args, engine=opts, **kwargs)

    run.__signature__ = sig.replace(
        parameters=[p for p in sig.parameters.values() if p.name != "engine"] + extra)
    run.__annotations__ = {**{k: v for k, v in fn.__annotations__.items() if k != "engine"},
                           **{p.name: p.annotation for p in extra}}
    return run


def in_store(spec: Optional[str], yes: bool) -> Optional[str]:
    """A hub id not in the store: pulled after a question on a terminal, or with --yes."""
    from edge_chat.hub.pull import ensure_model
    return ensure_model(spec, yes=yes, interactive=sys.stdin.isatty(),
                        confirm=lambda q: typer.confirm(q, default=True, err=True))


def check_policy(context_policy: str) -> None:
    from edge_chat.chat.context import POLICIES
    if context_policy not in POLICIES:
        raise EdgeChatError(f"--context-policy must be one of {', '.join(POLICIES)}")
