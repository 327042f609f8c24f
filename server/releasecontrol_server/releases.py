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

    @property
    def soak_ends_at(self) -> datetime:
        return self.soak_started_at + timedelta(seconds=self.soak_seconds)

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


Command = Publish | DeployCanary | Promote | Rollback | SetChannel | Resign | Reconcile


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
) -> Transition | Unchanged:
    """Apply `command` to `state` (None: the feature has never been published).

    Returns the new state and its audit record, or Unchanged for an idempotent
    republish. Raises InvalidArgument, NotFound, AlreadyExists,
    FailedPrecondition (SoakNotOver) or StaleSequence, and then nothing changed.
    """
    validate_feature_id(feature_id)
    if not isinstance(command, Resign | Reconcile):
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
            return _promote(state, command, meta, now)
        case Rollback():
            return _rollback(state, command, meta, now)
        case SetChannel():
            return _set_channel(state, command, meta, now)
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
        detail=detail,
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
    _check_soak(cmd.soak_seconds)
    state.require(cmd.version)
    if state.stable == cmd.version:
        raise FailedPrecondition(
            f"version {cmd.version} is already stable for feature {state.feature_id!r}; "
            "a canary must be a different version"
        )
    detail = "; ".join(
        filter(None, [f"soak {format_duration(cmd.soak_seconds)}", _replacing(state, cmd.version)])
    )
    return _commit(
        state,
        meta,
        now,
        Action.DEPLOY_CANARY,
        cmd.version,
        detail,
        stable=state.stable,
        canary=Canary(cmd.version, now, cmd.soak_seconds),
    )


def _promote(state: FeatureState, cmd: Promote, meta: ChangeMeta, now: datetime) -> Transition:
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
    if left > 0:
        if not cmd.skip_soak:
            raise SoakNotOver(
                f"canary {canary.version} of feature {state.feature_id!r} is still soaking: "
                f"{format_duration(left)} left (ends {_iso(canary.soak_ends_at)}); wait, or "
                "skip the rest of the soak, giving a reason",
                seconds_left=left,
            )
        if not meta.reason.strip():
            raise InvalidArgument(
                "skipping the soak needs a reason: say why it cannot wait",
                field="reason",
            )
        detail = f"soak skipped with {format_duration(left)} left"
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
