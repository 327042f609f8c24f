"""Fixtures that start the real `releasecontrol-server` process over mTLS on ephemeral ports."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from releasecontrol.index import REMOTE_INDEX_PATH, ReleasesIndex, releases_path
from releasecontrol.root import root_path
from releasecontrol.shards import RemoteIndex, Shard, shard_path
from releasecontrol.trust import TrustStore
from releasecontrol.verifier import Refusal, Verifier
from releasectl.launcher import LocalServer

# The integration tests run the same launcher tools use: a real
# `releasecontrol-server --dev` process on ephemeral loopback ports.
RunningServer = LocalServer


KILLPOINTS = Path(__file__).resolve().parents[1] / "killpoints"


def killed_at(point: str, nth: int = 1) -> dict[str, str]:
    """The environment of a server that SIGKILLs itself the `nth` time it passes `point` of
    the write path (tests/killpoints/sitecustomize.py)."""
    path = os.pathsep.join(p for p in (str(KILLPOINTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "RELEASECONTROL_TEST_KILL": f"{point}:{nth}"}


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


def origin_files(origin_dir: Path) -> dict[str, bytes]:
    """Every file on a filesystem origin, by origin path (temporary files left out)."""
    return {
        p.relative_to(origin_dir).as_posix(): p.read_bytes()
        for p in sorted(origin_dir.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def changed_paths(before: dict[str, bytes], after: dict[str, bytes]) -> set[str]:
    """The origin paths written (new or other bytes) between two `origin_files`."""
    return {path for path, data in after.items() if before.get(path) != data}


@dataclass(frozen=True)
class HostView:
    """What a host verifies of one feature, each file checked as docs/host-protocol.md says."""

    top: RemoteIndex
    shard_path: str
    shard: Shard
    releases: ReleasesIndex
    releases_bytes: bytes
    signed_by: frozenset[str]
    """The online keys whose signatures counted on releases.json."""


def host_view(
    read: Callable[[str], bytes], trust_path: Path, feature_id: str = "checkout"
) -> HostView:
    """Verify `feature_id` on an origin (`read`: origin path -> bytes) as a host does: the
    roots from the trust file at `trust_path` (dev keys allowed, as `releasectl dev` makes
    them), remote-index.json, the feature's shard and its releases.json, with the real
    clock. Raises Refusal for what a host would refuse."""
    verifier = Verifier(TrustStore.from_file(trust_path), allow_dev_keys=True)
    now = datetime.now(UTC)

    def fetch_root(version: int) -> bytes:
        try:
            return read(root_path(version))
        except FileNotFoundError:
            raise Refusal("fetch", root_path(version), "missing on the origin") from None

    top = verifier.top(read(REMOTE_INDEX_PATH), now, fetch_root).model
    name, pin = top.shard_of(feature_id)
    assert pin is not None, f"remote-index.json pins no shard for {feature_id}"
    path = shard_path(top.bits, name)
    shard = verifier.shard(top, name, read(path), now).model
    assert feature_id in shard.features, f"{path} does not list {feature_id}"
    data = read(releases_path(feature_id))
    releases = verifier.releases(feature_id, shard.features[feature_id], data, now)
    return HostView(top, path, shard, releases.model, data, releases.keyids)


def folder_read(origin_dir: Path) -> Callable[[str], bytes]:
    """Read a filesystem origin for `host_view`."""
    return lambda path: (origin_dir / path).read_bytes()


def online_keyids(origin_dir: Path, version: int = 1) -> list[str]:
    """The online keys root `version` on the origin lists (its index role)."""
    root = json.loads((origin_dir / root_path(version)).read_bytes())
    return list(root["signed"]["roles"]["index"]["keyids"])


RELEASECTL = [sys.executable, "-c", "from releasectl import main; main()"]


def releasectl(
    server: RunningServer | Path, cwd: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """Run `releasectl ARGS` with only RELEASECONTROL_HOME set (the server's home, or the path
    given), as after `make dev`: no other RELEASECONTROL_ or FEATURE_ variable leaks in from
    the test's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))}
    env["RELEASECONTROL_HOME"] = str(server if isinstance(server, Path) else server.home)
    return subprocess.run(
        [*RELEASECTL, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
