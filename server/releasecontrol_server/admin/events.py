"""Live updates for the admin pages: committed changes as server-sent events.

`/_admin/events` subscribes to the controller's WatchHub (the feed behind
WatchReleases) and sends one event per change the principal may watch:

    event: hello     data: {}     subscribed: no change is missed from here on
    event: change    data: {"feature_id", "sequence", "global_sequence", "action",
                            "version", "actor", "canary"}   canary: "1.3.0 — 25% of users"
                                                            after the change, or null
    event: refresh   data: {"feature_ids": [...]}   someone hot-refreshed manifests
    event: resync    data: {}     this page fell behind and missed changes: reload it

A comment line every `heartbeat_seconds` keeps proxies from closing an idle
stream. The stream ends when the browser goes away or the server stops. The
event only tells the page to re-read itself; it never carries state the page
would trust.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Collection
from typing import Any

from releasecontrol_server.admin.actions import canary_text
from releasecontrol_server.auth.authorize import Action, permits
from releasecontrol_server.auth.principal import Principal
from releasecontrol_server.watch import Lagged, RefreshEvent, WatchHub

HEARTBEAT_SECONDS = 15.0


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def event_stream(
    hub: WatchHub,
    principal: Principal,
    feature_ids: Collection[str],
    closing: asyncio.Event,
    *,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[str]:
    """Server-sent events for the changes `principal` may watch, until `closing` is set."""
    closed = asyncio.ensure_future(closing.wait())
    upcoming: asyncio.Future[Any] | None = None
    try:
        async with hub.subscribe(feature_ids) as sub:
            # Sent once subscribed: from here on the page misses no change.
            yield "retry: 2000\n" + _event("hello", {})
            while not closing.is_set():
                upcoming = asyncio.ensure_future(sub.next())
                done, _ = await asyncio.wait(
                    {upcoming, closed}, timeout=heartbeat_seconds, return_when="FIRST_COMPLETED"
                )
                if upcoming not in done:
                    upcoming.cancel()
                    if closed in done:
                        return
                    yield ": heartbeat\n\n"
                    continue
                try:
                    event = upcoming.result()
                except Lagged:
                    yield _event("resync", {})
                    return
                if isinstance(event, RefreshEvent):
                    wanted = [f for f in event.feature_ids if permits(principal, Action.WATCH, f)]
                    if wanted:
                        yield _event("refresh", {"feature_ids": wanted})
                    continue
                if not permits(principal, Action.WATCH, event.state.feature_id):
                    continue
                record = event.transition.record
                canary = event.state.canary
                yield _event(
                    "change",
                    {
                        "feature_id": event.state.feature_id,
                        "sequence": event.state.sequence,
                        "global_sequence": event.global_sequence,
                        "action": record.action.value,
                        "version": record.version,
                        "actor": record.actor,
                        "canary": canary_text(canary) if canary is not None else None,
                    },
                )
    finally:
        closed.cancel()
        if upcoming is not None:
            upcoming.cancel()
