"""doctor's `database` item: reachable, a schema this release knows, a supported PostgreSQL
with connections enough for its replicas, and the database whose index the origin serves."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from controller_kit import KEY
from test_store import publish

from bench._postgres import PostgresServer
from releasecontrol.index import sign
from releasecontrol.published import Published
from releasecontrol_server import doctor
from releasecontrol_server.config import Config, load_config
from releasecontrol_server.doctor import PublishedRead, check_database
from releasecontrol_server.store import SCHEMA_VERSION, open_store
from releasecontrol_server.store.inspect import Inspection, inspect_database


def config_for(tmp_path: Path, location: str) -> Config:
    environ = {"RELEASECONTROL_HOME": str(tmp_path / "home")}
    if location.startswith("postgresql://"):
        environ["RELEASECONTROL_DATABASE_URL"] = location
    else:
        environ["RELEASECONTROL_DATABASE_PATH"] = location
    return load_config(environ, cwd=tmp_path)


def origin_at(sequence: int | None) -> PublishedRead:
    published = Published("origin", sequence is not None, remote_sequence=sequence)
    return PublishedRead("origin", published)


def test_an_empty_database_warns_that_the_server_makes_it(
    tmp_path: Path, store_location: str
) -> None:
    result = check_database(config_for(tmp_path, store_location), origin_at(None))
    assert result.status == "WARN" and "brings it to schema" in result.reason
    assert "migrate" in result.fix


def test_a_migrated_database_passes_naming_engine_and_schema(
    tmp_path: Path, store_location: str
) -> None:
    with open_store(store_location) as store:
        publish(store, "checkout", "1.0.0")
        result = check_database(config_for(tmp_path, store_location), origin_at(1))
        assert result.status == "PASS", result
        assert f"schema {SCHEMA_VERSION}" in result.reason
        assert store.dialect in result.reason
        if store.dialect == "postgresql":  # the store above is connected: one replica
            assert f"1 replica connected ({socket.gethostname()} {os.getpid()})" in result.reason


def test_a_newer_schema_fails(tmp_path: Path, store_location: str) -> None:
    with open_store(store_location) as store:
        store.engine.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    result = check_database(config_for(tmp_path, store_location), origin_at(None))
    assert result.status == "FAIL" and "schema version 99" in result.reason


def test_an_origin_ahead_of_the_database_fails_as_another_database_or_a_restore(
    tmp_path: Path, store_location: str
) -> None:
    with open_store(store_location) as store:
        publish(store, "checkout", "1.0.0")
        top = sign({"sequence": 1}, [KEY]).to_bytes()  # only its sequence is compared
        store.engine.execute("UPDATE files SET content = ? WHERE path = 'remote-index.json'", [top])
    result = check_database(config_for(tmp_path, store_location), origin_at(7))
    assert result.status == "FAIL"
    assert "sequence 7, above this database's 1" in result.reason
    assert "origin rebuild" in result.fix


def test_an_unreachable_database_fails_naming_the_setting(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    url = f"postgresql://rc:pw@127.0.0.1:{postgres.port + 1}/releasecontrol"
    result = check_database(config_for(tmp_path, url), origin_at(None))
    assert result.status == "FAIL"
    assert "cannot connect" in result.reason and "RELEASECONTROL_DATABASE_URL" in result.reason
    assert "pw" not in result.reason


def test_too_few_connections_for_the_replicas_fails(
    tmp_path: Path, postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.new_database()
    with open_store(url):
        monkeypatch.setattr(doctor, "inspect_database", _with_connection_limit(10))
        result = check_database(config_for(tmp_path, url), origin_at(None))
    assert result.status == "FAIL"
    assert "open 10 connections" in result.reason and "max_connections" in result.fix


def _with_connection_limit(limit: int) -> Callable[[Path | str], Inspection]:
    """inspect_database, as if PostgreSQL allowed only `limit` connections."""

    def inspect(location: Path | str) -> Inspection:
        return dataclasses.replace(inspect_database(location), connection_limit=limit)

    return inspect
