"""What `releasectl doctor` reads of a database, without changing it (no migration).

`inspect_database(location)` opens a SQLite file read-only, or connects to
PostgreSQL, and reports the engine's version, the schema version, for PostgreSQL
the connections it allows and the replicas connected now (each names itself in
`application_name`), and the remote-index.json the database last signed (compared
with the origin's by doctor: another database publishing to the same origin shows
there). Raises ConfigError, with the reason, when the database cannot be read.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from releasecontrol.errors import ConfigError
from releasecontrol_server.store.location import is_postgres_url, redact
from releasecontrol_server.store.postgres import APPLICATION_PREFIX, CONNECTIONS_PER_REPLICA
from releasecontrol_server.store.sqlite import check_database_file, read_only_uri

__all__ = ["Inspection", "inspect_database"]


@dataclass(frozen=True)
class Inspection:
    engine: str
    """"sqlite" or "postgresql"."""
    where: str
    server_version: str
    schema_version: int
    """0: an empty database (made at the first start)."""
    top: bytes | None = None
    """remote-index.json as the database last signed it (None before the first change)."""
    connection_limit: int = 0
    """PostgreSQL: connections ordinary roles may open (max_connections less the reserved)."""
    connections_used: int = 0
    replicas: tuple[str, ...] = field(default_factory=tuple)
    """PostgreSQL: the replicas connected now, by the name each gives (host and pid)."""
    per_replica: int = CONNECTIONS_PER_REPLICA


def inspect_database(location: Path | str) -> Inspection:
    if isinstance(location, str) and is_postgres_url(location):
        return _postgres(location)
    return _sqlite(Path(location))


def _sqlite(path: Path) -> Inspection:
    check_database_file(path)
    version = sqlite3.sqlite_version
    if not path.exists():
        return Inspection("sqlite", str(path), version, 0)
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            row = conn.execute("SELECT content FROM files WHERE path = 'remote-index.json'")
            top = row.fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"cannot read the database {path}: {exc}") from None
    return Inspection(
        "sqlite",
        str(path),
        version,
        int(meta.get("schema_version", 0)),
        bytes(top[0]) if top else None,
    )


def _postgres(url: str) -> Inspection:
    where = redact(url)
    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            tables = {
                str(r[0])
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema()"
                )
            }
            schema, top = 0, None
            if "meta" in tables:
                row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                schema = int(row[0]) if row else 0
            if "files" in tables:
                found = conn.execute(
                    "SELECT content FROM files WHERE path = 'remote-index.json'"
                ).fetchone()
                top = bytes(found[0]) if found else None
            limits = conn.execute(
                "SELECT current_setting('max_connections')::int "
                "- current_setting('superuser_reserved_connections')::int, "
                "(SELECT count(*) FROM pg_stat_activity)"
            ).fetchone()
            replicas = tuple(
                sorted(
                    {
                        str(r[0]).removeprefix(APPLICATION_PREFIX)
                        for r in conn.execute(
                            "SELECT application_name FROM pg_stat_activity "
                            "WHERE datname = current_database() AND application_name LIKE %s",
                            [APPLICATION_PREFIX + "%"],
                        )
                    }
                )
            )
    except psycopg.Error as exc:
        raise ConfigError(f"cannot connect to the database {where}: {exc}") from None
    assert limits is not None
    return Inspection(
        "postgresql",
        where,
        version,
        schema,
        top,
        connection_limit=int(limits[0]),
        connections_used=int(limits[1]),
        replicas=replicas,
    )
