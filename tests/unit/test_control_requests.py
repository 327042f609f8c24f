"""Request ids are answered alike for a week, then forgotten, so their table does not grow for
ever (issue 12's note: it was never pruned)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from controller_kit import NOW, digest, new_controller, stop

from releasecontrol_server.control import Applied, ReleaseController
from releasecontrol_server.releases import ChangeMeta, Publish
from releasecontrol_server.writer import REQUEST_IDS_KEPT


async def publish(control: ReleaseController, version: str, request_id: str) -> Applied:
    return await control.change(
        "checkout",
        Publish(version, digest(version)),
        ChangeMeta(actor="test"),
        rpc="PublishVersion",
        request_id=request_id,
    )


async def test_a_request_id_is_forgotten_a_week_after_its_answer(tmp_path: Path) -> None:
    first = new_controller(tmp_path, now=NOW)
    await first.start()
    try:
        await publish(first, "1.0.0", "r-old")
        # A retry the same day is answered alike: nothing is applied again.
        again = await publish(first, "1.0.0", "r-old")
        assert again.transition is not None and again.transition.global_sequence == 1
    finally:
        await stop(first)

    later = new_controller(tmp_path, now=NOW + REQUEST_IDS_KEPT + timedelta(hours=1))
    await later.start()
    try:
        await publish(later, "1.1.0", "r-new")  # any change: the writer forgets old ids
        assert later._store.answered("r-old") is None
        assert later._store.answered("r-new") is not None
        history = await later.transitions(feature_id="checkout", before_id=0, limit=10)
        assert [t.request_id for t in history] == ["r-new", "r-old"]  # the audit keeps both
    finally:
        await stop(later)
