"""Webhook signing, bodies and the sender's order, retries and cursor (webhooks.py), with
httpx's mock transport as the receiver; a real receiver and the real server are
tests/integration/test_webhooks.py."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import httpx
import pytest

from releasecontrol_server.store import Event
from releasecontrol_server.webhooks import Sender, Webhook, body_of, sign, summary, verify

SECRET = b"s" * 32
AT = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def event(n: int, kind: str = "change", **data: object) -> Event:
    return Event(n, kind, AT, "checkout", {"action": "promote", "version": "1.1.0", **data})


def test_a_signature_verifies_and_a_changed_body_or_old_time_does_not() -> None:
    header = sign(SECRET, b'{"id":1}', 1_000)
    assert verify(SECRET, b'{"id":1}', header, now=1_010)
    assert not verify(SECRET, b'{"id":2}', header, now=1_010)
    assert not verify(b"x" * 32, b'{"id":1}', header, now=1_010)
    assert not verify(SECRET, b'{"id":1}', header, now=5_000)
    assert not verify(SECRET, b'{"id":1}', "garbage", now=1_000)


def test_bodies_in_both_formats() -> None:
    assert json.loads(body_of(event(7, actor="alice"), "json")) == {
        "id": 7,
        "kind": "change",
        "at": "2026-12-07T10:00:00Z",
        "feature": "checkout",
        "data": {"action": "promote", "version": "1.1.0", "actor": "alice"},
    }
    slack = json.loads(body_of(event(7, actor="alice", reason="INC-1"), "slack"))
    assert slack == {"text": "checkout: promote 1.1.0 by alice; reason: INC-1"}
    verdict = Event(
        8,
        "verdict",
        AT,
        "checkout",
        {
            "canary_version": "1.1.0",
            "verdict": "fail",
            "reason": "failure rate 3.1% vs 0.4% over 12,400 loads",
        },
    )
    assert summary(verdict) == (
        "checkout: canary 1.1.0 analysis fail: failure rate 3.1% vs 0.4% over 12,400 loads"
    )


class Store:
    """What the sender reads and writes, in memory."""

    def __init__(self, events: list[Event], cursor: int | None) -> None:
        self.events, self.cursor = events, cursor

    async def events_after(self, after: int) -> list[Event]:
        return [e for e in self.events if e.id > after][:2]  # small pages

    async def get(self, name: str) -> int | None:
        return self.cursor

    async def save(self, name: str, delivered: int) -> None:
        self.cursor = max(self.cursor or 0, delivered)

    async def last(self) -> int:
        return self.events[-1].id if self.events else 0


@pytest.mark.asyncio
async def test_events_are_delivered_in_order_retried_and_filtered() -> None:
    """Kinds the webhook is not told are skipped (the cursor moves past them); a 503 is
    retried, and no later event overtakes it; the cursor ends at the last event."""
    answers = iter([204, 503, 204, 204, 204])
    got: list[tuple[int, str]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        status = next(answers)
        if status < 300:
            got.append(
                (
                    int(request.headers["x-releasecontrol-event-id"]),
                    request.headers["x-releasecontrol-event"],
                )
            )
        assert verify(
            SECRET,
            request.content,
            request.headers["x-releasecontrol-signature"],
            now=int(request.headers["x-releasecontrol-signature"][2:12]),
        )
        return httpx.Response(status)

    store = Store(
        [event(1), event(2, "verdict"), event(3), event(4, "approval"), event(5)], cursor=0
    )
    hook = Webhook("ops", "http://receiver.test/", SECRET, "json", ("change", "approval"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(receive)) as client:
        sender = Sender(
            hook,
            events_after=store.events_after,
            cursor=store.get,
            save_cursor=store.save,
            last_event_id=store.last,
            client=client,
            clock=lambda: 1_765_101_600.0,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        for _ in range(200):
            if store.cursor == 5:
                break
            await asyncio.sleep(0.02)
        stop.set()
        await task
    assert got == [(1, "change"), (3, "change"), (4, "approval"), (5, "change")]
    assert (sender.delivered, sender.failures, store.cursor) == (4, 1, 5)


@pytest.mark.asyncio
async def test_a_new_webhook_starts_at_the_newest_event() -> None:
    store = Store([event(1), event(2)], cursor=None)
    hook = Webhook("new", "http://receiver.test/", SECRET, "json", ("change",))
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(204))) as c:
        sender = Sender(
            hook,
            events_after=store.events_after,
            cursor=store.get,
            save_cursor=store.save,
            last_event_id=store.last,
            client=c,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(sender.run(stop))
        await asyncio.sleep(0.1)
        stop.set()
        await task
    assert (sender.delivered, store.cursor) == (0, 2)
