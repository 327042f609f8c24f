"""The CDN origin: where signed indices, manifests and artifacts are published.

A CDN (or a host, directly) reads these files by path; the control plane writes
them. Every implementation keeps one promise: a reader sees the old bytes of a
file or the new ones, never a mix.

    Origin                    the protocol the control plane writes through
    ├── FilesystemOrigin      a folder (origin.filesystem), served by OriginHttpServer
    └── (S3-compatible)       later

Paths are relative, `/`-separated and checked by `validate_origin_path`, so
nothing a request carries can name a file outside the origin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from releasecontrol_server.config import Config

__all__ = ["Origin", "open_origin", "validate_origin_path"]


@runtime_checkable
class Origin(Protocol):
    """Where published files live; paths are relative and `/`-separated."""

    def write(self, path: str, data: bytes) -> None:
        """Replace the file at `path` with `data` atomically; raises OSError on failure."""
        ...

    def read(self, path: str) -> bytes | None:
        """The bytes at `path`, or None when there is no such file."""
        ...

    def exists(self, path: str) -> bool:
        """Whether a file is at `path`."""
        ...


def validate_origin_path(path: str) -> str:
    """Return `path` unchanged if it is a safe relative origin path; else raise ValueError.

    Refused, each with the reason: empty, absolute, backslashes, empty segments
    (`a//b`, a trailing `/`), `.` or `..` segments, and control characters.
    """
    if not path:
        raise ValueError("origin path is empty")
    if path.startswith("/"):
        raise ValueError(f"origin path {path!r} is absolute; give it relative to the origin root")
    if "\\" in path:
        raise ValueError(f"origin path {path!r} contains a backslash; separate segments with /")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise ValueError(f"origin path {path!r} contains a control character")
    for segment in path.split("/"):
        if segment == "":
            raise ValueError(f"origin path {path!r} has an empty segment (// or a trailing /)")
        if segment in (".", ".."):
            raise ValueError(
                f"origin path {path!r} has a {segment!r} segment; "
                "paths may not step outside the origin"
            )
    return path


def open_origin(config: Config) -> Origin:
    """The origin the config names (today: the filesystem folder `origin_dir`)."""
    from releasecontrol_server.origin.filesystem import FilesystemOrigin

    return FilesystemOrigin(config.origin_dir)
