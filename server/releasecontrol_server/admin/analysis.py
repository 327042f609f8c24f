"""The feature page's analysis panel: the canary's verdict, its soak by exposure, and reach.

    exposure(controller, state)          the canary's loads so far vs its min_loads
    canary_loads(controller, state, cmd) the loads the controller would count for a command
    panel(controller, analyzer, state)   everything the panel shows, in words

The verdict is judged afresh from the counts hosts reported (as `release analysis`
does, through the same `CanaryAnalyzer.judge`), so the page and the CLI agree.
Reach is each version's share of the reports hosts sent in the last 10 minutes:
after a rollback it shows the fleet leaving the bad version. With no analyzer, or
one that is off (no beacon keys), the panel says so in one line. A count source that
fails (a Prometheus server down) leaves the page up: the panel says what failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from releasecontrol.errors import ReleaseControlError
from releasecontrol_server.analysis import Kind, percent
from releasecontrol_server.analyzer import REACH_WINDOW, CanaryAnalyzer
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.releases import Command, FeatureState

OFF = (
    "No analysis: the control plane takes no beacons (set beacon_keys); canaries are "
    "judged by time alone."
)
"""The panel's one line when there is no analysis (the CLI's `release analysis` words)."""

MEANING = {
    Kind.WAITING: "too few loads on a side to judge yet",
    Kind.RUNNING: "enough loads, no decision yet",
    Kind.PASS: "within budget",
    Kind.FAIL: "worse than stable beyond the budget: the canary is rolled back",
}
"""What each verdict means, after its name."""


@dataclass(frozen=True)
class Exposure:
    """A soak by exposure: the canary loads hosts reported since its soak began."""

    loads: int
    min_loads: int
    error: str = ""
    """Why the loads are not known now (the count source failed); "" when they are."""

    @property
    def left(self) -> int:
        return max(0, self.min_loads - self.loads)

    @property
    def text(self) -> str:
        """'1,200 of 5,000 loads'."""
        if self.error:
            return f"? of {self.min_loads:,} loads (not known now: {self.error})"
        return f"{self.loads:,} of {self.min_loads:,} loads"


async def exposure(controller: ReleaseController, state: FeatureState) -> Exposure | None:
    """The running canary's soak by exposure (None: no canary, or time alone).

    Counted by the controller's own count (`count_canary_loads`: the analysis' source)
    of the canary version's loads since its soak began, as a promote counts them.
    """
    canary = state.canary
    if canary is None or not canary.min_loads:
        return None
    try:
        loads = await controller.count_canary_loads(
            state.feature_id, canary.version, canary.soak_started_at
        )
    except ReleaseControlError as error:
        return Exposure(0, canary.min_loads, error=error.message)
    return Exposure(loads, canary.min_loads)


async def canary_loads(
    controller: ReleaseController, state: FeatureState | None, command: Command
) -> int:
    """The canary loads `ReleaseController.change` counts for `command` on `state`
    (`ReleaseController.canary_loads_for`: the rule has one home). Raises what the count
    source raises."""
    return await controller.canary_loads_for(state, command)


@dataclass(frozen=True)
class Side:
    """One row of the verdict's figures."""

    name: str
    version: str
    loads: int
    failures: int

    @property
    def rate(self) -> str:
        return percent(self.failures / self.loads) if self.loads else "—"


@dataclass(frozen=True)
class Verdict:
    kind: str
    meaning: str
    reason: str
    sides: tuple[Side, Side]
    judged_at: datetime


@dataclass(frozen=True)
class Reach:
    version: str
    channel: str
    share: float
    share_text: str
    reports: int


@dataclass(frozen=True)
class Panel:
    enabled: bool
    verdict: Verdict | None
    reach: list[Reach]
    error: str = ""
    """Why no verdict could be given now (the count source failed)."""
    window_minutes: int = int(REACH_WINDOW.total_seconds() // 60)


async def panel(
    controller: ReleaseController, analyzer: CanaryAnalyzer | None, state: FeatureState
) -> Panel:
    """What the analysis panel of `state`'s page shows; disabled without beacons."""
    if analyzer is None or not analyzer.enabled:
        return Panel(enabled=False, verdict=None, reach=[])
    verdict, error = None, ""
    try:
        judged = await analyzer.judge(state)
    except ReleaseControlError as failed:  # as the analyzer's own round: no verdict now
        judged, error = None, failed.message
    if judged is not None:
        v = judged.verdict
        verdict = Verdict(
            kind=v.kind.value,
            meaning=MEANING[v.kind],
            reason=v.reason,
            sides=(
                Side("Canary", judged.canary_version, v.canary_loads, v.canary_failures),
                Side("Stable", judged.stable_version or "none", v.stable_loads, v.stable_failures),
            ),
            judged_at=judged.at,
        )
    shares = await analyzer.reach(state.feature_id)
    reach = [
        Reach(version, _channel(state, version), share, share_text(share), reports)
        for version, (share, reports) in shares.items()
    ]
    reach.sort(key=lambda r: (-r.share, r.version))
    return Panel(enabled=True, verdict=verdict, reach=reach, error=error)


def share_text(share: float) -> str:
    """A share of reports: '42%', '4.2%', '0.42%' (a version almost gone is not shown as 0%)."""
    return f"{share:.0%}" if share >= 0.1 else percent(share)


def _channel(state: FeatureState, version: str) -> str:
    """Where `version` is served now: hosts still reporting another one are leaving it."""
    if state.stable == version:
        return "stable"
    if state.canary is not None and state.canary.version == version:
        return "canary"
    return "no channel"
