"""Persistence of the control plane: features, audit trail, signed files, outbox.

`Store` (store.py) is the same on both engines: SQLite (sqlite.py), the embedded
default, one file; PostgreSQL (postgres.py), shared by several replicas. Which one
is decided by where the database is (`open_store`); the schema of both is in
schema.py.
"""

from __future__ import annotations

from pathlib import Path

from releasecontrol_server.store.engine import Engine
from releasecontrol_server.store.location import is_postgres_url
from releasecontrol_server.store.schema import SCHEMA_VERSION
from releasecontrol_server.store.sqlite import SqliteEngine
from releasecontrol_server.store.store import (
    Answered,
    Change,
    Event,
    FileDigest,
    SignedFile,
    Store,
    StoredTransition,
)

__all__ = [
    "SCHEMA_VERSION",
    "Answered",
    "Change",
    "Event",
    "FileDigest",
    "SignedFile",
    "Store",
    "StoredTransition",
    "open_store",
]


def open_store(location: Path | str, *, wait_for_check: bool = True) -> Store:
    """The store at `location`: a PostgreSQL URL (postgresql://…), else a SQLite file path
    (created when missing). Raises ConfigError when it cannot be opened or used.

    `wait_for_check=False`: return while the integrity check still runs (a server loads
    meanwhile, and calls `Store.checked()` before it writes anything)."""
    engine: Engine
    if isinstance(location, str) and is_postgres_url(location):
        # Imported here: a server on SQLite never loads psycopg (store/location.py).
        from releasecontrol_server.store.postgres import PostgresEngine

        engine = PostgresEngine(location)
    else:
        engine = SqliteEngine(Path(location))
    store = Store(engine)
    if wait_for_check:
        try:
            store.checked()
        except BaseException:
            store.close()
            raise
    return store
