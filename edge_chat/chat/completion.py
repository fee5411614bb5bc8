"""The chat loop: messages → prompt tokens → streamed text, over any Engine.

Every front-end (CLI, HTTP API, page) goes through `ChatModel`; none of them
builds prompts, matches stops or counts tokens on its own."""

from __future__ import annotations

import codecs
import logging
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from edge_chat.chat.context import check_prompt_bytes, fit_messages
from edge_chat.chat.structured import Grammar, response_format_grammar, tools_grammar
from edge_chat.chat.messages import normalize_messages
from edge_chat.params import SamplingParams
from edge_chat.chat.roles import RoleSeparator
from edge_chat.chat.stops import StopMatcher
from edge_chat.chat.template import ChatTemplate
from edge_chat.chat.tool_parse import ToolParser
from edge_chat.chat.tools import ToolCall, ToolSpec, parse_tools, require_family, tool_family
from edge_chat.errors import ContextLengthExceeded, EdgeChatError

log = logging.getLogger("edge_chat.tools")

if TYPE_CHECKING:
    from edge_chat.engines.base import Engine, LogitsProcessor, ModelInfo, Token


@dataclass
class Prompt:
    messages: list[dict]     # the messages that fit the window
    text: str
    tokens: list[int]
    dropped: int = 0         # old turns trimmed to fit


@dataclass
class Stats:
    prompt_tokens: int = 0
    cached_tokens: int = 0          # prompt tokens taken from the KV cache
    completion_tokens: int = 0
    ttft: float = 0.0               # seconds to the first token
    seconds: float = 0.0
    draft_tokens: int = 0           # speculative decoding: tokens drafted and verified
    accepted_tokens: int = 0        # ... of which the answer kept
    prediction_accepted: int = 0    # Predicted Outputs: prediction tokens kept / rejected
    prediction_rejected: int = 0
    stop: str | None = None         # the stop string that ended the answer

    @property
    def acceptance(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def decode_tps(self) -> float:
        t = self.seconds - self.ttft
        return (self.completion_tokens - 1) / t if self.completion_tokens > 1 and t > 0 else 0.0


@dataclass
class TokenLogprob:
    """One generated token's log probability, and its best alternatives."""
    token: str                 # its text (bytes decoded, a partial UTF-8 character replaced)
    bytes: bytes
    logprob: float
    top: list["TokenLogprob"] = field(default_factory=list)


@dataclass
class Event:
    """A piece of a streamed answer. The last event of each choice has a
    finish_reason; the very last of the call also carries `usage`."""
    index: int
    delta: str = ""
    finish_reason: str | None = None
    usage: "Usage | None" = None
    stats: Stats | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)   # whole calls, in order
    logprobs: list[TokenLogprob] = field(default_factory=list)  # the tokens behind this event


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    #: Predicted Outputs (None: no prediction was given)
    accepted_prediction_tokens: int | None = None
    rejected_prediction_tokens: int | None = None

    def as_dict(self) -> dict:
        d = {"prompt_tokens": self.prompt_tokens,
             "completion_tokens": self.completion_tokens,
             "total_tokens": self.prompt_tokens + self.completion_tokens,
             "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}
        if self.accepted_prediction_tokens is not None:
            d["completion_tokens_details"] = {
                "accepted_prediction_tokens": self.accepted_prediction_tokens,
                "rejected_prediction_tokens": self.rejected_prediction_tokens}
        return d


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None      # when asked for


@dataclass
class Completion:
    choices: list[Choice]
    usage: Usage
    prompt: Prompt
    stats: list[Stats] = field(default_factory=list)


@runtime_checkable
class ChatModelLike(Protocol):
    """What every front-end (the REPL, the page, `Conversation`, the server) needs of a
    chat model. `ChatModel` (a local engine) and `chat.remote.RemoteChat` (a model on
    another OpenAI-compatible server) both provide it."""
    info: "ModelInfo"
    template: ChatTemplate | None
    #: the token-level side; front-ends only close() it
    engine: "Engine"

    @property
    def n_ctx(self) -> int: ...

    def prepare(self, messages: list, params: SamplingParams,
                tools: "list | ToolSpec | None" = None, policy: str | None = None) -> Prompt:
        """The messages validated and fitted to the window (the prompt to stream)."""

    def grammar(self, tools: "list | ToolSpec | None", response_format: dict | None
                ) -> Grammar | None:
        """The grammar that `tools` / `response_format` force, or None."""

    def stream(self, messages: list, params: SamplingParams, tools: "list | ToolSpec | None" = None,
               policy: str | None = None, prompt: Prompt | None = None,
               response_format: dict | None = None, logprobs: int | None = None
               ) -> Iterator[Event]:
        """Events: deltas as they come, then one finishing Event per choice, the last
        with `usage`."""

    def cancel(self) -> None:
        """Stop a running stream after its current token (thread-safe)."""


class ChatModel:
    """One engine plus its chat template and context policy (a `ChatModelLike`)."""

    def __init__(self, engine: "Engine", template: ChatTemplate | None = None, *,
                 context_policy: str = "truncate", allow_special: bool = False,
                 constrain: "Callable[[Grammar], LogitsProcessor] | None" = None):
        self.engine = engine
        #: a fresh LogitsProcessor that enforces a grammar (one per generation)
        self.constrain = constrain
        self.info = engine.info
        self.template = template
        self.context_policy = context_policy
        #: True: special-token text inside message contents acts as control tokens
        self.allow_special = allow_special
        self._roles = RoleSeparator(lambda t, b, s: engine.tokenize(t, add_bos=b, special=s))

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    # -- prompt -------------------------------------------------------------
    def render(self, messages: list[dict], tools: "list | ToolSpec | None" = None) -> str:
        if self.template is None:
            raise ValueError("this model was opened without a chat template")
        spec = self.tool_spec(tools)
        listed = spec.tools if spec is not None and spec.active else None
        return self.template.render(messages, add_generation_prompt=True, tools=listed)

    def tool_spec(self, tools: "list | ToolSpec | None") -> ToolSpec | None:
        """`tools` validated (a list of OpenAI tools means tool_choice "auto")."""
        spec = tools if isinstance(tools, ToolSpec) or tools is None else parse_tools(tools)
        if spec is not None and spec.active:
            self.tool_family()
        return spec

    def tool_family(self) -> str:
        """The call format this model writes (400 when its template takes no tools)."""
        return require_family(self.template.source if self.template else None,
                              self.info.arch, self.info.name)

    def tokenize_prompt(self, text: str, messages: list[dict] | None = None,
                        tools: list | None = None) -> list[int]:
        """Tokens of a rendered prompt; given the `messages` it was rendered from, their
        contents are plain text (roles.py) unless `allow_special`."""
        add_bos = self.info.add_bos
        skip = 0
        if add_bos and self.info.bos_token and text.startswith(self.info.bos_token):
            skip = len(self.info.bos_token)  # the tokenizer adds BOS itself
        if messages is None or self.allow_special:
            return self.engine.tokenize(text[skip:], add_bos=add_bos)
        return self._roles.tokenize(lambda m: self.render(m, tools), messages, text, skip,
                                    add_bos)

    def count_tokens(self, messages: list[dict], tools: "list | ToolSpec | None" = None) -> int:
        return len(self.tokenize_prompt(self.render(messages, tools), messages, tools))

    def prepare(self, messages: list, params: SamplingParams,
                tools: "list | ToolSpec | None" = None, policy: str | None = None) -> Prompt:
        msgs = normalize_messages(messages)
        check_prompt_bytes(msgs, self.n_ctx, policy or self.context_policy)
        kept, dropped = fit_messages(msgs, lambda m: self.count_tokens(m, tools), self.n_ctx,
                                     params.max_tokens, policy or self.context_policy)
        text = self.render(kept, tools)
        return Prompt(kept, text, self.tokenize_prompt(text, kept, tools), dropped)

    def prepare_text(self, text: str, params: SamplingParams, policy: str | None = None) -> Prompt:
        """A plain-text prompt (completion of base models): no template."""
        check_prompt_bytes([{"role": "user", "content": text}], self.n_ctx, "error")
        tokens = self.engine.tokenize(text, add_bos=self.info.add_bos)
        need = len(tokens) + (params.max_tokens or 1)
        if need > self.n_ctx:
            raise ContextLengthExceeded(
                f"this model's context window is {self.n_ctx} tokens; the prompt takes "
                f"{len(tokens)} and max_tokens asks for {params.max_tokens or 1} more")
        return Prompt([], text, tokens)

    # -- generation ---------------------------------------------------------
    def stream(self, messages: list, params: SamplingParams,
               tools: "list | ToolSpec | None" = None,
               policy: str | None = None, prompt: Prompt | None = None,
               response_format: dict | None = None, logprobs: int | None = None,
               processors: "Sequence[LogitsProcessor]" = (),
               prediction: str | None = None) -> Iterator[Event]:
        """Events for choice 0, then choice 1, ... (n choices in turn).

        With `tools` (not tool_choice "none") the text is parsed for the model's
        tool calls: they come as Event.tool_calls, never as text, and the choice
        finishes with "tool_calls"; tool_choice "required" or a named function,
        and `response_format` json_object / json_schema, constrain the sampling
        to a grammar. `logprobs` k: each Event carries its tokens' log
        probabilities with k alternatives. `processors` constrain each logits row
        too; `prediction` is the text the answer is expected to repeat (OpenAI's
        Predicted Outputs: drafts for speculative decoding)."""
        prompt = prompt or self.prepare(messages, params, tools, policy)
        spec = self.tool_spec(tools)
        grammar = self.grammar(spec, response_format)
        if logprobs is not None and not self.engine.capabilities.logprobs:
            raise EdgeChatError(f"the {self.info.format} engine gives no logprobs",
                                param="logprobs")
        total = Usage(len(prompt.tokens), 0)
        predicted = None
        if prediction:
            predicted = self.engine.tokenize(prediction, special=False)
            total.accepted_prediction_tokens = total.rejected_prediction_tokens = 0
        for i in range(params.n):
            p = params
            if params.n > 1 and params.seed is not None:
                p = params.model_copy(update={"seed": (params.seed + i) % 2**32})
            stats = Stats(prompt_tokens=len(prompt.tokens))
            events = self._one(prompt.tokens, p, i, stats, grammar, logprobs, processors,
                               predicted)
            family = tool_family(self.template.source if self.template else None,
                                 self.info.arch) if spec is not None else None
            if family is not None:
                events = self._tool_events(events, spec, family)
            for ev in events:
                if ev.finish_reason is not None:
                    total.completion_tokens += stats.completion_tokens
                    if predicted is not None:
                        total.accepted_prediction_tokens += stats.prediction_accepted
                        total.rejected_prediction_tokens += stats.prediction_rejected
                    if i == 0:
                        total.cached_tokens = stats.cached_tokens
                    if i == params.n - 1:
                        ev.usage = total
                yield ev

    def complete(self, messages: list, params: SamplingParams,
                 tools: "list | ToolSpec | None" = None,
                 policy: str | None = None, prompt: Prompt | None = None,
                 response_format: dict | None = None, logprobs: int | None = None,
                 processors: "Sequence[LogitsProcessor]" = (),
                 prediction: str | None = None) -> Completion:
        prompt = prompt or self.prepare(messages, params, tools, policy)
        texts: dict[int, list[str]] = {}
        calls: dict[int, list[ToolCall]] = {}
        lps: dict[int, list[TokenLogprob]] = {}
        choices, stats, usage = [], [], None
        for ev in self.stream(messages, params, tools, policy, prompt=prompt,
                              response_format=response_format, logprobs=logprobs,
                              processors=processors, prediction=prediction):
            texts.setdefault(ev.index, []).append(ev.delta)
            calls.setdefault(ev.index, []).extend(ev.tool_calls)
            lps.setdefault(ev.index, []).extend(ev.logprobs)
            if ev.finish_reason is not None:
                choices.append(Choice(ev.index, "".join(texts[ev.index]), ev.finish_reason,
                                      calls[ev.index],
                                      lps[ev.index] if logprobs is not None else None))
                stats.append(ev.stats)
                usage = ev.usage or usage
        return Completion(choices, usage, prompt, stats)

    def grammar(self, tools: "list | ToolSpec | None", response_format: dict | None
                ) -> Grammar | None:
        """The grammar the answer must follow (None: free text); checks that the
        engine can apply one."""
        spec = self.tool_spec(tools)
        g = tools_grammar(spec, self.tool_family()) if spec is not None and spec.forced else None
        g = g or response_format_grammar(response_format)
        if g is not None and self.constrain is None:
            raise EdgeChatError(f"constrained output ({g.param}) is not available for "
                                f"this {self.info.format} model", param=g.param)
        return g

    def cancel(self) -> None:
        self.engine.cancel()

    def _tool_events(self, events: Iterator[Event], spec: ToolSpec, family: str
                     ) -> Iterator[Event]:
        """One choice's events with the tool calls parsed out of the text (with
        tool_choice "none" a call the model writes anyway is dropped, not shown as text)."""
        parser = ToolParser(family, spec.allowed(), spec.parallel, spec.forced)
        for ev in events:
            pieces = parser.feed(ev.delta)
            if ev.finish_reason is not None:
                pieces += parser.finish()
            lps = ev.logprobs
            for piece in pieces:
                if isinstance(piece, ToolCall):
                    if not spec.active:
                        log.warning("tool_choice is 'none': dropped a call of %s", piece.name)
                        parser.calls.remove(piece)
                        continue
                    yield Event(ev.index, tool_calls=[piece], logprobs=lps)
                else:
                    yield Event(ev.index, piece, logprobs=lps)
                lps = []
            if ev.finish_reason is not None:
                if ev.finish_reason == "stop" and parser.calls:
                    ev.finish_reason = "tool_calls"
                ev.delta, ev.logprobs = "", lps
                yield ev
            elif lps:
                yield Event(ev.index, logprobs=lps)

    def _logprob(self, tok: "Token") -> TokenLogprob:
        def entry(t: int, lp: float) -> TokenLogprob:
            b = self.engine.token_bytes(t)
            return TokenLogprob(b.decode("utf-8", "replace"), b, lp)
        out = entry(tok.id, tok.logprob)
        out.top = [entry(t, lp) for t, lp in tok.top_logprobs]
        return out

    def _one(self, tokens: list[int], params: SamplingParams, index: int, stats: Stats,
             grammar: Grammar | None = None, logprobs: int | None = None,
             processors: "Sequence[LogitsProcessor]" = (),
             prediction: list[int] | None = None) -> Iterator[Event]:
        engine = self.engine
        room = self.n_ctx - len(tokens)
        limit = min(params.max_tokens or room, room)
        stops = StopMatcher(params.stop)
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        finish = "stop"
        t0 = time.perf_counter()
        if grammar is not None:
            processors = (*processors, self.constrain(grammar))
        gen = engine.generate(tokens, params, processors=tuple(processors), logprobs=logprobs,
                              prediction=prediction)
        try:
            if limit <= 0:
                finish = "length"
            else:
                for tok in gen:
                    if stats.completion_tokens == 0:
                        stats.ttft = time.perf_counter() - t0
                        stats.cached_tokens = len(tokens) - engine.n_prompt_evaluated
                    if engine.is_eog(tok.id):
                        break
                    stats.completion_tokens += 1
                    text = stops.feed(utf8.decode(engine.token_bytes(tok.id)))
                    lps = [self._logprob(tok)] if logprobs is not None else []
                    if text or lps:
                        yield Event(index, text, logprobs=lps)
                    if stops.hit is not None:
                        break
                    if stats.completion_tokens >= limit:
                        finish = "length"
                        break
        finally:
            gen.close()
        stats.seconds, stats.stop = time.perf_counter() - t0, stops.hit
        spec = engine.speculation
        stats.draft_tokens, stats.accepted_tokens = spec.drafted, spec.accepted
        stats.prediction_accepted = spec.prediction_accepted
        stats.prediction_rejected = spec.prediction_rejected
        tail = stops.feed(utf8.decode(b"", final=True)) + stops.flush()
        yield Event(index, tail, finish_reason=finish, stats=stats)
