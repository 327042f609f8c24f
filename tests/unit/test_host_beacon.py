"""Beacons from the Python host (releasecontrol.beacon, docs/beacons.md): what is sent, when,
and what the host does with each answer of the control plane.

A real HTTP receiver on loopback (port 0) stands for the beacon listener: it records each
batch as it arrived and answers what the test tells it to. The host tests run the real
FeatureHost against a real origin (`HostRepository` behind `OriginFront`), as test_host.py
does. Retry-After is measured on a clock the test moves; the only waits are on an event.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from host_repository import NOW, HostRepository, OriginFront, default_files, sha256

from releasecontrol.beacon import Beacons
from releasecontrol.errors import ConfigError, InvalidArgument
from releasecontrol.fetch import Fetcher
from releasecontrol.host import FeatureHost
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol_server.origin.http import OriginHttpServer

KEY = "pk_test_shop"
SENT_AT = NOW + timedelta(hours=1)
BATCH_ID = re.compile(r"[A-Za-z0-9_-]{22,64}")  # at least 128 random bits, base64url


@dataclass
class Received:
    """One request the receiver got: its path, content type and body (JSON when it parses)."""

    path: str
    content_type: str
    body: Any


@dataclass
class Receiver:
    """A beacon listener on 127.0.0.1: answers 202 unless `answers` holds the next answer,
    (status, JSON body, headers)."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    answers: list[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    arrived: threading.Condition = field(default_factory=threading.Condition)

    @property
    def batches(self) -> list[dict[str, Any]]:
        return [r.body for r in self.received]

    def wait_for(self, count: int, seconds: float = 5.0) -> list[dict[str, Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.received) >= count, seconds)
        return self.batches


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            status, answer, headers = (
                state.answers.pop(0) if state.answers else (202, {"accepted": True}, {})
            )
            # Recorded before the answer: once the host has its answer, the test sees the batch.
            with state.arrived:
                state.received.append(
                    Received(self.path, self.headers.get("content-type", ""), json.loads(body))
                )
                state.arrived.notify_all()
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    # A short poll: shutdown() waits for the loop to look up.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class Monotonic:
    """The clock of the interval and Retry-After, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def make_beacons(receiver: Receiver, monotonic: Monotonic) -> Iterator[Any]:
    """Beacons to the receiver whose thread never comes round during a test (an hour's
    interval): the test sends with flush() and close()."""
    made: list[Beacons] = []

    def make(**kwargs: Any) -> Beacons:
        kwargs.setdefault("interval_seconds", 3600)
        kwargs.setdefault("clock", lambda: SENT_AT)
        kwargs.setdefault("monotonic", monotonic)
        beacons = Beacons(receiver.url, KEY, **kwargs)
        made.append(beacons)
        return beacons

    yield make
    for beacons in made:
        beacons.close()


def row(version: str, loads: int = 0, feature: str = "checkout", **failures: int) -> dict[str, Any]:
    """A row as the wire has it: every count present."""
    return {
        "feature": feature,
        "version": version,
        "loads": loads,
        "entry_errors": failures.get("entry_errors", 0),
        "load_failures": failures.get("load_failures", 0),
        "refusals": failures.get("refusals", 0),
    }


def counts(batches: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The rows of all `batches`, summed per (feature, version)."""
    total: dict[tuple[str, str], dict[str, Any]] = {}
    for batch in batches:
        for r in batch["counts"]:
            into = total.setdefault(
                (r["feature"], r["version"]), row(r["version"], feature=r["feature"])
            )
            for name in ("loads", "entry_errors", "load_failures", "refusals"):
                into[name] += r[name]
    return total


class TestBatch:
    def test_counts_per_version_are_sent_as_one_batch_of_exactly_the_wire_format(
        self, make_beacons: Any, receiver: Receiver
    ) -> None:
        """Loads and failures of two versions become one batch: v 1, the key, a random batch
        id, sent_at in UTC seconds, a row per version with every count, and nothing else."""
        beacons = make_beacons()
        for _ in range(3):
            beacons.report_load("checkout", "1.0.0")
        beacons.report_load("checkout", "1.1.0")
        beacons.report_failure("checkout", "1.1.0", "entry_error")
        beacons.report_failure("checkout", "1.1.0", "load_failure")
        beacons.report_failure("checkout", "1.1.0", "refusal")
        beacons.report_failure("checkout", "1.1.0", "refusal")
        beacons.flush()

        (received,) = receiver.received
        assert (received.path, received.content_type) == ("/v1/beacons", "application/json")
        batch = received.body
        assert BATCH_ID.fullmatch(batch["batch"])
        assert batch == {
            "v": 1,
            "key": KEY,
            "batch": batch["batch"],
            "sent_at": "2026-11-26T11:00:00Z",
            "counts": [
                row("1.0.0", 3),
                row("1.1.0", 1, entry_errors=1, load_failures=1, refusals=2),
            ],
        }
        assert all(
            type(r[k]) is int for r in batch["counts"] for k in r if k not in ("feature", "version")
        )
        assert beacons.pending == {}
        assert beacons.sent_batches == 1

    def test_each_batch_has_a_new_id_and_only_what_was_counted_since(
        self, make_beacons: Any, receiver: Receiver
    ) -> None:
        """A second batch carries a new id and only the counts since the first."""
        beacons = make_beacons()
        beacons.report_load("checkout", "1.0.0")
        beacons.flush()
        beacons.report_load("search", "2.0.0")
        beacons.flush()
        first, second = receiver.batches
        assert first["batch"] != second["batch"]
        assert second["counts"] == [row("2.0.0", 1, feature="search")]

    def test_nothing_is_sent_while_there_is_nothing_to_count(
        self, make_beacons: Any, receiver: Receiver
    ) -> None:
        """No counts, no request: not at a flush, not at close."""
        beacons = make_beacons()
        beacons.flush()
        beacons.close()
        assert receiver.received == []

    def test_the_thread_sends_every_interval_while_there_are_counts(
        self, receiver: Receiver
    ) -> None:
        """With counts pending, the background thread sends them within the interval; the
        reporting call itself does not wait for it."""
        beacons = Beacons(receiver.url, KEY, interval_seconds=0.05)
        try:
            beacons.report_load("checkout", "1.0.0")
            assert receiver.wait_for(1)[0]["counts"] == [row("1.0.0", 1)]
        finally:
            beacons.close()

    def test_close_sends_the_last_batch_and_ignores_later_reports(
        self, make_beacons: Any, receiver: Receiver
    ) -> None:
        """close() sends what is pending; reports after it are dropped; a second close does
        nothing."""
        beacons = make_beacons()
        beacons.report_failure("checkout", "1.1.0", "entry_error")
        beacons.close()
        assert [b["counts"] for b in receiver.batches] == [[row("1.1.0", entry_errors=1)]]
        beacons.report_load("checkout", "1.1.0")
        beacons.close()
        assert len(receiver.received) == 1

    def test_a_capped_number_of_versions_wait(self, make_beacons: Any, receiver: Receiver) -> None:
        """Past `max_pending_rows` feature versions, counts of a new one are dropped (memory
        stays bounded); those already pending still add up."""
        beacons = make_beacons(max_pending_rows=2)
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            beacons.report_load("checkout", version)
        beacons.report_load("checkout", "1.0.0")
        beacons.flush()
        assert receiver.batches[0]["counts"] == [row("1.0.0", 2), row("1.1.0", 1)]
        assert beacons.dropped_rows == 1

    def test_more_versions_than_a_batch_holds_go_in_several(
        self, make_beacons: Any, receiver: Receiver
    ) -> None:
        """The server takes at most 200 rows a batch: 250 versions are two batches."""
        beacons = make_beacons()
        for n in range(250):
            beacons.report_load("checkout", f"1.0.{n}")
        beacons.flush()
        assert [len(b["counts"]) for b in receiver.batches] == [200, 50]


class TestAnswers:
    def test_429_keeps_the_counts_and_sends_them_with_the_next_batch_after_retry_after(
        self, make_beacons: Any, receiver: Receiver, monotonic: Monotonic
    ) -> None:
        """Rate limited: nothing is sent before Retry-After; then one batch carries the
        refused counts and the new ones, under a new id."""
        receiver.answers.append((429, {"error": "too many"}, {"retry-after": "30"}))
        beacons = make_beacons()
        beacons.report_load("checkout", "1.0.0")
        beacons.flush()
        beacons.report_load("checkout", "1.0.0")
        beacons.report_failure("checkout", "1.0.0", "load_failure")
        monotonic.now += 29
        beacons.flush()
        assert len(receiver.received) == 1
        monotonic.now += 2
        beacons.flush()
        refused, sent = receiver.batches
        assert sent["batch"] != refused["batch"]
        assert sent["counts"] == [row("1.0.0", 2, load_failures=1)]

    def test_403_stops_sending(
        self, make_beacons: Any, receiver: Receiver, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A key the control plane refuses: the counts are dropped, nothing more is sent,
        and one error line says what to fix."""
        receiver.answers.append((403, {"error": "key is not a beacon key", "field": "key"}, {}))
        beacons = make_beacons()
        beacons.report_load("checkout", "1.0.0")
        with caplog.at_level(logging.WARNING, logger="releasecontrol.beacon"):
            beacons.flush()
            beacons.report_load("checkout", "1.0.0")
            beacons.flush()
            beacons.close()
        assert len(receiver.received) == 1
        assert beacons.stopped and beacons.pending == {}
        assert [r.levelname for r in caplog.records] == ["ERROR"]
        assert "configure the host with one of its beacon_keys" in caplog.records[0].message

    def test_413_splits_the_rows(self, make_beacons: Any, receiver: Receiver) -> None:
        """Too large: the same rows go again in two halves, each counted once."""
        receiver.answers.append((413, {"error": "too large"}, {}))
        beacons = make_beacons()
        for version in ("1.0.0", "1.1.0", "1.2.0", "1.3.0"):
            beacons.report_load("checkout", version)
        beacons.flush()
        too_large, *halves = receiver.batches
        assert [len(b["counts"]) for b in halves] == [2, 2]
        assert counts(halves) == counts([too_large])

    def test_422_naming_a_row_drops_it_and_sends_the_others(
        self, make_beacons: Any, receiver: Receiver
    ) -> None:
        """A version the control plane never published spoils only its own row: the rest is
        sent again at once under a new id."""
        receiver.answers.append(
            (
                422,
                {"error": "version '9.9.9' was never published", "field": "counts[1].version"},
                {},
            )
        )
        beacons = make_beacons()
        beacons.report_load("checkout", "1.0.0")
        beacons.report_load("checkout", "9.9.9")
        beacons.report_load("search", "2.0.0")
        beacons.flush()
        refused, sent = receiver.batches
        assert sent["batch"] != refused["batch"]
        assert sent["counts"] == [row("1.0.0", 1), row("2.0.0", 1, feature="search")]
        assert beacons.dropped_rows == 1

    @pytest.mark.parametrize("status", [400, 409], ids=["bad-batch", "replayed-or-stale"])
    def test_a_refused_batch_is_dropped_and_logged_once(
        self,
        make_beacons: Any,
        receiver: Receiver,
        caplog: pytest.LogCaptureFixture,
        status: int,
    ) -> None:
        """400 and 409: the batch is dropped (not sent again), one warning for many."""
        receiver.answers += [(status, {"error": "no", "field": "sent_at"}, {})] * 2
        beacons = make_beacons()
        with caplog.at_level(logging.WARNING, logger="releasecontrol.beacon"):
            for _ in range(2):
                beacons.report_load("checkout", "1.0.0")
                beacons.flush()
        beacons.flush()
        assert len(receiver.received) == 2
        assert beacons.pending == {} and beacons.dropped_rows == 2
        assert len(caplog.records) == 1

    def test_a_batch_without_answer_is_sent_again_with_its_id(
        self, make_beacons: Any, receiver: Receiver
    ) -> None:
        """A 503 (or no answer) does not say the batch was not counted: the same batch, same
        id and sent_at, goes again, so the server counts it once; newer counts follow in
        their own batch."""
        receiver.answers.append((503, {"error": "unavailable"}, {}))
        beacons = make_beacons()
        beacons.report_load("checkout", "1.0.0")
        beacons.flush()
        beacons.report_load("checkout", "1.1.0")
        beacons.flush()
        failed, again, newer = receiver.batches
        assert again == failed
        assert newer["counts"] == [row("1.1.0", 1)]

    def test_an_unreachable_listener_keeps_the_batch_for_later(self, monotonic: Monotonic) -> None:
        """Nobody listening: nothing is lost yet, nothing raises."""
        beacons = Beacons(
            "http://127.0.0.1:9", KEY, interval_seconds=3600, monotonic=monotonic, timeout_seconds=1
        )
        beacons.report_load("checkout", "1.0.0")
        beacons.flush()
        assert beacons.pending == {
            ("checkout", "1.0.0"): {
                "loads": 1,
                "entry_errors": 0,
                "load_failures": 0,
                "refusals": 0,
            }
        }
        beacons.close()
        assert beacons.dropped_rows == 1


class TestConfiguration:
    @pytest.mark.parametrize(
        ("url", "key", "fragment"),
        [
            pytest.param("ftp://x", KEY, "not an http:// or https:// URL", id="url-not-http"),
            pytest.param("http://127.0.0.1:1", "short", "8 to 128 letters", id="key-short"),
            pytest.param("http://127.0.0.1:1", "pk test", "8 to 128 letters", id="key-space"),
        ],
    )
    def test_a_bad_url_or_key_is_a_config_error(self, url: str, key: str, fragment: str) -> None:
        """The URL must be http(s) and the key one the server could hold."""
        with pytest.raises(ConfigError, match=fragment):
            Beacons(url, key)

    @pytest.mark.parametrize(
        ("url", "endpoint"),
        [
            pytest.param("http://b.example", "http://b.example/v1/beacons", id="origin"),
            pytest.param("http://b.example/rc/", "http://b.example/rc/v1/beacons", id="folder"),
            pytest.param(
                "http://b.example/v1/beacons", "http://b.example/v1/beacons", id="endpoint"
            ),
        ],
    )
    def test_the_endpoint_is_v1_beacons_of_the_listener(self, url: str, endpoint: str) -> None:
        """The beacon URL names the listener; /v1/beacons is added unless already there."""
        beacons = Beacons(url, KEY)
        try:
            assert beacons.url == endpoint
        finally:
            beacons.close()

    @pytest.mark.parametrize(
        ("args", "field_name"),
        [
            pytest.param(("checkout", "1.0.0", "crash"), "kind", id="kind"),
            pytest.param(("Checkout!", "1.0.0", "refusal"), "feature_id", id="feature"),
            pytest.param(("checkout", "", "refusal"), "version", id="version"),
            pytest.param(("checkout", "1.0.0 beta", "refusal"), "version", id="version-space"),
        ],
    )
    def test_a_bad_report_is_refused_naming_the_field(
        self, make_beacons: Any, args: tuple[str, str, Any], field_name: str
    ) -> None:
        """A kind not among the three, or a feature id or version that cannot be one, is a
        programming error: InvalidArgument naming it."""
        with pytest.raises(InvalidArgument) as caught:
            make_beacons().report_failure(*args)
        assert caught.value.field == field_name


# --- the host ----------------------------------------------------------------------------------


@dataclass
class Origin:
    repo: HostRepository
    front: OriginFront

    @property
    def index_url(self) -> str:
        return self.front.url + REMOTE_INDEX_PATH


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    """checkout 1.0.0 stable; search 2.0.0 stable."""
    repo = HostRepository(tmp_path / "origin")
    repo.add_version("checkout", "1.0.0")
    repo.add_version("search", "2.0.0")
    repo.publish()
    with OriginHttpServer(repo.root, port=0) as server, OriginFront(server.url) as front:
        yield Origin(repo, front)


@pytest.fixture
def make_host(origin: Origin, receiver: Receiver, tmp_path: Path) -> Iterator[Any]:
    """Hosts of the origin sending beacons to the receiver (closed at the end)."""
    made: list[FeatureHost] = []
    with Fetcher(timeout_seconds=1) as fetcher:

        def make(**kwargs: Any) -> FeatureHost:
            kwargs.setdefault("clock", lambda: SENT_AT)
            kwargs.setdefault("fetcher", fetcher)
            kwargs.setdefault("beacon_url", receiver.url)
            kwargs.setdefault("beacon_key", KEY)
            kwargs.setdefault("beacon_interval_seconds", 3600)
            host = FeatureHost(
                origin.index_url, origin.repo.trust(), state_dir=tmp_path / "host", **kwargs
            )
            made.append(host)
            return host

        yield make
        for host in made:
            host.close()


def canary_asset(version: str) -> str:
    name, data = next(iter(default_files("checkout", version).items()))
    return artifact_path(sha256(data), name)


class TestHost:
    def test_the_application_reports_loads_and_failures_of_each_users_version(
        self, make_host: Any, origin: Origin, receiver: Receiver
    ) -> None:
        """report_load and report_failure count per version the user got (version_for);
        close() sends them."""
        origin.repo.add_version("checkout", "1.1.0", channel="canary")
        origin.repo.publish_releases("checkout", canary_weight=5000)
        origin.repo.publish()
        host = make_host(features=["checkout"])
        assert host.refresh().ok
        seen = set()
        for user in ("user-4", "user-42", "user-420"):
            version = host.version_for("checkout", user).version
            seen.add(version)
            host.report_load("checkout", version)
            if version == "1.1.0":
                host.report_failure("checkout", version, "entry_error")
        assert seen == {"1.0.0", "1.1.0"}
        host.close()
        (batch,) = receiver.batches
        got = counts([batch])
        canary_users = got[("checkout", "1.1.0")]["loads"]
        assert got == {
            ("checkout", "1.0.0"): row("1.0.0", 3 - canary_users),
            ("checkout", "1.1.0"): row("1.1.0", canary_users, entry_errors=canary_users),
        }

    def test_a_tampered_file_of_a_version_is_counted_as_its_refusal(
        self, make_host: Any, origin: Origin, receiver: Receiver
    ) -> None:
        """The origin serves other bytes for an asset of 1.1.0: the host refuses 1.1.0, keeps
        serving 1.0.0, and counts one load of 1.1.0 that was refused."""
        host = make_host()
        assert host.refresh().ok
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        path = canary_asset("1.1.0")
        origin.repo.write(path, origin.repo.read(path) + b"// evil\n")
        report = host.refresh()
        assert (report.refusals["checkout"].code, report.refusals["checkout"].file) == (
            "length",
            path,
        )
        assert report.loaded["checkout"] == "1.0.0"
        host.close()
        assert [b["counts"] for b in receiver.batches] == [[row("1.1.0", 1, refusals=1)]]

    def test_a_manifest_that_is_not_the_signed_one_is_a_refusal(
        self, make_host: Any, origin: Origin, receiver: Receiver
    ) -> None:
        """A manifest whose SHA-256 is not the one releases.json lists: a refusal of that
        version."""
        host = make_host()
        assert host.refresh().ok
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        path = manifest_path("checkout", "1.1.0")
        origin.repo.write(path, origin.repo.read(path).replace(b"}", b" }", 1))
        assert host.refresh().refusals["checkout"].code == "hash"
        host.close()
        assert counts(receiver.batches) == {("checkout", "1.1.0"): row("1.1.0", 1, refusals=1)}

    def test_a_file_that_cannot_be_downloaded_is_a_load_failure(
        self, make_host: Any, origin: Origin, receiver: Receiver
    ) -> None:
        """An asset the origin answers 503 for: a failed load of that version, not a
        refusal."""
        host = make_host()
        assert host.refresh().ok
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        origin.front.faults[canary_asset("1.1.0")] = 503
        assert host.refresh().refusals["checkout"].code == "fetch"
        host.close()
        assert counts(receiver.batches) == {("checkout", "1.1.0"): row("1.1.0", 1, load_failures=1)}

    def test_a_refused_releases_file_names_no_version_and_counts_nothing(
        self, make_host: Any, origin: Origin, receiver: Receiver
    ) -> None:
        """A releases.json that does not verify says nothing trustworthy about versions:
        refused, and not counted."""
        host = make_host()
        assert host.refresh().ok
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        origin.front.faults[releases_path("checkout")] = 503
        assert host.refresh().refusals["checkout"].code == "fetch"
        host.close()
        assert receiver.received == []

    def test_a_host_without_beacons_checks_reports_and_sends_nothing(
        self, make_host: Any, receiver: Receiver
    ) -> None:
        """No beacon URL: reports are checked the same (a bug shows in development too) and
        nothing is sent."""
        host = make_host(beacon_url=None, beacon_key=None)
        assert host.beacons is None
        host.report_load("checkout", "1.0.0")
        with pytest.raises(InvalidArgument):
            host.report_failure("checkout", "1.0.0", "oops")  # type: ignore[arg-type]
        host.close()
        assert receiver.received == []

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            pytest.param({"beacon_key": None}, "beacon_key is missing", id="no-key"),
            pytest.param({"beacon_url": None}, "beacon_url is missing", id="no-url"),
            pytest.param({"beacon_url": "udp://x"}, "not an http:// or https://", id="bad-url"),
            pytest.param({"beacon_key": "pk"}, "8 to 128 letters", id="bad-key"),
        ],
    )
    def test_beacon_settings_come_in_pairs_and_are_checked(
        self, make_host: Any, kwargs: dict[str, Any], fragment: str
    ) -> None:
        """One of URL and key without the other, or either malformed: a ConfigError."""
        with pytest.raises(ConfigError, match=fragment):
            make_host(**kwargs)


class TestFromEnvironment:
    @pytest.fixture
    def env(self, origin: Origin, receiver: Receiver, tmp_path: Path) -> dict[str, str]:
        trust_file = tmp_path / "trust.json"
        trust_file.write_text(origin.repo.trust().to_json())
        return {
            "FEATURE_REMOTE_INDEX_URL": origin.index_url,
            "FEATURE_TRUST_PUBLIC_KEYS_PATH": str(trust_file),
            "RELEASECONTROL_HOME": str(tmp_path / "home"),
            "FEATURE_BEACON_URL": receiver.url,
            "FEATURE_BEACON_KEY": KEY,
        }

    def test_the_beacon_variables_turn_beacons_on(
        self, env: dict[str, str], receiver: Receiver
    ) -> None:
        """FEATURE_BEACON_URL and FEATURE_BEACON_KEY: the host sends its counts there."""
        with FeatureHost.from_environment(env, clock=lambda: SENT_AT) as host:
            assert host.beacons is not None and host.beacons.url == receiver.url + "/v1/beacons"
            host.report_load("search", "2.0.0")
        assert [b["counts"] for b in receiver.batches] == [[row("2.0.0", 1, feature="search")]]

    @pytest.mark.parametrize("missing", ["FEATURE_BEACON_URL", "FEATURE_BEACON_KEY"])
    def test_one_without_the_other_is_named(self, env: dict[str, str], missing: str) -> None:
        """Half a beacon configuration is refused, naming the variable that is missing."""
        del env[missing]
        with pytest.raises(ConfigError, match=f"{missing} is not set"):
            FeatureHost.from_environment(env)
