"""The origin HTTP server on the wire: keep-alive, pipelining, limits, changed files.

Raw sockets, so each test controls exactly what is sent and sees exactly what
comes back (http.client would hide connection reuse and refuse malformed input).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from releasecontrol_server.origin import http as origin_http
from releasecontrol_server.origin.http import MAX_HEAD_BYTES, OriginHttpServer

INDEX = b'{"sequence": 7}'


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "origin"
    (root / "features").mkdir(parents=True)
    (root / "remote-index.json").write_bytes(INDEX)
    return root


@pytest.fixture
def server(root: Path) -> Iterator[OriginHttpServer]:
    with OriginHttpServer(root, port=0) as server:
        yield server


def connect(server: OriginHttpServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    return sock


def get(path: str, *extra: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: origin", *extra, "", ""]
    return "\r\n".join(lines).encode()


def read_response(sock: socket.socket, pending: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from `sock` (bytes already received in `pending`, which keeps the rest)."""
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a full response head: {bytes(pending)!r}"
        pending += chunk
    end = pending.index(b"\r\n\r\n")
    lines = bytes(pending[:end]).decode("latin-1").split("\r\n")
    del pending[: end + 4]
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(pending) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a body"
        pending += chunk
    body = bytes(pending[:length])
    del pending[:length]
    return status, headers, body


def closed_by_server(sock: socket.socket, pending: bytearray) -> bool:
    """True when the server closed the connection with nothing more to read."""
    sock.settimeout(5)
    try:
        chunk = sock.recv(1)
    except ConnectionResetError:
        return True
    return chunk == b"" and not pending


def refusal(sock: socket.socket, pending: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Everything the server sends until it closes (after bytes already received in
    `pending`): the status and headers of its answer, and all the bytes after that answer's
    head (uvicorn frames its own refusals by the close or chunked, so their bodies are read
    to the end, never parsed as another answer)."""
    sock.settimeout(5)
    data = bytearray(pending)
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass  # closed with our unread request bytes still queued: a reset, after the answer
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def assert_refused(sock: socket.socket, *statuses: int, pending: bytes = b"") -> None:
    """One refusal, then the close: nothing after it was answered as a request, no file sent."""
    status, headers, rest = refusal(sock, pending)
    assert status in statuses
    assert headers["connection"].lower() == "close"
    assert not re.search(rb"HTTP/1\.[01] \d{3} ", rest) and INDEX not in rest


class TestKeepAlive:
    def test_one_connection_serves_many_requests(self, server: OriginHttpServer) -> None:
        """HTTP/1.1 keeps the connection open: three GETs, three answers, no Connection: close."""
        with connect(server) as sock:
            pending = bytearray()
            for _ in range(3):
                sock.sendall(get("/remote-index.json"))
                status, headers, body = read_response(sock, pending)
                assert (status, body) == (200, INDEX)
                assert "connection" not in headers

    def test_pipelined_requests_are_answered_in_order(self, server: OriginHttpServer) -> None:
        """Requests sent together are answered one after another, in the order sent."""
        with connect(server) as sock:
            sock.sendall(
                get("/remote-index.json") + get("/missing.json") + get("/remote-index.json")
            )
            pending = bytearray()
            statuses = [read_response(sock, pending)[0] for _ in range(3)]
        assert statuses == [200, 404, 200]

    @pytest.mark.parametrize(
        "request_bytes",
        [
            pytest.param(get("/remote-index.json", "Connection: close"), id="connection-close"),
            pytest.param(b"GET /remote-index.json HTTP/1.0\r\n\r\n", id="http-1.0"),
        ],
    )
    def test_close_is_honoured(self, server: OriginHttpServer, request_bytes: bytes) -> None:
        """Connection: close, or HTTP/1.0, gets its answer with Connection: close, then EOF."""
        with connect(server) as sock:
            sock.sendall(request_bytes)
            pending = bytearray()
            status, headers, body = read_response(sock, pending)
            assert (status, body) == (200, INDEX)
            assert headers["connection"] == "close"
            assert closed_by_server(sock, pending)

    def test_an_idle_connection_is_closed(
        self, root: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A kept-alive connection with no request for the idle timeout is closed."""
        monkeypatch.setattr(origin_http, "_IDLE_TIMEOUT_SECONDS", 0.2)
        with OriginHttpServer(root, port=0) as server, connect(server) as sock:
            sock.sendall(get("/remote-index.json"))
            pending = bytearray()
            assert read_response(sock, pending)[0] == 200
            started = time.monotonic()
            assert closed_by_server(sock, pending)
            assert time.monotonic() - started < 2

    @pytest.mark.parametrize("sent", [b"", b"GET /remote-index.json HTTP/1.1\r\nHo"])
    def test_a_connection_idle_before_its_request_is_closed(
        self, root: Path, monkeypatch: pytest.MonkeyPatch, sent: bytes
    ) -> None:
        """A connection that sends nothing, or stops inside a head, is closed after the idle
        timeout too (uvicorn alone times out only the wait between requests)."""
        monkeypatch.setattr(origin_http, "_IDLE_TIMEOUT_SECONDS", 0.2)
        with OriginHttpServer(root, port=0) as server, connect(server) as sock:
            sock.sendall(sent)
            started = time.monotonic()
            assert closed_by_server(sock, bytearray())
            assert time.monotonic() - started < 2

    def test_nagle_is_off(self, server: OriginHttpServer) -> None:
        """Ten kept-alive GETs take well under the 40 ms one delayed-ACK stall would cost each."""
        with connect(server) as sock:
            pending = bytearray()
            started = time.monotonic()
            for _ in range(10):
                sock.sendall(get("/remote-index.json"))
                read_response(sock, pending)
            assert time.monotonic() - started < 0.3


class TestMalformedRequests:
    @pytest.mark.parametrize(
        ("request_bytes", "status"),
        [
            pytest.param(b"GET /remote-index.json\r\n\r\n", 400, id="no-version"),
            pytest.param(b"GET  /remote-index.json HTTP/1.1\r\n\r\n", 400, id="double-space"),
            pytest.param(b"GET / HTTP/2.0\r\n\r\n", 505, id="http-2"),
            pytest.param(b"GET / SPDY/3\r\n\r\n", 400, id="not-http"),
            pytest.param(
                b"GET /remote-index.json HTTP/1.1\r\n folded: value\r\nHost: origin\r\n\r\n",
                400,
                id="obs-fold-first",
            ),
            pytest.param(b"GET /remote-index.json HTTP/1.1\r\n\r\n", 400, id="no-host"),
            pytest.param(get("/remote-index.json", "Bad Name: x"), 400, id="space-in-name"),
            pytest.param(get("/remote-index.json", "no-colon"), 400, id="no-colon"),
            pytest.param(get("/remote-index.json", "Content-Length: 5"), 400, id="body"),
            pytest.param(
                get("/remote-index.json", "Transfer-Encoding: chunked"), 400, id="chunked"
            ),
        ],
    )
    def test_is_refused_and_the_connection_closed(
        self, server: OriginHttpServer, request_bytes: bytes, status: int
    ) -> None:
        """A malformed request, or one with a body, is answered with an error and a close:
        bytes after it are never taken for another request."""
        with connect(server) as sock:
            sock.sendall(request_bytes + get("/remote-index.json"))
            assert_refused(sock, status)

    def test_a_folded_line_is_never_a_field(self, server: OriginHttpServer) -> None:
        """An obs-fold inside the head is joined to the field before it (h11; RFC 9112 5.2
        allows that or refusing): a folded "Transfer-Encoding: chunked" is never taken for a
        field, so the request after it is answered as a request, not read as a body."""
        with connect(server) as sock:
            sock.sendall(
                get("/remote-index.json", "X-A: 1", " Transfer-Encoding: chunked")
                + get("/remote-index.json")
            )
            pending = bytearray()
            assert read_response(sock, pending)[:3:2] == (200, INDEX)
            assert read_response(sock, pending)[:3:2] == (200, INDEX)

    @pytest.mark.parametrize(
        "extra",
        [
            pytest.param(("Host: other",), id="two-hosts"),
            pytest.param(("Content-Length: 0", "Content-Length: 1"), id="two-lengths"),
            pytest.param(("X: a\x00b",), id="nul-in-value"),
        ],
    )
    def test_ambiguous_heads_are_refused(self, server: OriginHttpServer, extra: tuple[str]) -> None:
        """Two Host fields, two different Content-Lengths or a NUL in a value: 400 and a
        close (two equal Content-Lengths are one, as RFC 9110 8.6 allows)."""
        with connect(server) as sock:
            sock.sendall(get("/remote-index.json", *extra) + get("/remote-index.json"))
            assert_refused(sock, 400)

    def test_a_head_arriving_a_byte_at_a_time_is_served(self, server: OriginHttpServer) -> None:
        """A head split anywhere, even inside its empty line, is one request, and the
        connection serves the next."""
        with connect(server) as sock:
            for byte in get("/remote-index.json"):
                sock.sendall(bytes([byte]))
                time.sleep(0.001)
            pending = bytearray()
            assert read_response(sock, pending)[:3:2] == (200, INDEX)
            sock.sendall(get("/remote-index.json"))
            assert read_response(sock, pending)[0] == 200

    def test_empty_lines_between_requests_are_no_request(self, server: OriginHttpServer) -> None:
        """Empty lines after a request are never answered as a repeat of the request before
        them: h11 refuses them with a close (RFC 9112 2.2 says a server SHOULD skip them)."""
        with connect(server) as sock:
            sock.sendall(get("/remote-index.json") + b"\r\n\r\n" + get("/missing.json"))
            pending = bytearray()
            assert read_response(sock, pending)[0] == 200
            assert_refused(sock, 400, pending=bytes(pending))

    def test_pipelined_heads_at_the_limit_each_are_served(self, server: OriginHttpServer) -> None:
        """The head bound is per request: requests sent together may exceed it in all."""
        request = get("/remote-index.json", "X-Filler: ")
        request = get("/remote-index.json", "X-Filler: " + "a" * (MAX_HEAD_BYTES - len(request)))
        with connect(server) as sock:
            sock.sendall(request * 3)
            pending = bytearray()
            assert [read_response(sock, pending)[0] for _ in range(3)] == [200, 200, 200]

    def test_a_head_over_the_limit_in_one_packet_is_refused(self, server: OriginHttpServer) -> None:
        """A complete head over the limit, arriving at once, is refused all the same."""
        with connect(server) as sock:
            sock.sendall(get("/remote-index.json", "X-Filler: " + "a" * MAX_HEAD_BYTES))
            status, headers, _ = read_response(sock, bytearray())
            assert status == 431
            assert headers["connection"] == "close"

    def test_a_head_just_under_the_limit_is_served(self, server: OriginHttpServer) -> None:
        """A head of exactly the limit is served."""
        request = get("/remote-index.json", "X-Filler: ")
        request = get("/remote-index.json", "X-Filler: " + "a" * (MAX_HEAD_BYTES - len(request)))
        assert len(request) == MAX_HEAD_BYTES
        with connect(server) as sock:
            sock.sendall(request)
            assert read_response(sock, bytearray())[0] == 200

    def test_a_head_over_the_limit_is_refused(self, server: OriginHttpServer) -> None:
        """A request head that never ends is cut off at the limit, not buffered: h11
        refuses it, uvicorn answers 400 and closes."""
        with connect(server) as sock:
            sock.sendall(b"GET /remote-index.json HTTP/1.1\r\nX-Filler: ")
            try:
                for _ in range(MAX_HEAD_BYTES // 1024 + 2):
                    sock.sendall(b"a" * 1024)
            except OSError:
                pass  # the server may already have answered and closed
            assert_refused(sock, 400, 431)

    def test_too_many_header_fields_are_refused(self, server: OriginHttpServer) -> None:
        """More than the allowed number of header fields answers 431."""
        fields = [f"X-{i}: 1" for i in range(origin_http.MAX_HEADER_FIELDS + 1)]
        with connect(server) as sock:
            sock.sendall(get("/remote-index.json", *fields))
            assert read_response(sock, bytearray())[0] == 431

    def test_other_methods_keep_the_connection(self, server: OriginHttpServer) -> None:
        """A POST without a body answers 405 and the connection goes on serving."""
        with connect(server) as sock:
            sock.sendall(
                b"POST /remote-index.json HTTP/1.1\r\nHost: origin\r\nContent-Length: 0\r\n\r\n"
            )
            pending = bytearray()
            status, headers, _ = read_response(sock, pending)
            assert status == 405 and headers["allow"] == "GET, HEAD"
            sock.sendall(get("/remote-index.json"))
            assert read_response(sock, pending)[0] == 200


class TestChangedFiles:
    def test_a_file_rewritten_in_place_is_served_anew(
        self, server: OriginHttpServer, root: Path
    ) -> None:
        """Same inode, same size, rewritten at once: the new bytes and ETag are served."""
        file = root / "remote-index.json"
        with connect(server) as sock:
            pending = bytearray()
            sock.sendall(get("/remote-index.json"))
            assert read_response(sock, pending)[2] == INDEX
            with file.open("r+b") as handle:
                handle.write(b'{"sequence": 8}')
            sock.sendall(get("/remote-index.json"))
            _, headers, body = read_response(sock, pending)
        assert body == b'{"sequence": 8}'
        assert headers["etag"] == f'"{hashlib.sha256(body).hexdigest()}"'

    def test_a_replaced_or_deleted_file_is_noticed_at_once(
        self, server: OriginHttpServer, root: Path
    ) -> None:
        """A file replaced (new inode) or deleted is noticed at the next request."""
        file = root / "features" / "a.json"
        file.write_bytes(b"first")
        with connect(server) as sock:
            pending = bytearray()
            sock.sendall(get("/features/a.json"))
            assert read_response(sock, pending)[2] == b"first"
            replacement = root / "features" / ".a.json.tmp"
            replacement.write_bytes(b"other")
            os.replace(replacement, file)
            sock.sendall(get("/features/a.json"))
            assert read_response(sock, pending)[2] == b"other"
            file.unlink()
            sock.sendall(get("/features/a.json"))
            assert read_response(sock, pending)[0] == 404


class TestFlowControl:
    def test_requests_are_not_parsed_while_the_client_does_not_read(
        self, server: OriginHttpServer, root: Path
    ) -> None:
        """50 pipelined GETs of a 1 MiB file, unread: the server buffers about one answer,
        not 50 MiB; once the client reads, every answer comes, in order."""
        big = os.urandom(1 << 20)
        (root / "features" / "big.bin").write_bytes(big)
        with connect(server) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.sendall(get("/features/big.bin") * 50)
            time.sleep(0.5)
            # The test looks inside uvicorn: the bound is the point.
            connections = list(server._server.server_state.connections)  # type: ignore[union-attr]
            buffered = [c.transport.get_write_buffer_size() for c in connections]
            assert buffered and max(buffered) < 3 << 20
            pending = bytearray()
            for _ in range(50):
                assert read_response(sock, pending)[:3:2] == (200, big)
