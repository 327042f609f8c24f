"""The real server's /metrics and logs, as an operator's scraper and log shipper see them."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import RunningServer, make_feature, start_server
from prometheus_client.parser import text_string_to_metric_families

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient, resolve_connection
from releasecontrol.manifest import load_feature_folder
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol_server.auth.tokens import create_token
from releasectl.launcher import LocalServerError

pytestmark = pytest.mark.integration

METRICS_TOKEN = "scrape-0123456789abcdef"
SERVICE = "releasecontrol.v1.ReleaseControl"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: RunningServer, token: str | None = METRICS_TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(server.endpoints["metrics_url"], headers=headers, timeout=10)


def samples(server: RunningServer) -> Samples:
    """Every sample of /metrics, parsed by Prometheus's own text parser: (name, labels) ->
    value."""
    response = scrape(server)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    found: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly `labels`; 0 when the server does not export it (a
    counter of a label set never incremented is absent)."""
    return found.get((name, frozenset(labels.items())), 0.0)


def rpc(method: str, code: str) -> dict[str, str]:
    return {"service": SERVICE, "method": method, "code": code}


def publish(client: ReleaseControlClient, tmp_path: Path, version: str, **kwargs: object) -> None:
    folder = make_feature(tmp_path / f"checkout-{version}", "checkout", version)
    client.publish(load_feature_folder(folder, feature_id="checkout"), **kwargs)  # type: ignore[arg-type]


def wait_for(server: RunningServer, done: Callable[[Samples], bool]) -> Samples:
    """Scrape until `done(samples)`, for at most 10 s; the last scrape."""
    deadline = time.monotonic() + 10
    while True:
        found = samples(server)
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


class TestMetrics:
    @pytest.fixture
    def server(self, tmp_path: Path) -> Iterator[RunningServer]:
        home = tmp_path / "home"
        create_token(home / "auth" / "tokens.json", "bootstrap", ["viewer"])
        running = start_server(
            home,
            RELEASECONTROL_AUTH_MODE="rpc-token",
            RELEASECONTROL_METRICS_TOKEN=METRICS_TOKEN,
        )
        yield running
        running.stop()

    def client(self, server: RunningServer, principal: str) -> ReleaseControlClient:
        token = create_token(server.home / "auth" / "tokens.json", principal, ["admin"])
        settings = resolve_connection(server=server.grpc, home=server.home, environ={})
        return ReleaseControlClient(dataclasses.replace(settings, token=token))

    def test_rpcs_changes_origin_and_watchers_are_counted(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """Every RPC is counted by method and code (refusals too), every change by its action,
        every batch's origin write timed; the gauges follow the watchers and the outbox."""
        anonymous = server.client()
        for _ in range(2):
            with pytest.raises(errors.Unauthenticated):
                anonymous.get_status()
        admin = self.client(server, "ops")
        publish(admin, tmp_path, "1.0.0", reason="first", ticket="OPS-1")
        publish(admin, tmp_path, "1.1.0")
        admin.rollback("checkout", "1.0.0", reason="bad 1.1.0")
        admin.deploy_canary("checkout", "1.1.0", soak_seconds=0)
        admin.promote("checkout", "1.1.0")
        for _ in range(3):
            admin.get_status()
        with pytest.raises(errors.InvalidArgument):
            admin.list_features(page_token="@@not-a-token@@")
        with pytest.raises(errors.NotFound):
            admin.get_feature("no-such-feature")

        watcher = admin.watch()
        assert next(watcher).type == pb.WATCH_EVENT_TYPE_SNAPSHOT
        assert next(watcher).type == pb.WATCH_EVENT_TYPE_SYNCED  # subscribed by now
        watching = samples(server)
        watcher.cancel()
        # The server learns that the watcher left a moment after the client does.
        after = wait_for(
            server,
            lambda found: (
                value(found, "releasecontrol_watch_subscribers") == 0
                and value(found, "releasecontrol_rpcs_total", **rpc("WatchReleases", "CANCELLED"))
                > 0
            ),
        )

        assert value(watching, "releasecontrol_watch_subscribers") == 1
        assert value(after, "releasecontrol_watch_subscribers") == 0
        total = "releasecontrol_rpcs_total"
        assert value(after, total, **rpc("GetStatus", "UNAUTHENTICATED")) == 2
        assert value(after, total, **rpc("GetStatus", "OK")) == 3
        assert value(after, total, **rpc("PublishVersion", "OK")) == 2
        assert value(after, total, **rpc("Rollback", "OK")) == 1
        assert value(after, total, **rpc("ListFeatures", "INVALID_ARGUMENT")) == 1
        assert value(after, total, **rpc("GetFeature", "NOT_FOUND")) == 1
        # A stream is counted once it ends (the client left: CANCELLED), never timed.
        assert value(watching, total, **rpc("WatchReleases", "CANCELLED")) == 0
        assert value(after, total, **rpc("WatchReleases", "CANCELLED")) == 1
        assert not any(
            dict(labels).get("method") == "WatchReleases"
            for name, labels in after
            if name.startswith("releasecontrol_rpc_duration_seconds")
        )

        histogram = "releasecontrol_rpc_duration_seconds"
        for method, code, calls in [
            ("GetStatus", "UNAUTHENTICATED", 2),
            ("GetStatus", "OK", 3),
            ("PublishVersion", "OK", 2),
            ("GetFeature", "NOT_FOUND", 1),
        ]:
            assert value(after, f"{histogram}_count", **rpc(method, code)) == calls
            inf = value(after, f"{histogram}_bucket", **rpc(method, code), le="+Inf")
            assert inf == calls
            assert 0 < value(after, f"{histogram}_sum", **rpc(method, code)) < 10 * calls

        changes = "releasecontrol_changes_total"
        assert value(after, changes, action="publish") == 2
        assert value(after, changes, action="rollback") == 1
        assert value(after, changes, action="deploy_canary") == 1
        assert value(after, changes, action="promote") == 1
        # Every action the state machine knows is exported from the start, at 0.
        assert (changes, frozenset({("action", "set_channel")})) in after
        assert value(after, changes, action="set_channel") == 0

        # One change at a time: five batches, each timed from its commit to the origin.
        assert value(after, "releasecontrol_origin_publish_duration_seconds_count") == 5
        assert value(after, "releasecontrol_origin_write_failures_total") == 0
        assert value(after, "releasecontrol_outbox_files") == 0
        # One server on SQLite: the database answers, and it runs the cluster's jobs.
        assert value(after, "releasecontrol_database_up") == 1
        assert value(after, "releasecontrol_leader") == 1

    def test_the_token_is_required_when_configured(self, server: RunningServer) -> None:
        """With metrics_token set, a scrape without it or with another one is 401, with it 200."""
        missing = scrape(server, token=None)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "releasecontrol_" not in missing.text
        assert scrape(server, token="another-0123456789abcdef").status_code == 401
        good = scrape(server)
        assert good.status_code == 200
        assert "releasecontrol_rpcs_total" in good.text
        # The admin UI's own paths are not opened by it.
        admin = httpx.get(server.endpoints["admin_url"], follow_redirects=False, timeout=10)
        assert admin.status_code in (303, 307, 401, 403)
        assert METRICS_TOKEN not in server.log()


class TestJsonLogs:
    def test_every_line_is_json_and_a_change_carries_its_fields(self, tmp_path: Path) -> None:
        """With log_format json every log line is one JSON object, and a change's line names
        who made it, on what, why and under which ticket; /metrics is open without a token."""
        server = start_server(tmp_path / "home", RELEASECONTROL_LOG_FORMAT="json")
        try:
            client = server.client()
            publish(client, tmp_path, "1.0.0", reason="launch day", ticket="REL-42", actor="ci")
            assert scrape(server, token=None).status_code == 200
        finally:
            server.stop()
        lines = [line for line in server.log().splitlines() if line.strip()]
        entries = [json.loads(line) for line in lines]  # raises on any line that is not JSON
        assert all({"time", "level", "logger", "message"} <= set(e) for e in entries)
        changes = [e for e in entries if e["logger"] == "releasecontrol_server.changes"]
        assert len(changes) == 1
        change = changes[0]
        assert change["level"] == "INFO"
        assert change["feature"] == "checkout"
        assert change["action"] == "publish"
        assert change["principal"] == "spiffe://releasecontrol.dev/dev-operator"  # its certificate
        assert change["actor"] == "ci"
        assert change["reason"] == "launch day"
        assert change["ticket"] == "REL-42"
        assert (change["from_stable"], change["to_stable"]) == (None, "1.0.0")
        assert change["sequence"] == 1
        assert change["global_sequence"] == 1


class TestLogFormatSetting:
    def test_an_unknown_log_format_stops_the_start_naming_the_setting(self, tmp_path: Path) -> None:
        """RELEASECONTROL_LOG_FORMAT=xml is refused at start with one line naming it."""
        with pytest.raises(LocalServerError) as caught:
            start_server(tmp_path / "home", RELEASECONTROL_LOG_FORMAT="xml")
        assert caught.value.last_error == (
            "RELEASECONTROL_LOG_FORMAT is 'xml'; set it to 'text' or 'json'."
        )
