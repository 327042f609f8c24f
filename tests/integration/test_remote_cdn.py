"""The remote-validation flow against real processes: the launcher, publish's CDN read-back,
`verify remote-cdn`, `dev-host` and `release status --index-url`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import make_feature

from releasecontrol_server.launcher import LocalServer, LocalServerError

pytestmark = pytest.mark.integration

RELEASECTL = [sys.executable, "-c", "from releasecontrol.cli import main; main()"]


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user after `make dev`: only RELEASECONTROL_HOME set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))}
    env["RELEASECONTROL_HOME"] = str(home)
    env.update(extra)
    return env


def releasectl(
    home: Path, cwd: Path, *args: str, timeout: float = 60, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RELEASECTL, *args],
        cwd=cwd,
        env=cli_env(home, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    for fragment in fragments:
        assert fragment in done.stderr, done.stderr


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalServer]:
    with LocalServer(tmp_path / "home") as server:
        yield server


class SwitchableCdn:
    """A CDN in front of the origin whose root the test can swap (to serve a stale copy)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        cdn = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                file = cdn.root / self.path.lstrip("/").split("?")[0]
                if ".." in self.path or not file.is_file():
                    self.send_response(HTTPStatus.NOT_FOUND)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = file.read_bytes()
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def __enter__(self) -> SwitchableCdn:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class TestLocalServer:
    def test_it_serves_on_ephemeral_ports_and_stops_on_sigterm(self, tmp_path: Path) -> None:
        """A LocalServer answers over mTLS at the address it reports and exits 0 when stopped."""
        server = LocalServer(tmp_path / "home").start()
        try:
            assert server.grpc.startswith("127.0.0.1:") and not server.grpc.endswith(":50051")
            assert server.origin_url.startswith("http://127.0.0.1:")
            status = server.client().get_status()
            assert status.origin_public_url == server.origin_url
        finally:
            code = server.stop()
        assert code == 0
        assert not server.endpoints_path.exists()
        assert server.stop() == 0  # twice is fine

    def test_a_server_that_cannot_start_fails_with_its_log(self, tmp_path: Path) -> None:
        """A server refusing to start raises LocalServerError carrying its one-line reason."""
        server = LocalServer(tmp_path / "home", env={"RELEASECONTROL_ENV": "production"})
        with pytest.raises(LocalServerError) as caught:
            server.start()
        assert "exited with code 1" in caught.value.reason
        assert "refused with RELEASECONTROL_ENV=production" in caught.value.last_error
        assert "--- server log" in str(caught.value)


class TestPublishReadBack:
    def test_publish_says_what_it_verified_on_the_cdn(
        self, local: LocalServer, tmp_path: Path
    ) -> None:
        """After the server answers, publish reads the files back and names their sequences."""
        make_feature(tmp_path, "checkout", "1.0.0")
        done = releasectl(local.home, tmp_path, "publish", "--feature", "checkout")
        assert done.returncode == 0, done.stderr
        published, verified = done.stdout.splitlines()
        assert published == "published checkout 1.0.0 as stable (sequence 1)"
        assert verified.startswith(f"verified on the CDN: checkout 1.0.0 at {local.origin_url} ")
        assert "remote-index.json sequence 1, releases.json sequence 1" in verified

        make_feature(tmp_path, "checkout", "1.1.0")
        done = releasectl(
            local.home, tmp_path, "publish", "-f", "checkout", "--channel", "canary", "-o", "json"
        )
        assert done.returncode == 0, done.stderr
        cdn = json.loads(done.stdout)["cdn"]
        assert cdn["verified"] is True
        assert (cdn["remote_index_sequence"], cdn["releases_sequence"]) == (2, 2)
        assert cdn["signed_by"] == [json.loads(local.trust_path.read_text())["keys"][0]["keyid"]]

    def test_a_cdn_serving_a_stale_copy_fails_the_publish(self, tmp_path: Path) -> None:
        """A CDN still serving the previous releases.json makes publish exit 1 in one line."""
        origin = tmp_path / "home" / "origin"
        origin.mkdir(parents=True)
        with (
            SwitchableCdn(origin) as cdn,
            LocalServer(
                tmp_path / "home",
                env={
                    "RELEASECONTROL_ORIGIN_HTTP_LISTEN": "",
                    "RELEASECONTROL_ORIGIN_PUBLIC_URL": cdn.url,
                },
            ) as local,
        ):
            assert local.origin_url == cdn.url
            make_feature(tmp_path, "checkout", "1.0.0")
            done = releasectl(local.home, tmp_path, "publish", "--feature", "checkout")
            assert done.returncode == 0, done.stderr
            assert "verified on the CDN" in done.stdout

            cdn.root = tmp_path / "stale"
            shutil.copytree(origin, cdn.root)
            make_feature(tmp_path, "checkout", "1.1.0")
            done = releasectl(local.home, tmp_path, "publish", "--feature", "checkout")
            assert_one_line_error(
                done,
                "checkout 1.1.0 is committed (sequence 2) but not verified on the CDN",
                "sequence 1, behind the 2 just committed",
            )
            # The publish line still tells what the control plane did.
            assert done.stdout == "published checkout 1.1.0 as stable (sequence 2)\n"

            skipped = releasectl(local.home, tmp_path, "publish", "-f", "checkout", "--no-verify")
            assert skipped.returncode == 0, skipped.stderr
            assert "verified on the CDN" not in skipped.stdout

    def test_a_dev_key_is_refused_unless_the_trust_is_the_local_dev_file(
        self, local: LocalServer, tmp_path: Path
    ) -> None:
        """The dev key counts for the state directory's trust.json, not for a configured one."""
        make_feature(tmp_path, "checkout", "1.0.0")
        done = releasectl(
            local.home,
            tmp_path,
            "publish",
            "--feature",
            "checkout",
            FEATURE_TRUST_PUBLIC_KEYS_PATH=str(local.trust_path),
        )
        assert_one_line_error(done, "not verified on the CDN", "dev key")

        allowed = releasectl(
            local.home,
            tmp_path,
            "publish",
            "--feature",
            "checkout",
            FEATURE_TRUST_PUBLIC_KEYS_PATH=str(local.trust_path),
            FEATURE_ALLOW_INSECURE_DEV_KEYS="1",
        )
        assert allowed.returncode == 0, allowed.stderr
        assert "verified on the CDN" in allowed.stdout
