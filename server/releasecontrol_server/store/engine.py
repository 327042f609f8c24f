"""What the store needs of a database engine: transactions, statements, a few dialect words.

`Store` (store.py) writes its SQL once, with `?` placeholders, in what SQLite and
PostgreSQL both understand; an engine (sqlite.py, postgres.py) runs it. The words
that differ are asked of the engine (`any_of`). Every statement's rows are read
before `execute` returns (`Result`), so no cursor outlives its connection.

Transactions: `transaction(write=True)` is the only way to write, and writes are
serialised across every process using the database (SQLite's `BEGIN IMMEDIATE`;
on PostgreSQL a transaction-scoped advisory lock), so ids and sequences are
handed out, and committed, in order. Inside a transaction every statement of the
calling thread runs in it; outside one, each statement is its own.

Several processes on one database (replicas, PostgreSQL only) also need: the
`exclusive` lease around signing and writing the origin, `lead` for the jobs one
process runs for all, and `notify`/`listener` to hear each other's commits. On
SQLite (one server per file) these are trivial.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

RESTORE_ADVICE = (
    "restore it from a backup (`releasectl restore PATH`) or move it away to start an empty store"
)
"""How every refusal of a damaged or unusable database ends."""

__all__ = ["Engine", "Listener", "Result"]


@dataclass(frozen=True)
class Result:
    """A statement's rows (tuples, in column order; [] for a statement without rows) and how
    many rows it changed."""

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    rowcount: int = -1
    columns: tuple[str, ...] = ()

    def first(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None

    def value(self) -> Any:
        """The first column of the first row; None without rows."""
        return self.rows[0][0] if self.rows else None

    def dicts(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


class Engine(Protocol):
    dialect: str
    """Which engine, `sqlite` or `postgresql`: which migrations apply (schema.steps)."""
    where: str
    """The database, for messages: a path, or a URL without its password."""
    errors: tuple[type[BaseException], ...]
    """What the driver raises for a database it cannot use."""
    shared: bool
    """Whether other server processes may commit to it (replicas): only then is there
    anything to follow, to lead or to listen for."""

    def transaction(
        self, *, write: bool, durable: bool = True
    ) -> contextlib.AbstractContextManager[None]:
        """One transaction for the calling thread's statements: committed at the end, rolled
        back on an exception. `write`: serialised with every other writer. `durable=False`:
        a commit a power cut may lose (marks that only cause a rewrite)."""
        ...

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    def any_of(self, column: str, values: Sequence[Any]) -> tuple[str, Any]:
        """A condition "`column` is one of `values`" with one placeholder, and its parameter."""
        ...

    def tables(self) -> set[str]:
        """The tables the database (or its schema) holds."""
        ...

    def notify(self) -> None:
        """Inside a write transaction: wake every listener (`listener`) once it commits."""
        ...

    def listener(self) -> Listener:
        """A way to wait until another process commits."""
        ...

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        """Held by one process at a time, across every process on the database, waiting for
        it: whoever holds it signs and writes to the origin. Raises Unavailable when the
        database cannot be reached."""
        ...

    def holds_exclusive(self) -> bool:
        """Inside `exclusive`: whether it is still held (its connection alive), checked before
        writing to the origin."""
        ...

    def lead(self) -> bool:
        """Whether this process leads: runs the jobs only one process on the database should
        (canary steps, analysis, webhooks, re-signing, the origin check). Taken when free,
        kept while this process's session lives; asked again every second or so."""
        ...

    def checked(self) -> None:
        """Wait for the integrity check opening the database started (SQLite: on a thread of
        its own, so a start loads while it runs); raises ConfigError naming the damage."""
        ...

    def reader(self) -> Engine:
        """An engine for a background reader that must neither wait on nor hold up the writer:
        its own connection(s). Only reads work on it."""
        ...

    def close(self) -> None: ...


class Listener(Protocol):
    def wait(self, timeout: float) -> bool:
        """Block until another process commits (True; or, unsure, True too), or `timeout`
        seconds pass (False)."""
        ...

    def close(self) -> None: ...
