"""A stand-in for the Hugging Face hub, for tests: serves model repos on 127.0.0.1 the way huggingface_hub downloads
them (HEAD and GET on /{org}/{name}/resolve/{revision}/{path}, with ETag, X-Repo-Commit and Range; no xet headers, so
the plain HTTP path is taken), logs every request with the bytes it sent, and fails on demand."""

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

RESOLVE = re.compile(r"/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<path>.+)")


@dataclass
class Repo:
    files: dict[str, Path]  # path in the repo -> file on disk
    commit: str
    gated: bool = False
    etags: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    method: str
    repo: str | None
    path: str  # the file's path in the repo, or the URL path when it is not a resolve URL
    status: int
    range: str | None
    sent: int  # body bytes


class HubServer:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.log: list[Request] = []
        self.drop_at: dict[str, int] = {}  # file path -> bytes to send before cutting the connection (once)
        self.fail_after_drop: int | None = None  # HTTP status every request gets once a connection was cut
        self.failing: int | None = None
        self.fail_once: dict[tuple[str, str], int] = {}  # (method, file path) -> HTTP status of its next answer
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.hub = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()

    def add_repo(self, repo_id: str, files: dict[str, Path], gated: bool = False) -> Repo:
        commit = hashlib.sha1(repo_id.encode()).hexdigest()
        etags = {path: hashlib.sha256(Path(file).read_bytes()).hexdigest() for path, file in files.items()}
        self.repos[repo_id] = Repo({k: Path(v) for k, v in files.items()}, commit, gated, etags)
        return self.repos[repo_id]

    def reset(self):
        self.log.clear()
        self.drop_at.clear()
        self.fail_once.clear()
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

    def reply(self, status: int, headers: dict, repo=None, path=None):
        """An answer without a body (errors)."""
        self.server.hub.log.append(Request(self.command, repo, path or self.path, status, self.headers.get("Range"), 0))
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
        if status := hub.fail_once.pop((self.command, path), None):
            return self.reply(status, {}, repo_id, path)
        repo = hub.repos.get(repo_id)
        if repo is None:
            return self.reply(404, {"X-Error-Code": "RepoNotFound"}, repo_id, path)
        if repo.gated and "Authorization" not in self.headers:
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
        request = Request(self.command, repo_id, path, status, rng, 0)
        hub.log.append(request)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if body:
            limit = hub.drop_at.pop(path, None)
            with open(file, "rb") as f:
                f.seek(start)
                while chunk := f.read(1 << 16):
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
