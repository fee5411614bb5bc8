"""Errors in the shape of the protocol a request's path belongs to — the one mapping
of an error (an EdgeChatError, an HTTP error, the guard's refusals) to a response body:

- Ollama's routes (`/api/...`):           {"error": "message"}
- Anthropic's Messages (`/v1/messages`):  {"type": "error", "error": {"type", "message"}}
- everything else: OpenAI's               {"error": {"message", "type", "param", "code"}}
"""

from __future__ import annotations

from edge_chat.server.protocol import error_body

#: Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors)
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                   403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                   429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def protocol_of(path: str) -> str:
    """'ollama', 'anthropic' or 'openai', from a request's path."""
    if path == "/api" or path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai"


def error_payload(path: str, status: int, message: str, type_: str = "invalid_request_error",
                  param: str | None = None, code: str | None = None) -> dict:
    """The error body for a request to `path` (no absolute server path leaks: error_body
    cleans the message for every shape)."""
    clean = error_body(message, type_, param, code)
    proto = protocol_of(path)
    if proto == "ollama":
        return {"error": clean["error"]["message"]}
    if proto == "anthropic":
        kind = ANTHROPIC_TYPES.get(status, "api_error" if status >= 500
                                   else "invalid_request_error")
        return {"type": "error", "error": {"type": kind, "message": clean["error"]["message"]}}
    return clean
