"""The store records remote-index.json (sequence and signing times) instead of its bytes."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from releasecontrol_server.releases import Publish
from releasecontrol_server.store import Change, SignedFile, SqliteStore
from tests.unit.test_store import make_change

T1 = datetime(2026, 3, 1, 13, 0, 0, tzinfo=UTC)


def releases_only(store: SqliteStore, feature_id: str, version: str) -> list[Change]:
    """The change publishing `version`, carrying its releases.json but no remote index bytes."""
    digest = hashlib.sha256(version.encode()).hexdigest()
    change = make_change(store, feature_id, Publish(version, digest))
    files = tuple(f for f in change.files if f.path != "remote-index.json")
    return [dataclasses.replace(change, files=files)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "db.sqlite") as opened:
        yield opened


def test_a_commit_records_the_remote_index_as_pending(store: SqliteStore) -> None:
    assert store.remote_index_record() is None
    store.commit_many(releases_only(store, "a", "1.0.0"), remote_index=(T1, T1 + timedelta(days=1)))
    record = store.remote_index_record()
    assert record is not None
    assert (record.sequence, record.issued_at, record.expires_at) == (1, T1, T1 + timedelta(days=1))
    assert not record.written
    assert store.pending_count() == 2  # releases.json and the remote index
    assert store.signed_file("remote-index.json") is None
    store.mark_all_written([(d.path, d.sha256) for d in store.pending_digests()], remote_index=1)
    assert store.pending_count() == 0
    record = store.remote_index_record()
    assert record is not None and record.written


def test_a_newer_commit_makes_it_pending_again_and_an_old_mark_does_not_clear_it(
    store: SqliteStore,
) -> None:
    store.commit_many(releases_only(store, "a", "1.0.0"), remote_index=(T1, T1))
    store.mark_all_written([], remote_index=1)
    store.commit_many(releases_only(store, "a", "1.1.0"), remote_index=(T1, T1))
    store.mark_all_written([], remote_index=1)  # a late mark of the older one
    record = store.remote_index_record()
    assert record is not None and record.sequence == 2 and not record.written


def test_a_recorded_commit_drops_the_stored_bytes_of_an_older_one(store: SqliteStore) -> None:
    """A store written before kept the bytes (and an outbox row): the record replaces both."""
    store.commit(make_change(store, "a", Publish("1.0.0", "a" * 64)))  # with stored bytes
    assert store.signed_file("remote-index.json") is not None
    assert store.remote_index_record() is None
    store.commit_many(releases_only(store, "a", "1.1.0"), remote_index=(T1, T1))
    assert store.signed_file("remote-index.json") is None
    assert "remote-index.json" not in {d.path for d in store.pending_digests()}
    # And a later commit that stores bytes again wins over the record.
    store.commit(make_change(store, "a", Publish("1.2.0", "c" * 64)))
    assert store.remote_index_record() is None
    stored = store.signed_file("remote-index.json")
    assert isinstance(stored, SignedFile) and stored.sequence == 3


def test_remote_index_bytes_and_a_record_together_are_refused(store: SqliteStore) -> None:
    change = make_change(store, "a", Publish("1.0.0", "a" * 64))
    with pytest.raises(ValueError, match=r"remote-index\.json is among the files"):
        store.commit_many([change], remote_index=(T1, T1))
    assert store.global_sequence() == 0
