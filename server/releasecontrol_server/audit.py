"""The origin heals itself: what the CDN origin serves is compared with what was signed.

Hosts refuse a file that is missing, truncated, garbled or older than what its
parent pins, and keep their last good state; the origin must not stay that way.
`OriginAuditor` checks, right after start and then every
`origin_check_interval_seconds`, every file hosts read (the roots,
remote-index.json, every shard, every releases.json and the manifests of the
live versions) against the bytes the control plane committed, and writes back
each one that differs, logging every repair (`ReleaseController.audit_origin`).
It works a batch of features at a time, so changes are not held up for long.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from releasecontrol.errors import ReleaseControlError
from releasecontrol_server.control import ReleaseController

__all__ = ["AuditReport", "OriginAuditor"]

log = logging.getLogger(__name__)

BATCH = 500
"""Features checked under one hold of the writer lock."""


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

    async def check(self) -> AuditReport:
        """One pass over every feature; never raises for the origin (the report says)."""
        ids = self._controller.feature_ids
        checked = restored = 0
        for start in range(0, len(ids), BATCH):
            try:
                found = await self._controller.audit_origin(ids[start : start + BATCH])
            except ReleaseControlError as error:
                log.warning("origin check stopped: %s", error.message)
                return AuditReport(checked, restored, error.message)
            checked += len(found.manifests) + len(found.index)
            restored += sum(c.restored for c in found.manifests)
            restored += sum(c.restored for c in found.index)
        if restored:
            log.warning("origin check restored=%d of checked=%d files", restored, checked)
        else:
            log.info("origin check checked=%d files, all as signed", checked)
        return AuditReport(checked, restored)

    async def run(self, stop: asyncio.Event) -> None:
        """Check now, then every `interval_seconds`, until `stop` is set."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # a bug: keep serving, try again next time
                log.exception("checking the origin failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_seconds)
            except TimeoutError:
                continue
