"""ReleaseController: the number of pending origin writes is kept in memory.

The controller is the store's only writer, so `status().pending_origin_writes`
follows the outbox without asking the store; these tests hold it to
`Store.pending_count()` through commits, a failed origin write, its retry
and restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from controller_kit import KEY, NOW, change, digest, new_controller, origin_top, stop

from releasecontrol.errors import Unavailable
from releasecontrol.index import Envelope, sign
from releasecontrol_server import control as control_module
from releasecontrol_server import writer as writer_module
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.origin import filesystem
from releasecontrol_server.origin.filesystem import FilesystemOrigin, Staged
from releasecontrol_server.releases import ChangeMeta, DeployCanary, Promote, Publish


class SwitchableOrigin(FilesystemOrigin):
    """A folder origin that refuses every write while `down` (the CDN is unreachable)."""

    down = False

    def write(self, path: str, data: bytes) -> None:
        if self.down:
            raise OSError("origin down")
        super().write(path, data)

    def stage(self, path: str, data: bytes, *, sync: bool = True) -> Staged:
        if self.down:
            raise OSError("origin down")
        return super().stage(path, data, sync=sync)


async def pending(control: ReleaseController) -> int:
    """The controller's count, after checking it against the store's once the controller is
    idle (a file in place on the origin is marked written in the store once it is synced)."""
    await control.idle()
    counted = control.status().pending_origin_writes
    assert counted == control._store.pending_count()
    return counted


async def test_pending_writes_follow_the_store_through_failure_retry_and_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_module, "_RETRY_SECONDS", 0.05)
    origin = SwitchableOrigin(tmp_path / "origin")
    first = new_controller(tmp_path, origin)
    await first.start()
    assert await pending(first) == 0
    for version in ("1.0.0", "1.1.0"):
        await change(first, "checkout", Publish(version, digest(version)))
        assert await pending(first) == 0
    await change(first, "search", Publish("1.0.0", digest("s1.0.0")))
    assert await pending(first) == 0

    # The origin goes down: the change commits, its files stay pending.
    origin.down = True
    with pytest.raises(Unavailable, match="committed"):
        await change(first, "checkout", DeployCanary("1.0.0", 0))
    assert await pending(first) == 3  # releases.json, its shard and remote-index.json
    # The same files committed again are still one pending write each; another feature
    # (in another bin) adds its releases.json and shard; the top level stays one.
    with pytest.raises(Unavailable, match="committed"):
        await change(first, "checkout", Promote("1.0.0", skip_soak=True))
    assert await pending(first) == 3
    with pytest.raises(Unavailable, match="committed"):
        await change(first, "search", Publish("1.1.0", digest("s1.1.0")))
    assert await pending(first) == 5

    # The origin is back: the background retry writes everything.
    origin.down = False
    for _ in range(200):
        if first.status().pending_origin_writes == 0:
            break
        await asyncio.sleep(0.01)
    assert await pending(first) == 0

    # Down again, then a stop: a restart counts what the store says is pending...
    origin.down = True
    with pytest.raises(Unavailable, match="committed"):
        await change(first, "search", DeployCanary("1.0.0", 0))
    assert await pending(first) == 3
    await stop(first)
    still_down = SwitchableOrigin(tmp_path / "origin")
    still_down.down = True
    second = new_controller(tmp_path, still_down)
    await second.start()
    try:
        assert await pending(second) == 3
    finally:
        await stop(second)

    # ...and one whose origin is reachable writes it at start.
    third = new_controller(tmp_path, SwitchableOrigin(tmp_path / "origin"))
    await third.start()
    try:
        assert await pending(third) == 0
        await change(third, "search", Promote("1.0.0", skip_soak=True))
        assert await pending(third) == 0
    finally:
        await stop(third)


async def test_the_retry_outlives_a_database_that_is_away_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The background retry of origin writes meets a database that does not answer (a
    restart): it tries again later rather than ending, and the origin gets what it is owed
    once the database is back."""
    monkeypatch.setattr(control_module, "_RETRY_SECONDS", 0.05)
    origin = SwitchableOrigin(tmp_path / "origin")
    control = new_controller(tmp_path, origin)
    await control.start()
    try:
        origin.down = True
        with pytest.raises(Unavailable, match="committed"):
            await change(control, "checkout", Publish("1.0.0", digest("1.0.0")))
        store = control._writer.store
        away = [3]  # the next three looks at the outbox fail, as a restarting database would
        pending_digests = store.pending_digests

        def answering() -> object:
            if away[0]:
                away[0] -= 1
                raise Unavailable("the database test.db failed: restarting; retry when it is back")
            return pending_digests()

        monkeypatch.setattr(store, "pending_digests", answering)
        origin.down = False
        for _ in range(300):
            if control.status().pending_origin_writes == 0:
                break
            await asyncio.sleep(0.01)
        assert away == [0]  # the retry met the database away three times…
        assert await pending(control) == 0  # …and still wrote everything after
        assert origin_top(tmp_path / "origin").sequence == control.status().global_sequence
    finally:
        await stop(control)


async def test_a_stopped_controller_retries_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Stopped while the origin is owed files: what is owed stays in the store for the next
    start, and no retry outlives the stop (its threads are gone: each try would fail)."""
    monkeypatch.setattr(control_module, "_RETRY_SECONDS", 0.02)
    origin = SwitchableOrigin(tmp_path / "origin")
    control = new_controller(tmp_path, origin)
    await control.start()
    origin.down = True
    with pytest.raises(Unavailable, match="committed"):
        await change(control, "checkout", Publish("1.0.0", digest("1.0.0")))
    await stop(control)
    caplog.clear()
    await asyncio.sleep(0.2)  # ten retry periods
    assert [r.getMessage() for r in caplog.records] == []


async def test_an_outbox_behind_the_origin_is_never_written_over_it(tmp_path: Path) -> None:
    """A database restored from a backup taken while files were owed to the origin: at
    start its outbox (an older releases.json, shard and top level) must not replace the
    newer files the origin serves, or hosts would be sent back; those files stay owed."""
    origin_dir = tmp_path / "origin"
    first = new_controller(tmp_path, FilesystemOrigin(origin_dir))
    await first.start()
    await change(first, "checkout", Publish("1.0.0", digest("1.0.0")))
    await first.idle()
    (tmp_path / "restored").mkdir()
    backup = tmp_path / "restored" / "db.sqlite"
    with sqlite3.connect(tmp_path / "db.sqlite") as db, sqlite3.connect(backup) as out:
        db.backup(out)
    with sqlite3.connect(backup) as out:  # as if the origin had not confirmed them yet
        out.execute("INSERT INTO outbox (path, global_sequence) SELECT path, 1 FROM files")
    for version in ("1.1.0", "1.2.0"):
        await change(first, "checkout", Publish(version, digest(version)))
    await stop(first)
    newest = {p: p.read_bytes() for p in origin_dir.rglob("*.json")}

    restored = new_controller(tmp_path / "restored", FilesystemOrigin(origin_dir))
    await restored.start()
    try:
        assert restored.status().pending_origin_writes == 3  # still owed, not written
        assert {p: p.read_bytes() for p in origin_dir.rglob("*.json")} == newest
    finally:
        await stop(restored)


async def test_a_rebuild_reconciles_a_top_level_alone_ahead_of_the_store(tmp_path: Path) -> None:
    """Only remote-index.json on the origin is ahead (no feature's releases.json is): the
    reconcile signs a top level above it and returns, rather than failing after committing."""
    origin_dir = tmp_path / "origin"
    control = new_controller(tmp_path, FilesystemOrigin(origin_dir))
    await control.start()
    try:
        await change(control, "checkout", Publish("1.0.0", digest("1.0.0")))
        top = origin_dir / "remote-index.json"
        body = dict(Envelope.from_bytes(top.read_bytes()).signed)
        body["sequence"] += 5  # as a newer writer, or a restored backup, left it
        top.write_bytes(sign(body, [KEY]).to_bytes())

        await control.idle()
        batch = control._writer.reconcile(ChangeMeta(actor="test"), NOW)  # the write thread's

        assert batch.committed == {} and batch.flushed
        assert origin_top(origin_dir).sequence > body["sequence"]
    finally:
        await stop(control)


async def test_changes_made_together_share_one_sync_and_idle_marks_them_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every change renames remote-index.json into the origin's top folder: syncing it and
    # that folder once for all the changes of a short while is most of what coalescing saves.
    synced: list[Path] = []
    fsync_path = writer_module.fsync_path
    monkeypatch.setattr(writer_module, "fsync_path", lambda p: (synced.append(p), fsync_path(p)))
    control = new_controller(tmp_path)
    await control.start()
    try:
        await change(control, "checkout", Publish("1.0.0", digest("1.0.0")))
        await control.idle()
        top = tmp_path / "origin" / "remote-index.json"
        synced.clear()
        await asyncio.gather(
            *(change(control, f"feature-{n}", Publish("1.0.0", digest(str(n)))) for n in range(10))
        )
        for n in range(10):  # one at a time, each well within the sync delay of the last
            await change(control, "checkout", Publish(f"1.{n + 1}.0", digest(str(n))))
        await control.idle()
        # Twenty changes: their files are all synced and marked written…
        assert await pending(control) == 0
        assert top in synced and top.parent in synced
        # …the top level and its folder far fewer times than once a change.
        assert synced.count(top) <= 5, synced.count(top)
        assert synced.count(top.parent) <= 5
        # The files they replaced (swapped out of place, removed by the syncs) are gone.
        hidden = [p for p in (tmp_path / "origin").rglob(".*") if p.is_file()]
        assert hidden == []
    finally:
        await stop(control)


class UnlinkRefusingOrigin(FilesystemOrigin):
    """A folder origin where removing a replaced file fails (a permission changed, say)."""

    @staticmethod
    def remove_displaced(displaced: Path) -> None:
        raise PermissionError(13, "Permission denied", str(displaced))


async def test_a_replaced_file_that_cannot_be_removed_does_not_keep_a_change_owed(
    tmp_path: Path,
) -> None:
    """Removing the file a rename replaced is housekeeping: when it fails, the new files are
    still synced and marked written (the next start removes what was left)."""
    if filesystem._renameat2 is None:
        pytest.skip("no renameat2 here: nothing is displaced")
    control = new_controller(tmp_path, UnlinkRefusingOrigin(tmp_path / "origin"))
    await control.start()
    try:
        await change(control, "checkout", Publish("1.0.0", digest("1.0.0")))
        await change(control, "checkout", Publish("1.1.0", digest("1.1.0")))  # replaces files
        assert await pending(control) == 0
        hidden = [p for p in (tmp_path / "origin").rglob(".*") if p.is_file()]
        assert hidden, "the replaced files stay, hidden, until the next start"
    finally:
        await stop(control)
