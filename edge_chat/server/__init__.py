"""The OpenAI-compatible HTTP API: `edge_chat serve`.

    routes.py    routes, auth, CORS, errors in OpenAI's shape, SSE streaming
    pool.py      models loaded lazily, LRU-unloaded, one worker thread and queue each
    protocol.py  request parsing/validation and response/chunk bodies
    serve.py     configuration checks and uvicorn
"""

from edge_chat.server.pool import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]


def create_app(config: ServerConfig):
    from edge_chat.server.routes import create_app as _create
    return _create(config)


def serve(config: ServerConfig, log_level: str = "info") -> None:
    from edge_chat.server.serve import serve as _serve
    _serve(config, log_level)
