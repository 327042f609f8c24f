"""HTTP for hosts: limits, timeouts and conditional requests (releasecontrol.fetch).

Every test talks to a real origin on loopback: `OriginHttpServer` serving a
folder, behind `OriginFront`, which can make a path misbehave.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from host_repository import ENDLESS, HANG, HUGE_LENGTH, TRICKLE, TRUNCATED, OriginFront

from releasecontrol.errors import VerificationError
from releasecontrol.fetch import Fetcher, FetchError
from releasecontrol_server.origin.http import OriginHttpServer

BODY = b'{"hello": "world"}\n'
ETAG = f'"{hashlib.sha256(BODY).hexdigest()}"'
TIMEOUT = 0.3


@pytest.fixture
def front(tmp_path: Path) -> Iterator[OriginFront]:
    (tmp_path / "file.json").write_bytes(BODY)
    with OriginHttpServer(tmp_path, port=0) as origin, OriginFront(origin.url) as front:
        yield front


@pytest.fixture
def fetcher() -> Fetcher:
    return Fetcher(timeout_seconds=TIMEOUT)


class TestGet:
    def test_returns_the_body_and_its_etag(self, front: OriginFront, fetcher: Fetcher) -> None:
        """A 200 gives the whole body and the origin's ETag; not_modified is False."""
        url = front.url + "file.json"
        fetched = fetcher.get(url, max_bytes=1024)
        assert fetched.url == url
        assert fetched.body == BODY
        assert fetched.etag == ETAG
        assert fetched.not_modified is False

    def test_without_an_etag_the_request_is_unconditional(self, front: OriginFront) -> None:
        """Without an etag the request is unconditional."""
        Fetcher().get(front.url + "file.json", max_bytes=1024)
        assert front.requests[-1].if_none_match is None

    def test_a_matching_etag_gives_not_modified(self, front: OriginFront, fetcher: Fetcher) -> None:
        """With the current ETag the origin answers 304: no body, not_modified, the ETag kept."""
        fetched = fetcher.get(front.url + "file.json", max_bytes=1024, etag=ETAG)
        assert front.requests[-1].if_none_match == ETAG
        assert front.requests[-1].status == 304
        assert fetched.not_modified is True
        assert fetched.body == b""
        assert fetched.etag == ETAG

    def test_a_stale_etag_gives_the_new_body(self, front: OriginFront, fetcher: Fetcher) -> None:
        """An ETag of an older version gets the current body with its new ETag."""
        fetched = fetcher.get(front.url + "file.json", max_bytes=1024, etag='"old"')
        assert fetched.not_modified is False
        assert fetched.body == BODY and fetched.etag == ETAG

    def test_a_body_exactly_at_the_limit_is_accepted(
        self, front: OriginFront, fetcher: Fetcher
    ) -> None:
        """max_bytes is inclusive: a body of exactly that many bytes is fine."""
        assert fetcher.get(front.url + "file.json", max_bytes=len(BODY)).body == BODY


class TestRefusals:
    @pytest.mark.parametrize(
        ("fault", "path", "fragment"),
        [
            pytest.param(None, "missing.json", "answered HTTP 404 Not Found", id="404"),
            pytest.param(500, "file.json", "answered HTTP 500", id="500"),
            pytest.param(301, "file.json", "answered HTTP 301", id="redirect-not-followed"),
        ],
    )
    def test_an_error_status_names_the_url_and_status(
        self,
        front: OriginFront,
        fetcher: Fetcher,
        fault: int | None,
        path: str,
        fragment: str,
    ) -> None:
        """Any status but 2xx and 304 is a FetchError naming the URL and the status."""
        if fault is not None:
            front.faults[path] = fault
        url = front.url + path
        with pytest.raises(FetchError) as caught:
            fetcher.get(url, max_bytes=1024)
        assert caught.value.message.startswith(url)
        assert fragment in caught.value.message
        assert caught.value.status == (fault or 404)
        assert caught.value.url == url
        assert caught.value.kind == "fetch"

    def test_is_a_verification_error(self) -> None:
        """What a host could not fetch it did not verify: FetchError is a VerificationError."""
        assert issubclass(FetchError, VerificationError)

    def test_one_byte_over_the_limit_is_refused(self, front: OriginFront, fetcher: Fetcher) -> None:
        """A body one byte longer than max_bytes is refused, naming the limit: `too-large`."""
        with pytest.raises(
            FetchError, match=rf"larger than the {len(BODY) - 1}-byte limit"
        ) as caught:
            fetcher.get(front.url + "file.json", max_bytes=len(BODY) - 1)
        assert caught.value.kind == "too-large"

    def test_endless_data_is_cut_off_at_the_limit(
        self, front: OriginFront, fetcher: Fetcher
    ) -> None:
        """A stream without a length that never ends is refused once it passes the limit."""
        front.faults["file.json"] = ENDLESS
        with pytest.raises(FetchError, match=r"is larger than the 100000-byte limit$") as caught:
            fetcher.get(front.url + "file.json", max_bytes=100_000)
        assert caught.value.kind == "too-large"

    def test_a_declared_length_over_the_limit_is_refused_unread(
        self, front: OriginFront, fetcher: Fetcher
    ) -> None:
        """A Content-Length over the limit is refused before any of the body is read."""
        front.faults["file.json"] = HUGE_LENGTH
        with pytest.raises(FetchError, match=rf"declares {1 << 40} bytes") as caught:
            fetcher.get(front.url + "file.json", max_bytes=1024)
        assert caught.value.kind == "too-large"

    def test_a_body_shorter_than_declared_is_refused(
        self, front: OriginFront, fetcher: Fetcher
    ) -> None:
        """A connection closed before the declared length arrived is a failure, not a body."""
        front.faults["file.json"] = TRUNCATED
        with pytest.raises(FetchError, match="ended after 10 of the 100 bytes") as caught:
            fetcher.get(front.url + "file.json", max_bytes=1024)
        assert caught.value.kind == "fetch"

    @pytest.mark.parametrize(
        "fault",
        [
            pytest.param(HANG, id="hung-origin-says-nothing"),
            pytest.param(TRICKLE, id="slow-origin-dribbles-bytes"),
        ],
    )
    def test_one_deadline_bounds_the_whole_request(
        self, front: OriginFront, fetcher: Fetcher, fault: str
    ) -> None:
        """Silence and a byte every few milliseconds both fail at the same total deadline."""
        front.faults["file.json"] = fault
        started = time.monotonic()
        with pytest.raises(
            FetchError, match=rf"file\.json timed out after {TIMEOUT:g} s$"
        ) as caught:
            fetcher.get(front.url + "file.json", max_bytes=1 << 20)
        assert TIMEOUT * 0.9 <= time.monotonic() - started < TIMEOUT + 0.5
        assert caught.value.kind == "timeout"

    def test_an_unreachable_origin_names_the_url(self, fetcher: Fetcher) -> None:
        """Nothing listening is a FetchError naming the URL, not an OSError."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"http://127.0.0.1:{port}/remote-index.json"
        with pytest.raises(FetchError, match=rf"^{url} could not be fetched") as caught:
            fetcher.get(url, max_bytes=1024)
        assert caught.value.kind == "fetch"

    @pytest.mark.parametrize(
        "url",
        [
            pytest.param("file:///etc/passwd", id="file"),
            pytest.param("ftp://cdn.example/remote-index.json", id="ftp"),
            pytest.param("http:///remote-index.json", id="no-host"),
            pytest.param("cdn.example/remote-index.json", id="no-scheme"),
            pytest.param("http://cdn.example:99999/x", id="bad-port"),
        ],
    )
    def test_only_http_and_https_urls(self, fetcher: Fetcher, url: str) -> None:
        """Any URL that is not http(s) with a host and a valid port is refused, naming it."""
        with pytest.raises(FetchError) as caught:
            fetcher.get(url, max_bytes=1024)
        assert repr(url) in caught.value.message

    def test_the_timeout_must_be_positive(self) -> None:
        """A zero or negative timeout is a programming error."""
        with pytest.raises(ValueError, match="positive"):
            Fetcher(timeout_seconds=0)
