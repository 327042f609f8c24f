"""`releasectl dev` as a user starts it: a process in a project folder, no RELEASECONTROL_HOME.

The state directory is the default, `<folder>/.releasecontrol`; the listen
addresses are ephemeral loopback ports (so tests never meet a developer's
server on the default ports); the per-user runtime folder, where `releasectl
dev` records itself for other folders, is the test's own (`XDG_RUNTIME_DIR`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from conftest import RELEASECTL

START_SECONDS = 30.0


def user_env(runtime: Path) -> dict[str, str]:
    """A shell's environment after `source .venv/bin/activate`, with nothing of ours set but
    the test's own runtime folder (what `releasectl dev` records itself in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))}
    env["XDG_RUNTIME_DIR"] = str(runtime)
    return env


def releasectl_in(
    folder: Path, runtime: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`releasectl ARGS` run in `folder` as a user would: no RELEASECONTROL_ variable."""
    return subprocess.run(
        [*RELEASECTL, *args],
        cwd=folder,
        env=user_env(runtime),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class DevProcess:
    """`releasectl dev` started in `folder`; `endpoints` once it serves."""

    def __init__(self, folder: Path, runtime: Path) -> None:
        self.folder = folder
        self.home = folder / ".releasecontrol"
        env = user_env(runtime)
        env.update(
            RELEASECONTROL_GRPC_LISTEN="127.0.0.1:0",
            RELEASECONTROL_ORIGIN_HTTP_LISTEN="127.0.0.1:0",
            RELEASECONTROL_ADMIN_LISTEN="127.0.0.1:0",
        )
        self.log = folder / "dev.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [*RELEASECTL, "dev"],
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.endpoints: dict[str, Any] = self._wait()

    def _wait(self) -> dict[str, Any]:
        deadline = time.monotonic() + START_SECONDS
        path = self.home / "run" / "endpoints.json"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"releasectl dev exited: {self.log.read_text()}")
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and data.get("pid") == self.process.pid:
                return data
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"releasectl dev did not start: {self.log.read_text()}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode
