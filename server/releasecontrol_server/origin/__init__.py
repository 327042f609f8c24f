"""The CDN origin: where signed indices, manifests and artifacts are published.

A CDN (or a host, directly) reads these files by path; the control plane writes
them. Every implementation keeps one promise: a reader sees the old bytes of a
file or the new ones, never a mix.

    Origin                    the protocol the control plane writes through
    ├── FilesystemOrigin      a folder (origin.filesystem), served by OriginHttpServer
    └── S3Origin              a bucket of an S3-compatible service (origin.s3), via boto3

Paths are relative, `/`-separated and checked by `validate_origin_path`, so
nothing a request carries can name a file outside the origin.
"""

from __future__ import annotations

import logging
import re
from typing import IO, TYPE_CHECKING, Protocol, runtime_checkable

from releasecontrol.errors import ConfigError

if TYPE_CHECKING:
    from releasecontrol_server.config import Config

__all__ = ["Origin", "open_origin", "validate_origin_path"]

_CONTROL_CHARACTER = re.compile(r"[\x00-\x1f\x7f]")

log = logging.getLogger(__name__)


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

    def write_file(self, path: str, source: IO[bytes]) -> None:
        """`write` of `source`'s bytes from its current position, streamed (never in memory
        whole): how artifacts of any size are written."""
        ...

    def open(self, path: str) -> IO[bytes] | None:
        """The file at `path` for reading a piece at a time (closed by the caller), or None
        when there is no such file."""
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
    if _CONTROL_CHARACTER.search(path):  # a regex: checked on every file of every change
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
    """The origin the config's `origin_type` names; nothing is contacted yet.

    `filesystem`: the folder `origin_dir`. `s3`: the bucket `s3_bucket` under
    `s3_prefix`, at `s3_endpoint_url` in `s3_region` when set, with boto3's
    standard credentials. Raises ConfigError when `s3` has no bucket (only a
    Config built by hand can lack one; `load_config` refuses that already).
    """
    if config.origin_type == "s3":
        # Imported here: origin.s3 loads boto3, which a filesystem origin never needs.
        from releasecontrol_server.origin.s3 import S3Origin

        if not config.s3_bucket:
            raise ConfigError(
                "origin_type is 's3' but s3_bucket is not set; set s3_bucket "
                "(RELEASECONTROL_S3_BUCKET) to the bucket to publish to."
            )
        origin = S3Origin(
            config.s3_bucket,
            prefix=config.s3_prefix,
            endpoint_url=config.s3_endpoint_url,
            region=config.s3_region,
        )
        log.info(
            "origin type=s3 bucket=%s prefix=%s endpoint=%s region=%s",
            config.s3_bucket,
            config.s3_prefix,
            config.s3_endpoint_url or "aws",
            config.s3_region or "default",
        )
        return origin

    from releasecontrol_server.origin.filesystem import FilesystemOrigin

    log.info("origin type=filesystem root=%s", config.origin_dir)
    return FilesystemOrigin(config.origin_dir)
