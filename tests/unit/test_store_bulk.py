"""Store's batch and summary methods: commit_many, releases_digests, pending_count,
mark_all_written."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from releasecontrol.errors import StaleSequence
from releasecontrol_server import releases
from releasecontrol_server.releases import ChangeMeta, Command, FeatureState, Publish
from releasecontrol_server.store import Change, FileDigest, SignedFile, Store, open_store
from releasecontrol_server.store.sqlite import SqliteEngine

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def signed(path: str, content: bytes, sequence: int) -> SignedFile:
    return SignedFile(path, content, hashlib.sha256(content).hexdigest(), sequence)


def change(
    state: FeatureState | None, feature_id: str, command: Command, global_sequence: int
) -> Change:
    outcome = releases.apply(state, feature_id, command, ChangeMeta(actor="alice"), T0)
    assert isinstance(outcome, releases.Transition)
    sequence = outcome.state.sequence
    return Change(
        state=outcome.state,
        record=outcome.record,
        global_sequence=global_sequence,
        files=(
            signed(f"features/{feature_id}/releases.json", b"r%d" % sequence, sequence),
            signed("remote-index.json", b"i%d" % global_sequence, global_sequence),
        ),
    )


@pytest.fixture
def store(store_location: str) -> Iterator[Store]:
    """A new store, on each engine in turn."""
    opened = open_store(store_location)
    yield opened
    opened.close()


class TestCommitMany:
    def test_changes_commit_in_order_in_one_transaction(self, store: Store) -> None:
        """Three changes (two of one feature) commit with their own sequences and records."""
        first = change(None, "cart", Publish("1.0.0", "a" * 64), 1)
        second = change(first.state, "cart", Publish("1.1.0", "b" * 64), 2)
        third = change(None, "search", Publish("2.0.0", "c" * 64), 3)
        stored = store.commit_many([first, second, third])
        assert [t.global_sequence for t in stored] == [1, 2, 3]
        assert store.global_sequence() == 3
        cart = store.load_feature("cart")
        assert cart is not None and cart.sequence == 2
        remote = store.signed_file("remote-index.json")
        assert remote is not None and remote.content == b"i3"

    def test_one_stale_change_writes_none_of_them(self, store: Store) -> None:
        """A change that does not follow the one before it fails the whole batch."""
        first = change(None, "cart", Publish("1.0.0", "a" * 64), 1)
        stale = change(None, "search", Publish("2.0.0", "c" * 64), 5)
        with pytest.raises(StaleSequence):
            store.commit_many([first, stale])
        assert store.global_sequence() == 0
        assert store.load_feature("cart") is None
        assert store.pending_count() == 0


class TestSummaries:
    def test_releases_digests_name_each_feature_file_without_its_bytes(self, store: Store) -> None:
        """feature_id -> path, sha256, sequence and length of its newest releases.json."""
        first = change(None, "cart", Publish("1.0.0", "a" * 64), 1)
        second = change(first.state, "cart", Publish("1.1.0", "b" * 64, soak_seconds=60), 2)
        store.commit_many([first, second, change(None, "search", Publish("2.0.0", "c" * 64), 3)])
        assert store.releases_digests() == {
            "cart": FileDigest(
                "features/cart/releases.json", hashlib.sha256(b"r2").hexdigest(), 2, 2
            ),
            "search": FileDigest(
                "features/search/releases.json", hashlib.sha256(b"r1").hexdigest(), 1, 2
            ),
        }

    def test_pending_count_and_mark_all_written(self, store: Store) -> None:
        """Every committed file is pending until marked; a stale hash keeps its entry."""
        first = change(None, "cart", Publish("1.0.0", "a" * 64), 1)
        store.commit(first)
        assert store.pending_count() == 2
        releases_file, remote = first.files
        store.mark_all_written([(releases_file.path, releases_file.sha256), (remote.path, "0")])
        assert [f.path for f in store.pending_writes()] == ["remote-index.json"]
        assert store.pending_count() == 1
        store.mark_all_written([])
        store.mark_all_written([(remote.path, remote.sha256)])
        assert store.pending_count() == 0
        if isinstance(store.engine, SqliteEngine):
            # The file is back to synchronous=FULL for the next commit.
            assert store.engine.pragma("synchronous") == 2

    def test_pending_digests_list_pending_writes_without_their_bytes(self, store: Store) -> None:
        """Same files, same order as pending_writes: indexes last."""
        first = change(None, "cart", Publish("1.0.0", "a" * 64), 1)
        store.commit_many([first, change(None, "search", Publish("2.0.0", "c" * 64), 2)])
        assert store.pending_digests() == [
            FileDigest(f.path, f.sha256, f.sequence) for f in store.pending_writes()
        ]
        assert store.pending_digests()[-1].path == "remote-index.json"

    def test_the_wal_is_checkpointed_every_64_mb(self, tmp_path: Path) -> None:
        """Large WAL between checkpoints, so a rewritten big file's old pages are rarely copied."""
        with open_store(tmp_path / "db.sqlite") as store:
            assert isinstance(store.engine, SqliteEngine)
            assert store.engine.pragma("wal_autocheckpoint") == 16_384

    def test_feature_ids_in_id_order(self, store: Store) -> None:
        """Every committed feature's id, sorted as list_features sorts them."""
        store.commit_many(
            [
                change(None, "search", Publish("2.0.0", "c" * 64), 1),
                change(None, "cart", Publish("1.0.0", "a" * 64), 2),
            ]
        )
        assert store.feature_ids() == ["cart", "search"]
        assert store.feature_ids() == [s.feature_id for s in store.list_features()]
