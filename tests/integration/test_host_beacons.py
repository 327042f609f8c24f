"""The Python host's beacons against the real control plane (issue 14, item 2): hosts that
hand users their side of a 50 % canary report each user's load and failure, and the
analysis the server gives (GetAnalysis) has exactly those counts on each side.

No batch is built by the test: the counts go from `FeatureHost.report_load` and
`report_failure` through `releasecontrol.beacon` to the server's beacon listener.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer
from test_beacons import KEY, canary_at_half

from releasecontrol.bucketing import bucket
from releasecontrol.host import FeatureHost
from releasecontrol.trust import TrustStore

pytestmark = pytest.mark.integration

USERS = [f"user-{n}" for n in range(12)]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """checkout 1.0.0 stable, 1.1.0 in canary at 50 % (30m soak); beacons on."""
    running = canary_at_half(tmp_path)
    yield running
    running.stop()


def analysis_with(server: RunningServer, loads: int, seconds: float = 10) -> Any:
    """GetAnalysis once it holds `loads` loads in all (counts reach the store once a second)."""
    client = server.client()
    deadline = time.monotonic() + seconds
    while True:
        found = client.get_analysis("checkout")
        if found.canary_loads + found.stable_loads >= loads or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_hosts_report_each_users_side_and_the_analysis_counts_them(
    server: RunningServer, tmp_path: Path
) -> None:
    """Two hosts serve twelve users: each user's load is reported for the version that user
    got (each canary user's entry throws; one stable user's load fails); after close(), the
    server's analysis has every load and failure on the side it happened."""
    trust = TrustStore.from_file(server.home / "keys" / "trust.json")
    hosts = [
        FeatureHost(
            server.origin_url + "remote-index.json",
            trust,
            state_dir=tmp_path / name,
            allow_insecure_dev_keys=True,
            features=["checkout"],
            beacon_url=server.endpoints["beacon_url"],
            beacon_key=KEY,
        )
        for name in ("host-a", "host-b")
    ]
    expected = {"1.0.0": [0, 0], "1.1.0": [0, 0]}  # version -> [loads, failures]
    try:
        for host in hosts:
            report = host.refresh()
            assert report.ok, report.refused
        for n, user in enumerate(USERS):
            host = hosts[n % 2]
            loaded = host.version_for("checkout", user)
            assert loaded.version == ("1.1.0" if bucket("checkout", user) < 5000 else "1.0.0")
            entry = loaded.artifact_bytes(loaded.manifest["entry"])  # verified bytes
            assert f"'{loaded.version}'".encode() in entry
            host.report_load("checkout", loaded.version)
            expected[loaded.version][0] += 1
            if loaded.version == "1.1.0":
                host.report_failure("checkout", loaded.version, "entry_error")
                expected[loaded.version][1] += 1
            elif expected["1.0.0"][1] == 0:
                host.report_failure("checkout", loaded.version, "load_failure")
                expected[loaded.version][1] += 1
    finally:
        for host in hosts:
            host.close()  # the last batch of each
    assert all(loads for loads, _ in expected.values()), expected  # users on both sides

    found = analysis_with(server, len(USERS))
    assert (found.canary_version, found.stable_version) == ("1.1.0", "1.0.0")
    assert [found.canary_loads, found.canary_failures] == expected["1.1.0"]
    assert [found.stable_loads, found.stable_failures] == expected["1.0.0"]
    assert found.verdict == "waiting"  # 12 loads are far below the minimum sample
    assert {r.version for r in found.reach} == {"1.0.0", "1.1.0"}
    assert all(host.beacons is not None and host.beacons.sent_batches == 1 for host in hosts)
