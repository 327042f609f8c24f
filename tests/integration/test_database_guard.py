"""A server on a damaged database stops in one line and writes nothing.

The integrity check runs on a thread of its own while the server loads (store/sqlite.py);
these tests pin down what that must not change: the damage is named before anything is
written, whichever of the load and the check meets it first.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import make_feature, releasectl, start_server

from releasectl.launcher import LocalServerError


def first_page_of(database: Path, table: str) -> tuple[int, int]:
    """The first page (1-based) SQLite keeps `table`'s rows in, and the page size."""
    connection = sqlite3.connect(database)
    try:
        rows = connection.execute("SELECT pageno FROM dbstat WHERE name = ?", (table,))
        first = min(int(row[0]) for row in rows)
        return first, int(connection.execute("PRAGMA page_size").fetchone()[0])
    finally:
        connection.close()


def overwrite_page(database: Path, page: int, size: int) -> None:
    with database.open("r+b") as file:
        file.seek((page - 1) * size + 8)  # past the page header's type byte: still a page
        file.write(b"\x13" * 64)


@pytest.mark.parametrize(
    "table",
    [
        # Read by nothing the start loads: only the integrity check can find it.
        pytest.param("manifests", id="a-page-the-load-never-reads"),
        # Read by the load itself: the driver's error is replaced by the check's sentence.
        pytest.param("versions", id="a-page-the-load-reads"),
    ],
)
def test_a_damaged_database_stops_the_start_in_one_line_before_any_write(
    tmp_path: Path, table: str
) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    try:
        for version in ("1.0.0", "1.1.0"):
            make_feature(tmp_path, version=version)
            done = releasectl(server, tmp_path, "publish", "--feature", "checkout")
            assert done.returncode == 0, done.stderr
    finally:
        assert server.stop() == 0
    database = home / "releasecontrol.db"
    assert not database.with_name("releasecontrol.db-wal").exists()  # folded in at stop
    overwrite_page(database, *first_page_of(database, table))
    # A sound start would restore this file (the origin check at start): this one must not.
    (home / "origin" / "remote-index.json").unlink()

    with pytest.raises(LocalServerError) as caught:
        start_server(home)

    last_line = caught.value.log.rstrip("\n").splitlines()[-1]
    assert last_line.startswith(f"error: the database {database} is damaged"), caught.value.log
    assert "releasectl restore PATH" in last_line
    assert "Traceback" not in caught.value.log
    assert not (home / "origin" / "remote-index.json").exists()
