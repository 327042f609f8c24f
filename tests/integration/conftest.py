"""Fixtures that start the real `releasecontrol-server` process over mTLS on ephemeral ports."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from releasecontrol_server.launcher import LocalServer

# The integration tests run the same launcher tools use: a real
# `releasecontrol-server --dev` process on ephemeral loopback ports.
RunningServer = LocalServer


def start_server(home: Path, **extra_env: str) -> LocalServer:
    """Start `releasecontrol-server --dev` in `home` with `extra_env`; wait until it serves."""
    return LocalServer(home, env={"RELEASECONTROL_LOG_LEVEL": "INFO", **extra_env}).start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LocalServer]:
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
