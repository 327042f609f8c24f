"""The release state machine: state in, command in, new state and audit record out.

Pure: no clock, no I/O. The time of a change is passed in as `now`. Every rule a
release must follow lives here, and every rule is a test in
tests/unit/test_releases.py.

Rules:
- A version must be published before it can be on a channel.
- Publishing the same version again with the same manifest changes nothing;
  with a different manifest it is refused (AlreadyExists).
- One canary per feature; a new canary replaces the running one and restarts
  the soak.
- Promote takes only the version in canary, only after its soak, unless
  skip_soak is given with a reason.
- Rollback goes only to a version that was stable before (not the current
  one) and clears the canary.
- SetChannel (the operator fallback) sets one channel to any published version.
- A canary serves a weight (out of 10,000) of bucketed users; it runs a step plan
  (strictly increasing weights, each held for step_seconds) when given one, and
  its soak is then the whole plan. SetWeight needs a running canary and stops the
  plan (a person took over). AdvanceStep, which only the server sends, moves to
  the next step once the current one held long enough; after the last step, one
  of 100 %, it promotes the canary.
- expected_sequence, when given, must equal the current sequence (StaleSequence).
- Every change advances the feature's sequence by exactly one, including a
  re-sign (same channels, new expiry): hosts refuse new bytes under an old sequence.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from releasecontrol.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SoakNotOver,
    StaleSequence,
)
from releasecontrol.limits import TEXT_LIMITS, check_text
from releasecontrol.manifest import format_duration, validate_feature_id, validate_version
from releasecontrol.weights import (
    WEIGHT_SCALE,
    check_steps,
    check_weight,
    format_steps,
    format_weight,
)

MAX_SOAK_SECONDS = 30 * 24 * 3600


class Channel(enum.StrEnum):
    STABLE = "stable"
    CANARY = "canary"


class Action(enum.StrEnum):
    PUBLISH = "publish"
    DEPLOY_CANARY = "deploy_canary"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    SET_CHANNEL = "set_channel"
    SET_WEIGHT = "set_weight"
    ADVANCE_STEP = "advance_step"
    RESIGN = "resign"
    RECONCILE = "reconcile"


@dataclass(frozen=True)
class PublishedVersion:
    version: str
    manifest_sha256: str
    published_at: datetime
    was_stable: bool = False


@dataclass(frozen=True)
class Canary:
    version: str
    soak_started_at: datetime
    soak_seconds: int
    weight: int = 0
    """The share of bucketed users served the canary, out of WEIGHT_SCALE; 0: only hosts
    that opt into the canary channel."""
    steps: tuple[int, ...] = ()
    """The step plan (weights, increasing), or () when none runs; `weight` is one of them."""
    step_seconds: int = 0
    step_started_at: datetime | None = None
    """When the current step began (the plan's steps are each held step_seconds)."""
    min_loads: int = 0
    """Soak by exposure: the canary loads hosts must have reported (beacons) before it may
    be promoted, besides the time; 0: time alone."""

    @property
    def soak_ends_at(self) -> datetime:
        return self.soak_started_at + timedelta(seconds=self.soak_seconds)

    @property
    def next_step(self) -> int | None:
        """The plan's next weight, None when no plan runs or this is its last step."""
        later = [step for step in self.steps if step > self.weight]
        return later[0] if later else None

    def step_due_at(self) -> datetime | None:
        """When the current step has held long enough: the plan moves on (or, after its last
        step of 100 %, the canary is promoted); None when no plan runs or it ended below 100 %."""
        if not self.steps or self.step_started_at is None:
            return None
        if self.next_step is None and self.weight != WEIGHT_SCALE:
            return None
        return self.step_started_at + timedelta(seconds=self.step_seconds)

    def describe(self) -> str:
        """'5% of users' or '25% of users, step 2 of 4 of 5,25,50,100 %'."""
        text = f"{format_weight(self.weight)} of users"
        if self.steps:
            text += (
                f", step {self.steps.index(self.weight) + 1} of {len(self.steps)} of "
                f"{format_steps(self.steps)} (each {format_duration(self.step_seconds)})"
            )
        return text

    def exposure_left(self, canary_loads: int) -> int:
        """How many more canary loads the soak needs (0 once enough were reported)."""
        return max(0, self.min_loads - canary_loads)

    def seconds_left(self, now: datetime) -> int:
        """Whole seconds until the soak ends (rounded up), 0 once it is over."""
        left = (self.soak_ends_at - now).total_seconds()
        return max(0, int(-(-left // 1)))


@dataclass(frozen=True)
class FeatureState:
    """Everything the control plane knows about one feature's releases."""

    feature_id: str
    sequence: int = 0
    stable: str | None = None
    canary: Canary | None = None
    versions: tuple[PublishedVersion, ...] = ()
    updated_at: datetime | None = None
    updated_by: str = ""
    """Who the last change says made it (its actor)."""
    updated_by_principal: str = ""
    """The authenticated caller of the last change ("" before it was kept)."""

    def find(self, version: str) -> PublishedVersion | None:
        for v in self.versions:
            if v.version == version:
                return v
        return None

    def require(self, version: str) -> PublishedVersion:
        """The published version, or NotFound naming the versions there are."""
        found = self.find(version)
        if found is None:
            known = ", ".join(v.version for v in self.versions) or "none"
            raise NotFound(
                f"version {version!r} of feature {self.feature_id!r} is not published "
                f"(published: {known}); publish it first with `releasectl publish`"
            )
        return found


@dataclass(frozen=True)
class ChangeMeta:
    """Who, why and how safely; carried by every command."""

    actor: str
    reason: str = ""
    ticket: str = ""
    expected_sequence: int | None = None
    principal: str = ""
    """The authenticated caller; `actor` is who it says the change is for."""
    approved_by: str = ""
    """The second principal who approved the change (approvals.py), named in its record."""


@dataclass(frozen=True)
class Publish:
    version: str
    manifest_sha256: str
    channel: Channel = Channel.STABLE
    soak_seconds: int = 0


@dataclass(frozen=True)
class DeployCanary:
    version: str
    soak_seconds: int
    weight: int = 0
    steps: tuple[int, ...] = ()
    """A step plan: the canary starts at steps[0]; the soak is then the whole plan
    (len(steps) x step_seconds) and `soak_seconds` and `weight` must be left 0."""
    step_seconds: int = 0
    min_loads: int = 0
    """Soak by exposure: canary loads to be reported before promotion (besides the soak)."""


@dataclass(frozen=True)
class SetWeight:
    """Serve the running canary to `weight` of bucketed users; stops a step plan."""

    weight: int

    @property
    def version(self) -> str:
        return ""


@dataclass(frozen=True)
class AdvanceStep:
    """Sent by the server: the current step of the canary's plan held long enough."""

    @property
    def version(self) -> str:
        return ""


@dataclass(frozen=True)
class AbortCanary:
    """Take the canary off every host, stable staying (the analysis found it worse)."""

    @property
    def version(self) -> str:
        return ""


@dataclass(frozen=True)
class Promote:
    version: str
    skip_soak: bool = False


@dataclass(frozen=True)
class Rollback:
    version: str


@dataclass(frozen=True)
class SetChannel:
    version: str
    channel: Channel
    soak_seconds: int = 0


@dataclass(frozen=True)
class Resign:
    """Sign the unchanged state again (sequence + 1) before its index expires."""

    @property
    def version(self) -> str:
        return ""


@dataclass(frozen=True)
class Reconcile:
    """Sign the unchanged state again above `above`, a sequence hosts may have seen: the CDN
    origin served it, and the store is behind it (a database restored from an older
    backup). Sequences only go up, so the feature jumps to `above` + 1."""

    above: int

    @property
    def version(self) -> str:
        return ""


Command = (
    Publish
    | DeployCanary
    | Promote
    | Rollback
    | SetChannel
    | SetWeight
    | AdvanceStep
    | AbortCanary
    | Resign
    | Reconcile
)
_NO_VERSION = (SetWeight, AdvanceStep, AbortCanary, Resign, Reconcile)
MAX_MIN_LOADS = 1_000_000_000


@dataclass(frozen=True)
class AuditRecord:
    """One committed change: who, why, when, and what moved where."""

    feature_id: str
    sequence: int
    action: Action
    version: str
    from_stable: str | None
    to_stable: str | None
    from_canary: str | None
    to_canary: str | None
    actor: str
    reason: str
    ticket: str
    at: datetime
    detail: str = ""
    principal: str = ""
    """The authenticated caller that made the change ("" in records older than the field)."""


@dataclass(frozen=True)
class Transition:
    state: FeatureState
    record: AuditRecord


@dataclass(frozen=True)
class Unchanged:
    """The command asked for what already is; nothing to commit."""

    state: FeatureState
    why: str = field(default="")


def apply(
    state: FeatureState | None,
    feature_id: str,
    command: Command,
    meta: ChangeMeta,
    now: datetime,
    *,
    canary_loads: int = 0,
) -> Transition | Unchanged:
    """Apply `command` to `state` (None: the feature has never been published).

    `canary_loads`: the loads of the running canary hosts reported since its soak began
    (what a soak by exposure, `Canary.min_loads`, counts); the caller observes them.

    Returns the new state and its audit record, or Unchanged for an idempotent
    republish. Raises InvalidArgument, NotFound, AlreadyExists,
    FailedPrecondition (SoakNotOver) or StaleSequence, and then nothing changed.
    """
    validate_feature_id(feature_id)
    if not isinstance(command, _NO_VERSION):
        validate_version(command.version)
    _check_meta(meta)
    if state is None:
        if not isinstance(command, Publish):
            raise NotFound(
                f"feature {feature_id!r} has no published versions; "
                f"publish one first with `releasectl publish --feature {feature_id}`"
            )
        state = FeatureState(feature_id=feature_id)
    if state.feature_id != feature_id:
        raise ValueError(f"state of {state.feature_id!r} passed for feature {feature_id!r}")
    if meta.expected_sequence is not None and meta.expected_sequence != state.sequence:
        raise StaleSequence(
            f"feature {feature_id!r} is at sequence {state.sequence}, expected "
            f"{meta.expected_sequence}: someone else changed it; re-read the status and retry"
        )
    match command:
        case Publish():
            return _publish(state, command, meta, now)
        case DeployCanary():
            return _deploy_canary(state, command, meta, now)
        case Promote():
            return _promote(state, command, meta, now, canary_loads)
        case Rollback():
            return _rollback(state, command, meta, now)
        case SetChannel():
            return _set_channel(state, command, meta, now)
        case SetWeight():
            return _set_weight(state, command, meta, now)
        case AdvanceStep():
            return _advance_step(state, meta, now, canary_loads)
        case AbortCanary():
            return _abort_canary(state, meta, now)
        case Reconcile(above=above):
            if above < state.sequence:
                raise ValueError(f"reconcile above {above}, below the state's {state.sequence}")
            return _commit(
                state,
                meta,
                now,
                Action.RECONCILE,
                state.stable or "",
                f"signed again above sequence {above}, which the CDN origin served (the store "
                "was restored from an older backup); nothing else changed",
                stable=state.stable,
                canary=state.canary,
                sequence=above + 1,
            )
        case Resign():
            return _commit(
                state,
                meta,
                now,
                Action.RESIGN,
                state.stable or "",
                "re-signed before the index expires; nothing else changed",
                stable=state.stable,
                canary=state.canary,
            )
    raise AssertionError(f"unknown command {command!r}")  # pragma: no cover


def _check_meta(meta: ChangeMeta) -> None:
    # The rule every interface checks first, with its own field names (limits.py); here too,
    # for any other caller of the state machine.
    for name in ("actor", "reason", "ticket"):
        check_text(getattr(meta, name), name, TEXT_LIMITS[name])
    if meta.expected_sequence is not None and meta.expected_sequence < 0:
        raise InvalidArgument("expected_sequence must be zero or more", field="expected_sequence")


def _check_soak(soak_seconds: int) -> None:
    if not 0 <= soak_seconds <= MAX_SOAK_SECONDS:
        raise InvalidArgument(
            f"soak of {soak_seconds}s is out of range; give 0s to 30d (e.g. 30m)",
            field="soak_seconds",
        )


def _commit(
    state: FeatureState,
    meta: ChangeMeta,
    now: datetime,
    action: Action,
    version: str,
    detail: str,
    *,
    stable: str | None,
    canary: Canary | None,
    versions: Sequence[PublishedVersion] | None = None,
    sequence: int | None = None,
) -> Transition:
    """The new state with sequence + 1 (or `sequence`, above it), and the audit record
    describing the move."""
    new_versions = tuple(versions if versions is not None else state.versions)
    if stable is not None:
        new_versions = tuple(
            dataclasses.replace(v, was_stable=True) if v.version == stable else v
            for v in new_versions
        )
    new_state = FeatureState(
        feature_id=state.feature_id,
        sequence=state.sequence + 1 if sequence is None else sequence,
        stable=stable,
        canary=canary,
        versions=new_versions,
        updated_at=now,
        updated_by=meta.actor,
        updated_by_principal=meta.principal,
    )
    record = AuditRecord(
        feature_id=state.feature_id,
        sequence=new_state.sequence,
        action=action,
        version=version,
        from_stable=state.stable,
        to_stable=stable,
        from_canary=state.canary.version if state.canary else None,
        to_canary=canary.version if canary else None,
        actor=meta.actor,
        reason=meta.reason,
        ticket=meta.ticket,
        at=now,
        detail=f"{detail}; approved by {meta.approved_by}" if meta.approved_by else detail,
        principal=meta.principal,
    )
    return Transition(new_state, record)


def _replacing(state: FeatureState, version: str) -> str:
    if state.canary is None:
        return ""
    if state.canary.version == version:
        return f"canary {version} redeployed; soak restarted"
    return f"replaced canary {state.canary.version}; soak restarted"


def _publish(
    state: FeatureState, cmd: Publish, meta: ChangeMeta, now: datetime
) -> Transition | Unchanged:
    existing = state.find(cmd.version)
    if existing is not None:
        if existing.manifest_sha256 == cmd.manifest_sha256:
            return Unchanged(state, f"version {cmd.version} is already published")
        raise AlreadyExists(
            f"version {cmd.version} of feature {state.feature_id!r} was already published "
            f"with a different manifest (sha256 {existing.manifest_sha256[:12]}…); "
            "a published version never changes: bump the version in manifest.json"
        )
    versions = (
        *state.versions,
        PublishedVersion(cmd.version, cmd.manifest_sha256, now),
    )
    if cmd.channel is Channel.CANARY:
        _check_soak(cmd.soak_seconds)
        if state.stable is None:
            raise FailedPrecondition(
                f"feature {state.feature_id!r} has no stable version yet, so there is "
                "nothing for a canary to be compared with; publish to stable first"
            )
        canary = Canary(cmd.version, now, cmd.soak_seconds)
        detail = "; ".join(
            filter(
                None,
                [
                    f"published as canary, soak {format_duration(cmd.soak_seconds)}",
                    _replacing(state, cmd.version),
                ],
            )
        )
        return _commit(
            state,
            meta,
            now,
            Action.PUBLISH,
            cmd.version,
            detail,
            stable=state.stable,
            canary=canary,
            versions=versions,
        )
    detail = "published as stable"
    if state.canary is not None:
        detail += f"; cleared canary {state.canary.version}"
    return _commit(
        state,
        meta,
        now,
        Action.PUBLISH,
        cmd.version,
        detail,
        stable=cmd.version,
        canary=None,
        versions=versions,
    )


def _deploy_canary(
    state: FeatureState, cmd: DeployCanary, meta: ChangeMeta, now: datetime
) -> Transition:
    canary = _new_canary(cmd, now)
    state.require(cmd.version)
    if state.stable == cmd.version:
        raise FailedPrecondition(
            f"version {cmd.version} is already stable for feature {state.feature_id!r}; "
            "a canary must be a different version"
        )
    detail = "; ".join(
        filter(
            None,
            [
                f"soak {format_duration(canary.soak_seconds)}",
                canary.describe() if canary.weight or canary.steps else "",
                _replacing(state, cmd.version),
            ],
        )
    )
    return _commit(
        state,
        meta,
        now,
        Action.DEPLOY_CANARY,
        cmd.version,
        detail,
        stable=state.stable,
        canary=canary,
    )


def _new_canary(cmd: DeployCanary, now: datetime) -> Canary:
    """The canary `cmd` starts: with a step plan, at its first step, soaking the whole plan."""
    if not 0 <= cmd.min_loads <= MAX_MIN_LOADS:
        raise InvalidArgument(
            f"min_loads {cmd.min_loads} is out of range; give 0 to {MAX_MIN_LOADS:,}",
            field="min_loads",
        )
    return dataclasses.replace(_timed_canary(cmd, now), min_loads=cmd.min_loads)


def _timed_canary(cmd: DeployCanary, now: datetime) -> Canary:
    check_weight(cmd.weight)
    if not cmd.steps:
        if cmd.step_seconds:
            raise InvalidArgument(
                "step_seconds is set without steps; give steps too, e.g. 5,25,50,100",
                field="step_seconds",
            )
        _check_soak(cmd.soak_seconds)
        return Canary(cmd.version, now, cmd.soak_seconds, weight=cmd.weight)
    steps = check_steps(cmd.steps)
    if cmd.weight:
        raise InvalidArgument(
            "give a weight or steps, not both: a step plan starts at its first step",
            field="weight",
        )
    if cmd.soak_seconds:
        raise InvalidArgument(
            "give a soak or steps, not both: with steps the soak is the whole plan "
            "(steps x step soak)",
            field="soak_seconds",
        )
    if cmd.step_seconds < 1:
        raise InvalidArgument(
            "steps need a step soak of at least 1s: how long each step holds, e.g. 10m",
            field="step_seconds",
        )
    soak_seconds = cmd.step_seconds * len(steps)
    if soak_seconds > MAX_SOAK_SECONDS:
        raise InvalidArgument(
            f"{len(steps)} steps of {format_duration(cmd.step_seconds)} soak "
            f"{format_duration(soak_seconds)}, more than {format_duration(MAX_SOAK_SECONDS)}; "
            "give fewer steps or a shorter step soak",
            field="step_seconds",
        )
    return Canary(
        cmd.version,
        now,
        soak_seconds,
        weight=steps[0],
        steps=steps,
        step_seconds=cmd.step_seconds,
        step_started_at=now,
    )


def _running_canary(state: FeatureState, doing: str) -> Canary:
    if state.canary is None:
        raise FailedPrecondition(
            f"cannot {doing} for feature {state.feature_id!r}: no canary is running; deploy "
            "one first with `releasectl release canary`"
        )
    return state.canary


def _set_weight(
    state: FeatureState, cmd: SetWeight, meta: ChangeMeta, now: datetime
) -> Transition | Unchanged:
    check_weight(cmd.weight)
    canary = _running_canary(state, "set a canary weight")
    if canary.weight == cmd.weight and not canary.steps:
        return Unchanged(
            state, f"canary {canary.version} already serves {format_weight(cmd.weight)} of users"
        )
    detail = (
        f"canary {canary.version} weight {format_weight(canary.weight)} -> "
        f"{format_weight(cmd.weight)}"
    )
    if cmd.weight < canary.weight:
        detail += "; users above the new weight go back to stable"
    if canary.steps:
        detail += f"; step plan {format_steps(canary.steps)} stopped"
    return _commit(
        state,
        meta,
        now,
        Action.SET_WEIGHT,
        canary.version,
        detail,
        stable=state.stable,
        canary=dataclasses.replace(
            canary, weight=cmd.weight, steps=(), step_seconds=0, step_started_at=None
        ),
    )


def _advance_step(
    state: FeatureState, meta: ChangeMeta, now: datetime, canary_loads: int
) -> Transition:
    canary = _running_canary(state, "advance a step plan")
    due = canary.step_due_at()
    if due is None:
        raise FailedPrecondition(
            f"canary {canary.version} of feature {state.feature_id!r} runs no step plan "
            "with a step to go"
        )
    if now < due:
        left = max(1, int(-(-(due - now).total_seconds() // 1)))
        raise SoakNotOver(
            f"step {format_weight(canary.weight)} of canary {canary.version} holds "
            f"{format_duration(left)} more (until {_iso(due)})",
            seconds_left=left,
        )
    after = canary.next_step
    if after is None:  # the last step, of 100 %, held: the plan is done
        _require_exposure(state, canary, canary_loads)
        return _commit(
            state,
            meta,
            now,
            Action.PROMOTE,
            canary.version,
            f"canary {canary.version} promoted: step plan {format_steps(canary.steps)} completed",
            stable=canary.version,
            canary=None,
        )
    return _commit(
        state,
        meta,
        now,
        Action.ADVANCE_STEP,
        canary.version,
        f"canary {canary.version} weight {format_weight(canary.weight)} -> "
        f"{format_weight(after)}: step {canary.steps.index(after) + 1} of {len(canary.steps)} "
        f"of {format_steps(canary.steps)}",
        stable=state.stable,
        canary=dataclasses.replace(canary, weight=after, step_started_at=now),
    )


def _require_exposure(state: FeatureState, canary: Canary, canary_loads: int) -> None:
    if canary.exposure_left(canary_loads):
        raise SoakNotOver(
            f"canary {canary.version} of feature {state.feature_id!r} is still soaking: "
            f"{canary_loads:,} of the {canary.min_loads:,} loads it needs",
            seconds_left=0,
        )


def _abort_canary(state: FeatureState, meta: ChangeMeta, now: datetime) -> Transition:
    canary = _running_canary(state, "roll a canary back")
    return _commit(
        state,
        meta,
        now,
        Action.ROLLBACK,
        state.stable or "",
        f"canary {canary.version} rolled back; stable {state.stable} stays",
        stable=state.stable,
        canary=None,
    )


def _promote(
    state: FeatureState, cmd: Promote, meta: ChangeMeta, now: datetime, canary_loads: int
) -> Transition:
    state.require(cmd.version)
    canary = state.canary
    if canary is None or canary.version != cmd.version:
        running = f"the canary is {canary.version}" if canary else "no canary is running"
        raise FailedPrecondition(
            f"cannot promote {cmd.version} of feature {state.feature_id!r}: only the version "
            f"in canary can be promoted and {running}; deploy it first with "
            "`releasectl release canary`"
        )
    left = canary.seconds_left(now)
    detail = f"canary {canary.version} promoted after {format_duration(canary.soak_seconds)} soak"
    if canary.min_loads:
        detail += f" and {canary_loads:,} loads"
    short = canary.exposure_left(canary_loads)
    if left > 0 or short:
        missing = []
        if left:
            missing.append(f"{format_duration(left)} left (ends {_iso(canary.soak_ends_at)})")
        if short:
            missing.append(f"{canary_loads:,} of the {canary.min_loads:,} loads it needs")
        if not cmd.skip_soak:
            raise SoakNotOver(
                f"canary {canary.version} of feature {state.feature_id!r} is still soaking: "
                f"{'; '.join(missing)}; wait, or skip the rest of the soak, giving a reason",
                seconds_left=left,
            )
        if not meta.reason.strip():
            raise InvalidArgument(
                "skipping the soak needs a reason: say why it cannot wait",
                field="reason",
            )
        detail = f"soak skipped with {format_duration(left)} left"
        if short:
            detail += f" and {short:,} loads to go"
    return _commit(
        state,
        meta,
        now,
        Action.PROMOTE,
        cmd.version,
        detail,
        stable=cmd.version,
        canary=None,
    )


def _rollback(state: FeatureState, cmd: Rollback, meta: ChangeMeta, now: datetime) -> Transition:
    target = state.require(cmd.version)
    if state.stable == cmd.version:
        raise FailedPrecondition(
            f"version {cmd.version} is already stable for feature {state.feature_id!r}; "
            "roll back to an earlier version"
        )
    if not target.was_stable:
        earlier = [v.version for v in state.versions if v.was_stable and v.version != state.stable]
        raise FailedPrecondition(
            f"version {cmd.version} of feature {state.feature_id!r} was never stable, so it "
            "is not a known-good rollback target; roll back to one of: "
            f"{', '.join(earlier) or 'none'} (or use `releasectl channel fallback`)"
        )
    detail = f"rolled back from {state.stable}"
    if state.canary is not None:
        detail += f"; cleared canary {state.canary.version}"
    return _commit(
        state,
        meta,
        now,
        Action.ROLLBACK,
        cmd.version,
        detail,
        stable=cmd.version,
        canary=None,
    )


def _set_channel(
    state: FeatureState, cmd: SetChannel, meta: ChangeMeta, now: datetime
) -> Transition:
    state.require(cmd.version)
    if cmd.channel is Channel.STABLE:
        canary = state.canary
        detail = f"stable set to {cmd.version} by operator fallback"
        if canary is not None and canary.version == cmd.version:
            canary = None
            detail += f"; cleared canary {cmd.version}"
        return _commit(
            state,
            meta,
            now,
            Action.SET_CHANNEL,
            cmd.version,
            detail,
            stable=cmd.version,
            canary=canary,
        )
    _check_soak(cmd.soak_seconds)
    if state.stable == cmd.version:
        raise FailedPrecondition(
            f"version {cmd.version} is stable for feature {state.feature_id!r}; "
            "the canary must be a different version"
        )
    detail = "; ".join(
        filter(
            None,
            [
                f"canary set to {cmd.version} by operator fallback, soak "
                f"{format_duration(cmd.soak_seconds)}",
                _replacing(state, cmd.version),
            ],
        )
    )
    return _commit(
        state,
        meta,
        now,
        Action.SET_CHANNEL,
        cmd.version,
        detail,
        stable=state.stable,
        canary=Canary(cmd.version, now, cmd.soak_seconds),
    )


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
