"""One error type for every bad input a user can give us.

Front-ends turn it into one line on stderr (CLI) or an OpenAI error JSON (HTTP)."""

from __future__ import annotations


class EdgeChatError(Exception):
    """A user-facing error: `str(err)` is one clear line.

    `param` names the offending field (OpenAI's `param`), `code` is OpenAI's
    error code (e.g. ``context_length_exceeded``), `status` the HTTP status."""

    status = 400
    type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        if status is not None:
            self.status = status


class ModelNotFound(EdgeChatError):
    status = 404

    def __init__(self, message: str, *, param: str | None = "model"):
        super().__init__(message, param=param, code="model_not_found")


class ModelLoadError(EdgeChatError):
    """A model file exists but cannot be used (not GGUF, truncated, corrupt...)."""

    status = 400


class ContextLengthExceeded(EdgeChatError):
    def __init__(self, message: str):
        super().__init__(message, param="messages", code="context_length_exceeded")


class ConvertError(EdgeChatError):
    pass


class PullError(EdgeChatError):
    """Getting a model from the hub failed: unknown repo, offline, corrupt download..."""


def printable(text: str, limit: int = 200) -> str:
    """`text` safe to print on one line: control characters (and other invisible
    format characters) escaped as \\xNN / \\uNNNN, cut to `limit` characters."""
    import unicodedata
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            out.append(ascii(ch)[1:-1])
        else:
            out.append(ch)
    s = "".join(out)
    return s if len(s) <= limit else s[:limit] + f"... ({len(s) - limit} more characters)"
