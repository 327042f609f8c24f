"""`releasectl interactive` on a real pseudo-terminal, publishing to a real server."""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest
from pexpect.fdpexpect import fdspawn

from releasecontrol.manifest import load_feature_folder
from releasectl.launcher import LocalServer

RELEASECTL = [sys.executable, "-c", "from releasectl import main; main()"]
DOWN, ENTER = "\x1b[B", "\r"


def write_feature(root: Path, feature_id: str, version: str) -> Path:
    folder = root / "features" / feature_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.js").write_text(f"export const version = '{version}';\n")
    manifest = {
        "id": feature_id,
        "version": version,
        "entry": "index.js",
        "routes": [f"/{feature_id}"],
        "compat": {"host": "^2.0.0"},
        "assets": [{"path": "index.js"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def env_for(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))}
    env["RELEASECONTROL_HOME"] = str(home)
    env["XDG_RUNTIME_DIR"] = str(home.parent / "runtime")  # where `releasectl dev` records itself
    return env


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
    with LocalServer(tmp_path / "home") as running:
        yield running


class Terminal(fdspawn):
    """`releasectl interactive` on a pseudo-terminal of its own (40 x 120), as pexpect.spawn
    gives, but started by subprocess: pexpect forks and runs Python before exec, and this
    test process runs gRPC's threads (other tests' channels), whose at-fork handlers can
    leave that child a broken copy of them (it died printing an epoll error). subprocess
    forks and execs in C; `setsid --ctty` makes the terminal the CLI's own, so Ctrl-C
    reaches it as a keypress does."""

    def __init__(self, cwd: Path, env: dict[str, str], argv: list[str]) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(
            ["setsid", "--ctty", *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env,
        )
        os.close(slave)
        super().__init__(master, encoding="utf-8", timeout=30)

    def sendintr(self) -> None:
        self.send("\x03")  # the terminal turns it into SIGINT for the CLI

    def close(self) -> None:  # type: ignore[override]
        self.process.wait(timeout=30)
        self.exitstatus = self.process.returncode
        super().close()


def spawn(cwd: Path, home: Path) -> Terminal:
    return Terminal(cwd, env_for(home), [*RELEASECTL, "interactive"])


@pytest.mark.integration
class TestOnATerminal:
    def test_publishing_a_chosen_feature_to_canary_reaches_the_server(
        self, server: LocalServer, tmp_path: Path
    ) -> None:
        """Menu → publish → the feature → canary → yes publishes it as canary, then quits."""
        folder = write_feature(tmp_path, "checkout", "1.0.0")
        server.client().publish(load_feature_folder(folder, feature_id="checkout"))
        write_feature(tmp_path, "checkout", "1.1.0")
        write_feature(tmp_path, "search", "0.1.0")

        child = spawn(tmp_path, server.home)
        child.expect("What do you want to do")
        child.send(DOWN + ENTER)  # "Publish a feature"
        child.expect("Which feature")
        child.expect(r"search \(0\.1\.0\)")
        child.send(ENTER)  # checkout (1.1.0), listed first
        child.expect("To which channel")
        child.send(DOWN + ENTER)  # canary
        child.expect(r"Publish checkout 1\.1\.0 to canary\?")
        child.send("y")
        child.expect(r"published checkout 1\.1\.0 as canary")
        child.expect("verified on the CDN")
        child.expect("What do you want to do")
        child.send(DOWN + DOWN + ENTER)  # "Quit"
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0

        (feature,) = server.client().get_status().features
        assert (feature.stable_version, feature.canary.version) == ("1.0.0", "1.1.0")

    def test_saying_no_publishes_nothing(self, server: LocalServer, tmp_path: Path) -> None:
        """Declining the confirmation sends no publish request."""
        write_feature(tmp_path, "checkout", "1.0.0")
        child = spawn(tmp_path, server.home)
        child.expect("What do you want to do")
        child.send(DOWN + ENTER)
        child.expect("Which feature")
        child.send(ENTER)
        child.expect("To which channel")
        child.send(ENTER)  # stable
        child.expect(r"Publish checkout 1\.0\.0 to stable\?")
        child.send("n")
        child.expect("not published")
        child.expect("What do you want to do")
        child.send(DOWN + DOWN + ENTER)
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert list(server.client().get_status().features) == []

    def test_starting_the_local_system_runs_dev_until_ctrl_c(self, tmp_path: Path) -> None:
        """The first entry runs `releasectl dev` in the foreground until Ctrl-C stops it."""
        env = env_for(tmp_path / "home")
        env["RELEASECONTROL_GRPC_LISTEN"] = "127.0.0.1:0"
        env["RELEASECONTROL_ORIGIN_HTTP_LISTEN"] = "127.0.0.1:0"
        env["RELEASECONTROL_ADMIN_LISTEN"] = "127.0.0.1:0"
        child = Terminal(tmp_path, env, [*RELEASECTL, "interactive"])
        child.expect("What do you want to do")
        child.send(ENTER)  # the first entry
        child.expect("ReleaseControl is running")
        assert (tmp_path / "home" / "run" / "endpoints.json").is_file()
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert not (tmp_path / "home" / "run" / "endpoints.json").exists()


class TestWithoutATerminal:
    def test_with_no_terminal_at_all_it_names_the_commands_and_exits_2(
        self, tmp_path: Path
    ) -> None:
        """Piped stdin and stdout: one stderr line naming `releasectl dev` and `publish`, exit 2."""
        done = subprocess.run(
            [*RELEASECTL, "interactive"],
            cwd=tmp_path,
            env=env_for(tmp_path / "home"),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert done.stdout == ""
        assert done.stderr.count("\n") == 1
        assert "`releasectl dev`" in done.stderr
        assert "`releasectl publish --feature F" in done.stderr

    @pytest.mark.parametrize(
        "redirect",
        [
            pytest.param("< /dev/null", id="stdin-not-a-terminal"),
            pytest.param("| cat", id="stdout-not-a-terminal"),
        ],
    )
    def test_half_a_terminal_is_not_enough(self, tmp_path: Path, redirect: str) -> None:
        """With only one of stdin and stdout on a terminal it still refuses, exit 2, no menu."""
        command = " ".join(shlex.quote(part) for part in [*RELEASECTL, "interactive"])
        child = Terminal(
            tmp_path,
            env_for(tmp_path / "home"),
            ["bash", "-c", f"set -o pipefail; {command} {redirect}; echo exit=$?"],
        )
        child.expect(pexpect.EOF)
        child.close()
        output = child.before
        assert "interactive mode needs a terminal" in output
        assert "What do you want to do" not in output
        assert "exit=2" in output
