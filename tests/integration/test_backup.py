"""`releasectl backup` while the server serves, and `releasectl restore` only once it stopped."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from pathlib import Path

from conftest import RELEASECTL, make_feature, releasectl, start_server

from releasecontrol_server.releases import Publish
from releasecontrol_server.store import open_store
from tests.unit.test_store import make_change


def test_backup_while_serving_and_restore_after_stopping(tmp_path: Path) -> None:
    """A backup taken while the server runs restores the state of that moment; a restore is
    refused while the server runs; the replaced database is kept; the server starts on the
    restored one."""
    home = tmp_path / "home"
    server = start_server(home)
    try:
        make_feature(tmp_path, version="1.0.0")
        assert releasectl(server, tmp_path, "publish", "--feature", "checkout").returncode == 0
        backup = tmp_path / "backups" / "rc.db"
        backup.parent.mkdir()
        done = releasectl(server, tmp_path, "backup", str(backup), "--output", "json")
        assert done.returncode == 0, done.stderr
        described = json.loads(done.stdout)
        assert described["global_sequence"] == 1 and described["schema_version"] >= 4
        connection = sqlite3.connect(backup)
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        connection.close()

        make_feature(tmp_path, version="1.1.0")
        assert releasectl(server, tmp_path, "publish", "--feature", "checkout").returncode == 0
        again = releasectl(server, tmp_path, "backup", str(backup))
        assert again.returncode == 1 and "exists; pass --force" in again.stderr

        refused = releasectl(server, tmp_path, "restore", str(backup))
        assert refused.returncode == 1
        assert (
            refused.stderr.startswith("error: a server (pid ") and "stop it first" in refused.stderr
        )
    finally:
        server.stop()

    restored = releasectl(server, tmp_path, "restore", str(backup), "--output", "json")
    assert restored.returncode == 0, restored.stderr
    kept = Path(json.loads(restored.stdout)["replaced"])
    assert kept.is_file() and kept.name.startswith("releasecontrol.db.replaced-")

    again = start_server(home)
    try:
        status = json.loads(
            releasectl(again, tmp_path, "release", "status", "--output", "json").stdout
        )
        assert [(f["feature_id"], f["stable"]) for f in status] == [("checkout", "1.0.0")]
    finally:
        again.stop()


def test_backup_of_a_database_in_a_folder_with_uri_characters(tmp_path: Path) -> None:
    """`releasectl backup --database PATH` opens PATH read-only by URI: '#', '?' and '%' in a
    folder's name are part of the file's name, not the URI's fragment or query."""
    folder = tmp_path / "state #1 ?x %41"
    folder.mkdir()
    database = folder / "releasecontrol.db"
    with open_store(database) as store:
        store.commit(make_change(store, "checkout", Publish("1.0.0", "a" * 64)))
    copy = tmp_path / "copy.db"
    done = releasectl(
        tmp_path / "home",
        tmp_path,
        "backup",
        str(copy),
        "--database",
        str(database),
        "--output",
        "json",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["global_sequence"] == 1
    with open_store(copy) as restored:
        assert restored.global_sequence() == 1


def test_restore_refuses_what_is_not_a_releasecontrol_database(tmp_path: Path) -> None:
    """A garbage file or another application's database is refused; nothing is replaced."""
    home = tmp_path / "home"
    home.mkdir()
    database = home / "releasecontrol.db"
    database.write_bytes(b"the current database")
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all" * 10)
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE users (id INTEGER)")
    connection.commit()
    connection.close()

    for source, why in ((garbage, "is not a SQLite database"), (other, "not a ReleaseControl")):
        done = releasectl(home, tmp_path, "restore", str(source))
        assert done.returncode == 1 and why in done.stderr, done.stderr
    assert database.read_bytes() == b"the current database"


def test_backup_and_restore_refuse_a_postgresql_database_naming_the_tools(tmp_path: Path) -> None:
    """With RELEASECONTROL_DATABASE_URL set there is no file to copy: both commands say what
    to use instead, in one line, and change nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))}
    env |= {
        "RELEASECONTROL_HOME": str(tmp_path / "home"),
        "RELEASECONTROL_DATABASE_URL": "postgresql://rc@db.internal/releasecontrol",
    }
    kept = tmp_path / "kept.db"
    kept.write_bytes(b"a backup")
    for command, path in (("backup", tmp_path / "copy.db"), ("restore", kept)):
        done = subprocess.run(
            [*RELEASECTL, command, str(path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1
        (line,) = done.stderr.splitlines()
        assert line.startswith("error: the database is PostgreSQL") and "pg_dump" in line
    assert not (tmp_path / "copy.db").exists() and not (tmp_path / "home").exists()
