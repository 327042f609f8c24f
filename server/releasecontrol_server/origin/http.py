"""Serve an origin folder over HTTP, the way a CDN expects to pull from it.

For local development, tests, and a CDN that pulls from this process. GET and
HEAD, files only (no directory listings), paths checked by
`validate_origin_path` and resolved inside the root.

Caching: index and manifest files change in place, so they are `no-cache` (a
CDN revalidates every time, cheaply, with the strong ETag); files under
`artifacts/` are content-addressed and never change, so they are cached for a
year as `immutable`.

How it serves: one asyncio event loop in a daemon thread, HTTP/1.1 with
keep-alive (and pipelining), parsed and framed by h11 (a sans-IO library). The
hosts benchmark found the standard library's `ThreadingHTTPServer` spending
~0.3 ms of CPU per request on a kept-alive connection and ~0.65 ms on a new one
(a thread per connection, `email`-based header parsing, `realpath` on every
request), more than the client's verification of the file. Here a request costs
one `stat` when the file is in memory: files (up to 4 MiB each, 64 MiB in all)
are kept with their ETag and response headers, keyed by the file's inode,
size, mtime and ctime, and only once their ctime is 2 s old, so a file changed
within the clock's granularity is never mistaken for the one cached (a change
always moves ctime, which cannot be set back). Larger files are read per
request, in the loop.

Limits: a request head (request line and headers) of at most 16 KiB (h11 is
never handed more of an incomplete one) and 100 header fields; request bodies
are refused (`Content-Length` above 0 or any `Transfer-Encoding` answers 400
and closes); anything h11 refuses answers 400 (431 for a head too large) and
closes; a connection idle for 30 s is
closed; while a client does not read its answers, its further requests are not
read (no unbounded buffering). Every answer goes out in one write with
`TCP_NODELAY` set, and the listen backlog is 128.
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

import h11

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
    ok_headers: list[tuple[bytes, bytes]]
    not_modified_headers: list[tuple[bytes, bytes]]


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
    ok = [
        (b"Content-Type", content_type(relative).encode("latin-1")),
        (b"Content-Length", b"%d" % len(data)),
        (b"ETag", etag_bytes),
        (b"Cache-Control", caching),
        (b"X-Content-Type-Options", b"nosniff"),
    ]
    not_modified = [(b"ETag", etag_bytes), (b"Cache-Control", caching)]
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
    """One client connection: h11 parses its requests, in order; each answer goes in one write."""

    def __init__(self, site: _Site) -> None:
        self._site = site
        self._transport: asyncio.Transport | None = None
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._unfed = bytearray()  # received, not yet handed to h11
        self._fed = 0  # handed to h11 and not yet parsed into a request
        self._paused = False
        self._closing = False
        self._last_active = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

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
        self._unfed += data
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
        machine = self._h11
        while not self._paused and not self._closing:
            if machine.our_state is h11.DONE and machine.their_state is h11.DONE:
                machine.start_next_cycle()
            try:
                event = machine.next_event()
            except h11.RemoteProtocolError as exc:
                if exc.error_status_hint == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE:
                    self._head_too_large()
                else:
                    self._fail(HTTPStatus.BAD_REQUEST, f"malformed request: {exc}\n")
                return
            if event is h11.NEED_DATA:
                if not self._unfed:
                    return
                # h11 is never handed more than MAX_HEAD_BYTES of an incomplete
                # head, so no head over that is accepted, however it arrives.
                room = MAX_HEAD_BYTES - self._fed
                if room <= 0:
                    self._head_too_large()
                    return
                piece = bytes(self._unfed[:room])
                del self._unfed[:room]
                machine.receive_data(piece)
                self._fed += len(piece)
            elif isinstance(event, h11.Request):
                self._fed = len(machine.trailing_data[0])
                try:
                    self._handle(event)
                except _BadRequest as exc:
                    self._fail(exc.status, exc.text)
                    return
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return
            # EndOfMessage (a request without a body) and Data never need an answer.

    def _head_too_large(self) -> None:
        self._fail(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
            f"the request head is over {MAX_HEAD_BYTES} bytes\n",
        )

    def _fail(self, status: HTTPStatus, text: str) -> None:
        self._answer_plain(status, text, send_body=True, close=True)

    def _handle(self, request: h11.Request) -> None:
        if request.http_version not in (b"1.0", b"1.1"):
            raise _BadRequest(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and 1.1\n")
        if len(request.headers) > MAX_HEADER_FIELDS:
            raise _BadRequest(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"more than {MAX_HEADER_FIELDS} header fields\n",
            )
        if_none_match = ""
        for name, value in request.headers:  # names in lower case, values checked by h11
            if name == b"if-none-match":
                if_none_match = value.decode("latin-1")
            elif name == b"transfer-encoding" or (name == b"content-length" and value != b"0"):
                # No request of ours has a body: one is refused, with a close.
                raise _BadRequest(HTTPStatus.BAD_REQUEST, "request bodies are not accepted\n")
        method = request.method
        if method == b"GET":
            self._serve(request.target, if_none_match, send_body=True)
        elif method == b"HEAD":
            self._serve(request.target, if_none_match, send_body=False)
        else:
            self._answer_plain(
                HTTPStatus.METHOD_NOT_ALLOWED,
                "only GET and HEAD\n",
                send_body=True,
                close=False,
                allow="GET, HEAD",
            )
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "origin http %s %s", method.decode("latin-1"), request.target.decode("latin-1")
            )

    def _serve(self, target: bytes, if_none_match: str, *, send_body: bool) -> None:
        relative = _relative_path(target)
        file = self._site.files.get(relative) if relative is not None else None
        if file is None:
            self._answer_plain(
                HTTPStatus.NOT_FOUND, "not found\n", send_body=send_body, close=False
            )
            return
        common = [(b"Server", SERVER_NAME_BYTES), (b"Date", self._site.clock.date())]
        if if_none_match and etag_matches(if_none_match, file.etag):
            self._respond(HTTPStatus.NOT_MODIFIED, common + file.not_modified_headers, b"")
            return
        self._respond(HTTPStatus.OK, common + file.ok_headers, file.data if send_body else b"")

    def _answer_plain(
        self, status: HTTPStatus, text: str, *, send_body: bool, close: bool, allow: str = ""
    ) -> None:
        body = text.encode()
        headers = [
            (b"Server", SERVER_NAME_BYTES),
            (b"Date", self._site.clock.date()),
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", b"%d" % len(body)),
            (b"Cache-Control", b"no-cache"),
        ]
        if allow:
            headers.append((b"Allow", allow.encode("latin-1")))
        if close:
            headers.append((b"Connection", b"close"))
        self._respond(status, headers, body if send_body else b"")

    def _respond(self, status: HTTPStatus, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Send one answer through h11 (which adds Connection: close when the client asked
        for it or spoke HTTP/1.0), in one write; close when h11 says the connection must."""
        transport = self._transport
        if transport is None:
            return
        machine = self._h11
        response = h11.Response(status_code=status.value, reason=status.phrase, headers=headers)
        try:
            head = machine.send(response)
            if body:
                machine.send_with_data_passthrough(h11.Data(data=body))
            machine.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # No answer fits h11's state (the request was unreadable before any answer
            # could be framed): close without one.
            self._closing = True
            transport.close()
            return
        if not body:
            transport.write(head)
        elif len(body) <= 64 * 1024:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        if machine.our_state is not h11.DONE or machine.their_state is h11.ERROR:
            self._closing = True
            transport.close()  # after the buffered answer is sent


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
