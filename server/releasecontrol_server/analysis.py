"""Canary analysis: does the canary fail more often than stable, beyond the budget?

Pure statistics: counts in, a `Verdict` out. No clock, no I/O, no state; the
server calls `judge` again with the grown counts every few seconds, and acts on
the verdict (a `fail` rolls the canary back). docs/analysis.md says the same
for operators, with the numbers of the default policy.

The budget
----------
The canary is *within budget* while its failure rate r_c is at most
``max(budget_ratio * r_s, r_s + budget_points / 100)``, r_s being stable's: it
may fail 1.5 times as often as stable, or 0.1 percentage points more, whichever
allows more. The ratio is what the test is about (failure rates of front-end
code differ by orders of magnitude between features, a ratio reads the same for
all of them); the points stop a rollback over a difference too small to matter,
which a ratio alone would call at any baseline near zero once traffic is large.

The test (fail side: Wald's SPRT on the ratio, conditional on the failures)
--------------------------------------------------------------------------
Failures are rare events on each side, so given the total n = f_c + f_s, the
canary's share is binomial: f_c ~ Binomial(n, p) with
``p(theta) = theta L_c / (theta L_c + L_s)``, theta = r_c / r_s and L the loads.
Stable's own rate drops out, so nothing unknown is left but theta. The
hypotheses are H0: theta <= budget_ratio (theta0) and H1: theta >= worse_ratio
(theta1); the statistic is the log-likelihood ratio ::

    llr = f_c ln(p1 / p0) + f_s ln((1 - p1) / (1 - p0))

with Wald's thresholds A = (1 - beta') / alpha and B = beta' / (1 - alpha),
beta' = beta / 2 (below). The likelihood ratio is a non-negative martingale
under theta0 (a supermartingale below it), so by Ville's inequality the chance
it *ever* reaches A is at most 1/A, about alpha: the verdict may be computed
after every beacon, or every few seconds, and stop at the first crossing,
without the inflation that repeating a fixed-sample test brings ("peeking").
Likewise under theta1 the chance it ever falls to B is at most B.

`fail` needs, besides llr >= ln A, that the excess is beyond the points too:
the canary's lower bound minus stable's upper bound (both below) exceeds
budget_points, each bound at level alpha/2. A canary within budget is within
one of the two allowances, and each of the two checks alone refuses it with
chance at most about alpha, so requiring both keeps the rollback rate at alpha
(an intersection-union test). With budget_points 0 the ratio test alone decides.

Pass side, and the rate bounds
------------------------------
`pass` comes by either of two ways, each allowed half of beta (beta'), so a
clearly worse canary (theta >= worse_ratio and beyond the points) passes with
chance at most about beta: llr <= ln B (the ratio is within budget), or the
canary's own upper bound is at most budget_points (its failure rate is within
the allowance whatever stable's is; this is how a canary with no failures
passes when stable has none either). Either way the canary needs
`min_pass_loads` loads first.

The bounds are always-valid confidence sequences for a rate: Robbins' mixture
martingale for a Poisson count f over L loads, mixed over a Gamma(a, b) prior::

    ln M(r) = a ln b - lnGamma(a) + lnGamma(a + f) - (a + f) ln(b + L) + r L - f ln r

M(r) is a martingale under rate r (a supermartingale for Bernoulli loads), so
the rates with ln M(r) < ln(1 / level) hold the true rate at every moment with
chance 1 - level. lnGamma keeps everything in log space: counts of 10^15 are
fine.

Waiting
-------
Before either side has `min_loads` loads the verdict is `waiting` whatever
the counts say: a burst of failure beacons cannot roll back by itself (the
ingest's rate limit bounds how fast a burst grows).

Limits
------
Loads are assumed independent. One broken client sending many failures, or a
failure that comes back on every reload, is correlated data: the test then
fails sooner than alpha promises (rolling back more, not less). Loads are
compared over the canary's whole life, so a weight change is averaged in; a
stable failure rate that drifts with the time of day during a ramp shifts the
comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from releasecontrol.errors import InvalidArgument

# The Gamma(a, b) prior of the rate bounds: its mean a/b is 1 % and its shape is
# small, so the bounds are tight for rates near 1 % and still valid far from it
# (the prior changes how fast a bound closes, never its error rate).
PRIOR_SHAPE = 0.5
PRIOR_LOADS = 50.0


class Kind(StrEnum):
    """What the analysis says of the canary now."""

    WAITING = "waiting"
    """Too few loads on a side to say anything."""
    RUNNING = "running"
    """Enough loads, no decision yet."""
    PASS = "pass"
    """Within budget with the configured confidence."""
    FAIL = "fail"
    """Worse than stable beyond the budget: roll back."""


@dataclass(frozen=True)
class Sample:
    """Loads and failures of one side (canary or stable) of a feature over the canary's life.

    A failure is a load that failed, an error thrown by the entry, or a verification
    refusal; the caller sums them. Failures are counted per load and may exceed the
    loads if an entry throws more than once per load.
    """

    loads: int
    failures: int
    kinds: tuple[tuple[str, int], ...] = ()
    """Optional breakdown of `failures` by kind, e.g. (("entry errors", 30), ("failed loads",
    8)); it sums to `failures` and is named in a `fail` verdict's reason."""

    def __post_init__(self) -> None:
        for name in ("loads", "failures"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InvalidArgument(f"{name} must be a whole number >= 0, got {value!r}", name)
        if self.failures and not self.loads:
            raise InvalidArgument(
                f"failures need loads: {self.failures:,} failures of 0 loads", "failures"
            )
        if self.kinds:
            for kind, count in self.kinds:
                if not kind or not isinstance(count, int) or isinstance(count, bool) or count < 0:
                    raise InvalidArgument(
                        f"kinds must be (name, count >= 0) pairs, got {(kind, count)!r}", "kinds"
                    )
            total = sum(count for _, count in self.kinds)
            if total != self.failures:
                raise InvalidArgument(
                    f"kinds must sum to failures: {total:,} vs {self.failures:,}", "kinds"
                )

    @property
    def rate(self) -> float:
        """Failures per load; 0 before the first load."""
        return self.failures / self.loads if self.loads else 0.0


@dataclass(frozen=True, kw_only=True)
class Policy:
    """How much worse the canary may be, how sure the analysis must be, and of how much."""

    budget_ratio: float = 1.5
    """Within budget: the canary fails at most this many times as often as stable (or
    within `budget_points`, whichever allows more)."""
    budget_points: float = 0.1
    """Within budget: the canary fails at most this many percentage points more often
    than stable (or within `budget_ratio`). 0 leaves the ratio alone."""
    worse_ratio: float = 3.0
    """Clearly worse: the canary fails this many times as often as stable. Such a canary
    passes with a chance of at most `beta`; between the budget and this, either
    verdict may come."""
    alpha: float = 0.01
    """Chance of rolling back a canary that is within budget, over its whole life."""
    beta: float = 0.05
    """Chance of passing a canary that is clearly worse."""
    min_loads: int = 500
    """Loads needed on EACH side before any verdict but `waiting`."""
    min_pass_loads: int = 3000
    """Canary loads needed before `pass`: by then a failure that hits 1 load in 1,000
    has shown at least once with a chance of 95 %."""

    def __post_init__(self) -> None:
        _check_number("budget_ratio", self.budget_ratio, low=1.0, high=1000.0, low_open=False)
        _check_number("budget_points", self.budget_points, low=0.0, high=100.0, low_open=False)
        _check_number("worse_ratio", self.worse_ratio, low=self.budget_ratio, high=10_000.0)
        _check_number("alpha", self.alpha, low=0.0, high=0.5)
        _check_number("beta", self.beta, low=0.0, high=0.5)
        for name, least in (("min_loads", 1), ("min_pass_loads", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise InvalidArgument(
                    f"{name} must be a whole number >= {least}, got {value!r}", name
                )

    @property
    def fail_at(self) -> float:
        """ln A: the log-likelihood ratio at which the ratio counts as beyond budget."""
        return math.log((1 - self.beta / 2) / self.alpha)

    @property
    def pass_at(self) -> float:
        """ln B: the log-likelihood ratio at which the ratio counts as within budget."""
        return math.log((self.beta / 2) / (1 - self.alpha))


def _check_number(
    name: str, value: object, *, low: float, high: float, low_open: bool = True
) -> None:
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if low_open else value >= low)
        and value < high
    )
    if not ok:
        above = "above" if low_open else "at least"
        raise InvalidArgument(
            f"{name} must be {above} {low:g} and below {high:g}, got {value!r}", name
        )


DEFAULT_POLICY = Policy()


@dataclass(frozen=True)
class Verdict:
    """The analysis of one feature's canary against stable, at the counts given."""

    kind: Kind
    reason: str
    """One line naming the figures: "failure rate 3.1% vs 0.4% over 12,400 loads" (canary vs
    stable, loads of both sides), then for any kind but `fail` what is pending."""
    canary_loads: int
    canary_failures: int
    stable_loads: int
    stable_failures: int
    evidence: float
    """The log-likelihood ratio of the SPRT: `fail` needs it at `fail_at`, `pass` (one of
    the two ways) at `pass_at`. 0 while `waiting`."""
    fail_at: float
    pass_at: float

    @property
    def canary_rate(self) -> float:
        """The canary's failures per load."""
        return self.canary_failures / self.canary_loads if self.canary_loads else 0.0

    @property
    def stable_rate(self) -> float:
        """Stable's failures per load."""
        return self.stable_failures / self.stable_loads if self.stable_loads else 0.0

    @property
    def loads(self) -> int:
        """Loads of both sides."""
        return self.canary_loads + self.stable_loads


def judge(canary: Sample, stable: Sample, *, policy: Policy = DEFAULT_POLICY) -> Verdict:
    """The verdict on `canary` against `stable` under `policy`.

    Safe to call again as the counts grow (see the module docstring): the chance of
    ever returning `fail` for a canary within budget is about `policy.alpha`. Raises
    nothing for valid `Sample`s (they check themselves when made).
    """

    def verdict(kind: Kind, reason: str, evidence: float = 0.0) -> Verdict:
        return Verdict(
            kind,
            reason,
            canary.loads,
            canary.failures,
            stable.loads,
            stable.failures,
            evidence,
            policy.fail_at,
            policy.pass_at,
        )

    missing = [
        f"{side} has {sample.loads:,} of {policy.min_loads:,} loads needed"
        for side, sample in (("canary", canary), ("stable", stable))
        if sample.loads < policy.min_loads
    ]
    if missing:
        return verdict(Kind.WAITING, "; ".join(missing))

    figures = (
        f"failure rate {percent(canary.rate)} vs {percent(stable.rate)}"
        f" over {canary.loads + stable.loads:,} loads"
    )
    llr = log_likelihood_ratio(canary, stable, policy)
    allowance = policy.budget_points / 100
    half_alpha, half_beta = policy.alpha / 2, policy.beta / 2

    beyond_ratio = llr >= policy.fail_at
    # Beyond the ratio, a rollback also needs the excess beyond the points: the canary's
    # lower bound above stable's upper bound plus the allowance. With no points every
    # canary within budget is within the ratio (budget_ratio >= 1), so the ratio decides.
    if beyond_ratio and (
        allowance == 0
        or lower_bound(canary, half_alpha) - upper_bound(stable, half_alpha) > allowance
    ):
        return verdict(Kind.FAIL, figures + _kinds(canary), llr)

    # Within budget by the ratio, or by the points whatever stable's rate is.
    within = llr <= policy.pass_at or upper_bound(canary, half_beta) <= allowance
    if within and canary.loads >= policy.min_pass_loads:
        return verdict(Kind.PASS, f"{figures}; within budget", llr)
    if within:
        return verdict(
            Kind.RUNNING,
            f"{figures}; within budget so far, canary has {canary.loads:,}"
            f" of {policy.min_pass_loads:,} loads needed to pass",
            llr,
        )
    if beyond_ratio:
        return verdict(
            Kind.RUNNING,
            f"{figures}; beyond {policy.budget_ratio:g}x stable,"
            f" not yet shown beyond {policy.budget_points:g} points more",
            llr,
        )
    return verdict(Kind.RUNNING, f"{figures}; no decision yet", llr)


def log_likelihood_ratio(canary: Sample, stable: Sample, policy: Policy) -> float:
    """ln of P(counts | ratio worse_ratio) / P(counts | ratio budget_ratio), given the
    total of failures: the SPRT's statistic. 0 when a side has no loads."""
    if canary.loads == 0 or stable.loads == 0:
        return 0.0
    log_c, log_s = math.log(canary.loads), math.log(stable.loads)
    log0, log1 = math.log(policy.budget_ratio), math.log(policy.worse_ratio)
    # With D(theta) = ln(theta L_c + L_s): ln p1/p0 = ln(theta1/theta0) - (D1 - D0) and
    # ln (1-p1)/(1-p0) = -(D1 - D0); D is summed in log space, so no count overflows.
    spread = _log_add(log1 + log_c, log_s) - _log_add(log0 + log_c, log_s)
    n = canary.failures + stable.failures
    return canary.failures * (log1 - log0) - n * spread


def lower_bound(sample: Sample, level: float) -> float:
    """A rate below the sample's true failure rate at every moment with chance 1 - level
    (an always-valid confidence sequence; 0 before the first failure)."""
    if sample.failures == 0:
        return 0.0
    return _solve(sample, level, sample.rate, downward=True)


def upper_bound(sample: Sample, level: float) -> float:
    """A rate above the sample's true failure rate at every moment with chance 1 - level
    (an always-valid confidence sequence). Infinite before the first load."""
    if sample.loads == 0:
        return math.inf
    if sample.failures == 0:
        # ln M(r) = a ln(b / (b + L)) + r L: solved in closed form.
        shift = PRIOR_SHAPE * math.log(PRIOR_LOADS / (PRIOR_LOADS + sample.loads))
        return (math.log(1 / level) - shift) / sample.loads
    return _solve(sample, level, sample.rate, downward=False)


def _log_mixture(sample: Sample, rate: float) -> float:
    """ln M(rate): the gamma-mixture martingale of the module docstring."""
    f, loads = sample.failures, sample.loads
    return (
        PRIOR_SHAPE * math.log(PRIOR_LOADS)
        - math.lgamma(PRIOR_SHAPE)
        + math.lgamma(PRIOR_SHAPE + f)
        - (PRIOR_SHAPE + f) * math.log(PRIOR_LOADS + loads)
        + rate * loads
        - f * math.log(rate)
    )


def _solve(sample: Sample, level: float, start: float, *, downward: bool) -> float:
    """The rate on one side of `start` (the estimate, where ln M is lowest) at which
    ln M reaches ln(1/level), by bisection on ln(rate)."""
    target = math.log(1 / level)
    inside = math.log(start)
    step = -1.0 if downward else 1.0
    outside = inside + step
    while _log_mixture(sample, math.exp(outside)) < target:
        inside, outside = outside, outside + step
        step *= 2
    while abs(outside - inside) > 1e-9:  # a relative precision of 1e-9 on the rate
        middle = (inside + outside) / 2
        if _log_mixture(sample, math.exp(middle)) < target:
            inside = middle
        else:
            outside = middle
    # The side still inside the set: the bound errs towards the wider interval.
    return math.exp(inside)


def _log_add(x: float, y: float) -> float:
    """ln(e^x + e^y) without overflow."""
    high, low = max(x, y), min(x, y)
    return high + math.log1p(math.exp(low - high))


def percent(rate: float) -> str:
    """A failure rate as the reason shows it: "3.1%", "0.4%", "0.042%" (two significant
    digits below 0.1 %, so a small rate is not shown as 0.0%), "0%"."""
    value = rate * 100
    if value == 0:
        return "0%"
    if round(value, 1) >= 0.1:
        return f"{value:.1f}%"
    decimals = 1 - math.floor(math.log10(value))
    return f"{value:.{decimals}f}%"


def _kinds(sample: Sample) -> str:
    if not sample.kinds:
        return ""
    named = ", ".join(f"{count:,} {kind}" for kind, count in sample.kinds if count)
    return f" (canary: {named})" if named else ""


def reach(counts_by_version: Mapping[str, int]) -> dict[str, float]:
    """The share (0 to 1) of each version in `counts_by_version` (recent loads or host
    reports per version); all 0 when there are none. Raises InvalidArgument for a
    negative count."""
    for version, count in counts_by_version.items():
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidArgument(
                f"counts_by_version[{version!r}] must be a whole number >= 0, got {count!r}",
                "counts_by_version",
            )
    total = sum(counts_by_version.values())
    return {
        version: (count / total if total else 0.0) for version, count in counts_by_version.items()
    }
