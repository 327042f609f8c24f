"""Fixtures every test folder may use: a PostgreSQL server of the tests' own, and a store
location on either engine (the store suite runs on both)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `bench` (which holds the PostgreSQL starter the benchmarks use too) lives at the top of the
# repository, beside `tests`, and is not installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._postgres import PostgresServer, running_postgres

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
