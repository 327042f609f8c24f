"""The origin heals itself: what the CDN origin serves is compared with what was signed.

Hosts refuse a file that is missing, truncated, garbled or older than what its
parent pins, and keep their last good state; the origin must not stay that way.
The controller repairs the files every host reads (the roots, every shard,
remote-index.json) when it starts, before it serves. `OriginAuditor` checks,
from then on and every `origin_check_interval_seconds`, each feature's own
files (its releases.json and the manifests of its live versions, and the
shared ones again) against the bytes the control plane committed, and writes
back each one that differs, logging every repair
(`ReleaseController.audit_origin`). It reads a few features at a time in a
thread of its own, without holding up changes, spreading a pass over half the
interval, so the server's changes and reads hardly notice it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from releasecontrol.errors import ReleaseControlError
from releasecontrol_server.control import ReleaseController

__all__ = ["AuditReport", "OriginAuditor"]

log = logging.getLogger(__name__)

BATCH = 20
"""Features read at a time."""
IDLE_FACTOR = 9.0
"""After a batch that took t seconds, wait at least `IDLE_FACTOR` × t: the check takes at
most a tenth of the time."""
ONCE_SPREAD_SECONDS = 600.0
"""With no interval (a check at start only), the pass is spread over this long."""


@dataclass(frozen=True)
class AuditReport:
    """One pass over the origin: how many files were checked and restored."""

    checked: int
    restored: int
    failed: str = ""
    """Why the pass stopped early (the origin unreachable), empty when it finished."""


class OriginAuditor:
    """Checks the origin against the committed files now and every `interval_seconds`."""

    def __init__(self, controller: ReleaseController, *, interval_seconds: float | None) -> None:
        """`interval_seconds` None: check once, right after start."""
        self._controller = controller
        self.interval_seconds = interval_seconds

    async def check(
        self, spread_seconds: float = 0.0, stop: asyncio.Event | None = None
    ) -> AuditReport:
        """One pass over every feature, spread over `spread_seconds` (a background pass takes
        little at a time: its Python work shares the interpreter with the server's); never
        raises for the origin (the report says)."""
        ids = self._controller.feature_ids
        checked = restored = 0
        pause = spread_seconds * BATCH / len(ids) if ids else 0.0
        for start in range(0, len(ids), BATCH):
            began = time.monotonic()
            try:
                found = await self._controller.audit_origin(ids[start : start + BATCH])
            except ReleaseControlError as error:
                log.warning("origin check stopped: %s", error.message)
                return AuditReport(checked, restored, error.message)
            checked += len(found.manifests) + len(found.index)
            restored += sum(c.restored for c in found.manifests)
            restored += sum(c.restored for c in found.index)
            rest = max((time.monotonic() - began) * IDLE_FACTOR, pause)
            if stop is None:
                await asyncio.sleep(rest)
            elif await _stopped(stop, rest):
                return AuditReport(checked, restored, "the server is stopping")
        if restored:
            log.warning("origin check restored=%d of checked=%d files", restored, checked)
        else:
            log.info("origin check checked=%d files, all as signed", checked)
        return AuditReport(checked, restored)

    async def run(self, stop: asyncio.Event) -> None:
        """Check now, then every `interval_seconds`, until `stop` is set."""
        spread = (self.interval_seconds or ONCE_SPREAD_SECONDS) / 2
        while not stop.is_set():
            try:
                await self.check(spread, stop)
            except Exception:  # a bug: keep serving, try again next time
                log.exception("checking the origin failed")
            # The pass took about half the interval; the other half is rest.
            if await _stopped(stop, None if self.interval_seconds is None else spread):
                return


async def _stopped(stop: asyncio.Event, seconds: float | None) -> bool:
    """Wait `seconds` (None: for ever) unless `stop` is set first; True when it was."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
