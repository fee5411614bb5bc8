"""Running one request's job for any front-end (OpenAI's, Ollama's, Anthropic's routes):
queue it on its model's worker (pool.start), read its Events on the event loop, cancel it
when the client leaves or an error cuts the answer short.

`start_job` waits for the first Event, so an error before any output (a bad request the
chat core finds, a model that cannot load) is raised before a response is begun and
becomes a JSON error; after that a route either streams `JobRun.events()` or `collect()`s
them into whole choices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator

from fastapi import Request

from edge_chat.chat.completion import ChatModel, Choice, Event, Usage
from edge_chat.chat.context import check_prompt_bytes
from edge_chat.chat.tools import ToolSpec
from edge_chat.errors import EdgeChatError
from edge_chat.params import SamplingParams
from edge_chat.server.entry import END, Entry, Job
from edge_chat.server.pool import ModelPool

#: seconds between checks that a waiting (queued or non-streamed) client is still there
POLL = 0.25


class ClientGone(Exception):
    pass


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


class JobRun:
    """A started job: the canonical model name, and its Events from the first on."""

    def __init__(self, name: str, reader: Reader, first: Event | None):
        self.name, self.reader, self.first = name, reader, first

    async def events(self, watch: bool = False) -> AsyncIterator[Event]:
        """Every Event of the job; the job is cancelled if the caller stops early.
        `watch`: raise ClientGone when the client leaves (for non-streamed answers;
        a streamed one learns it from the response being closed)."""
        try:
            ev = self.first
            while ev is not None:
                yield ev
                ev = await self.reader.get(watch=watch)
        finally:
            self.reader.stop()

    def stop(self) -> None:
        self.reader.stop()


async def start_job(pool: ModelPool, request: Request, model: str | None,
                    run: Callable[[ChatModel], Iterator[Event]],
                    check: Callable[[int], None] | None = None,
                    keep_alive: float | None = None) -> JobRun:
    """Queue `run(model)` and wait for its first Event (or its end, or its error, raised
    here). Raises ClientGone if the client leaves while the job waits or prefills.
    `keep_alive`: seconds the model stays loaded once idle (None: the server's)."""
    name, entry, job = pool.start(model, run, check, keep_alive)
    reader = Reader(request, entry, job)
    try:
        first = await reader.get(watch=True)
    except BaseException:
        reader.stop()
        raise
    return JobRun(name, reader, first)


async def collect(run: JobRun) -> tuple[list[Choice], Usage | None, Event | None]:
    """The whole answer: its choices in order, the usage, and the last finishing Event
    (whose `stats` time the generation). Raises ClientGone if the client leaves."""
    choices: dict[int, Choice] = {}
    usage, last = None, None
    async for ev in run.events(watch=True):
        c = choices.setdefault(ev.index, Choice(ev.index, "", "stop", logprobs=[]))
        c.text += ev.delta
        c.tool_calls += ev.tool_calls
        c.logprobs += ev.logprobs
        if ev.finish_reason is not None:
            c.finish_reason = ev.finish_reason
            usage = ev.usage or usage
            last = ev
    return [choices[i] for i in sorted(choices)], usage, last


# -- what a job runs (the same for every protocol) --------------------------------
Run = Callable[[ChatModel], Iterator[Event]]


def chat_job(messages: list[dict], params: SamplingParams, tools: ToolSpec | None = None,
             response_format: dict | None = None, logprobs: int | None = None,
             prediction: str | None = None, route: str = "/v1/completions",
             policy: str | None = None) -> Run:
    """The job of a chat request: normalized messages through the model's template.
    `policy`: what a conversation too long for the window gets ("error", the server's,
    or "truncate": its oldest turns dropped)."""

    def run(model: ChatModel) -> Iterator[Event]:
        if model.template is None:
            raise EdgeChatError(f"the model '{model.info.name}' has no chat template: use "
                                f"{route}, or start the server with --chat-template",
                                param="model")
        model.grammar(tools, response_format)        # 400s before any work
        prompt = model.prepare(messages, params, tools, policy)
        yield from model.stream(None, params, tools, prompt=prompt,
                                response_format=response_format, logprobs=logprobs,
                                prediction=prediction)

    return run


def text_job(text: str, params: SamplingParams, logprobs: int | None = None,
             response_format: dict | None = None) -> Run:
    """The job of a plain continuation of `text` (no template)."""

    def run(model: ChatModel) -> Iterator[Event]:
        model.grammar(None, response_format)
        prompt = model.prepare_text(text, params)
        yield from model.stream(None, params, prompt=prompt, logprobs=logprobs,
                                response_format=response_format)

    return run


def load_job() -> Run:
    """A job that only loads the model (Ollama's empty request)."""

    def run(_model: ChatModel) -> Iterator[Event]:
        yield from ()

    return run


def prompt_check(messages: list[dict], policy: str = "error") -> Callable[[int], None]:
    """Before queueing: text far too long for the window is refused (context.py)."""

    def check(n_ctx: int) -> None:
        check_prompt_bytes(messages, n_ctx, policy)

    return check
