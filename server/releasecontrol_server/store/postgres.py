"""The server engine: a PostgreSQL database shared by every replica, through psycopg 3's pool.

Chosen by `database_url = "postgresql://…"` (or RELEASECONTROL_DATABASE_URL). Each
transaction takes a connection from the pool for the calling thread; every
statement the thread runs until it ends runs on it. Writes take one
transaction-scoped advisory lock (`WRITE_LOCK`) first, so writers on every
replica commit one after another, as on SQLite: ids and sequences are handed out
in commit order, which the watch feed and the webhooks read by.

Three sessions of its own, outside the pool, hold what must last longer than a
transaction, and end with the process (PostgreSQL then releases their locks at once):

- the *lease* (`exclusive`, LEASE_LOCK): held around every piece of write-thread work,
  so one replica at a time signs and writes the origin; lock order is always the lease,
  then WRITE_LOCK;
- the *leader lock* (`lead`, LEADER_LOCK): tried every second, kept while held; its
  holder runs the one-per-cluster jobs (leader.py);
- the *listener* (`listener`): LISTEN on CHANNEL, which every commit NOTIFYs.

A lost connection is `Unavailable`, naming the database and what failed; the pool
checks each connection it hands out and opens new ones, and the sessions reconnect
on their next use, so a replica recovers by itself once the database is back.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from releasecontrol.errors import ConfigError, Unavailable
from releasecontrol_server.store.engine import Result
from releasecontrol_server.store.location import redact

log = logging.getLogger(__name__)

__all__ = ["LEADER_LOCK", "LEASE_LOCK", "WRITE_LOCK", "PostgresEngine"]

WRITE_LOCK = 0x5243_0001
"""The advisory lock key every write transaction holds (per database: "RC" 1)."""
LEASE_LOCK = 0x5243_0002
"""The advisory lock the replica that signs and writes to the origin holds, on a session of
its own (`exclusive`): released by PostgreSQL the moment that session ends, so a replica
that dies hands it on at once."""
LEADER_LOCK = 0x5243_0003
"""The advisory lock of the replica that runs the one-per-cluster jobs (`lead`)."""
CHANNEL = "releasecontrol_changes"
"""What every commit NOTIFYs and every replica LISTENs to (`listener`)."""
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3}
"""TCP keepalives on the lease and listen sessions: a database that vanished is noticed in
about 11 s rather than the system's two hours."""
CONNECT_SECONDS = 5.0
"""How long opening a connection, or waiting for one from the pool, may take."""
POOL_SIZE = 8
CONNECTIONS_PER_REPLICA = POOL_SIZE + 3
"""The pool, and the sessions of the lease, the leader lock and the listener."""
APPLICATION_PREFIX = "releasecontrol "
"""How every connection of a replica names itself (`application_name`: this, the host, the
pid), so `releasectl doctor` lists the replicas connected to a database."""


class PostgresEngine:
    """The database at `url`. Raises ConfigError when it cannot be reached or logged into."""

    dialect = "postgresql"
    errors: tuple[type[BaseException], ...] = (psycopg.Error,)
    shared = True

    def __init__(self, url: str, *, pool_size: int = POOL_SIZE) -> None:
        self.url = url
        self.where = redact(url)
        self._token = uuid.uuid4().hex  # this engine's commits, in NOTIFY payloads
        self._conninfo = make_conninfo(url, application_name=_application_name())
        try:  # one connection first, for a clear reason when it fails
            psycopg.connect(self._conninfo, connect_timeout=int(CONNECT_SECONDS)).close()
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot connect to the database {self.where}: {_reason(exc)}; check "
                "database_url (RELEASECONTROL_DATABASE_URL) and that PostgreSQL is running"
            ) from None
        self._pool = ConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=pool_size,
            timeout=CONNECT_SECONDS,
            kwargs={"connect_timeout": int(CONNECT_SECONDS)},
            # Each connection checked as it is handed out: after the database restarted, the
            # idle ones are dead, and the first statement must not fail on one of them.
            check=ConnectionPool.check_connection,
            open=True,
            name="releasecontrol",
        )
        self._owner = True
        self._local = threading.local()
        self._lease: psycopg.Connection[Any] | None = None
        self._lease_lock = threading.Lock()
        self._leader: psycopg.Connection[Any] | None = None
        self._leading = False

    def checked(self) -> None:
        """Nothing to wait for: PostgreSQL checks its own pages as it reads them."""

    def reader(self) -> PostgresEngine:
        """The same pool (PostgreSQL serves readers beside writers); closing it keeps the pool.
        Its own thread bindings and sessions: it takes no lease and never leads."""
        view = copy.copy(self)
        view._owner = False
        view._local = threading.local()
        view._lease, view._lease_lock = None, threading.Lock()
        view._leader, view._leading = None, False
        return view

    def close(self) -> None:
        for session in (self._lease, self._leader):
            if session is not None:
                session.close()
        if self._owner:
            self._pool.close()

    def notify(self) -> None:
        # The payload names this process, so its own listener does not wake for its commits.
        self.execute("SELECT pg_notify(?, ?)", [CHANNEL, self._token])

    def listener(self) -> _Listener:
        return _Listener(self)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._lease_lock, self._failures():
            if self._lease is None or self._lease.closed or self._lease.broken:
                self._lease = self._session()
            lease = self._lease
            try:
                lease.execute("SELECT pg_advisory_lock(%s)", [LEASE_LOCK])
            except psycopg.OperationalError:
                self._lease = None
                raise
        try:
            yield
        finally:
            with self._lease_lock:
                try:
                    lease.execute("SELECT pg_advisory_unlock(%s)", [LEASE_LOCK])
                except psycopg.Error:  # the session is gone, and the lock with it
                    self._lease = None
                    lease.close()

    def holds_exclusive(self) -> bool:
        with self._lease_lock:
            lease = self._lease
            if lease is None:
                return False
            try:
                lease.execute("SELECT 1")
            except psycopg.Error:
                self._lease = None
                return False
            return True

    def lead(self) -> bool:
        try:
            if self._leader is None or self._leader.closed or self._leader.broken:
                self._leader, self._leading = self._session(), False
            if self._leading:
                self._leader.execute("SELECT 1")  # the session, and the lock with it, lives
                return True
            row = self._leader.execute("SELECT pg_try_advisory_lock(%s)", [LEADER_LOCK]).fetchone()
            self._leading = bool(row and row[0])
        except psycopg.Error:
            if self._leader is not None:
                self._leader.close()
            self._leader, self._leading = None, False
        return self._leading

    def _session(self) -> psycopg.Connection[Any]:
        """A connection of its own, outside the pool, for a session lock or LISTEN."""
        conninfo = make_conninfo(self._conninfo, connect_timeout=int(CONNECT_SECONDS), **KEEPALIVE)
        return psycopg.connect(conninfo, autocommit=True)

    @contextlib.contextmanager
    def transaction(self, *, write: bool, durable: bool = True) -> Iterator[None]:
        if getattr(self._local, "conn", None) is not None:  # the caller's: part of it
            yield
            return
        with self._failures(), self._pool.connection() as conn, conn.transaction():
            if write:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [WRITE_LOCK])
                if not durable:
                    conn.execute("SET LOCAL synchronous_commit TO OFF")
            else:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._local.conn = conn
            try:
                yield
            finally:
                self._local.conn = None

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._failures(), self._connection() as conn:
            cursor = conn.execute(_native(sql), list(params))
            rows = cursor.fetchall() if cursor.description is not None else []
            columns = tuple(c.name for c in cursor.description or ())
            return Result(rows, cursor.rowcount, columns)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if not rows:
            return
        with self._failures(), self._connection() as conn, conn.cursor() as cursor:
            cursor.executemany(_native(sql), [list(row) for row in rows])

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        return f"{column} = ANY(?)", list(values)

    def tables(self) -> set[str]:
        rows = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).rows
        return {str(row[0]) for row in rows}

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            yield conn
            return
        with self._pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def _failures(self) -> Iterator[None]:
        """A database that cannot be reached as `Unavailable`, with the reason."""
        try:
            yield
        except PoolTimeout as exc:
            raise Unavailable(
                f"the database {self.where} cannot be reached ({exc}); changes wait until it is "
                "back: retry"
            ) from exc
        except psycopg.OperationalError as exc:
            raise Unavailable(
                f"the database {self.where} failed: {_reason(exc)}; retry when it is back"
            ) from exc


class _Listener:
    """LISTENs on a session of its own; after losing it, says True (a commit may have been
    missed) and listens again on a new one."""

    def __init__(self, engine: PostgresEngine) -> None:
        self._engine = engine
        self._conn: psycopg.Connection[Any] | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def wait(self, timeout: float) -> bool:
        if self._closed.is_set():
            return False
        try:
            if self._conn is None:
                conn = self._engine._session()
                with self._lock:
                    if self._closed.is_set():  # closed while connecting
                        conn.close()
                        return False
                    self._conn = conn
                conn.execute(f"LISTEN {CHANNEL}")
                return True  # commits before the LISTEN were not heard
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                for notice in self._conn.notifies(timeout=left, stop_after=1):
                    if notice.payload != self._engine._token:  # another engine committed
                        return True
            return False
        except psycopg.Error as exc:
            if self._closed.is_set():
                return False
            log.warning("listening to %s failed (%s); listening again", self._engine.where, exc)
            self.close_connection()
            self._closed.wait(min(timeout, 1.0))
            return True

    def close_connection(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def close(self) -> None:
        with self._lock:
            self._closed.set()
        self.close_connection()


def _application_name() -> str:
    return f"{APPLICATION_PREFIX}{socket.gethostname()} {os.getpid()}"[:63]


@functools.lru_cache(maxsize=512)
def _native(sql: str) -> str:
    """The store's `?` placeholders as psycopg's `%s` (a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def _reason(exc: BaseException) -> str:
    """The first line of what PostgreSQL or libpq said."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
