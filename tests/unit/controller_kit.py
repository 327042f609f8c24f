"""A ReleaseController over a real SQLite store and filesystem origin, for unit tests.

Shared by the tests that drive the controller directly (pending writes, the
recorded remote index, the servicer's encoded reads).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.index import Envelope
from releasecontrol.manifest import sha256_hex
from releasecontrol.root import Root, root_path
from releasecontrol.shards import Pin, RemoteIndex, Shard, shard_path
from releasecontrol.trust import SigningKey
from releasecontrol_server.artifacts import ArtifactStore
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.releases import ChangeMeta, Command
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import SignedFile, open_store
from releasecontrol_server.watch import WatchHub
from releasecontrol_server.writer import WriteObserver

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([9]) * 32))


def root_file(version: int, key: SigningKey, root_key: SigningKey) -> SignedFile:
    """Root `version` naming `key` as the online key, signed by `root_key`."""
    root = Root.create(
        version=version,
        root_keys=[root_key.trusted_key()],
        index_keys=[key.trusted_key()],
        issued_at=NOW,
        expires_at=NOW + timedelta(days=365),
    )
    data = root.sign([root_key]).to_bytes()
    return SignedFile(root_path(version), data, sha256_hex(data), version)


def new_controller(
    tmp_path: Path,
    origin: FilesystemOrigin | None = None,
    *,
    now: datetime = NOW,
    key: SigningKey = KEY,
    roots: Sequence[SignedFile] = (),
    root_version: int = 1,
    write_observer: WriteObserver | None = None,
    database: str | None = None,
) -> ReleaseController:
    """A controller on `database` (default `tmp_path/db.sqlite`) and `origin` (else
    `tmp_path/origin`), not started; `roots` and `root_version` as the server passes them from
    its keyring."""
    return ReleaseController(
        store=open_store(database or tmp_path / "db.sqlite"),
        origin=origin if origin is not None else FilesystemOrigin(tmp_path / "origin"),
        artifacts=ArtifactStore.in_folder(tmp_path / "artifacts"),
        signer=Signer([key], 3600),
        hub=WatchHub(100),
        default_soak_seconds=0,
        clock=lambda: now,
        roots=roots,
        root_version=root_version,
        write_observer=write_observer,
    )


async def change(control: ReleaseController, feature_id: str, command: Command) -> None:
    """Apply `command` as an RPC would, by actor `test`, with no request id."""
    await control.change(
        feature_id,
        command,
        ChangeMeta(actor="test"),
        rpc=type(command).__name__,
        request_id="",
    )


async def stop(control: ReleaseController) -> None:
    """Stop the controller, then close the store `new_controller` opened for it."""
    await control.stop()
    control._store.close()


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def origin_top(origin: Path) -> RemoteIndex:
    """The remote-index.json on a filesystem origin (its signatures not checked here)."""
    data = (origin / "remote-index.json").read_bytes()
    return RemoteIndex.from_dict(Envelope.from_bytes(data).signed)


def origin_pin(origin: Path, feature_id: str) -> Pin:
    """The pin of `feature_id`'s releases.json in its shard on a filesystem origin, after
    checking that the top level pins that shard's bytes."""
    top = origin_top(origin)
    name, shard_pin = top.shard_of(feature_id)
    assert shard_pin is not None, f"no shard for {feature_id}"
    data = (origin / shard_path(top.bits, name)).read_bytes()
    assert Pin.of(data, shard_pin.sequence).sha256 == shard_pin.sha256
    return Shard.from_dict(Envelope.from_bytes(data).signed).features[feature_id]
