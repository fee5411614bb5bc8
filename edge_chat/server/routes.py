"""The OpenAI-compatible HTTP API (FastAPI): /v1/chat/completions,
/v1/completions, /v1/models, /v1/models/{id}, and /health.

Handlers only parse, queue a job on the model's worker (pool.py) and shape
what comes back (protocol.py); the chat core does everything else."""

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
from edge_chat.chat.completion import ChatModel, Choice, Event
from edge_chat.chat.context import check_prompt_bytes
from edge_chat.errors import EdgeChatError
from edge_chat.server.guard import Guard, HostPolicy
from edge_chat.server.pool import END, Entry, Job, ModelPool, ServerConfig
from edge_chat.server.protocol import (
    ChatRequest,
    CompletionRequest,
    Shaper,
    error_body,
    model_card,
    parse,
)

log = logging.getLogger("edge_chat.server")

#: seconds between checks that a waiting (queued or non-streamed) client is still there
POLL = 0.25


class ClientGone(Exception):
    pass


def error_response(e: EdgeChatError) -> JSONResponse:
    type_ = "server_error" if e.status >= 500 else e.type
    headers = {"Retry-After": "1"} if e.status == 503 else None
    return JSONResponse(error_body(e.message, type_, e.param, e.code), status_code=e.status,
                        headers=headers)


def _data(obj: dict) -> dict:
    return {"data": json.dumps(obj, ensure_ascii=False, separators=(",", ":"))}


class Reader:
    """Reads one job's events on the event loop; `stop()` cancels the job
    unless it already ended."""

    def __init__(self, request: Request, entry: Entry, job: Job):
        self.request, self.entry, self.job = request, entry, job
        self.done = False
        self.next_check = 0.0

    async def get(self, watch: bool) -> Event | None:
        """The next Event, None at the end; raises the job's error. `watch`:
        poll for a client disconnect meanwhile (ClientGone)."""
        loop = asyncio.get_running_loop()
        while True:
            if watch:
                if loop.time() >= self.next_check:
                    self.next_check = loop.time() + POLL
                    if await self.request.is_disconnected():
                        raise ClientGone()
                try:
                    item = await asyncio.wait_for(self.job.queue.get(), POLL)
                except asyncio.TimeoutError:
                    continue
            else:
                item = await self.job.queue.get()
            if item is END:
                self.done = True
                return None
            if isinstance(item, BaseException):
                self.done = True
                raise item
            return item

    def stop(self) -> None:
        if not self.done:
            self.done = True
            self.entry.cancel(self.job)


def create_app(config: ServerConfig) -> FastAPI:
    pool = ModelPool(config)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        pool.close()

    app = FastAPI(title="edge_chat", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool = pool
    app.add_middleware(Guard, policy=HostPolicy(config.host, config.allowed_hosts),
                       max_body=config.max_body)
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["*"])

    @app.exception_handler(EdgeChatError)
    async def _edge_error(_request: Request, e: EdgeChatError):
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, e: StarletteHTTPException):
        type_ = "server_error" if e.status_code >= 500 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), type_), status_code=e.status_code,
                            headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def _crash(_request: Request, e: Exception):
        log.exception("internal error")
        return JSONResponse(error_body(f"internal error: {e}", "server_error"), status_code=500)

    async def check_key(request: Request) -> None:
        key = config.api_key
        if not key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise EdgeChatError("missing API key: send 'Authorization: Bearer KEY'", status=401,
                                code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise EdgeChatError("incorrect API key", status=401, code="invalid_api_key")

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
        messages, tools, prediction = req.messages, req.tool_spec, req.prediction_text()

        def check(n_ctx: int) -> None:
            check_prompt_bytes(messages, n_ctx, "error")

        def run(model: ChatModel) -> Iterator[Event]:
            if model.template is None:
                raise EdgeChatError(f"the model '{model.info.name}' has no chat template: use "
                                    "/v1/completions, or start the server with --chat-template",
                                    param="model")
            model.grammar(tools, req.response_format)        # 400s before any work
            prompt = model.prepare(messages, params, tools)
            yield from model.stream(None, params, tools, prompt=prompt,
                                    response_format=req.response_format,
                                    logprobs=req.n_logprobs, prediction=prediction)

        return await respond(request, req, run, check, chat=True)

    @v1.post("/completions")
    async def completions(request: Request):
        req, params = parse(CompletionRequest, await request.body())
        text = req.text()

        def check(n_ctx: int) -> None:
            check_prompt_bytes([{"role": "user", "content": text}], n_ctx, "error")

        def run(model: ChatModel) -> Iterator[Event]:
            prompt = model.prepare_text(text, params)
            yield from model.stream(None, params, prompt=prompt, logprobs=req.n_logprobs)

        return await respond(request, req, run, check, chat=False,
                             echo=text if req.echo else "")

    async def respond(request: Request, req, run: Callable[[ChatModel], Iterator[Event]],
                      check: Callable[[int], None], *, chat: bool, echo: str = ""):
        """Queue the job, then answer; every error on the way cancels the job."""
        include_usage = req.include_usage          # validated before the job starts
        name, entry, job = pool.start(req.model, run, check)
        reader = Reader(request, entry, job)
        try:
            first = await reader.get(watch=True)     # errors before any output → JSON error
            shaper = Shaper(name, chat, logprobs=req.n_logprobs is not None)
            if req.stream:
                return EventSourceResponse(stream(shaper, reader, first, include_usage, echo),
                                           sep="\n")
        except ClientGone:
            reader.stop()
            return Response(status_code=499)
        except BaseException:
            reader.stop()
            raise
        try:
            choices: dict[int, Choice] = {}
            usage = None
            ev = first
            while ev is not None:
                c = choices.setdefault(ev.index, Choice(ev.index, "", "stop", logprobs=[]))
                c.text += ev.delta
                c.tool_calls += ev.tool_calls
                c.logprobs += ev.logprobs
                if ev.finish_reason is not None:
                    c.finish_reason = ev.finish_reason
                    usage = ev.usage or usage
                ev = await reader.get(watch=True)
        except ClientGone:
            return Response(status_code=499)
        finally:
            reader.stop()
        return shaper.full([choices[i] for i in sorted(choices)],
                           usage.as_dict() if usage else None, echo)

    async def stream(shaper: Shaper, reader: Reader, first: Event | None, include_usage: bool,
                     echo: str):
        seen: set[int] = set()
        usage = None
        try:
            ev = first
            while ev is not None:
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
                ev = await reader.get(watch=False)
            if include_usage and usage is not None:
                yield _data(shaper.usage_chunk(usage.as_dict()))
            yield {"data": "[DONE]"}
        except EdgeChatError as e:
            yield _data(error_body(e.message, e.type, e.param, e.code))
        except Exception as e:
            log.exception("error while streaming")
            yield _data(error_body(f"internal error: {e}", "server_error"))
        finally:
            reader.stop()

    app.include_router(v1)
    return app
