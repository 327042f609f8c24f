"""The database guarded: a file that cannot be a sound ReleaseControl database stops the start
with one sentence naming it and the way out, never a traceback or an empty status."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from releasecontrol.errors import ConfigError
from releasecontrol_server.releases import Publish
from releasecontrol_server.store import open_store
from tests.unit.test_store import make_change


def fresh(path: Path) -> Path:
    """A real store with one committed change, closed (the WAL folded into the file)."""
    with open_store(path) as store:
        store.commit(make_change(store, "checkout", Publish("1.0.0", "a" * 64)))
    return path


class TestRefusedFiles:
    def test_an_empty_file_is_not_taken_as_an_empty_store(self, tmp_path: Path) -> None:
        """A 0-byte database (truncated) is refused, and left as it is."""
        path = tmp_path / "releasecontrol.db"
        path.write_bytes(b"")
        with pytest.raises(ConfigError, match=r"is empty \(0 bytes\).*releasectl restore"):
            open_store(path)
        assert path.read_bytes() == b""

    def test_a_file_that_is_not_sqlite_is_refused(self, tmp_path: Path) -> None:
        """Garbage is named as not a SQLite file, with its first bytes."""
        path = tmp_path / "releasecontrol.db"
        path.write_bytes(b"PK\x03\x04 a zip, not a database" * 20)
        with pytest.raises(ConfigError, match=r"is not a SQLite file \(it starts with b'PK"):
            open_store(path)

    def test_another_applications_database_is_refused_and_left_alone(self, tmp_path: Path) -> None:
        """A SQLite file with foreign tables is not migrated into ours."""
        path = tmp_path / "other.db"
        connection = sqlite3.connect(path)
        connection.execute("CREATE TABLE users (id INTEGER)")
        connection.commit()
        connection.close()
        with pytest.raises(ConfigError, match="is not a ReleaseControl database"):
            open_store(path)
        connection = sqlite3.connect(path)
        tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master")}
        connection.close()
        assert tables == {"users"}

    @pytest.mark.parametrize("page", [2, 3, 5])
    def test_a_damaged_database_is_refused_in_one_line(self, tmp_path: Path, page: int) -> None:
        """Bytes overwritten inside a page: refused at start, one line, naming the file."""
        path = fresh(tmp_path / "releasecontrol.db")
        data = bytearray(path.read_bytes())
        size = 4096
        assert len(data) > page * size
        data[(page - 1) * size : (page - 1) * size + 16] = b"\x13" * 16
        path.write_bytes(bytes(data))
        with pytest.raises(ConfigError) as caught:
            open_store(path)
        assert str(path) in caught.value.message
        assert "\n" not in caught.value.message
        assert "restore" in caught.value.message

    def test_a_sound_database_opens_with_its_data(self, tmp_path: Path) -> None:
        """The checks pass a healthy file: its committed change is there."""
        path = fresh(tmp_path / "releasecontrol.db")
        with open_store(path) as store:
            assert store.global_sequence() == 1
            loaded = store.load_feature("checkout")
            assert loaded is not None and loaded.stable == "1.0.0"

    def test_a_missing_file_becomes_a_new_store(self, tmp_path: Path) -> None:
        """No file yet is the first start, not an error."""
        with open_store(tmp_path / "new.db") as store:
            assert store.global_sequence() == 0

    def test_a_path_with_uri_characters_opens_and_reads(self, tmp_path: Path) -> None:
        """The integrity check and the reader open the file by URI: '#', '?', '%' and spaces in
        a folder's name must not cut the file name short."""
        folder = tmp_path / "state #1 ?x %41"
        folder.mkdir()
        path = fresh(folder / "releasecontrol.db")
        with open_store(path) as store:
            assert store.global_sequence() == 1
            reader = store.reader()
            try:
                loaded = reader.load_feature("checkout")
                assert loaded is not None and loaded.stable == "1.0.0"
            finally:
                reader.close()
