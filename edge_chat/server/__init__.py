"""The HTTP API of `edge_chat serve`: OpenAI's routes (Chat Completions and Responses),
Ollama's and Anthropic's Messages.

    routes.py       the app: OpenAI's routes, auth, CORS, the error mapping, SSE streaming
    jobs.py         one request's job (any protocol): queued, read, cancelled
    shapes.py       errors in the shape of the request's protocol
    responses.py    OpenAI's Responses (/v1/responses), responses_wire.py its wire format,
                    response_store.py the stored responses
    ollama.py       Ollama's routes (/api/...), ollama_wire.py its wire format
    anthropic.py    Anthropic's Messages (/v1/messages), anthropic_wire.py its wire format
    pool.py         models loaded lazily, unloaded when idle or least recently used
    entry.py        one model: its worker threads, queue and jobs
    protocol.py     OpenAI's request parsing/validation and response/chunk bodies
    serve.py        configuration checks and uvicorn
"""

from edge_chat.server.config import ServerConfig

__all__ = ["ServerConfig", "create_app", "serve"]


def create_app(config: ServerConfig):
    from edge_chat.server.routes import create_app as _create
    return _create(config)


def serve(config: ServerConfig, log_level: str = "info") -> None:
    from edge_chat.server.serve import serve as _serve
    _serve(config, log_level)
