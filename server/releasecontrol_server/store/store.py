"""The control plane's state, the same on both engines (SQLite or PostgreSQL: engine.py).

What is kept, one table each:

    meta          schema_version, global_sequence
    features      one row per feature: sequence, stable, canary
    versions      one row per published version (feature_id, version), in publish order
    manifests     the manifest bytes of each published version
    transitions   the audit trail; id = the global sequence of the commit
    files         the last signed bytes of every file published to the origin
    outbox        paths committed but not yet confirmed on the origin
    requests      request_id -> (rpc, what it did) for idempotent retries: the feature
                  afterwards, the transition it committed, why nothing changed; domain
                  values as JSON (the RPC layer encodes its answer from them); and when,
                  so that ids long past any retry are forgotten (`forget_requests`)
    approvals, beacon_counts, events, webhook_cursors: progressive delivery's

`commit` writes one change in ONE transaction, after checking that neither the
feature nor the global sequence moved since the change was computed, so a
crash leaves the old state or the new one and the outbox still names every
file the origin has not confirmed.

The index files of host protocol v2 (the shards under `index/`, `remote-index.json`
and the roots under `roots/`) are kept in `files` and the outbox like every other
signed file (`commit_many(..., index_files=...)`); each is small whatever the
feature count. Stores of schema 2 and 3 recorded a v1 remote-index.json in `meta`
instead; schema 4 drops that record (a v2 server signs a new top level at start).

Write transactions are serialised by the engine across every process on the
database; the caller still serialises whole read-modify-commit cycles (the
sequence checks turn a lost race into StaleSequence). The schema and its
migrations are in schema.py.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

from releasecontrol.errors import AlreadyExists, ConfigError, StaleSequence
from releasecontrol_server.approvals import ApprovalRequest, command_from_json, command_json
from releasecontrol_server.origin import validate_origin_path
from releasecontrol_server.releases import (
    Action,
    AuditRecord,
    Canary,
    ChangeMeta,
    Command,
    FeatureState,
    PublishedVersion,
)
from releasecontrol_server.store.engine import RESTORE_ADVICE, Engine, Listener, Result
from releasecontrol_server.store.schema import META_TABLE, SCHEMA_VERSION
from releasecontrol_server.store.schema import steps as schema_steps

__all__ = [
    "SCHEMA_VERSION",
    "Answered",
    "Change",
    "FileDigest",
    "SignedFile",
    "Store",
    "StoredTransition",
]

log = logging.getLogger(__name__)

REMOTE_INDEX_NAME = "remote-index.json"
RELEASES_NAME = "releases.json"
INDEX_PREFIXES = ("index/", "roots/")


_TRANSITION_COLUMNS = (
    "id",
    "feature_id",
    "sequence",
    "action",
    "version",
    "from_stable",
    "to_stable",
    "from_canary",
    "to_canary",
    "actor",
    "reason",
    "ticket",
    "at",
    "detail",
    "request_id",
    "principal",
    "state",
)
_INSERT_TRANSITION = (
    f"INSERT INTO transitions ({', '.join(_TRANSITION_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _TRANSITION_COLUMNS)})"
)


@dataclass(frozen=True)
class SignedFile:
    """A file as published on the origin: its bytes and the sequence it carries."""

    path: str
    content: bytes
    sha256: str
    sequence: int


@dataclass(frozen=True)
class FileDigest:
    """Which bytes a stored file holds, without the bytes: its path, SHA-256, sequence and
    length in bytes (0 where not read)."""

    path: str
    sha256: str
    sequence: int
    length: int = 0


@dataclass(frozen=True)
class StoredTransition:
    """A committed audit record; `id` and `global_sequence` are the same number."""

    id: int
    record: AuditRecord
    global_sequence: int
    request_id: str


@dataclass(frozen=True)
class Change:
    """Everything one commit writes; see `Store.commit`."""

    state: FeatureState
    """The new state (state.sequence = previous + 1)."""
    record: AuditRecord
    """The audit record of the move; its feature_id and sequence match `state`."""
    global_sequence: int
    """The new global sequence (= stored global sequence + 1): the audit record's id."""
    files: tuple[SignedFile, ...]
    """New signed bytes to keep and to write to the origin (releases.json, a manifest)."""
    manifest: tuple[str, bytes] | None = None
    """(version, manifest bytes) when a version is published."""
    request_id: str = ""
    rpc: str = ""
    """With a request_id: the request (RPC and a digest of its fields) kept with what it did."""


@dataclass(frozen=True)
class Answered:
    """What a request with a request_id did, kept so that a retry is answered alike."""

    rpc: str
    """The request it answered (RPC and a digest of its fields): a retry must match it."""
    state: FeatureState | None
    """The feature afterwards; None for a request kept before schema 5 (the feature as it
    is now stands in)."""
    transition: StoredTransition | None
    """The change it committed; None when nothing changed."""
    why_unchanged: str = ""


class Store:
    """Features, audit trail, signed files and outbox in one database (see `open_store`)."""

    def __init__(self, engine: Engine, *, migrate: bool = True) -> None:
        """The store on `engine`, its schema brought up to date (unless `migrate` is False: a
        reader, which never writes).

        Raises ConfigError when the database was written by a newer schema than this code
        knows, or is not a ReleaseControl database.
        """
        self._engine = engine
        self.where = engine.where
        if not migrate:
            return
        try:
            self._migrate()
        except engine.errors as exc:
            try:
                engine.checked()  # a damaged file: the integrity check names the damage
            finally:
                engine.close()
            raise ConfigError(
                f"cannot use the database {self.where}: {exc}; {RESTORE_ADVICE}"
            ) from exc
        except BaseException:
            engine.close()
            raise

    def checked(self) -> None:
        """Wait for the database's integrity check (started when it was opened; see
        `open_store`); raises ConfigError naming the damage. Call before writing."""
        self._engine.checked()

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def shared(self) -> bool:
        """Whether other server processes may commit to this database (Engine.shared)."""
        return self._engine.shared

    @property
    def dialect(self) -> str:
        """Which engine: `sqlite` or `postgresql` (schema.steps)."""
        return self._engine.dialect

    def reader(self) -> Store:
        """A store for a background reader (the origin check, the read thread) that must not
        wait on, or hold up, the writer: connections of its own. Only reads work on it."""
        return Store(self._engine.reader(), migrate=False)

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        self._engine.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- transactions -----------------------------------------------------

    def _write(self, *, durable: bool = True) -> contextlib.AbstractContextManager[None]:
        """One write transaction: all of it commits, or none of it; one writer at a time."""
        return self._engine.transaction(write=True, durable=durable)

    def _read(self) -> contextlib.AbstractContextManager[None]:
        """A read transaction, so several queries see one snapshot."""
        return self._engine.transaction(write=False)

    def _execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        return self._engine.execute(sql, params)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self._engine.execute(sql, params).dicts()

    def _value(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._engine.execute(sql, params).value()

    def _migrate(self) -> None:
        with self._write():
            tables = self._engine.tables()
            if tables and "meta" not in tables:
                raise ConfigError(
                    f"the database {self.where} holds tables ({', '.join(sorted(tables)[:3])}…) "
                    "but is not a ReleaseControl database; point the server at the right one"
                )
            self._execute(META_TABLE)
            found = self._meta("schema_version")
            current = int(found) if found is not None else 0
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"the database {self.where} has schema version {current}, but this server "
                    f"knows versions up to {SCHEMA_VERSION}; run a newer releasecontrol-server"
                )
            for version, statements in schema_steps(self.dialect, current):
                for statement in statements:
                    self._execute(statement)
                log.info("store schema migrated at=%s schema_version=%d", self.where, version)
            if current == 0:
                self._set_meta("global_sequence", 0)
            self._set_meta("schema_version", SCHEMA_VERSION)

    def schema_version(self) -> int:
        return int(self._meta("schema_version") or 0)

    def _meta(self, key: str) -> str | None:
        value = self._value("SELECT value FROM meta WHERE key = ?", [key])
        return None if value is None else str(value)

    def _set_meta(self, key: str, value: object) -> None:
        self._execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, str(value)],
        )

    # -- features ---------------------------------------------------------

    def load_feature(self, feature_id: str) -> FeatureState | None:
        """The feature's committed state, or None when it was never committed."""
        found = self.list_features(only=[feature_id], limit=1)
        return found[0] if found else None

    def list_features(
        self, *, after: str = "", limit: int = 100, only: Sequence[str] = ()
    ) -> list[FeatureState]:
        """Up to `limit` features ordered by feature_id, strictly after `after`.

        With `only`, just those feature ids (unknown ones are skipped). Raises
        ValueError for a limit below 1.
        """
        _check_limit(limit)
        where = "feature_id > ?"
        params: list[Any] = [after]
        if len(only) == 1:
            where += " AND feature_id = ?"
            params.append(only[0])
        elif only:
            condition, param = self._engine.any_of("feature_id", list(only))
            where += f" AND {condition}"
            params.append(param)
        params.append(limit)
        chosen = f"SELECT feature_id FROM features WHERE {where} ORDER BY feature_id LIMIT ?"
        # Two statements in one read transaction (one snapshot): the versions' rows do not
        # repeat their feature's columns, as a join's would (at 10,000 features of 20
        # versions, loading them all at start took 2.0 s that way; see docs/benchmarks.md).
        with self._read():
            features = self._execute(
                f"SELECT {_FEATURE_COLUMNS} FROM features WHERE feature_id IN ({chosen}) "
                "ORDER BY feature_id",
                params,
            ).rows
            versions = self._execute(
                "SELECT feature_id, version, manifest_sha256, published_at, was_stable "
                f"FROM versions WHERE feature_id IN ({chosen}) ORDER BY feature_id, position",
                params,
            ).rows
        of_feature: dict[str, list[PublishedVersion]] = {}
        for feature_id, version, manifest_sha256, published_at, was_stable in versions:
            # Positional, and the engines' str as it comes: 200,000 of these at start.
            of_feature.setdefault(feature_id, []).append(
                PublishedVersion(version, manifest_sha256, _moment(published_at), bool(was_stable))
            )
        return [_feature_from_tuple(row, of_feature.get(row[0], ())) for row in features]

    def feature_ids(self) -> list[str]:
        """Every committed feature's id, in feature_id order."""
        rows = self._execute("SELECT feature_id FROM features ORDER BY feature_id").rows
        return [str(row[0]) for row in rows]

    def feature_count(self) -> int:
        """How many features were ever committed."""
        return int(self._value("SELECT count(*) FROM features"))

    def global_sequence(self) -> int:
        """The sequence of the last commit (of the remote index); 0 before the first."""
        value = self._meta("global_sequence")
        return int(value) if value is not None else 0

    def get_manifest(self, feature_id: str, version: str) -> bytes | None:
        """The manifest bytes stored when `version` was published, or None."""
        value = self._value(
            "SELECT content FROM manifests WHERE feature_id = ? AND version = ?",
            [feature_id, version],
        )
        return None if value is None else bytes(value)

    # -- signed files and the outbox -------------------------------------

    def signed_file(self, path: str) -> SignedFile | None:
        """The last committed bytes of `path`, or None."""
        return self.signed_files([path]).get(path)

    def signed_files(self, paths: Sequence[str]) -> dict[str, SignedFile]:
        """The last committed bytes of each of `paths` that was ever committed, by path."""
        if not paths:
            return {}
        condition, param = self._engine.any_of("path", list(paths))
        rows = self._rows(f"SELECT * FROM files WHERE {condition}", [param])
        return {str(row["path"]): _file_from_row(row) for row in rows}

    def _file_sequences(self, paths: Sequence[str]) -> dict[str, int]:
        if not paths:
            return {}
        condition, param = self._engine.any_of("path", list(paths))
        rows = self._rows(f"SELECT path, sequence FROM files WHERE {condition}", [param])
        return {str(row["path"]): int(row["sequence"]) for row in rows}

    def releases_digests(self) -> dict[str, FileDigest]:
        """Every feature's releases.json, without its bytes: feature_id -> path, sha256,
        sequence and length.

        Features that have no releases.json stored are left out.
        """
        rows = self._execute(
            "SELECT features.feature_id, files.path, files.sha256, files.sequence, "
            "length(files.content) FROM features JOIN files "
            "ON files.path = 'features/' || features.feature_id || '/releases.json'"
        ).rows
        return {str(r[0]): FileDigest(str(r[1]), str(r[2]), int(r[3]), int(r[4])) for r in rows}

    def index_files(self) -> dict[str, SignedFile]:
        """The index files of host protocol v2: every shard, the roots and remote-index.json."""
        rows = self._rows(
            "SELECT * FROM files WHERE path = ? OR substr(path, 1, 6) IN (?, ?)",
            [REMOTE_INDEX_NAME, *INDEX_PREFIXES],
        )
        return {str(row["path"]): _file_from_row(row) for row in rows}

    def pending_count(self) -> int:
        """How many files are committed but not yet confirmed on the origin."""
        with self._read():
            return int(self._value("SELECT count(*) FROM outbox"))

    def pending_writes(self) -> list[SignedFile]:
        """Files committed but not yet confirmed on the origin, in the order to write them.

        In the order pins point: roots, then everything else (manifests), then every
        `releases.json`, then the shards, then `remote-index.json` last: a host that
        reads the new top level finds every file it pins. Within a group, the oldest
        queued first.
        """
        rows = self._rows(
            "SELECT files.*, outbox.global_sequence AS queued_at FROM outbox "
            "JOIN files ON files.path = outbox.path"
        )
        rows.sort(key=lambda row: (_write_rank(row["path"]), row["queued_at"], row["path"]))
        return [_file_from_row(row) for row in rows]

    def pending_digests(self) -> list[FileDigest]:
        """`pending_writes` without the bytes: path, sha256 and sequence, in the same order.

        For a writer that still holds the bytes it just committed, so they are not
        read back.
        """
        rows = self._rows(
            "SELECT files.path, files.sha256, files.sequence, outbox.global_sequence AS queued_at "
            "FROM outbox JOIN files ON files.path = outbox.path"
        )
        rows.sort(key=lambda row: (_write_rank(row["path"]), row["queued_at"], row["path"]))
        return [FileDigest(str(r["path"]), str(r["sha256"]), int(r["sequence"])) for r in rows]

    def mark_written(self, path: str, sha256: str) -> None:
        """Drop `path` from the outbox, only if the stored file still has `sha256`.

        A file committed again after it was read from the outbox stays queued,
        so its newer bytes are written too.
        """
        with self._write():
            self._execute(
                "DELETE FROM outbox WHERE path = ? "
                "AND EXISTS (SELECT 1 FROM files WHERE path = ? AND sha256 = ?)",
                [path, path, sha256],
            )

    def mark_all_written(self, files: Sequence[tuple[str, str]]) -> None:
        """`mark_written` for each (path, sha256), in one transaction that is not synced.

        Losing the marks to a power cut only makes the next start write the same
        bytes to the origin again, so they skip the fsync a commit pays.
        """
        if not files:
            return
        with self._write(durable=False):
            self._delete_written(files)

    def _delete_written(self, files: Sequence[tuple[str, str]]) -> None:
        self._engine.executemany(
            "DELETE FROM outbox WHERE path = ? "
            "AND EXISTS (SELECT 1 FROM files WHERE path = ? AND sha256 = ?)",
            [(path, path, sha256) for path, sha256 in files],
        )

    # -- commit -----------------------------------------------------------

    def commit(self, change: Change) -> StoredTransition:
        """Write `change` in one transaction and return its stored audit record.

        Raises StaleSequence when the stored feature sequence is not
        change.state.sequence - 1 (0 for a new feature), when the stored global
        sequence is not change.global_sequence - 1, or when a file's sequence is
        lower than the stored one; AlreadyExists when the request_id was already
        answered or the version's manifest is stored with other bytes; ValueError
        for an inconsistent change. In every one of these cases nothing is written.
        """
        return self.commit_many([change])[0]

    def commit_many(
        self,
        changes: Sequence[Change],
        *,
        index_files: Sequence[SignedFile] = (),
        written: Sequence[tuple[str, str]] = (),
    ) -> list[StoredTransition]:
        """Write `changes` in order in ONE transaction; their stored audit records, in order.

        Each change is checked as `commit` checks it, against the store as the
        changes before it left it, so their sequences must follow each other.
        `index_files` (shards, remote-index.json, roots) are kept and queued for the
        origin in the same transaction; with no changes, they alone are written
        (a re-signing). `written` (path, sha256) are marked written first, as
        `mark_all_written` does (riding along: no transaction of their own). Raises
        what `commit` raises, StaleSequence when an index file's sequence is lower
        than the stored one, and then nothing is written.
        """
        for change in changes:
            _check_change(change)
        _check_files(index_files)
        with self._write():
            if written:
                self._delete_written(written)
            # Read once and followed in memory: each change must be the one after the last.
            global_sequence = self.global_sequence()
            stored = []
            for change in changes:
                stored.append(self._put_change(change, global_sequence))
                global_sequence = change.global_sequence
            if changes:
                self._set_meta("global_sequence", global_sequence)
            if index_files:
                self._check_file_sequences(index_files)
                self._put_files(index_files, global_sequence)
            self._engine.notify()  # other processes following the database look now
            return stored

    def _put_change(self, change: Change, stored_global: int) -> StoredTransition:
        """One change inside the open write transaction, the global sequence being
        `stored_global` before it (the caller sets it after); see `commit`."""
        state, record = change.state, change.record
        self._check_sequences(change, stored_global)
        self._put_feature(state)
        if change.manifest is not None:
            self._put_manifest(state.feature_id, *change.manifest)
        row = {"id": change.global_sequence, **_record_to_row(record)}
        row["request_id"] = change.request_id
        row["state"] = json.dumps(_state_to_json(state), separators=(",", ":"))
        self._execute(_INSERT_TRANSITION, [row[name] for name in _TRANSITION_COLUMNS])
        if change.files:
            self._put_files(change.files, change.global_sequence)
        if change.request_id:
            self._execute(
                "INSERT INTO requests (request_id, rpc, result, global_sequence, answered_at) "
                "VALUES (?, ?, ?, ?, ?)",
                [
                    change.request_id,
                    change.rpc,
                    _result_json(state, change.global_sequence, ""),
                    change.global_sequence,
                    _text(record.at),
                ],
            )
        if record.action is not Action.RESIGN:  # a re-sign changes nothing anyone sees
            self._put_event(
                "change", record.at, state.feature_id, _change_event(change.global_sequence, record)
            )
        return StoredTransition(
            id=change.global_sequence,
            record=record,
            global_sequence=change.global_sequence,
            request_id=change.request_id,
        )

    def _put_files(self, files: Sequence[SignedFile], queued_at: int) -> None:
        self._engine.executemany(
            "INSERT INTO files (path, content, sha256, sequence) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (path) DO UPDATE SET content = excluded.content, "
            "sha256 = excluded.sha256, sequence = excluded.sequence",
            [(f.path, f.content, f.sha256, f.sequence) for f in files],
        )
        self._engine.executemany(
            "INSERT INTO outbox (path, global_sequence) VALUES (?, ?) "
            "ON CONFLICT (path) DO UPDATE SET global_sequence = excluded.global_sequence",
            [(f.path, queued_at) for f in files],
        )

    def _check_sequences(self, change: Change, stored_global: int) -> None:
        feature_id = change.state.feature_id
        # One query: the feature's sequence, and whether the request id was answered.
        row = self._execute(
            "SELECT (SELECT sequence FROM features WHERE feature_id = ?), "
            "(SELECT count(*) FROM requests WHERE request_id = ?)",
            [feature_id, change.request_id],
        ).first()
        assert row is not None
        stored_sequence = int(row[0]) if row[0] is not None else 0
        # Only a reconcile jumps (above what the origin served); every other change is + 1.
        jumps = change.record.action == Action.RECONCILE
        if stored_sequence != change.state.sequence - 1 and not (
            jumps and stored_sequence < change.state.sequence
        ):
            raise StaleSequence(
                f"feature {feature_id!r} is at sequence {stored_sequence} in the store, but the "
                f"change was computed from sequence {change.state.sequence - 1}: someone else "
                "changed it; re-read the state and retry"
            )
        if stored_global != change.global_sequence - 1:
            raise StaleSequence(
                f"the global sequence is {stored_global} in the store, but the change was "
                f"computed from {change.global_sequence - 1}: another change committed first; "
                "re-read the state and retry"
            )
        if change.request_id and row[1]:
            raise AlreadyExists(
                f"request_id {change.request_id!r} was already answered; "
                "use a new request_id for a new request"
            )
        self._check_file_sequences(change.files)

    def _check_file_sequences(self, files: Sequence[SignedFile]) -> None:
        stored_sequences = self._file_sequences([file.path for file in files])
        for file in files:
            old_sequence = stored_sequences.get(file.path)
            if old_sequence is not None and file.sequence < old_sequence:
                raise StaleSequence(
                    f"{file.path} is stored at sequence {old_sequence}, the change would write "
                    f"sequence {file.sequence}: a published file never goes backwards"
                )

    def _put_feature(self, state: FeatureState) -> None:
        canary = state.canary
        self._execute(
            "INSERT INTO features (feature_id, sequence, stable, canary_version, "
            "canary_soak_started_at, canary_soak_seconds, updated_at, updated_by, "
            "updated_by_principal, canary_rollout) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (feature_id) DO UPDATE SET "
            "sequence = excluded.sequence, stable = excluded.stable, "
            "canary_version = excluded.canary_version, "
            "canary_soak_started_at = excluded.canary_soak_started_at, "
            "canary_soak_seconds = excluded.canary_soak_seconds, "
            "updated_at = excluded.updated_at, updated_by = excluded.updated_by, "
            "updated_by_principal = excluded.updated_by_principal, "
            "canary_rollout = excluded.canary_rollout",
            [
                state.feature_id,
                state.sequence,
                state.stable,
                canary.version if canary else None,
                _text(canary.soak_started_at) if canary else None,
                canary.soak_seconds if canary else None,
                _text(state.updated_at) if state.updated_at else None,
                state.updated_by,
                state.updated_by_principal,
                _rollout_json(canary),
            ],
        )
        # The stored list must equal the state's exactly. Versions are only
        # ever appended and a change flips at most a was_stable flag, so only
        # the rows that differ are written (a feature keeps every version).
        wanted = {
            v.version: (position, v.manifest_sha256, _text(v.published_at), int(v.was_stable))
            for position, v in enumerate(state.versions)
        }
        stored = {
            str(row[0]): (int(row[1]), str(row[2]), str(row[3]), int(row[4]))
            for row in self._execute(
                "SELECT version, position, manifest_sha256, published_at, was_stable "
                "FROM versions WHERE feature_id = ?",
                [state.feature_id],
            ).rows
        }
        gone = [(state.feature_id, version) for version in stored if version not in wanted]
        if gone:
            self._engine.executemany(
                "DELETE FROM versions WHERE feature_id = ? AND version = ?", gone
            )
        changed = [
            (state.feature_id, version, *values)
            for version, values in wanted.items()
            if stored.get(version) != values
        ]
        if changed:
            self._engine.executemany(
                "INSERT INTO versions (feature_id, version, position, manifest_sha256, "
                "published_at, was_stable) VALUES (?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (feature_id, version) DO UPDATE SET position = excluded.position, "
                "manifest_sha256 = excluded.manifest_sha256, "
                "published_at = excluded.published_at, was_stable = excluded.was_stable",
                changed,
            )

    def _put_manifest(self, feature_id: str, version: str, content: bytes) -> None:
        stored = self.get_manifest(feature_id, version)
        if stored is None:
            self._execute(
                "INSERT INTO manifests (feature_id, version, content) VALUES (?, ?, ?)",
                [feature_id, version, content],
            )
        elif stored != content:
            raise AlreadyExists(
                f"version {version} of feature {feature_id!r} already has a different manifest "
                "stored; a published version never changes"
            )

    # -- requests -----------------------------------------------------------

    def remember_request(
        self, request_id: str, rpc: str, state: FeatureState, why_unchanged: str, at: datetime
    ) -> None:
        """Keep what a request that changed nothing answered at `at` (the feature as it was,
        and why); the first one kept wins."""
        if not request_id:
            raise ValueError("request_id is empty")
        with self._write():
            self._execute(
                "INSERT INTO requests (request_id, rpc, result, global_sequence, answered_at) "
                "VALUES (?, ?, ?, (SELECT CAST(value AS INTEGER) FROM meta "
                "WHERE key = 'global_sequence'), ?) ON CONFLICT (request_id) DO NOTHING",
                [request_id, rpc, _result_json(state, None, why_unchanged), _text(at)],
            )

    def forget_requests(self, answered_before: datetime) -> int:
        """Forget the request ids answered before `answered_before` (a retry comes within
        seconds; kept far longer); returns how many. The audit trail keeps each change's
        request_id regardless."""
        with self._write():
            cursor = self._execute(
                "DELETE FROM requests WHERE answered_at < ?", [_text(answered_before)]
            )
        return int(cursor.rowcount)

    # -- beacons ------------------------------------------------------------

    def add_beacon_counts(self, rows: Sequence[tuple[str, str, datetime, Sequence[int]]]) -> None:
        """Add (feature, version, minute, (loads, entry_errors, load_failures, refusals,
        batches)) to what is kept, in one transaction (not synced: counts are statistics)."""
        with self._write():
            self._engine.executemany(
                "INSERT INTO beacon_counts VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (feature_id, version, minute) DO UPDATE SET "
                "loads = beacon_counts.loads + excluded.loads, "
                "entry_errors = beacon_counts.entry_errors + excluded.entry_errors, "
                "load_failures = beacon_counts.load_failures + excluded.load_failures, "
                "refusals = beacon_counts.refusals + excluded.refusals, "
                "batches = beacon_counts.batches + excluded.batches",
                [(f, v, _text(m), *counts) for f, v, m, counts in rows],
            )

    def beacon_counts(self, feature_id: str, since: datetime) -> dict[str, tuple[int, ...]]:
        """Per version of `feature_id`, the sums since the minute of `since`: (loads,
        entry_errors, load_failures, refusals, batches)."""
        minute = since.astimezone(UTC).replace(second=0, microsecond=0)
        rows = self._execute(
            "SELECT version, sum(loads), sum(entry_errors), sum(load_failures), "
            "sum(refusals), sum(batches) FROM beacon_counts "
            "WHERE feature_id = ? AND minute >= ? GROUP BY version",
            [feature_id, _text(minute)],
        ).rows
        return {str(row[0]): tuple(int(n) for n in row[1:]) for row in rows}

    # -- events (webhooks) --------------------------------------------------

    def _put_event(self, kind: str, at: datetime, feature_id: str, body: dict[str, Any]) -> None:
        """One event inside the open write transaction."""
        self._execute(
            "INSERT INTO events (kind, at, feature_id, body) VALUES (?, ?, ?, ?)",
            [kind, _text(at), feature_id, json.dumps(body, separators=(",", ":"), sort_keys=True)],
        )

    def add_event(self, kind: str, at: datetime, feature_id: str, body: dict[str, Any]) -> None:
        """Keep an event for the webhooks (an analysis verdict, say) in a transaction of its
        own."""
        with self._write():
            self._put_event(kind, at, feature_id, body)

    def events_after(self, after: int, limit: int = 100) -> list[Event]:
        """The events after id `after`, oldest first."""
        _check_limit(limit)
        rows = self._execute(
            "SELECT id, kind, at, feature_id, body FROM events WHERE id > ? ORDER BY id LIMIT ?",
            [after, limit],
        ).rows
        return [
            Event(int(r[0]), str(r[1]), _moment(r[2]), str(r[3]), json.loads(r[4])) for r in rows
        ]

    def last_event_id(self) -> int:
        return int(self._value("SELECT coalesce(max(id), 0) FROM events") or 0)

    def webhook_cursor(self, name: str) -> int | None:
        """How far webhook `name` delivered (the last event id), None before its first start."""
        value = self._value("SELECT delivered FROM webhook_cursors WHERE name = ?", [name])
        return None if value is None else int(value)

    def set_webhook_cursor(self, name: str, delivered: int) -> None:
        with self._write():
            self._execute(
                "INSERT INTO webhook_cursors AS c (name, delivered) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET delivered = CASE "
                "WHEN excluded.delivered > c.delivered THEN excluded.delivered "
                "ELSE c.delivered END",
                [name, delivered],
            )

    # -- approvals ----------------------------------------------------------

    def add_approval(
        self,
        feature_id: str,
        rpc: str,
        command: Command,
        meta: ChangeMeta,
        what: str,
        *,
        manifest: bytes | None,
        now: datetime,
        expires_at: datetime,
    ) -> ApprovalRequest:
        """Keep a change for approval; the same change asked again by the same principal while
        its request waits is that request, not another."""
        asked = command_json(command)
        with self._write():
            row = self._execute(
                "SELECT id FROM approvals WHERE feature_id = ? AND rpc = ? AND command = ? "
                "AND requested_by = ? AND expected_sequence IS NOT DISTINCT FROM ? "
                "AND approved_at IS NULL AND expires_at > ? ORDER BY id DESC LIMIT 1",
                [feature_id, rpc, asked, meta.principal, meta.expected_sequence, _text(now)],
            ).first()
            if row is not None:
                approval_id = int(row[0])
            else:
                cursor = self._execute(
                    "INSERT INTO approvals (feature_id, rpc, command, manifest, what, actor, "
                    "reason, ticket, expected_sequence, requested_by, requested_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    [
                        feature_id,
                        rpc,
                        asked,
                        manifest,
                        what,
                        meta.actor,
                        meta.reason,
                        meta.ticket,
                        meta.expected_sequence,
                        meta.principal,
                        _text(now),
                        _text(expires_at),
                    ],
                )
                approval_id = int(cursor.value())
                self._put_event(
                    "approval",
                    now,
                    feature_id,
                    {
                        "state": "pending",
                        "approval_id": approval_id,
                        "what": what,
                        "requested_by": meta.principal,
                        "actor": meta.actor,
                        "reason": meta.reason,
                        "ticket": meta.ticket,
                        "expires_at": _text(expires_at),
                    },
                )
        found = self.approval(approval_id)
        assert found is not None
        return found

    def approval(self, approval_id: int) -> ApprovalRequest | None:
        rows = self._rows("SELECT * FROM approvals WHERE id = ?", [approval_id])
        return _approval_from_row(rows[0]) if rows else None

    def list_approvals(self, feature_id: str = "", limit: int = 100) -> list[ApprovalRequest]:
        """The newest `limit` approval requests (of `feature_id`, when given), newest first."""
        _check_limit(limit)
        where, params = ("WHERE feature_id = ?", [feature_id]) if feature_id else ("", [])
        rows = self._rows(
            f"SELECT * FROM approvals {where} ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [_approval_from_row(row) for row in rows]

    def mark_approved(
        self, approval_id: int, approver: str, at: datetime, transition_id: int | None
    ) -> ApprovalRequest:
        with self._write():
            cursor = self._execute(
                "UPDATE approvals SET approved_by = ?, approved_at = ?, transition_id = ? "
                "WHERE id = ? AND approved_at IS NULL",
                [approver, _text(at), transition_id, approval_id],
            )
            if cursor.rowcount:
                feature = self._value(
                    "SELECT feature_id FROM approvals WHERE id = ?", [approval_id]
                )
                self._put_event(
                    "approval",
                    at,
                    str(feature),
                    {
                        "state": "approved",
                        "approval_id": approval_id,
                        "approved_by": approver,
                        "transition_id": transition_id,
                    },
                )
        found = self.approval(approval_id)
        assert found is not None
        return found

    def answered(self, request_id: str) -> Answered | None:
        """What the request with `request_id` did, or None when it was never answered."""
        row = self._execute(
            "SELECT rpc, result FROM requests WHERE request_id = ?", [request_id]
        ).first()
        if row is None:
            return None
        result = json.loads(row[1])
        transition: StoredTransition | None = None
        if result.get("transition") is not None:
            rows = self._rows("SELECT * FROM transitions WHERE id = ?", [result["transition"]])
            transition = _transition_from_row(rows[0]) if rows else None
        state = result.get("state")
        return Answered(
            rpc=str(row[0]),
            state=None if state is None else _state_from_json(state),
            transition=transition,
            why_unchanged=str(result.get("why", "")),
        )

    # -- audit trail ----------------------------------------------------------

    def list_transitions(
        self, *, feature_id: str = "", before_id: int = 0, limit: int = 100
    ) -> list[StoredTransition]:
        """Up to `limit` transitions, newest first, with id < `before_id` (0: from the newest).

        With `feature_id`, only that feature's. Raises ValueError for a limit below 1.
        """
        _check_limit(limit)
        clauses: list[str] = []
        params: list[Any] = []
        if feature_id:
            clauses.append("feature_id = ?")
            params.append(feature_id)
        if before_id > 0:
            clauses.append("id < ?")
            params.append(before_id)
        where = f"WHERE {' AND '.join(clauses)} " if clauses else ""
        rows = self._rows(
            f"SELECT * FROM transitions {where}ORDER BY id DESC LIMIT ?", [*params, limit]
        )
        return [_transition_from_row(row) for row in rows]

    # -- following other processes on the database ----------------------------

    def heads(self) -> tuple[int, int]:
        """The global sequence and remote-index.json's sequence (0: none): one query that says
        whether anything was committed since they were last read."""
        row = self._execute(
            "SELECT (SELECT value FROM meta WHERE key = 'global_sequence'), "
            "(SELECT sequence FROM files WHERE path = ?)",
            [REMOTE_INDEX_NAME],
        ).first()
        assert row is not None
        return int(row[0] or 0), int(row[1] or 0)

    def changes_after(
        self, after: int, limit: int = 1000
    ) -> list[tuple[StoredTransition, FeatureState | None]]:
        """The changes committed after global sequence `after`, oldest first, each with the
        feature's state afterwards (None for a change kept before schema 12)."""
        _check_limit(limit)
        rows = self._rows(
            "SELECT * FROM transitions WHERE id > ? ORDER BY id LIMIT ?", [after, limit]
        )
        return [
            (
                _transition_from_row(row),
                _state_from_json(json.loads(row["state"])) if row.get("state") else None,
            )
            for row in rows
        ]

    def snapshot(self) -> contextlib.AbstractContextManager[None]:
        """Reads in this block (of this thread) see one moment of the database."""
        return self._read()

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Held by one process on the database at a time (the one that signs and writes the
        origin); waits for it. See Engine.exclusive."""
        return self._engine.exclusive()

    def holds_exclusive(self) -> bool:
        """Inside `exclusive`: whether it is still held (Engine.holds_exclusive)."""
        return self._engine.holds_exclusive()

    def lead(self) -> bool:
        """Whether this process runs the one-per-cluster jobs (Engine.lead)."""
        return self._engine.lead()

    def listener(self) -> Listener:
        """Something to wait on until another process commits (Engine.listener)."""
        return self._engine.listener()


# -- conversions --------------------------------------------------------------


# Every write re-encodes each version's published_at and every read decodes
# them: the same few thousand values, so both conversions are memoised.
# Aware datetimes that are equal are the same instant, so they share a text.
@functools.lru_cache(maxsize=1 << 16)
def _text(moment: datetime) -> str:
    """ISO-8601 UTC with microseconds: sorts as text, and reads back equal."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: the store keeps aware UTC times")
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


@functools.lru_cache(maxsize=1 << 16)
def _moment(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def _optional_moment(text: str | None) -> datetime | None:
    return None if text is None else _moment(text)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


_FEATURE_COLUMNS = (
    "feature_id, sequence, stable, canary_version, canary_soak_started_at, "
    "canary_soak_seconds, updated_at, updated_by, updated_by_principal, canary_rollout"
)


def _feature_from_tuple(row: Sequence[Any], versions: Sequence[PublishedVersion]) -> FeatureState:
    """A feature from a row whose first columns are `_FEATURE_COLUMNS`, in that order."""
    names = (
        "feature_id",
        "sequence",
        "stable",
        "canary_version",
        "canary_soak_started_at",
        "canary_soak_seconds",
        "updated_at",
        "updated_by",
        "updated_by_principal",
        "canary_rollout",
    )
    return _feature_from_row(dict(zip(names, row, strict=False)), versions)


def _feature_from_row(row: dict[str, Any], versions: Sequence[PublishedVersion]) -> FeatureState:
    canary = None
    if row["canary_version"] is not None:
        canary = _canary(
            str(row["canary_version"]),
            _moment(row["canary_soak_started_at"]),
            int(row["canary_soak_seconds"]),
            json.loads(row["canary_rollout"]) if row.get("canary_rollout") else None,
        )
    return FeatureState(
        feature_id=str(row["feature_id"]),
        sequence=int(row["sequence"]),
        stable=_optional_str(row["stable"]),
        canary=canary,
        versions=tuple(versions),
        updated_at=_optional_moment(row["updated_at"]),
        updated_by=str(row["updated_by"]),
        updated_by_principal=str(row.get("updated_by_principal") or ""),
    )


@dataclass(frozen=True)
class Event:
    """Something webhooks tell: a change, an approval request or approval, a verdict."""

    id: int
    kind: str
    at: datetime
    feature_id: str
    body: dict[str, Any]


def _change_event(transition_id: int, record: AuditRecord) -> dict[str, Any]:
    return {
        "transition_id": transition_id,
        "action": record.action.value,
        "sequence": record.sequence,
        "version": record.version,
        "from_stable": record.from_stable,
        "to_stable": record.to_stable,
        "from_canary": record.from_canary,
        "to_canary": record.to_canary,
        "actor": record.actor,
        "principal": record.principal,
        "reason": record.reason,
        "ticket": record.ticket,
        "detail": record.detail,
    }


def _approval_from_row(row: dict[str, Any]) -> ApprovalRequest:
    expected = row["expected_sequence"]
    manifest = row["manifest"]
    return ApprovalRequest(
        id=int(row["id"]),
        feature_id=str(row["feature_id"]),
        rpc=str(row["rpc"]),
        command=command_from_json(str(row["command"])),
        meta=ChangeMeta(
            actor=str(row["actor"]),
            reason=str(row["reason"]),
            ticket=str(row["ticket"]),
            expected_sequence=None if expected is None else int(expected),
            principal=str(row["requested_by"]),
        ),
        what=str(row["what"]),
        requested_at=_moment(row["requested_at"]),
        expires_at=_moment(row["expires_at"]),
        manifest=None if manifest is None else bytes(manifest),
        approved_by=str(row["approved_by"]),
        approved_at=_optional_moment(row["approved_at"]),
        transition_id=None if row["transition_id"] is None else int(row["transition_id"]),
    )


def _rollout(canary: Canary) -> dict[str, Any] | None:
    """A canary's weight and step plan as kept (in `features.canary_rollout` and in request
    results); None for weight 0 without a plan, as every canary was before weights."""
    if not canary.weight and not canary.steps and not canary.min_loads:
        return None
    return {
        "min_loads": canary.min_loads,
        "weight": canary.weight,
        "steps": list(canary.steps),
        "step_seconds": canary.step_seconds,
        "step_started_at": None
        if canary.step_started_at is None
        else _text(canary.step_started_at),
    }


def _rollout_json(canary: Canary | None) -> str | None:
    rollout = None if canary is None else _rollout(canary)
    return None if rollout is None else json.dumps(rollout, separators=(",", ":"))


def _canary(
    version: str, started: datetime, soak_seconds: int, rollout: dict[str, Any] | None
) -> Canary:
    if rollout is None:
        return Canary(version, started, soak_seconds)
    return Canary(
        version,
        started,
        soak_seconds,
        weight=int(rollout["weight"]),
        steps=tuple(int(step) for step in rollout["steps"]),
        step_seconds=int(rollout["step_seconds"]),
        step_started_at=_optional_moment(rollout["step_started_at"]),
        min_loads=int(rollout.get("min_loads", 0)),
    )


def _record_to_row(record: AuditRecord) -> dict[str, Any]:
    return {
        "feature_id": record.feature_id,
        "sequence": record.sequence,
        "action": record.action.value,
        "version": record.version,
        "from_stable": record.from_stable,
        "to_stable": record.to_stable,
        "from_canary": record.from_canary,
        "to_canary": record.to_canary,
        "actor": record.actor,
        "reason": record.reason,
        "ticket": record.ticket,
        "at": _text(record.at),
        "detail": record.detail,
        "principal": record.principal,
    }


def _transition_from_row(row: dict[str, Any]) -> StoredTransition:
    record = AuditRecord(
        feature_id=str(row["feature_id"]),
        sequence=int(row["sequence"]),
        action=Action(row["action"]),
        version=str(row["version"]),
        from_stable=_optional_str(row["from_stable"]),
        to_stable=_optional_str(row["to_stable"]),
        from_canary=_optional_str(row["from_canary"]),
        to_canary=_optional_str(row["to_canary"]),
        actor=str(row["actor"]),
        reason=str(row["reason"]),
        ticket=str(row["ticket"]),
        at=_moment(row["at"]),
        detail=str(row["detail"]),
        principal=str(row["principal"]),
    )
    return StoredTransition(
        id=int(row["id"]),
        record=record,
        global_sequence=int(row["id"]),
        request_id=str(row["request_id"]),
    )


def _file_to_row(file: SignedFile) -> dict[str, Any]:
    return {
        "path": file.path,
        "content": file.content,
        "sha256": file.sha256,
        "sequence": file.sequence,
    }


def _file_from_row(row: dict[str, Any]) -> SignedFile:
    return SignedFile(
        path=str(row["path"]),
        content=bytes(row["content"]),
        sha256=str(row["sha256"]),
        sequence=int(row["sequence"]),
    )


def _write_rank(path: str) -> int:
    """The order pins point: 0 roots, 1 manifests and the rest, 2 releases.json, 3 shards,
    4 remote-index.json (written last)."""
    if path == REMOTE_INDEX_NAME:
        return 4
    if path.startswith("index/"):
        return 3
    if PurePosixPath(path).name == RELEASES_NAME:
        return 2
    if path.startswith("roots/"):
        return 0
    return 1


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be 1 or more, got {limit}")


def _check_change(change: Change) -> None:
    """Refuse a change that contradicts itself (a bug in the caller), before any write."""
    state, record = change.state, change.record
    if state.sequence < 1:
        raise ValueError(f"state.sequence must be 1 or more, got {state.sequence}")
    if change.global_sequence < 1:
        raise ValueError(f"global_sequence must be 1 or more, got {change.global_sequence}")
    if (record.feature_id, record.sequence) != (state.feature_id, state.sequence):
        raise ValueError(
            f"the audit record is for {record.feature_id!r} sequence {record.sequence}, "
            f"the state for {state.feature_id!r} sequence {state.sequence}"
        )
    if change.manifest is not None and state.find(change.manifest[0]) is None:
        raise ValueError(f"manifest for version {change.manifest[0]!r}, which the state lacks")
    _check_files(change.files)


def _check_files(files: Sequence[SignedFile]) -> None:
    paths = [file.path for file in files]
    if len(set(paths)) != len(paths):
        raise ValueError(f"a path appears twice in the files: {sorted(paths)}")
    for file in files:
        validate_origin_path(file.path)
        if hashlib.sha256(file.content).hexdigest() != file.sha256:
            raise ValueError(f"{file.path}: sha256 {file.sha256} does not match its content")


def _result_json(state: FeatureState, transition_id: int | None, why: str) -> str:
    """A request's result as kept in `requests`: the feature, the transition's id, why."""
    return json.dumps(
        {"state": _state_to_json(state), "transition": transition_id, "why": why},
        separators=(",", ":"),
    )


def _state_to_json(state: FeatureState) -> dict[str, Any]:
    """A feature's state as kept in `requests` and `transitions` (`_state_from_json`)."""
    canary = state.canary
    return {
        "feature_id": state.feature_id,
        "sequence": state.sequence,
        "stable": state.stable,
        "canary": None
        if canary is None
        else [
            canary.version,
            _text(canary.soak_started_at),
            canary.soak_seconds,
            _rollout(canary),
        ],
        "versions": [
            [v.version, v.manifest_sha256, _text(v.published_at), v.was_stable]
            for v in state.versions
        ],
        "updated_at": None if state.updated_at is None else _text(state.updated_at),
        "updated_by": state.updated_by,
        "updated_by_principal": state.updated_by_principal,
    }


def _state_from_json(data: dict[str, Any]) -> FeatureState:
    canary = data["canary"]
    return FeatureState(
        feature_id=str(data["feature_id"]),
        sequence=int(data["sequence"]),
        stable=_optional_str(data["stable"]),
        canary=None
        if canary is None
        else _canary(  # results kept before weights have three members
            str(canary[0]), _moment(canary[1]), int(canary[2]), canary[3] if canary[3:] else None
        ),
        versions=tuple(
            PublishedVersion(
                version=str(v[0]),
                manifest_sha256=str(v[1]),
                published_at=_moment(v[2]),
                was_stable=bool(v[3]),
            )
            for v in data["versions"]
        ),
        updated_at=_optional_moment(data["updated_at"]),
        updated_by=str(data["updated_by"]),
        updated_by_principal=str(data.get("updated_by_principal", "")),
    )
