"""The Fetcher's kept-alive connections: reuse, and every bound still holding on a reused socket.

A scripted origin on loopback: each accepted connection is served by the next
function in `script`, which reads requests and writes exactly the bytes a test
wants (including broken ones), so the tests see what the Fetcher does with them.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from releasecontrol.fetch import Fetcher, FetchError
from releasecontrol_server.origin.http import OriginHttpServer

BODY = b'{"hello": "world"}\n'


def ok(body: bytes = BODY, *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", f"Content-Length: {len(body)}", *extra, "", ""]
    return "\r\n".join(head).encode() + body


def read_request(conn: socket.socket, pending: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in pending:
        try:
            chunk = conn.recv(65536)
        except OSError:
            return None
        if not chunk:
            return None
        pending += chunk
    end = pending.index(b"\r\n\r\n") + 4
    request = bytes(pending[:end])
    del pending[:end]
    return request


Handler = Callable[[socket.socket], None]


class ScriptedOrigin:
    """Serves connection i with script[i] (the last one repeats); counts connections."""

    def __init__(self, script: list[Handler]) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._held: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}/"

    def _serve(self) -> None:
        self._listener.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            handler = self.script[min(self.connections, len(self.script) - 1)]
            self.connections += 1
            self._held.append(conn)
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    def serve_each(self, answer: Callable[[int], bytes | None], *, close: bool = False) -> Handler:
        """A handler answering the n-th request on a connection with answer(n) (None: hang up)."""

        def handle(conn: socket.socket) -> None:
            pending = bytearray()
            n = 0
            while (request := read_request(conn, pending)) is not None:
                self.requests.append(request)
                data = answer(n)
                n += 1
                if data is None:
                    break
                try:
                    conn.sendall(data)
                except OSError:
                    break
                if close:
                    break
            conn.close()

        return handle

    def __enter__(self) -> ScriptedOrigin:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._listener.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(timeout_seconds=0.5) as fetcher:
        yield fetcher


def test_requests_share_one_connection(fetcher: Fetcher) -> None:
    """Three GETs to one origin travel over one kept-alive connection."""
    with ScriptedOrigin([]) as origin:
        origin.script.append(origin.serve_each(lambda n: ok()))
        for _ in range(3):
            assert fetcher.get(origin.url + "a.json", max_bytes=1024).body == BODY
        assert origin.connections == 1
        assert all(b"Connection: close" not in r for r in origin.requests)


def test_connection_close_is_not_reused(fetcher: Fetcher) -> None:
    """An answer saying Connection: close ends that connection; the next GET opens another."""
    with ScriptedOrigin([]) as origin:
        origin.script.append(origin.serve_each(lambda n: ok(BODY, "Connection: close")))
        fetcher.get(origin.url + "a.json", max_bytes=1024)
        fetcher.get(origin.url + "a.json", max_bytes=1024)
        assert origin.connections == 2


def test_a_connection_the_origin_closed_is_retried_on_a_new_one(fetcher: Fetcher) -> None:
    """The origin drops an idle connection: the next GET still succeeds, on a new connection."""
    with ScriptedOrigin([]) as origin:
        origin.script.append(origin.serve_each(lambda n: ok() if n == 0 else None))
        fetcher.get(origin.url + "a.json", max_bytes=1024)
        # The origin hangs up only when the second request arrives: no EOF is
        # visible before reuse, so this is the retry, not the idle check.
        assert fetcher.get(origin.url + "a.json", max_bytes=1024).body == BODY
        assert origin.connections == 2


def test_an_idle_close_is_noticed_before_reuse(fetcher: Fetcher) -> None:
    """A connection the origin closed while idle is not used again."""
    with ScriptedOrigin([]) as origin:
        origin.script.append(origin.serve_each(lambda n: ok(), close=True))
        fetcher.get(origin.url + "a.json", max_bytes=1024)
        time.sleep(0.05)
        assert fetcher.get(origin.url + "a.json", max_bytes=1024).body == BODY
        assert origin.connections == 2


def test_bytes_after_an_answer_poison_the_connection(fetcher: Fetcher) -> None:
    """An answer followed by unasked bytes (a smuggled second answer) is used, but the
    connection is closed: the next GET never reads the extra bytes as its own answer."""
    forged = ok(b"forged")
    with ScriptedOrigin([]) as origin:
        origin.script.append(origin.serve_each(lambda n: ok() + forged))
        assert fetcher.get(origin.url + "a.json", max_bytes=1024).body == BODY
        assert fetcher.get(origin.url + "b.json", max_bytes=1024).body == BODY
        assert origin.connections == 2


def test_the_deadline_holds_on_a_reused_connection(fetcher: Fetcher) -> None:
    """A reused connection whose origin goes silent fails at the deadline, not later."""
    with ScriptedOrigin([]) as origin:
        hang = threading.Event()

        def answer(n: int) -> bytes | None:
            if n == 0:
                return ok()
            hang.wait(5)
            return None

        origin.script.append(origin.serve_each(answer))
        fetcher.get(origin.url + "a.json", max_bytes=1024)
        started = time.monotonic()
        with pytest.raises(FetchError, match=r"timed out after 0\.5 s$"):
            fetcher.get(origin.url + "a.json", max_bytes=1024)
        assert 0.45 <= time.monotonic() - started < 1.5
        hang.set()
        assert origin.connections == 1


def test_the_size_bound_holds_on_a_reused_connection(fetcher: Fetcher) -> None:
    """A reused connection is bounded like a new one: an oversized body is refused, and
    the connection (its body unread) is not used again."""
    with ScriptedOrigin([]) as origin:
        origin.script.append(origin.serve_each(lambda n: ok(BODY if n == 0 else b"x" * 5000)))
        fetcher.get(origin.url + "a.json", max_bytes=1024)
        with pytest.raises(FetchError, match="declares 5000 bytes"):
            fetcher.get(origin.url + "a.json", max_bytes=1024)
        assert fetcher.get(origin.url + "a.json", max_bytes=1024).body == BODY
        assert origin.connections == 2


def test_an_error_status_closes_the_connection(fetcher: Fetcher) -> None:
    """A 404 is a FetchError; its connection is not reused (its body was not read)."""
    with ScriptedOrigin([]) as origin:
        missing = b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n"
        origin.script.append(
            origin.serve_each(lambda n: missing if len(origin.requests) == 1 else ok())
        )
        with pytest.raises(FetchError, match="answered HTTP 404 Not Found") as caught:
            fetcher.get(origin.url + "a.json", max_bytes=1024)
        assert caught.value.status == 404
        assert fetcher.get(origin.url + "a.json", max_bytes=1024).body == BODY
        assert origin.connections == 2


class TestFraming:
    def test_a_chunked_body_is_joined(self, fetcher: Fetcher) -> None:
        """Transfer-Encoding: chunked is decoded, and the connection is reused after it."""
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        with ScriptedOrigin([]) as origin:
            origin.script.append(origin.serve_each(lambda n: chunked))
            assert fetcher.get(origin.url + "a", max_bytes=100).body == b"hello world"
            assert fetcher.get(origin.url + "a", max_bytes=100).body == b"hello world"
            assert origin.connections == 1

    def test_a_chunked_body_over_the_limit_is_cut_off_as_it_arrives(self, fetcher: Fetcher) -> None:
        """A chunk announcing 256 MiB is refused once its bytes pass max_bytes: the
        fetch fails at once (the origin then goes silent), not at the deadline, and
        the rest of the chunk is never waited for."""
        chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10000000\r\n" + (
            b"x" * 200
        )
        with ScriptedOrigin([]) as origin:
            origin.script.append(origin.serve_each(lambda n: chunked))
            started = time.monotonic()
            with pytest.raises(FetchError, match="larger than the 100-byte limit"):
                fetcher.get(origin.url + "a", max_bytes=100)
            assert time.monotonic() - started < 0.4

    def test_a_chunked_body_at_the_limit_is_accepted(self, fetcher: Fetcher) -> None:
        """Chunks adding up to exactly max_bytes are accepted."""
        chunked = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"32\r\n" + b"a" * 50 + b"\r\n32\r\n" + b"b" * 50 + b"\r\n0\r\n\r\n"
        )
        with ScriptedOrigin([]) as origin:
            origin.script.append(origin.serve_each(lambda n: chunked))
            assert fetcher.get(origin.url + "a", max_bytes=100).body == b"a" * 50 + b"b" * 50
            with pytest.raises(FetchError, match="larger than the 99-byte limit"):
                fetcher.get(origin.url + "a", max_bytes=99)

    def test_both_framings_are_refused(self, fetcher: Fetcher) -> None:
        """Transfer-Encoding and Content-Length together (RFC 9112 6.3: "ought to be
        handled as an error") are refused, and the connection is not used again."""
        both = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"
            b"5\r\nhello\r\n0\r\n\r\n"
        )
        with ScriptedOrigin([]) as origin:
            origin.script.append(origin.serve_each(lambda n: both))
            for _ in range(2):
                with pytest.raises(FetchError, match="Content-Length can't be present"):
                    fetcher.get(origin.url + "a", max_bytes=100)
            assert origin.connections == 2

    def test_trailer_fields_are_not_taken_for_the_head(self, fetcher: Fetcher) -> None:
        """A trailer after a chunked body is read past: it never sets the ETag."""
        answer = (
            b'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: "a"\r\n\r\n'
            b'2\r\nok\r\n0\r\nETag: "forged"\r\n\r\n'
        )
        with ScriptedOrigin([]) as origin:
            origin.script.append(origin.serve_each(lambda n: answer))
            fetched = fetcher.get(origin.url + "a", max_bytes=100)
            assert (fetched.body, fetched.etag) == (b"ok", '"a"')
            fetcher.get(origin.url + "a", max_bytes=100)
            assert origin.connections == 1

    @pytest.mark.parametrize(
        "answer",
        [
            pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 19\r\n\r\n" + BODY, id="http-1.0"),
            pytest.param(
                b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 19\r\n\r\n" + BODY,
                id="http-1.0-keep-alive",
            ),
            pytest.param(b"HTTP/1.1 200 OK\r\n\r\n" + BODY, id="ended-by-close"),
        ],
    )
    def test_only_http_1_1_with_framing_is_reused(self, fetcher: Fetcher, answer: bytes) -> None:
        """An HTTP/1.0 answer, or one whose body ends with the connection, is used once."""
        with ScriptedOrigin([]) as origin:
            close = b"Content-Length" not in answer
            origin.script.append(origin.serve_each(lambda n: answer, close=close))
            for _ in range(2):
                assert fetcher.get(origin.url + "a", max_bytes=100).body == BODY
            assert origin.connections == 2

    def test_a_head_of_exactly_the_limit_is_accepted(self, fetcher: Fetcher) -> None:
        """The head bound is exact: 64 KiB passes, one byte more does not."""
        filler = 65536 - len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: \r\n\r\n")
        for extra, accepted in ((0, True), (1, False)):
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: " + b"a" * (filler + extra)
            answer += b"\r\n\r\nok"
            with ScriptedOrigin([]) as origin:
                origin.script.append(origin.serve_each(lambda n, answer=answer: answer))
                if accepted:
                    assert fetcher.get(origin.url + "a", max_bytes=100).body == b"ok"
                else:
                    with pytest.raises(FetchError, match="head over 65536 bytes"):
                        fetcher.get(origin.url + "a", max_bytes=100)

    def test_an_interim_answer_is_skipped(self, fetcher: Fetcher) -> None:
        """A 100 Continue before the answer is skipped."""
        with ScriptedOrigin([]) as origin:
            origin.script.append(
                origin.serve_each(lambda n: b"HTTP/1.1 100 Continue\r\n\r\n" + ok())
            )
            assert fetcher.get(origin.url + "a", max_bytes=100).body == BODY

    @pytest.mark.parametrize(
        ("answer", "fragment"),
        [
            pytest.param(b"HTTP/1.1 2000 OK\r\n\r\n", "Invalid response status", id="status"),
            pytest.param(b"ICY 200 OK\r\n\r\n", "Expected HTTP/", id="not-http"),
            pytest.param(b"HTTP/2.0 200 OK\r\n\r\n", "HTTP version", id="http-2"),
            pytest.param(b"HTTP/1.1 200 OK\r\n folded\r\n\r\n", "Unexpected space", id="obs-fold"),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\nContent-Length: 2\r\n\r\nok",
                "Unexpected whitespace",
                id="obs-fold-inside",
            ),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "Duplicate Content-Length",
                id="two-lengths",
            ),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "Invalid character in Content-Length",
                id="neg-length",
            ),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                "Transfer-Encoding",
                id="gzip-chunked",
            ),
            pytest.param(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", "101", id="upgrade"
            ),
            pytest.param(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", "CR", id="bare-lf"),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\nok",
                "header value char",
                id="nul",
            ),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
                "Transfer-Encoding",
                id="gzip",
            ),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "Invalid character in chunk size",
                id="bad-chunk",
            ),
            pytest.param(
                b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000 + b"\r\n\r\n", "over 65536", id="head"
            ),
        ],
    )
    def test_a_malformed_answer_is_refused(
        self, fetcher: Fetcher, answer: bytes, fragment: str
    ) -> None:
        """Anything that breaks HTTP/1.1 framing is a FetchError saying so, never a body."""
        with ScriptedOrigin([]) as origin:
            origin.script.append(origin.serve_each(lambda n: answer))
            with pytest.raises(FetchError, match="malformed HTTP response") as caught:
                fetcher.get(origin.url + "a", max_bytes=1 << 20)
            assert fragment in caught.value.message


def test_against_the_origin_server(tmp_path: Path) -> None:
    """Against the real origin server: many GETs and 304s in a row, each checked."""
    (tmp_path / "a.json").write_bytes(BODY)
    etag = f'"{hashlib.sha256(BODY).hexdigest()}"'
    with OriginHttpServer(tmp_path, port=0) as server, Fetcher(timeout_seconds=2) as fetcher:
        for _ in range(50):
            assert fetcher.get(server.url + "a.json", max_bytes=1024).body == BODY
            assert fetcher.get(server.url + "a.json", max_bytes=1024, etag=etag).not_modified
        with pytest.raises(FetchError, match="404"):
            fetcher.get(server.url + "missing.json", max_bytes=1024)
        assert fetcher.get(server.url + "a.json", max_bytes=1024).body == BODY
