"""The PostgreSQL engine: chosen by database_url, migrated by `releasecontrol-server migrate`,
refusing what it cannot use with one line, and recovering by itself when the database comes
back. (What both engines share is tested once, on each, in test_store.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench._postgres import PostgresServer, running_postgres
from releasecontrol.errors import ConfigError, Unavailable
from releasecontrol_server.config import load_config
from releasecontrol_server.store import SCHEMA_VERSION, open_store
from releasectl.launcher import LocalServer


def server_command(tmp_path: Path, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "releasecontrol_server.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "RELEASECONTROL_HOME": str(tmp_path / "home"),
            "RELEASECONTROL_DATABASE_URL": url,
        },
    )


class TestDatabaseUrl:
    def test_the_url_chooses_postgresql_and_the_path_stays_the_default(
        self, tmp_path: Path
    ) -> None:
        """Unset, the store is the SQLite file; set, the URL, which is never shown in full."""
        assert load_config({}, cwd=tmp_path).database == tmp_path / ".releasecontrol" / (
            "releasecontrol.db"
        )
        url = "postgresql://rc:s3cret@db.internal:5432/releasecontrol"
        config = load_config({"RELEASECONTROL_DATABASE_URL": url}, cwd=tmp_path)
        assert config.database == url
        assert "s3cret" not in repr(config)

    @pytest.mark.parametrize(
        ("value", "says"),
        [
            ("mysql://rc@db/releasecontrol", "not a PostgreSQL URL"),
            ("postgresql:///releasecontrol", "not a PostgreSQL URL"),
            ("postgresql://rc:pw@db:port/releasecontrol", "port that is not a number"),
            ("postgresql://rc:pw@db:5432/", "names no database"),
        ],
    )
    def test_a_bad_url_is_refused_naming_the_setting_and_never_its_password(
        self, tmp_path: Path, value: str, says: str
    ) -> None:
        with pytest.raises(ConfigError, match=says) as refused:
            load_config({"RELEASECONTROL_DATABASE_URL": value}, cwd=tmp_path)
        assert "RELEASECONTROL_DATABASE_URL" in refused.value.message
        assert "pw" not in refused.value.message


class TestMigrate:
    def test_migrate_brings_an_empty_database_to_the_schema_and_runs_again_harmlessly(
        self, tmp_path: Path, postgres: PostgresServer
    ) -> None:
        url = postgres.new_database()
        for _ in range(2):
            done = server_command(tmp_path, "migrate", url=url)
            assert done.returncode == 0, done.stderr
            assert f"schema version {SCHEMA_VERSION}" in done.stdout
        with open_store(url) as store:
            assert store.schema_version() == SCHEMA_VERSION
            assert store.global_sequence() == 0

    def test_a_database_of_a_newer_schema_is_refused_in_one_line(
        self, tmp_path: Path, postgres: PostgresServer
    ) -> None:
        url = postgres.new_database()
        open_store(url).close()
        postgres.sql(url, "UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        for command in (["migrate"], ["serve", "--dev"]):
            done = server_command(tmp_path, *command, url=url)
            assert done.returncode == 1
            assert done.stderr.strip().splitlines()[-1].startswith("error: the database")
            assert "schema version 99" in done.stderr and "run a newer" in done.stderr

    def test_an_unreachable_database_is_refused_at_start_in_one_line(
        self, tmp_path: Path, postgres: PostgresServer
    ) -> None:
        url = f"postgresql://rc:hunter2@127.0.0.1:{postgres.port + 1}/releasecontrol"
        done = server_command(tmp_path, "serve", "--dev", url=url)
        assert done.returncode == 1
        (line,) = done.stderr.strip().splitlines()[-1:]
        where = f"postgresql://rc:***@127.0.0.1:{postgres.port + 1}/releasecontrol"
        assert line.startswith(f"error: cannot connect to the database {where}: ")
        assert "hunter2" not in done.stderr

    def test_a_database_holding_other_tables_is_refused(self, postgres: PostgresServer) -> None:
        url = postgres.new_database()
        postgres.sql(url, "CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        with pytest.raises(ConfigError, match="not a ReleaseControl database"):
            open_store(url)


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server this test may stop and start."""
    with running_postgres() as server:
        yield server


def test_a_store_that_loses_the_database_is_unavailable_and_recovers_by_itself(
    own_postgres: PostgresServer,
) -> None:
    url = own_postgres.new_database()
    with open_store(url) as store:
        assert store.global_sequence() == 0
        own_postgres.stop("immediate")
        with pytest.raises(Unavailable, match=r"the database postgresql://.* retry"):
            store.global_sequence()
        own_postgres.start()
        assert store.global_sequence() == 0


def test_a_second_cluster_with_other_keys_is_refused_at_start_in_one_line(
    tmp_path: Path, postgres: PostgresServer
) -> None:
    """Two clusters pointed at one database: the second, with signing keys of its own, stops
    at start naming the database and the root that differs, and writes nothing."""
    url = postgres.new_database()
    first = LocalServer(tmp_path / "first", env={"RELEASECONTROL_DATABASE_URL": url}).start()
    first.stop()
    with open_store(url) as store:
        before = store.heads(), store.signed_file("roots/1.json")

    done = server_command(tmp_path / "second", "serve", "--dev", url=url)

    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the database postgresql://") and "other signing keys" in last
    assert "roots/1.json" in last
    with open_store(url) as store:
        assert (store.heads(), store.signed_file("roots/1.json")) == before
