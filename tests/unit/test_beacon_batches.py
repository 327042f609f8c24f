"""Beacon batches (beacons.py): what is counted, and each way a batch is refused with the field
named and nothing counted. The HTTP side is tests/integration/test_beacons.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from releasecontrol_server.beacons import MAX_ROWS, Counts, Ingest, Refused, minute_of
from releasecontrol_server.releases import FeatureState, PublishedVersion

NOW = datetime(2026, 12, 7, 10, 0, 30, tzinfo=UTC)
KEY = "pk_test_shop"
CHECKOUT = FeatureState(
    "checkout",
    3,
    stable="1.0.0",
    versions=(
        PublishedVersion("1.0.0", "a" * 64, NOW),
        PublishedVersion("1.1.0", "b" * 64, NOW),
    ),
)


def body(*rows: dict[str, Any], **changes: Any) -> bytes:
    batch = {
        "v": 1,
        "key": KEY,
        "batch": "batch-0123456789abcdef",
        "sent_at": "2026-12-07T10:00:00Z",
        "counts": list(rows) or [{"feature": "checkout", "version": "1.1.0", "loads": 3}],
        **changes,
    }
    return json.dumps(batch).encode()


class Clock:
    def __init__(self) -> None:
        self.now, self.tick = NOW, 0.0

    def wall(self) -> datetime:
        return self.now

    def monotonic(self) -> float:
        return self.tick


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ingest(clock: Clock, outcomes: list[str]) -> Ingest:
    clock.now = NOW - timedelta(minutes=1)  # started a minute ago
    made = Ingest(
        frozenset({KEY}),
        {"checkout": CHECKOUT}.get,
        clock=clock.wall,
        monotonic=clock.monotonic,
        rate_per_second=1.0,
        burst=3.0,
    )
    clock.now = NOW
    made.on_outcome = outcomes.append  # what /metrics is told
    return made


@pytest.fixture
def outcomes() -> list[str]:
    return []


def test_an_accepted_batch_is_summed_per_version_and_minute(
    ingest: Ingest, outcomes: list[str]
) -> None:
    ingest.receive(
        body(
            {"feature": "checkout", "version": "1.1.0", "loads": 10, "entry_errors": 2},
            {"feature": "checkout", "version": "1.0.0", "loads": 30, "refusals": 1},
        ),
        "10.0.0.1",
    )
    rows = ingest.tally.drain()
    minute = minute_of(NOW)
    assert rows == {
        ("checkout", "1.1.0", minute): Counts(10, 2, 0, 0, 1),
        ("checkout", "1.0.0", minute): Counts(30, 0, 0, 1, 1),
    }
    assert outcomes == ["accepted"]
    assert len(ingest.tally) == 0


@pytest.mark.parametrize(
    ("data", "status", "field", "fragment"),
    [
        (b"[1", 400, "", "not JSON"),
        (json.dumps([1]).encode(), 400, "", "must be a JSON object"),
        (body(extra=1), 400, "extra", "unknown field"),
        (body(v=2), 400, "v", "v must be 1"),
        (body(key="short"), 400, "key", "publishable beacon key"),
        (body(key="pk_not_ours_1"), 403, "key", "not a beacon key"),
        (body(batch="tiny"), 400, "batch", "random id"),
        (body(sent_at="yesterday"), 400, "sent_at", "UTC time"),
        (body(sent_at="2026-12-07T09:50:00Z"), 409, "sent_at", "stale or replayed"),
        (body(sent_at="2026-12-07T10:10:00Z"), 409, "sent_at", "wrong clock"),
        (body(sent_at="2026-12-07T09:58:00Z"), 409, "sent_at", "before the server started"),
        (body(counts=[]), 400, "counts", "non-empty list"),
        (
            body(counts=[{"feature": "checkout", "version": "1.1.0", "loads": 1}] * (MAX_ROWS + 1)),
            400,
            "counts",
            f"at most {MAX_ROWS}",
        ),
        (
            body({"feature": "Checkout!", "version": "1.1.0", "loads": 1}),
            400,
            "counts[0].feature",
            "feature id",
        ),
        (
            body({"feature": "checkout", "version": "1.1.0", "loads": 2_000_000}),
            400,
            "counts[0].loads",
            "0 to 1000000",
        ),
        (
            body({"feature": "checkout", "version": "1.1.0", "loads": True}),
            400,
            "counts[0].loads",
            "integer",
        ),
        (
            body({"feature": "checkout", "version": "1.1.0", "loads": 0}),
            400,
            "counts[0].loads",
            "counts nothing",
        ),
        (
            body(
                {"feature": "checkout", "version": "1.1.0", "loads": 1},
                {"feature": "checkout", "version": "1.1.0", "loads": 2},
            ),
            400,
            "counts[1]",
            "repeats the feature and version of counts[0]",
        ),
        (
            body({"feature": "checkout", "version": "1.1.0", "loads": 0, "refusals": 1}),
            400,
            "counts[0].loads",
            "failures but no loads",
        ),
        (
            body({"feature": "checkout", "version": "1.1.0", "loads": 1, "ip": "1.2.3.4"}),
            400,
            "counts[0].ip",
            "unknown field",
        ),
        (
            body({"feature": "search", "version": "1.0.0", "loads": 1}),
            422,
            "counts[0].feature",
            "not published",
        ),
        (
            body({"feature": "checkout", "version": "2.0.0", "loads": 1}),
            422,
            "counts[0].version",
            "never published",
        ),
        (b"x" * 70_000, 413, "", "at most"),
    ],
)
def test_a_bad_batch_is_refused_naming_the_field_and_counts_nothing(
    ingest: Ingest, data: bytes, status: int, field: str, fragment: str
) -> None:
    with pytest.raises(Refused) as caught:
        ingest.receive(data, "10.0.0.1")
    assert (caught.value.status, caught.value.field) == (status, field)
    assert fragment in caught.value.message
    assert len(ingest.tally) == 0


def test_a_replayed_batch_is_counted_once(ingest: Ingest, outcomes: list[str]) -> None:
    ingest.receive(body(), "10.0.0.1")
    with pytest.raises(Refused) as caught:
        ingest.receive(body(), "10.0.0.2")
    assert (caught.value.status, caught.value.field) == (409, "batch")
    assert sum(c.loads for c in ingest.tally.drain().values()) == 3
    assert outcomes == ["accepted", "replayed"]


def test_the_rate_is_per_address_and_refills(ingest: Ingest, clock: Clock) -> None:
    """A burst of 3 at 1 a second: the 4th is limited with a retry time; another address is
    not; a second later one more goes through."""
    for n in range(3):
        ingest.receive(body(batch=f"batch-{n:016d}"), "10.0.0.1")
    with pytest.raises(Refused) as caught:
        ingest.receive(body(batch="batch-limited-000000"), "10.0.0.1")
    assert (caught.value.status, caught.value.retry_after) == (429, 1)
    ingest.receive(body(batch="batch-other-address0"), "10.0.0.2")
    clock.tick += 1.0
    ingest.receive(body(batch="batch-after-a-second"), "10.0.0.1")
