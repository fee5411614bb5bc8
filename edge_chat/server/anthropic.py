"""Anthropic's Messages API on the same server: `POST /v1/messages` (streamed as
Anthropic's SSE events) and `POST /v1/messages/count_tokens` — over the same models,
queue, API key (also as `x-api-key`) and limits as the other routes (jobs.py), answered
in Anthropic's shapes (anthropic_wire.py)."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable, Iterator

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from edge_chat.chat.completion import ChatModel, Choice, Event, Usage
from edge_chat.chat.tools import ToolSpec
from edge_chat.errors import EdgeChatError
from edge_chat.server.anthropic_wire import (MessagesBody, message, new_id, stop_reason,
                                             tool_use, usage_body)
from edge_chat.server.jobs import (ClientGone, JobRun, chat_job, collect, prompt_check,
                                   start_job)
from edge_chat.server.pool import ModelPool
from edge_chat.server.protocol import load_body
from edge_chat.server.shapes import error_payload

log = logging.getLogger("edge_chat.server")


def _sse(kind: str, data: dict) -> dict:
    return {"event": kind, "data": json.dumps({"type": kind, **data}, ensure_ascii=False,
                                              separators=(",", ":"))}


class Blocks:
    """The content blocks of one streamed message: a text block opened at the first
    text, closed before a tool_use block; each block's start, deltas and stop."""

    def __init__(self):
        self.index = -1
        self.text_open = False

    def text(self, delta: str) -> Iterator[dict]:
        if not self.text_open:
            self.index += 1
            self.text_open = True
            yield _sse("content_block_start", {"index": self.index,
                                               "content_block": {"type": "text", "text": ""}})
        yield _sse("content_block_delta", {"index": self.index,
                                           "delta": {"type": "text_delta", "text": delta}})

    def close(self) -> Iterator[dict]:
        if self.text_open:
            self.text_open = False
            yield _sse("content_block_stop", {"index": self.index})

    def tool(self, block: dict) -> Iterator[dict]:
        yield from self.close()
        self.index += 1
        yield _sse("content_block_start", {"index": self.index,
                                           "content_block": {**block, "input": {}}})
        yield _sse("content_block_delta", {"index": self.index, "delta": {
            "type": "input_json_delta", "partial_json": json.dumps(block["input"])}})
        yield _sse("content_block_stop", {"index": self.index})


def count_job(messages: list[dict], tools: ToolSpec | None):
    """A job that counts the prompt's tokens: one Event whose usage holds them."""

    def run(model: ChatModel) -> Iterator[Event]:
        if model.template is None:
            raise EdgeChatError(f"the model '{model.info.name}' has no chat template",
                                param="model")
        yield Event(0, finish_reason="stop", usage=Usage(model.count_tokens(messages, tools),
                                                         0))

    return run


def register(app: FastAPI, pool: ModelPool, check_key: Callable) -> None:
    """Add Anthropic's Messages routes to `app`."""
    api = APIRouter(prefix="/v1/messages", dependencies=[Depends(check_key)])

    @api.post("")
    async def messages(request: Request):
        body = load_body(MessagesBody, await request.body())
        body.check()
        params, msgs, tools = body.params(), body.chat_messages(), body.tool_spec()
        run = chat_job(msgs, params, tools)
        try:
            job = await start_job(pool, request, body.model, run, prompt_check(msgs))
        except ClientGone:
            return Response(status_code=499)
        if body.stream:
            return EventSourceResponse(stream(body.model, job, request.url.path), sep="\n")
        try:
            choices, usage, last = await collect(job)
        except ClientGone:
            return Response(status_code=499)
        choice = choices[0] if choices else Choice(0, "", "stop")
        return message(body.model, choice, usage, last)

    @api.post("/count_tokens")
    async def count_tokens(request: Request):
        body = load_body(MessagesBody, await request.body())
        body.check(counting=True)
        msgs, tools = body.chat_messages(), body.tool_spec()
        try:
            job = await start_job(pool, request, body.model, count_job(msgs, tools),
                                  prompt_check(msgs))
            _choices, usage, _last = await collect(job)
        except ClientGone:
            return Response(status_code=499)
        return {"input_tokens": usage.prompt_tokens if usage else 0}

    async def stream(model: str, job: JobRun, path: str) -> AsyncIterator[dict]:
        blocks, usage, last = Blocks(), None, None
        try:
            yield _sse("message_start", {"message": {
                "id": new_id("msg"), "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": None, "stop_sequence": None,
                "usage": usage_body(None)}})
            async for ev in job.events():
                if ev.delta:
                    for e in blocks.text(ev.delta):
                        yield e
                for call in ev.tool_calls:
                    for e in blocks.tool(tool_use(call)):
                        yield e
                if ev.finish_reason is not None:
                    usage, last = ev.usage or usage, ev
            for e in blocks.close():
                yield e
            reason, seq = stop_reason(last)
            yield _sse("message_delta", {"delta": {"stop_reason": reason, "stop_sequence": seq},
                                         "usage": usage_body(usage)})
            yield _sse("message_stop", {})
        except EdgeChatError as e:
            yield _sse("error", error_payload(path, e.status, e.message))
        except Exception as e:
            log.exception("error while streaming")
            yield _sse("error", error_payload(path, 500, f"internal error: {e}"))
        finally:
            job.stop()

    app.include_router(api)
