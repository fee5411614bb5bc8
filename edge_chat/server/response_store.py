"""The stored responses of OpenAI's Responses API: what `previous_response_id` continues,
`GET /v1/responses/{id}` returns and `DELETE` removes.

One JSON file per response (`resp_….json`) in a folder of the cache
(`$EDGE_CHAT_CACHE/responses` by default), written atomically, so stored responses outlive a
restart; at most `limit` are kept, the oldest removed first. A record holds the response
object, the conversation's chat messages up to and including its output (instructions
excepted: OpenAI does not carry them over), and its own input items."""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from pathlib import Path

from edge_chat.atomic import write_text_atomic
from edge_chat.errors import EdgeChatError, printable

log = logging.getLogger("edge_chat.server")

#: the ids this server gives (and the only names it reads from its folder)
_ID = re.compile(r"resp_[0-9a-f]{32}")


class ResponseNotFound(EdgeChatError):
    status = 404

    def __init__(self, rid: str, param: str | None = None):
        super().__init__(f"Response with id '{printable(rid, 80)}' not found (unknown, "
                         "deleted, stored with 'store': false, or evicted: the server keeps "
                         "the last --max-responses)", param=param)


class ResponseStore:
    """Responses on disk, at most `limit` (0: none kept). Thread-safe. A folder that
    cannot be written is logged, and its responses are not kept."""

    def __init__(self, folder: Path, limit: int):
        self.folder, self.limit = Path(folder), limit
        self._lock = threading.Lock()
        self._order: OrderedDict[str, None] | None = None    # oldest first, read lazily

    def _path(self, rid: str) -> Path | None:
        return self.folder / f"{rid}.json" if isinstance(rid, str) and _ID.fullmatch(rid) \
            else None

    def _known(self) -> OrderedDict[str, None]:
        if self._order is None:
            try:
                files = [(p.stat().st_mtime, p.stem) for p in self.folder.glob("resp_*.json")
                         if _ID.fullmatch(p.stem)]
            except OSError:
                files = []
            self._order = OrderedDict((rid, None) for _t, rid in sorted(files))
        return self._order

    def put(self, rid: str, record: dict) -> None:
        path = self._path(rid)
        if self.limit <= 0 or path is None:
            return
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            try:
                write_text_atomic(path, text)
            except OSError as e:                   # the answer stands; it cannot be continued
                log.warning("could not store the response %s in %s: %s", rid, self.folder, e)
                return
            order = self._known()
            order[rid] = None
            while len(order) > self.limit:
                old, _ = order.popitem(last=False)
                (self.folder / f"{old}.json").unlink(missing_ok=True)

    def get(self, rid: str, param: str | None = None) -> dict:
        """The record of `rid`; ResponseNotFound (404) when it is not stored."""
        path = self._path(rid)
        try:
            if path is None:
                raise FileNotFoundError
            return json.loads(path.read_text())
        except (OSError, ValueError):
            raise ResponseNotFound(rid, param) from None

    def delete(self, rid: str) -> None:
        path = self._path(rid)
        with self._lock:
            if path is None or not path.is_file():
                raise ResponseNotFound(rid)
            path.unlink(missing_ok=True)
            self._known().pop(rid, None)
