"""The real server with origin_type s3, publishing into a real local S3 endpoint (moto's server)."""

from __future__ import annotations

import json
import logging
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from conftest import HostView, RunningServer, host_view, make_feature, sha256, start_server
from moto.server import ThreadedMotoServer

from releasecontrol.manifest import artifact_path, load_feature_folder

pytestmark = pytest.mark.integration

REGION = "us-east-1"
PREFIX = "cdn/"
# Distinctive, so the test can prove the server never logs it.
SECRET_KEY = "dummy-secret-5b81e0"
REVALIDATE = "no-cache"
IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 and a free port."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def s3(s3_endpoint: str) -> Any:
    """A boto3 client on the moto server, to read the bucket as a CDN would."""
    session = boto3.session.Session(
        aws_access_key_id="dummy-access-key", aws_secret_access_key=SECRET_KEY
    )
    return session.client(
        "s3",
        endpoint_url=s3_endpoint,
        region_name=REGION,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"rc-it-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_server(tmp_path: Path, s3_endpoint: str, bucket: str) -> Iterator[RunningServer]:
    """The real server process with its origin in the bucket, dummy credentials from the env."""
    running = start_server(
        tmp_path / "home",
        RELEASECONTROL_ORIGIN_TYPE="s3",
        RELEASECONTROL_S3_BUCKET=bucket,
        RELEASECONTROL_S3_PREFIX=PREFIX,
        RELEASECONTROL_S3_ENDPOINT_URL=s3_endpoint,
        RELEASECONTROL_S3_REGION=REGION,
        # The bucket is the origin: there is no folder for this process to serve.
        RELEASECONTROL_ORIGIN_HTTP_LISTEN="",
        AWS_ACCESS_KEY_ID="dummy-access-key",
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_CONFIG_FILE=str(tmp_path / "no-aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "no-aws-credentials"),
        AWS_EC2_METADATA_DISABLED="true",
    )
    yield running
    running.stop()


def get(s3: Any, bucket: str, path: str) -> bytes:
    data: bytes = s3.get_object(Bucket=bucket, Key=PREFIX + path)["Body"].read()
    return data


def verified_in_bucket(server: RunningServer, s3: Any, bucket: str) -> HostView:
    """checkout as a host verifies it from the bucket, pinning the server's trust file."""

    def read(path: str) -> bytes:
        try:
            return get(s3, bucket, path)
        except s3.exceptions.NoSuchKey:
            raise FileNotFoundError(path) from None

    return host_view(read, server.home / "keys" / "trust.json")


def allow_public_reads(s3: Any, bucket: str) -> None:
    statement = {
        "Effect": "Allow",
        "Principal": "*",
        "Action": "s3:GetObject",
        "Resource": f"arn:aws:s3:::{bucket}/*",
    }
    policy = {"Version": "2012-10-17", "Statement": [statement]}
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))


def publish(server: RunningServer, tmp_path: Path, version: str, **kwargs: Any) -> Any:
    folder = make_feature(tmp_path / f"src-{version}", "checkout", version)
    return server.client().publish(load_feature_folder(folder, feature_id="checkout"), **kwargs)


class TestS3Origin:
    def test_publish_writes_verifiable_files_to_the_bucket(
        self, s3_server: RunningServer, s3: Any, bucket: str, s3_endpoint: str, tmp_path: Path
    ) -> None:
        """A publish puts signed indices, manifest and artifacts in the bucket, with CDN headers."""
        response = publish(s3_server, tmp_path, "1.0.0")

        # The whole chain a host follows is in the bucket: root 1, the top level naming it,
        # checkout's shard, its releases.json.
        view = verified_in_bucket(s3_server, s3, bucket)
        index = view.releases
        assert (index.sequence, index.stable, index.canary) == (1, "1.0.0", None)
        assert (view.top.sequence, view.top.root_version) == (1, 1)
        entry = view.shard.features["checkout"]
        assert (entry.sha256, entry.sequence) == (sha256(view.releases_bytes), 1)
        remote_bytes = get(s3, bucket, "remote-index.json")

        manifest_bytes = get(s3, bucket, "features/checkout/1.0.0/manifest.json")
        assert index.versions[0].manifest_sha256 == sha256(manifest_bytes)
        assets = json.loads(manifest_bytes)["assets"]
        assert assets
        for asset in assets:
            artifact = artifact_path(asset["sha256"], asset["path"])
            assert sha256(get(s3, bucket, artifact)) == asset["sha256"]

        expected_headers = {
            "remote-index.json": ("application/json", REVALIDATE),
            view.shard_path: ("application/json", REVALIDATE),
            "features/checkout/releases.json": ("application/json", REVALIDATE),
            # A root version is never rewritten.
            "roots/1.json": ("application/json", IMMUTABLE),
            "features/checkout/1.0.0/manifest.json": ("application/json", REVALIDATE),
            # Typed by the asset's extension, so browsers accept the scripts and styles.
            **{
                artifact_path(a["sha256"], a["path"]): (
                    "text/css; charset=utf-8"
                    if a["path"].endswith(".css")
                    else "text/javascript; charset=utf-8",
                    IMMUTABLE,
                )
                for a in assets
            },
        }
        for path, (content_type, cache_control) in expected_headers.items():
            head = s3.head_object(Bucket=bucket, Key=PREFIX + path)
            assert (head["ContentType"], head["CacheControl"]) == (content_type, cache_control)

        # Hosts are pointed at the bucket itself, and a bucket that allows public reads
        # serves the same bytes there.
        public_url = f"{s3_endpoint}/{bucket}/{PREFIX}"
        assert s3_server.origin_url == public_url
        assert response.origin_public_url == public_url
        allow_public_reads(s3, bucket)
        with urllib.request.urlopen(public_url + "remote-index.json", timeout=10) as reply:
            assert reply.read() == remote_bytes
        assert not s3_server.origin_dir.exists() or not any(s3_server.origin_dir.iterdir())

    def test_canary_replaces_the_indices_in_place(
        self, s3_server: RunningServer, s3: Any, bucket: str, tmp_path: Path
    ) -> None:
        """A later change overwrites releases.json, its shard and remote-index.json in place,
        each with the next sequence, and adds no other index file."""
        publish(s3_server, tmp_path, "1.0.0")
        first = verified_in_bucket(s3_server, s3, bucket)
        publish(s3_server, tmp_path, "1.1.0", channel="canary", soak_seconds=60)

        view = verified_in_bucket(s3_server, s3, bucket)
        index = view.releases
        assert (index.sequence, index.stable, index.canary) == (2, "1.0.0", "1.1.0")
        assert view.top.sequence == 2 and view.shard.sequence == 2
        assert view.shard.features["checkout"].sequence == 2
        assert view.shard_path == first.shard_path  # the same object, replaced
        keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]}
        assert all(key.startswith(PREFIX) for key in keys)
        index_files = {k for k in keys if not k.startswith(PREFIX + "artifacts/")}
        assert index_files == {
            PREFIX + path
            for path in (
                "remote-index.json",
                "roots/1.json",
                view.shard_path,
                "features/checkout/releases.json",
                "features/checkout/1.0.0/manifest.json",
                "features/checkout/1.1.0/manifest.json",
            )
        }
        assert SECRET_KEY not in s3_server.log()
