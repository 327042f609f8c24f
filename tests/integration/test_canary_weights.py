"""Percentage canaries against the real server over mTLS (issue 14, item 1): the weight in
the signed releases.json a host verifies, a step ramp the server advances and completes by
promoting, `release set-weight`, and bad weights refused with the field named.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningServer, folder_read, host_view, make_feature, releasectl, start_server

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient
from releasecontrol.manifest import load_feature_folder
from releasecontrol.verifier import Refusal

pytestmark = pytest.mark.integration


def with_a_canary(root: Path) -> RunningServer:
    """checkout 1.0.0 stable and 1.1.0 published as canary (weight 0, 30m soak)."""
    running = start_server(root / "home")
    client = running.client()
    client.publish(load_feature_folder(make_feature(root / "a", "checkout", "1.0.0")))
    client.publish(
        load_feature_folder(make_feature(root / "b", "checkout", "1.1.0")),
        channel="canary",
    )
    return running


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = with_a_canary(tmp_path)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """The same, for the tests of refused changes only: each checks nothing changed."""
    running = with_a_canary(tmp_path_factory.mktemp("refusing"))
    yield running
    running.stop()


def on_origin(server: RunningServer) -> tuple[str | None, str | None, int | None]:
    """(stable, canary, canary_weight) of checkout as a host verifies it on the origin.

    A host reading while the server writes the next change may read remote-index.json before
    it and the shard after it (refused: the shard is not the one pinned); it reads again, as
    a host's next refresh would."""
    for _ in range(20):
        try:
            seen = host_view(folder_read(server.origin_dir), server.trust_path).releases
        except Refusal:
            time.sleep(0.02)
            continue
        return seen.stable, seen.canary, seen.canary_weight
    raise AssertionError("the origin never verified as a whole")


def test_a_step_ramp_is_advanced_by_the_server_and_promotes(
    server: RunningServer, tmp_path: Path
) -> None:
    """--steps 5,50,100 --step-soak 1s: the origin serves 5%, then 50%, then 100%, then 1.1.0
    stable; each move is an audited change by releasecontrol-steps."""
    done = releasectl(
        server,
        tmp_path,
        "release",
        "canary",
        "--feature",
        "checkout",
        "--version",
        "1.1.0",
        "--steps",
        "5,50,100",
        "--step-soak",
        "1s",
    )
    assert done.returncode == 0, done.stderr
    assert "5% of users, step 1 of 3 of 5,50,100 % (each 1s)" in done.stdout
    seen = [on_origin(server)]
    assert seen[0] == ("1.0.0", "1.1.0", 500)
    deadline = time.monotonic() + 20
    while seen[-1][1] is not None and time.monotonic() < deadline:
        now = on_origin(server)
        if now != seen[-1]:
            seen.append(now)
        time.sleep(0.05)
    assert seen == [
        ("1.0.0", "1.1.0", 500),
        ("1.0.0", "1.1.0", 5000),
        ("1.0.0", "1.1.0", 10_000),
        ("1.1.0", None, None),
    ]
    history = server.client().list_transitions(feature_id="checkout").transitions
    newest = [(t.actor, t.detail) for t in history[:3]]
    assert newest == [
        ("releasecontrol-steps", "canary 1.1.0 promoted: step plan 5,50,100 % completed"),
        ("releasecontrol-steps", "canary 1.1.0 weight 50% -> 100%: step 3 of 3 of 5,50,100 %"),
        ("releasecontrol-steps", "canary 1.1.0 weight 5% -> 50%: step 2 of 3 of 5,50,100 %"),
    ]


def test_set_weight_reaches_the_origin_and_the_status(
    server: RunningServer, tmp_path: Path
) -> None:
    """`release set-weight --percent 25`: the origin's releases.json says 2500, the status
    table and JSON say 25 %."""
    assert on_origin(server) == ("1.0.0", "1.1.0", 0)
    done = releasectl(
        server, tmp_path, "release", "set-weight", "--feature", "checkout", "--percent", "25"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("checkout: canary 1.1.0 weight 0% -> 25%")
    assert on_origin(server) == ("1.0.0", "1.1.0", 2500)

    table = releasectl(server, tmp_path, "release", "status")
    assert "1.1.0 25%" in table.stdout
    (checkout,) = json.loads(releasectl(server, tmp_path, "release", "status", "-o", "json").stdout)
    assert checkout["canary"]["weight_percent"] == 25.0


def _unchanged(client: ReleaseControlClient) -> bytes:
    status = client.get_status()
    status.ClearField("server_time")
    return status.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("call", "error", "field", "fragment"),
    [
        pytest.param(
            lambda c: c.set_canary_weight("checkout", 10_001),
            errors.InvalidArgument,
            "weight",
            "out of range",
            id="weight-above-100",
        ),
        pytest.param(
            lambda c: c.deploy_canary("checkout", "1.1.0", steps=(2500, 500), step_seconds=60),
            errors.InvalidArgument,
            "steps",
            "do not increase",
            id="steps-decreasing",
        ),
        pytest.param(
            lambda c: c.deploy_canary("checkout", "1.1.0", steps=(500, 2500)),
            errors.InvalidArgument,
            "step_seconds",
            "step soak",
            id="steps-without-step-soak",
        ),
        pytest.param(
            lambda c: c.deploy_canary("checkout", "1.1.0", weight=20_000),
            errors.InvalidArgument,
            "weight",
            "out of range",
            id="deploy-weight-above-100",
        ),
    ],
)
def test_bad_weights_are_refused_and_change_nothing(
    refusing: RunningServer,
    call: object,
    error: type[errors.ReleaseControlError],
    field: str,
    fragment: str,
) -> None:
    server = refusing
    client = server.client(retry_seconds=0)
    before, origin_before = _unchanged(client), on_origin(server)
    with pytest.raises(error) as caught:
        call(client)  # type: ignore[operator]
    assert caught.value.field == field
    assert fragment in caught.value.message
    assert (_unchanged(client), on_origin(server)) == (before, origin_before)


def test_set_weight_without_a_canary_is_a_failed_precondition(server: RunningServer) -> None:
    client = server.client(retry_seconds=0)
    client.promote("checkout", "1.1.0", skip_soak=True, reason="test")
    with pytest.raises(errors.FailedPrecondition) as caught:
        client.set_canary_weight("checkout", 500)
    assert "no canary is running" in caught.value.message
