"""A local HTTP stand-in for the Hugging Face Hub, for download tests that must not touch the internet.

It serves what `hf_hub_download` (huggingface_hub 0.2x-2.x) needs: HEAD and GET on
`/{org}/{name}/resolve/{revision}/{filename}` with ETag, X-Repo-Commit and Content-Length, and 404s carrying
X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound) like the real Hub. Revisions are branch names or
40-hex commits. Every request is logged in `server.requests`, so a test can assert an offline load sent none.

    def test_x(local_hub):                       # the fixture: server running, HF_ENDPOINT pointed at it
        local_hub.add_folder("org/name", folder)  # files of a folder become the repo's `main`
        rocl_zoo.load("hf-hub:org/name")
        local_hub.go_offline()                    # stop the server, HF_HUB_OFFLINE=1: loads must hit the cache

Use it from another test file with `from hub_server import local_hub  # noqa: F401` (tests/ is on sys.path).
"""
from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest


class HubServer:
    """Repos held in memory: {repo_id: {"refs": {branch: commit}, "commits": {commit: {filename: bytes}}}}."""

    def __init__(self):
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self._httpd = None
        self._thread = None

    # -------------------------------------------------------------------- content

    def add_files(self, repo_id: str, files: dict[str, bytes], revision: str = "main") -> str:
        """Commit `files` as the whole content of branch `revision`; returns the 40-hex commit id."""
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        h = hashlib.sha1(repo_id.encode() + revision.encode())
        for name in sorted(files):
            h.update(name.encode() + hashlib.sha256(files[name]).digest())
        commit = h.hexdigest()
        repo["commits"][commit] = dict(files)
        repo["refs"][revision] = commit
        return commit

    def add_folder(self, repo_id: str, folder, revision: str = "main") -> str:
        """Commit every file of `folder` (not its sub-folders) to branch `revision`."""
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.is_file()}
        return self.add_files(repo_id, files, revision)

    def resolve(self, repo_id: str, revision: str, filename: str):
        """(status, error_code, commit, body)."""
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, "RepoNotFound", None, None
        commit = revision if revision in repo["commits"] else repo["refs"].get(revision)
        if commit is None:
            return 404, "RevisionNotFound", None, None
        body = repo["commits"][commit].get(filename)
        if body is None:
            return 404, "EntryNotFound", commit, None
        return 200, None, commit, body

    # -------------------------------------------------------------------- serving

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self, send_body: bool):
                path = unquote(urlsplit(self.path).path)
                server.requests.append((self.command, path))
                parts = path.strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    status, code, commit, body = server.resolve(repo_id, revision, filename)
                else:  # /api/... and anything else: not a repo we know
                    status, code, commit, body = 404, "RepoNotFound", None, None
                if status != 200:
                    msg = f"{code}: {path}".encode()
                    self.send_response(status)
                    self.send_header("X-Error-Code", code)
                    self.send_header("X-Error-Message", f"{code} for {path}")
                    if commit:
                        self.send_header("X-Repo-Commit", commit)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    if send_body:
                        self.wfile.write(msg)
                    return
                self.send_response(200)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if send_body:
                    self.wfile.write(body)

            def do_HEAD(self):
                self._serve(send_body=False)

            def do_GET(self):
                self._serve(send_body=True)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None


def point_hub_at(monkeypatch, endpoint: str | None, offline: bool, cache_dir) -> None:
    """Point huggingface_hub (which reads these settings at import) at `endpoint`, online or offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", str(cache_dir), raising=False)
    if endpoint is not None:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A running HubServer with huggingface_hub pointed at it (online, private empty cache).

    `local_hub.go_offline()` stops the server and sets HF_HUB_OFFLINE, so later loads must come from the cache.
    """
    server = HubServer().start()
    cache = tmp_path / "hf_cache"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    point_hub_at(monkeypatch, server.url, offline=False, cache_dir=cache)

    def go_offline():
        server.stop()
        point_hub_at(monkeypatch, None, offline=True, cache_dir=cache)

    server.go_offline = go_offline
    server.cache_dir = cache
    yield server
    server.stop()
