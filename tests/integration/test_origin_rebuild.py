"""`releasectl origin rebuild`: a lost origin comes back whole, and a restored database is
reconciled with an origin that is ahead of it (sequences only go up)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import RunningServer, make_feature, releasectl, start_server

from releasecontrol.host import FeatureHost
from releasecontrol.trust import TrustStore


def publish(server: RunningServer, root: Path, feature: str, version: str, *extra: str) -> None:
    make_feature(root, feature, version)
    done = releasectl(server, root, "publish", "--feature", feature, *extra)
    assert done.returncode == 0, done.stderr


def origin_snapshot(origin: Path) -> dict[str, bytes]:
    return {
        p.relative_to(origin).as_posix(): p.read_bytes() for p in origin.rglob("*") if p.is_file()
    }


def remote_status(server: RunningServer, cwd: Path) -> dict[str, tuple[str | None, int]]:
    """What a stable host reading the origin over HTTP loads, verified: id -> (stable, seq)."""
    shown = releasectl(
        server,
        cwd,
        "release",
        "status",
        "--index-url",
        server.origin_url + "remote-index.json",
        "--allow-dev-keys",
        "--output",
        "json",
    )
    assert shown.returncode == 0, shown.stderr
    return {
        f["feature_id"]: ((f["stable"] or {}).get("version"), f["sequence"])
        for f in json.loads(shown.stdout)["features"]
    }


def test_an_emptied_origin_is_rebuilt_whole_and_hosts_verify_it(
    server: RunningServer, tmp_path: Path
) -> None:
    publish(server, tmp_path, "checkout", "1.0.0")
    publish(server, tmp_path, "checkout", "1.1.0", "--channel", "canary")
    publish(server, tmp_path, "search", "2.0.0")
    before = origin_snapshot(server.origin_dir)
    assert any(path.startswith("artifacts/") for path in before)
    seen = remote_status(server, tmp_path)

    for child in server.origin_dir.iterdir():  # the CDN origin is lost
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    rebuilt = releasectl(server, tmp_path, "origin", "rebuild")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert f"{len(before)} files checked, {len(before)} written" in rebuilt.stdout
    # Byte for byte what was there: nothing needed signing again.
    assert origin_snapshot(server.origin_dir) == before
    assert remote_status(server, tmp_path) == seen

    again = releasectl(server, tmp_path, "origin", "rebuild", "--output", "json")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert (summary["files"], summary["written"]) == (len(before), 0)
    assert summary["missing_artifacts"] == [] and summary["reconciled"] == []


def test_an_artifact_kept_nowhere_is_named_and_the_rest_rebuilt(
    server: RunningServer, tmp_path: Path
) -> None:
    publish(server, tmp_path, "checkout", "1.0.0")
    manifest = json.loads(
        (server.origin_dir / "features/checkout/1.0.0/manifest.json").read_bytes()
    )
    lost = manifest["assets"][0]["sha256"]
    (server.home / "artifacts" / lost[:2] / lost).unlink()
    for path in server.origin_dir.glob(f"artifacts/{lost}*"):
        path.unlink()
    (server.origin_dir / "remote-index.json").unlink()

    rebuilt = releasectl(server, tmp_path, "origin", "rebuild")
    assert rebuilt.returncode == 1
    error = rebuilt.stderr.splitlines()[-1]  # after the progress bar
    assert error.startswith("error: 1 artifact is neither in the artifact store")
    assert lost in error
    assert (server.origin_dir / "remote-index.json").is_file()  # the rest was written


def test_a_restored_database_is_signed_again_above_the_origin(tmp_path: Path) -> None:
    """After a restore from an older backup, changes are refused until `origin rebuild`
    signs the restored state above what the origin served; a host that saw the newer
    state then follows to the restored one instead of refusing it as a rollback."""
    home = tmp_path / "home"
    first = start_server(home)
    backup = tmp_path / "rc.db"
    try:
        publish(first, tmp_path, "checkout", "1.0.0")
        assert releasectl(first, tmp_path, "backup", str(backup)).returncode == 0
        publish(first, tmp_path, "checkout", "1.1.0")
        publish(first, tmp_path, "checkout", "1.2.0")
        host = FeatureHost(
            first.origin_url + "remote-index.json",
            TrustStore.from_file(first.trust_path),
            state_dir=tmp_path / "host",
            allow_insecure_dev_keys=True,
        )
        host.refresh()
        assert host.features["checkout"].version == "1.2.0"
        seen_sequence = host.features["checkout"].releases_sequence
        newest = origin_snapshot(first.origin_dir)
    finally:
        first.stop()
    assert releasectl(home, tmp_path, "restore", str(backup)).returncode == 0

    second = start_server(home)
    try:
        make_feature(tmp_path, "checkout", "1.0.5")
        refused = releasectl(second, tmp_path, "publish", "--feature", "checkout")
        assert refused.returncode == 5  # refused by a rule (FAILED_PRECONDITION)
        assert "is ahead of" in refused.stderr and "releasectl origin rebuild" in refused.stderr
        # The origin's self-heal at start never put the older files back over newer ones
        # (the refused publish left only its content-addressed artifacts).
        now = origin_snapshot(second.origin_dir)
        assert {p: b for p, b in now.items() if not p.startswith("artifacts/")} == {
            p: b for p, b in newest.items() if not p.startswith("artifacts/")
        }

        rebuilt = releasectl(second, tmp_path, "origin", "rebuild", "--output", "json")
        assert rebuilt.returncode == 0, rebuilt.stderr
        assert json.loads(rebuilt.stdout)["reconciled"] == ["checkout"]

        # The same host state, which saw `seen_sequence` (the origin's port is new).
        host = FeatureHost(
            second.origin_url + "remote-index.json",
            TrustStore.from_file(second.trust_path),
            state_dir=tmp_path / "host",
            allow_insecure_dev_keys=True,
        )
        report = host.refresh()
        assert report.refused == {}
        assert host.features["checkout"].version == "1.0.0"
        assert host.features["checkout"].releases_sequence == seen_sequence + 1
        history = releasectl(
            second, tmp_path, "release", "history", "--feature", "checkout", "--output", "json"
        )
        assert json.loads(history.stdout)[0]["action"] == "reconcile"

        publish(second, tmp_path, "checkout", "1.3.0")
        assert remote_status(second, tmp_path)["checkout"] == ("1.3.0", seen_sequence + 2)
    finally:
        second.stop()
