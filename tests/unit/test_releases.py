"""The release state machine: every rule in releasecontrol_server.releases, as a table.

The clock is a fixed `NOW`; canaries are built with a known start so the soak
left is known to the second. A refused command must raise the exact error class,
say what was wrong and how to fix it, and leave the input state as it was.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import pytest

from releasecontrol.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ReleaseControlError,
    SoakNotOver,
    StaleSequence,
)
from releasecontrol.limits import TEXT_LIMITS
from releasecontrol_server.releases import (
    MAX_SOAK_SECONDS,
    Action,
    AuditRecord,
    Canary,
    ChangeMeta,
    Channel,
    Command,
    DeployCanary,
    FeatureState,
    Promote,
    Publish,
    PublishedVersion,
    Reconcile,
    Resign,
    Rollback,
    SetChannel,
    Transition,
    Unchanged,
    apply,
)

FEATURE = "checkout"
NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = NOW - timedelta(days=1)
SOAK = 30 * 60
# A canary that started 20 minutes ago with a 30 minute soak: 10 minutes left.
SOAK_START = NOW - timedelta(minutes=20)
SOAK_END = SOAK_START + timedelta(seconds=SOAK)
ACTOR = "alice@example.com"


# --- builders -----------------------------------------------------------------


def sha(version: str, variant: str = "") -> str:
    """A stable, distinct manifest digest per version (and per variant of it)."""
    return hashlib.sha256(f"{version}{variant}".encode()).hexdigest()


def meta(
    *,
    actor: str = ACTOR,
    reason: str = "",
    ticket: str = "",
    expected_sequence: int | None = None,
) -> ChangeMeta:
    return ChangeMeta(
        actor=actor, reason=reason, ticket=ticket, expected_sequence=expected_sequence
    )


def canary(version: str = "1.1.0", *, started: datetime = SOAK_START, soak: int = SOAK) -> Canary:
    return Canary(version=version, soak_started_at=started, soak_seconds=soak)


def feature(
    *published: str,
    stable: str,
    was_stable: Iterable[str] = (),
    running: Canary | None = None,
    sequence: int = 5,
) -> FeatureState:
    """A feature with `published` versions (in order); `stable` always counts as was_stable."""
    earlier_stable = {*was_stable, stable}
    return FeatureState(
        feature_id=FEATURE,
        sequence=sequence,
        stable=stable,
        canary=running,
        versions=tuple(
            PublishedVersion(v, sha(v), EARLIER, was_stable=v in earlier_stable) for v in published
        ),
        updated_at=EARLIER,
        updated_by="bob@example.com",
    )


def only_stable() -> FeatureState:
    """1.0.0 stable and nothing else."""
    return feature("1.0.0", stable="1.0.0")


def soaking() -> FeatureState:
    """1.0.0 stable, 1.1.0 in canary with 10 minutes of soak left, 1.2.0 published."""
    return feature("1.0.0", "1.1.0", "1.2.0", stable="1.0.0", running=canary("1.1.0"))


def promoted() -> FeatureState:
    """1.0.0 was stable, 1.1.0 is stable, 1.2.0 in canary, 1.3.0 published but never used."""
    return feature(
        "1.0.0",
        "1.1.0",
        "1.2.0",
        "1.3.0",
        stable="1.1.0",
        was_stable=["1.0.0"],
        running=canary("1.2.0"),
    )


def record(
    action: Action,
    version: str,
    *,
    sequence: int,
    from_stable: str | None,
    to_stable: str | None,
    from_canary: str | None,
    to_canary: str | None,
    detail: str,
    reason: str = "",
    ticket: str = "",
    at: datetime = NOW,
) -> AuditRecord:
    return AuditRecord(
        feature_id=FEATURE,
        sequence=sequence,
        action=action,
        version=version,
        from_stable=from_stable,
        to_stable=to_stable,
        from_canary=from_canary,
        to_canary=to_canary,
        actor=ACTOR,
        reason=reason,
        ticket=ticket,
        at=at,
        detail=detail,
    )


def applied(
    state: FeatureState | None,
    command: Command,
    change: ChangeMeta | None = None,
    now: datetime = NOW,
) -> Transition:
    """Apply a command that must commit; check the bookkeeping every commit shares."""
    result = apply(state, FEATURE, command, change or meta(), now)
    assert isinstance(result, Transition), result
    before = 0 if state is None else state.sequence
    assert result.state.sequence == before + 1
    assert result.record.sequence == result.state.sequence
    assert result.state.feature_id == FEATURE
    assert result.state.updated_at == now
    assert result.state.updated_by == (change or meta()).actor
    return result


def refused(
    state: FeatureState | None,
    command: Command,
    error: type[ReleaseControlError],
    change: ChangeMeta | None = None,
    *,
    feature_id: str = FEATURE,
    now: datetime = NOW,
) -> ReleaseControlError:
    """Apply a command that must be refused with exactly `error`, leaving `state` as it was."""
    before = copy.deepcopy(state)
    with pytest.raises(ReleaseControlError) as excinfo:
        apply(state, feature_id, command, change or meta(), now)
    assert type(excinfo.value) is error, excinfo.value
    assert state == before, "a refused command changed the state"
    return excinfo.value


def assert_says(error: ReleaseControlError, fragments: Iterable[str]) -> None:
    for fragment in fragments:
        assert fragment in error.message, f"{fragment!r} not in {error.message!r}"
    assert str(error) == error.message


# --- publish --------------------------------------------------------------------


class TestPublish:
    def test_first_publish_creates_the_feature_at_sequence_one(self) -> None:
        """Publishing to a feature that does not exist creates it with the version as stable."""
        result = applied(None, Publish("1.0.0", sha("1.0.0")))

        assert result.state == FeatureState(
            feature_id=FEATURE,
            sequence=1,
            stable="1.0.0",
            canary=None,
            versions=(PublishedVersion("1.0.0", sha("1.0.0"), NOW, was_stable=True),),
            updated_at=NOW,
            updated_by=ACTOR,
        )
        assert result.record == record(
            Action.PUBLISH,
            "1.0.0",
            sequence=1,
            from_stable=None,
            to_stable="1.0.0",
            from_canary=None,
            to_canary=None,
            detail="published as stable",
        )

    def test_publish_stable_replaces_the_stable_and_keeps_history(self) -> None:
        """Publishing a new version to stable moves stable; the old one stays published."""
        state = only_stable()
        result = applied(state, Publish("1.1.0", sha("1.1.0")), meta(reason="r", ticket="T-1"))

        assert result.state.stable == "1.1.0"
        assert result.state.canary is None
        assert result.state.versions == (
            *state.versions,
            PublishedVersion("1.1.0", sha("1.1.0"), NOW, was_stable=True),
        )
        assert result.record == record(
            Action.PUBLISH,
            "1.1.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.1.0",
            from_canary=None,
            to_canary=None,
            detail="published as stable",
            reason="r",
            ticket="T-1",
        )

    def test_publish_as_canary_starts_the_soak(self) -> None:
        """Publishing to canary keeps stable, starts the soak now, and does not mark was_stable."""
        result = applied(only_stable(), Publish("1.1.0", sha("1.1.0"), Channel.CANARY, SOAK))

        assert result.state.stable == "1.0.0"
        assert result.state.canary == Canary("1.1.0", NOW, SOAK)
        assert result.state.find("1.1.0") == PublishedVersion("1.1.0", sha("1.1.0"), NOW)
        assert result.record == record(
            Action.PUBLISH,
            "1.1.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.0.0",
            from_canary=None,
            to_canary="1.1.0",
            detail="published as canary, soak 30m",
        )

    def test_publish_as_canary_replaces_the_running_canary(self) -> None:
        """A new canary publish replaces the running canary and says so in the record."""
        result = applied(soaking(), Publish("1.3.0", sha("1.3.0"), Channel.CANARY, 3600))

        assert result.state.canary == Canary("1.3.0", NOW, 3600)
        assert result.record.from_canary == "1.1.0"
        assert result.record.to_canary == "1.3.0"
        assert result.record.detail == (
            "published as canary, soak 1h; replaced canary 1.1.0; soak restarted"
        )

    def test_publish_stable_while_a_canary_runs_clears_it(self) -> None:
        """Publishing straight to stable ends the running canary, and the record says which."""
        result = applied(soaking(), Publish("1.3.0", sha("1.3.0")))

        assert result.state.stable == "1.3.0"
        assert result.state.canary is None
        assert result.record == record(
            Action.PUBLISH,
            "1.3.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.3.0",
            from_canary="1.1.0",
            to_canary=None,
            detail="published as stable; cleared canary 1.1.0",
        )

    @pytest.mark.parametrize(
        ("state", "command"),
        [
            pytest.param(only_stable(), Publish("1.0.0", sha("1.0.0")), id="republish-stable"),
            pytest.param(
                soaking(),
                Publish("1.1.0", sha("1.1.0"), Channel.CANARY, SOAK),
                id="republish-running-canary",
            ),
            pytest.param(
                soaking(), Publish("1.2.0", sha("1.2.0")), id="republish-unused-version-as-stable"
            ),
        ],
    )
    def test_republish_with_the_same_manifest_is_unchanged(
        self, state: FeatureState, command: Publish
    ) -> None:
        """The same version with the same manifest again changes nothing: no sequence bump."""
        before = copy.deepcopy(state)

        result = apply(state, FEATURE, command, meta(), NOW)

        assert isinstance(result, Unchanged)
        assert result.state is state
        assert result.state == before
        assert result.why == f"version {command.version} is already published"

    @pytest.mark.parametrize(
        ("state", "command", "error", "field", "fragments"),
        [
            pytest.param(
                None,
                Publish("1.0.0", sha("1.0.0"), Channel.CANARY, SOAK),
                FailedPrecondition,
                None,
                ["'checkout' has no stable version yet", "publish to stable first"],
                id="publish-canary-on-new-feature-refused",
            ),
            pytest.param(
                only_stable(),
                Publish("1.0.0", sha("1.0.0", "changed")),
                AlreadyExists,
                None,
                [
                    "version 1.0.0 of feature 'checkout'",
                    "different manifest",
                    sha("1.0.0")[:12],
                    "bump the version in manifest.json",
                ],
                id="same-version-different-manifest-refused",
            ),
            pytest.param(
                soaking(),
                Publish("1.1.0", sha("1.1.0", "changed"), Channel.CANARY, SOAK),
                AlreadyExists,
                None,
                ["version 1.1.0", "different manifest", "bump the version"],
                id="same-canary-version-different-manifest-refused",
            ),
            pytest.param(
                only_stable(),
                Publish("1.1.0", sha("1.1.0"), Channel.CANARY, -1),
                InvalidArgument,
                "soak_seconds",
                ["soak of -1s is out of range", "0s to 30d"],
                id="publish-canary-negative-soak-refused",
            ),
            pytest.param(
                only_stable(),
                Publish("1.1.0", sha("1.1.0"), Channel.CANARY, MAX_SOAK_SECONDS + 1),
                InvalidArgument,
                "soak_seconds",
                [f"soak of {MAX_SOAK_SECONDS + 1}s is out of range", "0s to 30d"],
                id="publish-canary-soak-over-30d-refused",
            ),
        ],
    )
    def test_publish_refusals(
        self,
        state: FeatureState | None,
        command: Publish,
        error: type[ReleaseControlError],
        field: str | None,
        fragments: list[str],
    ) -> None:
        """A publish that breaks a rule is refused with the named error and nothing changes."""
        err = refused(state, command, error)

        assert_says(err, fragments)
        if field is not None:
            assert isinstance(err, InvalidArgument)
            assert err.field == field


# --- deploy canary ----------------------------------------------------------------


class TestDeployCanary:
    def test_deploy_a_published_version_starts_the_canary(self) -> None:
        """Deploying a published, non-stable version makes it the canary and starts its soak."""
        state = feature("1.0.0", "1.1.0", stable="1.0.0")

        result = applied(state, DeployCanary("1.1.0", SOAK), meta(reason="try it", ticket="R-9"))

        assert result.state.stable == "1.0.0"
        assert result.state.canary == Canary("1.1.0", NOW, SOAK)
        assert result.state.versions == state.versions
        assert result.record == record(
            Action.DEPLOY_CANARY,
            "1.1.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.0.0",
            from_canary=None,
            to_canary="1.1.0",
            detail="soak 30m",
            reason="try it",
            ticket="R-9",
        )

    def test_a_new_canary_replaces_the_running_one_and_restarts_the_soak(self) -> None:
        """One canary per feature: deploying another replaces it, soaking from now."""
        result = applied(soaking(), DeployCanary("1.2.0", 3600))

        assert result.state.canary == Canary("1.2.0", NOW, 3600)
        assert result.record == record(
            Action.DEPLOY_CANARY,
            "1.2.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.0.0",
            from_canary="1.1.0",
            to_canary="1.2.0",
            detail="soak 1h; replaced canary 1.1.0; soak restarted",
        )

    def test_redeploying_the_running_canary_restarts_its_soak(self) -> None:
        """Deploying the version already in canary restarts its soak from now."""
        result = applied(soaking(), DeployCanary("1.1.0", SOAK))

        assert result.state.canary == Canary("1.1.0", NOW, SOAK)
        assert result.record.detail == "soak 30m; canary 1.1.0 redeployed; soak restarted"

    @pytest.mark.parametrize(
        ("soak", "detail"),
        [
            pytest.param(0, "soak 0s", id="zero-soak-allowed"),
            pytest.param(MAX_SOAK_SECONDS, "soak 30d", id="thirty-day-soak-allowed"),
        ],
    )
    def test_soak_bounds_are_inclusive(self, soak: int, detail: str) -> None:
        """A soak of exactly 0s or exactly 30d is accepted."""
        result = applied(feature("1.0.0", "1.1.0", stable="1.0.0"), DeployCanary("1.1.0", soak))

        assert result.state.canary == Canary("1.1.0", NOW, soak)
        assert result.record.detail == detail

    @pytest.mark.parametrize(
        ("state", "command", "error", "field", "fragments"),
        [
            pytest.param(
                soaking(),
                DeployCanary("2.0.0", SOAK),
                NotFound,
                None,
                [
                    "version '2.0.0' of feature 'checkout' is not published",
                    "(published: 1.0.0, 1.1.0, 1.2.0)",
                    "publish it first with `releasectl publish`",
                ],
                id="deploy-unpublished-version-refused",
            ),
            pytest.param(
                None,
                DeployCanary("1.0.0", SOAK),
                NotFound,
                None,
                [
                    "feature 'checkout' has no published versions",
                    "`releasectl publish --feature checkout`",
                ],
                id="deploy-to-unknown-feature-refused",
            ),
            pytest.param(
                soaking(),
                DeployCanary("1.0.0", SOAK),
                FailedPrecondition,
                None,
                ["version 1.0.0 is already stable", "a canary must be a different version"],
                id="deploy-stable-version-as-canary-refused",
            ),
            pytest.param(
                soaking(),
                DeployCanary("1.2.0", -1),
                InvalidArgument,
                "soak_seconds",
                ["soak of -1s is out of range", "give 0s to 30d"],
                id="deploy-negative-soak-refused",
            ),
            pytest.param(
                soaking(),
                DeployCanary("1.2.0", MAX_SOAK_SECONDS + 1),
                InvalidArgument,
                "soak_seconds",
                [f"soak of {MAX_SOAK_SECONDS + 1}s is out of range", "give 0s to 30d"],
                id="deploy-soak-over-30d-refused",
            ),
        ],
    )
    def test_deploy_canary_refusals(
        self,
        state: FeatureState | None,
        command: DeployCanary,
        error: type[ReleaseControlError],
        field: str | None,
        fragments: list[str],
    ) -> None:
        """A canary deploy that breaks a rule is refused with the named error, nothing changed."""
        err = refused(state, command, error)

        assert_says(err, fragments)
        if field is not None:
            assert isinstance(err, InvalidArgument)
            assert err.field == field


# --- promote ----------------------------------------------------------------------


class TestPromote:
    @pytest.mark.parametrize(
        "now",
        [
            pytest.param(SOAK_END, id="exactly-at-soak-end-allowed"),
            pytest.param(SOAK_END + timedelta(hours=1), id="an-hour-after-soak-end-allowed"),
        ],
    )
    def test_promote_after_the_soak_makes_the_canary_stable(self, now: datetime) -> None:
        """Once the soak is over the canary version becomes stable and the canary is cleared."""
        result = applied(soaking(), Promote("1.1.0"), now=now)

        assert result.state.stable == "1.1.0"
        assert result.state.canary is None
        promoted_version = result.state.find("1.1.0")
        assert promoted_version is not None
        assert promoted_version.was_stable
        assert result.record == record(
            Action.PROMOTE,
            "1.1.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.1.0",
            from_canary="1.1.0",
            to_canary=None,
            detail="canary 1.1.0 promoted after 30m soak",
            at=now,
        )

    def test_skip_soak_with_a_reason_promotes_early(self) -> None:
        """skip_soak with a reason promotes before the soak ends, and the record says so."""
        change = meta(reason="fixes checkout outage", ticket="INC-42")

        result = applied(soaking(), Promote("1.1.0", skip_soak=True), change)

        assert result.state.stable == "1.1.0"
        assert result.state.canary is None
        assert result.record == record(
            Action.PROMOTE,
            "1.1.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.1.0",
            from_canary="1.1.0",
            to_canary=None,
            detail="soak skipped with 10m left",
            reason="fixes checkout outage",
            ticket="INC-42",
        )

    def test_skip_soak_after_the_soak_needs_no_reason(self) -> None:
        """skip_soak once the soak is already over is an ordinary promote, no reason needed."""
        result = applied(soaking(), Promote("1.1.0", skip_soak=True), now=SOAK_END)

        assert result.record.detail == "canary 1.1.0 promoted after 30m soak"

    def test_previous_stable_stays_a_rollback_target(self) -> None:
        """After promote both the old and the new stable are marked was_stable."""
        result = applied(soaking(), Promote("1.1.0"), now=SOAK_END)

        assert [(v.version, v.was_stable) for v in result.state.versions] == [
            ("1.0.0", True),
            ("1.1.0", True),
            ("1.2.0", False),
        ]

    @pytest.mark.parametrize(
        ("now", "seconds_left", "left_text"),
        [
            pytest.param(SOAK_START, SOAK, "30m left", id="promote-at-soak-start-refused"),
            pytest.param(NOW, 600, "10m left", id="promote-before-soak-refused"),
            pytest.param(
                SOAK_END - timedelta(seconds=61), 61, "1m 1s left", id="promote-61s-early-refused"
            ),
            pytest.param(
                SOAK_END - timedelta(milliseconds=500),
                1,
                "1s left",
                id="promote-half-a-second-early-refused",
            ),
        ],
    )
    def test_promote_before_the_soak_ends_is_refused_with_time_left(
        self, now: datetime, seconds_left: int, left_text: str
    ) -> None:
        """Promote during the soak raises SoakNotOver naming the time left and how to skip."""
        err = refused(soaking(), Promote("1.1.0"), SoakNotOver, now=now)

        assert isinstance(err, SoakNotOver)
        assert err.seconds_left == seconds_left
        assert_says(
            err,
            [
                "canary 1.1.0 of feature 'checkout' is still soaking",
                left_text,
                "(ends 2025-03-01T12:10:00Z)",
                "skip the rest of the soak, giving a reason",  # each interface names its own
            ],
        )

    @pytest.mark.parametrize(
        ("state", "command", "change", "error", "field", "fragments"),
        [
            pytest.param(
                soaking(),
                Promote("1.2.0"),
                meta(),
                FailedPrecondition,
                None,
                [
                    "cannot promote 1.2.0",
                    "only the version in canary can be promoted",
                    "the canary is 1.1.0",
                    "`releasectl release canary`",
                ],
                id="promote-non-canary-version-refused",
            ),
            pytest.param(
                feature("1.0.0", "1.1.0", stable="1.0.0"),
                Promote("1.1.0"),
                meta(),
                FailedPrecondition,
                None,
                ["cannot promote 1.1.0", "no canary is running", "deploy it first"],
                id="promote-without-canary-refused",
            ),
            pytest.param(
                soaking(),
                Promote("1.0.0"),
                meta(),
                FailedPrecondition,
                None,
                ["cannot promote 1.0.0", "the canary is 1.1.0"],
                id="promote-the-stable-version-refused",
            ),
            pytest.param(
                soaking(),
                Promote("9.9.9"),
                meta(),
                NotFound,
                None,
                ["'9.9.9'", "not published", "(published: 1.0.0, 1.1.0, 1.2.0)"],
                id="promote-unpublished-version-refused",
            ),
            pytest.param(
                None,
                Promote("1.0.0"),
                meta(),
                NotFound,
                None,
                ["has no published versions", "releasectl publish --feature checkout"],
                id="promote-on-unknown-feature-refused",
            ),
            pytest.param(
                soaking(),
                Promote("1.1.0", skip_soak=True),
                meta(),
                InvalidArgument,
                "reason",
                ["skipping the soak needs a reason", "why it cannot wait"],
                id="skip-soak-without-reason-refused",
            ),
            pytest.param(
                soaking(),
                Promote("1.1.0", skip_soak=True),
                meta(reason="   "),
                InvalidArgument,
                "reason",
                ["skipping the soak needs a reason", "why it cannot wait"],
                id="skip-soak-with-whitespace-reason-refused",
            ),
        ],
    )
    def test_promote_refusals(
        self,
        state: FeatureState | None,
        command: Promote,
        change: ChangeMeta,
        error: type[ReleaseControlError],
        field: str | None,
        fragments: list[str],
    ) -> None:
        """A promote that breaks a rule is refused with the named error and nothing changes."""
        err = refused(state, command, error, change)

        assert_says(err, fragments)
        if field is not None:
            assert isinstance(err, InvalidArgument)
            assert err.field == field


# --- rollback ---------------------------------------------------------------------


class TestRollback:
    def test_rollback_to_a_previous_stable_clears_the_canary(self) -> None:
        """Rollback makes an earlier stable version stable again and ends the canary."""
        result = applied(promoted(), Rollback("1.0.0"), meta(reason="errors up", ticket="INC-7"))

        assert result.state.stable == "1.0.0"
        assert result.state.canary is None
        assert result.state.versions == promoted().versions
        assert result.record == record(
            Action.ROLLBACK,
            "1.0.0",
            sequence=6,
            from_stable="1.1.0",
            to_stable="1.0.0",
            from_canary="1.2.0",
            to_canary=None,
            detail="rolled back from 1.1.0; cleared canary 1.2.0",
            reason="errors up",
            ticket="INC-7",
        )

    def test_rollback_without_a_canary(self) -> None:
        """Rollback with no canary running only moves stable."""
        state = feature("1.0.0", "1.1.0", stable="1.1.0", was_stable=["1.0.0"])

        result = applied(state, Rollback("1.0.0"))

        assert result.state.stable == "1.0.0"
        assert result.state.canary is None
        assert result.record.from_canary is None
        assert result.record.to_canary is None
        assert result.record.detail == "rolled back from 1.1.0"

    @pytest.mark.parametrize(
        ("state", "command", "error", "fragments"),
        [
            pytest.param(
                promoted(),
                Rollback("1.3.0"),
                FailedPrecondition,
                [
                    "version 1.3.0 of feature 'checkout' was never stable",
                    "not a known-good rollback target",
                    "roll back to one of: 1.0.0",
                    "`releasectl channel fallback`",
                ],
                id="rollback-to-never-stable-version-refused",
            ),
            pytest.param(
                promoted(),
                Rollback("1.2.0"),
                FailedPrecondition,
                ["version 1.2.0", "was never stable", "roll back to one of: 1.0.0"],
                id="rollback-to-running-canary-refused",
            ),
            pytest.param(
                soaking(),
                Rollback("1.1.0"),
                FailedPrecondition,
                ["was never stable", "roll back to one of: none", "channel fallback"],
                id="rollback-with-no-earlier-stable-lists-none",
            ),
            pytest.param(
                promoted(),
                Rollback("1.1.0"),
                FailedPrecondition,
                ["version 1.1.0 is already stable", "roll back to an earlier version"],
                id="rollback-to-current-stable-refused",
            ),
            pytest.param(
                promoted(),
                Rollback("0.9.0"),
                NotFound,
                [
                    "version '0.9.0' of feature 'checkout' is not published",
                    "(published: 1.0.0, 1.1.0, 1.2.0, 1.3.0)",
                ],
                id="rollback-to-unpublished-version-refused",
            ),
            pytest.param(
                None,
                Rollback("1.0.0"),
                NotFound,
                ["has no published versions", "releasectl publish --feature checkout"],
                id="rollback-on-unknown-feature-refused",
            ),
        ],
    )
    def test_rollback_refusals(
        self,
        state: FeatureState | None,
        command: Rollback,
        error: type[ReleaseControlError],
        fragments: list[str],
    ) -> None:
        """A rollback to anything but an earlier stable is refused, listing valid targets."""
        err = refused(state, command, error)

        assert_says(err, fragments)


# --- set_channel (operator fallback) ----------------------------------------------------


class TestSetChannel:
    def test_stable_to_a_never_stable_version_marks_it_was_stable(self) -> None:
        """The fallback sets stable to any published version and makes it a rollback target."""
        result = applied(promoted(), SetChannel("1.3.0", Channel.STABLE))

        assert result.state.stable == "1.3.0"
        assert result.state.canary == canary("1.2.0")
        target = result.state.find("1.3.0")
        assert target is not None
        assert target.was_stable
        assert result.record == record(
            Action.SET_CHANNEL,
            "1.3.0",
            sequence=6,
            from_stable="1.1.0",
            to_stable="1.3.0",
            from_canary="1.2.0",
            to_canary="1.2.0",
            detail="stable set to 1.3.0 by operator fallback",
        )

    def test_stable_set_by_fallback_can_be_rolled_back_to_later(self) -> None:
        """A version made stable by the fallback is a valid rollback target afterwards."""
        moved = applied(promoted(), SetChannel("1.3.0", Channel.STABLE)).state
        moved_on = applied(moved, SetChannel("1.0.0", Channel.STABLE)).state

        result = applied(moved_on, Rollback("1.3.0"))

        assert result.state.stable == "1.3.0"
        assert result.state.sequence == 8

    def test_stable_set_to_the_canary_version_clears_the_canary(self) -> None:
        """Setting stable to the running canary's version ends the canary."""
        result = applied(soaking(), SetChannel("1.1.0", Channel.STABLE))

        assert result.state.stable == "1.1.0"
        assert result.state.canary is None
        assert result.record == record(
            Action.SET_CHANNEL,
            "1.1.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.1.0",
            from_canary="1.1.0",
            to_canary=None,
            detail="stable set to 1.1.0 by operator fallback; cleared canary 1.1.0",
        )

    def test_canary_to_any_published_version_restarts_the_soak(self) -> None:
        """The fallback sets canary to any published non-stable version, soaking from now."""
        result = applied(soaking(), SetChannel("1.2.0", Channel.CANARY, SOAK))

        assert result.state.stable == "1.0.0"
        assert result.state.canary == Canary("1.2.0", NOW, SOAK)
        assert result.record == record(
            Action.SET_CHANNEL,
            "1.2.0",
            sequence=6,
            from_stable="1.0.0",
            to_stable="1.0.0",
            from_canary="1.1.0",
            to_canary="1.2.0",
            detail=(
                "canary set to 1.2.0 by operator fallback, soak 30m; "
                "replaced canary 1.1.0; soak restarted"
            ),
        )

    def test_canary_to_an_older_version_without_a_running_canary(self) -> None:
        """The fallback may put an older, once-stable version in canary."""
        state = feature("1.0.0", "1.1.0", stable="1.1.0", was_stable=["1.0.0"])

        result = applied(state, SetChannel("1.0.0", Channel.CANARY, 0))

        assert result.state.canary == Canary("1.0.0", NOW, 0)
        assert result.record.detail == "canary set to 1.0.0 by operator fallback, soak 0s"

    @pytest.mark.parametrize(
        ("state", "command", "error", "field", "fragments"),
        [
            pytest.param(
                soaking(),
                SetChannel("1.0.0", Channel.CANARY, SOAK),
                FailedPrecondition,
                None,
                ["version 1.0.0 is stable", "the canary must be a different version"],
                id="set-canary-to-stable-version-refused",
            ),
            pytest.param(
                soaking(),
                SetChannel("3.0.0", Channel.STABLE),
                NotFound,
                None,
                ["'3.0.0'", "not published", "(published: 1.0.0, 1.1.0, 1.2.0)"],
                id="set-stable-to-unpublished-version-refused",
            ),
            pytest.param(
                soaking(),
                SetChannel("3.0.0", Channel.CANARY, SOAK),
                NotFound,
                None,
                ["'3.0.0'", "not published", "publish it first"],
                id="set-canary-to-unpublished-version-refused",
            ),
            pytest.param(
                None,
                SetChannel("1.0.0", Channel.STABLE),
                NotFound,
                None,
                ["has no published versions", "releasectl publish --feature checkout"],
                id="set-channel-on-unknown-feature-refused",
            ),
            pytest.param(
                soaking(),
                SetChannel("1.2.0", Channel.CANARY, MAX_SOAK_SECONDS + 1),
                InvalidArgument,
                "soak_seconds",
                ["out of range", "give 0s to 30d"],
                id="set-canary-soak-over-30d-refused",
            ),
        ],
    )
    def test_set_channel_refusals(
        self,
        state: FeatureState | None,
        command: SetChannel,
        error: type[ReleaseControlError],
        field: str | None,
        fragments: list[str],
    ) -> None:
        """Even the fallback refuses unpublished versions and a canary equal to stable."""
        err = refused(state, command, error)

        assert_says(err, fragments)
        if field is not None:
            assert isinstance(err, InvalidArgument)
            assert err.field == field


# --- expected_sequence -------------------------------------------------------------------


class TestExpectedSequence:
    @pytest.mark.parametrize(
        ("state", "command", "expected"),
        [
            pytest.param(None, Publish("1.0.0", sha("1.0.0")), 0, id="new-feature-at-zero"),
            pytest.param(soaking(), DeployCanary("1.2.0", SOAK), 5, id="existing-feature-at-five"),
        ],
    )
    def test_matching_expected_sequence_is_applied(
        self, state: FeatureState | None, command: Command, expected: int
    ) -> None:
        """expected_sequence equal to the current sequence lets the change through."""
        result = applied(state, command, meta(expected_sequence=expected))

        assert result.state.sequence == expected + 1

    @pytest.mark.parametrize(
        ("state", "expected", "fragments"),
        [
            pytest.param(
                soaking(),
                4,
                ["feature 'checkout' is at sequence 5, expected 4"],
                id="expected-behind-refused",
            ),
            pytest.param(
                soaking(),
                6,
                ["feature 'checkout' is at sequence 5, expected 6"],
                id="expected-ahead-refused",
            ),
            pytest.param(
                None, 1, ["is at sequence 0, expected 1"], id="expected-on-new-feature-refused"
            ),
        ],
    )
    def test_different_expected_sequence_is_stale(
        self, state: FeatureState | None, expected: int, fragments: list[str]
    ) -> None:
        """A different expected_sequence raises StaleSequence naming both numbers."""
        err = refused(
            state, Publish("1.3.0", sha("1.3.0")), StaleSequence, meta(expected_sequence=expected)
        )

        assert_says(err, [*fragments, "someone else changed it", "re-read the status and retry"])

    def test_negative_expected_sequence_is_invalid(self) -> None:
        """A negative expected_sequence is a malformed request, not a stale one."""
        err = refused(
            soaking(), DeployCanary("1.2.0", SOAK), InvalidArgument, meta(expected_sequence=-1)
        )

        assert isinstance(err, InvalidArgument)
        assert err.field == "expected_sequence"
        assert_says(err, ["expected_sequence must be zero or more"])


# --- input validation -----------------------------------------------------------------------

BAD_FEATURE_IDS = [
    pytest.param("Checkout", id="uppercase"),
    pytest.param("a/b", id="slash"),
    pytest.param("..", id="dot-dot"),
    pytest.param("with space", id="space"),
    pytest.param("", id="empty"),
    pytest.param("a" * 64, id="64-chars"),
    pytest.param("-lead", id="leading-dash"),
    pytest.param("trail-", id="trailing-dash"),
    pytest.param("check_out", id="underscore"),
    pytest.param("checkout\n", id="trailing-newline"),
]

BAD_VERSIONS = [
    pytest.param("v1.0.0", id="leading-v"),
    pytest.param("1.0", id="two-parts"),
    pytest.param("01.0.0", id="leading-zero"),
    pytest.param("", id="empty"),
    pytest.param("1.0.0 ", id="trailing-space"),
    pytest.param("1.0.0\n", id="trailing-newline"),
]

ALL_COMMANDS = [
    pytest.param(lambda v: Publish(v, sha(v)), id="publish"),
    pytest.param(lambda v: Publish(v, sha(v), Channel.CANARY, SOAK), id="publish-canary"),
    pytest.param(lambda v: DeployCanary(v, SOAK), id="deploy-canary"),
    pytest.param(lambda v: Promote(v), id="promote"),
    pytest.param(lambda v: Rollback(v), id="rollback"),
    pytest.param(lambda v: SetChannel(v, Channel.STABLE), id="set-channel"),
]


class TestValidation:
    @pytest.mark.parametrize(
        "state", [pytest.param(None, id="new"), pytest.param(soaking(), id="existing")]
    )
    @pytest.mark.parametrize("feature_id", BAD_FEATURE_IDS)
    def test_bad_feature_id_is_invalid(self, feature_id: str, state: FeatureState | None) -> None:
        """A feature id that is not a lowercase DNS label is refused naming feature_id."""
        err = refused(state, Publish("1.3.0", sha("1.3.0")), InvalidArgument, feature_id=feature_id)

        assert isinstance(err, InvalidArgument)
        assert err.field == "feature_id"
        assert_says(err, [f"feature_id {feature_id!r} is not a valid feature id", "lowercase"])

    @pytest.mark.parametrize(
        "feature_id",
        [
            pytest.param("a", id="one-char"),
            pytest.param("a" * 63, id="63-chars"),
            pytest.param("web-checkout-2", id="dashes-and-digits"),
        ],
    )
    def test_good_feature_ids_are_accepted(self, feature_id: str) -> None:
        """Feature ids at the edges of the DNS label rule are accepted."""
        result = apply(None, feature_id, Publish("1.0.0", sha("1.0.0")), meta(), NOW)

        assert isinstance(result, Transition)
        assert result.state.feature_id == feature_id

    @pytest.mark.parametrize("make", ALL_COMMANDS)
    @pytest.mark.parametrize("version", BAD_VERSIONS)
    def test_bad_version_is_invalid(self, version: str, make: Callable[[str], Command]) -> None:
        """A version that is not SemVer 2.0 is refused naming version, for every command."""
        err = refused(soaking(), make(version), InvalidArgument)

        assert isinstance(err, InvalidArgument)
        assert err.field == "version"
        assert_says(err, [f"version {version!r} is not a SemVer 2.0 version", "leading 'v'"])

    def test_bad_version_is_invalid_before_the_feature_is_looked_up(self) -> None:
        """Validation comes first: a bad version on an unknown feature is InvalidArgument."""
        err = refused(None, Rollback("v1"), InvalidArgument)

        assert isinstance(err, InvalidArgument)
        assert err.field == "version"

    @pytest.mark.parametrize("name", ["actor", "reason", "ticket"])
    def test_text_over_the_limit_is_invalid(self, name: str) -> None:
        """actor, reason and ticket over their limits are refused naming the field."""
        most = TEXT_LIMITS[name]
        change = meta(**{name: "x" * (most + 1)})

        err = refused(soaking(), DeployCanary("1.2.0", SOAK), InvalidArgument, change)

        assert isinstance(err, InvalidArgument)
        assert err.field == name
        assert_says(err, [f"{name} is {most + 1} characters long", f"at most {most}"])

    @pytest.mark.parametrize("name", ["actor", "reason", "ticket"])
    def test_text_at_the_limit_is_accepted(self, name: str) -> None:
        """actor, reason and ticket at their limits are kept in the record."""
        text = "x" * TEXT_LIMITS[name]

        result = apply(soaking(), FEATURE, DeployCanary("1.2.0", SOAK), meta(**{name: text}), NOW)

        assert isinstance(result, Transition)
        assert getattr(result.record, name) == text


# --- a release's whole life -------------------------------------------------------------------


class TestHistory:
    def test_a_sequence_of_commands_gives_a_consistent_history(self) -> None:
        """Five changes give sequence 5 and records whose from/to chain without gaps."""
        t0 = NOW
        steps: list[tuple[Command, datetime]] = [
            (Publish("1.0.0", sha("1.0.0")), t0),
            (Publish("1.1.0", sha("1.1.0"), Channel.CANARY, SOAK), t0 + timedelta(minutes=1)),
            (Promote("1.1.0"), t0 + timedelta(minutes=31)),
            (Publish("1.2.0", sha("1.2.0"), Channel.CANARY, SOAK), t0 + timedelta(minutes=40)),
            (Rollback("1.0.0"), t0 + timedelta(minutes=45)),
        ]
        state: FeatureState | None = None
        records: list[AuditRecord] = []
        for command, at in steps:
            result = applied(state, command, now=at)
            state = result.state
            records.append(result.record)

        assert state is not None
        assert state.sequence == 5
        assert state.stable == "1.0.0"
        assert state.canary is None
        assert [(v.version, v.was_stable) for v in state.versions] == [
            ("1.0.0", True),
            ("1.1.0", True),
            ("1.2.0", False),
        ]
        assert [
            (
                r.sequence,
                r.action,
                r.version,
                r.from_stable,
                r.to_stable,
                r.from_canary,
                r.to_canary,
            )
            for r in records
        ] == [
            (1, Action.PUBLISH, "1.0.0", None, "1.0.0", None, None),
            (2, Action.PUBLISH, "1.1.0", "1.0.0", "1.0.0", None, "1.1.0"),
            (3, Action.PROMOTE, "1.1.0", "1.0.0", "1.1.0", "1.1.0", None),
            (4, Action.PUBLISH, "1.2.0", "1.1.0", "1.1.0", None, "1.2.0"),
            (5, Action.ROLLBACK, "1.0.0", "1.1.0", "1.0.0", "1.2.0", None),
        ]
        for before, after in itertools.pairwise(records):
            assert after.from_stable == before.to_stable
            assert after.from_canary == before.to_canary
        assert [r.at for r in records] == [at for _, at in steps]
        assert records[-1].detail == "rolled back from 1.1.0; cleared canary 1.2.0"


# --- Canary.seconds_left -----------------------------------------------------------------------


class TestCanarySecondsLeft:
    @pytest.mark.parametrize(
        ("now", "left"),
        [
            pytest.param(SOAK_START, SOAK, id="at-start-full-soak"),
            pytest.param(SOAK_START + timedelta(milliseconds=400), SOAK, id="partial-rounds-up"),
            pytest.param(NOW, 600, id="whole-seconds-exact"),
            pytest.param(SOAK_END - timedelta(microseconds=1), 1, id="one-microsecond-left-is-1"),
            pytest.param(SOAK_END, 0, id="exactly-at-end-is-0"),
            pytest.param(SOAK_END + timedelta(hours=2), 0, id="after-end-is-0-not-negative"),
        ],
    )
    def test_seconds_left_rounds_up_and_stops_at_zero(self, now: datetime, left: int) -> None:
        """seconds_left is whole seconds rounded up, and 0 once the soak is over."""
        assert canary().soak_ends_at == SOAK_END
        assert canary().seconds_left(now) == left

    def test_zero_soak_is_over_at_once(self) -> None:
        """A canary with a 0s soak has no time left at its start."""
        assert canary(started=NOW, soak=0).seconds_left(NOW) == 0


class TestResign:
    def test_resign_keeps_channels_and_advances_the_sequence(self) -> None:
        """A re-sign changes nothing but the sequence, and says so in the audit record."""
        state = FeatureState(
            feature_id="checkout",
            sequence=4,
            stable="1.0.0",
            canary=Canary("1.1.0", NOW, 60),
            versions=(
                PublishedVersion("1.0.0", sha("1.0.0"), NOW, was_stable=True),
                PublishedVersion("1.1.0", sha("1.1.0"), NOW),
            ),
        )
        later = NOW + timedelta(days=4)
        outcome = apply(state, "checkout", Resign(), ChangeMeta(actor="releasecontrol"), later)
        assert isinstance(outcome, Transition)
        assert (outcome.state.sequence, outcome.state.stable) == (5, "1.0.0")
        assert outcome.state.canary == state.canary  # the soak is not restarted
        assert outcome.state.versions == state.versions
        assert outcome.record.action is Action.RESIGN
        assert outcome.record.from_stable == outcome.record.to_stable == "1.0.0"
        assert "re-signed" in outcome.record.detail

    def test_resign_of_an_unknown_feature_is_not_found(self) -> None:
        """Only existing features are re-signed."""
        with pytest.raises(NotFound):
            apply(None, "checkout", Resign(), ChangeMeta(actor="releasecontrol"), NOW)


class TestReconcile:
    STATE = FeatureState(
        feature_id="checkout",
        sequence=4,
        stable="1.0.0",
        versions=(PublishedVersion("1.0.0", sha("1.0.0"), NOW, was_stable=True),),
    )

    def test_jumps_above_the_origins_sequence_and_changes_nothing_else(self) -> None:
        """A restored state is signed again above what hosts saw: sequences only go up."""
        outcome = apply(self.STATE, "checkout", Reconcile(9), ChangeMeta(actor="ops"), NOW)
        assert isinstance(outcome, Transition)
        assert (outcome.state.sequence, outcome.state.stable) == (10, "1.0.0")
        assert outcome.state.versions == self.STATE.versions
        assert outcome.record.action is Action.RECONCILE
        assert outcome.record.sequence == 10
        assert "above sequence 9" in outcome.record.detail

    def test_at_the_same_sequence_it_still_goes_one_up(self) -> None:
        """The origin at the store's sequence with other bytes: one above it."""
        outcome = apply(self.STATE, "checkout", Reconcile(4), ChangeMeta(actor="ops"), NOW)
        assert isinstance(outcome, Transition) and outcome.state.sequence == 5

    def test_never_below_the_state(self) -> None:
        with pytest.raises(ValueError, match="below"):
            apply(self.STATE, "checkout", Reconcile(3), ChangeMeta(actor="ops"), NOW)
