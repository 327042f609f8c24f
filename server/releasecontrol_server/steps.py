"""Canary step plans, advanced by the server.

A canary deployed with `--steps 5,25,50,100 --step-soak 10m` starts at 5 %;
each time the current step has held its step soak, and the analysis of what
hosts report (analyzer.py, when beacons are configured) neither waits for
data nor fails, the server moves it to the
next step as an ordinary change (sequence + 1, audit record by
`releasecontrol-steps`), and after a last step of 100 % it promotes the canary,
unless the feature needs approval to promote (approvals.py): then it holds at
100 % until a person asks and another approves.
The rules (when a step is due, what it moves to) are the state machine's
(`releases.AdvanceStep`); this only notices when one is due.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from releasecontrol.errors import ReleaseControlError
from releasecontrol_server.control import ReleaseController, utc_now
from releasecontrol_server.releases import AdvanceStep, ChangeMeta

log = logging.getLogger(__name__)

ACTOR = "releasecontrol-steps"
REASON = "the step held its step soak"
CHECK_SECONDS = 1.0
"""How often the snapshot is looked at: a step moves at most this late."""


class StepRunner:
    """Finds canaries whose current step held long enough and advances them."""

    def __init__(
        self,
        controller: ReleaseController,
        *,
        clock: Callable[[], datetime] = utc_now,
        interval_seconds: float = CHECK_SECONDS,
        analysis: Callable[[str, str], bool] = lambda feature, version: True,
    ) -> None:
        """`analysis(feature, canary version)`: whether the canary's analysis lets its plan
        move on (`CanaryAnalyzer.allows_step`)."""
        self._controller = controller
        self._analysis = analysis
        self._clock = clock
        self.interval_seconds = interval_seconds

    def due(self, now: datetime) -> list[tuple[str, int]]:
        """(feature, sequence) of each canary whose step is due at `now`."""
        out = []
        for state in self._controller.status().features:
            canary = state.canary
            due_at = None if canary is None else canary.step_due_at()
            if due_at is None or due_at > now:
                continue
            if self._controller.approvals.gate(state.feature_id, AdvanceStep(), state):
                continue  # a protected feature holds at its last step: people promote it
            if canary is not None and not self._analysis(state.feature_id, canary.version):
                continue  # the analysis waits for data, or is about to roll it back
            out.append((state.feature_id, state.sequence))
        return out

    async def advance_due(self) -> list[str]:
        """Advance every due canary; returns the features moved. Each change names the
        sequence it was decided on, so one a person changed meanwhile is left alone."""
        moved = []
        for feature_id, sequence in self.due(self._clock()):
            try:
                await self._controller.change(
                    feature_id,
                    AdvanceStep(),
                    ChangeMeta(
                        actor=ACTOR, reason=REASON, principal=ACTOR, expected_sequence=sequence
                    ),
                    rpc="AdvanceStep",
                    request_id="",
                )
            except ReleaseControlError as error:  # changed meanwhile, or the origin is down
                log.warning("step not advanced feature=%s error=%r", feature_id, error.message)
                continue
            moved.append(feature_id)
        return moved

    async def run(self, stop: asyncio.Event) -> None:
        """Check now and then every `interval_seconds` until `stop` is set."""
        while not stop.is_set():
            try:
                await self.advance_due()
            except Exception:  # a bug: logged, and the next check tries again
                log.exception("advancing canary steps failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_seconds)
            except TimeoutError:
                continue
