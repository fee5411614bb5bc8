"""The OpenAI wire format: request bodies in, response and chunk bodies out.

Request parsing never raises anything but EdgeChatError (→ a 400 naming the
field); sampling values go through `chat_params`, messages through
`normalize_messages`, so the API validates exactly like the CLI."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, PrivateAttr, ValidationError

from edge_chat import __version__
from edge_chat.chat.completion import Choice, TokenLogprob
from edge_chat.chat.structured import check_response_format
from edge_chat.chat.messages import normalize_messages
from edge_chat.params import SamplingParams, chat_params
from edge_chat.chat.tools import ToolCall, ToolSpec, parse_tools
from edge_chat.errors import EdgeChatError

FINGERPRINT = f"fp_edge_chat_{__version__}"


def _whole(v: Any) -> Any:
    """256.0 → 256, as OpenAI accepts it (2.5 stays a float: a 400)."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


#: an integer field that also takes a whole-number float
Int = Annotated[int, BeforeValidator(_whole)]


class _Request(BaseModel):
    # strict: "0.5" is not a number, true is not an integer; unknown fields are ignored
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: Int | None = None
    stop: str | list[str] | None = None
    max_tokens: Int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    seed: Int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    user: str | None = None
    # llama.cpp extras
    top_k: Int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None

    def params(self) -> SamplingParams:
        return chat_params(temperature=self.temperature, top_p=self.top_p, n=self.n,
                           stop=self.stop, max_tokens=self._max_tokens(),
                           presence_penalty=self.presence_penalty,
                           frequency_penalty=self.frequency_penalty,
                           logit_bias=self.logit_bias, seed=self.seed, top_k=self.top_k,
                           min_p=self.min_p, repeat_penalty=self.repeat_penalty)

    def _max_tokens(self) -> int | None:
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        opts = self.stream_options or {}
        if "include_usage" in opts and not isinstance(opts["include_usage"], bool):
            raise EdgeChatError("invalid 'stream_options.include_usage': must be a boolean",
                                param="stream_options")
        return bool(opts.get("include_usage"))


#: most alternatives a request may ask for per token (OpenAI's limits)
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5


class ChatRequest(_Request):
    messages: Any = None
    max_completion_tokens: Int | None = None
    response_format: Any = None
    tools: Any = None
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    logprobs: bool | None = None
    top_logprobs: Int | None = None
    prediction: Any = None
    # accepted and ignored: metadata, store, service_tier, ...
    _tools: ToolSpec | None = PrivateAttr(None)

    @property
    def tool_spec(self) -> ToolSpec | None:
        return self._tools

    @property
    def n_logprobs(self) -> int | None:
        """None: no logprobs; k: the chosen token's and k alternatives."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def check(self) -> None:
        """The fields a ChatRequest validates beyond their types."""
        if self.messages is None:
            raise EdgeChatError("'messages' is required", param="messages")
        self.messages = normalize_messages(self.messages)
        self._tools = parse_tools(self.tools, self.tool_choice, self.parallel_tool_calls)
        check_response_format(self.response_format)
        k = self.top_logprobs
        if k is not None:
            if not 0 <= k <= MAX_TOP_LOGPROBS:
                raise EdgeChatError(f"invalid 'top_logprobs': must be between 0 and "
                                    f"{MAX_TOP_LOGPROBS}", param="top_logprobs")
            if not self.logprobs:
                raise EdgeChatError("'top_logprobs' needs 'logprobs': true", param="top_logprobs")

    def prediction_text(self) -> str | None:
        """Predicted Outputs: {"type": "content", "content": str | [text parts]}."""
        p = self.prediction
        if p is None:
            return None
        content = p.get("content") if isinstance(p, dict) and p.get("type") == "content" \
            else None
        if isinstance(content, list) and all(
                isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
                for c in content):
            content = "".join(c["text"] for c in content)
        if not isinstance(content, str):
            raise EdgeChatError("invalid 'prediction': write {\"type\": \"content\", "
                                "\"content\": \"the expected text\"}", param="prediction")
        return content

    def _max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens

    def params(self) -> SamplingParams:
        try:
            return super().params()
        except EdgeChatError as e:
            if e.param == "max_tokens" and self.max_completion_tokens is not None:
                raise EdgeChatError(e.message.replace("'max_tokens'", "'max_completion_tokens'"),
                                    param="max_completion_tokens") from None
            raise


class CompletionRequest(_Request):
    prompt: str | list[str] | None = None
    echo: bool | None = None
    logprobs: Int | None = None
    suffix: str | None = None

    def _max_tokens(self) -> int | None:
        return 16 if self.max_tokens is None else self.max_tokens     # OpenAI's default

    @property
    def n_logprobs(self) -> int | None:
        return self.logprobs

    def check(self) -> None:
        self.text()
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_COMPLETION_LOGPROBS:
            raise EdgeChatError(f"invalid 'logprobs': must be between 0 and "
                                f"{MAX_COMPLETION_LOGPROBS}", param="logprobs")
        if self.suffix:
            raise EdgeChatError("'suffix' (insertion) is not supported", param="suffix")

    def text(self) -> str:
        p = self.prompt
        if isinstance(p, list):
            if len(p) != 1:
                raise EdgeChatError("prompt: only one prompt per request is supported",
                                    param="prompt")
            p = p[0]
        if p is None:
            raise EdgeChatError("'prompt' is required", param="prompt")
        if not p:
            raise EdgeChatError("prompt must not be empty", param="prompt")
        return p


def parse(cls: type[_Request], body: bytes) -> tuple[_Request, SamplingParams]:
    """A validated request and its sampling params from a raw JSON body."""
    req = load_body(cls, body)
    req.check()
    req.include_usage               # noqa: B018  validated here, before any job starts
    return req, req.params()


def load_body(cls: type[BaseModel], body: bytes) -> Any:
    """`cls` validated from a raw JSON body (EdgeChatError naming the field)."""
    if not body.strip():
        raise EdgeChatError("the request body is empty: send a JSON object")
    try:
        req = cls.model_validate_json(body)
    except ValidationError as err:
        e = err.errors()[0]
        if e["type"] == "json_invalid":
            raise EdgeChatError(f"the request body is not valid JSON: "
                                f"{e['msg'].removeprefix('Invalid JSON: ')}") from None
        if not e["loc"]:
            raise EdgeChatError("the request body must be a JSON object") from None
        field = str(e["loc"][0])
        raise EdgeChatError(f"invalid '{field}': {e['msg']}", param=field) from None
    return req


# -- responses ----------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


#: an absolute path in a message (not an API route): a client learns the last part only
_ABS_PATH = re.compile(r"(?<![\w.:/~])/(?!(?:v1|api)\b)"
                       r"(?:[^\s/'\",;()\[\]]+/)*([^\s/'\",;()\[\]]*)")


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape. No absolute path of the server's disk reaches a client."""
    return {"error": {"message": _ABS_PATH.sub(r"\1", message), "type": type_, "param": param,
                      "code": code}}


def _lp(t: TokenLogprob) -> dict:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)}


def chat_logprobs(entries: list[TokenLogprob]) -> dict:
    """choices[i].logprobs of a chat completion (or of one chunk)."""
    return {"content": [{**_lp(t), "top_logprobs": [_lp(a) for a in t.top]} for t in entries],
            "refusal": None}


def text_logprobs(entries: list[TokenLogprob], offset: int = 0) -> dict:
    """choices[i].logprobs of a legacy completion; `text_offset` indexes the choice's text
    (which starts with the prompt when `echo`)."""
    offsets = []
    for t in entries:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in entries],
            "token_logprobs": [t.logprob for t in entries],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in entries],
            "text_offset": offsets}


class Shaper:
    """Builds the bodies of one response (chat or text completion)."""

    def __init__(self, model: str, chat: bool, logprobs: bool = False):
        self.chat = chat
        self.logprobs = logprobs
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = now()
        self.model = model
        self._calls: dict[int, int] = {}        # choice -> tool calls streamed so far
        self._offsets: dict[int, int] = {}      # choice -> text streamed so far (text_offset)

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT}

    def full(self, choices: list[Choice], usage: dict, echo: str = "") -> dict:
        """The non-streamed response."""
        out = self._head("chat.completion" if self.chat else "text_completion")
        rows = []
        for c in choices:
            lp = None
            if self.chat:
                msg: dict[str, Any] = {"role": "assistant", "refusal": None,
                                       "content": c.text if c.text or not c.tool_calls else None}
                if c.tool_calls:
                    msg["tool_calls"] = [call.as_dict() for call in c.tool_calls]
                if self.logprobs:
                    lp = chat_logprobs(c.logprobs or [])
                rows.append({"index": c.index, "message": msg, "logprobs": lp,
                             "finish_reason": c.finish_reason})
            else:
                if self.logprobs:
                    lp = text_logprobs(c.logprobs or [], len(echo))
                rows.append({"index": c.index, "text": echo + c.text, "logprobs": lp,
                             "finish_reason": c.finish_reason})
        out["choices"] = rows
        out["usage"] = usage
        return out

    def chunk(self, index: int, text: str | None, finish: str | None = None, *,
              first: bool = False, with_usage: bool = False,
              logprobs: list[TokenLogprob] | None = None) -> dict:
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        lp = None
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if self.logprobs and logprobs:
                lp = chat_logprobs(logprobs)
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        else:
            start = self._offsets.get(index, 0)
            self._offsets[index] = start + len(text or "")
            if self.logprobs and logprobs:
                lp = text_logprobs(logprobs, start)
            choice = {"index": index, "text": text or "", "logprobs": lp,
                      "finish_reason": finish}
        out["choices"] = [choice]
        if with_usage:
            out["usage"] = None
        return out

    def tool_call_chunks(self, index: int, call: ToolCall, with_usage: bool = False
                         ) -> list[dict]:
        """A call streamed as OpenAI streams it: id, type and name first (arguments ""),
        then the arguments text."""
        k = self._calls.get(index, 0)
        self._calls[index] = k + 1
        head = {"index": k, "id": call.id, "type": "function",
                "function": {"name": call.name, "arguments": ""}}
        args = {"index": k, "function": {"arguments": call.arguments}}
        out = []
        for part in (head, args):
            c = self.chunk(index, None, with_usage=with_usage)
            c["choices"][0]["delta"]["tool_calls"] = [part]
            out.append(c)
        return out

    def usage_chunk(self, usage: dict) -> dict:
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        out["choices"] = []
        out["usage"] = usage
        return out


def model_card(name: str, meta: dict, loaded: bool) -> dict:
    """A /v1/models entry; `meta` comes from store.describe (extra fields are ignored by
    OpenAI clients)."""
    card = {"id": name, "object": "model", "created": int(meta.get("created") or 0),
            "owned_by": "edge_chat", "loaded": loaded}
    for k in ("format", "quant", "arch", "context_length", "context_length_trained", "size_bytes",
              "chat_template"):
        if meta.get(k) is not None:
            card[k] = meta[k]
    return card
