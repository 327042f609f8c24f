"""Fixtures every test folder may use: a PostgreSQL server of the tests' own, and a store
location on either engine (the store suite runs on both)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_kit import PostgresServer, running_postgres

ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per test process (each xdist worker starts its own)."""
    with running_postgres() as server:
        yield server


@pytest.fixture(params=ENGINES)
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a new, empty store is: a SQLite file path, or the URL of a new PostgreSQL
    database. Tests that take it run once on each engine."""
    if request.param == "sqlite":
        return str(tmp_path / "releasecontrol.db")
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
