"""OpenAI's Responses API on the same server: `POST /v1/responses` (streamed as the API's
semantic SSE events), `GET` / `DELETE /v1/responses/{id}` and
`GET /v1/responses/{id}/input_items` — over the same models, queue, API key and limits as
the other routes (jobs.py), in the Responses wire format (responses_wire.py), continued
through `previous_response_id` from the stored responses (response_store.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import Response
from sse_starlette import EventSourceResponse

from edge_chat.chat.completion import Event, TokenLogprob, Usage
from edge_chat.chat.messages import normalize_messages
from edge_chat.chat.tools import ToolCall
from edge_chat.errors import ContextLengthExceeded, EdgeChatError
from edge_chat.server.jobs import ClientGone, JobRun, chat_job, prompt_check, start_job
from edge_chat.server.pool import ModelPool
from edge_chat.server.protocol import error_body, load_body
from edge_chat.server.response_store import ResponseStore
from edge_chat.server.responses_wire import (InputReader, ResponsesBody, call_ids, call_item,
                                             delta_logprobs, item_messages, message_item,
                                             new_id, response_body, text_logprobs)

log = logging.getLogger("edge_chat.server")


class Output:
    """The output items of one response, built from the chat core's Events: a message
    item opened at the first text and closed before a function_call item (or at the end).
    Every step returns the SSE events a stream sends for it, numbered by
    `sequence_number`; a response that is not streamed keeps only the items.

    HOOK (reasoning): a thinking model's reasoning would become a `reasoning` item here,
    opened before the message item, with response.reasoning_text.delta events."""

    def __init__(self, logprobs: bool):
        self.items: list[dict] = []
        self.seq = 0
        self.logprobs = logprobs
        self._open: dict | None = None             # the message item being written
        self._lp: list[TokenLogprob] = []          # its tokens' logprobs
        self._pending: list[TokenLogprob] = []     # logprobs of tokens not shown yet

    def event(self, kind: str, **data) -> dict:
        body = {"type": kind, "sequence_number": self.seq, **data}
        self.seq += 1
        return {"event": kind, "data": json.dumps(body, ensure_ascii=False,
                                                  separators=(",", ":"))}

    def _at(self, item: dict) -> dict:
        return {"item_id": item["id"], "output_index": self.items.index(item)}

    def feed(self, ev: Event) -> list[dict]:
        out = []
        if self.logprobs:
            self._pending += ev.logprobs
        if ev.delta:
            out += self.text(ev.delta)
        for call in ev.tool_calls:
            out += self.call(call)
        return out

    def text(self, delta: str) -> list[dict]:
        out = [] if self._open else self._begin()
        item, lp = self._open, self._pending
        self._pending = []
        item["content"][0]["text"] += delta
        self._lp += lp
        out.append(self.event("response.output_text.delta", **self._at(item), content_index=0,
                              delta=delta, logprobs=delta_logprobs(lp)))
        return out

    def _begin(self) -> list[dict]:
        item = self._open = message_item(new_id("msg"), "", "in_progress")
        self.items.append(item)
        self._lp = []
        return [self.event("response.output_item.added", output_index=len(self.items) - 1,
                           item=item),
                self.event("response.content_part.added", **self._at(item), content_index=0,
                           part=item["content"][0])]

    def close(self, status: str = "completed") -> list[dict]:
        item = self._open
        if item is None:
            return []
        self._open = None
        part, at = item["content"][0], self._at(item)
        part["logprobs"] = text_logprobs(self._lp)
        item["status"] = status
        return [self.event("response.output_text.done", **at, content_index=0,
                           text=part["text"], logprobs=delta_logprobs(self._lp)),
                self.event("response.content_part.done", **at, content_index=0, part=part),
                self.event("response.output_item.done", output_index=at["output_index"],
                           item=item)]

    def call(self, call: ToolCall) -> list[dict]:
        out = self.close()
        item = call_item(new_id("fc"), ToolCall(call.name, "", call.id), "in_progress")
        self.items.append(item)
        at = self._at(item)
        out.append(self.event("response.output_item.added", output_index=at["output_index"],
                              item=item))
        item.update(arguments=call.arguments, status="completed")
        out += [self.event("response.function_call_arguments.delta", **at,
                           delta=call.arguments),
                self.event("response.function_call_arguments.done", **at, name=call.name,
                           arguments=call.arguments),
                self.event("response.output_item.done", output_index=at["output_index"],
                           item=item)]
        return out

    def finish(self, status: str) -> list[dict]:
        """Close the output; an answer with neither text nor calls is one empty message."""
        out = [] if self.items or self._open else self._begin()
        return out + self.close(status)


class Answer:
    """One response being made: its id, the request's echoed fields, the output, and
    the conversation it continues (stored when it ends, unless `store: false`)."""

    def __init__(self, body: ResponsesBody, name: str, history: list[dict],
                 reader: InputReader, store: ResponseStore):
        self.id, self.created = new_id("resp"), int(time.time())
        self.name, self.echo, self.keep = name, body.echo(), body.store is not False
        self.history, self.reader, self.store = history, reader, store
        self.output = Output(body.n_logprobs is not None)
        self.usage: Usage | None = None
        self.status = "completed"

    def feed(self, ev: Event) -> list[dict]:
        if ev.finish_reason is not None:
            self.usage = ev.usage or self.usage
            if ev.finish_reason == "length":
                self.status = "incomplete"
        return self.output.feed(ev)

    def body(self, status: str | None = None, error: dict | None = None) -> dict:
        status = status or self.status
        items = self.output.items if status != "in_progress" else []
        return response_body(self.id, self.name, self.echo, self.created, status, items,
                             self.usage, error)

    async def save(self, response: dict) -> None:
        if not self.keep:
            return
        record = {"response": response, "input_items": self.reader.items,
                  "messages": self.history + self.reader.messages
                  + item_messages(self.output.items)}
        await asyncio.to_thread(self.store.put, self.id, record)


def _page(items: list[dict], query) -> dict:
    """A page of `input_items` (`limit` 1-100, `order` desc by default, `after` an id)."""
    limit, order, after = query.get("limit", "20"), query.get("order", "desc"), \
        query.get("after")
    if not limit.isdigit() or not 1 <= int(limit) <= 100:
        raise EdgeChatError("'limit' must be an integer from 1 to 100", param="limit")
    if order not in ("asc", "desc"):
        raise EdgeChatError("'order' must be 'asc' or 'desc'", param="order")
    items = items if order == "asc" else items[::-1]
    if after is not None:
        ids = [it["id"] for it in items]
        if after not in ids:
            raise EdgeChatError("'after' names no input item of this response", param="after")
        items = items[ids.index(after) + 1:]
    data = items[:int(limit)]
    return {"object": "list", "data": data, "has_more": len(items) > len(data),
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def register(app: FastAPI, pool: ModelPool, check_key: Callable, store: ResponseStore
             ) -> None:
    """Add the Responses routes to `app`."""
    api = APIRouter(prefix="/v1/responses", dependencies=[Depends(check_key)])

    @api.post("")
    async def create(request: Request):
        body = load_body(ResponsesBody, await request.body())
        body.check()
        params, rf, tools = body.params(), body.response_format(), body.tool_spec()
        history, model = [], body.model
        if body.previous_response_id is not None:
            prev = await asyncio.to_thread(store.get, body.previous_response_id,
                                           "previous_response_id")
            history, model = prev["messages"], model or prev["response"]["model"]
        reader = InputReader(call_ids(history)).read(body.input)
        system = [{"role": "system", "content": body.instructions}] if body.instructions \
            else []
        msgs = normalize_messages(system + history + reader.messages)
        run = chat_job(msgs, params, tools, rf, body.n_logprobs, policy=body.policy)
        try:
            job = await start_job(pool, request, model, run, prompt_check(msgs, body.policy))
        except ClientGone:
            return Response(status_code=499)
        except ContextLengthExceeded as e:
            e.param = "input"                       # the conversation, as this API names it
            raise
        answer = Answer(body, job.name, history, reader, store)
        if body.stream:
            return EventSourceResponse(stream(answer, job, request.url.path), sep="\n")
        try:
            async for ev in job.events(watch=True):
                answer.feed(ev)
        except ClientGone:
            return Response(status_code=499)
        answer.output.finish(answer.status)
        response = answer.body()
        await answer.save(response)
        return response

    @api.get("/{response_id}")
    def retrieve(response_id: str):
        return store.get(response_id)["response"]

    @api.delete("/{response_id}")
    def delete(response_id: str):
        store.delete(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    @api.get("/{response_id}/input_items")
    def input_items(response_id: str, request: Request):
        return _page(store.get(response_id)["input_items"], request.query_params)

    async def stream(answer: Answer, job: JobRun, path: str) -> AsyncIterator[dict]:
        out = answer.output
        try:
            for kind in ("response.created", "response.in_progress"):
                yield out.event(kind, response=answer.body("in_progress"))
            async for ev in job.events():
                for e in answer.feed(ev):
                    yield e
            for e in out.finish(answer.status):
                yield e
            response = answer.body()
            await answer.save(response)
            yield out.event(f"response.{answer.status}", response=response)
        except Exception as e:  # noqa: BLE001  the stream ends with the error, never a 500
            if not isinstance(e, EdgeChatError):
                log.exception("error while streaming %s", path)
                e = EdgeChatError(f"internal error: {e}", status=500, code="server_error")
            message = error_body(e.message)["error"]["message"]
            yield out.event("error", code=e.code, message=message, param=e.param)
            code = "server_error" if e.status >= 500 else "invalid_prompt"
            yield out.event("response.failed", response=answer.body(
                "failed", {"code": code, "message": message}))
        finally:
            job.stop()

    app.include_router(api)
