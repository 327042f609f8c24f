"""The controller publishes host protocol v2: releases.json, its shard, remote-index.json, roots.

A change rewrites three small files whatever the feature count; the top level's
sequence goes up once per batch and never down; a process killed between the
commit and the origin write gets exactly the committed files onto the origin at
the next start; a key rotation (`install_keys`) signs every file again under the
new root; a store of host protocol v1 is upgraded in place at start. Every check
of what lands on the origin goes through the host's own `Verifier`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from controller_kit import KEY, NOW, change, digest, new_controller, origin_pin, origin_top, stop
from controller_kit import root_file as kit_root_file
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.errors import StaleSequence, Unavailable
from releasecontrol.index import REMOTE_INDEX_PATH, Envelope, releases_path, sign
from releasecontrol.manifest import sha256_hex
from releasecontrol.root import root_path
from releasecontrol.shards import bin_of, shard_path
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol.verifier import Verifier
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.releases import DeployCanary, Publish
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import SignedFile, open_store

ROOT_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([21]) * 32))
NEW_KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([22]) * 32))
TRUST = TrustStore.for_keys([ROOT_KEY.trusted_key()])


def root_file(version: int, key: SigningKey) -> SignedFile:
    """Root `version` naming `key` as the online key, signed by ROOT_KEY."""
    return kit_root_file(version, key, ROOT_KEY)


def origin_files(origin: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(origin)): p.read_bytes()
        for p in origin.rglob("*")
        if p.is_file() and not p.name.startswith(".")
    }


def verify_on_origin(origin: Path, feature_id: str) -> int:
    """What a host verifies of `feature_id` on `origin`, from the test root of trust: the
    releases.json sequence."""
    verifier = Verifier(TRUST)
    top = verifier.top(
        (origin / REMOTE_INDEX_PATH).read_bytes(),
        NOW,
        lambda v: (origin / root_path(v)).read_bytes(),
    ).model
    name, _ = top.shard_of(feature_id)
    shard = verifier.shard(top, name, (origin / shard_path(top.bits, name)).read_bytes(), NOW)
    pin = shard.model.features[feature_id]
    data = (origin / releases_path(feature_id)).read_bytes()
    return verifier.releases(feature_id, pin, data, NOW).model.sequence


class TestOneChange:
    async def test_a_change_rewrites_its_releases_json_its_shard_and_the_top_level(
        self, tmp_path: Path
    ) -> None:
        """A change to one feature rewrites exactly its releases.json, its bin's shard and
        remote-index.json; the other bin's shard is untouched."""
        origin = tmp_path / "origin"
        control = new_controller(tmp_path, roots=[root_file(1, KEY)])
        await control.start()
        try:
            await change(control, "checkout", Publish("1.0.0", digest("1.0.0")))
            await change(control, "search", Publish("2.0.0", digest("2.0.0")))
            before = origin_files(origin)
            await change(control, "checkout", Publish("1.1.0", digest("1.1.0")))
            after = origin_files(origin)
        finally:
            await stop(control)
        changed = {p for p in after if before.get(p) != after[p]}
        assert changed == {
            "features/checkout/releases.json",
            shard_path(7, bin_of("checkout", 7)),
            REMOTE_INDEX_PATH,
        }
        assert root_path(1) in after
        assert verify_on_origin(origin, "checkout") == 2
        assert verify_on_origin(origin, "search") == 1

    async def test_a_shard_lists_only_the_features_of_its_bin(self, tmp_path: Path) -> None:
        """news and profile share bin 0c; checkout's shard does not list them."""
        origin = tmp_path / "origin"
        control = new_controller(tmp_path, roots=[root_file(1, KEY)])
        await control.start()
        try:
            for feature_id in ("news", "profile", "checkout"):
                await change(control, feature_id, Publish("1.0.0", digest(feature_id)))
        finally:
            await stop(control)
        top = origin_top(origin)
        assert sorted(top.shards) == sorted({bin_of(f, 7) for f in ("news", "checkout")})
        assert top.root_version == 1
        for feature_id in ("news", "profile", "checkout"):
            assert origin_pin(origin, feature_id).sequence == 1

    async def test_the_top_level_sequence_goes_up_and_survives_a_restart(
        self, tmp_path: Path
    ) -> None:
        """Each commit signs a top level one higher; a restart goes on from the stored one."""
        origin = tmp_path / "origin"
        first = new_controller(tmp_path)
        await first.start()
        await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
        await change(first, "checkout", Publish("1.1.0", digest("1.1.0")))
        assert origin_top(origin).sequence == 2
        await stop(first)
        again = new_controller(tmp_path, now=NOW + timedelta(hours=1))
        await again.start()
        try:
            assert origin_top(origin).sequence == 2  # nothing changed: nothing signed
            await change(again, "checkout", DeployCanary("1.0.0", 0))
            assert origin_top(origin).sequence == 3
        finally:
            await stop(again)


class BrokenOrigin(FilesystemOrigin):
    """An origin that refuses every write (and cannot stage): the CDN is down."""

    def write(self, path: str, data: bytes) -> None:
        raise OSError("origin down")

    def stage(self, path: str, data: bytes, *, sync: bool = True) -> object:  # type: ignore[override]
        raise OSError("origin down")


class TestCrashBetweenCommitAndOrigin:
    async def test_the_committed_files_reach_the_origin_at_the_next_start(
        self, tmp_path: Path
    ) -> None:
        """Committed while the origin was down: the next start writes those very bytes."""
        origin = tmp_path / "origin"
        first = new_controller(tmp_path, FilesystemOrigin(origin))
        await first.start()
        await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
        await stop(first)

        down = new_controller(tmp_path, BrokenOrigin(origin), now=NOW + timedelta(minutes=1))
        await down.start()
        with pytest.raises(Unavailable, match="committed as sequence 2"):
            await change(down, "checkout", Publish("1.1.0", digest("1.1.0")))
        committed = {
            path: (await down.signed_file(path)).content
            for path in (
                REMOTE_INDEX_PATH,
                releases_path("checkout"),
                shard_path(7, bin_of("checkout", 7)),
            )
        }
        assert down.status().pending_origin_writes == 3  # releases.json, shard, top level
        await stop(down)
        assert origin_top(origin).sequence == 1  # the origin never got the change

        later = new_controller(tmp_path, FilesystemOrigin(origin), now=NOW + timedelta(hours=5))
        await later.start()
        try:
            for path, content in committed.items():
                assert (origin / path).read_bytes() == content, path
            assert later.status().pending_origin_writes == 0
            assert origin_top(origin).issued_at == NOW + timedelta(minutes=1)
        finally:
            await stop(later)


class TestKeyRotation:
    async def test_install_keys_signs_everything_again_under_the_new_root(
        self, tmp_path: Path
    ) -> None:
        """After a rotation every file verifies through root 2 with the new key; bodies and
        releases.json sequences stay."""
        origin = tmp_path / "origin"
        control = new_controller(tmp_path, roots=[root_file(1, KEY)])
        await control.start()
        try:
            await change(control, "checkout", Publish("1.0.0", digest("1.0.0")))
            await change(control, "search", Publish("2.0.0", digest("2.0.0")))
            old_body = Envelope.from_bytes((origin / releases_path("checkout")).read_bytes())
            top_before = origin_top(origin).sequence
            await control.install_keys(
                Signer([NEW_KEY], 3600), [root_file(1, KEY), root_file(2, NEW_KEY)], 2
            )
        finally:
            await stop(control)
        new_body = Envelope.from_bytes((origin / releases_path("checkout")).read_bytes())
        assert new_body.signed == old_body.signed
        assert [s.keyid for s in new_body.signatures] == [NEW_KEY.keyid]
        top = origin_top(origin)
        assert (top.root_version, top.sequence) == (2, top_before + 1)
        assert (origin / root_path(2)).is_file()
        assert verify_on_origin(origin, "checkout") == 1
        assert verify_on_origin(origin, "search") == 1

    async def test_a_restart_with_other_keys_signs_everything_again(self, tmp_path: Path) -> None:
        """A server started with another signing key (and the root naming it) rotates at start."""
        origin = tmp_path / "origin"
        first = new_controller(tmp_path, roots=[root_file(1, KEY)])
        await first.start()
        await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
        await stop(first)
        again = new_controller(
            tmp_path, key=NEW_KEY, roots=[root_file(1, KEY), root_file(2, NEW_KEY)], root_version=2
        )
        await again.start()
        try:
            assert origin_top(origin).root_version == 2
            assert verify_on_origin(origin, "checkout") == 1
            await change(again, "checkout", Publish("1.1.0", digest("1.1.0")))
            assert verify_on_origin(origin, "checkout") == 2
        finally:
            await stop(again)


class TestUpgradeFromV1:
    async def test_a_v1_store_is_signed_again_as_v2_at_start(self, tmp_path: Path) -> None:
        """A releases.json of schema 1 and no shards: the start rebuilds it as schema 2 at the
        same sequence and writes the shards and a top level above the v1 global sequence."""
        origin = tmp_path / "origin"
        first = new_controller(tmp_path, roots=[root_file(1, KEY)])
        await first.start()
        await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
        await change(first, "checkout", Publish("1.1.0", digest("1.1.0")))
        await stop(first)
        # Make the store what a v1 server left: a schema-1 releases.json, no index files.
        store = open_store(tmp_path / "db.sqlite")
        body = dict(
            Envelope.from_bytes(store.signed_file(releases_path("checkout")).content).signed
        )
        body["schema_version"] = 1
        v1 = sign(body, [KEY]).to_bytes()
        store.engine.execute(
            "UPDATE files SET content = ?, sha256 = ? WHERE path = ?",
            [v1, sha256_hex(v1), releases_path("checkout")],
        )
        store.engine.execute("DELETE FROM outbox")
        store.engine.execute(
            "DELETE FROM files WHERE path LIKE 'index/%' OR path = ?", [REMOTE_INDEX_PATH]
        )
        store.close()

        upgraded = new_controller(tmp_path, roots=[root_file(1, KEY)], now=NOW + timedelta(days=1))
        await upgraded.start()
        try:
            stored = Envelope.from_bytes(
                (await upgraded.signed_file(releases_path("checkout"))).content
            )
            assert (stored.signed["schema_version"], stored.signed["sequence"]) == (2, 2)
            assert origin_top(origin).sequence == 3  # above the v1 global sequence 2
            assert verify_on_origin(origin, "checkout") == 2
            assert upgraded.status().pending_origin_writes == 0
        finally:
            await stop(upgraded)


class TestStoreIndexFiles:
    def test_index_files_commit_alone_and_never_go_backwards(self, tmp_path: Path) -> None:
        """Index files commit without a change, are listed by index_files(), written in the
        order pins point (roots first, top last), and a lower sequence is refused."""
        with open_store(tmp_path / "db.sqlite") as store:

            def file(path: str, sequence: int) -> SignedFile:
                data = f"{path} {sequence}".encode()
                return SignedFile(path, data, sha256_hex(data), sequence)

            store.commit_many(
                [],
                index_files=[
                    file(REMOTE_INDEX_PATH, 5),
                    file("index/7/63.json", 5),
                    file(root_path(1), 1),
                ],
            )
            assert set(store.index_files()) == {
                REMOTE_INDEX_PATH,
                "index/7/63.json",
                "roots/1.json",
            }
            assert [d.path for d in store.pending_digests()] == [
                "roots/1.json",
                "index/7/63.json",
                REMOTE_INDEX_PATH,
            ]
            assert store.global_sequence() == 0  # no audit record, no global sequence
            with pytest.raises(StaleSequence, match="never goes backwards"):
                store.commit_many([], index_files=[file(REMOTE_INDEX_PATH, 4)])
            assert store.signed_file(REMOTE_INDEX_PATH).sequence == 5


class TestLeftovers:
    async def test_staging_files_a_killed_process_left_are_removed_at_start(
        self, tmp_path: Path
    ) -> None:
        """Hidden .tmp files beside origin files (a kill between stage and publish) are gone
        after a start; the published files stay."""
        origin = tmp_path / "origin"
        first = new_controller(tmp_path)
        await first.start()
        await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
        await stop(first)
        published = origin_files(origin)
        leftovers = [
            origin / ".remote-index.json.k3j2.tmp",
            origin / "features" / "checkout" / ".releases.json.x9q1.tmp",
        ]
        for leftover in leftovers:
            leftover.write_bytes(b"half a file")
        again = new_controller(tmp_path)
        await again.start()
        try:
            assert not any(leftover.exists() for leftover in leftovers)
            assert origin_files(origin) == published
        finally:
            await stop(again)
