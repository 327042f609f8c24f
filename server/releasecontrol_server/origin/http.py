"""Serve an origin folder over HTTP, the way a CDN expects to pull from it.

For local development, tests, and a CDN that pulls from this process. GET and
HEAD, files only (no directory listings), paths checked by
`validate_origin_path` and resolved inside the root (a symlink is followed only
when it ends inside it; hidden files, the temporary files of an unfinished
atomic write, are never served).

Caching: index and manifest files change in place, so they are `no-cache` (a
CDN revalidates every time, cheaply, with the strong ETag, the file's SHA-256);
files under `artifacts/` (content-addressed) and `roots/` (a root version is
never rewritten) never change, so they are cached for a year as `immutable`.

Every answer says `Access-Control-Allow-Origin: *`: the files are public, and a
page on another origin (a browser host, docs/host-protocol.md 8) must be able
to read the index files with fetch() and to load module scripts, which browsers
fetch in CORS mode (Subresource Integrity needs it too).

How it serves: uvicorn in a daemon thread with its own event loop, HTTP/1.1
with keep-alive (and pipelining), parsed by `h11`; the files are answered by a
small ASGI app here (Starlette's StaticFiles cannot give this ETag, these
Cache-Control values or the path rules), each file read whole per request:
one read, so the ETag is always the hash of the bytes sent.

h11 rather than uvicorn's httptools protocol: uvicorn bounds an unfinished
request head only with h11 (`h11_max_incomplete_event_size`, here 16 KiB),
while under httptools a header that never ends grows without bound. h11
refuses a request line or field it cannot parse, obs-fold at the start of a
head (a later one is joined to its field), empty lines before a request, two
Host fields, an HTTP/1.1 request without Host, two different Content-Lengths
and control characters in a value: uvicorn answers 400 and closes. On top, the
app refuses, each with a close: a head over 16 KiB that arrived in one read
(431), more than 100 header fields (431), a request with a body
(`Content-Length` above 0 or any `Transfer-Encoding`: 400), a target that is
not an absolute path (400) and a version other than 1.0/1.1 (505); other
methods answer 405 and keep the connection.

Cost: 360-430 us of the origin's CPU per kept-alive GET of a small file
(uvicorn and h11 ~300, the app ~85: `realpath`, a read and a SHA-256), 580-700
us on a new connection. The server of our own it replaces (llhttp through
`httptools`, its own framing and an in-memory file cache, ~660 lines) cost
105-130 / 285-310 us. The targets hold: hosts cold load / python-tuf 0.46 at
1,000 features and 0.58 at 10,000 (target 0.8), browser verified / baseline
1.17 (target 1.3); both are ratios against baselines fetched from the same
origin, so they hide what the origin costs. If that cost matters: uvicorn's
httptools protocol saves ~100 us (but bounds no head), and a cache of the
app's answers keyed by the file's stat ~75 us.

A connection that sends nothing for 30 s is closed (uvicorn itself times out
only the wait between requests; `_Protocol` also times out a connection before
and within its first request). While a client does not read its answers, its
further requests are not parsed (h11 pauses, uvicorn waits for the socket to
drain). The listen backlog is 128 (socketserver's 5 cost the hosts benchmark a
1 s SYN retransmission per overflow), and `TCP_NODELAY` is set on every
connection (uvicorn writes a head, then a body: without it, 40 ms per answer).
No access log, no Server header naming versions; uvicorn logs a warning for
each request h11 refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import mimetypes
import os
import socket
import stat
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from releasecontrol_server.origin import validate_origin_path

__all__ = [
    "IMMUTABLE_CACHE_CONTROL",
    "REVALIDATE_CACHE_CONTROL",
    "OriginHttpServer",
    "cache_control",
    "content_type",
    "etag_matches",
]

log = logging.getLogger(__name__)

IMMUTABLE_CACHE_CONTROL = "public, max-age=31536000, immutable"
REVALIDATE_CACHE_CONTROL = "no-cache"
IMMUTABLE_PREFIXES = ("artifacts/", "roots/")

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
SERVER_NAME = "ReleaseControlOrigin"
# A connection that sends nothing for this long is closed.
_IDLE_TIMEOUT_SECONDS = 30.0
# socketserver's default listen backlog is 5: a CDN or a host opening a few
# connections at once overflows it, and each dropped SYN costs the client a
# 1 s retransmission (found by the hosts benchmark).
_BACKLOG = 128
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100


def content_type(path: str) -> str:
    """The Content-Type for `path`, from its extension; octet-stream when unknown."""
    suffix = Path(path).suffix.lower()
    if suffix in _CONTENT_TYPES:
        return _CONTENT_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(path, strict=False)
    return guessed or _DEFAULT_CONTENT_TYPE


def cache_control(path: str) -> str:
    """Immutable for content-addressed artifacts and roots; revalidate for everything else."""
    return (
        IMMUTABLE_CACHE_CONTROL if path.startswith(IMMUTABLE_PREFIXES) else REVALIDATE_CACHE_CONTROL
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


def _relative_path(raw_path: bytes) -> str | None:
    """The checked origin path a request's path (before any query) names, or None."""
    raw = raw_path.decode("latin-1").partition("#")[0]
    try:
        relative = validate_origin_path(unquote(raw[1:], errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return None
    # Hidden files are the temporary files of an unfinished atomic write.
    if relative.startswith(".") or "/." in relative:
        return None
    return relative


_Headers = list[tuple[bytes, bytes]]
_CORS = (b"access-control-allow-origin", b"*")
_CLOSE = (b"connection", b"close")


def _plain(status: int, text: str, *extra: tuple[bytes, bytes]) -> tuple[int, _Headers, bytes]:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        (b"cache-control", b"no-cache"),
        _CORS,
        *extra,
    ]
    return status, headers, body


class _Origin:
    """The ASGI app: answers GET and HEAD with the regular files under `root`."""

    def __init__(self, root: Path) -> None:
        self._prefix = str(root).rstrip(os.sep) + os.sep

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; nothing else reaches here
            return
        if scope["raw_path"].startswith(b"/artifacts/"):
            # An artifact may be large: read and hashed on a worker thread, so index files
            # (small, read inline) are answered meanwhile; the body is still held whole.
            status, headers, body = await asyncio.to_thread(self._answer, scope)
        else:
            status, headers, body = self._answer(scope)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _answer(self, scope: dict[str, Any]) -> tuple[int, _Headers, bytes]:
        if scope["http_version"] not in ("1.0", "1.1"):
            return _plain(505, "only HTTP/1.0 and 1.1\n", _CLOSE)
        fields: _Headers = scope["headers"]
        if len(fields) > MAX_HEADER_FIELDS:
            return _plain(431, f"more than {MAX_HEADER_FIELDS} header fields\n", _CLOSE)
        if_none_match = ""
        size = len(scope["raw_path"]) + len(scope["query_string"])
        for name, value in fields:
            size += len(name) + len(value)
            if name == b"if-none-match":
                if_none_match = value.decode("latin-1")
            elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                # No request of ours has a body: one is refused, with a close.
                return _plain(400, "request bodies are not accepted\n", _CLOSE)
        if size > MAX_HEAD_BYTES:  # h11 bounds a head arriving in pieces, this one in one read
            return _plain(431, f"the request head is over {MAX_HEAD_BYTES} bytes\n", _CLOSE)
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            return _plain(405, "only GET and HEAD\n", (b"allow", b"GET, HEAD"))
        raw_path: bytes = scope["raw_path"]
        if not raw_path.startswith(b"/"):
            return _plain(400, "the request target is not an absolute path\n", _CLOSE)
        relative = _relative_path(raw_path)
        data = self._read(relative) if relative is not None else None
        if relative is None or data is None:
            return _plain(404, "not found\n")
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        caching = (b"cache-control", cache_control(relative).encode("ascii"))
        etag_field = (b"etag", etag.encode("ascii"))
        if if_none_match and etag_matches(if_none_match, etag):
            return 304, [etag_field, caching, _CORS], b""
        headers = [
            (b"content-type", content_type(relative).encode("latin-1")),
            (b"content-length", b"%d" % len(data)),
            etag_field,
            caching,
            (b"x-content-type-options", b"nosniff"),
            _CORS,
        ]
        return 200, headers, data  # uvicorn sends no body for HEAD

    def _read(self, relative: str) -> bytes | None:
        """The bytes of the regular file at checked path `relative`, or None."""
        # Symlinks are followed only when they end inside the root, and never to a hidden file.
        real = os.path.realpath(self._prefix + relative)
        if not real.startswith(self._prefix) or "/." in real[len(self._prefix) - 1 :]:
            return None
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):  # never open a FIFO or a device
                return None
            with open(real, "rb") as handle:
                if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                    return None
                return handle.read()
        except (OSError, ValueError):
            return None


class _Protocol(H11Protocol):
    """uvicorn's h11 protocol with TCP_NODELAY, and closing a connection that sends nothing
    for the idle timeout before or within a request too (uvicorn times out only the wait
    between requests)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # asyncio sets TCP_NODELAY only on sockets made with proto IPPROTO_TCP, and an accepted
        # socket has proto 0: without it an answer's body waits 40 ms for a delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._wait_idle()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._wait_idle()

    def send_400_response(self, msg: str) -> None:
        # h11 refused what followed a request (a malformed chunked body) before the app answered
        # it: the app's answer must not follow this one (h11 would raise, uvicorn log it).
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
        super().send_400_response(msg)

    def _wait_idle(self) -> None:
        # While an answer is under way, uvicorn arms its own timer once it is sent.
        if (
            self.timeout_keep_alive_task is None
            and (self.cycle is None or self.cycle.response_complete)
            and not self.transport.is_closing()
        ):
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )


class OriginHttpServer:
    """Serves the files under `root` on host:port from a daemon thread."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 4100) -> None:
        self.root = Path(root)
        self.host = host
        self._requested_port = port
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._port = port

    def start(self) -> None:
        """Bind and start serving; port 0 picks a free port. Raises OSError if the bind fails."""
        if self._loop is not None:
            raise RuntimeError("the origin HTTP server is already running")
        root = self.root.resolve()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server(
            (self.host, self._requested_port), family=family, backlog=_BACKLOG
        )
        self._port = int(sock.getsockname()[1])
        config = uvicorn.Config(
            _Origin(root),
            http=_Protocol,
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,  # the process's logging stays as it is
            access_log=False,
            server_header=False,
            proxy_headers=False,
            headers=[("server", SERVER_NAME)],
            timeout_keep_alive=_IDLE_TIMEOUT_SECONDS,  # type: ignore[arg-type]  # a float works
            backlog=_BACKLOG,
            h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        )
        server = uvicorn.Server(config)
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []
        serving: list[asyncio.Task[None]] = []

        async def serve() -> None:
            task = loop.create_task(server.serve(sockets=[sock]))
            serving.append(task)
            try:
                while not server.started and not task.done():
                    await asyncio.sleep(0.005)
                ready.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await task  # until stop() cancels it
            finally:
                # A hard stop, at once (uvicorn's own waits 0.1-0.2 s even with nothing to
                # finish): the listener and every connection closed, unanswered requests ended,
                # and the transports given a turn to close their sockets before the loop goes.
                for listener in getattr(server, "servers", []):
                    listener.close()
                for connection in list(server.server_state.connections):
                    connection.transport.abort()
                for request in list(server.server_state.tasks):
                    request.cancel()
                await asyncio.gather(*server.server_state.tasks, return_exceptions=True)
                for _ in range(3):
                    await asyncio.sleep(0)

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(serve())
            except BaseException as exc:  # reported to start(), or ends the thread
                failure.append(exc)
            finally:
                ready.set()
                loop.close()

        self._server = server
        self._serving = serving
        self._loop = loop
        self._sock = sock
        self._thread = threading.Thread(target=run, name=f"origin-http-{self._port}", daemon=True)
        self._thread.start()
        ready.wait()
        if not server.started:
            self._thread.join()
            sock.close()
            self._loop = self._thread = self._server = None
            raise failure[0] if failure else RuntimeError("the origin HTTP server did not start")
        log.info("origin http serving root=%s url=%s", root, self.url)

    @property
    def port(self) -> int:
        """The bound port once started (the real one when 0 was asked), else the configured one."""
        return self._port if self._loop is not None else self._requested_port

    @property
    def url(self) -> str:
        """The base URL, ending in `/`: http://127.0.0.1:PORT/."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def stop(self) -> None:
        """Stop serving and close the socket and every connection; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None:
            return
        for task in self._serving:
            loop.call_soon_threadsafe(task.cancel)
        if thread is not None:
            thread.join()
        self._sock.close()
        self._loop = self._thread = self._server = None
        log.info("origin http stopped")

    def __enter__(self) -> OriginHttpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
