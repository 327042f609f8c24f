"""Serve an origin folder over HTTP, the way a CDN expects to pull from it.

Standard library only (`http.server.ThreadingHTTPServer` in a daemon thread):
for local development, tests, and a CDN that pulls from this process. GET and
HEAD, files only (no directory listings), paths checked by
`validate_origin_path` and resolved inside the root.

Caching: index and manifest files change in place, so they are `no-cache` (a
CDN revalidates every time, cheaply, with the strong ETag); files under
`artifacts/` are content-addressed and never change, so they are cached for a
year as `immutable`.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes
import socket
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from releasecontrol_server.origin import validate_origin_path

__all__ = ["IMMUTABLE_CACHE_CONTROL", "REVALIDATE_CACHE_CONTROL", "OriginHttpServer"]

log = logging.getLogger(__name__)

IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
REVALIDATE_CACHE_CONTROL = "no-cache"
IMMUTABLE_PREFIX = "artifacts/"

# Set explicitly: the system's mime.types varies, and browsers refuse module
# scripts served with the wrong type.
_CONTENT_TYPES = {
    ".json": "application/json",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".wasm": "application/wasm",
}
_DEFAULT_CONTENT_TYPE = "application/octet-stream"
# An idle keep-alive connection is closed after this long.
_IDLE_TIMEOUT_SECONDS = 30.0


def content_type(path: str) -> str:
    """The Content-Type for `path`, from its extension; octet-stream when unknown."""
    suffix = Path(path).suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or _DEFAULT_CONTENT_TYPE


def cache_control(path: str) -> str:
    """Immutable for content-addressed artifacts; revalidate for everything else."""
    return (
        IMMUTABLE_CACHE_CONTROL if path.startswith(IMMUTABLE_PREFIX) else REVALIDATE_CACHE_CONTROL
    )


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison of an If-None-Match header value against `etag`."""
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*":
            return True
        tag = tag.removeprefix("W/")
        if tag == etag:
            return True
    return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ReleaseControlOrigin"
    sys_version = ""
    timeout = _IDLE_TIMEOUT_SECONDS
    # TCP_NODELAY: the headers and the body go out in separate writes, and on a
    # keep-alive connection Nagle's algorithm holds the body back until the
    # client's delayed ACK (~40 ms per request for a CDN or python-tuf pulling
    # over one connection; benchmarks/hosts measured 45 ms -> 2 ms).
    disable_nagle_algorithm = True
    root: Path  # set on the subclass made per server

    def do_GET(self) -> None:
        self._serve(send_body=True)

    def do_HEAD(self) -> None:
        self._serve(send_body=False)

    def _refuse_method(self) -> None:
        self._plain(HTTPStatus.METHOD_NOT_ALLOWED, "only GET and HEAD\n", allow="GET, HEAD")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _serve(self, *, send_body: bool) -> None:
        relative = self._relative_path()
        file = self._resolve(relative) if relative is not None else None
        if relative is None or file is None:
            self._plain(HTTPStatus.NOT_FOUND, "not found\n", send_body=send_body)
            return
        try:
            data = file.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
            self._plain(HTTPStatus.NOT_FOUND, "not found\n", send_body=send_body)
            return
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        if etag_matches(self.headers.get("If-None-Match", ""), etag):
            self.send_response(HTTPStatus.NOT_MODIFIED)
            self.send_header("ETag", etag)
            self.send_header("Cache-Control", cache_control(relative))
            self.end_headers()
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type(relative))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", cache_control(relative))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def _relative_path(self) -> str | None:
        """The checked origin path the request names, or None when it names none."""
        raw = urlsplit(self.path).path
        if not raw.startswith("/"):
            return None
        try:
            relative = validate_origin_path(unquote(raw[1:], errors="strict"))
        except (UnicodeDecodeError, ValueError):
            return None
        # Hidden files are the temporary files of an unfinished atomic write.
        if any(segment.startswith(".") for segment in relative.split("/")):
            return None
        return relative

    def _resolve(self, relative: str) -> Path | None:
        """The file for `relative` if it is a regular file inside the root (symlinks included)."""
        try:
            file = self.root.joinpath(*relative.split("/")).resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if not file.is_relative_to(self.root) or not file.is_file():
            return None
        return file

    def _plain(
        self, status: HTTPStatus, text: str, *, send_body: bool = True, allow: str = ""
    ) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", REVALIDATE_CACHE_CONTROL)
        if allow:
            self.send_header("Allow", allow)
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("origin http %s " + format, self.address_string(), *args)


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a CDN or a host opening a few
    # connections at once overflows it, and each dropped SYN costs the client a
    # 1 s retransmission (found by benchmarks/hosts).
    request_queue_size = 128


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class OriginHttpServer:
    """Serves the files under `root` on host:port from a daemon thread."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 4100) -> None:
        self.root = Path(root)
        self.host = host
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and start serving; port 0 picks a free port. Raises OSError if the bind fails."""
        if self._server is not None:
            raise RuntimeError("the origin HTTP server is already running")
        root = self.root.resolve()
        handler = type("OriginHandler", (_Handler,), {"root": root})
        server_class = _IPv6Server if ":" in self.host else _Server
        server = server_class((self.host, self._requested_port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"origin-http-{self.port}",
            daemon=True,
        )
        self._thread.start()
        log.info("origin http serving root=%s url=%s", root, self.url)

    @property
    def port(self) -> int:
        """The bound port once started (the real one when 0 was asked), else the configured one."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """The base URL, ending in `/`: http://127.0.0.1:PORT/."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stop serving and close the socket; safe to call twice."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None
        log.info("origin http stopped")

    def __enter__(self) -> OriginHttpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
