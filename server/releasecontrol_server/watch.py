"""Fan-out of committed changes to WatchReleases subscribers, and to the change observers.

Every committed change passes through `WatchHub.publish` exactly once, in
commit order (the controller publishes each after answering its caller), so
the observers registered with `on_change` (the change counter of `metrics.py`,
the change log line of `logs.py`) see each change once, whoever made it.

Each subscriber has a bounded queue. Publishing never blocks the writer: a
subscriber whose queue is full is marked as lagged and told to re-read the
state (as etcd does with a compacted revision) instead of silently missing
events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from releasecontrol_server.releases import FeatureState
from releasecontrol_server.store import StoredTransition

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangeEvent:
    """One committed change, as subscribers receive it."""

    global_sequence: int
    state: FeatureState
    transition: StoredTransition


@dataclass(frozen=True)
class RefreshEvent:
    """An operator asked hosts to re-read the CDN now; nothing changed in the store."""

    feature_ids: tuple[str, ...]
    global_sequence: int


Event = ChangeEvent | RefreshEvent


class Lagged(Exception):
    """The subscriber fell too far behind and missed events."""


class Subscription:
    """One watcher's view of the change stream; use as an async context manager."""

    def __init__(self, hub: WatchHub, feature_ids: Collection[str], queue_size: int) -> None:
        self._hub = hub
        self._only = frozenset(feature_ids)
        # None in the queue means "you lagged": it wakes a reader waiting on get().
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=queue_size)
        self.lagged = False

    def wants(self, event: Event) -> bool:
        if not self._only:
            return True
        if isinstance(event, RefreshEvent):
            return not self._only.isdisjoint(event.feature_ids)
        return event.state.feature_id in self._only

    def offer(self, event: Event) -> None:
        if self.lagged or not self.wants(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lagged = True
            # Wake a waiting reader so it learns about the lag at once.
            self._drain()
            log.warning("watch subscriber lagged at global_sequence=%d", event.global_sequence)

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def next(self) -> Event:
        """The next change; raises Lagged once events were dropped for this subscriber."""
        event = await self._queue.get()
        if event is None or self.lagged:
            raise Lagged()
        return event

    def close(self) -> None:
        self._hub._subscribers.discard(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class WatchHub:
    """Delivers each committed change, in commit order, to every subscriber."""

    def __init__(self, queue_size: int) -> None:
        self._queue_size = queue_size
        self._subscribers: set[Subscription] = set()
        self._observers: list[Callable[[ChangeEvent], None]] = []

    def subscribe(self, feature_ids: Collection[str] = ()) -> Subscription:
        sub = Subscription(self, feature_ids, self._queue_size)
        self._subscribers.add(sub)
        return sub

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def on_change(self, observer: Callable[[ChangeEvent], None]) -> None:
        """Call `observer` with every committed change published from now on, before the
        subscribers are offered it. It runs on the event loop, so it must not block; one that
        raises is logged and the others still run."""
        self._observers.append(observer)

    def publish(self, event: Event) -> None:
        """Tell the observers of a change, then offer `event` to every subscriber without
        waiting on any of them."""
        if isinstance(event, ChangeEvent):
            for observer in self._observers:
                try:
                    observer(event)
                except Exception:  # a bug in a log line or a metric must not stop the fan-out
                    log.exception(
                        "a change observer failed at global_sequence=%d", event.global_sequence
                    )
        for sub in tuple(self._subscribers):
            sub.offer(event)
