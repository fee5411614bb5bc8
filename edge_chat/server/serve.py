"""`edge_chat serve`: check the configuration, then run the API with uvicorn."""

from __future__ import annotations

import logging
import sys
import threading

from edge_chat.errors import EdgeChatError
from edge_chat.server.config import ServerConfig

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def check(config: ServerConfig) -> None:
    """Fail before binding a port: bad --chat-template, limits, names."""
    if config.chat_template:
        from edge_chat.chat.template import resolve_template
        resolve_template(None, "", override=config.chat_template)
    if config.max_loaded < 1:
        raise EdgeChatError("--max-loaded must be >= 1", param="max_loaded")
    from edge_chat.engines import check_parallel
    check_parallel(config.engine.parallel)
    if config.max_queue < 0:
        raise EdgeChatError("--max-queue must be >= 0", param="max_queue")
    if config.max_responses < 0:
        raise EdgeChatError("--max-responses must be >= 0", param="max_responses")
    if config.max_body < 1024:
        raise EdgeChatError("--max-body must be at least 1KiB", param="max_body")
    if not 0 <= config.port <= 65535:
        raise EdgeChatError("--port must be in 0..65535", param="port")


def serve(config: ServerConfig, log_level: str = "info") -> None:
    try:
        import uvicorn

        from edge_chat.server.routes import create_app
    except ImportError as e:
        raise EdgeChatError(f"the API needs the server extra: pip install 'edge-chat[server]' "
                            f"({e})") from None
    check(config)
    if log_level not in LOG_LEVELS:
        raise EdgeChatError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    app = create_app(config)
    pool = app.state.pool
    names = list(pool.available())
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s: %(message)s")
    host = f"[{config.host}]" if ":" in config.host else config.host
    sys.stderr.write(
        f"edge_chat API on http://{host}:{config.port}/v1 · "
        f"{len(names)} model(s){': ' + ', '.join(names[:8]) if names else ''}"
        f"{' (store: ' + str(_root()) + ')' if pool.fixed is None else ''}"
        f"{' · API key required' if config.api_key else ''}\n")
    sys.stderr.flush()
    threading.Thread(target=_warm_up, args=(list(pool.available().values()),),
                     name="warm-up", daemon=True).start()
    uvicorn.run(app, host=config.host, port=config.port, log_level=log_level,
                timeout_graceful_shutdown=3)


def _warm_up(paths: list) -> None:
    """The imports a first model load needs (the chat core, the engines' runtimes),
    done while the server waits for its first request: 0.4-0.6 s less on the first
    request after a start."""
    import edge_chat.runtime  # noqa: F401
    from edge_chat.engines import import_engines
    import_engines(paths)


def _root():
    from edge_chat.store.paths import models_dir
    return models_dir()
