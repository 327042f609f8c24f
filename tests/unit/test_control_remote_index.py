"""remote-index.json is recorded, not stored: the store keeps when it was signed, and
the controller signs it again from the committed state whenever the origin may lack it.

A process that dies between the commit and the origin write must still get the
committed remote index (byte for byte: Ed25519 is deterministic) onto the origin
at the next start, after the releases.json it names.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from controller_kit import KEY, NOW, change, digest, new_controller, stop
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.errors import Unavailable
from releasecontrol.index import REMOTE_INDEX_PATH, Envelope, RemoteIndex, verify_signatures
from releasecontrol.trust import SigningKey
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.releases import DeployCanary, Publish
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import SqliteStore
from releasecontrol_server.watch import WatchHub


class BrokenOrigin(FilesystemOrigin):
    """An origin that refuses every write (and cannot stage): the CDN is down."""

    def write(self, path: str, data: bytes) -> None:
        raise OSError("origin down")

    def stage(self, path: str, data: bytes) -> object:  # type: ignore[override]
        raise OSError("origin down")


async def test_a_commit_whose_origin_write_failed_is_rebuilt_byte_for_byte(
    tmp_path: Path,
) -> None:
    origin_dir = tmp_path / "origin"
    first = new_controller(tmp_path, FilesystemOrigin(origin_dir), now=NOW)
    await first.start()
    for version in ("1.0.0", "1.1.0"):
        await change(first, "checkout", Publish(version, digest(version)))
    await stop(first)

    # The commit goes through, the origin write does not (as if killed right after it).
    down = new_controller(tmp_path, BrokenOrigin(origin_dir), now=NOW + timedelta(minutes=1))
    await down.start()
    with pytest.raises(Unavailable, match="committed as sequence 3"):
        await change(down, "checkout", DeployCanary("1.0.0", 0))
    committed = down.signed_file(REMOTE_INDEX_PATH).content  # what it signed in memory
    releases_committed = down.signed_file("features/checkout/releases.json")
    assert down.status().pending_origin_writes == 2
    await stop(down)
    on_origin = RemoteIndex.from_dict(
        Envelope.from_bytes((origin_dir / REMOTE_INDEX_PATH).read_bytes()).signed
    )
    assert on_origin.sequence == 2  # the origin never got the change
    store = SqliteStore(tmp_path / "db.sqlite")
    assert store.signed_file(REMOTE_INDEX_PATH) is None  # no bytes kept, only the record
    store.close()

    # A later start (at another time) writes what was committed, not a new signature.
    restarted = new_controller(tmp_path, FilesystemOrigin(origin_dir), now=NOW + timedelta(hours=5))
    await restarted.start()
    try:
        assert (origin_dir / REMOTE_INDEX_PATH).read_bytes() == committed
        assert (origin_dir / "features/checkout/releases.json").read_bytes() == (
            releases_committed.content
        )
        envelope = Envelope.from_bytes(committed)
        verify_signatures(envelope, Signer([KEY], 3600).own_trust())
        remote = RemoteIndex.from_dict(envelope.signed)
        assert remote.sequence == 3
        assert remote.issued_at == NOW + timedelta(minutes=1)
        assert remote.features["checkout"].sha256 == releases_committed.sha256
        assert restarted.status().pending_origin_writes == 0
        assert restarted.signed_file(REMOTE_INDEX_PATH).content == committed
        # And the next change goes on from there.
        await change(restarted, "checkout", Publish("1.2.0", digest("1.2.0")))
        after = Envelope.from_bytes((origin_dir / REMOTE_INDEX_PATH).read_bytes())
        assert after.signed["sequence"] == 4
    finally:
        await stop(restarted)


async def test_a_start_after_a_clean_stop_serves_the_origin_bytes(tmp_path: Path) -> None:
    """Nothing pending: the remote index is signed again in memory, equal to the origin's."""
    origin_dir = tmp_path / "origin"
    first = new_controller(tmp_path, FilesystemOrigin(origin_dir), now=NOW)
    await first.start()
    await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
    await change(first, "search", Publish("2.0.0", digest("2.0.0")))
    written = (origin_dir / REMOTE_INDEX_PATH).read_bytes()
    await stop(first)

    again = new_controller(tmp_path, FilesystemOrigin(origin_dir), now=NOW + timedelta(days=1))
    await again.start()
    try:
        assert again.signed_file(REMOTE_INDEX_PATH).content == written
        assert again.status().pending_origin_writes == 0
    finally:
        await stop(again)


async def test_the_origin_copy_wins_when_the_keys_changed(tmp_path: Path) -> None:
    """Written already, but signed with other keys since: the origin's bytes (what hosts hold)
    are kept, and the next change is not refused as "differs from"."""
    origin_dir = tmp_path / "origin"
    first = new_controller(tmp_path, FilesystemOrigin(origin_dir), now=NOW)
    await first.start()
    await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
    written = (origin_dir / REMOTE_INDEX_PATH).read_bytes()
    await stop(first)

    other = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32))
    again = ReleaseController(
        store=SqliteStore(tmp_path / "db.sqlite"),
        origin=FilesystemOrigin(origin_dir),
        signer=Signer([other, KEY], 3600),
        hub=WatchHub(10),
        default_soak_seconds=0,
        clock=lambda: NOW,
    )
    await again.start()
    try:
        assert again.signed_file(REMOTE_INDEX_PATH).content == written
        await change(again, "checkout", Publish("1.1.0", digest("1.1.0")))
        assert (
            Envelope.from_bytes((origin_dir / REMOTE_INDEX_PATH).read_bytes()).signed["sequence"]
            == 2
        )
    finally:
        await stop(again)
