"""Open a model for chatting: store lookup → engine → chat template → ChatModel.

The one place front-ends (CLI, API, page) get a ChatModel from."""

from __future__ import annotations

from typing import Callable

from edge_chat.chat.completion import ChatModel
from edge_chat.chat.template import resolve_template
from edge_chat.engines import EngineOptions, load_engine
from edge_chat.store.paths import resolve_model


def open_chat(spec: str | None, options: EngineOptions | None = None, *,
              chat_template: str | None = None, context_policy: str = "truncate",
              need_template: bool = True, warn: Callable[[str], None] | None = None,
              allow_special: bool = False) -> ChatModel:
    """`spec`: a path or a store name (None: the store's only model).
    `need_template=False` opens base models for plain completion even when
    no template can be found. `allow_special`: special-token text in message contents
    acts as template markup (off: it is plain text)."""
    engine = load_engine(resolve_model(spec), options)
    try:
        template, note = resolve_template(
            engine.info.chat_template, engine.info.arch, override=chat_template,
            bos_token=engine.info.bos_token, eos_token=engine.info.eos_token)
    except Exception:
        if need_template:
            engine.close()
            raise
        template, note = None, None
    if note and warn:
        warn(note)
    return ChatModel(engine, template, context_policy=context_policy,
                     allow_special=allow_special, constrain=grammar_processors(engine))


def grammar_processors(engine):
    """What ChatModel calls to enforce a Grammar on `engine` (None: it cannot)."""
    if not engine.capabilities.logits_processors:
        return None
    from edge_chat.engines.grammar_processor import GrammarProcessor
    return lambda grammar: GrammarProcessor(engine, grammar.lark, grammar.param)
