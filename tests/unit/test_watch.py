"""The watch hub: ordered fan-out, filtering, and lag detection instead of silent loss."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from releasecontrol_server.releases import Action, AuditRecord, FeatureState
from releasecontrol_server.store import StoredTransition
from releasecontrol_server.watch import ChangeEvent, Lagged, WatchHub

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def event(global_sequence: int, feature_id: str = "checkout") -> ChangeEvent:
    record = AuditRecord(
        feature_id=feature_id,
        sequence=global_sequence,
        action=Action.PUBLISH,
        version="1.0.0",
        from_stable=None,
        to_stable="1.0.0",
        from_canary=None,
        to_canary=None,
        actor="test",
        reason="",
        ticket="",
        at=NOW,
    )
    return ChangeEvent(
        global_sequence,
        FeatureState(feature_id=feature_id, sequence=global_sequence),
        StoredTransition(
            id=global_sequence, record=record, global_sequence=global_sequence, request_id=""
        ),
    )


class TestWatchHub:
    async def test_every_subscriber_gets_every_event_in_order(self) -> None:
        """Two subscribers each receive all published events in publish order."""
        hub = WatchHub(queue_size=10)
        a, b = hub.subscribe(), hub.subscribe()
        for seq in (1, 2, 3):
            hub.publish(event(seq))
        assert [(await a.next()).global_sequence for _ in range(3)] == [1, 2, 3]
        assert [(await b.next()).global_sequence for _ in range(3)] == [1, 2, 3]

    async def test_a_filtered_subscriber_sees_only_its_features(self) -> None:
        """A subscription for one feature skips events of others."""
        hub = WatchHub(queue_size=10)
        sub = hub.subscribe(["cart"])
        hub.publish(event(1, "checkout"))
        hub.publish(event(2, "cart"))
        assert (await sub.next()).state.feature_id == "cart"

    async def test_a_subscriber_that_falls_behind_is_told_to_resync(self) -> None:
        """Overflowing a subscriber's queue raises Lagged rather than dropping events silently."""
        hub = WatchHub(queue_size=2)
        slow, fast = hub.subscribe(), hub.subscribe()
        for seq in (1, 2, 3):
            hub.publish(event(seq))
            await fast.next()
        with pytest.raises(Lagged):
            await slow.next()
        hub.publish(event(4))
        assert (await fast.next()).global_sequence == 4  # others are unaffected

    async def test_closing_a_subscription_stops_delivery(self) -> None:
        """A closed subscription is removed from the hub."""
        hub = WatchHub(queue_size=2)
        async with hub.subscribe():
            assert hub.subscriber_count == 1
        assert hub.subscriber_count == 0
