"""Ollama's API on the same server: `/api/chat`, `/api/generate`, `/api/tags`, `/api/show`,
`/api/ps`, `/api/version`, and `GET /` — over the same models, queue, API key and limits
as the OpenAI routes (jobs.py), answered in Ollama's shapes (ollama_wire.py); streamed
answers are NDJSON lines, as Ollama streams them (by default)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from edge_chat import __version__
from edge_chat.chat.completion import Choice, TokenLogprob
from edge_chat.chat.messages import normalize_messages
from edge_chat.chat.tools import ToolCall
from edge_chat.errors import EdgeChatError, ModelNotFound, printable
from edge_chat.server.jobs import (ClientGone, JobRun, Run, chat_job, collect, load_job,
                                   prompt_check, start_job, text_job)
from edge_chat.server.ollama_wire import (ChatBody, GenerateBody, ModelBody, final_fields,
                                          keep_alive_seconds, ollama_calls, ollama_logprobs,
                                          show, store_name, tag, timestamp)
from edge_chat.server.pool import ModelPool
from edge_chat.server.protocol import load_body
from edge_chat.server.shapes import error_payload

log = logging.getLogger("edge_chat.server")

#: the expiry of a model kept loaded for ever (keep_alive -1 or --keep-alive -1)
NEVER = "9999-12-31T23:59:59Z"

#: Ollama routes that manage models; the store is managed with the edge_chat commands
UNSUPPORTED = {"pull": "edge_chat pull HUB_ID", "push": None, "create": "edge_chat convert",
               "copy": None, "delete": "edge_chat rm NAME", "embed": None, "embeddings": None}


class Shape:
    """The objects of one answer: a chat `message` or a generate `response`."""

    def __init__(self, model: str, chat: bool, logprobs: bool):
        self.model, self.chat, self.logprobs = model, chat, logprobs

    def piece(self, text: str, calls: list[ToolCall] = (),
              logprobs: list[TokenLogprob] | None = None) -> dict:
        out: dict = {"model": self.model, "created_at": timestamp()}
        if self.chat:
            out["message"] = {"role": "assistant", "content": text}
            if calls:
                out["message"]["tool_calls"] = ollama_calls(list(calls))
        else:
            out["response"] = text
        if self.logprobs and logprobs:
            out["logprobs"] = ollama_logprobs(logprobs)
        out["done"] = False
        return out


def _line(obj: dict) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


def _unsupported(what: str, hint: str | None) -> Callable:
    async def route():
        raise EdgeChatError(f"/api/{what} is not supported by edge_chat"
                            + (f": use '{hint}' on the server" if hint else ""), status=501)
    return route


def register(app: FastAPI, pool: ModelPool, check_key: Callable) -> None:
    """Add Ollama's routes to `app`."""
    api = APIRouter(prefix="/api", dependencies=[Depends(check_key)])

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root():
        return PlainTextResponse("Ollama is running (edge_chat)")

    @api.get("/version")
    async def version():
        return {"version": __version__}

    @api.get("/tags")
    def tags():
        return {"models": [tag(n, pool.meta(p)) for n, p in pool.available().items()]}

    @api.post("/show")
    async def show_model(request: Request):
        body = load_body(ModelBody, await request.body())
        name, path = resolve(body.which)
        return show(name, pool.meta(path))

    @api.get("/ps")
    def ps():
        avail = pool.available()
        out = []
        for e in pool.health()["loaded"]:
            if e["ready"] and e["id"] in avail:
                meta = pool.meta(avail[e["id"]])
                left = e.get("expires_in")
                expires = NEVER if left is None else timestamp(time.time() + left)
                out.append({**tag(e["id"], meta), "expires_at": expires, "size_vram": 0,
                            "context_length": e.get("ctx_per_slot")})
        return {"models": out}

    @api.post("/chat")
    async def chat(request: Request):
        started = time.perf_counter_ns()
        body = load_body(ChatBody, await request.body())
        params, rf = body.params(), body.response_format()
        keep = keep_alive_seconds(body.keep_alive)
        name, _ = resolve(body.model)
        shape = Shape(body.model or name, True, body.n_logprobs is not None)
        if not body.messages:                       # Ollama's "load the model" request
            return await load(request, name, shape, keep)
        messages = body.chat_messages()
        run = chat_job(messages, params, body.tool_spec(), rf, body.n_logprobs,
                       route="/api/generate with \"raw\": true")
        return await answer(request, body, name, shape, run, prompt_check(messages), started,
                            keep)

    @api.post("/generate")
    async def generate(request: Request):
        started = time.perf_counter_ns()
        body = load_body(GenerateBody, await request.body())
        body.check()
        params, rf = body.params(), body.response_format()
        keep = keep_alive_seconds(body.keep_alive)
        name, _ = resolve(body.model)
        shape = Shape(body.model or name, False, body.n_logprobs is not None)
        if not body.prompt:
            return await load(request, name, shape, keep)
        if body.raw:
            messages = [{"role": "user", "content": body.prompt}]
            run = text_job(body.prompt, params, body.n_logprobs, rf)
        else:
            system = [{"role": "system", "content": body.system}] if body.system else []
            messages = normalize_messages(system + [{"role": "user", "content": body.prompt}])
            run = chat_job(messages, params, None, rf, body.n_logprobs,
                           route="\"raw\": true")
        return await answer(request, body, name, shape, run, prompt_check(messages), started,
                            keep)

    for what, hint in UNSUPPORTED.items():
        api.add_api_route(f"/{what}", _unsupported(what, hint), methods=["POST", "DELETE"])

    def resolve(model: str | None):
        try:
            return pool.resolve(store_name(model))
        except ModelNotFound:
            raise ModelNotFound(f"model '{printable(model or '', 80)}' not found") from None

    async def load(request: Request, name: str, shape: Shape, keep: float | None):
        """Load the model (if it is not) and answer done, as Ollama does for an empty
        request; with keep_alive 0, unload it instead."""
        if keep == 0:
            pool.unload(name)
            return {**shape.piece(""), "done": True, "done_reason": "unload"}
        try:
            job = await start_job(pool, request, name, load_job(), keep_alive=keep)
            async for _ in job.events():
                pass
        except ClientGone:
            return Response(status_code=499)
        return {**shape.piece(""), "done": True, "done_reason": "load"}

    async def answer(request: Request, body, name: str, shape: Shape, run: Run,
                     check: Callable[[int], None], started: int, keep: float | None):
        try:
            job = await start_job(pool, request, name, run, check, keep)
        except ClientGone:
            return Response(status_code=499)
        if body.streamed:
            return StreamingResponse(stream(shape, job, started, request.url.path),
                                     media_type="application/x-ndjson")
        try:
            choices, usage, last = await collect(job)
        except ClientGone:
            return Response(status_code=499)
        c = choices[0] if choices else Choice(0, "", "stop", logprobs=[])
        return {**shape.piece(c.text, c.tool_calls, c.logprobs),
                **final_fields(last, usage, started)}

    async def stream(shape: Shape, job: JobRun, started: int, path: str
                     ) -> AsyncIterator[bytes]:
        usage = last = None
        try:
            async for ev in job.events():
                if ev.delta or ev.tool_calls or (shape.logprobs and ev.logprobs):
                    yield _line(shape.piece(ev.delta, ev.tool_calls, ev.logprobs))
                if ev.finish_reason is not None:
                    usage, last = ev.usage or usage, ev
            yield _line({**shape.piece(""), **final_fields(last, usage, started)})
        except EdgeChatError as e:
            yield _line(error_payload(path, e.status, e.message))
        except Exception as e:
            log.exception("error while streaming")
            yield _line(error_payload(path, 500, f"internal error: {e}"))
        finally:
            job.stop()

    app.include_router(api)
