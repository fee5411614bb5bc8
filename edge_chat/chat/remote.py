"""The `remote` backend: chat with any OpenAI-compatible server (ours, llama.cpp's,
vLLM, Ollama, OpenAI...) through the interface every front-end uses
(`chat.completion.ChatModelLike`: `info`, `prepare`, `grammar`, `stream`, `cancel`,
`engine.close()`), like a ChatModel.

The server owns the prompt, the template and the context window; we send the
messages and sampling params and turn its SSE chunks back into Events."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from edge_chat.chat.completion import Event, Prompt, Stats, TokenLogprob, Usage
from edge_chat.chat.messages import normalize_messages
from edge_chat.params import SamplingParams
from edge_chat.chat.tools import ToolCall, ToolSpec, new_call_id, parse_tools
from edge_chat.engines.base import ModelInfo
from edge_chat.errors import EdgeChatError, ModelNotFound

#: llama.cpp extras a strict OpenAI server may refuse: dropped after such a 400
OPTIONAL = ("top_k", "min_p", "repeat_penalty", "stream_options")
_NEUTRAL = {"top_k": 0, "min_p": 0.0, "repeat_penalty": 1.0}


class RemoteEngine:
    """The HTTP connection to the server (what `ChatModel.engine` is for a local model)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 600.0):
        try:
            import httpx
        except ImportError:
            raise EdgeChatError("--base-url needs httpx: pip install httpx") from None
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._httpx = httpx
        self.client = httpx.Client(base_url=self.base_url, headers=headers,
                                   timeout=httpx.Timeout(timeout, connect=10.0))

    def error(self, r) -> EdgeChatError:
        """An EdgeChatError from an HTTP error response (OpenAI's error shape or not)."""
        try:
            err = r.json().get("error")
        except (ValueError, AttributeError):
            err = None
        if isinstance(err, dict):
            msg = err.get("message") or f"HTTP {r.status_code}"
            return EdgeChatError(f"server: {msg}", param=err.get("param"), code=err.get("code"),
                                 status=r.status_code)
        text = r.text.strip()[:200] if hasattr(r, "text") else ""
        return EdgeChatError(f"server: HTTP {r.status_code} {text}".rstrip(), status=r.status_code)

    def get(self, path: str) -> dict:
        try:
            r = self.client.get(path)
        except self._httpx.HTTPError as e:
            raise self.unreachable(e) from None
        if r.status_code >= 400:
            raise self.error(r)
        return r.json()

    def unreachable(self, e: Exception) -> EdgeChatError:
        return EdgeChatError(f"cannot reach the server at {self.base_url}: {e}")

    def close(self) -> None:
        self.client.close()


class RemoteChat:
    """A model on an OpenAI-compatible server, used like a ChatModel."""

    def __init__(self, base_url: str, model: str | None = None, *, api_key: str | None = None,
                 timeout: float = 600.0):
        self.engine = RemoteEngine(base_url, api_key, timeout)
        self.template = None
        self._dropped: set[str] = set()
        self._response = None
        try:
            self.model, card = self._find(model)
        except BaseException:
            self.engine.close()
            raise
        ctx = card.get("context_length") or card.get("max_model_len") or 0
        self.info = ModelInfo(
            name=self.model, path=Path(self.engine.base_url), format="remote",
            arch=str(card.get("arch") or card.get("format") or "?"),
            quant=str(card.get("quant") or "?"), n_ctx_train=int(ctx), n_ctx=int(ctx),
            size_bytes=int(card.get("size_bytes") or 0), chat_template=None,
            extra={"base_url": self.engine.base_url, "owned_by": card.get("owned_by")})

    @property
    def n_ctx(self) -> int:
        return self.info.n_ctx

    def _find(self, model: str | None) -> tuple[str, dict]:
        eng = self.engine
        try:
            listing = eng.get("/models")
        except EdgeChatError as e:
            if e.status == 404 and not eng.base_url.endswith("/v1"):
                raise EdgeChatError(f"{eng.base_url}/models: not found; did you mean "
                                    f"--base-url {eng.base_url}/v1 ?") from None
            raise
        cards = {c.get("id"): c for c in listing.get("data") or [] if isinstance(c, dict)}
        if model is None:
            if len(cards) != 1:
                raise EdgeChatError(f"name a model with --model (the server has: "
                                    f"{', '.join(map(str, cards)) or 'none'})", param="model")
            return next(iter(cards.items()))
        if model in cards:
            return model, cards[model]
        try:                # some servers list only part of what they serve
            return model, eng.get(f"/models/{model}")
        except EdgeChatError as e:
            if e.status == 404:
                raise ModelNotFound(f"the server has no model '{model}' (it has: "
                                    f"{', '.join(map(str, cards)) or 'none'})") from None
            raise

    # -- the ChatModelLike interface ----------------------------------------------
    def prepare(self, messages: list, params: SamplingParams, tools: list | None = None,
                policy: str | None = None) -> Prompt:
        """Validated messages; the server builds (and fits) the prompt itself."""
        return Prompt(normalize_messages(messages), "", [])

    def grammar(self, tools, response_format) -> None:
        """Constrained output is the server's business (it answers 400 if it cannot)."""
        return None

    def body(self, messages: list[dict], params: SamplingParams, tools: "list | ToolSpec | None",
             response_format: dict | None = None, logprobs: int | None = None) -> dict:
        p = params
        b: dict = {"model": self.model, "messages": messages, "stream": True,
                   "temperature": p.temperature, "top_p": p.top_p,
                   "stream_options": {"include_usage": True}}
        for k in ("presence_penalty", "frequency_penalty"):
            if getattr(p, k):
                b[k] = getattr(p, k)
        if p.max_tokens is not None:
            b["max_tokens"] = p.max_tokens
        if p.stop:
            b["stop"] = p.stop
        if p.seed is not None:
            b["seed"] = p.seed
        if p.n > 1:
            b["n"] = p.n
        if p.logit_bias:
            b["logit_bias"] = {str(t): v for t, v in p.logit_bias.items()}
        spec = tools if isinstance(tools, ToolSpec) or tools is None else parse_tools(tools)
        if spec is not None:
            b["tools"] = spec.tools
            b["tool_choice"] = spec.choice if spec.choice != "function" else \
                {"type": "function", "function": {"name": spec.name}}
            if not spec.parallel:
                b["parallel_tool_calls"] = False
        if response_format is not None:
            b["response_format"] = response_format
        if logprobs is not None:
            b["logprobs"] = True
            b["top_logprobs"] = logprobs
        for k, neutral in _NEUTRAL.items():
            if getattr(p, k) != neutral:
                b[k] = getattr(p, k)
        for k in self._dropped:
            b.pop(k, None)
        return b

    def _open(self, body: dict):
        """The streamed response; retried once without the extras a strict server refuses."""
        for _ in range(2):
            try:
                r = self.engine.client.send(
                    self.engine.client.build_request("POST", "/chat/completions", json=body),
                    stream=True)
            except self.engine._httpx.HTTPError as e:
                raise self.engine.unreachable(e) from None
            if r.status_code < 400:
                return r
            r.read()
            r.close()
            err = self.engine.error(r)
            refused = [k for k in OPTIONAL if k in body and
                       (err.param == k or k in err.message)] if err.status == 400 else []
            if not refused:
                raise err
            self._dropped.update(refused)
            body = {k: v for k, v in body.items() if k not in refused}
        raise err

    def stream(self, messages: list, params: SamplingParams, tools: "list | ToolSpec | None" = None,
               policy: str | None = None, prompt: Prompt | None = None,
               response_format: dict | None = None, logprobs: int | None = None
               ) -> Iterator[Event]:
        """Events like ChatModel.stream: deltas as they come (tool calls once
        each is complete), then one finishing Event per choice, the last with `usage`."""
        msgs = prompt.messages if prompt is not None else normalize_messages(messages)
        t0 = time.perf_counter()
        ttft, chunks = 0.0, {}
        finish: dict[int, str] = {}
        calls: dict[int, dict[int, dict]] = {}      # choice -> call index -> accumulated call
        usage = None
        r = self._response = self._open(self.body(msgs, params, tools, response_format, logprobs))
        try:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                try:
                    obj = json.loads(data)
                except ValueError:
                    raise EdgeChatError(f"server: not a JSON chunk: {data[:100]!r}") from None
                if isinstance(obj.get("error"), dict):
                    e = obj["error"]
                    raise EdgeChatError(f"server: {e.get('message')}", param=e.get("param"),
                                        code=e.get("code"))
                usage = obj.get("usage") or usage
                for ch in obj.get("choices") or []:
                    i = ch.get("index", 0)
                    delta = ch.get("delta") or {}
                    text = delta.get("content") or ""
                    lps = _logprobs(ch.get("logprobs"))
                    if text or lps:
                        if not chunks:
                            ttft = time.perf_counter() - t0
                        chunks[i] = chunks.get(i, 0) + 1
                        yield Event(i, text, logprobs=lps)
                    for part in delta.get("tool_calls") or []:
                        _add_call(calls.setdefault(i, {}), part)
                    if ch.get("finish_reason"):
                        finish[i] = ch["finish_reason"]
                        done = calls.pop(i, {})
                        if done:
                            yield Event(i, tool_calls=[ToolCall(c["name"], c["arguments"] or "{}",
                                                                c["id"] or new_call_id())
                                                       for _, c in sorted(done.items())])
        except (self.engine._httpx.HTTPError, self.engine._httpx.StreamError) as e:
            if self._response is None:      # cancel() closed it
                finish = finish or {0: "stop"}
            else:
                raise EdgeChatError(f"the connection to the server broke: {e}") from None
        finally:
            r.close()
            self._response = None
        seconds = time.perf_counter() - t0
        u = usage or {}
        total = Usage(u.get("prompt_tokens", 0), u.get("completion_tokens", 0),
                      (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
        order = sorted(finish) or [0]
        for n, i in enumerate(order):
            last = n == len(order) - 1
            stats = Stats(prompt_tokens=total.prompt_tokens, cached_tokens=total.cached_tokens,
                          completion_tokens=(total.completion_tokens if usage and len(order) == 1
                                             else chunks.get(i, 0)),
                          ttft=ttft, seconds=seconds)
            yield Event(i, "", finish_reason=finish.get(i, "stop"),
                        usage=total if last else None, stats=stats)

    def cancel(self) -> None:
        """Stop the running answer (from another thread): drop the connection;
        the server stops generating."""
        r, self._response = self._response, None
        if r is not None:
            r.close()


def _add_call(calls: dict[int, dict], part: dict) -> None:
    """Accumulate one streamed `delta.tool_calls` entry (id and name first,
    then argument fragments)."""
    k = part.get("index", len(calls))
    c = calls.setdefault(k, {"id": None, "name": "", "arguments": ""})
    fn = part.get("function") or {}
    c["id"] = part.get("id") or c["id"]
    c["name"] += fn.get("name") or ""
    c["arguments"] += fn.get("arguments") or ""


def _logprobs(lp: dict | None) -> list[TokenLogprob]:
    def one(e: dict) -> TokenLogprob:
        b = bytes(e.get("bytes") or []) or str(e.get("token", "")).encode()
        return TokenLogprob(str(e.get("token", "")), b, float(e.get("logprob", 0.0)))
    out = []
    for e in (lp or {}).get("content") or []:
        t = one(e)
        t.top = [one(a) for a in e.get("top_logprobs") or []]
        out.append(t)
    return out


def open_remote(base_url: str, model: str | None = None, api_key: str | None = None
                ) -> RemoteChat:
    return RemoteChat(base_url, model, api_key=api_key)
