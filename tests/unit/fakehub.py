"""A small Hub-compatible HTTP server on 127.0.0.1 (stdlib ``http.server`` in a thread), for the
download tests: the endpoints huggingface_hub's ``repo_info``, ``list_repo_tree`` and
``snapshot_download`` use (../shared/reference/deps.md §7 and appendix B), with LFS metadata,
``Range`` requests, per-file request counts, gated and missing repos, and a switch that cuts a
file's transfer short (the connection closes mid-body) to interrupt a download.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    lfs: set[str] = field(default_factory=set)  # files the Hub stores in LFS (metadata has a sha256)
    sha: str = "0123456789abcdef0123456789abcdef01234567"
    gated: bool = False


class FakeHub:
    """``repos``: ``{("model"|"dataset", "org/name"): FakeRepo}``. ``gets``: GET requests per
    ``(repo_id, file)``; ``ranges``: the ``Range`` headers seen; ``cut``: files whose transfer
    is cut short (half the body on a plain GET, nothing on a ranged one)."""

    def __init__(self, repos: dict[tuple[str, str], FakeRepo]):
        self.repos = repos
        self.gets: Counter = Counter()
        self.ranges: list[tuple[str, str]] = []
        self.cut: set[str] = set()
        self.unknown: list[str] = []
        hub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, body=b"", headers=None, head=False, length=None):
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, head=False):
                self._send(200, json.dumps(obj).encode(), {"Content-Type": "application/json"}, head)

            def _repo(self, kind, repo_id, head):
                repo = hub.repos.get((kind, repo_id))
                if repo is None:
                    self._send(
                        404, b'{"error":"Repository not found"}', {"X-Error-Code": "RepoNotFound"}, head
                    )
                    return None
                if repo.gated:
                    self._send(
                        403,
                        b'{"error":"Access to this repo is restricted"}',
                        {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"},
                        head,
                    )
                    return None
                return repo

            def _route(self, head=False):
                path = unquote(urlparse(self.path).path)
                m = re.match(
                    r"^/api/(models|datasets)/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(/.*)?)?$", path
                )
                if m:
                    kind = m.group(1)[:-1]
                    repo = self._repo(kind, m.group(2), head)
                    if repo is None:
                        return
                    if m.group(3) in ("revision", None):
                        sib = []
                        for f, b in repo.files.items():
                            s = {"rfilename": f, "size": len(b), "blobId": hashlib.sha1(b).hexdigest()}
                            if f in repo.lfs:
                                s["lfs"] = {
                                    "sha256": hashlib.sha256(b).hexdigest(),
                                    "size": len(b),
                                    "pointerSize": 134,
                                }
                            sib.append(s)
                        return self._json({"id": m.group(2), "sha": repo.sha, "siblings": sib}, head)
                    entries = []
                    for f, b in repo.files.items():
                        e = {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                        if f in repo.lfs:
                            e["lfs"] = {
                                "oid": hashlib.sha256(b).hexdigest(),
                                "size": len(b),
                                "pointerSize": 134,
                            }
                        entries.append(e)
                    return self._json(entries, head)
                m = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
                if m:
                    kind = "dataset" if m.group(1) else "model"
                    repo = self._repo(kind, m.group(2), head)
                    if repo is None:
                        return
                    fname = m.group(4)
                    if fname not in repo.files:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"}, head)
                    b = repo.files[fname]
                    etag = hashlib.sha256(b).hexdigest() if fname in repo.lfs else hashlib.sha1(b).hexdigest()
                    hdr = {"ETag": f'"{etag}"', "X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
                    if fname in repo.lfs:
                        hdr["X-Linked-Etag"] = f'"{etag}"'
                        hdr["X-Linked-Size"] = str(len(b))
                    if head:
                        return self._send(200, b, hdr, head=True)
                    hub.gets[(m.group(2), fname)] += 1
                    rng = self.headers.get("Range")
                    if rng:
                        hub.ranges.append((fname, rng))
                        start = int(re.match(r"bytes=(\d+)-", rng).group(1))
                        if fname in hub.cut:  # headers, then the connection goes: no byte of the rest
                            self.send_response(206)
                            self.send_header("Content-Range", f"bytes {start}-{len(b) - 1}/{len(b)}")
                            self.send_header("Content-Length", str(len(b) - start))
                            self.end_headers()
                            self.close_connection = True
                            return
                        hdr["Content-Range"] = f"bytes {start}-{len(b) - 1}/{len(b)}"
                        return self._send(206, b[start:], hdr)
                    if fname in hub.cut:  # half the body, then the connection goes
                        self.send_response(200)
                        for k, v in hdr.items():
                            self.send_header(k, v)
                        self.send_header("Content-Length", str(len(b)))
                        self.end_headers()
                        self.wfile.write(b[: len(b) // 2])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    return self._send(200, b, hdr)
                hub.unknown.append(f"{self.command} {self.path}")
                return self._send(404, b"{}", {"X-Error-Code": "RepoNotFound"}, head)

            def do_GET(self):
                self._route()

            def do_HEAD(self):
                self._route(True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
