"""The real server for the benchmarks: `releasecontrol-server` over mTLS, auth on (rpc-token).

`BenchServer` seeds the state directory (optionally), creates an admin token,
and starts the server process through `LocalServer`, the launcher the
integration tests and `releasectl verify` use. Callers talk to it with
`grpc.aio` channels carrying the dev client certificate and the bearer token,
exactly what `releasectl` sends.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc import aio

from bench._seed import Seeded, seed_home
from releasecontrol.client import resolve_connection
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc
from releasecontrol_server.auth.tokens import create_token
from releasectl.launcher import LocalServer

AUTH_ENV = {"RELEASECONTROL_AUTH_MODE": "rpc-token"}

SERVER_CODE: Path | None = None
"""Another checkout whose server (and `releasectl`) to measure, for before/after figures:
its `clients` and `server` folders go first on the child processes' PYTHONPATH."""


NOOP_METHOD = "/bench.v1.Noop/Ping"
"""A no-op RPC the bench server serves behind its interceptors (see bench/_noop)."""
_NOOP_DIR = Path(__file__).resolve().parent / "_noop"


def code_env() -> dict[str, str]:
    """PYTHONPATH for child processes that should run `SERVER_CODE` (empty: this checkout)."""
    if SERVER_CODE is None:
        return {}
    return {"PYTHONPATH": f"{SERVER_CODE / 'clients'}:{SERVER_CODE / 'server'}"}


def _server_env() -> dict[str, str]:
    """The server child's additions: the no-op service, and `SERVER_CODE` if set."""
    paths = [str(_NOOP_DIR)]
    if SERVER_CODE is not None:
        paths += [str(SERVER_CODE / "clients"), str(SERVER_CODE / "server")]
    return {"PYTHONPATH": ":".join(paths), "BENCH_NOOP_SERVICE": "1"}


def _rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of process `pid`, in KiB; 0 when unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class BenchServer:
    """A seeded server process in rpc-token mode, and channels to it; use with `with`."""

    def __init__(
        self,
        home: Path,
        *,
        features: int = 0,
        versions: int = 0,
        with_assets: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.home = home
        self.env = {
            **AUTH_ENV,
            "RELEASECONTROL_LOG_LEVEL": "WARNING",
            **_server_env(),
            **(env or {}),
        }
        self.features = features
        self.versions = versions
        self.with_assets = with_assets
        self.seeded: Seeded | None = None
        self.token = ""
        self.start_seconds = 0.0
        self.server: LocalServer | None = None
        self._channels: list[aio.Channel] = []

    def start(self) -> BenchServer:
        self.home.mkdir(parents=True, exist_ok=True)
        if self.features:
            self.seeded = seed_home(
                self.home,
                features=self.features,
                versions=self.versions,
                env=self.env,
                with_assets=self.with_assets,
            )
        self.token = create_token(self.home / "auth" / "tokens.json", "bench", ["admin"])
        server = LocalServer(self.home, env=self.env, start_timeout_seconds=120)
        started = time.perf_counter()
        server.start()
        self.start_seconds = time.perf_counter() - started
        self.server = server
        return self

    @property
    def running(self) -> LocalServer:
        if self.server is None:
            raise RuntimeError("the bench server is not started")
        return self.server

    @property
    def pid(self) -> int:
        return self.running.pid

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used so far."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        return _rss_kib(self.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return _rss_kib(self.pid, "VmHWM") / 1024

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata `releasectl` sends in rpc-token mode."""
        return (("authorization", f"Bearer {self.token}"),)

    def client_env(self) -> dict[str, str]:
        """Environment for a `releasectl` subprocess talking to this server."""
        return {
            "RELEASECONTROL_HOME": str(self.home),
            "RELEASECONTROL_ADDR": self.running.grpc,
            "RELEASECONTROL_TOKEN": self.token,
            **code_env(),
        }

    def channel(self, **options: Any) -> aio.Channel:
        """A new grpc.aio channel over mTLS with the dev client certificate (its own connection)."""
        settings = resolve_connection(server=self.running.grpc, home=self.home, environ={})
        credentials = grpc.ssl_channel_credentials(
            root_certificates=settings.ca_pem,
            private_key=settings.key_pem,
            certificate_chain=settings.cert_pem,
        )
        # A distinct channel argument keeps grpc from sharing one connection between channels.
        args = [("grpc.bench_channel_id", len(self._channels)), *options.items()]
        channel = aio.secure_channel(settings.target, credentials, options=args)
        self._channels.append(channel)
        return channel

    def stub(self, channel: aio.Channel) -> pb_grpc.ReleaseControlStub:
        return pb_grpc.ReleaseControlStub(channel)

    async def close_channels(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self) -> BenchServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
