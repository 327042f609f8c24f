"""`releasectl dev`: the whole system on one machine, in the foreground.

One `releasectl dev` per state directory: it holds an exclusive lock
(`fcntl.flock` on `<home>/run/dev.lock`) for as long as it runs, so a second
one on the same home stops at once, naming the first (its pid and addresses),
instead of overwriting the first one's `run/endpoints.json`. The kernel drops
the lock when the process ends, however it ends; a record left by a server that
is gone is replaced, with a note.

It also records itself (home and pid) in a per-user file,
`releasecontrol.client.running_dev_record()`, so that `releasectl` run from any
other folder finds it (`releasecontrol.client.find_home`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import click

from releasecontrol.client import (
    process_alive,
    read_running_devs,
    running_dev_record,
    state_home,
)
from releasectl._common import CliState, ExitCode, OneLineError

LOCK_NAME = "dev.lock"
"""In `<home>/run/`: held (flock) by the running `releasectl dev`; holds its pid."""


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("server_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def dev(ctx: click.Context, server_args: tuple[str, ...]) -> None:
    """Run the whole system locally, in the foreground.

    The control plane on SQLite, the CDN origin and the admin UI, with dev
    defaults.

    Generates the dev PKI and signing keys on first run under the state
    directory (--home; default ./.releasecontrol), then prints the URLs. Extra
    arguments go to releasecontrol-server. Stop it with Ctrl-C. One runs per
    state directory: a second one on the same home is refused, naming the first.

    \b
    Example:
      releasectl --home ./.releasecontrol dev
    """
    state = ctx.find_object(CliState) or CliState()
    home = (_home_argument(server_args) or state.home or state_home()).absolute()
    with hold_home(home) as note:
        if note:
            click.echo(note, err=True)
        with recorded(home):
            # Imported here: the CLI must start (and --help work) without the server's
            # dependencies being loaded.
            from releasecontrol_server.main import main as server_main

            argv = ["--dev"]
            if state.home is not None:
                argv += ["--home", str(state.home)]
            code = server_main([*argv, *server_args])
    raise SystemExit(code)


def _home_argument(args: tuple[str, ...]) -> Path | None:
    """A `--home H` (or `--home=H`) among the arguments passed on to the server."""
    for i, arg in enumerate(args):
        if arg == "--home" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--home="):
            return Path(arg.removeprefix("--home="))
    return None


# -- one server per state directory --------------------------------------------


def _endpoints(home: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((home / "run" / "endpoints.json").read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_server(pid: int) -> bool:
    """Whether `pid` is alive and (where /proc tells) a ReleaseControl process, not an
    unrelated one that was given the pid of a server that is gone."""
    if not process_alive(pid):
        return False
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (or not ours to read): alive is all we know
    return b"releasec" in command


def _addresses(endpoints: dict[str, Any] | None) -> str:
    if not endpoints or not isinstance(endpoints.get("grpc"), str):
        return "still starting"
    parts = [f"grpc {endpoints['grpc']}"]
    for name, key in (("origin", "origin_url"), ("admin", "admin_url")):
        if isinstance(endpoints.get(key), str) and endpoints[key]:
            parts.append(f"{name} {endpoints[key]}")
    return "addresses " + ", ".join(parts)


def _already_running(home: Path, pid: object, endpoints: dict[str, Any] | None) -> OneLineError:
    who = f"pid {pid}" if isinstance(pid, int) else "pid unknown"
    return OneLineError(
        f"a ReleaseControl server is already running on {home} ({who}, "
        f"{_addresses(endpoints)}): use it, stop it first, or pass another --home",
        ExitCode.CONFLICT,
    )


def _lock_holder(lock: IO[bytes]) -> int | None:
    lock.seek(0)
    text = lock.read(64).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


@contextlib.contextmanager
def hold_home(home: Path) -> Iterator[str | None]:
    """Hold `<home>/run/dev.lock` for the block; yields a note when a record left by a
    server that is gone was removed. Raises OneLineError (exit CONFLICT) when another
    server runs on `home`: one holding the lock, or one (started otherwise) whose pid
    `run/endpoints.json` names and that is still running."""
    run = home / "run"
    run.mkdir(parents=True, exist_ok=True)
    lock = (run / LOCK_NAME).open("a+b")  # not truncated: the holder's pid stays readable
    try:
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _already_running(home, _lock_holder(lock), _endpoints(home)) from None
        note = None
        endpoints = _endpoints(home)
        endpoints_path = run / "endpoints.json"
        if endpoints is not None or endpoints_path.exists():
            pid = (endpoints or {}).get("pid")
            if isinstance(pid, int) and pid != os.getpid() and _is_server(pid):
                raise _already_running(home, pid, endpoints)
            gone = f"pid {pid}" if isinstance(pid, int) else "no pid"
            note = (
                f"note: {endpoints_path} named a server that is no longer running ({gone}); "
                "replacing it"
            )
            endpoints_path.unlink(missing_ok=True)
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n".encode())
        lock.flush()
        yield note
    finally:
        lock.close()  # closing the last descriptor releases the flock


# -- the per-user record of running dev servers ----------------------------------------


@contextlib.contextmanager
def _record_lock(record: Path) -> Iterator[None]:
    with record.with_name(record.name + ".lock").open("a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        yield


def _update_record(record: Path, home: Path, add: bool) -> None:
    record.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with _record_lock(record):
        servers = [
            s
            for s in read_running_devs(record)
            if process_alive(s["pid"]) and s["pid"] != os.getpid() and s["home"] != str(home)
        ]
        if add:
            servers.append(
                {
                    "home": str(home),
                    "pid": os.getpid(),
                    "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                }
            )
        temporary = record.with_name(f".{record.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps({"servers": servers}, indent=2) + "\n")
        temporary.replace(record)


@contextlib.contextmanager
def recorded(home: Path) -> Iterator[None]:
    """Record this process as the `releasectl dev` of `home` in the per-user file for the
    block (best effort: a record that cannot be written only means other folders do not
    find this server by it)."""
    record = running_dev_record()
    if record is not None:
        try:
            _update_record(record, home, add=True)
        except OSError as exc:
            print(f"note: cannot record this server in {record}: {exc}", file=sys.stderr)
            record = None
    try:
        yield
    finally:
        if record is not None:
            with contextlib.suppress(OSError):
                _update_record(record, home, add=False)
