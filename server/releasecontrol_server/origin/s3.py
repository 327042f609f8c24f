"""An origin in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2, ...), through boto3.

Each origin path is one object, `<prefix><path>`. `write` is one PutObject: S3
replaces an object atomically, so a reader (or a CDN pulling from the bucket)
gets the old bytes or the new ones, never a mix. Each object carries the
headers a CDN needs, from the same table the HTTP origin serves
(`origin.http.content_type` and `origin.http.cache_control`): index and
manifest JSON are `no-cache` so CDNs revalidate them, content-addressed
`artifacts/...` are cached for a year as `immutable`. Every PutObject sends the
bytes' Content-MD5 and SHA-256 checksum, so the service refuses bytes that
changed on the way.

Credentials come from boto3's standard chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, the instance or pod role, ...), never from
the ReleaseControl config. Errors from boto3 become OSError, the error the
control plane retries, with one line naming the bucket, the key and the S3
error code; never a credential.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
from typing import IO, Any, cast

import boto3
import boto3.exceptions
import boto3.s3.transfer
import botocore.config
import botocore.exceptions

from releasecontrol_server.origin import validate_origin_path
from releasecontrol_server.origin.http import cache_control, content_type

__all__ = ["S3Origin", "normalize_prefix"]

log = logging.getLogger(__name__)

# A publish waits on these; botocore's standard mode retries throttling and 5xx
# with backoff, and whatever still fails is retried later by the control plane.
_CLIENT_CONFIG = botocore.config.Config(
    connect_timeout=5,
    read_timeout=30,
    retries={"mode": "standard", "max_attempts": 3},
)
# Streamed writes: parts of 8 MB, two at a time (a publish is one of several things the
# server does at once); no threads of boto3's own beyond those.
_TRANSFER_CONFIG = boto3.s3.transfer.TransferConfig(
    multipart_threshold=8 * 1024 * 1024,
    multipart_chunksize=8 * 1024 * 1024,
    max_concurrency=2,
)
# Error codes that mean "no such object" (HeadObject has no body, so only the status).
_MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# Letters, digits, `.`, `_` and `-` per segment: safe in a key and in a URL unescaped.
_PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_MAX_MESSAGE_CHARS = 200


def normalize_prefix(prefix: str) -> str:
    """`prefix` as a key prefix: empty, or segments ending in `/` (`releases/` for `/releases`).

    Leading and trailing slashes are dropped before the one trailing `/` is
    added. Raises ValueError, saying why, when a segment is empty, `.` or `..`,
    or holds anything but letters, digits, `.`, `_` and `-`.
    """
    trimmed = prefix.strip().strip("/")
    if not trimmed:
        return ""
    validate_origin_path(trimmed)
    for segment in trimmed.split("/"):
        if not _PREFIX_SEGMENT.fullmatch(segment):
            raise ValueError(
                f"key prefix {prefix!r} has segment {segment!r}; use letters, digits, '.', '_' "
                "and '-' separated by '/'"
            )
    return trimmed + "/"


class S3Origin:
    """The origin as objects `<prefix><path>` in one bucket of an S3-compatible service."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        """Use `client` (a boto3 S3 client) or make one for `endpoint_url` and `region`.

        Without `endpoint_url` the client talks to AWS S3; with one (MinIO,
        Ceph, a test server) it uses path-style addressing, which every
        S3-compatible service accepts. Nothing is contacted here. Raises
        ValueError for an empty bucket, a bad prefix, or a client passed
        together with an endpoint or region.
        """
        if not bucket:
            raise ValueError("the bucket name is empty")
        if client is not None and (endpoint_url is not None or region is not None):
            raise ValueError("pass either a client or endpoint_url/region, not both")
        self.bucket = bucket
        self.prefix = normalize_prefix(prefix)
        self.endpoint_url = endpoint_url
        if client is None:
            config = _CLIENT_CONFIG
            if endpoint_url is not None:
                config = config.merge(botocore.config.Config(s3={"addressing_style": "path"}))
            # A session of its own: boto3's default session is not thread-safe to share.
            client = boto3.session.Session().client(
                "s3", endpoint_url=endpoint_url, region_name=region, config=config
            )
        self._client = client

    def key(self, path: str) -> str:
        """The object key for origin `path`; raises ValueError for an invalid path."""
        return self.prefix + validate_origin_path(path)

    def write(self, path: str, data: bytes) -> None:
        """Replace the object for `path` with `data` in one PutObject (atomic for readers).

        Sets Content-Type and Cache-Control for the kind of file, and Content-MD5
        plus a SHA-256 checksum that the service checks before it stores the
        bytes. Raises ValueError for an invalid path, OSError when the service
        refuses or cannot be reached.
        """
        key = self.key(path)
        try:
            self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type(path),
                CacheControl=cache_control(path),
                ContentMD5=base64.b64encode(hashlib.md5(data).digest()).decode("ascii"),
                ChecksumAlgorithm="SHA256",
                ChecksumSHA256=base64.b64encode(hashlib.sha256(data).digest()).decode("ascii"),
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise self._os_error("PutObject", key, exc) from exc
        log.debug("s3 put bucket=%s key=%s bytes=%d", self.bucket, key, len(data))

    def write_file(self, path: str, source: IO[bytes]) -> None:
        """`write` of `source`'s bytes, streamed: boto3's managed transfer sends a large file
        in parts (multipart upload, each part checksummed), a small one in one PutObject;
        readers see the object only once it is complete."""
        key = self.key(path)
        try:
            self._client.upload_fileobj(
                source,
                self.bucket,
                key,
                ExtraArgs={
                    "ContentType": content_type(path),
                    "CacheControl": cache_control(path),
                    "ChecksumAlgorithm": "SHA256",
                },
                Config=_TRANSFER_CONFIG,
            )
        except (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
            boto3.exceptions.S3UploadFailedError,
        ) as exc:
            raise self._os_error("upload", key, exc) from exc

    def open(self, path: str) -> IO[bytes] | None:
        """The object for `path` as a stream to read a piece at a time, or None when there is
        no such object; raises OSError as `read` does."""
        key = self.key(path)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise self._os_error("GetObject", key, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._os_error("GetObject", key, exc) from exc
        return cast(IO[bytes], response["Body"])

    def read(self, path: str) -> bytes | None:
        """The bytes of the object for `path`, or None when there is no such object.

        Raises ValueError for an invalid path, OSError for anything else the
        service answers (a missing bucket, access denied) or a failed connection.
        """
        key = self.key(path)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
            with response["Body"] as body:
                data = body.read()
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return None
            raise self._os_error("GetObject", key, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._os_error("GetObject", key, exc) from exc
        return bytes(data)

    def exists(self, path: str) -> bool:
        """Whether an object is at `path` (one HeadObject).

        A HEAD answer has no body, so a missing bucket looks like a missing
        object here (False); the write that follows then fails naming it.
        Raises ValueError for an invalid path, OSError for any other refusal
        (access denied) or a failed connection.
        """
        key = self.key(path)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in _MISSING_CODES:
                return False
            raise self._os_error("HeadObject", key, exc) from exc
        except botocore.exceptions.BotoCoreError as exc:
            raise self._os_error("HeadObject", key, exc) from exc
        return True

    def _os_error(self, operation: str, key: str, exc: Exception) -> OSError:
        """The one translation of a boto3 error: one line, bucket, key and S3 code, no secrets."""
        if isinstance(exc, botocore.exceptions.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(error.get("Code") or status or "unknown")
            # Only Code and Message: the rest of an S3 error (StringToSign, the
            # access key id of SignatureDoesNotMatch) is for debugging, not for logs.
            detail = _one_line(str(error.get("Message") or ""))
        else:
            code = type(exc).__name__
            detail = _one_line(str(exc))
        where = f"s3://{self.bucket}/{key}"
        if self.endpoint_url is not None:
            where += f" at {self.endpoint_url}"
        message = f"S3 {operation} {where} failed: {code}"
        return OSError(f"{message} ({detail})" if detail and detail != code else message)

    def __repr__(self) -> str:
        endpoint = f", endpoint_url={self.endpoint_url!r}" if self.endpoint_url else ""
        return f"S3Origin({self.bucket!r}, prefix={self.prefix!r}{endpoint})"


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    if len(flat) > _MAX_MESSAGE_CHARS:
        return flat[: _MAX_MESSAGE_CHARS - 3] + "..."
    return flat
