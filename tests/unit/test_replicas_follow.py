"""Replicas on one PostgreSQL, in one process: two controllers on one database and one origin
answer reads and take changes, each following what the other committed (snapshot and watch
feed, in order, without gaps), a request id applied once across them, an expected sequence
checked against the database, and a replica of another cluster refused at start.

The three-process failure test (kills, a database restart) is
tests/integration/test_replicas.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from controller_kit import KEY, change, new_controller, origin_pin, origin_top, stop
from controller_kit import root_file as kit_root_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench._postgres import PostgresServer
from releasecontrol.errors import ConfigError, FailedPrecondition, StaleSequence
from releasecontrol.manifest import sha256_hex
from releasecontrol.trust import SigningKey
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.releases import ChangeMeta, Channel, Promote, Publish
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import SignedFile
from releasecontrol_server.watch import ChangeEvent, Subscription

ROOT_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([31]) * 32))
OTHER_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([32]) * 32))


def root_file(key: SigningKey, version: int = 1) -> SignedFile:
    return kit_root_file(version, key, ROOT_KEY)


def sha(text: str) -> str:
    return sha256_hex(text.encode())


@pytest.fixture
async def replicas(
    tmp_path: Path, postgres: PostgresServer
) -> AsyncIterator[tuple[ReleaseController, ReleaseController]]:
    url = postgres.new_database()
    origin = tmp_path / "origin"
    a, b = (
        new_controller(
            tmp_path / name,
            FilesystemOrigin(origin),
            database=url,
            roots=[root_file(KEY)],
        )
        for name in ("a", "b")
    )
    await a.start()
    await b.start()
    yield a, b
    for replica in (a, b):
        if replica not in STOPPED:
            await stop(replica)


STOPPED: list[ReleaseController] = []
"""Replicas a test stopped itself (the fixture stops the others)."""


async def until(condition: object, seconds: float = 10.0) -> None:
    """Wait until `condition()` is true (the follower runs on NOTIFY, at most a second late)."""
    assert callable(condition)
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not followed in time")


async def drain(sub: Subscription, count: int) -> list[ChangeEvent]:
    events: list[ChangeEvent] = []
    while len(events) < count:
        event = await asyncio.wait_for(sub.next(), 10)
        assert isinstance(event, ChangeEvent)
        events.append(event)
    return events


async def test_each_replica_reads_and_watches_what_the_other_committed(
    replicas: tuple[ReleaseController, ReleaseController], tmp_path: Path
) -> None:
    a, b = replicas
    watching_b = b.hub.subscribe()
    await change(a, "checkout", Publish("1.0.0", sha("1.0.0")))
    await until(lambda: b.state_of("checkout") is not None)
    assert b.feature("checkout").stable == "1.0.0"
    assert b.status().global_sequence == 1

    await change(b, "checkout", Publish("1.1.0", sha("1.1.0"), channel=Channel.CANARY))
    await until(lambda: a.feature("checkout").sequence == 2)
    assert a.feature("checkout").canary is not None
    # The origin has what the last writer signed, above what the first one did.
    assert origin_top(tmp_path / "origin").sequence == 2
    assert origin_pin(tmp_path / "origin", "checkout").sequence == 2
    # B's watchers heard A's change, then B's own, in order.
    events = await drain(watching_b, 2)
    assert [(e.global_sequence, e.state.sequence, e.transition.record.version) for e in events] == [
        (1, 1, "1.0.0"),
        (2, 2, "1.1.0"),
    ]
    assert (await b.signed_file("features/checkout/releases.json")).sequence == 2
    assert (await a.signed_file("features/checkout/releases.json")).sequence == 2


async def test_changes_through_both_replicas_at_once_get_one_order_seen_alike(
    replicas: tuple[ReleaseController, ReleaseController],
) -> None:
    """20 changes through each replica at the same time: every one acknowledged, the global
    sequences 1..40 each once, and watchers on both replicas see all 40 in that order."""
    a, b = replicas
    subs = [a.hub.subscribe(), b.hub.subscribe()]

    async def through(replica: ReleaseController, name: str) -> None:
        for n in range(10):
            await change(replica, f"{name}-{n % 3}", Publish(f"1.{n}.0", sha(f"{name}{n}")))

    await asyncio.gather(*(through(r, f"{n}{i}") for i, r in enumerate((a, b)) for n in "xy"))
    for sub in subs:
        events = await drain(sub, 40)
        assert [e.global_sequence for e in events] == list(range(1, 41))
    by_feature: dict[str, list[int]] = {}
    for event in events:
        by_feature.setdefault(event.state.feature_id, []).append(event.state.sequence)
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_feature.values())
    await until(lambda: a.status().global_sequence == b.status().global_sequence == 40)
    assert a.status().features == b.status().features


async def test_a_request_id_is_applied_once_across_replicas(
    replicas: tuple[ReleaseController, ReleaseController],
) -> None:
    a, b = replicas
    await change(a, "checkout", Publish("1.0.0", sha("1.0.0")))
    await change(a, "checkout", Publish("1.1.0", sha("1.1.0"), channel=Channel.CANARY))
    meta = ChangeMeta(actor="ci", reason="ship")
    first = await a.change(
        "checkout", Promote("1.1.0", skip_soak=True), meta, rpc="Promote", request_id="r-42"
    )
    again = await b.change(
        "checkout", Promote("1.1.0", skip_soak=True), meta, rpc="Promote", request_id="r-42"
    )
    assert first.transition is not None and again.transition is not None
    assert again.transition.id == first.transition.id == 3
    assert b.status().global_sequence == 3


async def test_an_expected_sequence_is_checked_against_the_database_not_a_stale_snapshot(
    replicas: tuple[ReleaseController, ReleaseController],
) -> None:
    """B's change, computed on sequence 1 while A already moved the feature to 2, is refused,
    even if B's follower has not caught up yet: the write path follows first."""
    a, b = replicas
    await change(a, "checkout", Publish("1.0.0", sha("1.0.0")))
    await until(lambda: b.state_of("checkout") is not None)
    await change(a, "checkout", Publish("1.1.0", sha("1.1.0"), channel=Channel.CANARY))
    with pytest.raises(StaleSequence, match="sequence 2"):
        await b.change(
            "checkout",
            Promote("1.1.0", skip_soak=True),
            ChangeMeta(actor="ops", expected_sequence=1),
            rpc="Promote",
            request_id="",
        )
    assert b.feature("checkout").sequence == 2


async def test_a_replica_with_other_signing_keys_is_refused_at_start(
    replicas: tuple[ReleaseController, ReleaseController],
    tmp_path: Path,
    postgres: PostgresServer,
) -> None:
    a, _ = replicas
    await change(a, "checkout", Publish("1.0.0", sha("1.0.0")))
    url = a._store.engine.url  # type: ignore[attr-defined]
    other = new_controller(
        tmp_path / "other", database=url, key=OTHER_KEY, roots=[root_file(OTHER_KEY)]
    )
    with pytest.raises(ConfigError, match=r"other signing keys.*roots/1\.json"):
        await other.start()
    await stop(other)
    # Nothing of the other cluster was written: the first one goes on.
    await change(a, "checkout", Publish("1.1.0", sha("1.1.0")))
    assert a.feature("checkout").sequence == 2


async def test_one_replica_leads_and_another_takes_over_when_it_stops(
    replicas: tuple[ReleaseController, ReleaseController],
) -> None:
    """Exactly one replica runs the one-per-cluster jobs; when it goes, the other leads
    within a couple of follower rounds."""
    a, b = replicas
    await until(lambda: a.leading != b.leading)
    first, second = (a, b) if a.leading else (b, a)
    STOPPED.append(first)
    await stop(first)  # its leader session closes with its store
    await until(lambda: second.leading, seconds=5)


async def test_a_replica_whose_keyring_is_behind_a_rotation_refuses_to_sign_until_it_has_it(
    replicas: tuple[ReleaseController, ReleaseController],
) -> None:
    """A rotates to root 2 (a new online key); B, still on root 1's key, refuses changes
    rather than sign what hosts that saw root 2 may refuse; with the new keyring it goes on."""
    a, b = replicas
    await change(a, "checkout", Publish("1.0.0", sha("1.0.0")))
    roots = [root_file(KEY), root_file(OTHER_KEY, 2)]
    await a.install_keys(Signer([OTHER_KEY], 3600), roots, 2)
    with pytest.raises(FailedPrecondition, match=r"signs under root 1.*root 2"):
        await change(b, "checkout", Publish("1.1.0", sha("1.1.0")))
    assert b.feature("checkout").sequence == 1

    await b.install_keys(Signer([OTHER_KEY], 3600), roots, 2)
    await change(b, "checkout", Publish("1.1.0", sha("1.1.0")))
    await until(lambda: a.feature("checkout").sequence == 2)


async def test_what_was_followed_reaches_the_snapshot_even_when_the_work_after_it_fails(
    replicas: tuple[ReleaseController, ReleaseController],
) -> None:
    """Write-thread work follows first; if the work itself then fails (the origin is down,
    say), the changes followed are still put into the snapshot and told to watchers: the
    writer's memory has moved past them and would not report them again."""
    a, b = replicas
    assert b._follower is not None
    b._follower.cancel()  # only the write path follows from here on
    watching = b.hub.subscribe()
    await change(a, "checkout", Publish("1.0.0", sha("1.0.0")))
    assert b.state_of("checkout") is None

    def origin_down() -> None:
        raise OSError("the origin is down")

    async with b._writing:
        with pytest.raises(OSError, match="origin is down"):
            await b._on_write_thread(origin_down)
    assert b.feature("checkout").stable == "1.0.0"
    assert [e.global_sequence for e in await drain(watching, 1)] == [1]
