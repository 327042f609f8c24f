"""The jobs one replica runs for the whole cluster, while it leads.

Canary steps, canary analysis, webhook delivery, re-signing before expiry and the
periodic origin check must run once per cluster, not once per replica: two
replicas would each advance a step, tell each webhook every event, judge every
canary. The controller knows whether this replica leads (`ReleaseController.leading`:
the leader lock on PostgreSQL, asked every second; always on SQLite).
`while_leading` runs such a job's loop while it does and stops it when it no
longer does, so leadership moving (its holder died) moves the jobs within
about a second. Each job keeps what must survive the move in the database
(a webhook's cursor) or works it out again (which steps are due).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Protocol

log = logging.getLogger(__name__)

LOOK_SECONDS = 1.0
"""How often leadership is looked at (the follower updates it as often)."""


class Leads(Protocol):
    @property
    def leading(self) -> bool: ...


async def while_leading(
    replica: Leads,
    stop: asyncio.Event,
    job: Callable[[asyncio.Event], Coroutine[object, object, None]],
    name: str,
) -> None:
    """Run `job(its_stop)` whenever `replica` leads, until `stop` is set; `its_stop` is set
    (and the job awaited) when the replica stops leading."""
    while not stop.is_set():
        if not replica.leading:
            await _wait(stop, LOOK_SECONDS)
            continue
        log.info("job %s runs here: this replica leads", name)
        its_stop = asyncio.Event()
        task = asyncio.create_task(job(its_stop), name=name)
        while replica.leading and not stop.is_set() and not task.done():
            await _wait(stop, LOOK_SECONDS)
        ended_by_itself = task.done() and replica.leading and not stop.is_set()
        its_stop.set()
        await task
        if ended_by_itself:  # every job loops until told to stop: this one should not end
            log.warning("job %s ended by itself; starting it again", name)
        elif not stop.is_set():
            log.info("job %s stopped here: this replica no longer leads", name)


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
