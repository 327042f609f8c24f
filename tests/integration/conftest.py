"""Fixtures that start the real `releasecontrol-server` process over mTLS on ephemeral ports."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from releasecontrol.client import ReleaseControlClient, resolve_connection

START_TIMEOUT_SECONDS = 30


@dataclass
class RunningServer:
    """A real server process and where it listens."""

    home: Path
    process: subprocess.Popen[bytes]
    grpc: str
    origin_url: str
    env: dict[str, str]
    log_path: Path
    clients: list[ReleaseControlClient] = field(default_factory=list)

    @property
    def origin_dir(self) -> Path:
        return self.home / "origin"

    def client(self, **kwargs: Any) -> ReleaseControlClient:
        client = ReleaseControlClient(
            resolve_connection(server=self.grpc, home=self.home, environ={}), **kwargs
        )
        self.clients.append(client)
        return client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        for client in self.clients:
            client.close()
        self.clients.clear()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))}
    env.update(
        RELEASECONTROL_HOME=str(home),
        RELEASECONTROL_GRPC_LISTEN="127.0.0.1:0",
        RELEASECONTROL_ORIGIN_HTTP_LISTEN="127.0.0.1:0",
        RELEASECONTROL_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


def start_server(home: Path, **extra_env: str) -> RunningServer:
    """Start `releasecontrol-server --dev` and wait until it has written its endpoints."""
    env = server_env(home, **extra_env)
    endpoints = home / "run" / "endpoints.json"
    endpoints.unlink(missing_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    log_path = home / f"server-{time.monotonic_ns()}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "releasecontrol_server.main", "--dev"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        if endpoints.exists():
            data = json.loads(endpoints.read_text())
            if data.get("pid") == process.pid:
                return RunningServer(home, process, data["grpc"], data["origin_url"], env, log_path)
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not start in {START_TIMEOUT_SECONDS}s:\n{log_path.read_text()}")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    running = start_server(tmp_path / "home")
    yield running
    running.stop()


def make_feature(
    root: Path,
    feature_id: str = "checkout",
    version: str = "1.0.0",
    *,
    files: dict[str, bytes] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write features/<id>/manifest.json and its built files under `root`; return the folder."""
    folder = root / "features" / feature_id
    folder.mkdir(parents=True, exist_ok=True)
    files = files or {
        "index.js": f"export const version = '{version}';\n".encode(),
        "styles/main.css": f"/* {feature_id} {version} */ body {{}}\n".encode(),
    }
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    manifest = {
        "id": feature_id,
        "version": version,
        "entry": next(iter(files)),
        "routes": [f"/{feature_id}"],
        "compat": {"host": "^2.0.0", "shared": {"react": "^18.2.0"}},
        "assets": [{"path": p} for p in files],
        **(extra or {}),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
