"""The remote-validation flow against real processes: the launcher, publish's CDN read-back,
`verify remote-cdn`, `dev-host` and `release status --index-url`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from conftest import make_feature, online_keyids

from releasecontrol.devhost import render_page
from releasectl import main
from releasectl.launcher import LocalServer, LocalServerError

pytestmark = pytest.mark.integration

RELEASECTL = [sys.executable, "-c", "from releasectl import main; main()"]


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
        server = LocalServer(tmp_path / "home", env={"RELEASECONTROL_GRPC_LISTEN": "nonsense"})
        with pytest.raises(LocalServerError) as caught:
            server.start()
        assert "exited with code 1" in caught.value.reason
        assert caught.value.last_error.startswith("RELEASECONTROL_GRPC_LISTEN is 'nonsense'")
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
        # Signed by the online key root 1 lists, not by the root key the trust file pins.
        assert cdn["signed_by"] == online_keyids(local.origin_dir)
        pinned = [k["keyid"] for k in json.loads(local.trust_path.read_text())["keys"]]
        assert not set(cdn["signed_by"]) & set(pinned)

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

    def test_a_tampered_releases_json_on_the_cdn_fails_the_read_back(self, tmp_path: Path) -> None:
        """A CDN serving a releases.json whose bytes differ from the signed pin fails publish."""
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
            make_feature(tmp_path, "checkout", "1.0.0")
            assert releasectl(local.home, tmp_path, "publish", "-f", "checkout").returncode == 0

            cdn.root = tmp_path / "tampered"
            shutil.copytree(origin, cdn.root)
            releases = cdn.root / "features" / "checkout" / "releases.json"
            releases.write_bytes(releases.read_bytes().replace(b'"1.0.0"', b'"1.0.1"'))
            # The same version again: nothing changes on the server, the read-back still runs.
            done = releasectl(local.home, tmp_path, "publish", "-f", "checkout")
            assert_one_line_error(
                done,
                "not verified on the CDN",
                "features/checkout/releases.json has SHA-256",
                "its shard pins",
            )
            assert done.stdout.startswith("already published checkout 1.0.0")


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


class TestVerifyRemoteCdn:
    def test_it_passes_end_to_end_and_prints_the_checklist(self, tmp_path: Path) -> None:
        """`releasectl verify remote-cdn` exits 0 with a ✓ line per step, as a user runs it."""
        done = releasectl(tmp_path / "unused-home", tmp_path, "verify", "remote-cdn", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        lines = done.stdout.splitlines()
        assert lines[-1] == "all checks passed"
        assert all(line.startswith("✓ ") for line in lines[:-1]), lines
        for expected in [
            "✓ published checkout 1.0.0 as stable and verified it on the CDN (sequence 1)",
            "✓ host loaded checkout 1.0.0, 2 artifacts verified",
            "✓ deployed checkout 1.1.0 as canary, soak 0s (sequence 2)",
            "✓ canary host follows: checkout 1.1.0, 2 artifacts verified",
            "✓ stable host stays on checkout 1.0.0",
            "✓ both hosts follow: checkout 1.1.0",
            "✓ both hosts follow the rollback: checkout 1.0.0, 2 artifacts verified",
        ]:
            assert expected in lines
        assert any(
            line.startswith("✓ a new host refuses a tampered releases.json") for line in lines
        )
        assert done.stderr == ""
        # Nothing of the user's own state is touched.
        assert not (tmp_path / "unused-home").exists()

    def test_keep_leaves_the_state_and_json_lists_every_step(self, tmp_path: Path) -> None:
        """--keep --output json reports ok, every step, and a state directory that still exists."""
        done = releasectl(
            tmp_path, tmp_path, "verify", "remote-cdn", "--keep", "-o", "json", timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        report = json.loads(done.stdout)
        kept = Path(report["kept"])
        try:
            assert report["ok"] is True
            assert all(step["ok"] for step in report["steps"]) and len(report["steps"]) >= 10
            assert (kept / "home" / "origin" / "remote-index.json").is_file()
            assert list((kept / "home" / "logs").iterdir())
        finally:
            shutil.rmtree(kept, ignore_errors=True)

    def test_a_failing_step_is_named_in_one_line_and_exits_1(self, tmp_path: Path) -> None:
        """When the control plane cannot start (production refuses dev mode), exit 1 naming it."""
        done = releasectl(tmp_path, tmp_path, "verify", "remote-cdn", NODE_ENV="production")
        assert_one_line_error(done, "start the control plane failed: the server exited with code 1")
        assert done.stdout == "✗ start the control plane\n"


@pytest.fixture
def published(local: LocalServer, tmp_path: Path) -> LocalServer:
    """A server with checkout 1.0.0 published as stable from tmp_path/features."""
    make_feature(tmp_path, "checkout", "1.0.0")
    done = releasectl(local.home, tmp_path, "publish", "-f", "checkout")
    assert done.returncode == 0, done.stderr
    return local


class TestDevHost:
    def start(self, home: Path, cwd: Path, *args: str, **env: str) -> tuple[Any, str, list[str]]:
        process = subprocess.Popen(
            [*RELEASECTL, "dev-host", "--listen", "127.0.0.1:0", *args],
            cwd=cwd,
            env=cli_env(home, **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        assert process.stdout is not None
        while True:
            line = process.stdout.readline()
            if not line:
                process.wait(timeout=10)
                pytest.fail(f"dev-host exited: {lines} {process.stderr and process.stderr.read()}")
            lines.append(line.rstrip("\n"))
            if line.startswith("Stop with Ctrl-C."):
                (url,) = [x.split()[3] for x in lines if x.startswith("dev host at ")]
                return process, url, lines

    def stop(self, process: Any) -> None:
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            pytest.fail("dev-host did not stop on SIGTERM")
        assert process.returncode == 0, stderr

    def test_it_loads_and_serves_only_verified_bytes(
        self, published: LocalServer, tmp_path: Path
    ) -> None:
        """With only RELEASECONTROL_HOME set it reads the dev origin; status and assets verified."""
        process, url, lines = self.start(published.home, tmp_path, "--interval", "1s")
        try:
            assert any("allowing its insecure dev key" in line for line in lines)
            assert any(published.origin_url in line for line in lines)
            status, body = http_get(url + "status.json")
            assert status == 200
            snapshot = json.loads(body)
            assert snapshot["loaded"]["checkout"]["version"] == "1.0.0"
            assert snapshot["refused"] == {}
            built = (tmp_path / "features" / "checkout" / "index.js").read_bytes()
            assert http_get(url + "features/checkout/index.js") == (200, built)
            assert http_get(url + "features/checkout/missing.js")[0] == 404
            assert http_get(url + "features/other/index.js")[0] == 404
            # The browser page loads the features itself, pinning the same trust file (the
            # root key) and index; /server shows what the Python host verified.
            status, page = http_get(url)
            assert status == 200 and b'src="/static/dev-host.js"' in page
            config = json.loads(
                page.split(b'<script type="application/json" id="config">')[1].split(b"</script>")[
                    0
                ]
            )
            assert config["indexUrl"] == published.origin_url + "remote-index.json"
            assert config["trust"] == json.loads(published.trust_path.read_text())
            assert config["allowDevKeys"] is True
            assert http_get(url + "static/dev-host.js")[0] == 200
            status, page = http_get(url + "server")
            assert status == 200 and b"checkout" in page and b"1.0.0" in page

            # A canary does not move a stable host; a promotion does, on the next refresh.
            make_feature(tmp_path, "checkout", "1.1.0")
            done = releasectl(
                published.home,
                tmp_path,
                "publish",
                "-f",
                "checkout",
                "--channel",
                "canary",
                "--soak",
                "0s",
            )
            assert done.returncode == 0, done.stderr

            def status() -> dict[str, Any]:
                snapshot: dict[str, Any] = json.loads(http_get(url + "status.json")[1])
                return snapshot

            # Once the host verified the top level of the canary's change, it still serves 1.0.0.
            assert wait_for(lambda: status()["remote_sequence"] == 2)
            assert status()["loaded"]["checkout"]["version"] == "1.0.0"
            assert status()["root_version"] == 1
            published.client().promote("checkout", "1.1.0")

            assert wait_for(lambda: status()["loaded"]["checkout"]["version"] == "1.1.0")
            new_built = (tmp_path / "features" / "checkout" / "index.js").read_bytes()
            assert http_get(url + "features/checkout/index.js") == (200, new_built)
        finally:
            self.stop(process)

    def test_a_canary_host_follows_the_canary(self, published: LocalServer, tmp_path: Path) -> None:
        """--channel canary loads the running canary version."""
        make_feature(tmp_path, "checkout", "1.1.0")
        done = releasectl(
            published.home, tmp_path, "publish", "-f", "checkout", "--channel", "canary"
        )
        assert done.returncode == 0, done.stderr
        process, url, lines = self.start(published.home, tmp_path, "--channel", "canary")
        try:
            assert "  loaded   checkout 1.1.0 (canary, sequence 2)" in lines
            loaded = json.loads(http_get(url + "status.json")[1])["loaded"]["checkout"]
            assert (loaded["version"], loaded["channel"]) == ("1.1.0", "canary")
        finally:
            self.stop(process)

    def test_without_an_index_url_or_a_dev_server_it_says_what_to_set(self, tmp_path: Path) -> None:
        """No FEATURE_REMOTE_INDEX_URL and no running dev server: one line naming the variable."""
        done = releasectl(tmp_path / "home", tmp_path, "dev-host", "--listen", "127.0.0.1:0")
        assert_one_line_error(done, "FEATURE_REMOTE_INDEX_URL is not set", "releasectl dev")

    def test_the_page_escapes_what_the_cdn_said(self) -> None:
        """Text from the CDN (reasons, ids) is HTML-escaped on the page."""

        class Stand:
            def __init__(self) -> None:
                self.features: dict[str, Any] = {}
                self.refused = {"<b>x</b>": "bad <script>alert(1)</script> & more"}

            def snapshot(self) -> dict[str, Any]:
                return {}

            def refresh(self) -> None:
                return None

        page = render_page(
            Stand(),
            index_url="http://x/<i>",
            channel="stable",
            interval_seconds=5,
            last_refresh="-",
        )
        assert "<script>" not in page and "<b>x</b>" not in page and "<i>" not in page
        assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; more" in page


class TestReleaseStatusAtAnIndex:
    def test_it_shows_what_stable_and_canary_hosts_would_load(
        self, published: LocalServer, tmp_path: Path
    ) -> None:
        """The table has the stable and the running canary version, verified."""
        make_feature(tmp_path, "checkout", "1.1.0")
        assert (
            releasectl(
                published.home, tmp_path, "publish", "-f", "checkout", "--channel", "canary"
            ).returncode
            == 0
        )
        url = published.origin_url + "remote-index.json"
        done = releasectl(
            published.home, tmp_path, "release", "status", "--index-url", url, "--allow-dev-keys"
        )
        assert done.returncode == 0, done.stderr
        header, row = done.stdout.splitlines()
        assert header.split() == ["FEATURE", "STABLE", "CANARY", "SEQ", "ARTIFACTS", "VERIFIED"]
        assert row.split() == ["checkout", "1.0.0", "1.1.0", "2", "2", "yes"]

        as_json = releasectl(
            published.home,
            tmp_path,
            "release",
            "status",
            "--index-url",
            url,
            "--allow-dev-keys",
            "-o",
            "json",
        )
        report = json.loads(as_json.stdout)
        (feature,) = report["features"]
        assert (feature["stable"]["version"], feature["canary"]["version"]) == ("1.0.0", "1.1.0")
        assert report["refused"] == {} and report["remote_sequence"] == 2

    def test_a_dev_key_is_refused_without_the_flag(
        self, published: LocalServer, tmp_path: Path
    ) -> None:
        """Without --allow-dev-keys the dev-signed index is refused, exit 1, with the fix."""
        url = published.origin_url + "remote-index.json"
        done = releasectl(published.home, tmp_path, "release", "status", "--index-url", url)
        assert_one_line_error(done, "would refuse remote-index.json", "dev key", "--allow-dev-keys")

    def test_a_tampered_releases_json_is_refused_with_the_reason(
        self, local: LocalServer, tmp_path: Path
    ) -> None:
        """Published with --no-verify, then tampered on the origin: status refuses it, exit 1."""
        make_feature(tmp_path, "checkout", "1.0.0")
        done = releasectl(local.home, tmp_path, "publish", "-f", "checkout", "--no-verify")
        assert done.returncode == 0, done.stderr
        assert "verified on the CDN" not in done.stdout
        releases = local.origin_dir / "features" / "checkout" / "releases.json"
        releases.write_bytes(releases.read_bytes().replace(b'"1.0.0"', b'"1.0.1"'))

        url = local.origin_url + "remote-index.json"
        done = releasectl(
            local.home, tmp_path, "release", "status", "--index-url", url, "--allow-dev-keys"
        )
        assert_one_line_error(done, "would refuse checkout", "releases.json")
        assert done.stdout.splitlines()[1].split() == ["checkout", "-", "-", "-", "-", "refused"]


class TestMockCdn:
    def test_it_serves_the_origin_with_cdn_headers(self, tmp_path: Path) -> None:
        """Index files revalidate (no-cache, ETag, 304); artifacts are immutable."""
        origin = tmp_path / "home" / "origin"
        (origin / "artifacts").mkdir(parents=True)
        (origin / "remote-index.json").write_bytes(b'{"signed": {}}')
        (origin / "artifacts" / ("a" * 64)).write_bytes(b"console.log(1)")
        process = subprocess.Popen(
            [*RELEASECTL, "mock-cdn", "--listen", "127.0.0.1:0", "--output", "json"],
            cwd=tmp_path,
            env=cli_env(tmp_path / "home"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert process.stdout is not None
            text = ""
            while not text.endswith("}\n"):
                line = process.stdout.readline()
                assert line, "mock-cdn exited before printing its URL"
                text += line
            started = json.loads(text)
            assert Path(started["dir"]) == origin.resolve()
            url = started["url"]

            with urllib.request.urlopen(url + "remote-index.json", timeout=10) as answer:
                assert answer.read() == b'{"signed": {}}'
                assert answer.headers["Cache-Control"] == "no-cache"
                etag = answer.headers["ETag"]
            request = urllib.request.Request(
                url + "remote-index.json", headers={"If-None-Match": etag}
            )
            with pytest.raises(urllib.error.HTTPError) as not_modified:
                urllib.request.urlopen(request, timeout=10)
            assert not_modified.value.code == 304
            not_modified.value.close()
            with urllib.request.urlopen(url + "artifacts/" + "a" * 64, timeout=10) as answer:
                assert "immutable" in answer.headers["Cache-Control"]
            assert http_get(url + "nothing-here.json")[0] == 404
        finally:
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0, stderr

    def test_a_missing_folder_is_one_line(self, tmp_path: Path) -> None:
        """Serving a folder that does not exist fails in one line naming it and --dir."""
        done = releasectl(tmp_path / "home", tmp_path, "mock-cdn", "--dir", "nowhere")
        assert_one_line_error(done, "no origin folder at nowhere", "--dir")


@pytest.mark.parametrize(
    ("command", "names"),
    [
        pytest.param(["mock-cdn"], ["--dir", "--listen", "--output"], id="mock-cdn"),
        pytest.param(
            ["dev-host"],
            ["--listen", "--interval", "--channel", "--state-dir", "--output"],
            id="dev-host",
        ),
        pytest.param(["verify"], ["remote-cdn"], id="verify"),
        pytest.param(["verify", "remote-cdn"], ["--keep", "--output"], id="verify-remote-cdn"),
        pytest.param(["interactive"], [], id="interactive"),
        pytest.param(
            ["release", "status"], ["--index-url", "--allow-dev-keys", "--output"], id="status"
        ),
        pytest.param(["publish"], ["--no-verify"], id="publish"),
    ],
)
def test_help_names_the_options_and_gives_an_example(command: list[str], names: list[str]) -> None:
    """`--help` of each new command exits 0, names its options and shows an example."""
    result = CliRunner().invoke(main, [*command, "--help"], prog_name="releasectl")
    assert result.exit_code == 0, result.output
    for name in names:
        assert name in result.stdout
    assert "Example:\n    releasectl " in result.stdout
