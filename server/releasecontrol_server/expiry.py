"""Signing indices again before they expire.

Hosts refuse an expired index (freeze protection), so a feature nobody touched
for `index_expiry_seconds` would vanish from every host. Each feature whose
index is older than half its lifetime is re-signed as an ordinary change
(sequence + 1, audit record by `releasecontrol`), which also re-signs
remote-index.json.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from releasecontrol.errors import ReleaseControlError
from releasecontrol_server.control import ReleaseController, utc_now
from releasecontrol_server.releases import ChangeMeta, Resign

log = logging.getLogger(__name__)

ACTOR = "releasecontrol"
REASON = "index re-signed before it expires"


class Resigner:
    """Finds features whose signed index is past half its lifetime and re-signs them."""

    def __init__(
        self,
        controller: ReleaseController,
        *,
        expiry_seconds: int,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._controller = controller
        self._half_life = timedelta(seconds=expiry_seconds / 2)
        self._clock = clock
        # Check several times per half-life so nothing gets close to expiring.
        self.interval_seconds = max(1.0, min(expiry_seconds / 8, 3600.0))

    def due(self, now: datetime) -> list[str]:
        """Features whose index was signed more than half its lifetime before `now`."""
        return [
            state.feature_id
            for state in self._controller.status().features
            if state.updated_at is None or now - state.updated_at >= self._half_life
        ]

    async def resign_due(self) -> list[str]:
        """Re-sign every due feature; returns those re-signed. A failure is logged and retried
        at the next check."""
        done = []
        for feature_id in self.due(self._clock()):
            try:
                await self._controller.change(
                    feature_id,
                    Resign(),
                    ChangeMeta(actor=ACTOR, reason=REASON, principal=ACTOR),
                    rpc="Resign",
                    request_id="",
                )
            except ReleaseControlError as error:
                log.warning("re-sign failed feature=%s error=%r", feature_id, error.message)
                continue
            done.append(feature_id)
        if done:
            log.info("re-signed before expiry features=%d", len(done))
        return done

    async def run(self, stop: asyncio.Event) -> None:
        """Check now and then every `interval_seconds` until `stop` is set."""
        while not stop.is_set():
            await self.resign_due()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_seconds)
            except TimeoutError:
                continue
