"""Store: commits are atomic, checked, ordered for the origin, and durable."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from releasecontrol.errors import AlreadyExists, ConfigError, StaleSequence
from releasecontrol_server import releases
from releasecontrol_server.releases import (
    Canary,
    ChangeMeta,
    Channel,
    Command,
    DeployCanary,
    FeatureState,
    Publish,
    PublishedVersion,
)
from releasecontrol_server.store import SCHEMA_VERSION, Change, SignedFile, Store, open_store

T0 = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SHA_A = "a" * 64
SHA_B = "b" * 64


def signed(path: str, content: bytes, sequence: int) -> SignedFile:
    return SignedFile(path, content, hashlib.sha256(content).hexdigest(), sequence)


def make_change(
    store: Store,
    feature_id: str,
    command: Command,
    *,
    at: datetime = T0,
    files: tuple[SignedFile, ...] | None = None,
    manifest: tuple[str, bytes] | None = None,
    request_id: str = "",
    rpc: str = "",
) -> Change:
    """The change the control plane would commit for `command` on the stored state."""
    outcome = releases.apply(
        store.load_feature(feature_id), feature_id, command, ChangeMeta(actor="alice"), at
    )
    assert isinstance(outcome, releases.Transition)
    global_sequence = store.global_sequence() + 1
    if files is None:
        files = (
            signed(
                f"features/{feature_id}/releases.json",
                b"releases %d" % outcome.state.sequence,
                outcome.state.sequence,
            ),
            signed("remote-index.json", b"remote %d" % global_sequence, global_sequence),
        )
    return Change(
        state=outcome.state,
        record=outcome.record,
        global_sequence=global_sequence,
        files=files,
        manifest=manifest,
        request_id=request_id,
        rpc=rpc,
    )


def publish(
    store: Store,
    feature_id: str,
    version: str,
    *,
    channel: Channel = Channel.STABLE,
    at: datetime = T0,
    **kwargs: Any,
) -> Change:
    change = make_change(
        store,
        feature_id,
        Publish(version, SHA_A, channel=channel, soak_seconds=600),
        at=at,
        **kwargs,
    )
    store.commit(change)
    return change


def raw(location: str, sql: str) -> list[tuple[Any, ...]]:
    """`sql`'s rows, run through a connection of its own on either engine."""
    if location.startswith("postgresql://"):
        with psycopg.connect(location, autocommit=True) as pg:
            cursor = pg.execute(sql.encode())
            return cursor.fetchall() if cursor.description is not None else []
    conn = sqlite3.connect(location)
    try:
        with conn:
            return conn.execute(sql).fetchall()
    finally:
        conn.close()


def dump(location: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, read through a connection of its own."""
    if location.startswith("postgresql://"):
        query = (
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = current_schema() ORDER BY table_name"
        )
    else:
        query = "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
    return {
        table: sorted(raw(location, f'SELECT * FROM "{table}"'), key=repr)
        for (table,) in raw(location, query)
    }


@pytest.fixture
def store(store_location: str) -> Iterator[Store]:
    """A new store, on each engine in turn."""
    opened = open_store(store_location)
    yield opened
    opened.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "releasecontrol.db"


class TestOpen:
    def test_new_store_is_empty(self, store: Store) -> None:
        """A new database has no features, no transitions, no files and global sequence 0."""
        assert store.global_sequence() == 0
        assert store.feature_count() == 0
        assert store.load_feature("checkout") is None
        assert store.list_features() == []
        assert store.list_transitions() == []
        assert store.pending_writes() == []
        assert store.signed_file("remote-index.json") is None

    def test_newer_schema_is_refused(self, store: Store, store_location: str) -> None:
        """A database written by a newer schema is refused with ConfigError naming both versions."""
        store.close()
        raw(store_location, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        with pytest.raises(ConfigError, match=rf"schema version 99.*up to {SCHEMA_VERSION}"):
            open_store(store_location)


class TestSqliteFile:
    """What only the SQLite engine has: the file's mode, and migrations from its first schema
    (PostgreSQL starts at schema 11)."""

    @pytest.fixture
    def store(self, db_path: Path) -> Iterator[Store]:
        opened = open_store(db_path)
        yield opened
        opened.close()

    def test_database_uses_wal_and_records_schema_version(
        self, store: Store, db_path: Path
    ) -> None:
        """The file is in WAL mode and its meta table names the schema version."""
        conn = sqlite3.connect(db_path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert conn.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone() == (str(SCHEMA_VERSION),)
        finally:
            conn.close()

    def test_a_version_2_database_gains_the_principal_column(
        self, store: Store, db_path: Path
    ) -> None:
        """Opening a schema-2 database adds transitions.principal: old records read '',
        new ones keep the caller."""
        publish(store, "checkout", "1.0.0")
        store.close()
        conn = sqlite3.connect(db_path)
        with conn:  # as version 2 left it
            conn.execute("ALTER TABLE transitions DROP COLUMN principal")
            conn.execute("ALTER TABLE features DROP COLUMN updated_by_principal")
            conn.execute("ALTER TABLE features DROP COLUMN canary_rollout")  # from 8
            conn.execute("DROP TABLE approvals")  # from 9
            conn.execute("DROP TABLE beacon_counts")  # from 10
            conn.execute("DROP TABLE events")  # from 11
            conn.execute("DROP TABLE webhook_cursors")
            conn.execute("ALTER TABLE transitions DROP COLUMN state")  # from 12
            conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
        conn.close()
        reopened = open_store(db_path)
        try:
            (old,) = reopened.list_transitions(limit=10)
            assert (old.record.actor, old.record.principal) == ("alice", "")
            change = make_change(reopened, "checkout", Publish("1.1.0", SHA_A))
            change = dataclasses.replace(
                change, record=dataclasses.replace(change.record, principal="ci-bot")
            )
            reopened.commit(change)
            newest = reopened.list_transitions(limit=1)[0]
            assert (newest.record.actor, newest.record.principal) == ("alice", "ci-bot")
        finally:
            reopened.close()

    def test_a_version_5_database_gains_the_feature_principal(
        self, store: Store, db_path: Path
    ) -> None:
        """Opening a schema-5 database keeps its features (last changed by nobody known) and
        records the authenticated caller of every later change beside its actor."""
        publish(store, "checkout", "1.0.0")
        store.close()
        conn = sqlite3.connect(db_path)
        with conn:  # as version 5 left it
            conn.execute("ALTER TABLE features DROP COLUMN updated_by_principal")
            conn.execute("DROP INDEX requests_by_answered_at")  # from 7
            conn.execute("ALTER TABLE requests DROP COLUMN answered_at")
            conn.execute("ALTER TABLE features DROP COLUMN canary_rollout")  # from 8
            conn.execute("DROP TABLE approvals")  # from 9
            conn.execute("DROP TABLE beacon_counts")  # from 10
            conn.execute("DROP TABLE events")  # from 11
            conn.execute("DROP TABLE webhook_cursors")
            conn.execute("ALTER TABLE transitions DROP COLUMN state")  # from 12
            conn.execute("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
        conn.close()
        with open_store(db_path) as reopened:
            old = reopened.load_feature("checkout")
            assert old is not None
            assert (old.updated_by, old.updated_by_principal) == ("alice", "")
            change = make_change(reopened, "checkout", Publish("1.1.0", SHA_A))
            state = dataclasses.replace(change.state, updated_by_principal="ci-bot")
            reopened.commit(dataclasses.replace(change, state=state))
            new = reopened.load_feature("checkout")
            assert new is not None
            assert (new.updated_by, new.updated_by_principal) == ("alice", "ci-bot")

    def test_missing_folder_is_a_config_error(self, tmp_path: Path) -> None:
        """A database path in a folder that does not exist raises ConfigError naming the path."""
        with pytest.raises(ConfigError, match="no-such-folder"):
            open_store(tmp_path / "no-such-folder" / "db.sqlite")

    def test_a_version_7_database_reads_its_canaries_at_weight_zero(
        self, store: Store, db_path: Path
    ) -> None:
        """A canary kept before weights (schema 7) loads as weight 0 with no plan: only hosts
        that opt into the canary channel get it, as before the upgrade."""
        publish(store, "checkout", "1.0.0")
        publish(store, "checkout", "1.1.0", channel=Channel.CANARY, at=T0 + timedelta(minutes=1))
        store.close()
        conn = sqlite3.connect(db_path)
        with conn:  # as version 7 left it
            conn.execute("ALTER TABLE features DROP COLUMN canary_rollout")
            conn.execute("DROP TABLE approvals")
            conn.execute("DROP TABLE beacon_counts")
            conn.execute("DROP TABLE events")
            conn.execute("DROP TABLE webhook_cursors")
            conn.execute("ALTER TABLE transitions DROP COLUMN state")  # from 12
            conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        conn.close()
        with open_store(db_path) as reopened:
            loaded = reopened.load_feature("checkout")
        assert loaded is not None and loaded.canary is not None
        assert (loaded.canary.version, loaded.canary.weight, loaded.canary.steps) == (
            "1.1.0",
            0,
            (),
        )

    def test_requests_kept_as_answer_bytes_are_migrated(self, store: Store, db_path: Path) -> None:
        """A schema-4 database kept each request's protobuf answer: opening it keeps every
        request_id (a retry is still never applied twice) with the transition it committed;
        the feature it answered with was only in the bytes, so none is kept."""
        publish(store, "checkout", "1.0.0", request_id="r-change")
        store.close()
        conn = sqlite3.connect(db_path)
        with conn:  # as schema 4 left it
            conn.execute("DROP TABLE requests")
            conn.execute(
                "CREATE TABLE requests (request_id TEXT PRIMARY KEY, rpc TEXT NOT NULL, "
                "response BLOB NOT NULL, global_sequence INTEGER NOT NULL)"
            )
            conn.executemany(
                "INSERT INTO requests VALUES (?, ?, ?, 1)",
                [("r-change", "PublishVersion A", b"\x0a\x01x"), ("r-same", "Promote B", b"")],
            )
            conn.execute("ALTER TABLE features DROP COLUMN updated_by_principal")  # from 6
            conn.execute("ALTER TABLE features DROP COLUMN canary_rollout")  # from 8
            conn.execute("DROP TABLE approvals")  # from 9
            conn.execute("DROP TABLE beacon_counts")  # from 10
            conn.execute("DROP TABLE events")  # from 11
            conn.execute("DROP TABLE webhook_cursors")
            conn.execute("ALTER TABLE transitions DROP COLUMN state")  # from 12
            conn.execute("UPDATE meta SET value = '4' WHERE key = 'schema_version'")
        conn.close()

        with open_store(db_path) as reopened:
            change, same = reopened.answered("r-change"), reopened.answered("r-same")

        assert change is not None and same is not None
        assert (change.rpc, change.state) == ("PublishVersion A", None)
        assert change.transition is not None and change.transition.request_id == "r-change"
        assert (same.rpc, same.state, same.transition) == ("Promote B", None, None)


class TestCommit:
    def test_round_trips_state_with_canary_and_versions(self, store: Store) -> None:
        """A committed FeatureState with versions and a canary loads back exactly equal."""
        publish(store, "checkout", "1.0.0")
        publish(store, "checkout", "1.1.0", at=T0 + timedelta(minutes=5))
        last = publish(
            store, "checkout", "1.2.0", channel=Channel.CANARY, at=T0 + timedelta(minutes=9)
        )
        assert last.state.canary is not None
        assert [v.was_stable for v in last.state.versions] == [True, True, False]

        loaded = store.load_feature("checkout")

        assert loaded == last.state
        assert loaded == FeatureState(
            feature_id="checkout",
            sequence=3,
            stable="1.1.0",
            canary=Canary("1.2.0", T0 + timedelta(minutes=9), 600),
            versions=(
                PublishedVersion("1.0.0", SHA_A, T0, was_stable=True),
                PublishedVersion("1.1.0", SHA_A, T0 + timedelta(minutes=5), was_stable=True),
                PublishedVersion("1.2.0", SHA_A, T0 + timedelta(minutes=9)),
            ),
            updated_at=T0 + timedelta(minutes=9),
            updated_by="alice",
        )

    def test_round_trips_a_weighted_canary_on_a_step_plan(self, store: Store) -> None:
        """A canary's weight and step plan load back exactly: from the feature row, from the
        feature list, and from the answer kept for its request id; a weight set by hand after
        the plan (no plan any more) too."""
        publish(store, "checkout", "1.0.0")
        publish(store, "checkout", "1.1.0", at=T0 + timedelta(minutes=1))
        store.commit(  # 1.0.0 stable again, 1.1.0 to ramp
            make_change(store, "checkout", releases.Rollback("1.0.0"), at=T0 + timedelta(minutes=2))
        )
        ramp = make_change(
            store,
            "checkout",
            releases.DeployCanary("1.1.0", 0, steps=(500, 2500, 10_000), step_seconds=600),
            at=T0 + timedelta(minutes=3),
            request_id="r-ramp",
        )
        store.commit(ramp)
        assert ramp.state.canary is not None and ramp.state.canary.steps == (500, 2500, 10_000)
        assert store.load_feature("checkout") == ramp.state
        assert store.list_features() == [ramp.state]
        answered = store.answered("r-ramp")
        assert answered is not None and answered.state == ramp.state

        by_hand = make_change(store, "checkout", releases.SetWeight(5000), at=T0 + timedelta(1))
        store.commit(by_hand)
        loaded = store.load_feature("checkout")
        assert loaded == by_hand.state
        assert loaded.canary is not None and (loaded.canary.weight, loaded.canary.steps) == (
            5000,
            (),
        )

    def test_datetimes_come_back_as_aware_utc(self, store: Store) -> None:
        """A time given in another zone loads back as the same instant, in UTC."""
        paris = timezone(timedelta(hours=2))
        publish(store, "checkout", "1.0.0", at=T0.astimezone(paris))

        loaded = store.load_feature("checkout")

        assert loaded is not None and loaded.updated_at is not None
        assert loaded.updated_at == T0
        assert loaded.updated_at.tzinfo is UTC
        assert loaded.versions[0].published_at.tzinfo is UTC
        assert store.list_transitions()[0].record.at.tzinfo is UTC

    def test_returns_the_stored_transition(self, store: Store) -> None:
        """commit returns the audit record with id = global sequence, as listed later."""
        publish(store, "checkout", "1.0.0")
        publish(store, "checkout", "1.1.0")
        change = make_change(store, "checkout", DeployCanary("1.0.0", 60), request_id="r-1")

        stored = store.commit(change)

        assert (stored.id, stored.global_sequence, stored.request_id) == (3, 3, "r-1")
        assert stored.record == change.record
        assert store.list_transitions(limit=1) == [stored]
        assert store.global_sequence() == 3

    def test_keeps_manifest_and_signed_files(self, store: Store) -> None:
        """The published manifest and every committed file are kept with their hash and sequence."""
        manifest_file = signed("features/checkout/1.0.0/manifest.json", b'{"m":1}', 1)
        change = publish(
            store,
            "checkout",
            "1.0.0",
            manifest=("1.0.0", b'{"m":1}'),
            files=(manifest_file, signed("remote-index.json", b"ri", 1)),
        )

        assert store.get_manifest("checkout", "1.0.0") == b'{"m":1}'
        assert store.get_manifest("checkout", "9.9.9") is None
        assert store.signed_file(manifest_file.path) == manifest_file
        assert store.signed_files([manifest_file.path, "remote-index.json", "nope.json"]) == {
            file.path: file for file in change.files
        }
        assert store.signed_files([]) == {}

    def test_stored_manifest_never_changes(self, store: Store, store_location: str) -> None:
        """Other bytes for a stored manifest raise AlreadyExists and nothing is written."""
        publish(store, "checkout", "1.0.0", manifest=("1.0.0", b"{}"))
        publish(store, "checkout", "1.1.0")
        change = make_change(
            store, "checkout", DeployCanary("1.0.0", 60), manifest=("1.0.0", b'{"x":1}')
        )
        before = dump(store_location)

        with pytest.raises(AlreadyExists, match="different manifest"):
            store.commit(change)

        assert dump(store_location) == before
        assert store.get_manifest("checkout", "1.0.0") == b"{}"

    def test_later_commit_replaces_a_signed_file(self, store: Store) -> None:
        """Committing a path again keeps only the newest bytes."""
        publish(store, "checkout", "1.0.0")
        publish(store, "checkout", "1.1.0")

        current = store.signed_file("remote-index.json")

        assert current == signed("remote-index.json", b"remote 2", 2)


def _other_store_commits_first(store: Store, location: str) -> Change:
    change = make_change(store, "checkout", Publish("1.1.0", SHA_B))
    with open_store(location) as other:
        other.commit(make_change(other, "checkout", Publish("1.1.0", SHA_B)))
    return change


def _renumber(change: Change, *, feature: int = 0, global_: int = 0) -> Change:
    state = dataclasses.replace(change.state, sequence=change.state.sequence + feature)
    record = dataclasses.replace(change.record, sequence=state.sequence)
    return dataclasses.replace(
        change, state=state, record=record, global_sequence=change.global_sequence + global_
    )


# Each builds, on a store holding checkout 1.0.0 (sequence 1, global 1), a change
# that must be refused.
STALE_CASES: dict[str, Callable[[Store, str], Change]] = {
    "feature-sequence-behind": lambda store, _: _renumber(
        make_change(store, "checkout", Publish("1.1.0", SHA_B)), feature=-1
    ),
    "feature-sequence-ahead": lambda store, _: _renumber(
        make_change(store, "checkout", Publish("1.1.0", SHA_B)), feature=+1
    ),
    "global-sequence-behind": lambda store, _: _renumber(
        make_change(store, "checkout", Publish("1.1.0", SHA_B)), global_=-1
    ),
    "global-sequence-ahead": lambda store, _: _renumber(
        make_change(store, "search", Publish("1.0.0", SHA_B)), global_=+1
    ),
    "another-store-committed-first": _other_store_commits_first,
    "signed-file-goes-backwards": lambda store, _: make_change(
        store,
        "checkout",
        Publish("1.1.0", SHA_B),
        files=(signed("remote-index.json", b"older", 0),),
    ),
}


class TestStaleChangesWriteNothing:
    @pytest.mark.parametrize("build", STALE_CASES.values(), ids=STALE_CASES.keys())
    def test_stale_change_raises_and_writes_nothing(
        self, store: Store, store_location: str, build: Callable[[Store, str], Change]
    ) -> None:
        """A change built on stale sequences raises StaleSequence and no table changes."""
        publish(
            store,
            "checkout",
            "1.0.0",
            manifest=("1.0.0", b"{}"),
            request_id="r-first",
            rpc="PublishVersion",
        )
        change = build(store, store_location)
        change = dataclasses.replace(
            change,
            manifest=(change.state.versions[-1].version, b"{}"),
            request_id="r-stale",
            rpc="PublishVersion",
        )
        before = dump(store_location)

        with pytest.raises(StaleSequence):
            store.commit(change)

        assert dump(store_location) == before
        assert store.answered("r-stale") is None

    def test_reused_request_id_raises_already_exists_and_writes_nothing(
        self, store: Store, store_location: str
    ) -> None:
        """Reusing an answered request_id raises AlreadyExists and writes nothing."""
        publish(store, "checkout", "1.0.0", request_id="r-1", rpc="PublishVersion")
        change = make_change(store, "checkout", Publish("1.1.0", SHA_B), request_id="r-1")
        before = dump(store_location)

        with pytest.raises(AlreadyExists, match="r-1"):
            store.commit(change)

        assert dump(store_location) == before

    def test_every_table_is_covered(self, store: Store, store_location: str) -> None:
        """The nothing-written check compares every table the schema has."""
        assert set(dump(store_location)) == {
            "approvals",
            "beacon_counts",
            "events",
            "features",
            "files",
            "manifests",
            "meta",
            "outbox",
            "requests",
            "transitions",
            "versions",
            "webhook_cursors",
        }


def _first(store: Store) -> Change:
    return make_change(store, "checkout", Publish("1.0.0", SHA_A))


INCONSISTENT_CASES: dict[str, tuple[Callable[[Change], Change], str]] = {
    "record-for-another-feature": (
        lambda c: dataclasses.replace(c, record=dataclasses.replace(c.record, feature_id="x")),
        "audit record",
    ),
    "sha256-does-not-match": (
        lambda c: dataclasses.replace(
            c, files=(dataclasses.replace(c.files[0], sha256=SHA_A), *c.files[1:])
        ),
        "does not match",
    ),
    "path-twice": (lambda c: dataclasses.replace(c, files=c.files * 2), "twice"),
    "path-escapes-origin": (
        lambda c: dataclasses.replace(c, files=(signed("../etc/passwd", b"x", 1),)),
        "outside",
    ),
    "manifest-of-unknown-version": (
        lambda c: dataclasses.replace(c, manifest=("9.9.9", b"{}")),
        "9.9.9",
    ),
}


class TestInconsistentChanges:
    @pytest.mark.parametrize(
        ("corrupt", "message"), INCONSISTENT_CASES.values(), ids=INCONSISTENT_CASES.keys()
    )
    def test_inconsistent_change_is_refused(
        self,
        store: Store,
        store_location: str,
        corrupt: Callable[[Change], Change],
        message: str,
    ) -> None:
        """A change that contradicts itself raises ValueError saying why, before any write."""
        before = dump(store_location)

        with pytest.raises(ValueError, match=message):
            store.commit(corrupt(_first(store)))

        assert dump(store_location) == before

    def test_naive_datetime_is_refused(self, store: Store, store_location: str) -> None:
        """A naive datetime raises ValueError and the transaction leaves nothing behind."""
        before = dump(store_location)

        with pytest.raises(ValueError, match="naive"):
            publish(store, "checkout", "1.0.0", at=datetime(2026, 3, 1, 12, 0))

        assert dump(store_location) == before


class TestOutbox:
    def test_pending_writes_put_indexes_last(self, store: Store) -> None:
        """Pending files come out: other files, every releases.json, remote-index.json last."""
        publish(
            store,
            "checkout",
            "1.0.0",
            files=(
                signed("remote-index.json", b"ri", 1),
                signed("features/checkout/releases.json", b"r", 1),
                signed("features/checkout/1.0.0/manifest.json", b"m", 1),
            ),
        )
        publish(
            store,
            "search",
            "1.0.0",
            files=(
                signed("remote-index.json", b"ri2", 2),
                signed("features/search/releases.json", b"r", 1),
                signed("features/search/1.0.0/manifest.json", b"m", 1),
            ),
        )

        order = [file.path for file in store.pending_writes()]

        assert order == [
            "features/checkout/1.0.0/manifest.json",
            "features/search/1.0.0/manifest.json",
            "features/checkout/releases.json",
            "features/search/releases.json",
            "remote-index.json",
        ]
        assert store.pending_writes()[-1].content == b"ri2"

    def test_mark_written_removes_the_entry(self, store: Store) -> None:
        """A file confirmed on the origin with its current sha256 leaves the outbox."""
        change = publish(store, "checkout", "1.0.0")

        for file in change.files:
            store.mark_written(file.path, file.sha256)

        assert store.pending_writes() == []
        assert store.signed_file("remote-index.json") is not None

    def test_mark_written_with_a_stale_sha_keeps_the_entry(self, store: Store) -> None:
        """A file committed again after being read from the outbox stays queued, new bytes."""
        publish(store, "checkout", "1.0.0")
        read_before = {file.path: file for file in store.pending_writes()}
        publish(store, "checkout", "1.1.0")

        store.mark_written("remote-index.json", read_before["remote-index.json"].sha256)

        pending = {file.path: file for file in store.pending_writes()}
        assert pending["remote-index.json"] == signed("remote-index.json", b"remote 2", 2)

    def test_mark_written_for_an_unknown_path_is_harmless(self, store: Store) -> None:
        """Confirming a path that is not queued changes nothing."""
        publish(store, "checkout", "1.0.0")

        store.mark_written("nope.json", SHA_A)

        assert len(store.pending_writes()) == 2


class TestRequests:
    def test_commit_keeps_what_the_request_did(self, store: Store) -> None:
        """A change committed with a request_id is kept as domain values: the request, the
        feature afterwards and the transition it committed."""
        change = publish(store, "checkout", "1.0.0", request_id="r-1", rpc="PublishVersion X")
        publish(store, "checkout", "1.1.0")  # later changes do not alter what r-1 answered

        kept = store.answered("r-1")

        assert kept is not None
        assert (kept.rpc, kept.state, kept.why_unchanged) == ("PublishVersion X", change.state, "")
        assert kept.transition is not None
        assert (kept.transition.id, kept.transition.record) == (1, change.record)
        assert store.answered("r-2") is None

    def test_remember_request_keeps_the_first_answer(self, store: Store) -> None:
        """The first unchanged answer remembered for a request_id is kept; a second is ignored."""
        first = publish(store, "checkout", "1.0.0").state
        store.remember_request("r-1", "Promote A", first, "1.0.0 is stable already", T0)
        store.remember_request("r-1", "Promote A", FeatureState("other"), "second", T0)

        kept = store.answered("r-1")

        assert kept is not None
        assert (kept.rpc, kept.state, kept.transition, kept.why_unchanged) == (
            "Promote A",
            first,
            None,
            "1.0.0 is stable already",
        )
        assert store.global_sequence() == 1

    def test_empty_request_id_cannot_be_remembered(self, store: Store) -> None:
        """remember_request refuses an empty request_id."""
        with pytest.raises(ValueError, match="empty"):
            store.remember_request("", "PublishVersion", FeatureState("checkout"), "", T0)

    def test_old_request_ids_are_forgotten_and_recent_ones_kept(self, store: Store) -> None:
        """forget_requests drops what was answered before the cutoff, committed or not, and
        keeps the rest; the audit trail keeps every change's request_id."""
        publish(store, "checkout", "1.0.0", request_id="r-old", at=T0)
        publish(store, "checkout", "1.1.0", request_id="r-new", at=T0 + timedelta(days=8))
        state = store.load_feature("checkout")
        assert state is not None
        store.remember_request("r-same-old", "Promote A", state, "stable already", T0)

        assert store.forget_requests(T0 + timedelta(days=1)) == 2

        assert store.answered("r-old") is None and store.answered("r-same-old") is None
        assert store.answered("r-new") is not None
        assert {t.request_id for t in store.list_transitions()} == {"r-old", "r-new"}


class TestListing:
    def test_list_features_pages_in_feature_id_order(self, store: Store) -> None:
        """Pages of list_features follow feature_id order, each strictly after the last id."""
        for feature_id in ["delta", "alpha", "echo", "charlie", "bravo"]:
            publish(store, feature_id, "1.0.0")

        pages: list[list[str]] = []
        after = ""
        while page := store.list_features(after=after, limit=2):
            pages.append([state.feature_id for state in page])
            after = page[-1].feature_id

        assert pages == [["alpha", "bravo"], ["charlie", "delta"], ["echo"]]
        assert store.feature_count() == 5

    def test_list_features_only_some(self, store: Store) -> None:
        """With only=, list_features returns just those features that exist, in order."""
        for feature_id in ["alpha", "bravo", "charlie"]:
            publish(store, feature_id, "1.0.0")

        found = store.list_features(only=["charlie", "alpha", "zulu"])

        assert [state.feature_id for state in found] == ["alpha", "charlie"]
        assert found[0] == store.load_feature("alpha")

    def test_list_transitions_newest_first_in_pages(self, store: Store) -> None:
        """list_transitions pages from the newest, before_id giving the next page."""
        for index in range(5):
            publish(store, "checkout", f"1.{index}.0")

        first = store.list_transitions(limit=2)
        second = store.list_transitions(before_id=first[-1].id, limit=2)
        third = store.list_transitions(before_id=second[-1].id, limit=2)

        assert [t.id for t in first + second + third] == [5, 4, 3, 2, 1]
        assert [t.record.version for t in first] == ["1.4.0", "1.3.0"]

    def test_list_transitions_of_one_feature(self, store: Store) -> None:
        """With feature_id=, list_transitions returns only that feature's records, newest first."""
        publish(store, "checkout", "1.0.0")
        publish(store, "search", "1.0.0")
        publish(store, "checkout", "1.1.0")
        publish(store, "search", "1.1.0")

        found = store.list_transitions(feature_id="checkout")
        older = store.list_transitions(feature_id="search", before_id=4)

        assert [(t.id, t.record.feature_id, t.record.sequence) for t in found] == [
            (3, "checkout", 2),
            (1, "checkout", 1),
        ]
        assert [t.id for t in older] == [2]

    @pytest.mark.parametrize("limit", [0, -1], ids=["zero", "negative"])
    def test_limit_below_one_is_refused(self, store: Store, limit: int) -> None:
        """A limit below 1 raises ValueError."""
        with pytest.raises(ValueError, match="limit"):
            store.list_features(limit=limit)
        with pytest.raises(ValueError, match="limit"):
            store.list_transitions(limit=limit)


CHILD = textwrap.dedent(
    """
    import json, sys
    from datetime import datetime
    from pathlib import Path
    from releasecontrol_server import releases
    from releasecontrol_server.store import Change, open_store

    with open_store(sys.argv[1]) as store:
        state = store.load_feature("checkout")
        print(json.dumps({
            "sequence": state.sequence,
            "stable": state.stable,
            "versions": [v.version for v in state.versions],
            "global_sequence": store.global_sequence(),
            "pending": [f.path for f in store.pending_writes()],
            "manifest": store.get_manifest("checkout", "1.1.0").decode(),
            "request": store.answered("r-1").transition.id,
        }))
        outcome = releases.apply(
            state, "checkout", releases.DeployCanary("1.1.0", 60),
            releases.ChangeMeta(actor="child"), datetime.fromisoformat(sys.argv[2]),
        )
        store.commit(Change(outcome.state, outcome.record, store.global_sequence() + 1, ()))
    """
)


class TestDurability:
    def test_reopened_store_sees_every_commit(self, store: Store, store_location: str) -> None:
        """A new Store on the same file sees features, files, outbox, requests and audit."""
        publish(store, "checkout", "1.0.0")
        change = publish(store, "checkout", "1.1.0", manifest=("1.1.0", b"{}"), request_id="r-1")
        store.close()

        with open_store(store_location) as reopened:
            assert reopened.load_feature("checkout") == change.state
            assert reopened.global_sequence() == 2
            assert reopened.get_manifest("checkout", "1.1.0") == b"{}"
            kept = reopened.answered("r-1")
            assert kept is not None and kept.state == change.state
            assert [t.id for t in reopened.list_transitions()] == [2, 1]
            assert {f.path for f in reopened.pending_writes()} == {f.path for f in change.files}

    def test_another_process_sees_commits_and_is_seen(
        self, store: Store, store_location: str
    ) -> None:
        """A second process reads what this one committed, and this open store reads its commit."""
        publish(store, "checkout", "1.0.0")
        publish(
            store,
            "checkout",
            "1.1.0",
            channel=Channel.CANARY,
            manifest=("1.1.0", b'{"v":"1.1.0"}'),
            request_id="r-1",
        )

        child = subprocess.run(
            [sys.executable, "-c", CHILD, store_location, T0.isoformat()],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

        assert child.returncode == 0, child.stderr
        assert json.loads(child.stdout) == {
            "sequence": 2,
            "stable": "1.0.0",
            "versions": ["1.0.0", "1.1.0"],
            "global_sequence": 2,
            "pending": [
                "features/checkout/releases.json",
                "remote-index.json",
            ],
            "manifest": '{"v":"1.1.0"}',
            "request": 2,
        }
        assert store.global_sequence() == 3
        after = store.load_feature("checkout")
        assert after is not None and after.sequence == 3 and after.updated_by == "child"
        assert store.list_transitions(limit=1)[0].record.actor == "child"
