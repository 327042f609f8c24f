"""The artifact store: the control plane's own copy of every artifact, by SHA-256.

A folder store here (an S3 one is the same class over `S3Origin`, whose streamed
writes tests/unit/test_origin_s3.py covers).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from releasecontrol_server.artifacts import ArtifactStore
from releasecontrol_server.origin.filesystem import FilesystemOrigin


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class TestArtifactStore:
    def test_keeps_once_by_hash_and_reads_back(self, tmp_path: Path) -> None:
        store = ArtifactStore.in_folder(tmp_path / "artifacts")
        data = b"export const answer = 42;\n"
        assert not store.has(sha(data))
        assert store.open(sha(data)) is None

        source = io.BytesIO(data)
        source.read()  # kept from the start, wherever the reader left the file
        assert store.keep(sha(data), source) is True
        assert (tmp_path / "artifacts" / sha(data)[:2] / sha(data)).read_bytes() == data
        assert store.has(sha(data))
        # The same bytes again (another feature shipping them): nothing written.
        assert store.keep(sha(data), io.BytesIO(data)) is False
        kept = store.open(sha(data))
        assert kept is not None
        with kept:
            assert kept.read() == data

    def test_a_path_that_is_not_a_hash_is_refused(self, tmp_path: Path) -> None:
        store = ArtifactStore.in_folder(tmp_path)
        for bad in ("../../etc/passwd", "ABC", sha(b"x").upper()):
            with pytest.raises(ValueError, match="SHA-256"):
                store.has(bad)

    def test_a_failed_keep_leaves_nothing(self, tmp_path: Path) -> None:
        """A source that fails midway leaves no file and no temporary file behind."""

        class Failing(io.BytesIO):
            def read(self, size: int | None = -1) -> bytes:
                if self.tell() > 0:
                    raise OSError("disk went away")
                return super().read(4)

        store = ArtifactStore.in_folder(tmp_path / "artifacts")
        with pytest.raises(OSError, match="disk went away"):
            store.keep(sha(b"abcdefgh"), Failing(b"abcdefgh"))
        assert not store.has(sha(b"abcdefgh"))
        leftovers = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
        assert leftovers == []


class TestStreamedOriginWrite:
    def test_a_large_file_is_copied_in_pieces_and_replaced_atomically(self, tmp_path: Path) -> None:
        origin = FilesystemOrigin(tmp_path / "origin")
        data = os.urandom(3 * 1024 * 1024 + 7)
        source = tmp_path / "big.bin"
        source.write_bytes(data)
        with source.open("rb") as handle:
            origin.write_file("artifacts/big.bin", handle)
        assert origin.read("artifacts/big.bin") == data
        assert os.stat(tmp_path / "origin/artifacts/big.bin").st_mode & 0o777 == 0o644
        stream = origin.open("artifacts/big.bin")
        assert stream is not None
        with stream:
            assert stream.read(10) == data[:10]
        assert origin.open("artifacts/none") is None
        hidden = [p.name for p in (tmp_path / "origin").rglob(".*")]
        assert hidden == []


def test_leftovers_of_a_killed_keep_are_removed(tmp_path: Path) -> None:
    """A hidden temporary file a killed process left in a folder store goes at the next start;
    kept artifacts stay."""
    store = ArtifactStore.in_folder(tmp_path / "artifacts")
    store.keep(sha(b"kept"), io.BytesIO(b"kept"))
    leftover = tmp_path / "artifacts" / "ab" / f".{'ab' * 32}.x1y2.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    assert store.remove_leftovers() == [f"ab/.{'ab' * 32}.x1y2.tmp"]
    assert not leftover.exists() and store.has(sha(b"kept"))
