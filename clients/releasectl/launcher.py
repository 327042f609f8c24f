"""Start a real `releasecontrol-server --dev` process and know where it listens.

For tools and tests that need the whole control plane for a moment
(`releasectl verify remote-cdn`, `releasectl interactive` tests, integration
fixtures): the process is started with its own state directory, listens on
ephemeral loopback ports by default, and is ready once it has written
`<home>/run/endpoints.json` naming its own pid.

    with LocalServer(tmp_home) as server:
        with server.client() as client:
            client.get_status()

The environment of the child is this process's, without any `RELEASECONTROL_*`
or `FEATURE_*` variable (so a developer's shell cannot point the throwaway
server at their real keys or ports), plus `RELEASECONTROL_HOME`, the two listen
addresses, and the caller's overrides.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from releasecontrol.client import ReleaseControlClient, resolve_connection

__all__ = ["LocalServer", "LocalServerError", "server_environment"]

DEFAULT_START_TIMEOUT_SECONDS = 30.0
DEFAULT_STOP_TIMEOUT_SECONDS = 15.0
_POLL_SECONDS = 0.05
_LOG_TAIL_LINES = 40
_ISOLATED_PREFIXES = ("RELEASECONTROL_", "FEATURE_")


class LocalServerError(RuntimeError):
    """The server process did not start (or died); `reason` is one line, `log` its output."""

    def __init__(self, reason: str, log: str) -> None:
        tail = "\n".join(log.splitlines()[-_LOG_TAIL_LINES:])
        super().__init__(f"{reason}\n--- server log (last lines) ---\n{tail}" if tail else reason)
        self.reason = reason
        self.log = log

    @property
    def last_error(self) -> str:
        """The server's own one-line reason (`error: …`) if it printed one, else `reason`."""
        for line in reversed(self.log.splitlines()):
            if line.startswith("error: "):
                return line.removeprefix("error: ").strip()
        return self.reason


def server_environment(
    home: Path,
    overrides: Mapping[str, str] | None = None,
    *,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The child's environment: `base` (default os.environ) without ReleaseControl variables,
    then the state directory and ephemeral loopback listen addresses (gRPC, origin, admin UI,
    beacons),
    then `overrides`."""
    source = os.environ if base is None else base
    env = {k: v for k, v in source.items() if not k.startswith(_ISOLATED_PREFIXES)}
    env.update(
        RELEASECONTROL_HOME=str(home),
        RELEASECONTROL_GRPC_LISTEN="127.0.0.1:0",
        RELEASECONTROL_ORIGIN_HTTP_LISTEN="127.0.0.1:0",
        RELEASECONTROL_ADMIN_LISTEN="127.0.0.1:0",
        RELEASECONTROL_BEACON_LISTEN="127.0.0.1:0",
    )
    env.update(overrides or {})
    return env


class LocalServer:
    """One `python -m releasecontrol_server.main --dev --home HOME` child process.

    `start()` (or entering the `with` block) returns once the server is
    serving; `stop()` sends SIGTERM, waits, and kills it if it does not exit in
    time. Raises LocalServerError, with the server's log, when it exits early
    or is not ready within `start_timeout_seconds`.
    """

    def __init__(
        self,
        home: Path,
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        start_timeout_seconds: float = DEFAULT_START_TIMEOUT_SECONDS,
        stop_timeout_seconds: float = DEFAULT_STOP_TIMEOUT_SECONDS,
        log_path: Path | None = None,
    ) -> None:
        self.home = Path(home).absolute()
        """The state directory (`--home`): PKI, keys, database, origin, run/endpoints.json."""
        self.env = server_environment(self.home, env)
        """The child's whole environment."""
        self.python = python
        self.start_timeout_seconds = start_timeout_seconds
        self.stop_timeout_seconds = stop_timeout_seconds
        self._log_path = log_path
        self.log_path: Path | None = None
        """Where the child's stdout and stderr go (a new file per start under `home/logs`)."""
        self.process: subprocess.Popen[bytes] | None = None
        self.endpoints: dict[str, Any] = {}
        """What the server wrote to endpoints.json: "grpc", "origin_url", "admin_url", "pid"."""
        self._clients: list[ReleaseControlClient] = []

    # -- where it listens ---------------------------------------------------

    @property
    def endpoints_path(self) -> Path:
        return self.home / "run" / "endpoints.json"

    @property
    def grpc(self) -> str:
        """The gRPC address, host:port (mTLS)."""
        return str(self._ready()["grpc"])

    @property
    def origin_url(self) -> str:
        """The CDN origin's public URL, ending in `/` (its remote-index.json is right under it)."""
        return str(self._ready()["origin_url"])

    @property
    def origin_dir(self) -> Path:
        """The filesystem origin (the default `origin_dir` of a dev server)."""
        return self.home / "origin"

    @property
    def trust_path(self) -> Path:
        """The dev trust file the server made (`keys/trust.json`)."""
        return self.home / "keys" / "trust.json"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server is not started")
        return self.process.pid

    def _ready(self) -> dict[str, Any]:
        if not self.endpoints:
            raise RuntimeError("the server is not started: call start() or use `with`")
        return self.endpoints

    def log(self) -> str:
        """Everything the server has printed so far."""
        if self.log_path is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> LocalServer:
        """Start the process and wait until it serves; raises LocalServerError."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the server is already running")
        self.home.mkdir(parents=True, exist_ok=True)
        self.endpoints_path.unlink(missing_ok=True)
        self.endpoints = {}
        log_path = self._log_path or self.home / "logs" / f"server-{time.time_ns()}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    self.python,
                    "-m",
                    "releasecontrol_server.main",
                    "--dev",
                    "--home",
                    str(self.home),
                ],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.endpoints = self._wait_for_endpoints(self.process)
        except BaseException:
            self._terminate()
            raise
        return self

    def _wait_for_endpoints(self, process: subprocess.Popen[bytes]) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_timeout_seconds
        while True:
            code = process.poll()
            if code is not None:
                raise LocalServerError(
                    f"the server exited with code {code} before it was ready", self.log()
                )
            data = self._read_endpoints()
            if data is not None and data.get("pid") == process.pid:
                return data
            if time.monotonic() >= deadline:
                raise LocalServerError(
                    f"the server did not write {self.endpoints_path} within "
                    f"{self.start_timeout_seconds:g}s",
                    self.log(),
                )
            time.sleep(_POLL_SECONDS)

    def _read_endpoints(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.endpoints_path.read_bytes())
        except (OSError, ValueError):
            return None  # not written yet, or a previous server's file
        if not isinstance(data, dict) or not isinstance(data.get("grpc"), str):
            return None
        if not isinstance(data.get("origin_url"), str):
            return None
        return data

    def client(self, **kwargs: Any) -> ReleaseControlClient:
        """A client of this server with its dev client certificate; closed by stop()."""
        settings = resolve_connection(server=self.grpc, home=self.home, environ={})
        client = ReleaseControlClient(settings, **kwargs)
        self._clients.append(client)
        return client

    def stop(self) -> int | None:
        """SIGTERM, wait `stop_timeout_seconds`, then SIGKILL; the exit code (None if never
        started). Safe to call twice."""
        for client in self._clients:
            client.close()
        self._clients.clear()
        self.endpoints = {}
        return self._terminate()

    def _terminate(self) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout_seconds)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
