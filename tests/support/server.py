"""Helpers for the API tests: a real `edge_chat serve` subprocess on a free
localhost port over a temporary store of the tiny fixture models, and the checks of
its answers (the OpenAI error shape, SSE events)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]     # this file is <repo>/tests/support/server.py
PY = sys.executable
#: one llama.cpp thread: the tiny model is far faster so on a busy 2-core machine
FAST = ("--threads", "1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_store(root: Path, models: dict[str, Path]) -> Path:
    """A store folder of symlinks: {"tiny-q8_0.gguf": path, "tiny-onnx-int8": folder}."""
    root.mkdir(parents=True, exist_ok=True)
    for name, target in models.items():
        link = root / name
        if not link.exists():
            link.symlink_to(Path(target).resolve())
    return root


def edge_env(store: Path, **extra: str) -> dict:
    env = dict(os.environ, EDGE_CHAT_MODELS=str(store), PYTHONUNBUFFERED="1")
    env.pop("EDGE_CHAT_API_KEY", None)
    env.update(extra)
    return env


class Server:
    """`python -m edge_chat serve ARGS` until stop(); `url` is the /v1 base URL."""

    def __init__(self, store: Path, *args: str, log: Path, timeout: float = 120.0,
                 env: dict[str, str] | None = None):
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self.log = log
        self._log_file = open(log, "wb")
        self.proc = subprocess.Popen(
            [PY, "-m", "edge_chat", "serve", *args, "--port", str(self.port),
             "--log-level", "warning"],
            cwd=REPO, env=edge_env(store, **(env or {})), stdin=subprocess.DEVNULL,
            stdout=self._log_file, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.root}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start in {timeout} s:\n{self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def health(self) -> dict:
        r = httpx.get(f"{self.root}/health", timeout=10)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_idle(self, timeout: float = 60.0) -> dict:
        """/health once no model has a running or queued job."""
        deadline = time.monotonic() + timeout
        while True:
            h = self.health()
            if all(m["pending"] == 0 for m in h["loaded"]):
                return h
            assert time.monotonic() < deadline, f"server still busy: {h}"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()


def eog_ids(gguf: Path) -> list[int]:
    """End-of-generation token ids of a GGUF model; a logit_bias of -100 on
    them makes the tiny model talk until max_tokens (long generations)."""
    import llama_cpp
    llm = llama_cpp.Llama(str(gguf), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        return [t for t in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    finally:
        llm.close()


def no_eog(gguf: Path) -> dict[str, int]:
    return {str(t): -100 for t in eog_ids(gguf)}


def chatml(messages: list[dict]) -> str:
    """The tiny model's prompt for `messages` (its ChatML template), for /v1/completions."""
    text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return text + "<|im_start|>assistant\n"


def sse_events(response: httpx.Response) -> list:
    """The `data:` payloads of a streamed response, JSON-decoded ("[DONE]" kept as str)."""
    import json
    out = []
    for line in response.iter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def error_of(r: httpx.Response, status: int) -> dict:
    """The `error` object of an error response, checked to be in OpenAI's shape."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]
