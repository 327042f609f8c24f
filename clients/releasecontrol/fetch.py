"""HTTP GET for hosts: a size limit, a deadline, and conditional requests.

A host fetches everything from a CDN it does not trust, so the transport must
bound what an attacker (or a broken origin) can make it do:

- endless data: at most `max_bytes` are read; a larger declared length is
  refused before the body is read, and a stream without one is cut off after
  `max_bytes + 1` bytes;
- slow retrieval: every socket operation is bounded by what is left of one
  deadline of `timeout_seconds` for the whole request, so an origin that
  dribbles a byte at a time fails as surely as one that says nothing;
- needless downloads: with an `etag`, the request carries `If-None-Match`
  and a `304 Not Modified` comes back as `Fetched(not_modified=True)`.

Standard library only (`http.client`). Redirects are not followed: a CDN
serving signed index files answers them directly. Every failure is a
`FetchError` (a `VerificationError`: what the host could not fetch, it did not
verify) with one sentence naming the URL; errors from the layers below are
translated in exactly one place, `_translate`.
"""

from __future__ import annotations

import http.client
import io
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from releasecontrol.errors import VerificationError

__all__ = ["FetchError", "Fetched", "Fetcher"]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 64 * 1024


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


class Fetcher:
    """Makes bounded GET requests; safe to share between threads (no state between calls)."""

    def __init__(
        self, *, timeout_seconds: float = 10.0, user_agent: str = "releasecontrol-host"
    ) -> None:
        if not timeout_seconds > 0:
            raise ValueError(f"timeout_seconds must be positive, not {timeout_seconds!r}")
        self._timeout_seconds = float(timeout_seconds)
        self._user_agent = user_agent

    @property
    def timeout_seconds(self) -> float:
        """The deadline of one whole request, connect to last byte."""
        return self._timeout_seconds

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
            port = parts.port
        except ValueError:
            raise FetchError(f"{url!r} has an invalid port", url=url) from None
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        headers = {
            "User-Agent": self._user_agent,
            "Accept-Encoding": "identity",
            "Connection": "close",
        }
        if etag is not None:
            headers["If-None-Match"] = etag
        deadline = time.monotonic() + self._timeout_seconds
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = _DeadlineHTTPSConnection(parts.hostname, port, deadline=deadline)
        else:
            connection = _DeadlineHTTPConnection(parts.hostname, port, deadline=deadline)
        response: http.client.HTTPResponse | None = None
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            return self._read(url, response, max_bytes=max_bytes, etag=etag)
        except FetchError:
            raise
        except Exception as exc:
            raise self._translate(url, exc) from None
        finally:
            # A "Connection: close" response owns the socket; close both, always.
            if response is not None:
                response.close()
            connection.close()

    def _read(
        self, url: str, response: http.client.HTTPResponse, *, max_bytes: int, etag: str | None
    ) -> Fetched:
        status = response.status
        new_etag = response.getheader("ETag")
        if status == http.HTTPStatus.NOT_MODIFIED:
            logger.debug("fetch not modified url=%s", url)
            return Fetched(url=url, body=b"", etag=new_etag or etag, not_modified=True)
        if not 200 <= status < 300:
            raise FetchError(
                f"{url} answered HTTP {status} {response.reason}".rstrip(), url=url, status=status
            )
        declared = _content_length(response)
        if declared is not None and declared > max_bytes:
            raise FetchError(
                f"{url} is larger than the {max_bytes}-byte limit (it declares {declared} bytes)",
                url=url,
                status=status,
            )
        chunks: list[bytes] = []
        received = 0
        # One byte past the limit is enough to know the limit is broken.
        while received <= max_bytes:
            chunk = response.read(min(_CHUNK_BYTES, max_bytes + 1 - received))
            if not chunk:
                break
            chunks.append(chunk)
            received += len(chunk)
        if received > max_bytes:
            raise FetchError(
                f"{url} is larger than the {max_bytes}-byte limit", url=url, status=status
            )
        if declared is not None and received != declared:
            raise FetchError(
                f"{url} ended after {received} of the {declared} bytes it declared",
                url=url,
                status=status,
            )
        logger.debug("fetched url=%s bytes=%d", url, received)
        return Fetched(url=url, body=b"".join(chunks), etag=new_etag, not_modified=False)

    def _translate(self, url: str, exc: BaseException) -> FetchError:
        """The one place errors of the socket, TLS and HTTP layers become FetchErrors."""
        if isinstance(exc, TimeoutError):
            return FetchError(f"{url} timed out after {self._timeout_seconds:g} s", url=url)
        if isinstance(exc, http.client.RemoteDisconnected):
            return FetchError(f"{url}: the origin closed the connection without answering", url=url)
        if isinstance(exc, http.client.HTTPException):
            return FetchError(f"{url} sent a malformed HTTP response ({exc!r})", url=url)
        if isinstance(exc, ssl.SSLError):
            return FetchError(f"{url}: TLS failed ({exc.reason or exc})", url=url)
        if isinstance(exc, OSError):
            return FetchError(f"{url} could not be fetched ({exc.strerror or exc})", url=url)
        return FetchError(f"{url} could not be fetched ({exc!r})", url=url)


def _content_length(response: http.client.HTTPResponse) -> int | None:
    value = response.getheader("Content-Length")
    if value is None or response.chunked:
        return None
    value = value.strip()
    if not value.isdigit():
        raise http.client.HTTPException(f"Content-Length {value!r} is not a number")
    return int(value)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class _DeadlineSocket:
    """A connected socket whose every send and receive ends by one deadline.

    http.client reads through `makefile("rb")`; giving it a reader that re-arms
    the socket timeout to what is left before each receive bounds the whole
    response, not only each idle gap (which a plain socket timeout would).
    """

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline
        # Like socket.makefile: the socket closes once it and every reader are closed.
        self._readers = 0
        self._closed = False

    def _arm(self) -> None:
        self._sock.settimeout(_remaining(self._deadline))

    def sendall(self, data: Any) -> None:
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer: Any) -> int:
        self._arm()
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"only binary reading is supported, not {mode!r}")
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closed and self._readers <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._readers <= 0:
            self._sock.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.reader_closed()
        super().close()


class _DeadlineMixin:
    """Connects within what is left of the deadline, then wraps the socket."""

    _deadline: float
    sock: Any
    timeout: float | None

    def connect(self) -> None:
        self.timeout = _remaining(self._deadline)  # used by socket.create_connection
        super().connect()  # type: ignore[misc]
        self.sock = _DeadlineSocket(self.sock, self._deadline)


class _DeadlineHTTPConnection(_DeadlineMixin, http.client.HTTPConnection):
    def __init__(self, host: str, port: int | None, *, deadline: float) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self._deadline = deadline


class _DeadlineHTTPSConnection(_DeadlineMixin, http.client.HTTPSConnection):
    def __init__(self, host: str, port: int | None, *, deadline: float) -> None:
        super().__init__(
            host,
            port,
            timeout=max(deadline - time.monotonic(), 0.001),
            context=ssl.create_default_context(),
        )
        self._deadline = deadline
