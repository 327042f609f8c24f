"""Serve an origin folder over HTTP, the way a CDN expects to pull from it.

For local development, tests, and a CDN that pulls from this process. GET and
HEAD, files only (no directory listings), paths checked by
`validate_origin_path` and resolved inside the root.

Caching: index and manifest files change in place, so they are `no-cache` (a
CDN revalidates every time, cheaply, with the strong ETag); files under
`artifacts/` (content-addressed) and `roots/` (a root version is never
rewritten) never change, so they are cached for a year as `immutable`.

Every answer says `Access-Control-Allow-Origin: *`: the files are public, and a
page on another origin (a browser host, docs/host-protocol.md 8) must be able
to read the index files with fetch() and to load module scripts, which browsers
fetch in CORS mode (Subresource Integrity needs it too).

How it serves: one asyncio event loop in a daemon thread, HTTP/1.1 with
keep-alive (and pipelining); request heads are parsed by llhttp (Node's C
parser, through MagicStack's `httptools`), answers written by this module. The
hosts benchmark found the standard library's `ThreadingHTTPServer` spending
~0.3 ms of CPU per request on a kept-alive connection and ~0.65 ms on a new one
(a thread per connection, `email`-based header parsing, `realpath` on every
request), more than the client's verification of the file; h11 (pure Python)
0.23-0.4 ms. Now ~0.1 ms, and serving it as a raw ASGI app with uvicorn
(httptools) cost 0.17-0.21 ms (its Task and ASGI messages per request), and
uvicorn bounds no request head with httptools. Here a request costs
one `stat` when the file is in memory: files (up to 4 MiB each, 64 MiB in all)
are kept with their ETag and response headers, keyed by the file's inode,
size, mtime and ctime, and only once their ctime is 2 s old, so a file changed
within the clock's granularity is never mistaken for the one cached (a change
always moves ctime, which cannot be set back). Larger files are read per
request, in the loop.

Limits: a request head (request line and headers) of at most 16 KiB and 100
header fields. A request head ends at its first empty line (no request may
have a body), so llhttp is handed exactly one head at a time, parsed as it
arrives, and never more than 16 KiB of an incomplete one (llhttp itself bounds
no head size). Request bodies are refused (`Content-Length` above 0 or any
`Transfer-Encoding` answers 400 and closes); anything llhttp refuses (including
obs-fold lines, two Content-Lengths, control characters in a value), an
HTTP/1.1 request without exactly one Host, and a version other than 1.0/1.1
answer 400 (505 for HTTP/2 and above, 431 for a head too large) and close.
HTTP/1.0 requests and `Connection: close` get one answer and a close. A
connection idle for 30 s is closed; while a client does not read its answers,
its further requests are not parsed (no unbounded buffering). Every answer goes
out in one write with `TCP_NODELAY` set, and the listen backlog is 128.
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
import time
from collections import OrderedDict
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

import httptools

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
_CORS = b"Access-Control-Allow-Origin: *\r\n"
SERVER_NAME = "ReleaseControlOrigin"
SERVER_NAME_BYTES = SERVER_NAME.encode("ascii")
# An idle keep-alive connection is closed after this long.
_IDLE_TIMEOUT_SECONDS = 30.0
# socketserver's default listen backlog is 5: a CDN or a host opening a few
# connections at once overflows it, and each dropped SYN costs the client a
# 1 s retransmission (found by the hosts benchmark).
_BACKLOG = 128
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADER_FIELDS = 100
# Files kept in memory: each at most this large, all together at most this much.
CACHE_FILE_BYTES = 4 << 20
CACHE_TOTAL_BYTES = 64 << 20
# A file is kept only once its ctime is this old: a change within the file
# system clock's granularity could otherwise leave every stamp field equal.
_SETTLED_SECONDS = 2.0


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


class _BadRequest(Exception):
    def __init__(self, status: HTTPStatus, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


@dataclass(frozen=True)
class _File:
    """A file as served: its bytes, ETag and the headers of a 200 and of a 304."""

    stamp: tuple[int, int, int, int, int]
    data: bytes
    etag: str
    ok_headers: bytes  # header lines, each ending in CRLF
    not_modified_headers: bytes


def _stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _Files:
    """Regular files inside `root`, read through a small in-memory cache (see the module doc).

    Used only from the event loop's thread.
    """

    def __init__(self, root: Path) -> None:
        self._root = str(root)
        self._prefix = self._root.rstrip(os.sep) + os.sep
        self._cache: OrderedDict[str, _File] = OrderedDict()
        self._cached_bytes = 0

    def get(self, relative: str) -> _File | None:
        """The file at checked origin path `relative`, or None when it is not one to serve."""
        path = self._prefix + relative
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        stamp = _stamp(st)
        cached = self._cache.get(relative)
        if cached is not None:
            if cached.stamp == stamp:
                self._cache.move_to_end(relative)
                return cached
            self._forget(relative)
        if not stat.S_ISREG(st.st_mode):
            return None
        # Symlinks are followed only when they end inside the root.
        real = os.path.realpath(path)
        if not real.startswith(self._prefix):
            return None
        try:
            with open(real, "rb") as handle:
                st = os.fstat(handle.fileno())
                if not stat.S_ISREG(st.st_mode):
                    return None
                data = handle.read()
        except OSError:
            return None
        file = _render(relative, _stamp(st), data)
        settled = time.time() - st.st_ctime_ns / 1e9 >= _SETTLED_SECONDS
        if settled and len(data) == st.st_size and len(data) <= CACHE_FILE_BYTES:
            self._cache[relative] = file
            self._cached_bytes += len(data)
            while self._cached_bytes > CACHE_TOTAL_BYTES:
                self._forget(next(iter(self._cache)))
        return file

    def _forget(self, relative: str) -> None:
        self._cached_bytes -= len(self._cache.pop(relative).data)


def _render(relative: str, stamp: tuple[int, int, int, int, int], data: bytes) -> _File:
    etag = f'"{hashlib.sha256(data).hexdigest()}"'
    etag_bytes = etag.encode("ascii")
    caching = cache_control(relative).encode("ascii")
    ok = b"".join(
        (
            b"Content-Type: %s\r\n" % content_type(relative).encode("latin-1"),
            b"Content-Length: %d\r\n" % len(data),
            b"ETag: %s\r\n" % etag_bytes,
            b"Cache-Control: %s\r\n" % caching,
            b"X-Content-Type-Options: nosniff\r\n",
            _CORS,
        )
    )
    not_modified = b"ETag: %s\r\nCache-Control: %s\r\n%s" % (etag_bytes, caching, _CORS)
    return _File(stamp, data, etag, ok, not_modified)


class _Clock:
    """The Date header's value, formatted at most once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode("ascii")
        return self._value


class _Connection(asyncio.Protocol):
    """One client connection: llhttp parses its requests, one head at a time, in order;
    each answer goes in one write."""

    def __init__(self, site: _Site) -> None:
        self._site = site
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._buffer = bytearray()  # received and not yet answered: a head, then what follows
        self._fed = 0  # bytes of the buffer's incomplete head already handed to the parser
        self._paused = False
        self._closing = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._request = _NO_REQUEST

    # -- asyncio callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._site.connections.add(self)
        self._last_active = self._site.loop.time()
        self._idle_timer = self._site.loop.call_later(_IDLE_TIMEOUT_SECONDS, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._site.connections.discard(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._transport = None
        self._closing = True

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        self._last_active = self._site.loop.time()
        self._buffer += data
        self._process()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    def pause_writing(self) -> None:
        # The client is not reading its answers: stop reading its requests.
        self._paused = True
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if self._transport is not None and not self._closing:
            self._transport.resume_reading()
            self._process()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- llhttp callbacks (during feed_data) ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._request = _Request()
        self._request.begun = True

    def on_url(self, url: bytes) -> None:
        self._request.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._request
        request.fields += 1
        if request.fields > MAX_HEADER_FIELDS:
            raise _BadRequest(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"more than {MAX_HEADER_FIELDS} header fields\n",
            )
        key = name.lower()
        if key == b"if-none-match":
            request.if_none_match = value.decode("latin-1")
        elif key == b"host":
            request.hosts += 1
        elif key == b"transfer-encoding" or (key == b"content-length" and value != b"0"):
            # No request of ours has a body: one is refused, with a close.
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "request bodies are not accepted\n")

    def on_headers_complete(self) -> None:
        parser = self._parser
        request = self._request
        version = parser.get_http_version()
        if version == "0.9":  # llhttp's word for a request line without a version
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "malformed request: no HTTP version\n")
        if version not in ("1.0", "1.1"):
            raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and 1.1\n")
        if request.hosts > 1 or (version == "1.1" and request.hosts == 0):
            # RFC 9112 3.2: exactly one Host in an HTTP/1.1 request.
            raise _BadRequest(HTTPStatus.BAD_REQUEST, "an HTTP/1.1 request needs one Host\n")
        request.method = parser.get_method()
        # HTTP/1.0 connections are closed after one answer, kept-alive or not.
        request.keep_alive = version == "1.1" and parser.should_keep_alive()

    def on_message_complete(self) -> None:
        self._request.complete = True

    # -- requests ------------------------------------------------------------------------------

    def _check_idle(self) -> None:
        if self._transport is None:
            return
        idle = self._site.loop.time() - self._last_active
        if idle >= _IDLE_TIMEOUT_SECONDS:
            self._transport.close()
        else:
            self._idle_timer = self._site.loop.call_later(
                _IDLE_TIMEOUT_SECONDS - idle, self._check_idle
            )

    def _process(self) -> None:
        """Answer each complete request head in the buffer, in order, while the client reads.

        A request head ends at its first empty line (requests with a body are
        refused), so llhttp is handed exactly one head at a time, and never more
        than MAX_HEAD_BYTES of an incomplete one: no head over that is accepted,
        however it arrives, and requests are parsed only as fast as they are answered.
        """
        buffer = self._buffer
        while buffer and not self._paused and not self._closing:
            end = buffer.find(b"\r\n\r\n", max(0, self._fed - 3), MAX_HEAD_BYTES)
            if end < 0:
                if len(buffer) >= MAX_HEAD_BYTES:
                    self._head_too_large()
                    return
                # Parsed as it arrives, so a malformed head is refused at once.
                if self._feed(bytes(buffer[self._fed :])):
                    self._fed = len(buffer)
                return
            end += 4
            fed = self._feed(bytes(buffer[self._fed : end]))
            del buffer[:end]
            self._fed = 0
            if not fed:
                return
            request = self._request
            self._request = _NO_REQUEST  # until on_message_begin starts the next one
            if request.complete:
                self._handle(request)
            elif request.begun:  # a head that llhttp says a body follows
                self._fail(HTTPStatus.BAD_REQUEST, "request bodies are not accepted\n")
                return
            # else empty lines before a request (RFC 9112 2.2), skipped

    def _feed(self, data: bytes) -> bool:
        """Hand `data` to llhttp; False when it refused them (and the answer says why)."""
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            cause = exc.__context__
            if isinstance(cause, _BadRequest):
                self._fail(cause.status, cause.text)
            else:
                self._fail(HTTPStatus.BAD_REQUEST, f"malformed request: {exc}\n")
            return False
        return True

    def _head_too_large(self) -> None:
        self._fail(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"the request head is over {MAX_HEAD_BYTES} bytes\n",
        )

    def _fail(self, status: HTTPStatus, text: str) -> None:
        self._answer_plain(status, text, send_body=True, close=True)

    def _handle(self, request: _Request) -> None:
        method = request.method
        close = not request.keep_alive
        if method == b"GET":
            self._serve(request, send_body=True, close=close)
        elif method == b"HEAD":
            self._serve(request, send_body=False, close=close)
        else:
            self._answer_plain(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "only GET and HEAD\n",
                send_body=True,
                close=close,
                allow="GET, HEAD",
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "origin http %s %s", method.decode("latin-1"), request.target.decode("latin-1")
            )

    def _serve(self, request: _Request, *, send_body: bool, close: bool) -> None:
        relative = _relative_path(request.target)
        file = self._site.files.get(relative) if relative is not None else None
        if file is None:
            self._answer_plain(
                HTTPStatus.NOT_FOUND, "not found\n", send_body=send_body, close=close
            )
            return
        if request.if_none_match and etag_matches(request.if_none_match, file.etag):
            self._respond(_NOT_MODIFIED_LINE, file.not_modified_headers, b"", close)
            return
        self._respond(_OK_LINE, file.ok_headers, file.data if send_body else b"", close)

    def _answer_plain(
        self, status: HTTPStatus, text: str, *, send_body: bool, close: bool, allow: str = ""
    ) -> None:
        body = text.encode()
        headers = (
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\n"
            b"Cache-Control: no-cache\r\n" % len(body)
        )
        if allow:
            headers += b"Allow: %s\r\n" % allow.encode("latin-1")
        status_line = b"HTTP/1.1 %d %s\r\n" % (status.value, status.phrase.encode("ascii"))
        self._respond(status_line, headers, body if send_body else b"", close)

    def _respond(self, status_line: bytes, headers: bytes, body: bytes, close: bool) -> None:
        """Send one answer in one write; with `close`, say so and close once it is sent."""
        transport = self._transport
        if transport is None:
            return
        head = b"%sServer: %s\r\nDate: %s\r\n%s%s\r\n" % (
            status_line,
            SERVER_NAME_BYTES,
            self._site.clock.date(),
            headers,
            b"Connection: close\r\n" if close else b"",
        )
        if not body:
            transport.write(head)
        elif len(body) <= 64 * 1024:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        if close:
            self._closing = True
            transport.close()  # after the buffered answer is sent


class _Request:
    """What one request's head said, as llhttp's callbacks gave it."""

    __slots__ = (
        "begun",
        "complete",
        "fields",
        "hosts",
        "if_none_match",
        "keep_alive",
        "method",
        "target",
    )

    def __init__(self) -> None:
        self.begun = False
        self.complete = False
        self.target = b""
        self.fields = 0
        self.hosts = 0
        self.if_none_match = ""
        self.method = b""
        self.keep_alive = False


_NO_REQUEST = _Request()  # never changed: callbacks change only what on_message_begin made
_OK_LINE = b"HTTP/1.1 200 OK\r\n"
_NOT_MODIFIED_LINE = b"HTTP/1.1 304 Not Modified\r\n"


def _relative_path(target: bytes) -> str | None:
    """The checked origin path a request target names, or None when it names none."""
    raw = target.decode("latin-1")
    for mark in ("?", "#"):
        raw = raw.partition(mark)[0]
    if not raw.startswith("/"):
        return None
    try:
        relative = validate_origin_path(unquote(raw[1:], errors="strict"))
    except (UnicodeDecodeError, ValueError):
        return None
    # Hidden files are the temporary files of an unfinished atomic write.
    if relative.startswith(".") or "/." in relative:
        return None
    return relative


class _Site:
    """What every connection of one server shares; used only from the loop's thread."""

    def __init__(self, root: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.files = _Files(root)
        self.clock = _Clock()
        self.loop = loop
        self.connections: set[_Connection] = set()


class OriginHttpServer:
    """Serves the files under `root` on host:port from a daemon thread."""

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 4100) -> None:
        self.root = Path(root)
        self.host = host
        self._requested_port = port
        self._socket: socket.socket | None = None
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
        sock.setblocking(False)
        self._port = int(sock.getsockname()[1])
        loop = asyncio.new_event_loop()
        site = _Site(root, loop)
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    loop.create_server(lambda: _Connection(site), sock=sock, backlog=_BACKLOG)
                )
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                ready.set()
                return
            site_server.append(server)
            ready.set()
            loop.run_forever()

        site_server: list[asyncio.Server] = []
        self._site = site
        self._servers = site_server
        self._socket = sock
        self._loop = loop
        self._thread = threading.Thread(target=serve, name=f"origin-http-{self._port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            loop.close()
            sock.close()
            self._loop = self._thread = self._socket = None
            raise failure[0]
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

        async def shutdown() -> None:
            for server in self._servers:
                server.close()
            for connection in list(self._site.connections):
                connection.close()
            # Let the aborted transports run their connection_lost and close their sockets.
            for _ in range(3):
                await asyncio.sleep(0)
            for server in self._servers:
                await server.wait_closed()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if thread is not None:
            thread.join()
        loop.close()
        if self._socket is not None:
            self._socket.close()
        self._loop = self._thread = self._socket = None
        log.info("origin http stopped")

    def __enter__(self) -> OriginHttpServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
