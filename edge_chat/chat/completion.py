"""The chat loop: messages → prompt tokens → streamed text, over any Engine.

Every front-end (CLI, HTTP API, page) goes through `ChatModel`; none of them
builds prompts, matches stops or counts tokens on its own."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, field
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from edge_chat.chat.context import check_prompt_bytes, fit_messages
from edge_chat.chat.messages import normalize_messages
from edge_chat.chat.params import SamplingParams
from edge_chat.chat.roles import RoleSeparator
from edge_chat.chat.stops import StopMatcher
from edge_chat.chat.template import ChatTemplate
from edge_chat.errors import ContextLengthExceeded, EdgeChatError

if TYPE_CHECKING:
    from edge_chat.engines.base import Engine, LogitsProcessor


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

    @property
    def acceptance(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    @property
    def decode_tps(self) -> float:
        t = self.seconds - self.ttft
        return (self.completion_tokens - 1) / t if self.completion_tokens > 1 and t > 0 else 0.0


@dataclass
class Event:
    """A piece of a streamed answer. The last event of each choice has a
    finish_reason; the very last of the call also carries `usage`."""
    index: int
    delta: str = ""
    finish_reason: str | None = None
    usage: "Usage | None" = None
    stats: Stats | None = None


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


@dataclass
class Completion:
    choices: list[Choice]
    usage: Usage
    prompt: Prompt
    stats: list[Stats] = field(default_factory=list)


class ChatModel:
    """One engine plus its chat template and context policy."""

    def __init__(self, engine: "Engine", template: ChatTemplate | None = None, *,
                 context_policy: str = "truncate", allow_special: bool = False):
        self.engine = engine
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
    def render(self, messages: list[dict], tools: list | None = None) -> str:
        if self.template is None:
            raise ValueError("this model was opened without a chat template")
        return self.template.render(messages, add_generation_prompt=True, tools=tools)

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

    def count_tokens(self, messages: list[dict], tools: list | None = None) -> int:
        return len(self.tokenize_prompt(self.render(messages, tools), messages, tools))

    def prepare(self, messages: list, params: SamplingParams, tools: list | None = None,
                policy: str | None = None) -> Prompt:
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
    def stream(self, messages: list, params: SamplingParams, tools: list | None = None,
               policy: str | None = None, prompt: Prompt | None = None,
               grammar: "LogitsProcessor | None" = None,
               processors: "Sequence[LogitsProcessor]" = (),
               prediction: str | None = None) -> Iterator[Event]:
        """Events for choice 0, then choice 1, ... (n choices in turn).
        `grammar` (from `grammar_for`) and `processors` constrain each logits
        row before sampling; `prediction` is the text the answer is expected
        to repeat (OpenAI's Predicted Outputs: drafts for speculative decoding)."""
        processors = (*processors, grammar) if grammar is not None else tuple(processors)
        prompt = prompt or self.prepare(messages, params, tools, policy)
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
            for ev in self._one(prompt.tokens, p, i, stats, processors, predicted):
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

    def complete(self, messages: list, params: SamplingParams, tools: list | None = None,
                 policy: str | None = None, prompt: Prompt | None = None,
                 grammar: "LogitsProcessor | None" = None,
                 processors: "Sequence[LogitsProcessor]" = (),
                 prediction: str | None = None) -> Completion:
        prompt = prompt or self.prepare(messages, params, tools, policy)
        texts: dict[int, list[str]] = {}
        choices, stats, usage = [], [], None
        for ev in self.stream(messages, params, tools, policy, prompt=prompt, grammar=grammar,
                              processors=processors, prediction=prediction):
            texts.setdefault(ev.index, []).append(ev.delta)
            if ev.finish_reason is not None:
                choices.append(Choice(ev.index, "".join(texts[ev.index]), ev.finish_reason))
                stats.append(ev.stats)
                usage = ev.usage or usage
        return Completion(choices, usage, prompt, stats)

    def grammar_for(self, response_format: dict | None) -> "LogitsProcessor | None":
        """The engine's grammar processor for an OpenAI `response_format`
        (None: plain text)."""
        if response_format is None or (isinstance(response_format, dict)
                                       and response_format.get("type") == "text"):
            return None
        if not self.engine.capabilities.gbnf:
            raise EdgeChatError(f"constrained output (response_format) is not supported by "
                                f"the {self.info.format} engine; use a GGUF model",
                                param="response_format")
        return self.engine.grammar_for(response_format)

    def cancel(self) -> None:
        self.engine.cancel()

    def _one(self, tokens: list[int], params: SamplingParams, index: int,
             stats: Stats, processors: "Sequence[LogitsProcessor]" = (),
             prediction: list[int] | None = None) -> Iterator[Event]:
        engine = self.engine
        room = self.n_ctx - len(tokens)
        limit = min(params.max_tokens or room, room)
        stops = StopMatcher(params.stop)
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        finish = "stop"
        t0 = time.perf_counter()
        gen = engine.generate(tokens, params, processors=processors, prediction=prediction)
        try:
            if limit <= 0:
                finish = "length"
            else:
                for token in gen:
                    tok = token.id
                    if stats.completion_tokens == 0:
                        stats.ttft = time.perf_counter() - t0
                        stats.cached_tokens = len(tokens) - engine.n_prompt_evaluated
                    if engine.is_eog(tok):
                        break
                    stats.completion_tokens += 1
                    text = stops.feed(utf8.decode(engine.token_bytes(tok)))
                    if text:
                        yield Event(index, text)
                    if stops.hit is not None:
                        break
                    if stats.completion_tokens >= limit:
                        finish = "length"
                        break
        finally:
            gen.close()
        stats.seconds = time.perf_counter() - t0
        spec = engine.speculation
        stats.draft_tokens, stats.accepted_tokens = spec.drafted, spec.accepted
        stats.prediction_accepted = spec.prediction_accepted
        stats.prediction_rejected = spec.prediction_rejected
        tail = stops.feed(utf8.decode(b"", final=True)) + stops.flush()
        yield Event(index, tail, finish_reason=finish, stats=stats)
