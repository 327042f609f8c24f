"""The origin heals itself: each file hosts read, deleted, truncated, garbled or rolled back
on the origin, is written back with the signed bytes, at start and by the periodic check."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import host_view, make_feature, releasectl, start_server

from releasecontrol.index import REMOTE_INDEX_PATH
from releasectl.launcher import LocalServer


def publish(server: LocalServer, work: Path, feature: str, version: str) -> None:
    make_feature(work, feature, version)
    done = releasectl(server, work, "publish", "--feature", feature)
    assert done.returncode == 0, done.stderr


def shard_of(origin: Path) -> Path:
    return next((origin / "index").rglob("*.json"))


def delete_shard(origin: Path, old: dict[str, bytes]) -> Path:
    path = shard_of(origin)
    path.unlink()
    return path


def truncate_top(origin: Path, old: dict[str, bytes]) -> Path:
    path = origin / REMOTE_INDEX_PATH
    path.write_bytes(path.read_bytes()[:50])
    return path


def garble_manifest(origin: Path, old: dict[str, bytes]) -> Path:
    path = origin / "features/checkout/1.1.0/manifest.json"
    path.write_bytes(b"\x00garbage\xff" * 8)
    return path


def roll_back_releases(origin: Path, old: dict[str, bytes]) -> Path:
    path = origin / "features/checkout/releases.json"
    path.write_bytes(old["features/checkout/releases.json"])
    return path


def delete_root(origin: Path, old: dict[str, bytes]) -> Path:
    path = origin / "roots/1.json"
    path.unlink()
    return path


# Each damages one file hosts read and returns it; `old` holds earlier signed bytes.
DAMAGE: dict[str, Callable[[Path, dict[str, bytes]], Path]] = {
    "shard-deleted": delete_shard,
    "top-truncated": truncate_top,
    "manifest-garbled": garble_manifest,
    "releases-rolled-back": roll_back_releases,
    "root-deleted": delete_root,
}


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_start_restores_what_was_damaged(kind: str, tmp_path: Path) -> None:
    """Damaged while the server was down: the next start writes the signed bytes back, and a
    host verifies the origin again."""
    home = tmp_path / "home"
    server = start_server(home)
    try:
        publish(server, tmp_path, "checkout", "1.0.0")
        origin = server.origin_dir
        old = {
            "features/checkout/releases.json": (
                origin / "features/checkout/releases.json"
            ).read_bytes()
        }
        publish(server, tmp_path, "checkout", "1.1.0")
        publish(server, tmp_path, "search", "2.0.0")
        signed = {p: p.read_bytes() for p in origin.rglob("*") if p.is_file()}
    finally:
        server.stop()
    damaged = DAMAGE[kind](origin, old)
    again = start_server(home)
    try:
        assert wait_until(lambda: damaged.is_file() and damaged.read_bytes() == signed[damaged])
        assert "origin repaired" in again.log()
        view = host_view(lambda path: (origin / path).read_bytes(), again.trust_path)
        assert view.releases.stable == "1.1.0"
    finally:
        again.stop()


def test_the_periodic_check_restores_while_serving(tmp_path: Path) -> None:
    """With a 1 s interval, a shard deleted while the server runs is back within seconds."""
    server = start_server(tmp_path / "home", RELEASECONTROL_ORIGIN_CHECK_INTERVAL_SECONDS="1")
    try:
        publish(server, tmp_path, "checkout", "1.0.0")
        shard = shard_of(server.origin_dir)
        signed = shard.read_bytes()
        shard.unlink()
        assert wait_until(lambda: shard.is_file() and shard.read_bytes() == signed)
        assert f"restored index file path={shard.relative_to(server.origin_dir)}" in server.log()
    finally:
        server.stop()
