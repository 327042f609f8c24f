"""Indices are signed again before they expire: an untouched feature never vanishes from hosts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from releasecontrol.index import Envelope, ReleasesIndex, verify_signatures
from releasecontrol.manifest import sha256_hex
from releasecontrol.shards import RemoteIndex, Shard, shard_path
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.artifacts import ArtifactStore
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.expiry import ACTOR, Resigner
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.releases import Action, ChangeMeta, Publish
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import open_store
from releasecontrol_server.watch import WatchHub

WEEK = 7 * 24 * 3600
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


async def build(tmp_path: Path, clock: Clock) -> tuple[ReleaseController, SigningKey]:
    key = SigningKey.generate()
    controller = ReleaseController(
        store=open_store(tmp_path / "db.sqlite"),
        origin=FilesystemOrigin(tmp_path / "origin"),
        artifacts=ArtifactStore.in_folder(tmp_path / "artifacts"),
        signer=Signer([key], WEEK),
        hub=WatchHub(16),
        default_soak_seconds=0,
        clock=clock,
    )
    await controller.start()
    return controller, key


async def publish(controller: ReleaseController, feature_id: str) -> None:
    await controller.change(
        feature_id,
        Publish("1.0.0", sha256_hex(feature_id.encode())),
        ChangeMeta(actor="alice"),
        rpc="PublishVersion",
        request_id="",
    )


def on_origin(tmp_path: Path, path: str, key: SigningKey) -> Envelope:
    envelope = Envelope.from_bytes((tmp_path / "origin" / path).read_bytes())
    verify_signatures(envelope, TrustStore.for_keys([key.trusted_key()]))
    return envelope


async def test_a_feature_past_half_its_index_lifetime_is_re_signed(tmp_path: Path) -> None:
    """After half the expiry, the untouched feature gets a new sequence and a new expiry."""
    clock = Clock()
    controller, key = await build(tmp_path, clock)
    await publish(controller, "checkout")
    resigner = Resigner(controller, expiry_seconds=WEEK, clock=clock)

    clock.now = T0 + timedelta(days=3)
    assert await resigner.resign_due() == []  # not yet half-way

    clock.now = T0 + timedelta(days=4)
    assert await resigner.resign_due() == ["checkout"]
    index = ReleasesIndex.from_dict(
        on_origin(tmp_path, "features/checkout/releases.json", key).signed
    )
    assert index.sequence == 2 and index.stable == "1.0.0"
    assert index.expires_at == clock.now + timedelta(seconds=WEEK)
    remote = RemoteIndex.from_dict(on_origin(tmp_path, "remote-index.json", key).signed)
    assert remote.expires_at == clock.now + timedelta(seconds=WEEK)
    name, _ = remote.shard_of("checkout")
    shard = Shard.from_dict(on_origin(tmp_path, shard_path(remote.bits, name), key).signed)
    assert shard.expires_at == clock.now + timedelta(seconds=WEEK)  # its shard too
    (latest,) = await controller.transitions(feature_id="checkout", before_id=0, limit=1)
    assert (latest.record.action, latest.record.actor) == (Action.RESIGN, ACTOR)

    assert await resigner.resign_due() == []  # fresh again


async def test_only_the_due_features_are_re_signed(tmp_path: Path) -> None:
    """A feature changed recently is left alone while an old one is re-signed."""
    clock = Clock()
    controller, _ = await build(tmp_path, clock)
    await publish(controller, "old")
    clock.now = T0 + timedelta(days=3)
    await publish(controller, "recent")
    clock.now = T0 + timedelta(days=4)
    resigner = Resigner(controller, expiry_seconds=WEEK, clock=clock)
    assert resigner.due(clock.now) == ["old"]
    assert resigner.interval_seconds == 3600.0
