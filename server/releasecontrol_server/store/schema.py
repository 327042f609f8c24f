"""The store's schema on both engines, and how a database reaches it: one place.

Schema versions count the same on both engines: a database of version N holds the same
tables, columns and meanings on either, so the store's code (store.py) is the same.

- SQLite, the embedded default, has a migration per version since the first
  (`SQLITE_MIGRATIONS[n - 1]` takes version n - 1 to n).
- PostgreSQL support starts at version 11: an empty PostgreSQL database is created
  at `POSTGRES_BASELINE_VERSION` in one step, and later versions append a migration
  to both lists (`POSTGRES_MIGRATIONS[v]` takes v - 1 to v).

`steps(dialect, current)` is what `Store` runs at start (or `releasecontrol-server
migrate`), inside one write transaction, after refusing a database of a newer version.
"""

from __future__ import annotations

SCHEMA_VERSION = 12
"""The version this code writes; a database of a higher one is refused."""

META_TABLE = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
"""Where the version is kept (with the global sequence), on both engines."""

# 12 (both engines): each change's feature state afterwards (JSON, as `requests` keeps it),
# so the change log alone tells what every change did: replicas follow one another by it
# (the watch feed of a replica shows changes another one committed). NULL for older rows.
_V12 = ("ALTER TABLE transitions ADD COLUMN state TEXT",)

# SQLite: one tuple of statements per schema version; SQLITE_MIGRATIONS[n - 1] takes the
# schema from version n - 1 to n. Append, never edit a released entry.
SQLITE_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE features (
            feature_id TEXT PRIMARY KEY,
            sequence INTEGER NOT NULL CHECK (sequence >= 1),
            stable TEXT,
            canary_version TEXT,
            canary_soak_started_at TEXT,
            canary_soak_seconds INTEGER,
            updated_at TEXT,
            updated_by TEXT NOT NULL,
            CHECK ((canary_version IS NULL) = (canary_soak_started_at IS NULL))
        )
        """,
        """
        CREATE TABLE versions (
            feature_id TEXT NOT NULL REFERENCES features (feature_id),
            version TEXT NOT NULL,
            position INTEGER NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            published_at TEXT NOT NULL,
            was_stable INTEGER NOT NULL,
            PRIMARY KEY (feature_id, version)
        ) WITHOUT ROWID
        """,
        """
        CREATE TABLE manifests (
            feature_id TEXT NOT NULL,
            version TEXT NOT NULL,
            content BLOB NOT NULL,
            PRIMARY KEY (feature_id, version),
            FOREIGN KEY (feature_id, version) REFERENCES versions (feature_id, version)
        )
        """,
        """
        CREATE TABLE transitions (
            id INTEGER PRIMARY KEY,
            feature_id TEXT NOT NULL REFERENCES features (feature_id),
            sequence INTEGER NOT NULL,
            action TEXT NOT NULL,
            version TEXT NOT NULL,
            from_stable TEXT,
            to_stable TEXT,
            from_canary TEXT,
            to_canary TEXT,
            actor TEXT NOT NULL,
            reason TEXT NOT NULL,
            ticket TEXT NOT NULL,
            at TEXT NOT NULL,
            detail TEXT NOT NULL,
            request_id TEXT NOT NULL,
            UNIQUE (feature_id, sequence)
        )
        """,
        "CREATE INDEX transitions_by_feature ON transitions (feature_id, id)",
        """
        CREATE TABLE files (
            path TEXT PRIMARY KEY,
            content BLOB NOT NULL,
            sha256 TEXT NOT NULL,
            sequence INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE outbox (
            path TEXT PRIMARY KEY REFERENCES files (path),
            global_sequence INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE requests (
            request_id TEXT PRIMARY KEY,
            rpc TEXT NOT NULL,
            response BLOB NOT NULL,
            global_sequence INTEGER NOT NULL
        )
        """,
    ),
    # 2: remote-index.json may be recorded in meta (RemoteIndexRecord) instead of kept
    # in files; no table changes, but a server of version 1 would take the missing bytes
    # for an origin ahead of its store, so it must refuse this database.
    ("SELECT 1",),
    # 3: the authenticated caller beside the actor it gave ("" for older records).
    ("ALTER TABLE transitions ADD COLUMN principal TEXT NOT NULL DEFAULT ''",),
    # 4: host protocol v2 keeps its index files (shards, top level, roots) in files;
    # the v1 remote-index record goes.
    ("DELETE FROM meta WHERE key LIKE 'remote_index_%'",),
    # 5: a request keeps what it did (JSON of domain values), not the RPC's answer bytes.
    # An older row keeps its transition (found by request_id); the feature it answered
    # with was only in the wire bytes, so a retry of it answers with the feature as it is.
    (
        "CREATE TABLE requests_v5 (request_id TEXT PRIMARY KEY, rpc TEXT NOT NULL, "
        "result TEXT NOT NULL, global_sequence INTEGER NOT NULL)",
        "INSERT INTO requests_v5 (request_id, rpc, result, global_sequence) "
        "SELECT r.request_id, r.rpc, json_object('transition', (SELECT min(t.id) "
        "FROM transitions AS t WHERE t.request_id = r.request_id)), r.global_sequence "
        "FROM requests AS r",
        "DROP TABLE requests",
        "ALTER TABLE requests_v5 RENAME TO requests",
    ),
    # 6: the authenticated caller of a feature's last change beside the actor it gave
    # ("" for features last changed before).
    ("ALTER TABLE features ADD COLUMN updated_by_principal TEXT NOT NULL DEFAULT ''",),
    # 7: when each request was answered, so old request ids can be forgotten (rows kept
    # before count from the upgrade).
    (
        "ALTER TABLE requests ADD COLUMN answered_at TEXT NOT NULL DEFAULT ''",
        "UPDATE requests SET answered_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        "CREATE INDEX requests_by_answered_at ON requests (answered_at)",
    ),
    # 8: a canary's weight and step plan (JSON, `_rollout_json`); NULL: weight 0, no plan.
    ("ALTER TABLE features ADD COLUMN canary_rollout TEXT",),
    # 9: changes that wait for a second principal's approval (approvals.py).
    (
        """
        CREATE TABLE approvals (
            id INTEGER PRIMARY KEY,  -- never deleted, so never reused
            feature_id TEXT NOT NULL,
            rpc TEXT NOT NULL,
            command TEXT NOT NULL,
            manifest BLOB,
            what TEXT NOT NULL,
            actor TEXT NOT NULL,
            reason TEXT NOT NULL,
            ticket TEXT NOT NULL,
            expected_sequence INTEGER,
            requested_by TEXT NOT NULL,
            requested_at TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            approved_by TEXT NOT NULL DEFAULT '',
            approved_at TEXT,
            transition_id INTEGER
        )
        """,
        "CREATE INDEX approvals_by_feature ON approvals (feature_id, id)",
    ),
    # 10: what hosts reported of each feature version, per minute (beacons.py).
    (
        """
        CREATE TABLE beacon_counts (
            feature_id TEXT NOT NULL,
            version TEXT NOT NULL,
            minute TEXT NOT NULL,
            loads INTEGER NOT NULL,
            entry_errors INTEGER NOT NULL,
            load_failures INTEGER NOT NULL,
            refusals INTEGER NOT NULL,
            batches INTEGER NOT NULL,
            PRIMARY KEY (feature_id, version, minute)
        ) WITHOUT ROWID
        """,
    ),
    # 11: what webhooks tell (webhooks.py), written in the transaction of what happened, and
    # how far each webhook delivered.
    (
        """
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,  -- never deleted, so never reused
            kind TEXT NOT NULL,
            at TEXT NOT NULL,
            feature_id TEXT NOT NULL,
            body TEXT NOT NULL
        )
        """,
        "CREATE TABLE webhook_cursors (name TEXT PRIMARY KEY, delivered INTEGER NOT NULL)",
    ),
    _V12,
)

POSTGRES_BASELINE_VERSION = 11
# PostgreSQL: the whole schema at POSTGRES_BASELINE_VERSION, as SQLite has it after its
# migrations (BIGINT where SQLite's INTEGER holds 64 bits, BYTEA for BLOB, identity columns
# for SQLite's rowid aliases). Timestamps stay ISO-8601 text on both, so they sort alike.
POSTGRES_BASELINE: tuple[str, ...] = (
    """
    CREATE TABLE features (
        feature_id TEXT PRIMARY KEY,
        sequence BIGINT NOT NULL CHECK (sequence >= 1),
        stable TEXT,
        canary_version TEXT,
        canary_soak_started_at TEXT,
        canary_soak_seconds BIGINT,
        updated_at TEXT,
        updated_by TEXT NOT NULL,
        updated_by_principal TEXT NOT NULL DEFAULT '',
        canary_rollout TEXT,
        CHECK ((canary_version IS NULL) = (canary_soak_started_at IS NULL))
    )
    """,
    """
    CREATE TABLE versions (
        feature_id TEXT NOT NULL REFERENCES features (feature_id),
        version TEXT NOT NULL,
        position INTEGER NOT NULL,
        manifest_sha256 TEXT NOT NULL,
        published_at TEXT NOT NULL,
        was_stable INTEGER NOT NULL,
        PRIMARY KEY (feature_id, version)
    )
    """,
    """
    CREATE TABLE manifests (
        feature_id TEXT NOT NULL,
        version TEXT NOT NULL,
        content BYTEA NOT NULL,
        PRIMARY KEY (feature_id, version),
        FOREIGN KEY (feature_id, version) REFERENCES versions (feature_id, version)
    )
    """,
    """
    CREATE TABLE transitions (
        id BIGINT PRIMARY KEY,
        feature_id TEXT NOT NULL REFERENCES features (feature_id),
        sequence BIGINT NOT NULL,
        action TEXT NOT NULL,
        version TEXT NOT NULL,
        from_stable TEXT,
        to_stable TEXT,
        from_canary TEXT,
        to_canary TEXT,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        ticket TEXT NOT NULL,
        at TEXT NOT NULL,
        detail TEXT NOT NULL,
        request_id TEXT NOT NULL,
        principal TEXT NOT NULL DEFAULT '',
        UNIQUE (feature_id, sequence)
    )
    """,
    "CREATE INDEX transitions_by_feature ON transitions (feature_id, id)",
    """
    CREATE TABLE files (
        path TEXT PRIMARY KEY,
        content BYTEA NOT NULL,
        sha256 TEXT NOT NULL,
        sequence BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE outbox (
        path TEXT PRIMARY KEY REFERENCES files (path),
        global_sequence BIGINT NOT NULL
    )
    """,
    """
    CREATE TABLE requests (
        request_id TEXT PRIMARY KEY,
        rpc TEXT NOT NULL,
        result TEXT NOT NULL,
        global_sequence BIGINT NOT NULL,
        answered_at TEXT NOT NULL DEFAULT ''
    )
    """,
    "CREATE INDEX requests_by_answered_at ON requests (answered_at)",
    """
    CREATE TABLE approvals (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        feature_id TEXT NOT NULL,
        rpc TEXT NOT NULL,
        command TEXT NOT NULL,
        manifest BYTEA,
        what TEXT NOT NULL,
        actor TEXT NOT NULL,
        reason TEXT NOT NULL,
        ticket TEXT NOT NULL,
        expected_sequence BIGINT,
        requested_by TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        approved_by TEXT NOT NULL DEFAULT '',
        approved_at TEXT,
        transition_id BIGINT
    )
    """,
    "CREATE INDEX approvals_by_feature ON approvals (feature_id, id)",
    """
    CREATE TABLE beacon_counts (
        feature_id TEXT NOT NULL,
        version TEXT NOT NULL,
        minute TEXT NOT NULL,
        loads BIGINT NOT NULL,
        entry_errors BIGINT NOT NULL,
        load_failures BIGINT NOT NULL,
        refusals BIGINT NOT NULL,
        batches BIGINT NOT NULL,
        PRIMARY KEY (feature_id, version, minute)
    )
    """,
    """
    CREATE TABLE events (
        id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        at TEXT NOT NULL,
        feature_id TEXT NOT NULL,
        body TEXT NOT NULL
    )
    """,
    "CREATE TABLE webhook_cursors (name TEXT PRIMARY KEY, delivered BIGINT NOT NULL)",
)
# PostgreSQL: version -> the statements taking it from version - 1, after the baseline.
POSTGRES_MIGRATIONS: dict[int, tuple[str, ...]] = {12: _V12}

assert len(SQLITE_MIGRATIONS) == SCHEMA_VERSION
assert sorted(POSTGRES_MIGRATIONS) == list(range(POSTGRES_BASELINE_VERSION + 1, SCHEMA_VERSION + 1))


def steps(dialect: str, current: int) -> list[tuple[int, tuple[str, ...]]]:
    """The (version, statements) that take a `dialect` ("sqlite" or "postgresql") database of
    version `current` (0: empty) to SCHEMA_VERSION, in order. The caller refuses a database
    newer than SCHEMA_VERSION first. Raises ValueError for a PostgreSQL database between empty
    and the baseline (none was ever made)."""
    if dialect == "sqlite":
        return [(v, SQLITE_MIGRATIONS[v - 1]) for v in range(current + 1, SCHEMA_VERSION + 1)]
    if current == 0:
        out = [(POSTGRES_BASELINE_VERSION, POSTGRES_BASELINE)]
        current = POSTGRES_BASELINE_VERSION
    elif current < POSTGRES_BASELINE_VERSION:
        raise ValueError(f"a PostgreSQL store of schema version {current} was never made")
    else:
        out = []
    return out + [(v, POSTGRES_MIGRATIONS[v]) for v in range(current + 1, SCHEMA_VERSION + 1)]
