"""The HTTP API (FastAPI): OpenAI's /v1/chat/completions, /v1/completions, /v1/models,
/v1/models/{id}, and /health; OpenAI's Responses (responses.py), Ollama's routes
(ollama.py) and Anthropic's Messages (anthropic.py) are added to the same app.

Handlers only parse, queue a job on the model's worker (jobs.py, pool.py) and shape
what comes back (protocol.py); the chat core does everything else. Errors are mapped
once, here, to the shape of the request's protocol (shapes.py)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from edge_chat import __version__
from edge_chat.chat.completion import ChatModel, Event
from edge_chat.errors import EdgeChatError
from edge_chat.server.guard import Guard, HostPolicy
from edge_chat.server.anthropic import register as register_anthropic
from edge_chat.server.jobs import (ClientGone, JobRun, chat_job, collect, prompt_check,
                                   start_job, text_job)
from edge_chat.server.ollama import register as register_ollama
from edge_chat.server.response_store import ResponseStore
from edge_chat.server.responses import register as register_responses
from edge_chat.server.config import ServerConfig
from edge_chat.server.pool import ModelPool
from edge_chat.server.protocol import (
    ChatRequest,
    CompletionRequest,
    Shaper,
    error_body,
    model_card,
    parse,
)
from edge_chat.server.shapes import error_payload
from edge_chat.system import cache_dir

log = logging.getLogger("edge_chat.server")


def error_response(e: EdgeChatError, path: str = "/v1") -> JSONResponse:
    """`e` as the error of the protocol `path` belongs to (shapes.py)."""
    type_ = "server_error" if e.status >= 500 else e.type
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(error_payload(path, e.status, e.message, type_, e.param, e.code),
                        status_code=e.status, headers=headers)


def _data(obj: dict) -> dict:
    return {"data": json.dumps(obj, ensure_ascii=False, separators=(",", ":"))}


def key_checker(api_key: str | None) -> Callable:
    """The dependency that checks `--api-key`: `Authorization: Bearer KEY` or
    `x-api-key: KEY` (Anthropic's header)."""

    async def check_key(request: Request) -> None:
        if not api_key:
            return
        token = request.headers.get("x-api-key", "").strip()
        if not token:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            token = token.strip() if scheme.lower() == "bearer" else ""
        if not token:
            raise EdgeChatError("missing API key: send 'Authorization: Bearer KEY' (or "
                                "'x-api-key: KEY')", status=401, code="invalid_api_key")
        if not hmac.compare_digest(token.encode(), api_key.encode()):
            raise EdgeChatError("incorrect API key", status=401, code="invalid_api_key")

    return check_key


async def _reap(pool: ModelPool) -> None:
    """Unload the models idle longer than their keep-alive, checked every second."""
    while True:
        await asyncio.sleep(1.0)
        try:
            pool.reap()
        except Exception:  # noqa: BLE001  the next round tries again
            log.exception("unloading idle models failed")


def create_app(config: ServerConfig) -> FastAPI:
    pool = ModelPool(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        reaper = asyncio.create_task(_reap(pool))
        yield
        reaper.cancel()
        pool.close()

    app = FastAPI(title="edge_chat", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool = pool
    app.add_middleware(Guard, policy=HostPolicy(config.host, config.allowed_hosts),
                       max_body=config.max_body)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["*"])

    @app.exception_handler(EdgeChatError)
    async def _edge_error(request: Request, e: EdgeChatError):
        return error_response(e, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        type_ = "server_error" if e.status_code >= 500 else "invalid_request_error"
        return JSONResponse(error_payload(request.url.path, e.status_code, str(e.detail), type_),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception):
        log.exception("internal error")
        return JSONResponse(error_payload(request.url.path, 500, f"internal error: {e}",
                                          "server_error"), status_code=500)

    check_key = key_checker(config.api_key)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(check_key)])

    @app.get("/health")
    async def health():
        return pool.health()

    @v1.get("/models")
    def list_models():
        return {"object": "list",
                "data": [model_card(n, pool.meta(p), pool.is_loaded(n))
                         for n, p in pool.available().items()]}

    @v1.get("/models/{model_id:path}")
    def get_model(model_id: str):
        name, path = pool.resolve(model_id)
        return model_card(name, pool.meta(path), pool.is_loaded(name))

    @v1.post("/chat/completions")
    async def chat_completions(request: Request):
        req, params = parse(ChatRequest, await request.body())
        run = chat_job(req.messages, params, req.tool_spec, req.response_format,
                       req.n_logprobs, req.prediction_text())
        return await respond(request, req, run, prompt_check(req.messages), chat=True)

    @v1.post("/completions")
    async def completions(request: Request):
        req, params = parse(CompletionRequest, await request.body())
        text = req.text()
        run = text_job(text, params, req.n_logprobs)
        return await respond(request, req, run, prompt_check([{"role": "user", "content": text}]),
                             chat=False, echo=text if req.echo else "")

    async def respond(request: Request, req, run: Callable[[ChatModel], Iterator[Event]],
                      check: Callable[[int], None], *, chat: bool, echo: str = ""):
        """Queue the job, then answer; every error on the way cancels the job."""
        include_usage = req.include_usage          # validated before the job starts
        try:
            job = await start_job(pool, request, req.model, run, check)
        except ClientGone:
            return Response(status_code=499)
        shaper = Shaper(job.name, chat, logprobs=req.n_logprobs is not None)
        if req.stream:
            return EventSourceResponse(stream(shaper, job, include_usage, echo), sep="\n")
        try:
            choices, usage, _last = await collect(job)
        except ClientGone:
            return Response(status_code=499)
        return shaper.full(choices, usage.as_dict() if usage else None, echo)

    async def stream(shaper: Shaper, job: JobRun, include_usage: bool, echo: str):
        seen: set[int] = set()
        usage = None
        try:
            async for ev in job.events():
                if ev.index not in seen:
                    seen.add(ev.index)
                    if shaper.chat:
                        yield _data(shaper.chunk(ev.index, "", first=True,
                                                 with_usage=include_usage))
                    elif echo:
                        yield _data(shaper.chunk(ev.index, echo, with_usage=include_usage))
                if ev.delta or ev.logprobs:
                    yield _data(shaper.chunk(ev.index, ev.delta, with_usage=include_usage,
                                             logprobs=ev.logprobs))
                for call in ev.tool_calls:
                    for c in shaper.tool_call_chunks(ev.index, call, include_usage):
                        yield _data(c)
                if ev.finish_reason is not None:
                    yield _data(shaper.chunk(ev.index, None, ev.finish_reason,
                                             with_usage=include_usage))
                    usage = ev.usage or usage
            if include_usage and usage is not None:
                yield _data(shaper.usage_chunk(usage.as_dict()))
            yield {"data": "[DONE]"}
        except EdgeChatError as e:
            yield _data(error_body(e.message, e.type, e.param, e.code))
        except Exception as e:
            log.exception("error while streaming")
            yield _data(error_body(f"internal error: {e}", "server_error"))
        finally:
            job.stop()

    app.include_router(v1)
    register_responses(app, pool, check_key, ResponseStore(
        config.responses_dir or cache_dir() / "responses", config.max_responses))
    register_ollama(app, pool, check_key)
    register_anthropic(app, pool, check_key)
    return app
