"""How `releasectl` finds the running server from any folder, and one `releasectl dev` a home.

Issue 13, item 12: the CLI found a running `releasectl dev` only from the folder
it ran in (or with RELEASECONTROL_HOME). Now, as git finds its repository: the
variable, else a `.releasecontrol/` here or in the nearest folder above, else the
per-user record `releasectl dev` writes; and when nothing is found the error
says where it looked. Item 13: a second `releasectl dev` on the same home is
refused, naming the first, instead of overwriting its run/endpoints.json.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from releasecontrol import errors
from releasecontrol.client import find_home, resolve_connection, running_dev_record
from releasectl import main
from releasectl.dev import LOCK_NAME


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty working folder, no ReleaseControl variables, a runtime folder of our own."""
    for name in list(os.environ):
        if name.startswith(("RELEASECONTROL_", "FEATURE_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="releasectl")


def make_home(home: Path, grpc: str = "127.0.0.1:7001", pid: int | None = None) -> Path:
    """A state directory as a running server leaves it: pki/ca.pem and run/endpoints.json."""
    (home / "pki").mkdir(parents=True)
    (home / "pki" / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (home / "run").mkdir()
    endpoints = {
        "grpc": grpc,
        "origin_url": "http://127.0.0.1:7002/",
        "admin_url": "http://127.0.0.1:7003/_admin",
        "pid": os.getpid() if pid is None else pid,
    }
    (home / "run" / "endpoints.json").write_text(json.dumps(endpoints))
    return home


def record(environ: dict[str, str] | None, *entries: tuple[Path, int]) -> Path:
    path = running_dev_record(environ)
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    servers = [{"home": str(home), "pid": pid} for home, pid in entries]
    path.write_text(json.dumps({"servers": servers}))
    return path


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


class TestFindHome:
    def test_the_variable_wins(self, isolated: Path) -> None:
        make_home(isolated / "work" / ".releasecontrol")
        found = find_home({"RELEASECONTROL_HOME": "/srv/rc"}, cwd=isolated / "work")
        assert (found.path, found.found) == (Path("/srv/rc"), True)

    def test_a_state_directory_in_a_folder_above_is_found(self, isolated: Path) -> None:
        """From project/src/deep, project/.releasecontrol is the home, as git finds .git."""
        home = make_home(isolated / "project" / ".releasecontrol")
        deep = isolated / "project" / "src" / "deep"
        deep.mkdir(parents=True)
        found = find_home({}, cwd=deep)
        assert (found.path, found.found) == (home, True)
        assert found.how == f"found above {deep}"

    def test_the_nearest_one_wins(self, isolated: Path) -> None:
        make_home(isolated / "project" / ".releasecontrol")
        inner = make_home(isolated / "project" / "sub" / ".releasecontrol")
        assert find_home({}, cwd=isolated / "project" / "sub").path == inner

    def test_elsewhere_the_running_dev_server_is_found_by_its_record(self, isolated: Path) -> None:
        """From a folder with no .releasecontrol above it, the per-user record names the home
        of the running `releasectl dev` (the newest still running)."""
        environ = {"XDG_RUNTIME_DIR": str(isolated / "runtime")}
        older = make_home(isolated / "a" / ".releasecontrol")
        newer = make_home(isolated / "b" / ".releasecontrol")
        path = record(environ, (older, os.getpid()), (newer, os.getpid()))
        found = find_home(environ, cwd=isolated / "work")
        assert (found.path, found.found) == (newer, True)
        assert str(path) in found.how and f"pid {os.getpid()}" in found.how

    def test_a_record_of_a_server_that_is_gone_is_ignored(self, isolated: Path) -> None:
        environ = {"XDG_RUNTIME_DIR": str(isolated / "runtime")}
        record(environ, (make_home(isolated / "a" / ".releasecontrol"), dead_pid()))
        assert not find_home(environ, cwd=isolated / "work").found

    def test_without_xdg_runtime_dir_the_record_is_in_the_user_cache(self, isolated: Path) -> None:
        assert running_dev_record({"HOME": "/home/u"}) == Path(
            "/home/u/.cache/releasecontrol/dev-servers.json"
        )
        assert running_dev_record({"XDG_RUNTIME_DIR": "/run/user/7", "HOME": "/home/u"}) == Path(
            "/run/user/7/releasecontrol/dev-servers.json"
        )

    def test_nothing_found_says_where_it_looked(self, isolated: Path) -> None:
        environ = {"XDG_RUNTIME_DIR": str(isolated / "runtime")}
        found = find_home(environ, cwd=isolated / "work")
        assert not found.found and found.path == isolated / "work" / ".releasecontrol"
        assert "RELEASECONTROL_HOME (not set)" in found.looked
        assert f"{isolated / 'work'} and every folder above it" in found.looked
        assert str(isolated / "runtime" / "releasecontrol" / "dev-servers.json") in found.looked


class TestResolveFromAnotherFolder:
    def test_the_address_recorded_above_is_used(self, isolated: Path) -> None:
        """From a subfolder, the server recorded in the home above is the target."""
        make_home(isolated / "project" / ".releasecontrol", grpc="127.0.0.1:7101")
        (isolated / "project" / "features").mkdir()
        os.chdir(isolated / "project" / "features")
        settings = resolve_connection(environ={})
        assert settings.target == "127.0.0.1:7101"
        assert settings.target_source.endswith(".releasecontrol/run/endpoints.json")

    def test_the_address_of_the_running_dev_server_is_used_from_anywhere(
        self, isolated: Path
    ) -> None:
        environ = {"XDG_RUNTIME_DIR": str(isolated / "runtime")}
        home = make_home(isolated / "elsewhere" / ".releasecontrol", grpc="127.0.0.1:7201")
        record(environ, (home, os.getpid()))
        assert resolve_connection(environ=environ).target == "127.0.0.1:7201"

    def test_nothing_found_is_one_line_naming_where_it_looked(self) -> None:
        """The command fails in one line that lists the places searched and the fix."""
        result = run("release", "status")
        assert result.exit_code == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: no ReleaseControl state directory found: looked for ")
        assert "RELEASECONTROL_HOME (not set)" in line and "every folder above it" in line
        assert "dev-servers.json" in line and "start `releasectl dev`" in line

    def test_nothing_found_with_an_address_still_says_where_it_looked(self) -> None:
        with pytest.raises(errors.ConfigError, match="every folder above it"):
            resolve_connection(server="rc.example:443", environ={})


# -- one `releasectl dev` per state directory (item 13) -----------------------------------


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """`releasecontrol_server.main` replaced: records its argv and returns 0 at once."""
    seen: list[list[str]] = []
    module = types.ModuleType("releasecontrol_server.main")
    module.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "releasecontrol_server.main", module)
    yield seen


class TestOneDevPerHome:
    def test_a_second_dev_on_the_same_home_is_refused_naming_the_first(
        self, isolated: Path, fake_server: list[list[str]]
    ) -> None:
        """While another process holds run/dev.lock, `releasectl dev` exits 4 with one line
        naming that server's pid and addresses, and leaves its endpoints.json alone."""
        home = make_home(isolated / "home", pid=4242)
        before = (home / "run" / "endpoints.json").read_bytes()
        with (home / "run" / LOCK_NAME).open("a+b") as held:
            fcntl.flock(held.fileno(), fcntl.LOCK_EX)
            held.write(b"4242\n")
            held.flush()
            result = run("--home", str(home), "dev")
        assert result.exit_code == 4, result.output
        (line,) = result.stderr.splitlines()
        assert line == (
            f"error: a ReleaseControl server is already running on {home} (pid 4242, addresses "
            "grpc 127.0.0.1:7001, origin http://127.0.0.1:7002/, admin "
            "http://127.0.0.1:7003/_admin): use it, stop it first, or pass another --home"
        )
        assert fake_server == []  # the server never started
        assert (home / "run" / "endpoints.json").read_bytes() == before

    def test_a_running_server_started_without_dev_is_refused_too(
        self, isolated: Path, fake_server: list[list[str]]
    ) -> None:
        """No lock, but endpoints.json names a live ReleaseControl process: refused."""
        server = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(30)", "releasecontrol-server"]
        )
        try:
            # Until the child has exec'd, its command line is still pytest's (a loaded
            # machine showed it): wait for the name the check looks for.
            cmdline = Path(f"/proc/{server.pid}/cmdline")
            deadline = time.monotonic() + 10
            while b"releasecontrol-server" not in cmdline.read_bytes():
                assert time.monotonic() < deadline, "the stand-in server never started"
                time.sleep(0.01)
            home = make_home(isolated / "home", pid=server.pid)
            result = run("--home", str(home), "dev")
        finally:
            server.kill()
            server.wait()
        assert result.exit_code == 4, result.output
        assert f"already running on {home} (pid {server.pid}, addresses" in result.stderr
        assert fake_server == []

    def test_a_stale_record_is_replaced_with_a_note(
        self, isolated: Path, fake_server: list[list[str]]
    ) -> None:
        """endpoints.json of a server that is gone (killed): removed, a note says so, and the
        server starts."""
        pid = dead_pid()
        home = make_home(isolated / "home", pid=pid)
        result = run("--home", str(home), "dev")
        assert result.exit_code == 0, result.output
        assert result.stderr == (
            f"note: {home / 'run' / 'endpoints.json'} named a server that is no longer running "
            f"(pid {pid}); replacing it\n"
        )
        assert not (home / "run" / "endpoints.json").exists()
        assert fake_server == [["--dev", "--home", str(home)]]

    def test_dev_records_itself_for_other_folders_while_it_runs(
        self, isolated: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """While the server runs, the per-user record names its home and pid; after, not."""
        record_path = running_dev_record()
        assert record_path is not None
        seen: list[dict[str, object]] = []

        def server_main(argv: list[str]) -> int:
            seen.append(json.loads(record_path.read_text()))
            return 0

        module = types.ModuleType("releasecontrol_server.main")
        module.main = server_main  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "releasecontrol_server.main", module)
        assert run("dev").exit_code == 0
        home = (isolated / "work" / ".releasecontrol").absolute()
        (during,) = seen
        assert [(s["home"], s["pid"]) for s in during["servers"]] == [  # type: ignore[index]
            (str(home), os.getpid())
        ]
        assert json.loads(record_path.read_text()) == {"servers": []}
        # The lock is free again: a next `releasectl dev` starts.
        assert run("dev").exit_code == 0
