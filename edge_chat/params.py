"""Sampling parameters with the OpenAI Chat Completions names and ranges."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_chat.errors import EdgeChatError


def _token_key(k: Any) -> bool:
    """A logit_bias key: plain decimal digits ("7_0", " 7", "٧" are not)."""
    return isinstance(k, str) and re.fullmatch(r"-?[0-9]{1,12}", k) is not None


class SamplingParams(BaseModel):
    """What a caller may ask of one generation. Engines read the sampler fields;
    the chat loop handles `stop`, `max_tokens` and `n`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, ge=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 = off")
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    repeat_penalty: float = Field(1.0, gt=0.0, le=10.0)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stop: list[str] = Field(default_factory=list)
    max_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=16)
    logit_bias: dict[int, float] = Field(default_factory=dict)

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> list[str]:
        if v is None:
            return []
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError("must be a string or a list of strings")
        if len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(s == "" for s in v):
            raise ValueError("stop sequences must not be empty")
        return v

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _logit_bias(cls, v: Any) -> dict[int, float]:
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must be a map of token id to bias")
        out: dict[int, float] = {}
        for k, b in v.items():
            if isinstance(k, bool) or not (isinstance(k, int) or _token_key(k)):
                raise ValueError(f"key {str(k)[:40]!r} is not a token id (a decimal integer)")
            tok = int(k)
            if tok < 0:
                raise ValueError(f"token id {tok} is negative")
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
                raise ValueError(f"bias for token {tok} must be a number in [-100, 100]")
            out[tok] = float(b)
        return out

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


FIELDS = tuple(SamplingParams.model_fields)


def _first_error(err: ValidationError) -> EdgeChatError:
    e = err.errors()[0]
    field = ".".join(str(p) for p in e["loc"]) or "params"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return EdgeChatError(f"unknown sampling parameter '{field}'", param=field)
    return EdgeChatError(f"invalid '{field}': {msg}", param=field)


def make_params(**values: Any) -> SamplingParams:
    """Build params from keyword values, dropping None; bad values raise
    EdgeChatError naming the field."""
    clean = {k: v for k, v in values.items() if v is not None}
    try:
        return SamplingParams(**clean)
    except ValidationError as err:
        raise _first_error(err) from None


def update_params(params: SamplingParams, **values: Any) -> SamplingParams:
    """A copy of `params` with some fields changed, validated."""
    merged = params.model_dump()
    merged.update(values)
    return make_params(**merged)


#: what the front-ends use for fields a user leaves unset (llama.cpp's defaults:
#: small models ramble at OpenAI's temperature 1 with no top-k/top-p)
CHAT_DEFAULTS = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "min_p": 0.05}


def chat_params(**values: Any) -> SamplingParams:
    """make_params with CHAT_DEFAULTS under the given values."""
    merged = dict(CHAT_DEFAULTS)
    merged.update({k: v for k, v in values.items() if v is not None})
    return make_params(**merged)


def parse_value(field: str, text: str) -> Any:
    """A value typed by a user for `field` (e.g. in `/set temperature 0.3`)."""
    import json
    if field not in FIELDS:
        raise EdgeChatError(f"unknown sampling parameter '{field}' "
                            f"(one of {', '.join(FIELDS)})", param=field)
    text = text.strip()
    if field == "stop":
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise EdgeChatError("stop: write a JSON list, e.g. [\"###\", \"User:\"]",
                                    param=field) from None
        return json.loads(text) if text.startswith('"') else text
    if field == "logit_bias":
        return {} if text.lower() in ("", "{}", "none", "null") else parse_logit_bias(text.split())
    if text.lower() in ("none", "null", ""):
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise EdgeChatError(f"invalid '{field}': {text!r} is not a number", param=field) from None


def parse_logit_bias(items: list[str]) -> dict[int, float]:
    """['123:-100', '42=5'] → {123: -100.0, 42: 5.0}."""
    out: dict[int, float] = {}
    for item in items:
        key, sep, val = item.replace("=", ":").partition(":")
        try:
            if not _token_key(key):
                raise ValueError(key)
            out[int(key)] = float(val)
        except ValueError:
            raise EdgeChatError(f"invalid 'logit_bias': {item!r} (write TOKEN_ID:BIAS)",
                                param="logit_bias") from None
        if not sep:
            raise EdgeChatError(f"invalid 'logit_bias': {item!r} (write TOKEN_ID:BIAS)",
                                param="logit_bias")
    return out
