"""Beacons and canary analysis against the real server (issue 14, items 2-4): hosts' counts
over HTTP, bad and forged batches refused with nothing counted, a canary worse than stable
rolled back by the server with the figures in the reason, a flood of one side unable to roll
back by itself, soak by exposure, and reach.
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, make_feature, releasectl, start_server

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient
from releasecontrol.manifest import load_feature_folder

pytestmark = pytest.mark.integration

KEY = "pk_test_shop"


def canary_at_half(root: Path) -> RunningServer:
    """checkout 1.0.0 stable, 1.1.0 in canary at 50 % (30m soak); beacons on, judged often."""
    running = start_server(
        root / "home",
        RELEASECONTROL_BEACON_KEYS=KEY,
        RELEASECONTROL_ANALYSIS_INTERVAL_SECONDS="0.2",
    )
    client = running.client()
    client.publish(load_feature_folder(make_feature(root / "a", "checkout", "1.0.0")))
    client.publish(load_feature_folder(make_feature(root / "b", "checkout", "1.1.0")))
    client.rollback("checkout", "1.0.0")
    client.deploy_canary("checkout", "1.1.0", soak_seconds=1800, weight=5000)
    return running


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = canary_at_half(tmp_path)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The same, for the tests of refused batches only: nothing is ever counted on it."""
    running = canary_at_half(tmp_path_factory.mktemp("refusing"))
    yield running
    running.stop()


def beacon_url(server: RunningServer) -> str:
    endpoints = json.loads((server.home / "run" / "endpoints.json").read_text())
    return str(endpoints["beacon_url"]) + "/v1/beacons"


def batch(*rows: dict[str, Any], key: str = KEY, **changes: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "key": key,
        "batch": secrets.token_urlsafe(16),
        "sent_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "counts": list(rows),
        **changes,
    }


def row(version: str, loads: int, **failures: int) -> dict[str, Any]:
    return {"feature": "checkout", "version": version, "loads": loads, **failures}


def post(server: RunningServer, body: Any, content_type: str = "text/plain") -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        beacon_url(server), data=data, method="POST", headers={"content-type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read() or b"null")


def analysis(client: ReleaseControlClient, until: str = "", seconds: float = 10) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = client.get_analysis("checkout")
        if not until or found.verdict == until or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_counts_reach_the_analysis_and_reach(server: RunningServer) -> None:
    """Accepted batches are summed per version; the verdict waits for the minimum sample on
    both sides, and reach is each version's share of the batches."""
    client = server.client()
    assert post(server, batch(row("1.1.0", 100, entry_errors=1))) == (202, {"accepted": True})
    for _ in range(3):
        assert post(server, batch(row("1.0.0", 100)))[0] == 202
    time.sleep(1.5)  # written to the store once a second
    found = analysis(client)
    assert (found.canary_version, found.stable_version) == ("1.1.0", "1.0.0")
    assert (found.canary_loads, found.canary_failures) == (100, 1)
    assert (found.stable_loads, found.stable_failures) == (300, 0)
    assert found.verdict == "waiting"
    assert "canary has 100 of 500 loads needed" in found.reason
    assert {r.version: round(r.share, 2) for r in found.reach} == {"1.0.0": 0.75, "1.1.0": 0.25}

    table = releasectl(server, server.home, "release", "status", "--analysis")
    assert table.returncode == 0, table.stderr
    header, line = table.stdout.splitlines()[:2]
    assert header.split()[-3:] == ["VERDICT", "LOADS", "REACH"]
    assert line.split()[-6:] == ["waiting", "100", "1.0.0", "75%", "1.1.0", "25%"]
    said = releasectl(server, server.home, "release", "analysis", "--feature", "checkout")
    assert said.stdout.splitlines() == [
        "checkout: canary 1.1.0 vs stable 1.0.0: waiting, canary has 100 of 500 loads needed; "
        "stable has 300 of 500 loads needed",
        "  reach (last 10 min): 1.0.0 75%, 1.1.0 25%",
    ]


def test_a_worse_canary_is_rolled_back_by_the_server(server: RunningServer) -> None:
    """Canary 5 % failures vs stable 0.2 %: the server rolls the canary back, actor
    releasecontrol-analysis, the figures in the reason; stable stays."""
    client = server.client()
    for _ in range(4):
        post(server, batch(row("1.1.0", 500, load_failures=20, entry_errors=5)))
        post(server, batch(row("1.0.0", 500, entry_errors=1)))
    deadline = time.monotonic() + 15
    while client.get_status().features[0].canary.version and time.monotonic() < deadline:
        time.sleep(0.1)
    feature = client.get_status().features[0]
    assert (feature.stable_version, feature.canary.version) == ("1.0.0", "")
    last = client.list_transitions(feature_id="checkout").transitions[0]
    assert last.actor == "releasecontrol-analysis"
    assert last.reason.startswith("failure rate 5.0% vs 0.2% over 4,000 loads")
    assert "20 entry errors, 80 failed loads" in last.reason
    assert last.detail == "canary 1.1.0 rolled back; stable 1.0.0 stays"


def test_a_flood_of_canary_failures_alone_cannot_roll_back(server: RunningServer) -> None:
    """Failures reported for the canary only, with no stable sample: the verdict waits."""
    client = server.client()
    for _ in range(5):
        post(server, batch(row("1.1.0", 1000, load_failures=900)))
    time.sleep(2)
    assert client.get_status().features[0].canary.version == "1.1.0"
    found = analysis(client)
    assert found.verdict == "waiting" and "stable has 0 of 500 loads needed" in found.reason


@pytest.mark.parametrize(
    ("make", "status", "field"),
    [
        pytest.param(lambda: b"{not json", 400, "", id="not-json"),
        pytest.param(lambda: batch(row("1.1.0", 5), v=2), 400, "v", id="version"),
        pytest.param(
            lambda: batch(row("1.1.0", 5), key="pk_someone_else"), 403, "key", id="forged"
        ),
        pytest.param(
            lambda: batch(row("1.1.0", 5), sent_at="2020-01-01T00:00:00Z"),
            409,
            "sent_at",
            id="stale",
        ),
        pytest.param(
            lambda: batch(row("9.9.9", 5)), 422, "counts[0].version", id="unknown-version"
        ),
        pytest.param(
            lambda: batch({"feature": "nope", "version": "1.0.0", "loads": 1}),
            422,
            "counts[0].feature",
            id="unknown-feature",
        ),
        pytest.param(lambda: batch(row("1.1.0", -1)), 400, "counts[0].loads", id="negative"),
        pytest.param(lambda: batch(row("1.1.0", 1.5)), 400, "", id="float"),
        pytest.param(
            lambda: batch(row("1.1.0", 5, user="alice")), 400, "counts[0].user", id="user-data"
        ),
    ],
)
def test_bad_batches_are_refused_and_count_nothing(
    refusing: RunningServer, make: Any, status: int, field: str
) -> None:
    server = refusing
    code, answer = post(server, make())
    assert code == status, answer
    assert answer["error"] and "\n" not in answer["error"]
    if field:
        assert answer["field"] == field
    time.sleep(1.2)
    found = server.client().get_analysis("checkout")
    assert (found.canary_loads, found.stable_loads) == (0, 0)


def test_a_replayed_batch_counts_once(server: RunningServer) -> None:
    once = batch(row("1.1.0", 7))
    assert post(server, once)[0] == 202
    code, answer = post(server, once)
    assert (code, answer["field"]) == (409, "batch")
    time.sleep(1.2)
    assert server.client().get_analysis("checkout").canary_loads == 7


def test_a_flood_from_one_address_is_rate_limited(server: RunningServer) -> None:
    codes = [post(server, batch(row("1.0.0", 1)))[0] for _ in range(130)]
    assert codes[:100] == [202] * 100  # the burst
    assert 429 in codes[100:]


def test_soak_by_exposure_needs_the_loads(server: RunningServer) -> None:
    """--min-loads 600: promote is refused until hosts reported 600 canary loads, even after
    the soak time; then it goes through."""
    client = server.client()
    client.deploy_canary("checkout", "1.1.0", soak_seconds=0, min_loads=600)
    post(server, batch(row("1.1.0", 400)))
    time.sleep(1.5)
    with pytest.raises(errors.SoakNotOver, match="400 of the 600 loads it needs"):
        client.promote("checkout", "1.1.0")
    post(server, batch(row("1.1.0", 250)))
    time.sleep(1.5)
    done = client.promote("checkout", "1.1.0")
    assert done.transition.detail.endswith("and 650 loads")
