"""Percentage canaries in the state machine: a weight, a step plan, and the server's steps.

Built on the table helpers of test_releases.py: a refused command raises the
exact error class, names the field and leaves the state as it was.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest

from releasecontrol.errors import FailedPrecondition, InvalidArgument, SoakNotOver
from releasecontrol_server.releases import (
    MAX_SOAK_SECONDS,
    AbortCanary,
    Action,
    AdvanceStep,
    Canary,
    DeployCanary,
    FeatureState,
    Promote,
    Resign,
    SetWeight,
    Unchanged,
    apply,
)
from tests.unit.test_releases import (
    FEATURE,
    NOW,
    applied,
    assert_says,
    feature,
    meta,
    only_stable,
    refused,
    soaking,
)

PLAN = (500, 2500, 5000, 10_000)
STEP = 600  # 10 minutes a step


def with_stable_and_candidate():
    return feature("1.0.0", "1.1.0", stable="1.0.0")


def ramping(weight: int = 500, *, held: int = STEP, steps: tuple[int, ...] = PLAN):
    """1.1.0 in canary on `steps`, at `weight`, whose step began `held` seconds ago."""
    started = NOW - timedelta(seconds=held)
    running = Canary(
        "1.1.0",
        NOW - timedelta(seconds=held + STEP * steps.index(weight)),
        STEP * len(steps),
        weight=weight,
        steps=steps,
        step_seconds=STEP,
        step_started_at=started,
    )
    return feature("1.0.0", "1.1.0", stable="1.0.0", running=running)


class TestDeployWithAWeight:
    def test_a_weighted_canary_serves_that_share_and_says_so(self) -> None:
        """--percent 5: the canary serves 500 of 10,000 buckets; the audit detail says 5%."""
        result = applied(with_stable_and_candidate(), DeployCanary("1.1.0", 1800, weight=500))

        assert result.state.canary == Canary("1.1.0", NOW, 1800, weight=500)
        assert result.record.detail == "soak 30m; 5% of users"

    def test_an_unweighted_canary_keeps_weight_zero(self) -> None:
        """Without a weight only hosts that opt into the canary channel get it, as before."""
        result = applied(with_stable_and_candidate(), DeployCanary("1.1.0", 1800))

        assert result.state.canary is not None and result.state.canary.weight == 0
        assert result.record.detail == "soak 30m"

    @pytest.mark.parametrize("weight", [-1, 10_001, 1_000_000])
    def test_a_weight_off_the_scale_is_refused(self, weight: int) -> None:
        """Weights outside 0-100 % are refused naming the field; nothing changes."""
        error = refused(
            with_stable_and_candidate(), DeployCanary("1.1.0", 1800, weight=weight), InvalidArgument
        )
        assert error.field == "weight"
        assert_says(error, [str(weight), "out of range"])


class TestDeployWithSteps:
    def test_a_step_plan_starts_at_its_first_step_and_soaks_the_whole_plan(self) -> None:
        """--steps 5,25,50,100 --step-soak 10m: weight 5%, soak 40m, the step clock started."""
        result = applied(
            with_stable_and_candidate(), DeployCanary("1.1.0", 0, steps=PLAN, step_seconds=STEP)
        )

        running = result.state.canary
        assert running == Canary(
            "1.1.0", NOW, 4 * STEP, weight=500, steps=PLAN, step_seconds=STEP, step_started_at=NOW
        )
        assert running.step_due_at() == NOW + timedelta(seconds=STEP)
        assert result.record.detail == (
            "soak 40m; 5% of users, step 1 of 4 of 5,25,50,100 % (each 10m)"
        )

    @pytest.mark.parametrize(
        ("command", "field", "fragments"),
        [
            pytest.param(
                DeployCanary("1.1.0", 0, steps=(500, 500), step_seconds=STEP),
                "steps",
                ["do not increase", "5% after 5%"],
                id="repeated-step",
            ),
            pytest.param(
                DeployCanary("1.1.0", 0, steps=(2500, 500), step_seconds=STEP),
                "steps",
                ["do not increase", "5% after 25%"],
                id="decreasing",
            ),
            pytest.param(
                DeployCanary("1.1.0", 0, steps=(0, 500), step_seconds=STEP),
                "steps",
                ["step of 0 %"],
                id="zero-step",
            ),
            pytest.param(
                DeployCanary("1.1.0", 0, steps=(500, 10_001), step_seconds=STEP),
                "steps",
                ["out of range"],
                id="above-100",
            ),
            pytest.param(
                DeployCanary("1.1.0", 0, steps=PLAN, step_seconds=0),
                "step_seconds",
                ["step soak of at least 1s"],
                id="no-step-soak",
            ),
            pytest.param(
                DeployCanary("1.1.0", 1800, steps=PLAN, step_seconds=STEP),
                "soak_seconds",
                ["a soak or steps, not both"],
                id="soak-and-steps",
            ),
            pytest.param(
                DeployCanary("1.1.0", 0, weight=500, steps=PLAN, step_seconds=STEP),
                "weight",
                ["a weight or steps, not both"],
                id="weight-and-steps",
            ),
            pytest.param(
                DeployCanary("1.1.0", 1800, step_seconds=STEP),
                "step_seconds",
                ["without steps"],
                id="step-soak-alone",
            ),
            pytest.param(
                DeployCanary("1.1.0", 0, steps=PLAN, step_seconds=MAX_SOAK_SECONDS),
                "step_seconds",
                ["give fewer steps or a shorter step soak"],
                id="plan-too-long",
            ),
            pytest.param(
                DeployCanary("1.1.0", 0, steps=tuple(range(1, 22)), step_seconds=STEP),
                "steps",
                ["at most 20"],
                id="too-many-steps",
            ),
        ],
    )
    def test_a_bad_plan_is_refused_naming_the_field(
        self, command: DeployCanary, field: str, fragments: list[str]
    ) -> None:
        error = refused(with_stable_and_candidate(), command, InvalidArgument)
        assert error.field == field
        assert_says(error, fragments)


class TestSetWeight:
    def test_set_weight_moves_a_running_canary(self) -> None:
        """set-weight --percent 25 on a 5% canary: 25%, soak untouched, audited."""
        state = feature("1.0.0", "1.1.0", stable="1.0.0", running=Canary("1.1.0", NOW, 60, 500))

        result = applied(state, SetWeight(2500), meta(reason="looks fine"))

        assert result.state.canary == Canary("1.1.0", NOW, 60, weight=2500)
        assert result.record.action is Action.SET_WEIGHT
        assert result.record.version == "1.1.0"
        assert result.record.detail == "canary 1.1.0 weight 5% -> 25%"
        assert result.record.reason == "looks fine"

    def test_lowering_the_weight_says_who_goes_back(self) -> None:
        """Users above a lowered weight leave the canary; the record says so."""
        state = feature("1.0.0", "1.1.0", stable="1.0.0", running=Canary("1.1.0", NOW, 60, 2500))

        result = applied(state, SetWeight(500))

        assert "users above the new weight go back to stable" in result.record.detail

    def test_set_weight_stops_a_step_plan(self) -> None:
        """A person who sets a weight takes over: the plan stops, the soak stays."""
        result = applied(ramping(2500), SetWeight(5000))

        assert result.state.canary is not None
        assert (result.state.canary.weight, result.state.canary.steps) == (5000, ())
        assert result.state.canary.step_due_at() is None
        assert result.record.detail.endswith("; step plan 5,25,50,100 % stopped")

    def test_the_same_weight_changes_nothing(self) -> None:
        """Asking for the weight the canary already serves is answered, not committed."""
        state = feature("1.0.0", "1.1.0", stable="1.0.0", running=Canary("1.1.0", NOW, 60, 500))

        result = apply(state, FEATURE, SetWeight(500), meta(), NOW)

        assert isinstance(result, Unchanged) and result.state == state
        assert result.why == "canary 1.1.0 already serves 5% of users"

    def test_without_a_canary_it_is_refused(self) -> None:
        error = refused(only_stable(), SetWeight(500), FailedPrecondition)
        assert_says(error, ["no canary is running", "releasectl release canary"])

    @pytest.mark.parametrize("weight", [-5, 10_001])
    def test_a_weight_off_the_scale_is_refused(self, weight: int) -> None:
        error = refused(soaking(), SetWeight(weight), InvalidArgument)
        assert error.field == "weight"


class TestAdvanceStep:
    def test_a_step_that_held_long_enough_moves_to_the_next(self) -> None:
        """5% held 10m: 25%, the step clock restarts, the soak does not."""
        before = ramping(500)
        result = applied(before, AdvanceStep(), meta(actor="releasecontrol-steps"))

        assert before.canary is not None and result.state.canary is not None
        assert result.state.canary.weight == 2500
        assert result.state.canary.step_started_at == NOW
        assert result.state.canary.soak_started_at == before.canary.soak_started_at
        assert result.record.action is Action.ADVANCE_STEP
        assert result.record.detail == "canary 1.1.0 weight 5% -> 25%: step 2 of 4 of 5,25,50,100 %"

    def test_the_last_step_of_100_percent_promotes(self) -> None:
        """100% held its step: the canary becomes stable, the plan named in the record."""
        result = applied(ramping(10_000), AdvanceStep(), meta(actor="releasecontrol-steps"))

        assert result.state.stable == "1.1.0" and result.state.canary is None
        assert result.record.action is Action.PROMOTE
        assert result.record.detail == ("canary 1.1.0 promoted: step plan 5,25,50,100 % completed")

    def test_a_plan_ending_below_100_percent_waits_for_a_person(self) -> None:
        """Steps 5,25: after 25% holds, nothing is due; promotion is a person's call."""
        state = ramping(2500, steps=(500, 2500))
        assert state.canary is not None and state.canary.step_due_at() is None
        error = refused(state, AdvanceStep(), FailedPrecondition)
        assert_says(error, ["no step plan with a step to go"])

    def test_a_step_that_has_not_held_long_enough_is_refused(self) -> None:
        """Too early: SoakNotOver says how long the step holds still."""
        error = refused(ramping(500, held=STEP - 90), AdvanceStep(), SoakNotOver)
        assert_says(error, ["step 5% of canary 1.1.0 holds 1m 30s more"])

    def test_without_a_plan_it_is_refused(self) -> None:
        refused(soaking(), AdvanceStep(), FailedPrecondition)
        refused(only_stable(), AdvanceStep(), FailedPrecondition)

    def test_a_person_can_still_promote_early_skipping_the_soak(self) -> None:
        """The plan's soak is the whole plan: promoting at 25% needs --skip-soak and a reason."""
        refused(ramping(2500), Promote("1.1.0"), SoakNotOver)
        result = applied(ramping(2500), Promote("1.1.0", skip_soak=True), meta(reason="urgent"))
        assert result.state.stable == "1.1.0"

    def test_resign_keeps_the_weight_and_plan(self) -> None:
        """A re-sign before expiry changes nothing but the sequence, weights included."""
        before = ramping(2500)
        result = applied(before, Resign())
        assert result.state.canary == before.canary


class TestStickyRamp:
    def test_a_full_ramp_only_ever_raises_the_weight(self) -> None:
        """Deploy on a plan, then advance at each due time: weights 5 -> 25 -> 50 -> 100 %,
        never down, then stable."""
        state = applied(
            with_stable_and_candidate(), DeployCanary("1.1.0", 0, steps=PLAN, step_seconds=STEP)
        ).state
        weights = []
        now = NOW
        while state.canary is not None:
            weights.append(state.canary.weight)
            due = state.canary.step_due_at()
            assert due is not None
            now = due
            result = apply(state, FEATURE, AdvanceStep(), meta(), now)
            assert not isinstance(result, Unchanged)
            state = result.state
        assert weights == list(PLAN)
        assert state.stable == "1.1.0"


class TestSoakByExposure:
    def soaked(self, min_loads: int = 5000) -> FeatureState:
        """1.1.0 in canary, its 30m soak over, needing `min_loads` canary loads."""
        running = Canary("1.1.0", NOW - timedelta(hours=1), 1800, min_loads=min_loads)
        return feature("1.0.0", "1.1.0", stable="1.0.0", running=running)

    def test_promote_waits_for_the_loads_after_the_time(self) -> None:
        with pytest.raises(SoakNotOver) as caught:
            apply(self.soaked(), FEATURE, Promote("1.1.0"), meta(), NOW, canary_loads=1200)
        error = caught.value
        assert_says(error, ["is still soaking: 1,200 of the 5,000 loads it needs"])

    def test_promote_waits_for_both_time_and_loads(self) -> None:
        running = Canary("1.1.0", NOW - timedelta(minutes=20), 1800, min_loads=5000)
        state = feature("1.0.0", "1.1.0", stable="1.0.0", running=running)
        error = refused(state, Promote("1.1.0"), SoakNotOver)
        assert_says(error, ["10m left", "0 of the 5,000 loads it needs"])

    def test_enough_loads_promote_and_the_record_says_how_many(self) -> None:
        result = apply(self.soaked(), FEATURE, Promote("1.1.0"), meta(), NOW, canary_loads=5200)
        assert not isinstance(result, Unchanged)
        assert result.state.stable == "1.1.0"
        assert result.record.detail == "canary 1.1.0 promoted after 30m soak and 5,200 loads"

    def test_skipping_names_the_loads_to_go(self) -> None:
        result = apply(
            self.soaked(),
            FEATURE,
            Promote("1.1.0", skip_soak=True),
            meta(reason="hotfix"),
            NOW,
            canary_loads=1000,
        )
        assert not isinstance(result, Unchanged)
        assert result.record.detail == "soak skipped with 0s left and 4,000 loads to go"

    def test_a_ramp_holds_its_last_step_until_the_loads(self) -> None:
        state = ramping(10_000)
        assert state.canary is not None
        state = feature(
            "1.0.0",
            "1.1.0",
            stable="1.0.0",
            running=dataclasses.replace(state.canary, min_loads=800),
        )
        with pytest.raises(SoakNotOver, match="100 of the 800 loads"):
            apply(state, FEATURE, AdvanceStep(), meta(), NOW, canary_loads=100)
        done = apply(state, FEATURE, AdvanceStep(), meta(), NOW, canary_loads=900)
        assert not isinstance(done, Unchanged) and done.state.stable == "1.1.0"

    def test_min_loads_off_the_scale_is_refused(self) -> None:
        error = refused(
            with_stable_and_candidate(),
            DeployCanary("1.1.0", 60, min_loads=-1),
            InvalidArgument,
        )
        assert error.field == "min_loads"


class TestAbortCanary:
    def test_the_canary_is_taken_off_and_stable_stays(self) -> None:
        result = applied(
            ramping(2500),
            AbortCanary(),
            meta(actor="releasecontrol-analysis", reason="failure rate 3.1% vs 0.4%"),
        )
        assert (result.state.stable, result.state.canary) == ("1.0.0", None)
        assert result.record.action is Action.ROLLBACK
        assert (result.record.from_canary, result.record.to_canary) == ("1.1.0", None)
        assert result.record.detail == "canary 1.1.0 rolled back; stable 1.0.0 stays"
        assert result.record.reason == "failure rate 3.1% vs 0.4%"

    def test_without_a_canary_it_is_refused(self) -> None:
        refused(only_stable(), AbortCanary(), FailedPrecondition)
