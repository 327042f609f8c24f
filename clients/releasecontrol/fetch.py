"""HTTP GET for hosts: a size limit, a deadline, conditional requests, kept-alive connections.

A host fetches everything from a CDN it does not trust, so the transport must
bound what an attacker (or a broken origin) can make it do:

- endless data: at most `max_bytes` of body are kept; a larger declared length
  is refused before any of the body is read, a chunked body or one without a
  length is cut off as soon as its bytes pass the limit, and a response head
  is at most 64 KiB (h11 is never handed more of an incomplete one);
- slow retrieval: every socket operation is bounded by what is left of one
  deadline of `timeout_seconds` for the whole request (connect, TLS, send,
  every receive), so an origin that dribbles a byte at a time fails as surely
  as one that says nothing; a reused connection gets a fresh deadline per
  request, exactly as a new one would;
- needless downloads: with an `etag`, the request carries `If-None-Match`
  and a `304 Not Modified` comes back as `Fetched(not_modified=True)`.

Connections are kept alive and reused (HTTP/1.1), one request at a time each,
from a small pool per origin that every thread shares. A connection goes back
to the pool only when h11 says the request and its answer ended cleanly (both
sides DONE: the framing of `Content-Length` or chunked was exact, HTTP/1.1, no
`Connection: close`), with no byte after the answer and a 2xx or 304 status;
anything else (an error, a body over the limit, a timeout, extra bytes) closes
it, so no request ever reads what was left of another. Before reuse, a
connection the origin has closed (or sent anything unasked on) is dropped; a
reused connection that fails before any byte of the answer arrived is retried
once on a new one (a GET can be repeated).

HTTP/1.1 is parsed by h11 (a sans-IO library: this module does the socket
work, the deadline and the bounds, h11 the framing); `http.client` cost
~190 us of CPU per kept-alive request, most of it its `email`-based header
parsing. Redirects are not followed: a CDN serving signed index files answers them directly. Every
failure is a `FetchError` (a `VerificationError`: what the host could not
fetch, it did not verify) with one sentence naming the URL; errors from the
layers below are translated in exactly one place, `_translate`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from releasecontrol.errors import VerificationError

__all__ = ["FetchError", "Fetched", "Fetcher"]

logger = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024
"""Largest response head (status line and header fields) accepted."""
_MAX_INTERIM_RESPONSES = 8  # 1xx answers skipped before the real one
_MAX_IDLE_CONNECTIONS = 16  # per origin
_MAX_IDLE_SECONDS = 15.0  # older idle connections are closed, not reused


@dataclass(frozen=True)
class Fetched:
    """One answered GET: the body (empty when not modified) and the response's ETag."""

    url: str
    body: bytes
    etag: str | None
    not_modified: bool


class FetchError(VerificationError):
    """A GET failed: unreachable, timed out, an error status, too large, or malformed.

    `url` is what was asked for; `status` the HTTP status when one was received.
    """

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class _Malformed(Exception):
    """The response breaks HTTP/1.1 framing; the message says how."""


class _ClosedEarly(Exception):
    """The origin closed the connection before the answer's head was complete."""

    def __init__(self, received_nothing: bool) -> None:
        super().__init__("closed")
        self.received_nothing = received_nothing


_Origin = tuple[str, str, int]


class _Connection:
    """One socket, its h11 state machine, and when it was last used."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.received_any = False
        self.idle_since = 0.0

    def recv(self, size: int, deadline: float) -> bytes:
        """At most `size` bytes by `deadline`; b"" at end of stream."""
        self.sock.settimeout(_remaining(deadline))
        data = self.sock.recv(size)
        if data:
            self.received_any = True
        return data

    def send(self, data: bytes, deadline: float) -> None:
        self.sock.settimeout(_remaining(deadline))
        self.sock.sendall(data)

    def usable(self) -> bool:
        """Idle, recent and still open: nothing to read (an EOF or unasked bytes would be)."""
        if self.h11.our_state is not h11.IDLE or self.h11.their_state is not h11.IDLE:
            return False
        if time.monotonic() - self.idle_since > _MAX_IDLE_SECONDS:
            return False
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class Fetcher:
    """Makes bounded GET requests over kept-alive connections; safe to share between threads.

    `close()` (or `with`) closes the idle connections; a Fetcher that is
    garbage-collected closes them too.
    """

    def __init__(
        self,
        *,
        timeout_seconds: float = 10.0,
        user_agent: str = "releasecontrol-host",
        keep_alive: bool = True,
    ) -> None:
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be positive, not {timeout_seconds!r}")
        self._timeout_seconds = float(timeout_seconds)
        self._user_agent = user_agent
        self._user_agent_bytes = user_agent.encode("latin-1")
        self._keep_alive = keep_alive
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._lock = threading.Lock()
        self._tls: ssl.SSLContext | None = None

    @property
    def timeout_seconds(self) -> float:
        """The deadline of one whole request, connect to last byte."""
        return self._timeout_seconds

    def close(self) -> None:
        """Close every idle connection; the Fetcher stays usable (it connects again)."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # nothing to report to during collection
            for connections in self._idle.values():
                for connection in connections:
                    connection.close()

    def get(self, url: str, *, max_bytes: int, etag: str | None = None) -> Fetched:
        """GET `url`, reading at most `max_bytes` of body within `timeout_seconds`.

        With `etag`, asks `If-None-Match`; a 304 answer gives `not_modified=True`
        and an empty body. Raises FetchError (naming the URL) for a URL that is
        not http(s), a connection or TLS failure, the deadline passing, a status
        other than 2xx or 304, a body over `max_bytes`, a body shorter than its
        declared length, or a malformed response.
        """
        if max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchError(f"{url!r} is not an http:// or https:// URL", url=url)
        try:
            explicit_port = parts.port
        except ValueError:
            raise FetchError(f"{url!r} has an invalid port", url=url) from None
        host = parts.hostname
        port = explicit_port or (443 if parts.scheme == "https" else 80)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not target.isascii() or any(c <= " " or c == "\x7f" for c in target):
            raise FetchError(f"{url!r} has characters a request line cannot carry", url=url)
        host_header = f"[{host}]" if ":" in host else host
        if explicit_port is not None:
            host_header += f":{explicit_port}"
        headers = [
            (b"Host", host_header.encode("ascii", "replace")),
            (b"User-Agent", self._user_agent_bytes),
            (b"Accept-Encoding", b"identity"),
        ]
        if not self._keep_alive:
            headers.append((b"Connection", b"close"))
        if etag is not None:
            if any(c in etag for c in "\r\n\0"):
                raise FetchError(f"{url}: the ETag {etag!r} cannot be sent in a header", url=url)
            headers.append((b"If-None-Match", etag.encode("latin-1", "replace")))
        try:
            request = h11.Request(method=b"GET", target=target.encode("ascii"), headers=headers)
        except h11.LocalProtocolError as exc:
            raise FetchError(f"{url}: no HTTP request can carry it ({exc})", url=url) from None
        origin = (parts.scheme, host, port)
        deadline = time.monotonic() + self._timeout_seconds
        while True:
            connection = self._take(origin)
            reused = connection is not None
            try:
                if connection is None:
                    connection = self._connect(origin, deadline)
                connection.received_any = False
                fetched, reusable = self._exchange(
                    url, connection, request, max_bytes=max_bytes, etag=etag, deadline=deadline
                )
            except BaseException as exc:
                if connection is not None:
                    connection.close()
                if reused and _stale(exc):
                    logger.debug("fetch retry on a new connection url=%s", url)
                    continue
                if isinstance(exc, FetchError):
                    raise
                if isinstance(exc, Exception):
                    raise self._translate(url, exc) from None
                raise
            if reusable and self._keep_alive:
                self._give_back(origin, connection)
            else:
                connection.close()
            return fetched

    # -- connections ---------------------------------------------------------------------------

    def _take(self, origin: _Origin) -> _Connection | None:
        while True:
            with self._lock:
                idle = self._idle.get(origin)
                if not idle:
                    return None
                connection = idle.pop()
            if connection.usable():
                return connection
            connection.close()

    def _give_back(self, origin: _Origin, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if len(idle) < _MAX_IDLE_CONNECTIONS:
                idle.append(connection)
                return
        connection.close()

    def _connect(self, origin: _Origin, deadline: float) -> _Connection:
        scheme, host, port = origin
        sock = socket.create_connection((host, port), timeout=_remaining(deadline))
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                sock.settimeout(_remaining(deadline))
                sock = self._tls.wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        return _Connection(sock)

    # -- one request and its answer ------------------------------------------------------------

    def _exchange(
        self,
        url: str,
        connection: _Connection,
        request: h11.Request,
        *,
        max_bytes: int,
        etag: str | None,
        deadline: float,
    ) -> tuple[Fetched, bool]:
        """Send `request` and read its answer; returns it and whether the connection is reusable."""
        machine = connection.h11
        connection.send(machine.send(request) + machine.send(h11.EndOfMessage()), deadline)
        response = _read_head(connection, deadline)
        status = response.status_code
        fields = _fields(response.headers)
        transfer_encoding = fields.get(b"transfer-encoding")
        content_length = fields.get(b"content-length")
        new_etag = fields.get(b"etag")
        if status == 304:
            logger.debug("fetch not modified url=%s", url)
            _read_body(url, connection, 0, deadline, status, 0, False)
            fetched = Fetched(url=url, body=b"", etag=new_etag or etag, not_modified=True)
            return fetched, _cycle_completed(machine)
        if not 200 <= status < 300:
            reason = response.reason.decode("latin-1")
            raise FetchError(
                f"{url} answered HTTP {status} {reason}".rstrip(), url=url, status=status
            )
        if content_length is not None and transfer_encoding is None and status != 204:
            declared = int(content_length)  # h11 checked it is digits, and one value
            if declared > max_bytes:
                raise FetchError(
                    f"{url} is larger than the {max_bytes}-byte limit "
                    f"(it declares {declared} bytes)",
                    url=url,
                    status=status,
                )
        else:
            declared = None
        chunked = transfer_encoding is not None and status != 204
        body = _read_body(url, connection, max_bytes, deadline, status, declared, chunked)
        logger.debug("fetched url=%s bytes=%d", url, len(body))
        fetched = Fetched(url=url, body=body, etag=new_etag, not_modified=False)
        # RFC 9112 6.3: an answer with both Transfer-Encoding and Content-Length
        # makes the connection suspect; bytes past the answer were never asked for.
        suspect = transfer_encoding is not None and content_length is not None
        return fetched, not suspect and _cycle_completed(machine)

    def _translate(self, url: str, exc: BaseException) -> FetchError:
        """The one place errors of the socket, TLS and HTTP layers become FetchErrors."""
        if isinstance(exc, TimeoutError):
            return FetchError(f"{url} timed out after {self._timeout_seconds:g} s", url=url)
        if isinstance(exc, _ClosedEarly):
            return FetchError(f"{url}: the origin closed the connection without answering", url=url)
        if isinstance(exc, _Malformed):
            return FetchError(f"{url} sent a malformed HTTP response ({exc})", url=url)
        if isinstance(exc, h11.ProtocolError):
            return FetchError(f"{url} sent a malformed HTTP response ({exc})", url=url)
        if isinstance(exc, ssl.SSLError):
            return FetchError(f"{url}: TLS failed ({exc.reason or exc})", url=url)
        if isinstance(exc, OSError):
            return FetchError(f"{url} could not be fetched ({exc.strerror or exc})", url=url)
        return FetchError(f"{url} could not be fetched ({exc!r})", url=url)


def _stale(exc: BaseException) -> bool:
    """A reused connection the origin had closed: it failed before any byte of the answer."""
    if isinstance(exc, _ClosedEarly):
        return exc.received_nothing
    return isinstance(exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _fields(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, str]:
    """Header fields by lower-case name, repeated ones joined with ", " (one pass)."""
    fields: dict[bytes, str] = {}
    for name, value in headers:
        text = value.decode("latin-1")
        fields[name] = f"{fields[name]}, {text}" if name in fields else text
    return fields


def _cycle_completed(machine: h11.Connection) -> bool:
    """Whether h11 saw this request and its answer end cleanly, with nothing after them.

    Then the connection is ready for the next request (start_next_cycle); any
    other state (Connection: close, HTTP/1.0, a body ended by closing, unasked
    bytes after the answer) leaves it to be closed.
    """
    if machine.our_state is not h11.DONE or machine.their_state is not h11.DONE:
        return False
    unread, closed = machine.trailing_data
    if unread or closed:
        return False
    machine.start_next_cycle()
    return True


def _read_head(connection: _Connection, deadline: float) -> h11.Response:
    """The next final answer's status line and header fields, 1xx answers skipped.

    h11 parses; this bounds what it is given. While a head is incomplete, no
    more than MAX_HEAD_BYTES in all are handed to h11, so no head over that
    size is ever accepted, whatever the packets.
    """
    machine = connection.h11
    buffered = 0  # bytes handed to h11 and not yet parsed into an event
    interim = 0
    while True:
        event = machine.next_event()
        if event is h11.NEED_DATA:
            room = MAX_HEAD_BYTES - buffered
            if room <= 0:
                raise _Malformed(f"a response head over {MAX_HEAD_BYTES} bytes")
            data = connection.recv(min(room, _RECV_BYTES), deadline)
            if not data:
                raise _ClosedEarly(received_nothing=not connection.received_any)
            machine.receive_data(data)
            buffered += len(data)
            continue
        if isinstance(event, h11.InformationalResponse):
            # h11 refuses a 101 that was not asked for.
            interim += 1
            if interim > _MAX_INTERIM_RESPONSES:
                raise _Malformed(f"more than {_MAX_INTERIM_RESPONSES} interim 1xx responses")
            buffered = len(machine.trailing_data[0])
            continue
        if isinstance(event, h11.Response):
            if event.http_version not in (b"1.0", b"1.1"):
                raise _Malformed(f"HTTP version {event.http_version.decode('latin-1')!r}")
            return event
        raise _Malformed(f"unexpected {type(event).__name__}")


def _read_body(
    url: str,
    connection: _Connection,
    max_bytes: int,
    deadline: float,
    status: int,
    declared: int | None,
    chunked: bool,
) -> bytes:
    """The answer's body as h11 frames it, counted against `max_bytes` as it arrives.

    `declared` is the Content-Length (already checked against the limit), None
    for a `chunked` body or one that ends when the origin closes.
    """
    machine = connection.h11
    chunks: list[bytes] = []
    received = 0
    while True:
        event = machine.next_event()
        if event is h11.NEED_DATA:
            # One byte past the limit is enough to know the limit is broken.
            data = connection.recv(_RECV_BYTES, deadline)
            if not data and machine.their_state is h11.SEND_BODY:
                # Only a body without framing may end at the end of the stream;
                # h11 says how for the others, this says it as before.
                if declared is not None:
                    raise FetchError(
                        f"{url} ended after {received} of the {declared} bytes it declared",
                        url=url,
                        status=status,
                    )
                if chunked:
                    raise FetchError(
                        f"{url} ended after {received} bytes, inside its chunked body",
                        url=url,
                        status=status,
                    )
            machine.receive_data(data)
            continue
        if isinstance(event, h11.Data):
            received += len(event.data)
            if received > max_bytes:
                raise FetchError(
                    f"{url} is larger than the {max_bytes}-byte limit", url=url, status=status
                )
            chunks.append(event.data)
            continue
        if isinstance(event, h11.EndOfMessage):
            return b"".join(chunks)
        raise _Malformed(f"unexpected {type(event).__name__}")
