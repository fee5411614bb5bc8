"""What the API checks before a route sees a request (an ASGI middleware):

- the Host header is one of the allowed names: a web page cannot reach a server on
  127.0.0.1 through DNS rebinding (its requests carry the attacker's host name);
- a POST says `Content-Type: application/json`: a cross-site form or `text/plain`
  POST (which browsers send without a CORS preflight) is refused with 415;
- the body is at most `max_body` bytes, counted while it arrives (with or without
  Content-Length): 413 as soon as it is over, without reading the rest.

Errors are JSON in the shape of the request's protocol (shapes.py), like every other
error of the API."""

from __future__ import annotations

import ipaddress
import json
import socket

from edge_chat.server.shapes import error_payload

LOCAL_NAMES = ("localhost", "127.0.0.1", "::1", "localhost.localdomain")
DEFAULT_MAX_BODY = 4 * 1024 * 1024


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host in ("localhost", "localhost.localdomain")


def host_name(header: str) -> str:
    """'[::1]:8000' → '::1', 'Example.COM.:80' → 'example.com'."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":")[0]
    return h.rstrip(".")


class HostPolicy:
    """The Host names a server bound to `bind` answers to: the local names and the bound
    address, plus `extra` ('*' allows any). Bound to a non-loopback address, any IP
    literal and this machine's host name are allowed too (clients on the network use
    them; a rebinding attack has to use a domain name)."""

    def __init__(self, bind: str, extra: list[str] | None = None):
        extra = [host_name(h) if h != "*" else h for h in (extra or [])]
        self.any = "*" in extra
        self.names = {*LOCAL_NAMES, host_name(bind), *extra}
        self.network = not _is_loopback(host_name(bind))
        if self.network:
            name = socket.gethostname().lower()
            self.names |= {name, f"{name}.local"}

    def allows(self, header: str | None) -> bool:
        if self.any or header is None:
            return True
        h = host_name(header)
        return h in self.names or (self.network and _is_ip(h))


def _is_json(content_type: str) -> bool:
    media = content_type.split(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/")
                                           and media.endswith("+json"))


class Guard:
    """ASGI middleware applying a HostPolicy, the JSON content type and the body limit."""

    def __init__(self, app, policy: HostPolicy, max_body: int = DEFAULT_MAX_BODY):
        self.app, self.policy, self.max_body = app, policy, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if not self.policy.allows(headers.get("host")):
            return await _reply(send, scope, 403, "this server does not answer to the host name "
                                f"'{host_name(headers['host'])[:100]}' (start it with "
                                "--allowed-host NAME to allow it)", "host_not_allowed")
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        if not _is_json(headers.get("content-type", "")):
            return await _reply(send, scope, 415, "send the request body as JSON with "
                                "'Content-Type: application/json'", "unsupported_media_type")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return await self._too_big(send, scope)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":       # the client left
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                return await self._too_big(send, scope)
            chunks.append(body)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_big(self, send, scope):
        return await _reply(send, scope, 413, f"the request body is larger than "
                            f"{self.max_body} bytes (the server's --max-body)",
                            "request_too_large")


async def _reply(send, scope, status: int, message: str, code: str) -> None:
    body = json.dumps(error_payload(scope.get("path", ""), status, message,
                                    "invalid_request_error", None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
