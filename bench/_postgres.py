"""A PostgreSQL server of the tests' (and benchmarks') own: `initdb` and `pg_ctl` in a
temporary folder, listening on a free loopback port, stopped at the end. Never a system
service.

The binaries come from PATH or Debian's /usr/lib/postgresql/<version>/bin (`.ci/run`
installs the `postgresql` package). PostgreSQL refuses to run as root, so as root the
server runs as the `postgres` user the package creates.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

__all__ = ["PostgresServer", "postgres_bin"]


def postgres_bin(name: str) -> str:
    """The path of PostgreSQL program `name` (initdb, pg_ctl, …); raises RuntimeError, saying
    how to install it, when there is none."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if versions:
        return versions[-1]
    raise RuntimeError(
        f"PostgreSQL's {name} is not installed: `apt-get install postgresql` (.ci/run does)"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder; `url(name)` for a database on it."""

    def __init__(self, *, fsync: bool = False) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="rc-postgres-"))
        self.data = self.folder / "data"
        self.port = _free_port()
        self._fsync = fsync
        self._names = itertools.count(1)
        self._user: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam("postgres")
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self._run(
            postgres_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        self.start()

    def _run(self, *argv: str) -> None:
        command = list(argv)
        if self._user is not None:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed: {done.stderr or done.stdout}")

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.folder} -c max_connections=200 "
            f"-c fsync={'on' if self._fsync else 'off'} -c full_page_writes=off"
        )
        self._run(
            postgres_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.folder / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(postgres_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        """Stop it (as a crash: immediate) and start it again."""
        self.stop("immediate")
        self.start()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        name = f"rc_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def sql(self, url: str, statement: str) -> list[tuple[object, ...]]:
        """Run `statement` on the database at `url`; its rows."""
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(statement.encode())
            return cursor.fetchall() if cursor.description is not None else []


@contextlib.contextmanager
def running_postgres(*, fsync: bool = False) -> Iterator[PostgresServer]:
    server = PostgresServer(fsync=fsync)
    try:
        yield server
    finally:
        server.close()
