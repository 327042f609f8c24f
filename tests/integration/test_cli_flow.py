"""The README's flow, typed as a user would: `releasectl` processes against the real server."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import RELEASECTL, RunningServer, make_feature, releasectl
from dev_process import DevProcess, releasectl_in

from releasecontrol.fetch import Fetcher
from releasecontrol.host import FeatureHost
from releasecontrol.trust import TrustStore
from releasecontrol_server.pki import ensure_dev_pki

pytestmark = pytest.mark.integration


def test_the_readme_flow_works_with_no_flags_beyond_the_contract(
    server: RunningServer, tmp_path: Path
) -> None:
    """Publish, canary, refused promote, skip-soak promote, rollback, fallback and status."""
    make_feature(tmp_path, "checkout", "1.2.0")
    done = releasectl(server, tmp_path, "publish", "--feature", "checkout")
    assert done.returncode == 0, done.stderr
    assert "checkout 1.2.0" in done.stdout and "stable" in done.stdout

    make_feature(tmp_path, "checkout", "1.3.0")
    done = releasectl(server, tmp_path, "publish", "--feature", "checkout", "--channel", "canary")
    assert done.returncode == 0, done.stderr

    refused = releasectl(
        server, tmp_path, "release", "promote", "--feature", "checkout", "--version", "1.3.0"
    )
    assert refused.returncode == 5  # refused by a release rule
    assert refused.stderr.count("\n") == 1 and refused.stderr.startswith("error: ")
    assert "still soaking" in refused.stderr and "left" in refused.stderr

    promoted = releasectl(
        server,
        tmp_path,
        "release",
        "promote",
        "--feature",
        "checkout",
        "--version",
        "1.3.0",
        "--skip-soak",
        "--reason",
        "hotfix",
        "--ticket",
        "INC-9",
        "--actor",
        "alice",
    )
    assert promoted.returncode == 0, promoted.stderr

    rolled = releasectl(
        server,
        tmp_path,
        "release",
        "rollback",
        "--feature",
        "checkout",
        "--version",
        "1.2.0",
        "--reason",
        "error rate",
    )
    assert rolled.returncode == 0, rolled.stderr
    fallback = releasectl(
        server,
        tmp_path,
        "channel",
        "fallback",
        "--feature",
        "checkout",
        "--version",
        "1.3.0",
        "--to",
        "canary",
    )
    assert fallback.returncode == 0, fallback.stderr
    canary = releasectl(
        server,
        tmp_path,
        "release",
        "canary",
        "--feature",
        "checkout",
        "--version",
        "1.3.0",
        "--soak",
        "0s",
    )
    assert canary.returncode == 0, canary.stderr

    status = releasectl(server, tmp_path, "release", "status", "--output", "json")
    assert status.returncode == 0, status.stderr
    (feature,) = json.loads(status.stdout)
    assert feature["feature_id"] == "checkout"
    assert (feature["stable"], feature["canary"]["version"]) == ("1.2.0", "1.3.0")
    assert feature["sequence"] == 6

    table = releasectl(server, tmp_path, "release", "status")
    assert table.returncode == 0
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["FEATURE", "STABLE", "CANARY"]
    assert row.split()[:3] == ["checkout", "1.2.0", "1.3.0"]

    # What the CLI did is what hosts load: pinning the dev trust file (the root key), a
    # stable host gets 1.2.0 and a canary host 1.3.0, from releases.json sequence 6.
    trust = TrustStore.from_file(server.home / "keys" / "trust.json")
    with Fetcher() as fetcher:
        for channel, version in (("stable", "1.2.0"), ("canary", "1.3.0")):
            host = FeatureHost(
                server.origin_url + "remote-index.json",
                trust,
                state_dir=tmp_path / f"host-{channel}",
                allow_insecure_dev_keys=True,
                channel=channel,
                fetcher=fetcher,
            )
            report = host.refresh()
            assert report.ok, report.refused
            assert report.loaded == {"checkout": version}
            assert host.features["checkout"].releases_sequence == 6

    history = server.client().list_transitions(feature_id="checkout").transitions
    promote = next(t for t in history if t.sequence == 3)
    assert (promote.actor, promote.reason, promote.ticket) == ("alice", "hotfix", "INC-9")
    # --actor left out: the principal from the client certificate is recorded.
    dev_operator = "spiffe://releasecontrol.dev/dev-operator"
    assert history[0].actor == dev_operator
    assert promote.principal == dev_operator  # who really did it, beside --actor alice

    # The same history from the command line, newest first.
    shown = releasectl(server, tmp_path, "release", "history", "--feature", "checkout")
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.split()[:4] == ["WHEN", "FEATURE", "SEQ", "CHANGE"]
    assert [row.split()[2] for row in rows] == ["6", "5", "4", "3", "2", "1"]
    promote_row = rows[3]
    assert f"alice (by {dev_operator})" in promote_row and "hotfix [INC-9]" in promote_row
    last_two = releasectl(server, tmp_path, "release", "history", "-n", "2", "--output", "json")
    assert last_two.returncode == 0, last_two.stderr
    records = json.loads(last_two.stdout)
    assert [r["sequence"] for r in records] == [6, 5]
    assert records[0]["principal"] == dev_operator
    refused = releasectl(server, tmp_path, "release", "history", "--feature", "Bad Id")
    assert refused.returncode != 0 and "--feature" in refused.stderr


@pytest.mark.parametrize(
    ("args", "text", "code"),
    [
        pytest.param(
            ["release", "canary", "--feature", "checkout", "--version", "9.9.9"],
            "not published",
            3,
            id="unknown-version",
        ),
        pytest.param(
            ["release", "rollback", "--feature", "nosuch", "--version", "1.0.0"],
            "publish one first",
            3,
            id="unknown-feature",
        ),
        pytest.param(
            ["release", "history", "--feature", "nosuch"],
            "nosuch",
            3,
            id="history-of-an-unknown-feature",
        ),
        pytest.param(
            ["release", "rollback", "--feature", "checkout", "--version", "1.2.0"],
            "already stable",
            5,
            id="refused-by-a-rule",
        ),
        pytest.param(
            [
                "release",
                "promote",
                "--feature",
                "checkout",
                "--version",
                "1.2.0",
                "--expected-sequence",
                "7",
            ],
            "expected 7",
            4,
            id="stale-sequence",
        ),
    ],
)
def test_refusals_are_one_line_and_change_nothing(
    server: RunningServer, tmp_path: Path, args: list[str], text: str, code: int
) -> None:
    """A refused command prints one `error:` line, exits with the code of what happened
    (not found 3, conflict 4, refused by a rule 5), and the sequence stays put. History of
    a feature that does not exist is an error, not an empty table."""
    make_feature(tmp_path, "checkout", "1.2.0")
    assert releasectl(server, tmp_path, "publish", "--feature", "checkout").returncode == 0
    done = releasectl(server, tmp_path, *args)
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert text in done.stderr
    assert "Traceback" not in done.stderr
    assert server.client().get_status().global_sequence == 1


def test_without_a_server_the_cli_says_how_to_start_one(tmp_path: Path) -> None:
    """With nothing running, status fails in one line that names `releasectl dev`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASECONTROL_")}
    env["RELEASECONTROL_HOME"] = str(tmp_path / "empty-home")
    done = subprocess.run(
        [*RELEASECTL, "release", "status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "releasectl dev" in done.stderr and done.stderr.count("\n") == 1


def test_the_dev_system_opens_the_admin_ui_to_this_machine(server: RunningServer) -> None:
    """After `releasectl dev` (no auth mode) the admin UI answers without a sign-in."""
    import urllib.request

    admin_url = server.endpoints["admin_url"]
    assert admin_url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(admin_url) as reply:
        assert reply.status == 200
        assert "/signin" not in reply.url  # not redirected to the sign-in page


def test_status_watch_redraws_the_table_on_every_change(
    server: RunningServer, tmp_path: Path
) -> None:
    """`release status --watch` draws the table from the watch feed, then again with a line
    naming each change as it commits, until Ctrl-C (exit 0)."""
    make_feature(tmp_path, "checkout", "1.2.0")
    assert releasectl(server, tmp_path, "publish", "--feature", "checkout").returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))}
    env["RELEASECONTROL_HOME"] = str(server.home)
    # Ctrl-C reaches it as in a terminal, even where this suite runs as a background job
    # (whose children inherit SIGINT ignored, and Python then installs no handler for it).
    interruptible = [
        RELEASECTL[0],
        "-c",
        "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + RELEASECTL[2],
    ]
    with subprocess.Popen(
        [*interruptible, "release", "status", "--watch"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as watcher:
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(
            target=lambda: [lines.put(line) for line in watcher.stdout or ()], daemon=True
        ).start()

        def read_until(text: str) -> list[str]:
            seen: list[str] = []
            deadline = time.monotonic() + 30
            while not any(text in line for line in seen):
                assert time.monotonic() < deadline, (text, seen)
                try:
                    seen.append(lines.get(timeout=1))
                except queue.Empty:
                    assert watcher.poll() is None, "the watch ended"
            return seen

        try:
            first = read_until("checkout")
            assert first[0].split()[:3] == ["FEATURE", "STABLE", "CANARY"]
            assert first[-1].split()[:3] == ["checkout", "1.2.0", "-"]
            make_feature(tmp_path, "checkout", "1.3.0")
            published = releasectl(
                server, tmp_path, "publish", "--feature", "checkout", "--channel", "canary"
            )
            assert published.returncode == 0, published.stderr
            redrawn = read_until("1.3.0  ")  # the table's row, after the change line
            assert any("published checkout 1.3.0 as canary" in line for line in redrawn)
            assert redrawn[-1].split()[:3] == ["checkout", "1.2.0", "1.3.0"]
        finally:
            watcher.send_signal(signal.SIGINT)
            try:
                code = watcher.wait(timeout=20)
            except subprocess.TimeoutExpired:
                watcher.kill()  # else leaving the `with` would wait for it forever
                raise AssertionError("release status --watch did not stop on Ctrl-C") from None
        assert code == 0
        assert watcher.stderr is not None and watcher.stderr.read() == ""


def test_dev_is_found_from_any_folder_and_runs_once_per_home(tmp_path: Path) -> None:
    """`releasectl dev` started in a project folder, with no RELEASECONTROL_HOME anywhere:
    a subfolder finds it by searching upward, an unrelated folder by the per-user record;
    a second `releasectl dev` in the project is refused (exit 4) naming the first, whose
    endpoints.json stays; after the first is killed, the next one replaces its record."""
    project, elsewhere, runtime = tmp_path / "project", tmp_path / "elsewhere", tmp_path / "rt"
    (project / "src" / "deep").mkdir(parents=True)
    elsewhere.mkdir()
    runtime.mkdir(mode=0o700)
    first = DevProcess(project, runtime)
    try:
        for folder in (project / "src" / "deep", elsewhere):
            done = releasectl_in(folder, runtime, "release", "status")
            assert done.returncode == 0, (folder, done.stderr)
            assert "no features yet" in done.stdout

        before = (first.home / "run" / "endpoints.json").read_bytes()
        second = releasectl_in(project, runtime, "dev", timeout=30)
        assert second.returncode == 4, (second.stdout, second.stderr)
        assert second.stderr == (
            f"error: a ReleaseControl server is already running on {first.home} "
            f"(pid {first.process.pid}, addresses grpc {first.endpoints['grpc']}, origin "
            f"{first.endpoints['origin_url']}, admin {first.endpoints['admin_url']}): use it, "
            "stop it first, or pass another --home\n"
        )
        assert (first.home / "run" / "endpoints.json").read_bytes() == before
    finally:
        first.process.kill()  # no clean shutdown: endpoints.json stays behind
        first.process.wait()
    assert (first.home / "run" / "endpoints.json").is_file()

    again = DevProcess(project, runtime)
    try:
        assert again.endpoints["pid"] == again.process.pid
        assert "named a server that is no longer running" in again.log.read_text()
        assert releasectl_in(elsewhere, runtime, "release", "status").returncode == 0
    finally:
        assert again.stop() == 0
    # Stopped: no record is left for other folders to find.
    nothing = releasectl_in(elsewhere, runtime, "release", "status")
    assert nothing.returncode == 1 and "looked for" in nothing.stderr, nothing.stderr


def test_another_pki_s_client_gets_one_line_naming_the_tls_problem(
    server: RunningServer, tmp_path: Path
) -> None:
    """A CLI whose CA and client certificate come from another PKI: one `error:` line that
    says the TLS handshake failed and which files were used, none of gRPC's own log lines,
    exit 7 (unavailable), and no change."""
    other = tmp_path / "other-home"
    ensure_dev_pki(other / "pki")
    done = releasectl(other, tmp_path, "--server", server.grpc, "release", "status")
    assert done.returncode == 7, (done.stdout, done.stderr)
    assert done.stdout == ""
    assert done.stderr.startswith("error: the TLS handshake with") and done.stderr.count("\n") == 1
    assert str(other / "pki" / "ca.pem") in done.stderr
    assert "ssl_transport_security" not in done.stderr
