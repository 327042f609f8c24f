"""The embedded engine: one SQLite file in WAL mode, through sqlite-utils.

One connection in autocommit mode: every transaction is opened explicitly
(`BEGIN IMMEDIATE` for writes, so a second process waits for the lock instead of
failing mid-transaction). Calls are serialised by a lock, so the store may be
used from worker threads; a background reader opens a read-only connection of
its own (`reader`), which WAL lets read while the writer commits.

Opening refuses, with one sentence, what cannot be ReleaseControl's database:
a 0-byte file (something truncated it), a file that is not SQLite, a damaged
one (`PRAGMA quick_check`). The check reads the whole file (0.9 s at 10,000 features,
650 MB), so it runs on a connection and a thread of its own while the server loads;
`checked()` waits for it, before anything is written.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from releasecontrol.errors import ConfigError
from releasecontrol_server.store.engine import RESTORE_ADVICE, Listener, Result

__all__ = ["SqliteEngine", "check_database_file", "read_only_uri"]

BUSY_TIMEOUT_MS = 10_000
WAL_CHECKPOINT_PAGES = 16_384
CACHE_KIB = 32_768


class SqliteEngine:
    """The database file at `path` (created when missing)."""

    dialect = "sqlite"
    errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)
    shared = False  # one server per file: its state directory is locked

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        """Raises ConfigError when the file cannot be opened, or is not a sound SQLite file."""
        self.path = Path(path)
        self.where = str(self.path)
        self._lock = threading.RLock()
        if not read_only:
            check_database_file(self.path)
        try:
            conn = sqlite3.connect(
                read_only_uri(self.path) if read_only else self.path,
                uri=read_only,
                timeout=BUSY_TIMEOUT_MS / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise ConfigError(
                f"cannot open the database {self.path}: {exc}; "
                "check that its folder exists and is writable"
            ) from exc
        self._db = Database(conn, recursive_triggers=False, execute_plugins=False)
        self._depth = 0
        self._integrity: Future[None] = Future()
        self._integrity.set_result(None)  # a reader: its writer checked the file
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if read_only:
                return
            self._db.enable_wal()
            # FULL: a commit that returned survives power loss, not only a crash.
            self._db.execute("PRAGMA synchronous = FULL")
            # Checkpoint every 64 MB of WAL rather than SQLite's 4 MB: the index files are
            # rewritten on every commit, and a checkpoint copies only the newest version of
            # each page, so most versions are never copied.
            self._db.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
            # 32 MB of page cache rather than 2 MB: at 10,000 features (200 MB) a change's
            # B-tree pages (features, versions, transitions, files) stay in memory.
            self._db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._integrity = _check_integrity(self.path)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise damaged(self.path, exc) from exc
        except BaseException:
            conn.close()
            raise

    def notify(self) -> None:
        """Nothing: one server process per file (its state directory is locked)."""

    def listener(self) -> Listener:
        raise NotImplementedError("a SQLite store is not shared: no other process commits to it")

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def holds_exclusive(self) -> bool:
        return True

    def lead(self) -> bool:
        return True  # the only server on the file

    def checked(self) -> None:
        self._integrity.result()

    def reader(self) -> SqliteEngine:
        return SqliteEngine(self.path, read_only=True)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def transaction(self, *, write: bool, durable: bool = True) -> Iterator[None]:
        with self._lock:
            if self._depth:  # already in one (the caller's): part of it
                yield
                return
            if not durable:
                self._db.execute("PRAGMA synchronous = NORMAL")
            try:
                self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                self._depth += 1
                try:
                    yield
                except BaseException:
                    self._db.conn.rollback()
                    raise
                finally:
                    self._depth -= 1
                if write:
                    try:
                        self._db.execute("COMMIT")
                    except BaseException:
                        self._db.conn.rollback()
                        raise
                else:
                    self._db.conn.rollback()
            finally:
                if not durable:
                    self._db.execute("PRAGMA synchronous = FULL")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        with self._lock:
            cursor = self._db.conn.execute(sql, list(params))
            rows = cursor.fetchall() if cursor.description is not None else []
            columns = tuple(d[0] for d in cursor.description or ())
            return Result(rows, cursor.rowcount, columns)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self._lock:
            self._db.conn.executemany(sql, rows)

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        return f"{column} IN (SELECT value FROM json_each(?))", json.dumps(list(values))

    def tables(self) -> set[str]:
        rows = self.execute("SELECT name FROM sqlite_master WHERE type = 'table'").rows
        return {str(row[0]) for row in rows}

    def pragma(self, name: str) -> Any:
        """A PRAGMA's value (the tests check how the file is kept)."""
        return self.execute(f"PRAGMA {name}").value()


def _check_integrity(path: Path) -> Future[None]:
    """SQLite's quick_check (every page, index and constraint it can check without
    cross-checking indexes against tables), on a read-only connection and a thread of its
    own: a damaged file stops the start with a sentence, never with a traceback halfway
    through serving. The future holds None, or the ConfigError to raise."""
    outcome: Future[None] = Future()

    def check() -> None:
        try:
            connection = sqlite3.connect(read_only_uri(path), uri=True, check_same_thread=False)
            try:
                problems = [
                    " ".join(str(row[0]).replace("*** in database main ***", "").split())
                    for row in connection.execute("PRAGMA quick_check(3)")
                ]
            finally:
                connection.close()
        except sqlite3.DatabaseError as exc:
            outcome.set_exception(damaged(path, exc))
        except BaseException as exc:  # handed to whoever waits for it
            outcome.set_exception(exc)
        else:
            if problems == ["ok"]:
                outcome.set_result(None)
            else:
                outcome.set_exception(
                    ConfigError(
                        f"the database {path} is damaged ({'; '.join(problems)}); {RESTORE_ADVICE}"
                    )
                )

    threading.Thread(target=check, name="sqlite-quick-check", daemon=True).start()
    return outcome


def damaged(path: Path, exc: BaseException) -> ConfigError:
    return ConfigError(f"cannot use the database {path}: {exc}; {RESTORE_ADVICE}")


def read_only_uri(path: Path) -> str:
    """The URI that opens `path` read-only (`sqlite3.connect(..., uri=True)`), its
    characters escaped: in `file:{path}?mode=ro` a '#' or '?' in a folder's name would
    end the file name there."""
    return f"{Path(path).absolute().as_uri()}?mode=ro"


_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_database_file(path: Path) -> None:
    """Refuse, with one sentence, a database file that cannot be ReleaseControl's: empty
    (a 0-byte file is not an empty store: something truncated it), or not SQLite at all.
    A missing file is fine: it becomes a new, empty store."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except FileNotFoundError:
        return
    except IsADirectoryError:
        raise ConfigError(f"the database path {path} is a folder; point it at a file") from None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the database {path} ({exc.strerror or exc}); check its permissions"
        ) from None
    if not head:
        raise ConfigError(
            f"the database {path} is empty (0 bytes): it was truncated, and starting on it "
            "would serve an empty status; restore it from a backup (`releasectl restore "
            "PATH`), or delete it to start an empty store on purpose"
        )
    if head != _SQLITE_MAGIC:
        raise ConfigError(
            f"the database {path} is not a SQLite file (it starts with {head[:8]!r}); point "
            "database_path at the ReleaseControl database, or restore it from a backup"
        )
