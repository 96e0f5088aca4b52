"""A stand-in for the Hugging Face hub, for tests: serves model repos on 127.0.0.1 the way huggingface_hub downloads
them (HEAD and GET on /{org}/{name}/resolve/{revision}/{path}, with ETag, X-Repo-Commit and Range; no xet headers, so
the plain HTTP path is taken), logs every request with the bytes it sent, and fails on demand: HTTP errors, reset
connections, stalled answers, connections cut mid-body, bytes that differ from the announced sha256."""

import hashlib
import re
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)")
RESET = "reset"  # the connection is reset (TCP RST) before any answer
STALL = "stall"  # no answer at all, until the client gives up (or STALL_LIMIT_S passes)
STALL_LIMIT_S = 30


@dataclass
class Repo:
    files: dict[str, Path]  # path in the repo -> file on disk
    commit: str
    token: str | None = None  # a gated repo: only requests with this bearer token are answered
    etags: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    repo: str | None
    path: str  # the file's path in the repo, or the URL path when it is not a resolve URL
    status: int | str  # an HTTP status, RESET or STALL
    range: str | None
    sent: int  # body bytes
    authorization: str | None = None


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.drop_at: dict[str, int] = {}  # file path -> bytes to send before cutting the connection (once)
        self.fail_after_drop: int | None = None  # HTTP status every request gets once a connection was cut
        self.failing: int | None = None
        # (method, file path) -> what its next requests get, one each in turn: an HTTP status, RESET or STALL
        self.failures: dict[tuple[str, str], list[int | str]] = {}
        self.corrupt: set[str] = set()  # file paths served with one byte changed (same size, another sha256)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_repo(self, repo_id: str, files: dict[str, Path], token: str | None = None) -> Repo:
        """Serve files as repo_id (again: a new commit of it); with a token, the repo is gated."""
        etags = {path: hashlib.sha256(Path(file).read_bytes()).hexdigest() for path, file in files.items()}
        commit = hashlib.sha1(f"{repo_id} {sorted(etags.items())}".encode()).hexdigest()
        self.repos[repo_id] = Repo({k: Path(v) for k, v in files.items()}, commit, token, etags)
        return self.repos[repo_id]

    def reset(self):
        self.log.clear()
        self.drop_at.clear()
        self.failures.clear()
        self.corrupt.clear()
        self.fail_after_drop = self.failing = None

    def fetched(self) -> dict[str, int]:
        """Body bytes sent per file path, over all GET requests logged."""
        out = {}
        for r in self.log:
            if r.method == "GET" and r.sent:
                out[r.path] = out.get(r.path, 0) + r.sent
        return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_HEAD(self):
        self.serve(body=False)

    def do_GET(self):
        self.serve(body=True)

    def logged(self, status, repo, path) -> Request:
        request = Request(
            self.command, repo, path, status, self.headers.get("Range"), 0, self.headers.get("Authorization")
        )
        self.server.hub.log.append(request)
        return request

    def reply(self, status: int, headers: dict, repo=None, path=None):
        """An answer without a body (errors)."""
        self.logged(status, repo, path or self.path)
        self.send_response(status)
        for k, v in {**headers, "Content-Length": "0"}.items():
            self.send_header(k, v)
        self.end_headers()

    def serve(self, body: bool):
        hub: HubServer = self.server.hub
        if hub.failing:
            return self.reply(hub.failing, {})
        m = RESOLVE.fullmatch(urlsplit(self.path).path)
        if not m:
            return self.reply(404, {})
        repo_id, revision, path = m["repo"], unquote(m["revision"]), unquote(m["path"])
        if failures := hub.failures.get((self.command, path)):
            failure = failures.pop(0)
            if failure == RESET:
                return self.reset(repo_id, path)
            if failure == STALL:
                return self.stall(repo_id, path)
            return self.reply(failure, {}, repo_id, path)
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self.reply(404, {"X-Error-Code": "RepoNotFound"}, repo_id, path)
        if repo.token and self.headers.get("Authorization") != f"Bearer {repo.token}":
            return self.reply(401, {"X-Error-Code": "GatedRepo", "X-Error-Message": "gated"}, repo_id, path)
        if revision not in ("main", repo.commit):
            return self.reply(404, {"X-Error-Code": "RevisionNotFound"}, repo_id, path)
        headers = {"X-Repo-Commit": repo.commit}
        if path not in repo.files:
            return self.reply(404, {**headers, "X-Error-Code": "EntryNotFound"}, repo_id, path)

        file = repo.files[path]
        size = file.stat().st_size
        start, status = 0, 200
        if rng := self.headers.get("Range"):
            start, status = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]), 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        headers.update({"ETag": f'"{repo.etags[path]}"', "Accept-Ranges": "bytes", "Content-Length": str(size - start)})
        # Logged, and bytes counted, before they are sent: a client that has them finds them in the log.
        request = self.logged(status, repo_id, path)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            limit = hub.drop_at.pop(path, None)
            with open(file, "rb") as f:
                f.seek(start)
                while chunk := f.read(1 << 16):
                    if path in hub.corrupt and start + request.sent <= size // 2 < start + request.sent + len(chunk):
                        at = size // 2 - start - request.sent
                        chunk = chunk[:at] + bytes([chunk[at] ^ 0xFF]) + chunk[at + 1 :]
                    if limit is not None and request.sent + len(chunk) >= limit:
                        chunk = chunk[: limit - request.sent]
                        request.sent = limit
                        hub.failing = hub.fail_after_drop
                        self.wfile.write(chunk)
                        self.wfile.flush()
                        self.connection.shutdown(socket.SHUT_RDWR)  # cut mid-body: the client sees a short read
                        self.close_connection = True
                        break
                    request.sent += len(chunk)
                    self.wfile.write(chunk)

    def reset(self, repo, path):
        self.logged(RESET, repo, path)
        # Closing with a zero linger time sends an RST instead of a FIN: the client's read fails with ECONNRESET.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def stall(self, repo, path):
        self.logged(STALL, repo, path)
        select.select([self.connection], [], [], STALL_LIMIT_S)  # readable once the client hangs up
        self.close_connection = True
