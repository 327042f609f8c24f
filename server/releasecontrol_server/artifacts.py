"""The control plane's own copy of every published artifact, by SHA-256.

The CDN origin can be lost, emptied or replaced; the database keeps every
manifest and index, and this store keeps every artifact, so `releasectl origin
rebuild` can put all of it back. It lives beside the database, not on the
origin: a directory (`artifact_store`, default `$RELEASECONTROL_HOME/artifacts`)
or an S3 bucket (`artifact_store = "s3://bucket/prefix"`) separate from the
CDN's.

Content-addressed: an artifact is kept at `<sha256[:2]>/<sha256>` once, shared
by every feature and version that ships those bytes, and never changes, so a
crash while keeping one leaves nothing wrong (a directory keeps it through a
hidden temporary file and a rename; S3 shows an object only once complete).

A publish keeps its artifacts here before the origin gets them, and both
before the change commits: a committed version's artifacts are always kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import IO, TYPE_CHECKING

from releasecontrol_server.origin import Origin

if TYPE_CHECKING:
    from releasecontrol_server.config import Config

__all__ = ["ArtifactStore", "open_artifact_store"]

_SHA256 = re.compile(r"[0-9a-f]{64}")


class ArtifactStore:
    """Artifacts by SHA-256 in a folder or a bucket (written through the same classes as the
    origin: `FilesystemOrigin`, `S3Origin`)."""

    def __init__(self, backend: Origin, where: str) -> None:
        self._backend = backend
        self.where = where
        """The folder or `s3://bucket/prefix`, for messages."""

    @classmethod
    def in_folder(cls, folder: Path) -> ArtifactStore:
        """A store in `folder` (created when the first artifact is kept)."""
        from releasecontrol_server.origin.filesystem import FilesystemOrigin

        return cls(FilesystemOrigin(folder), str(folder))

    @staticmethod
    def _path(sha256: str) -> str:
        if not _SHA256.fullmatch(sha256):
            raise ValueError(f"not a SHA-256 in hex: {sha256!r}")
        return f"{sha256[:2]}/{sha256}"

    def has(self, sha256: str) -> bool:
        """Whether the artifact with this SHA-256 is kept. Raises OSError when the store
        cannot be reached."""
        return self._backend.exists(self._path(sha256))

    def keep(self, sha256: str, source: IO[bytes]) -> bool:
        """Keep `source`'s bytes (from its start; they hash to `sha256`, checked by the
        caller) unless kept already; True when they were written now. Raises OSError."""
        if self.has(sha256):
            return False
        source.seek(0)
        self._backend.write_file(self._path(sha256), source)
        return True

    def open(self, sha256: str) -> IO[bytes] | None:
        """The kept artifact for reading a piece at a time (closed by the caller), or None
        when it is not kept. Raises OSError."""
        return self._backend.open(self._path(sha256))

    def remove_leftovers(self) -> list[str]:
        """The temporary files a process killed while keeping an artifact left in a folder
        store, removed (a bucket shows an object only once complete: none there)."""
        from releasecontrol_server.origin.filesystem import FilesystemOrigin

        if isinstance(self._backend, FilesystemOrigin):
            return self._backend.remove_leftovers()
        return []

    def __repr__(self) -> str:
        return f"ArtifactStore({self.where!r})"


def open_artifact_store(config: Config) -> ArtifactStore:
    """The store `artifact_store` names: a folder, or `s3://bucket/prefix` (reached at
    `s3_endpoint_url` in `s3_region` when set, with boto3's standard credentials)."""
    where = config.artifact_store
    if where.startswith("s3://"):
        from releasecontrol_server.origin.s3 import S3Origin  # loads boto3

        bucket, _, prefix = where.removeprefix("s3://").partition("/")
        return ArtifactStore(
            S3Origin(
                bucket,
                prefix=prefix,
                endpoint_url=config.s3_endpoint_url,
                region=config.s3_region,
            ),
            where,
        )
    return ArtifactStore.in_folder(Path(where))
