"""Running canaries judged from what hosts report, and rolled back when worse.

Every `interval_seconds`, for each feature with a canary, the loads and failures
hosts reported (beacons.py) since the canary's soak began are summed per side:
the canary's version and the stable version. `analysis.judge` (a sequential
test, docs/analysis.md) gives the verdict; a `fail` rolls the canary back as an
ordinary change (actor `releasecontrol-analysis`, the reason naming the figures:
"failure rate 3.1% vs 0.4% over 12,400 loads"), decided on the feature's
sequence, so a canary a person changed meanwhile is left alone.

A step plan (steps.py) moves on only while the analysis is neither waiting for
data nor failing. With no beacon keys configured there is no analysis: steps
move on time alone, and `release analysis` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from releasecontrol.errors import ReleaseControlError
from releasecontrol_server.analysis import DEFAULT_POLICY, Kind, Policy, Sample, Verdict, judge
from releasecontrol_server.analysis import reach as shares
from releasecontrol_server.beacons import Counts
from releasecontrol_server.control import ReleaseController, utc_now
from releasecontrol_server.releases import AbortCanary, ChangeMeta, FeatureState

log = logging.getLogger(__name__)

ACTOR = "releasecontrol-analysis"
INTERVAL_SECONDS = 5.0
REACH_WINDOW = timedelta(minutes=10)
"""Reach counts the batches hosts sent this long back: the fleet as it is now."""
_ADVANCING = (Kind.RUNNING, Kind.PASS)


@dataclass(frozen=True)
class Judged:
    """The last verdict on a feature's canary."""

    feature_id: str
    canary_version: str
    stable_version: str | None
    verdict: Verdict
    at: datetime


class CountSource(Protocol):
    """Where the loads and failures of feature versions come from."""

    async def counts(
        self, feature_id: str, versions: Iterable[str], since: datetime, now: datetime
    ) -> Mapping[str, Counts]: ...


class BeaconSource:
    """Counts from the beacons hosts sent (the default source)."""

    def __init__(self, controller: ReleaseController) -> None:
        self._controller = controller

    async def counts(
        self, feature_id: str, versions: Iterable[str], since: datetime, now: datetime
    ) -> Mapping[str, Counts]:
        kept = await self._controller.beacon_counts(feature_id, since)
        return {version: kept[version] for version in versions}


def sample(counts: Counts) -> Sample:
    return Sample(
        counts.loads,
        counts.failures,
        kinds=(
            ("entry errors", counts.entry_errors),
            ("failed loads", counts.load_failures),
            ("refusals", counts.refusals),
        ),
    )


class CanaryAnalyzer:
    """Judges every running canary now and then; rolls back those that fail."""

    def __init__(
        self,
        controller: ReleaseController,
        *,
        enabled: bool,
        policy: Policy = DEFAULT_POLICY,
        clock: Callable[[], datetime] = utc_now,
        interval_seconds: float = INTERVAL_SECONDS,
        source: CountSource | None = None,
    ) -> None:
        """`source`: where counts come from (default: the beacons)."""
        self._controller = controller
        self.source: CountSource = source or BeaconSource(controller)
        self.enabled = enabled
        self.policy = policy
        self._clock = clock
        self.interval_seconds = interval_seconds
        self.latest: dict[str, Judged] = {}
        self.on_verdict: Callable[[Judged], None] | None = None
        self._told: dict[tuple[str, str], Kind] = {}  # the verdict webhooks heard last

    async def judge(self, state: FeatureState) -> Judged | None:
        """The verdict on `state`'s canary from the counts so far (None: no canary)."""
        canary = state.canary
        if canary is None:
            return None
        versions = [canary.version, *([state.stable] if state.stable else [])]
        counts = await self.source.counts(
            state.feature_id, versions, canary.soak_started_at, self._clock()
        )
        stable = counts[state.stable] if state.stable else Counts()
        verdict = judge(sample(counts[canary.version]), sample(stable), policy=self.policy)
        judged = Judged(state.feature_id, canary.version, state.stable, verdict, self._clock())
        self.latest[state.feature_id] = judged
        return judged

    async def judge_all(self) -> list[Judged]:
        """Judge every running canary; roll back each that fails. Returns the verdicts."""
        out = []
        running = {s.feature_id for s in self._controller.status().features if s.canary}
        for feature_id in list(self.latest):
            if feature_id not in running:
                del self.latest[feature_id]
        for state in self._controller.status().features:
            try:
                judged = await self.judge(state)
            except ReleaseControlError as error:  # the source failed: judged again next round
                self.latest.pop(state.feature_id, None)  # a step plan holds without fresh data
                log.warning(
                    "canary not judged feature=%s error=%r", state.feature_id, error.message
                )
                continue
            if judged is None:
                continue
            out.append(judged)
            if self.on_verdict is not None:
                self.on_verdict(judged)
            await self._tell(judged)
            if judged.verdict.kind is Kind.FAIL:
                await self._roll_back(state, judged)
        return out

    async def _tell(self, judged: Judged) -> None:
        """A verdict event for the webhooks when a canary's analysis reaches pass or fail
        (once per canary and kind; a process restarted may tell one again)."""
        key = (judged.feature_id, judged.canary_version)
        kind = judged.verdict.kind
        if kind not in (Kind.PASS, Kind.FAIL) or self._told.get(key) is kind:
            return
        self._told[key] = kind
        verdict = judged.verdict
        await self._controller.add_event(
            "verdict",
            judged.feature_id,
            {
                "canary_version": judged.canary_version,
                "stable_version": judged.stable_version,
                "verdict": kind.value,
                "reason": verdict.reason,
                "canary_loads": verdict.canary_loads,
                "canary_failures": verdict.canary_failures,
                "stable_loads": verdict.stable_loads,
                "stable_failures": verdict.stable_failures,
            },
        )

    async def _roll_back(self, state: FeatureState, judged: Judged) -> None:
        try:
            await self._controller.change(
                state.feature_id,
                AbortCanary(),
                ChangeMeta(
                    actor=ACTOR,
                    reason=judged.verdict.reason,
                    principal=ACTOR,
                    expected_sequence=state.sequence,
                ),
                rpc="AbortCanary",
                request_id="",
            )
        except ReleaseControlError as error:  # changed meanwhile: judged again next round
            log.warning(
                "canary not rolled back feature=%s error=%r", state.feature_id, error.message
            )
            return
        log.warning(
            "canary rolled back by analysis feature=%s version=%s reason=%r",
            state.feature_id,
            judged.canary_version,
            judged.verdict.reason,
        )

    def allows_step(self, feature_id: str, canary_version: str) -> bool:
        """Whether a step plan may move on: no analysis, or it has data and does not fail."""
        if not self.enabled:
            return True
        judged = self.latest.get(feature_id)
        return (
            judged is not None
            and judged.canary_version == canary_version
            and judged.verdict.kind in _ADVANCING
        )

    async def canary_loads(self, feature_id: str, version: str, since: datetime) -> int:
        """The loads of `version` reported since `since` (a soak by exposure counts them)."""
        counts = await self.source.counts(feature_id, [version], since, self._clock())
        return counts[version].loads

    async def reach(self, feature_id: str) -> dict[str, tuple[float, int]]:
        """Per version: its share of the batches hosts sent in the last REACH_WINDOW, and
        how many batches that was."""
        counts = await self._controller.beacon_counts(feature_id, self._clock() - REACH_WINDOW)
        batches = {version: c.batches for version, c in counts.items() if c.batches}
        return {version: (share, batches[version]) for version, share in shares(batches).items()}

    async def run(self, stop: asyncio.Event) -> None:
        """Judge now and then every `interval_seconds` until `stop` is set (disabled: only
        wait for it, as a job that leadership runs must)."""
        if not self.enabled:
            await stop.wait()
            return
        while not stop.is_set():
            try:
                await self.judge_all()
            except Exception:  # a bug: logged, and the next round tries again
                log.exception("judging canaries failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.interval_seconds)
