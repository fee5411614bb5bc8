"""A stand-in for the Hugging Face hub on 127.0.0.1, answering what huggingface_hub
asks (read in its file_download.py and hf_api.py):

  GET  /api/models/{org}/{name}[/revision/{rev}]?blobs=True   repo info with siblings
       (size, blobId, lfs {size, sha256, pointerSize}); 404 + X-Error-Code: RepoNotFound
  HEAD /{org}/{name}/resolve/{rev}/{path}   X-Repo-Commit, ETag, and for LFS files
       X-Linked-Etag (the SHA-256) and X-Linked-Size
  GET  same, honouring `Range: bytes=N-` (206 + Content-Range)

Point a process at it with HF_ENDPOINT. It counts the bytes it sends per file, can
serve other bytes than it publishes (a corrupt download), stall a file after some
bytes (a download killed half way) or drop the connection there, and gate a repo
behind a token (HF_TOKEN)."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_LFS_SUFFIXES = (".gguf", ".onnx", ".data", ".safetensors")


@dataclass
class _Repo:
    commit: str
    files: dict[str, bytes]
    corrupt: set[str] = field(default_factory=set)


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.served: Counter[str] = Counter()           # "org/name/path" -> bytes sent
        self.ranges: list[tuple[str, str | None]] = []   # (path, Range header) per GET
        self.stall: dict[str, int] = {}                  # path -> stop after this many bytes
        self.gated: dict[str, str] = {}                  # repo id -> the token it needs
        self.drop: dict[str, int] = {}                   # path -> close the connection here
        self.stalled = threading.Event()                 # set once a stall point is reached
        self.release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def add(self, repo_id: str, files: dict[str, bytes | Path]) -> None:
        data = {k: v.read_bytes() if isinstance(v, Path) else v for k, v in files.items()}
        commit = hashlib.sha1(repr(sorted((k, hashlib.sha256(v).hexdigest())
                                          for k, v in data.items())).encode()).hexdigest()
        self.repos[repo_id] = _Repo(commit, data)

    def corrupt(self, repo_id: str, path: str) -> None:
        """Serve `path` with one byte changed (same size): the published hash stays."""
        self.repos[repo_id].corrupt.add(path)

    # -- what the hub publishes -------------------------------------------------------
    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith(_LFS_SUFFIXES)

    def info(self, repo_id: str) -> dict:
        r = self.repos[repo_id]
        sib = []
        for p, b in sorted(r.files.items()):
            s = {"rfilename": p, "size": len(b), "blobId": hashlib.sha1(b).hexdigest()}
            if self.is_lfs(p):
                s["lfs"] = {"size": len(b), "sha256": hashlib.sha256(b).hexdigest(),
                            "pointerSize": 134}
            sib.append(s)
        return {"id": repo_id, "modelId": repo_id, "sha": r.commit, "private": False,
                "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [],
                "siblings": sib}

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, code, body=b"", headers=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _not_found(self, what="RepoNotFound"):
                self._send(404, b'{"error":"not found"}', {"X-Error-Code": what,
                                                           "Content-Type": "application/json"})

            def do_GET(self):
                self._route()

            def do_HEAD(self):
                self._route()

            def _route(self):
                path = self.path.split("?", 1)[0]
                m = (re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
                     or re.match(r"^/([^/]+/[^/]+)/resolve/", path))
                token = hub.gated.get(m[1]) if m else None
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    return self._send(401, b"{}", {"X-Error-Code": "GatedRepo",
                                                   "X-Error-Message": "Access restricted"})
                m = re.match(r"^/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?$", path)
                if m:
                    if m[1] not in hub.repos:
                        return self._not_found()
                    return self._send(200, json.dumps(hub.info(m[1])).encode(),
                                      {"Content-Type": "application/json"})
                m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if not m:
                    return self._not_found()
                repo = hub.repos.get(m[1])
                if repo is None:
                    return self._not_found()
                if m[3] not in repo.files:
                    return self._not_found("EntryNotFound")
                self._file(m[1], repo, m[3])

            def _file(self, repo_id, repo, fpath):
                data = repo.files[fpath]
                if fpath in repo.corrupt:
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                h = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes",
                     "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                if hub.is_lfs(fpath):
                    h["X-Linked-Etag"] = f'"{hashlib.sha256(repo.files[fpath]).hexdigest()}"'
                    h["X-Linked-Size"] = str(len(data))
                if self.command == "HEAD":
                    return self._send(200, data, h)
                start, code = 0, 200
                rng = self.headers.get("Range")
                hub.ranges.append((fpath, rng))
                if rng:
                    start = int(re.match(r"bytes=(\d+)-", rng)[1])
                    code = 206
                    h["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                self.send_response(code)
                for k, v in h.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                key = f"{repo_id}/{fpath}"
                cut = hub.drop.pop(fpath, None)
                if cut is not None and start < cut:      # the network goes away once
                    self.wfile.write(body[:cut - start])
                    self.wfile.flush()
                    hub.served[key] += cut - start
                    self.close_connection = True
                    return
                stop = hub.stall.get(fpath)
                if stop is not None and start < stop:
                    part = body[:stop - start]
                    self.wfile.write(part)
                    self.wfile.flush()
                    hub.served[key] += len(part)
                    hub.stalled.set()
                    hub.release.wait(60)           # the client is killed meanwhile
                    self.close_connection = True
                    return
                self.wfile.write(body)
                hub.served[key] += len(body)

        return Handler
