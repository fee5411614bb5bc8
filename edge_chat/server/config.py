"""`edge_chat serve`'s configuration (the command line's options, one object)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edge_chat.engines import EngineOptions


@dataclass
class ServerConfig:
    models: list[str] | None = None        # paths or store names; None: the whole store
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_loaded: int = 2
    max_queue: int = 8
    cors_origins: list[str] = field(default_factory=list)
    engine: EngineOptions = field(default_factory=EngineOptions)
    chat_template: str | None = None
    allowed_hosts: list[str] = field(default_factory=list)   # beyond the local names
    max_body: int = 4 * 1024 * 1024                           # bytes of a request body
    allow_special: bool = False             # special-token text in contents acts as markup
    keep_alive: float = 300.0               # seconds an idle model stays loaded (inf: forever)
    max_responses: int = 1000               # stored Responses-API responses (0: none)
    responses_dir: Path | None = None       # where they are kept (None: the cache's)
