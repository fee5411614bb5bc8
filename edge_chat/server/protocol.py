"""The OpenAI wire format: request bodies in, response and chunk bodies out.

Request parsing never raises anything but EdgeChatError (→ a 400 naming the
field); sampling values go through `chat_params`, messages through
`normalize_messages`, so the API validates exactly like the CLI."""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from edge_chat import __version__
from edge_chat.chat.messages import normalize_messages
from edge_chat.chat.params import SamplingParams, chat_params
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


class ChatRequest(_Request):
    messages: Any = None
    max_completion_tokens: Int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    prediction: Any = None

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
    if isinstance(req, ChatRequest):
        if req.messages is None:
            raise EdgeChatError("'messages' is required", param="messages")
        req.messages = normalize_messages(req.messages)
        _check_response_format(req.response_format)
    elif isinstance(req, CompletionRequest):
        req.text()
    req.include_usage               # noqa: B018  validated here, before any job starts
    return req, req.params()


def _check_response_format(rf: dict | None) -> None:
    """Its shape, before any job (the engine turns it into a grammar later)."""
    if rf is None:
        return
    kind = rf.get("type")
    if kind not in ("text", "json_object", "json_schema"):
        raise EdgeChatError("response_format.type must be 'text', 'json_object' or "
                            "'json_schema'", param="response_format")
    spec = rf.get("json_schema")
    if kind == "json_schema" and not (isinstance(spec, dict) and isinstance(spec.get("schema"), dict)):
        raise EdgeChatError("response_format.json_schema.schema must be a JSON schema object",
                            param="response_format")


# -- responses ----------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


#: an absolute path in a message (not an API route): a client learns the last part only
_ABS_PATH = re.compile(r"(?<![\w.:/~])/(?!v1\b)(?:[^\s/'\",;()\[\]]+/)*([^\s/'\",;()\[\]]*)")


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error shape. No absolute path of the server's disk reaches a client."""
    return {"error": {"message": _ABS_PATH.sub(r"\1", message), "type": type_, "param": param,
                      "code": code}}


class Shaper:
    """Builds the bodies of one response (chat or text completion)."""

    def __init__(self, model: str, chat: bool):
        self.chat = chat
        self.id = new_id("chatcmpl" if chat else "cmpl")
        self.created = now()
        self.model = model

    def _head(self, obj: str) -> dict:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": FINGERPRINT}

    def full(self, choices: list[tuple[int, str, str]], usage: dict) -> dict:
        """The non-streamed response: choices are (index, text, finish_reason)."""
        out = self._head("chat.completion" if self.chat else "text_completion")
        if self.chat:
            out["choices"] = [{"index": i, "message": {"role": "assistant", "content": t,
                                                       "refusal": None},
                               "logprobs": None, "finish_reason": f} for i, t, f in choices]
        else:
            out["choices"] = [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                              for i, t, f in choices]
        out["usage"] = usage
        return out

    def chunk(self, index: int, text: str | None, finish: str | None = None, *,
              first: bool = False, with_usage: bool = False) -> dict:
        out = self._head("chat.completion.chunk" if self.chat else "text_completion")
        if self.chat:
            delta: dict[str, Any] = {}
            if first:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None,
                      "finish_reason": finish}
        out["choices"] = [choice]
        if with_usage:
            out["usage"] = None
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
