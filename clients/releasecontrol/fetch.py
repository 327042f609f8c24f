"""HTTP GET for hosts: a size limit, a deadline, conditional requests, kept-alive connections.

A host fetches everything from a CDN it does not trust, so the transport must
bound what an attacker (or a broken origin) can make it do:

- endless data: at most `max_bytes` of body are kept; a larger declared length
  is refused before any of the body is read, a chunked body or one without a
  length is cut off as soon as its bytes pass the limit, and a response head
  is at most 64 KiB (the parser is never handed more of an incomplete one);
- slow retrieval: every socket operation is bounded by what is left of one
  deadline of `timeout_seconds` for the whole request (connect, TLS, send,
  every receive), so an origin that dribbles a byte at a time fails as surely
  as one that says nothing; a reused connection gets a fresh deadline per
  request, exactly as a new one would;
- needless downloads: with an `etag`, the request carries `If-None-Match`
  and a `304 Not Modified` comes back as `Fetched(not_modified=True)`.

Connections are kept alive and reused (HTTP/1.1), one request at a time each,
from a small pool per origin that every thread shares. A connection goes back
to the pool only after an answer that ended exactly where its framing
(`Content-Length` or chunked) said (llhttp's `on_message_complete`), with no
byte of another message after it, a 2xx or 304 status, HTTP/1.1 kept alive
(`should_keep_alive()`: no `Connection: close`), and not both
`Transfer-Encoding` and `Content-Length` (which llhttp refuses anyway);
anything else (an error, a body over the limit, a timeout, extra bytes) closes
it, so no request ever reads what was left of another. Before reuse, a
connection the origin has closed (or sent anything unasked on) is dropped; a
reused connection that fails before any byte of the answer arrived is retried
once on a new one (a GET can be repeated).

HTTP/1.1 answers are parsed by llhttp (Node's C parser, through MagicStack's
`httptools`), a new parser per answer; this module does the socket work, the
deadline and the bounds, and refuses what llhttp would frame but a host must
not use (a version other than 1.0/1.1, a Transfer-Encoding other than
chunked, an unasked 101). `http.client` cost ~190 us of CPU per kept-alive
request (its `email`-based header parsing), h11 (pure Python) 230-340 us.
urllib3 and httpx were weighed as replacements (issue 12) and cannot keep the
deadline: their timeouts bound each read, not the request, so an origin sending
a 12-byte body a byte every 0.25 s took 3.0 s against a 1 s timeout in both
(docs/benchmarks.md, "Kept: the host's HTTP client of our own").
Redirects are not followed: a CDN serving signed index files answers them directly. Every
failure is a `FetchError` (a `VerificationError`: what the host could not
fetch, it did not verify) with one sentence naming the URL; errors from the
layers below are translated in exactly one place, `_translate`.
"""

from __future__ import annotations

import contextlib
import logging
import re
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import httptools

from releasecontrol.errors import VerificationError

__all__ = ["FetchError", "Fetched", "Fetcher"]

logger = logging.getLogger(__name__)

_RECV_BYTES = 256 * 1024
MAX_HEAD_BYTES = 64 * 1024
"""Largest response head (status line and header fields) accepted."""
_MAX_INTERIM_RESPONSES = 8  # 1xx answers skipped before the real one
_MAX_IDLE_CONNECTIONS = 16  # per origin
_MAX_IDLE_SECONDS = 15.0  # older idle connections are closed, not reused
# A header line ends at CR or LF; NUL and other controls (but HTAB) are not field content.
_FIELD_BREAKER = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class Fetched:
    """One answered GET: the body (empty when not modified) and the response's ETag."""

    url: str
    body: bytes
    etag: str | None
    not_modified: bool


class FetchError(VerificationError):
    """A GET failed: unreachable, timed out, an error status, too large, or malformed.

    `url` is what was asked for; `status` the HTTP status when one was received;
    `kind` the host protocol's refusal code: "timeout", "too-large" (the body
    passed `max_bytes`), or "fetch" for everything else.
    """

    def __init__(
        self, message: str, *, url: str, status: int | None = None, kind: str = "fetch"
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.kind = kind


class _Malformed(Exception):
    """The response breaks HTTP/1.1 framing; the message says how."""


class _ClosedEarly(Exception):
    """The origin closed the connection before the answer's head was complete."""

    def __init__(self, received_nothing: bool) -> None:
        super().__init__("closed")
        self.received_nothing = received_nothing


class _After(Exception):
    """Stops the parser at the first byte of a message after the answer."""


_Origin = tuple[str, str, int]


class _Connection:
    """One socket and when it was last used."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
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


class _Answer:
    """llhttp's callbacks for one answer: its final head, and its body counted as it arrives.

    A new parser per request, so nothing of one answer's state reaches the next.
    The head is checked in `on_headers_complete`, before any byte of the body is
    taken: an error status, a Content-Length over the limit, a version other than
    1.0/1.1 or a Transfer-Encoding other than chunked stop the parser there.
    """

    def __init__(self, url: str, max_bytes: int) -> None:
        self.url = url
        self.max_bytes = max_bytes
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.reason = b""
        self.fields: dict[bytes, str] = {}
        self.interim = 0
        self.declared: int | None = None
        self.chunked = False
        self.head_complete = False
        self.complete = False  # on_message_complete of the final answer
        self.after = False  # bytes of another message followed it
        self.keep_alive = False  # HTTP/1.1 without Connection: close, when complete
        self.chunks: list[bytes] = []
        self.received = 0

    def feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:  # what broke came after the answer, which stands
                self.after = True
                return
            cause = exc.__context__
            if isinstance(cause, FetchError | _Malformed):
                raise cause from None
            raise _Malformed(str(exc) or type(exc).__name__) from None

    # -- llhttp callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            raise _After
        self.reason = b""
        self.fields = {}

    def on_status(self, data: bytes) -> None:
        self.reason += data

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head_complete:
            return  # a trailer field of a chunked body: not used
        key = name.lower()
        text = value.decode("latin-1")
        fields = self.fields
        fields[key] = f"{fields[key]}, {text}" if key in fields else text

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if status < 200:
            if status == 101:
                raise _Malformed("a 101 Switching Protocols that was not asked for")
            self.interim += 1
            if self.interim > _MAX_INTERIM_RESPONSES:
                raise _Malformed(f"more than {_MAX_INTERIM_RESPONSES} interim 1xx responses")
            return
        version = parser.get_http_version()
        if version not in ("1.0", "1.1"):
            raise _Malformed(f"HTTP version {version!r}")
        self.status = status
        self.head_complete = True
        url = self.url
        if status != 304 and not 200 <= status < 300:
            reason = self.reason.decode("latin-1")
            raise FetchError(
                f"{url} answered HTTP {status} {reason}".rstrip(), url=url, status=status
            )
        fields = self.fields
        transfer_encoding = fields.get(b"transfer-encoding")
        if transfer_encoding is not None:
            # llhttp frames "gzip, chunked" as chunked and "gzip" as ended by the close;
            # neither is a body this module can use.
            if transfer_encoding.strip().lower() != "chunked":
                raise _Malformed(f"unsupported Transfer-Encoding {transfer_encoding!r}")
            self.chunked = status not in (204, 304)
            return
        content_length = fields.get(b"content-length")
        if content_length is not None and status not in (204, 304):
            declared = int(content_length)  # llhttp checked it is digits, and one value
            if declared > self.max_bytes:
                raise FetchError(
                    f"{url} is larger than the {self.max_bytes}-byte limit "
                    f"(it declares {declared} bytes)",
                    url=url,
                    status=status,
                    kind="too-large",
                )
            self.declared = declared

    def on_body(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.max_bytes:
            url = self.url
            raise FetchError(
                f"{url} is larger than the {self.max_bytes}-byte limit",
                url=url,
                status=self.status,
                kind="too-large",
            )
        self.chunks.append(data)

    def on_message_complete(self) -> None:
        if self.head_complete:
            self.complete = True
            # Asked here: once the callback returns, llhttp resets for the next message.
            parser = self.parser
            self.keep_alive = parser.should_keep_alive() and parser.get_http_version() == "1.1"

    def reusable(self) -> bool:
        """Ended exactly at its framing with nothing after it, kept alive, HTTP/1.1, one framing."""
        return (
            self.complete
            and not self.after
            and self.keep_alive
            and not (b"transfer-encoding" in self.fields and b"content-length" in self.fields)
        )


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
        host_bytes = host_header.encode("latin-1", "replace")
        if _FIELD_BREAKER.search(host_bytes + self._user_agent_bytes) is not None:
            raise FetchError(f"{url}: no HTTP request can carry it", url=url)
        lines = [
            b"GET " + target.encode("ascii") + b" HTTP/1.1",
            b"Host: " + host_bytes,
            b"User-Agent: " + self._user_agent_bytes,
            b"Accept-Encoding: identity",
        ]
        if not self._keep_alive:
            lines.append(b"Connection: close")
        if etag is not None:
            lines.append(b"If-None-Match: " + etag.encode("latin-1", "replace"))
        lines += (b"", b"")
        request = b"\r\n".join(lines)
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
        request: bytes,
        *,
        max_bytes: int,
        etag: str | None,
        deadline: float,
    ) -> tuple[Fetched, bool]:
        """Send `request` and read its answer; returns it and whether the connection is reusable.

        While the answer's head is incomplete, llhttp is never handed more than
        MAX_HEAD_BYTES in all (interim 1xx heads included), so no head over that
        size is ever accepted, whatever the packets.
        """
        connection.send(request, deadline)
        answer = _Answer(url, max_bytes)
        fed = 0  # bytes handed to the parser before the final head was complete
        while not answer.complete:
            data = connection.recv(_RECV_BYTES, deadline)
            if not data:
                if not answer.head_complete:
                    raise _ClosedEarly(received_nothing=not connection.received_any)
                # Only a body without framing may end at the end of the stream.
                if answer.declared is not None:
                    raise FetchError(
                        f"{url} ended after {answer.received} of the {answer.declared} "
                        "bytes it declared",
                        url=url,
                        status=answer.status,
                    )
                if answer.chunked:
                    raise FetchError(
                        f"{url} ended after {answer.received} bytes, inside its chunked body",
                        url=url,
                        status=answer.status,
                    )
                break
            if answer.head_complete:
                answer.feed(data)
                continue
            room = MAX_HEAD_BYTES - fed
            if len(data) > room:
                answer.feed(data[:room])
                fed += room
                if answer.head_complete:
                    answer.feed(data[room:])
            else:
                answer.feed(data)
                fed += len(data)
            if not answer.head_complete and fed >= MAX_HEAD_BYTES:
                raise _Malformed(f"a response head over {MAX_HEAD_BYTES} bytes")
        new_etag = answer.fields.get(b"etag")
        if answer.status == 304:
            logger.debug("fetch not modified url=%s", url)
            fetched = Fetched(url=url, body=b"", etag=new_etag or etag, not_modified=True)
        else:
            body = b"".join(answer.chunks)
            logger.debug("fetched url=%s bytes=%d", url, len(body))
            fetched = Fetched(url=url, body=body, etag=new_etag, not_modified=False)
        return fetched, answer.reusable()

    def _translate(self, url: str, exc: BaseException) -> FetchError:
        """The one place errors of the socket, TLS and HTTP layers become FetchErrors."""
        if isinstance(exc, TimeoutError):
            return FetchError(
                f"{url} timed out after {self._timeout_seconds:g} s", url=url, kind="timeout"
            )
        if isinstance(exc, _ClosedEarly):
            return FetchError(f"{url}: the origin closed the connection without answering", url=url)
        if isinstance(exc, _Malformed):
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
