"""The S3 origin against a real local S3 endpoint (moto's server mode): objects, headers, errors."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from moto.server import ThreadedMotoServer

from releasecontrol_server.config import load_config
from releasecontrol_server.origin import Origin, open_origin
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.origin.s3 import S3Origin, normalize_prefix

REGION = "us-east-1"
# Distinctive, so a test can prove it never shows up in an error message.
SECRET_KEY = "dummy-secret-7f3a9c"
ARTIFACT = b"export const answer = 42;\n"
ARTIFACT_SHA = hashlib.sha256(ARTIFACT).hexdigest()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a free port, for every test in this module."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials in the environment, and no profile or metadata lookups."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def make_client(endpoint: str, session: Any = None, **config: Any) -> Any:
    return (session or boto3.session.Session()).client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        config=botocore.config.Config(s3={"addressing_style": "path"}, **config),
    )


@pytest.fixture(scope="module")
def inspector(s3_endpoint: str) -> Any:
    """One boto3 client for the module (clients are slow to make), with dummy credentials."""
    session = boto3.session.Session(
        aws_access_key_id="dummy-access-key", aws_secret_access_key=SECRET_KEY
    )
    return make_client(s3_endpoint, session)


@pytest.fixture
def s3(inspector: Any, aws_env: None) -> Any:
    """A boto3 client on the moto server, to look at the bucket behind the origin's back."""
    return inspector


@pytest.fixture
def bucket(s3: Any) -> str:
    """A new, empty bucket for one test."""
    name = f"rc-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def origin(s3_endpoint: str, bucket: str) -> S3Origin:
    return S3Origin(bucket, endpoint_url=s3_endpoint, region=REGION)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TestS3Origin:
    def test_is_an_origin(self, origin: S3Origin) -> None:
        """S3Origin satisfies the Origin protocol the control plane writes through."""
        assert isinstance(origin, Origin)

    def test_write_read_exists_round_trip(self, origin: S3Origin, s3: Any, bucket: str) -> None:
        """A written file reads back byte for byte, exists, and is one object under its path."""
        origin.write("features/checkout/releases.json", b'{"sequence": 1}')

        assert origin.read("features/checkout/releases.json") == b'{"sequence": 1}'
        assert origin.exists("features/checkout/releases.json")
        body = s3.get_object(Bucket=bucket, Key="features/checkout/releases.json")["Body"]
        assert body.read() == b'{"sequence": 1}'

    def test_a_large_file_streams_in_parts_and_reads_back_as_a_stream(
        self, origin: S3Origin, s3: Any, bucket: str, tmp_path: Path
    ) -> None:
        """write_file sends a file above the part size as a multipart upload, with the
        artifact's headers; open reads it back a piece at a time."""
        data = os.urandom(9 * 1024 * 1024) + b"tail"  # above the 8 MB part size
        source = tmp_path / "big.js"
        source.write_bytes(data)
        path = f"artifacts/{hashlib.sha256(data).hexdigest()}.js"
        with source.open("rb") as handle:
            origin.write_file(path, handle)

        head = s3.head_object(Bucket=bucket, Key=path)
        assert head["ContentLength"] == len(data)
        assert head["ETag"].strip('"').endswith("-2")  # two parts: it was streamed
        assert head["CacheControl"] == "public, max-age=31536000, immutable"
        stream = origin.open(path)
        assert stream is not None
        with stream:
            assert stream.read(4) == data[:4]
            assert stream.read() == data[4:]
        assert origin.open("artifacts/none.js") is None

    def test_overwrite_replaces_the_object(self, origin: S3Origin) -> None:
        """A second write replaces the bytes."""
        origin.write("remote-index.json", b"old")

        origin.write("remote-index.json", b"new")

        assert origin.read("remote-index.json") == b"new"

    def test_empty_file_is_a_file(self, origin: S3Origin) -> None:
        """Zero bytes are stored and read back as zero bytes, not as missing."""
        origin.write("empty.json", b"")

        assert origin.read("empty.json") == b""
        assert origin.exists("empty.json")

    def test_missing_object_is_absent(self, origin: S3Origin) -> None:
        """read gives None and exists False for a key that is not there, or only a 'folder'."""
        origin.write("features/checkout/releases.json", b"{}")

        assert origin.read("nope.json") is None
        assert not origin.exists("nope.json")
        assert origin.read("features/checkout") is None
        assert not origin.exists("features")

    @pytest.mark.parametrize(
        ("path", "content_type", "cache_control"),
        [
            pytest.param("remote-index.json", "application/json", "no-cache", id="remote-index"),
            pytest.param(
                "features/checkout/releases.json", "application/json", "no-cache", id="releases"
            ),
            pytest.param(
                "features/checkout/1.2.0/manifest.json",
                "application/json",
                "no-cache",
                id="manifest",
            ),
            pytest.param(
                f"artifacts/{ARTIFACT_SHA}",
                "application/octet-stream",
                "public, max-age=31536000, immutable",
                id="artifact",
            ),
            pytest.param(
                "features/checkout/readme.txt",
                "text/plain; charset=utf-8",
                "no-cache",
                id="other-by-extension",
            ),
        ],
    )
    def test_headers_per_kind_of_file(
        self,
        origin: S3Origin,
        s3: Any,
        bucket: str,
        path: str,
        content_type: str,
        cache_control: str,
    ) -> None:
        """Indices and manifests are revalidated, artifacts immutable, types by extension."""
        origin.write(path, ARTIFACT)

        head = s3.head_object(Bucket=bucket, Key=path)
        assert head["ContentType"] == content_type
        assert head["CacheControl"] == cache_control
        assert head["ContentLength"] == len(ARTIFACT)

    def test_put_carries_md5_and_sha256_of_the_bytes(
        self, s3_endpoint: str, bucket: str, s3: Any
    ) -> None:
        """Every PutObject sends Content-MD5 and a SHA-256 checksum the service can verify."""
        sent: list[dict[str, str]] = []

        def capture(request: Any, **_: Any) -> None:
            sent.append({k.lower(): _text(v) for k, v in request.headers.items()})

        client = make_client(s3_endpoint)
        client.meta.events.register("before-send.s3.PutObject", capture)
        origin = S3Origin(bucket, client=client)

        origin.write(f"artifacts/{ARTIFACT_SHA}", ARTIFACT)

        (headers,) = sent
        assert headers["content-md5"] == _b64(hashlib.md5(ARTIFACT).digest())
        assert headers["x-amz-checksum-sha256"] == _b64(hashlib.sha256(ARTIFACT).digest())
        stored = s3.head_object(
            Bucket=bucket, Key=f"artifacts/{ARTIFACT_SHA}", ChecksumMode="ENABLED"
        )
        assert stored["ChecksumSHA256"] == _b64(hashlib.sha256(ARTIFACT).digest())

    def test_prefix_puts_every_key_under_it(self, s3_endpoint: str, bucket: str, s3: Any) -> None:
        """With a prefix, path p is the object '<prefix>p' and nothing lands outside it."""
        origin = S3Origin(bucket, prefix="/cdn/prod", endpoint_url=s3_endpoint, region=REGION)

        origin.write("remote-index.json", b"{}")

        assert origin.prefix == "cdn/prod/"
        keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
        assert keys == ["cdn/prod/remote-index.json"]
        assert origin.read("remote-index.json") == b"{}"
        assert S3Origin(bucket, endpoint_url=s3_endpoint).read("remote-index.json") is None

    @pytest.mark.parametrize(
        "path",
        ["../escape", "/abs", "a//b", "features/./x.json", "bad\\path", "nul\x00.json"],
        ids=["dot-dot", "absolute", "empty-segment", "dot-segment", "backslash", "control-char"],
    )
    def test_unsafe_paths_are_refused(
        self, origin: S3Origin, s3: Any, bucket: str, path: str
    ) -> None:
        """write, read and exists raise ValueError for a path outside the rules and send nothing."""
        with pytest.raises(ValueError):
            origin.write(path, b"x")
        with pytest.raises(ValueError):
            origin.read(path)
        with pytest.raises(ValueError):
            origin.exists(path)
        assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


class TestErrors:
    @pytest.mark.parametrize(
        "operation",
        [
            pytest.param(lambda o: o.write("remote-index.json", b"{}"), id="write"),
            pytest.param(lambda o: o.read("remote-index.json"), id="read"),
        ],
    )
    def test_missing_bucket_is_an_os_error_naming_bucket_key_and_code(
        self, s3_endpoint: str, aws_env: None, operation: Any
    ) -> None:
        """A missing bucket becomes one-line OSError naming bucket, key and S3 code; no secret."""
        origin = S3Origin("rc-no-such-bucket", prefix="cdn", endpoint_url=s3_endpoint)

        with pytest.raises(OSError) as caught:
            operation(origin)

        message = str(caught.value)
        assert "s3://rc-no-such-bucket/cdn/remote-index.json" in message
        assert "NoSuchBucket" in message
        assert "\n" not in message
        assert SECRET_KEY not in message

    def test_exists_on_a_missing_bucket_is_false(self, s3_endpoint: str, aws_env: None) -> None:
        """HEAD cannot tell a missing bucket from a missing object, so exists is False."""
        origin = S3Origin("rc-no-such-bucket", endpoint_url=s3_endpoint)

        assert origin.exists("remote-index.json") is False

    def test_unreachable_endpoint_is_an_os_error(self, aws_env: None) -> None:
        """No service at the endpoint is an OSError naming bucket, key and error, never a secret."""
        client = make_client(f"http://127.0.0.1:{free_port()}", retries={"total_max_attempts": 1})
        origin = S3Origin("rc-bucket", client=client)

        for operation in (
            lambda: origin.write("remote-index.json", b"{}"),
            lambda: origin.read("remote-index.json"),
            lambda: origin.exists("remote-index.json"),
        ):
            with pytest.raises(OSError, match="EndpointConnectionError") as caught:
                operation()
            assert "s3://rc-bucket/remote-index.json" in str(caught.value)
            assert SECRET_KEY not in str(caught.value)

    def test_client_and_endpoint_together_are_refused(self, s3: Any) -> None:
        """A ready client and an endpoint or region are two answers to one question."""
        with pytest.raises(ValueError, match="either a client"):
            S3Origin("rc-bucket", client=s3, endpoint_url="http://127.0.0.1:1")


class TestPrefix:
    @pytest.mark.parametrize(
        ("given", "expected"),
        [
            pytest.param("", "", id="empty"),
            pytest.param("/", "", id="only-slash"),
            pytest.param("cdn", "cdn/", id="gets-trailing-slash"),
            pytest.param("/cdn/prod/", "cdn/prod/", id="outer-slashes-dropped"),
            pytest.param("v1.2_x-y", "v1.2_x-y/", id="safe-punctuation"),
        ],
    )
    def test_prefix_is_normalised(self, given: str, expected: str) -> None:
        """A prefix becomes empty or segments ending in exactly one '/'."""
        assert normalize_prefix(given) == expected

    @pytest.mark.parametrize(
        "given",
        ["a//b", "../x", "a/./b", "a b", "a?b", "ü"],
        ids=["empty-segment", "dot-dot", "dot", "space", "question-mark", "non-ascii"],
    )
    def test_unsafe_prefix_is_refused(self, given: str) -> None:
        """A prefix that could step outside or needs escaping in a URL raises ValueError."""
        with pytest.raises(ValueError):
            normalize_prefix(given)


class TestOpenOrigin:
    def test_filesystem_by_default(self, tmp_path: Path) -> None:
        """Without origin_type, the origin is the origin_dir folder."""
        origin = open_origin(load_config({}, cwd=tmp_path))

        assert isinstance(origin, FilesystemOrigin)
        assert origin.root == tmp_path / ".releasecontrol" / "origin"

    def test_s3_config_opens_the_bucket(
        self, tmp_path: Path, s3_endpoint: str, bucket: str, s3: Any
    ) -> None:
        """origin_type s3 gives an S3Origin on the configured bucket, prefix and endpoint."""
        config = load_config(
            {
                "RELEASECONTROL_ORIGIN_TYPE": "s3",
                "RELEASECONTROL_S3_BUCKET": bucket,
                "RELEASECONTROL_S3_PREFIX": "cdn",
                "RELEASECONTROL_S3_ENDPOINT_URL": s3_endpoint,
                "RELEASECONTROL_S3_REGION": REGION,
            },
            cwd=tmp_path,
        )

        origin = open_origin(config)
        origin.write("remote-index.json", b"{}")

        assert isinstance(origin, S3Origin)
        assert (origin.bucket, origin.prefix) == (bucket, "cdn/")
        assert s3.get_object(Bucket=bucket, Key="cdn/remote-index.json")["Body"].read() == b"{}"
        assert SECRET_KEY not in repr(origin)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _text(value: str | bytes) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else value
