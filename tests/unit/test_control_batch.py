"""ReleaseController: changes that arrive together are committed as one batch (group commit).

Each change keeps its own audit record, global sequence and answer; one failure
fails alone; the origin gets one remote-index.json (and one shard per bin) for the batch.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from controller_kit import origin_pin, origin_top
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.errors import FailedPrecondition, InvalidArgument
from releasecontrol.trust import SigningKey
from releasecontrol_server.artifacts import ArtifactStore
from releasecontrol_server.control import Applied, ReleaseController
from releasecontrol_server.origin.filesystem import FilesystemOrigin
from releasecontrol_server.releases import ChangeMeta, Command, DeployCanary, Promote, Publish
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import open_store
from releasecontrol_server.watch import ChangeEvent, WatchHub

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
KEY = SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32))
FEATURES = [f"feature-{i}" for i in range(6)]


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def summary(applied: Applied) -> str:
    """What a change did as `global_sequence:feature sequence` (0 when nothing changed)."""
    transition = applied.transition
    return f"{transition.global_sequence if transition else 0}:{applied.state.sequence}"


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[ReleaseController]:
    store = open_store(tmp_path / "db.sqlite")
    control = ReleaseController(
        store=store,
        origin=FilesystemOrigin(tmp_path / "origin"),
        artifacts=ArtifactStore.in_folder(tmp_path / "artifacts"),
        signer=Signer([KEY], 3600),
        hub=WatchHub(100),
        default_soak_seconds=0,
        clock=lambda: NOW,
    )
    await control.start()
    for feature_id in FEATURES:
        for version in ("1.0.0", "1.1.0"):
            await change(control, feature_id, Publish(version, digest(feature_id + version)))
    yield control
    await control.stop()
    store.close()


async def change(
    control: ReleaseController, feature_id: str, command: Command, request_id: str = ""
) -> str:
    applied = await control.change(
        feature_id,
        command,
        ChangeMeta(actor="test"),
        rpc=type(command).__name__,
        request_id=request_id,
    )
    return summary(applied)


class TestGroupCommit:
    async def test_concurrent_changes_each_get_their_own_sequence_and_answer(
        self, controller: ReleaseController, tmp_path: Path
    ) -> None:
        """Six changes at once: six global sequences in arrival order, one top level."""
        before = controller.status().global_sequence
        top_before = origin_top(tmp_path / "origin").sequence
        subscription = controller.hub.subscribe()
        answers = await asyncio.gather(
            *(change(controller, f, DeployCanary("1.0.0", 0)) for f in FEATURES)
        )
        assert answers == [f"{before + i + 1}:3" for i in range(len(FEATURES))]
        # One batch: one top level (and one shard per bin) for the six changes.
        assert origin_top(tmp_path / "origin").sequence == top_before + 1
        assert all(origin_pin(tmp_path / "origin", f).sequence == 3 for f in FEATURES)
        events = [await subscription.next() for _ in FEATURES]
        assert [e.global_sequence for e in events if isinstance(e, ChangeEvent)] == [
            before + i + 1 for i in range(len(FEATURES))
        ]
        transitions = await controller.transitions(feature_id="", before_id=0, limit=6)
        assert sorted(t.record.feature_id for t in transitions) == FEATURES
        assert controller.status().pending_origin_writes == 0

    async def test_one_failing_change_fails_alone(self, controller: ReleaseController) -> None:
        """A refused change in the batch raises for its caller; the others commit."""
        results = await asyncio.gather(
            change(controller, "feature-0", DeployCanary("1.0.0", 0)),
            change(controller, "feature-1", Promote("1.0.0")),  # no canary runs: refused
            change(controller, "feature-2", DeployCanary("1.0.0", 0)),
            return_exceptions=True,
        )
        assert isinstance(results[1], FailedPrecondition)
        assert isinstance(results[0], str) and isinstance(results[2], str)
        assert controller.feature("feature-0").canary is not None
        assert controller.feature("feature-1").sequence == 2

    async def test_two_changes_of_one_feature_in_a_batch_follow_each_other(
        self, controller: ReleaseController, tmp_path: Path
    ) -> None:
        """The second change of a feature in the same batch applies on top of the first."""
        first, second = await asyncio.gather(
            change(controller, "feature-3", DeployCanary("1.0.0", 0)),
            change(controller, "feature-3", Promote("1.0.0")),
        )
        assert (first.split(":")[1], second.split(":")[1]) == ("3", "4")
        assert controller.feature("feature-3").stable == "1.0.0"
        assert origin_pin(tmp_path / "origin", "feature-3").sequence == 4

    async def test_a_repeated_request_id_in_one_batch_gets_the_first_answer(
        self, controller: ReleaseController
    ) -> None:
        """A retry that arrives with its original is applied once and answered alike."""
        first, retry = await asyncio.gather(
            change(controller, "feature-4", DeployCanary("1.0.0", 0), request_id="r-1"),
            change(controller, "feature-4", DeployCanary("1.0.0", 0), request_id="r-1"),
        )
        assert first == retry
        assert controller.feature("feature-4").sequence == 3
        with pytest.raises(
            InvalidArgument, match="already used for a different DeployCanary request"
        ):
            await change(controller, "feature-4", Promote("1.0.0"), request_id="r-1")

    async def test_a_caller_cancelled_while_queued_changes_nothing(
        self, controller: ReleaseController
    ) -> None:
        """A change whose caller is gone before the writer took it is dropped."""
        async with controller._writing:  # the writer is busy
            queued = asyncio.ensure_future(
                change(controller, "feature-5", DeployCanary("1.0.0", 0))
            )
            await asyncio.sleep(0)
            queued.cancel()
            await asyncio.sleep(0)
        await change(controller, "feature-0", DeployCanary("1.0.0", 0))
        assert controller.feature("feature-5").sequence == 2


class TestReadsFromMemory:
    async def test_status_of_every_feature_is_the_stores_listing(
        self, controller: ReleaseController, tmp_path: Path
    ) -> None:
        """Served from memory, the status lists what the store lists, new features included."""
        await asyncio.gather(
            change(controller, "feature-2", DeployCanary("1.0.0", 0)),
            change(controller, "a-new-one", Publish("0.1.0", digest("new"))),
        )
        status = controller.status()
        store = open_store(tmp_path / "db.sqlite")
        try:
            assert status.features == store.list_features(limit=1000)
            assert status.global_sequence == store.global_sequence()
        finally:
            store.close()
        assert status.features[0].feature_id == "a-new-one"


class TestUnchangedOnTopOfTheBatch:
    async def test_a_nothing_to_do_answer_is_kept_only_if_what_it_relied_on_committed(
        self, controller: ReleaseController, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two requests in one batch: a publish, then the same publish with request_id "b"
        ("already published" on top of the first). When the batch's commit fails, "b" gets that
        error too, and its answer is not kept for a retry to replay."""
        store = controller._store

        def refuse(*args: object, **kwargs: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(store, "commit_many", refuse)
        first, second = await asyncio.gather(
            change(controller, FEATURES[0], Publish("1.2.0", digest("1.2.0"))),
            change(controller, FEATURES[0], Publish("1.2.0", digest("1.2.0")), request_id="b"),
            return_exceptions=True,
        )
        assert isinstance(first, OSError) and isinstance(second, OSError)
        assert store.answered("b") is None
