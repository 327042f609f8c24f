"""Canary analysis (releasecontrol_server.analysis): verdicts, policy checks, error rates.

The simulations re-judge after every batch of loads, as the server does, so the
error-rate checks are the proof that repeated looks do not inflate rollbacks; a
naive fixed-sample test run on the same data shows that the setup would catch it.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from releasecontrol.errors import InvalidArgument
from releasecontrol_server.analysis import (
    DEFAULT_POLICY,
    Kind,
    Policy,
    Sample,
    Verdict,
    judge,
    log_likelihood_ratio,
    lower_bound,
    percent,
    reach,
    upper_bound,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"

# Worse is lower: a verdict may only move down this scale as canary failures grow.
RANK = {Kind.FAIL: 0, Kind.RUNNING: 1, Kind.PASS: 2}


def binomial(rng: random.Random, n: int, p: float) -> int:
    """A Binomial(n, p) draw by inversion (no numpy here; n p stays small in these runs)."""
    q = 1 - p
    pmf = q**n
    cdf, u, k = pmf, rng.random(), 0
    while u > cdf and k < n:
        pmf *= (n - k) / (k + 1) * p / q
        k += 1
        cdf += pmf
    return k


class TestVerdicts:
    def test_clearly_worse_canary_fails_with_the_figures(self) -> None:
        """A canary at 3.1 % against 0.4 % fails, the reason naming both rates and all loads."""
        verdict = judge(Sample(620, 19), Sample(11_780, 47))
        assert verdict.kind is Kind.FAIL
        assert verdict.reason == "failure rate 3.1% vs 0.4% over 12,400 loads"
        assert (verdict.canary_loads, verdict.stable_loads, verdict.loads) == (620, 11_780, 12_400)
        assert verdict.canary_rate == pytest.approx(19 / 620)
        assert verdict.stable_rate == pytest.approx(47 / 11_780)
        assert verdict.evidence >= verdict.fail_at

    def test_clearly_worse_canary_fails_early(self) -> None:
        """Judged after every 500 loads (10 % on the canary), a 3.1 % canary against 0.4 %
        fails long before it has the 3,000 loads it would need to pass."""
        rng = random.Random(14)
        canary, stable = Sample(0, 0), Sample(0, 0)
        while canary.loads < DEFAULT_POLICY.min_pass_loads:
            canary = Sample(canary.loads + 50, canary.failures + binomial(rng, 50, 0.031))
            stable = Sample(stable.loads + 450, stable.failures + binomial(rng, 450, 0.004))
            verdict = judge(canary, stable)
            if verdict.kind is Kind.FAIL:
                break
        assert verdict.kind is Kind.FAIL
        assert canary.loads <= 1_000  # 500 needed before any verdict
        assert re.fullmatch(
            r"failure rate \d+\.\d% vs \d\.\d% over \d+(,\d{3})* loads", verdict.reason
        )

    def test_fail_reason_names_the_kinds_when_given(self) -> None:
        """A breakdown by kind follows the figures in the fail reason, counts of 0 left out."""
        canary = Sample(620, 19, kinds=(("entry errors", 12), ("failed loads", 7), ("refusals", 0)))
        verdict = judge(canary, Sample(11_780, 47))
        assert verdict.reason == (
            "failure rate 3.1% vs 0.4% over 12,400 loads (canary: 12 entry errors, 7 failed loads)"
        )

    def test_equal_rates_pass_after_enough_loads(self) -> None:
        """At the same 0.4 % on both sides the canary passes once it has its 3,000 loads."""
        verdict = judge(Sample(3_000, 12), Sample(20_000, 80))
        assert verdict.kind is Kind.PASS
        assert verdict.reason == "failure rate 0.4% vs 0.4% over 23,000 loads; within budget"
        assert verdict.evidence <= verdict.pass_at

    def test_equal_rates_wait_for_the_pass_minimum(self) -> None:
        """Within budget but short of min_pass_loads, the verdict is running and says how short."""
        verdict = judge(Sample(2_000, 8), Sample(40_000, 160))
        assert verdict.kind is Kind.RUNNING
        assert verdict.evidence <= verdict.pass_at
        assert verdict.reason == (
            "failure rate 0.4% vs 0.4% over 42,000 loads;"
            " within budget so far, canary has 2,000 of 3,000 loads needed to pass"
        )

    def test_no_failures_anywhere_pass_on_the_canary_own_bound(self) -> None:
        """With no failures on either side the ratio says nothing; the canary passes once its
        own failure rate is shown below the 0.1-point allowance (6,100 loads, as documented)."""
        assert judge(Sample(6_000, 0), Sample(50_000, 0)).kind is Kind.RUNNING
        verdict = judge(Sample(6_100, 0), Sample(50_000, 0))
        assert verdict.kind is Kind.PASS
        assert verdict.reason == "failure rate 0% vs 0% over 56,100 loads; within budget"

    def test_no_stable_failures_still_fail_a_failing_canary(self) -> None:
        """A stable with no failures at all does not shield a canary that fails often."""
        verdict = judge(Sample(600, 30), Sample(20_000, 0))
        assert verdict.kind is Kind.FAIL
        assert verdict.reason == "failure rate 5.0% vs 0% over 20,600 loads"

    def test_ratio_beyond_budget_but_within_the_points_does_not_fail(self) -> None:
        """Ten times stable's rate, but 0.01 % against 0.001 %, is within the 0.1-point
        allowance: it keeps running (or passes), it never rolls back."""
        verdict = judge(Sample(10_000_000, 1_000), Sample(10_000_000, 100))
        assert verdict.evidence >= verdict.fail_at
        assert verdict.kind is Kind.PASS
        assert verdict.reason.startswith("failure rate 0.010% vs 0.0010% over 20,000,000 loads")

    def test_ratio_shown_before_the_points_says_so(self) -> None:
        """A canary shown beyond the ratio but not yet beyond the points is running, and the
        reason says which half is missing."""
        verdict = judge(Sample(1_000, 31), Sample(1_000, 4))
        assert verdict.kind is Kind.RUNNING
        assert verdict.reason == (
            "failure rate 3.1% vs 0.4% over 2,000 loads;"
            " beyond 1.5x stable, not yet shown beyond 0.1 points more"
        )

    def test_with_no_points_the_ratio_alone_decides(self) -> None:
        """budget_points 0 leaves the decision to the ratio test."""
        verdict = judge(Sample(1_000, 31), Sample(1_000, 4), policy=Policy(budget_points=0))
        assert verdict.kind is Kind.FAIL

    @pytest.mark.parametrize(
        ("canary", "stable", "reason"),
        [
            pytest.param(120, 5_000, "canary has 120 of 500 loads needed", id="canary-short"),
            pytest.param(5_000, 80, "stable has 80 of 500 loads needed", id="stable-short"),
            pytest.param(
                0,
                499,
                "canary has 0 of 500 loads needed; stable has 499 of 500 loads needed",
                id="both-short",
            ),
        ],
    )
    def test_small_samples_wait_naming_what_is_missing(
        self, canary: int, stable: int, reason: str
    ) -> None:
        """Below min_loads on a side the verdict is waiting, whatever the failures say."""
        verdict = judge(Sample(canary, canary), Sample(stable, 0))
        assert verdict.kind is Kind.WAITING
        assert verdict.reason == reason
        assert verdict.evidence == 0

    def test_a_failure_flood_alone_waits_for_stable(self) -> None:
        """A flood of canary failures cannot roll back while stable lacks its minimum."""
        verdict = judge(Sample(1_000_000, 1_000_000), Sample(499, 0))
        assert verdict.kind is Kind.WAITING

    def test_huge_counts_stay_finite(self) -> None:
        """Counts of 10^15 give a verdict and finite figures (the statistic is in log space)."""
        worse = judge(Sample(10**15, 3 * 10**13), Sample(10**15, 10**13))
        same = judge(Sample(10**15, 10**13), Sample(10**15, 10**13))
        assert (worse.kind, same.kind) == (Kind.FAIL, Kind.PASS)
        assert math.isfinite(worse.evidence) and math.isfinite(same.evidence)
        assert worse.reason == "failure rate 3.0% vs 1.0% over 2,000,000,000,000,000 loads"

    def test_verdicts_are_values(self) -> None:
        """The same counts give the same verdict: nothing is kept between calls."""
        args = (Sample(3_000, 40), Sample(9_000, 60))
        assert judge(*args) == judge(*args)
        assert isinstance(judge(*args), Verdict)


class TestThresholds:
    def test_thresholds_are_wald_s_with_beta_shared_by_the_two_ways_to_pass(self) -> None:
        """ln A = ln((1 - beta/2) / alpha), ln B = ln((beta/2) / (1 - alpha))."""
        policy = Policy(alpha=0.02, beta=0.1)
        assert policy.fail_at == pytest.approx(math.log(0.95 / 0.02))
        assert policy.pass_at == pytest.approx(math.log(0.05 / 0.98))

    def test_the_statistic_is_the_conditional_binomial_log_likelihood_ratio(self) -> None:
        """The fast form matches the plain binomial log-likelihood ratio it rewrites."""
        canary, stable = Sample(700, 9), Sample(4_300, 31)
        n = canary.failures + stable.failures

        def log_likelihood(theta: float) -> float:
            p = theta * canary.loads / (theta * canary.loads + stable.loads)
            return canary.failures * math.log(p) + (n - canary.failures) * math.log(1 - p)

        plain = log_likelihood(3.0) - log_likelihood(1.5)
        assert log_likelihood_ratio(canary, stable, DEFAULT_POLICY) == pytest.approx(plain)

    def test_rate_bounds_hold_the_estimate_and_narrow(self) -> None:
        """The bounds sit either side of failures/loads and close in as the loads grow."""
        small, large = Sample(1_000, 10), Sample(100_000, 1_000)
        for sample in (small, large):
            assert lower_bound(sample, 0.01) < sample.rate < upper_bound(sample, 0.01)
        assert (
            upper_bound(large, 0.01) - lower_bound(large, 0.01)
            < (upper_bound(small, 0.01) - lower_bound(small, 0.01)) / 5
        )
        assert lower_bound(Sample(10, 0), 0.01) == 0
        assert upper_bound(Sample(0, 0), 0.01) == math.inf

    @pytest.mark.parametrize(
        ("rate", "shown"),
        [
            pytest.param(0.031, "3.1%", id="percent"),
            pytest.param(0.004, "0.4%", id="tenths"),
            pytest.param(0.00042, "0.042%", id="small-two-digits"),
            pytest.param(0.000_003_1, "0.00031%", id="tiny-two-digits"),
            pytest.param(0.000_999, "0.1%", id="rounds-up-to-tenths"),
            pytest.param(0.0, "0%", id="zero"),
            pytest.param(1.0, "100.0%", id="all"),
        ],
    )
    def test_rates_are_shown_with_a_tenth_or_two_significant_digits(
        self, rate: float, shown: str
    ) -> None:
        """A small rate is never shown as 0.0 %: below 0.1 % it keeps two significant digits."""
        assert percent(rate) == shown


class TestPolicy:
    def test_defaults(self) -> None:
        """The defaults the documentation explains."""
        expected = Policy(
            budget_ratio=1.5,
            budget_points=0.1,
            worse_ratio=3.0,
            alpha=0.01,
            beta=0.05,
            min_loads=500,
            min_pass_loads=3000,
        )
        assert expected == DEFAULT_POLICY

    def test_the_documentation_lists_the_defaults(self) -> None:
        """docs/analysis.md has a row per Policy field with its default, so they cannot drift."""
        rows = dict(re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", DOC.read_text("utf-8"), re.M))
        assert rows == {
            name: f"{getattr(DEFAULT_POLICY, name):,}"
            if isinstance(getattr(DEFAULT_POLICY, name), int)
            else repr(getattr(DEFAULT_POLICY, name))
            for name in Policy.__dataclass_fields__
        }

    @pytest.mark.parametrize(
        ("values", "field"),
        [
            pytest.param({"alpha": 0}, "alpha", id="alpha-zero"),
            pytest.param({"alpha": 0.5}, "alpha", id="alpha-half"),
            pytest.param({"alpha": math.nan}, "alpha", id="alpha-nan"),
            pytest.param({"beta": -0.1}, "beta", id="beta-negative"),
            pytest.param({"beta": "0.05"}, "beta", id="beta-text"),
            pytest.param({"budget_ratio": 0.9}, "budget_ratio", id="ratio-better-than-stable"),
            pytest.param({"budget_ratio": math.inf}, "budget_ratio", id="ratio-infinite"),
            pytest.param({"worse_ratio": 1.5}, "worse_ratio", id="worse-equals-budget"),
            pytest.param({"budget_ratio": 4.0}, "worse_ratio", id="budget-above-worse"),
            pytest.param({"budget_points": -0.1}, "budget_points", id="points-negative"),
            pytest.param({"budget_points": 100}, "budget_points", id="points-all"),
            pytest.param({"budget_points": True}, "budget_points", id="points-bool"),
            pytest.param({"min_loads": 0}, "min_loads", id="min-loads-zero"),
            pytest.param({"min_loads": 500.0}, "min_loads", id="min-loads-float"),
            pytest.param({"min_pass_loads": -1}, "min_pass_loads", id="min-pass-negative"),
        ],
    )
    def test_bad_values_are_refused_naming_the_field(
        self, values: dict[str, object], field: str
    ) -> None:
        """A bad policy value raises InvalidArgument whose field and message name it."""
        with pytest.raises(InvalidArgument) as raised:
            Policy(**values)  # type: ignore[arg-type]
        assert raised.value.field == field
        assert raised.value.message.startswith(f"{field} must be")

    def test_options_are_keyword_only(self) -> None:
        """Policy(0.01) would be ambiguous: fields are named."""
        with pytest.raises(TypeError):
            Policy(2.0)  # type: ignore[call-arg]


class TestSample:
    @pytest.mark.parametrize(
        ("args", "field"),
        [
            pytest.param((-1, 0), "loads", id="negative-loads"),
            pytest.param((10, -1), "failures", id="negative-failures"),
            pytest.param((10.0, 1), "loads", id="float-loads"),
            pytest.param((0, 3), "failures", id="failures-without-loads"),
            pytest.param((10, 3, (("errors", 2),)), "kinds", id="kinds-short"),
            pytest.param((10, 3, (("", 3),)), "kinds", id="kind-unnamed"),
        ],
    )
    def test_bad_counts_are_refused_naming_the_field(
        self, args: tuple[object, ...], field: str
    ) -> None:
        """Counts that cannot be are refused with the field named."""
        with pytest.raises(InvalidArgument) as raised:
            Sample(*args)  # type: ignore[arg-type]
        assert raised.value.field == field

    def test_failures_may_exceed_loads(self) -> None:
        """An entry that throws twice per load counts twice: the rate is failures per load."""
        assert Sample(10, 25).rate == 2.5


class TestReach:
    def test_shares_of_each_version(self) -> None:
        """Each version's share of the counts, summing to 1."""
        assert reach({"1.0.0": 300, "1.1.0": 100}) == {"1.0.0": 0.75, "1.1.0": 0.25}

    def test_no_counts_is_no_share(self) -> None:
        """With nothing counted every version's share is 0 (not a division by zero)."""
        assert reach({"1.0.0": 0}) == {"1.0.0": 0.0}
        assert reach({}) == {}

    def test_negative_counts_are_refused(self) -> None:
        """A negative count is a bug upstream, refused with the field named."""
        with pytest.raises(InvalidArgument) as raised:
            reach({"1.0.0": -1})
        assert raised.value.field == "counts_by_version"


def simulate(
    *,
    canary_rate: float,
    stable_rate: float,
    policy: Policy,
    canaries: int,
    batches: int,
    seed: int,
    canary_batch: int = 100,
    stable_batch: int = 400,
) -> tuple[dict[Kind, int], int]:
    """Run `canaries` canaries for up to `batches` batches of loads, judging after each
    batch as the server does. Judging stops at `fail` (the canary is rolled back) but
    goes on past `pass` (the canary keeps running; a later fail still counts). Returns
    the last verdict's kind per canary, and how many canaries a naive one-sided test
    at the same alpha, repeated after each batch, would have rolled back."""
    rng = random.Random(seed)
    z = NormalDist().inv_cdf(1 - policy.alpha)
    kinds = dict.fromkeys(Kind, 0)
    naive = 0
    for _ in range(canaries):
        lc = fc = ls = fs = 0
        kind, naive_fail = Kind.WAITING, False
        for _ in range(batches):
            lc, ls = lc + canary_batch, ls + stable_batch
            fc += binomial(rng, canary_batch, canary_rate)
            fs += binomial(rng, stable_batch, stable_rate)
            if kind is not Kind.FAIL:
                kind = judge(Sample(lc, fc), Sample(ls, fs), policy=policy).kind
            # The peeking test: the same conditional binomial at the budget, tested as if
            # each look were the only one.
            n = fc + fs
            p0 = policy.budget_ratio * lc / (policy.budget_ratio * lc + ls)
            if min(lc, ls) >= policy.min_loads and n:
                naive_fail |= (fc - n * p0) / math.sqrt(n * p0 * (1 - p0)) >= z
        kinds[kind] += 1
        naive += naive_fail
    return kinds, naive


def most(share: float, count: int) -> int:
    """The most of `count` trials expected at probability `share`, with 3 standard
    deviations of simulation noise."""
    return math.floor(count * share + 3 * math.sqrt(count * share * (1 - share)))


class TestErrorRatesBySimulation:
    @pytest.mark.timeout(10)
    def test_canaries_at_the_budget_are_rolled_back_at_most_alpha_despite_looking_often(
        self,
    ) -> None:
        """At the edge of the budget (1.5x stable, the worst case of H0), re-judged after
        every batch of 500 loads for 20,000 loads, the share rolled back is at most alpha;
        the naive test run on the same data rolls back several times alpha (peeking bias)."""
        policy = Policy(alpha=0.1, budget_points=0)
        canaries = 200
        kinds, naive = simulate(
            canary_rate=0.015,
            stable_rate=0.01,
            policy=policy,
            canaries=canaries,
            batches=40,
            seed=1,
        )
        assert kinds[Kind.FAIL] <= most(policy.alpha, canaries)
        assert naive >= 2 * policy.alpha * canaries

    @pytest.mark.timeout(10)
    def test_healthy_canaries_are_rarely_rolled_back_and_pass(self) -> None:
        """Canaries failing as often as stable (1 %), judged after every batch under the
        default policy: at most alpha are rolled back, and nearly all pass by 20,000 loads."""
        canaries = 200
        kinds, _ = simulate(
            canary_rate=0.01,
            stable_rate=0.01,
            policy=DEFAULT_POLICY,
            canaries=canaries,
            batches=40,
            seed=2,
        )
        assert kinds[Kind.FAIL] <= most(DEFAULT_POLICY.alpha, canaries)
        assert kinds[Kind.PASS] >= 0.95 * canaries

    @pytest.mark.timeout(10)
    def test_clearly_worse_canaries_fail_and_rarely_pass(self) -> None:
        """Canaries at worse_ratio (3x stable's 1 %, 2 points beyond) mostly fail; the
        share that pass instead is at most beta."""
        canaries = 200
        kinds, _ = simulate(
            canary_rate=0.03,
            stable_rate=0.01,
            policy=DEFAULT_POLICY,
            canaries=canaries,
            batches=40,
            seed=3,
        )
        assert kinds[Kind.FAIL] >= 0.9 * canaries
        assert kinds[Kind.PASS] <= most(DEFAULT_POLICY.beta, canaries)


class TestMonotone:
    @settings(max_examples=300, deadline=None)
    @given(
        canary_loads=st.integers(min_value=1, max_value=200_000),
        canary_share=st.floats(min_value=0, max_value=1),
        stable_loads=st.integers(min_value=1, max_value=200_000),
        stable_share=st.floats(min_value=0, max_value=1),
        more=st.integers(min_value=1, max_value=5_000),
    )
    def test_more_canary_failures_never_move_the_verdict_towards_pass(
        self,
        canary_loads: int,
        canary_share: float,
        stable_loads: int,
        stable_share: float,
        more: int,
    ) -> None:
        """More failures among the same canary loads keep a fail a fail and never make a
        pass (fail <= running <= pass only moves down)."""
        canary = Sample(canary_loads, int(canary_loads * canary_share))
        stable = Sample(stable_loads, int(stable_loads * stable_share))
        before = judge(canary, stable)
        after = judge(Sample(canary.loads, canary.failures + more), stable)
        if before.kind is Kind.WAITING:
            assert after.kind is Kind.WAITING
            return
        assert RANK[after.kind] <= RANK[before.kind]

    @settings(max_examples=300, deadline=None)
    @given(
        canary_loads=st.integers(min_value=3_000, max_value=200_000),
        canary_share=st.floats(min_value=0, max_value=0.4),
        stable_loads=st.integers(min_value=500, max_value=200_000),
        stable_share=st.floats(min_value=0, max_value=0.4),
        more=st.integers(min_value=1, max_value=5_000),
    )
    def test_more_failed_canary_loads_never_move_the_verdict_towards_pass(
        self,
        canary_loads: int,
        canary_share: float,
        stable_loads: int,
        stable_share: float,
        more: int,
    ) -> None:
        """Failed loads added to the canary (loads and failures both grow) never move the
        verdict towards pass, at failure rates up to 40 % (past that the rare-failure model
        bends: see docs/analysis.md) and once the canary has its loads needed to pass."""
        canary = Sample(canary_loads, int(canary_loads * canary_share))
        stable = Sample(stable_loads, int(stable_loads * stable_share))
        before = judge(canary, stable)
        after = judge(Sample(canary.loads + more, canary.failures + more), stable)
        assert RANK[after.kind] <= RANK[before.kind]

    @settings(max_examples=200, deadline=None)
    @given(
        canary_loads=st.integers(min_value=500, max_value=200_000),
        canary_share=st.floats(min_value=0, max_value=1),
        stable_loads=st.integers(min_value=500, max_value=200_000),
        stable_share=st.floats(min_value=0, max_value=1),
        more=st.integers(min_value=1, max_value=5_000),
    )
    def test_more_stable_failures_never_move_the_verdict_towards_fail(
        self,
        canary_loads: int,
        canary_share: float,
        stable_loads: int,
        stable_share: float,
        more: int,
    ) -> None:
        """The mirror image: a worse stable never makes the canary look worse."""
        canary = Sample(canary_loads, int(canary_loads * canary_share))
        stable = Sample(stable_loads, int(stable_loads * stable_share))
        before = judge(canary, stable)
        after = judge(canary, Sample(stable.loads, stable.failures + more))
        assert RANK[after.kind] >= RANK[before.kind]
