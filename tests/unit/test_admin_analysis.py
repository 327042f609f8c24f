"""Analysis, soak by exposure and reach in the admin UI.

The feature page shows the canary's verdict (waiting / running / pass / fail) with its
reason and figures, a soak by exposure as "1,200 of 5,000 loads", and each version's
share of the reports hosts sent in the last 10 minutes; without analysis it says so in
one line. The canary form takes Min loads by the CLI's rule and in its words. Counts
are written to the store as the beacon flusher writes them; the app runs in process
over a real controller (see test_admin.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_admin import T0, Admin, build
from test_admin_weights import by_id, deploy, from_form

from releasecontrol.errors import InvalidArgument, Unavailable
from releasecontrol_server import releases
from releasecontrol_server.admin.analysis import share_text
from releasecontrol_server.beacons import Counts
from releasectl import main as releasectl_main

OFF = (
    "No analysis: the control plane takes no beacons (set beacon_keys); canaries are judged "
    "by time alone."
)


async def report(
    admin: Admin, version: str, *, loads: int, errors: int = 0, batches: int = 1, at: datetime = T0
) -> None:
    """What hosts reported of checkout `version` in the minute of `at`, as the flusher keeps it."""
    await admin.controller.add_beacon_counts(
        {("checkout", version, at): Counts(loads=loads, entry_errors=errors, batches=batches)}
    )


async def signed_in(admin: Admin) -> Admin:
    """checkout 1.0.0 stable and 1.1.0 beside it; alice (admin) signed in."""
    await admin.publish("checkout", "1.0.0")
    await admin.publish("checkout", "1.1.0", canary=True, soak_seconds=0)
    response = await admin.sign_in(admin.token("alice", "admin"))
    assert response.status_code == 303, response.text
    return admin


@pytest.fixture
async def analysed(tmp_path: Path) -> AsyncIterator[Admin]:
    """The app with the server's analyzer on (beacon keys set)."""
    async for admin in build(tmp_path, analysis=True):
        yield await signed_in(admin)


@pytest.fixture
async def unanalysed(tmp_path: Path) -> AsyncIterator[Admin]:
    """The app with the analyzer off (no beacon keys), as main.py builds it then."""
    async for admin in build(tmp_path, analysis=False):
        yield await signed_in(admin)


async def page(admin: Admin) -> str:
    response = await admin.client.get("/_admin/features/checkout")
    assert response.status_code == 200, response.text
    return response.text


class TestMinLoadsForm:
    @pytest.mark.parametrize(
        ("typed", "min_loads"),
        [
            pytest.param("", 0, id="empty-is-time-alone"),
            pytest.param("5000", 5000, id="plain"),
            pytest.param(" 5000 ", 5000, id="spaces"),
            pytest.param("0", 0, id="zero"),
            pytest.param("1000000000", 1_000_000_000, id="largest"),
        ],
    )
    def test_the_field_becomes_the_clis_command(self, typed: str, min_loads: int) -> None:
        """Min loads goes into the same DeployCanary `release canary --min-loads` builds."""
        request = from_form(action="canary", version="1.1.0", min_loads=typed)
        assert request.command() == releases.DeployCanary("1.1.0", 1800, min_loads=min_loads)
        again = from_form(**dict(request.confirmed(3).hidden_fields()))
        assert again.command() == request.command()

    def test_it_goes_with_a_step_ramp(self) -> None:
        """A ramp may need loads too; the confirmation sends both back."""
        request = from_form(
            action="canary", version="1.1.0", steps="5,100", step_soak="10m", min_loads="500"
        ).confirmed(3)
        assert from_form(**dict(request.hidden_fields())).command() == releases.DeployCanary(
            "1.1.0", 0, steps=(500, 10000), step_seconds=600, min_loads=500
        )

    @pytest.mark.parametrize(
        "typed",
        [
            pytest.param("1000000001", id="above-a-billion"),
            pytest.param("-5", id="negative"),
            pytest.param("abc", id="words"),
            pytest.param("5,000", id="separators"),
            pytest.param("1e3", id="exponent"),
            pytest.param("2.5", id="decimals"),
        ],
    )
    def test_a_bad_value_is_refused_in_the_clis_words(self, typed: str) -> None:
        """What `release canary --min-loads` refuses, the form refuses with the same sentence
        (after the option's name), naming the input."""
        args = ["release", "canary", "--feature", "checkout", "--version", "1.1.0"]
        cli = CliRunner().invoke(
            releasectl_main, [*args, "--min-loads", typed], prog_name="releasectl"
        )
        assert cli.exit_code == 2, cli.output
        clis = " ".join(cli.output.split()).split("'--min-loads': ")[1].split(" (see")[0]
        with pytest.raises(InvalidArgument) as refused:
            from_form(action="canary", version="1.1.0", min_loads=typed)
        assert refused.value.field == "min_loads"
        assert refused.value.message.startswith(f"min_loads {clis}; give a whole number")

    async def test_a_bad_value_is_shown_beside_its_input(self, analysed: Admin) -> None:
        """Under the Min loads input, marked invalid, typed value kept; nothing changes."""
        before = analysed.state("checkout")
        response = await analysed.review(
            "checkout", action="canary", version="1.1.0", min_loads="lots"
        )
        assert response.status_code == 400
        assert by_id(response.text, "canary-min_loads-error").startswith(
            "min_loads 'lots' is not a valid integer range"
        )
        assert 'aria-invalid="true"' in response.text.split('id="canary-min_loads"')[1][:300]
        assert analysed.state("checkout") == before

    async def test_the_review_names_the_loads_and_the_canary_gets_them(
        self, analysed: Admin
    ) -> None:
        """The headline and the canary row say the soak is time and loads."""
        review = await analysed.review(
            "checkout", action="canary", version="1.1.0", soak="30m", min_loads="5000"
        )
        assert by_id(review.text, "headline") == (
            "Deploy checkout 1.1.0 as canary to opted-in hosts only with a 30m and 5,000 loads "
            "soak (canary now 1.1.0 — opted-in hosts only, stable stays 1.0.0)"
        )
        assert "<td>1.1.0 — opted-in hosts only (soak 30m and 5,000 loads)</td>" in review.text
        await analysed.confirm(review)
        assert analysed.state("checkout").canary.min_loads == 5000  # type: ignore[union-attr]


class TestSoakByExposure:
    async def test_the_state_and_the_panel_show_loads_so_far(self, analysed: Admin) -> None:
        """1,200 of 5,000 loads in the state panel and the analysis panel, 3,800 to go."""
        await deploy(analysed, soak="30m", min_loads="5000")
        await report(analysed, "1.1.0", loads=1200)
        await report(analysed, "1.0.0", loads=9000)  # stable's loads do not count
        analysed.clock.now = T0 + timedelta(minutes=10)
        shown = await page(analysed)
        assert by_id(shown, "state-exposure") == "and 1,200 of 5,000 loads"
        assert by_id(shown, "exposure") == "Soak by exposure: 1,200 of 5,000 loads (3,800 to go)"
        assert '<meter min="0" max="5000" value="1200"' in shown

    async def test_a_promote_waits_for_the_loads_then_goes(self, analysed: Admin) -> None:
        """The review of a promote counts what hosts reported, as the controller does: refused
        while short, with both figures; allowed once enough loads came in."""
        await deploy(analysed, soak="1m", min_loads="5000")
        analysed.clock.now = T0 + timedelta(minutes=2)
        await report(analysed, "1.1.0", loads=4999, at=T0 + timedelta(minutes=1))
        short = await analysed.review("checkout", action="promote", version="1.1.0")
        assert short.status_code == 409
        assert "4,999 of the 5,000 loads it needs" in by_id(short.text, "error")
        await report(analysed, "1.1.0", loads=1, at=T0 + timedelta(minutes=1))
        review = await analysed.review("checkout", action="promote", version="1.1.0")
        assert review.status_code == 200, by_id(review.text, "error")
        await analysed.confirm(review)
        assert analysed.state("checkout").stable == "1.1.0"

    async def test_loads_before_the_soak_began_do_not_count(self, analysed: Admin) -> None:
        """Counts of an earlier minute than the canary's soak are not its exposure."""
        analysed.clock.now = T0 + timedelta(minutes=5)
        await deploy(analysed, min_loads="100")
        await report(analysed, "1.1.0", loads=500, at=T0)
        assert by_id(await page(analysed), "state-exposure") == "and 0 of 100 loads"

    async def test_without_analysis_the_page_says_the_loads_cannot_come(
        self, unanalysed: Admin
    ) -> None:
        """No beacons: the loads are 0 and the page says to skip the soak to promote."""
        await deploy(unanalysed, min_loads="5000")
        shown = await page(unanalysed)
        assert by_id(shown, "state-exposure") == "and 0 of 5,000 loads"
        assert by_id(shown, "exposure-unmet") == (
            "Canary 1.1.0 also needs 5,000 loads before a promote, which no host can report "
            "here: promote it skipping the soak, with a reason."
        )

    async def test_the_list_shows_the_exposure_too(self, analysed: Admin) -> None:
        """The features list's soak column adds the loads so far."""
        await deploy(analysed, min_loads="5000")
        await report(analysed, "1.1.0", loads=1200)
        listing = (await analysed.client.get("/_admin")).text
        assert "1,200 of 5,000 loads" in listing


class TestVerdict:
    @pytest.mark.parametrize(
        "analysis",
        [pytest.param(None, id="no-analyzer"), pytest.param(False, id="no-beacon-keys")],
    )
    async def test_without_analysis_the_panel_is_one_line(
        self, tmp_path: Path, analysis: bool | None
    ) -> None:
        """No analyzer, or one that is off: one sentence, no verdict, no reach, no polling."""
        async for admin in build(tmp_path, analysis=analysis):
            await signed_in(admin)
            shown = await page(admin)
            section = shown.split('id="analysis-live"')[1].split("</section>")[0]
            assert by_id(shown, "analysis-off") == OFF
            assert section.count("<p") == 1
            assert 'id="verdict"' not in shown and 'id="reach-table"' not in shown
            assert "data-poll" not in shown

    async def test_too_few_loads_is_waiting_with_what_is_missing(self, analysed: Admin) -> None:
        """Under 500 loads a side the verdict is waiting, saying how many each side has."""
        await report(analysed, "1.1.0", loads=120)
        shown = await page(analysed)
        assert by_id(shown, "verdict") == "waiting too few loads on a side to judge yet"
        assert by_id(shown, "verdict-reason") == (
            "Canary has 120 of 500 loads needed; stable has 0 of 500 loads needed."
        )
        assert 'data-poll="5"' in shown  # counts arrive without a change event

    async def test_a_healthy_canary_passes_with_its_figures(self, analysed: Admin) -> None:
        """Equal failure rates over enough loads: pass, and the figures of both sides."""
        await report(analysed, "1.1.0", loads=20000, errors=20)
        await report(analysed, "1.0.0", loads=200000, errors=200)
        shown = await page(analysed)
        assert by_id(shown, "verdict") == "pass within budget"
        assert by_id(shown, "verdict-reason") == (
            "Failure rate 0.1% vs 0.1% over 220,000 loads; within budget."
        )
        assert by_id(shown, "verdict-figures") == (
            "Since the canary's soak began Side Version Loads Failures Failure rate "
            "Canary 1.1.0 20,000 20 0.1% Stable 1.0.0 200,000 200 0.1%"
        )

    async def test_not_yet_decided_is_running(self, analysed: Admin) -> None:
        """Enough loads on both sides, not yet enough to decide: running, and why."""
        await report(analysed, "1.1.0", loads=4000, errors=4)
        await report(analysed, "1.0.0", loads=40000, errors=40)
        shown = await page(analysed)
        assert by_id(shown, "verdict") == "running enough loads, no decision yet"
        assert by_id(shown, "verdict-reason") == (
            "Failure rate 0.1% vs 0.1% over 44,000 loads; no decision yet."
        )

    async def test_a_worse_canary_fails_naming_the_figures(self, analysed: Admin) -> None:
        """A canary failing ten times as often: fail, the reason naming both rates."""
        await report(analysed, "1.1.0", loads=5000, errors=500)
        await report(analysed, "1.0.0", loads=50000, errors=50)
        shown = await page(analysed)
        assert by_id(shown, "verdict") == (
            "fail worse than stable beyond the budget: the canary is rolled back"
        )
        assert by_id(shown, "verdict-reason") == (
            "Failure rate 10.0% vs 0.1% over 55,000 loads (canary: 500 entry errors)."
        )

    async def test_a_step_plan_is_said_to_wait_for_the_analysis(self, analysed: Admin) -> None:
        """With a ramp running, the panel says a step moves on only while the analysis has
        data and does not fail; without one it does not."""
        shown = await page(analysed)
        assert "A step moves on only while" not in shown
        await deploy(analysed, steps="5,50", step_soak="10m")
        assert "A step moves on only while the analysis has data and does not fail." in (
            await page(analysed)
        )

    async def test_no_canary_nothing_to_judge(self, analysed: Admin) -> None:
        """After a promote there is no verdict, only reach."""
        review = await analysed.review(
            "checkout", action="promote", version="1.1.0", skip_soak="1", reason="go"
        )
        await analysed.confirm(review)
        assert by_id(await page(analysed), "verdict-none") == (
            "No canary is running: nothing to judge."
        )


class Down:
    """A count source whose server does not answer (a Prometheus outage)."""

    async def counts(
        self, feature_id: str, versions: Iterable[str], since: datetime, now: datetime
    ) -> Mapping[str, Counts]:
        raise Unavailable("the Prometheus server at http://prom.example:9090 did not answer")


class TestACountSourceThatFails:
    async def test_the_page_stays_and_says_what_failed(self, analysed: Admin) -> None:
        """No verdict and unknown loads, each saying why; the rest of the page is there."""
        await deploy(analysed, min_loads="5000")
        assert analysed.analyzer is not None
        analysed.analyzer.source = Down()
        shown = await page(analysed)
        assert by_id(shown, "verdict-error") == (
            "No verdict now: the analysis could not read its counts (the Prometheus server at "
            "http://prom.example:9090 did not answer); it tries again every few seconds, and a "
            "step plan holds meanwhile."
        )
        assert by_id(shown, "state-exposure") == (
            "and ? of 5,000 loads (not known now: the Prometheus server at "
            "http://prom.example:9090 did not answer)"
        )
        assert by_id(shown, "state-stable") == "1.0.0"

    async def test_a_promote_that_needs_the_loads_is_refused_as_unavailable(
        self, analysed: Admin
    ) -> None:
        """The review of a promote counts the loads as the change would: 503, its message;
        a change that counts no loads is reviewed as usual."""
        await deploy(analysed, min_loads="5000")
        assert analysed.analyzer is not None
        analysed.analyzer.source = Down()
        refused = await analysed.review("checkout", action="promote", version="1.1.0")
        assert refused.status_code == 503
        assert "did not answer" in by_id(refused.text, "error")
        weight = await analysed.review("checkout", action="set_weight", percent="5")
        assert weight.status_code == 200


class TestReach:
    async def test_shares_of_the_last_ten_minutes_per_version(self, analysed: Admin) -> None:
        """Reports of the last 10 minutes only, each version's share, largest first."""
        await report(analysed, "1.0.0", loads=10, batches=3, at=T0 - timedelta(minutes=20))
        await report(analysed, "1.0.0", loads=10, batches=75)
        await report(analysed, "1.1.0", loads=10, batches=25)
        shown = await page(analysed)
        assert by_id(shown, "reach-table") == (
            "Version Channel Share Share as a bar Reports 1.0.0 stable 75% 75 1.1.0 canary 25% 25"
        )
        assert '<meter min="0" max="1" value="0.75"' in shown

    async def test_after_a_rollback_the_fleet_is_seen_leaving(self, analysed: Admin) -> None:
        """The analysis rolls a failing canary back; its version shows on no channel, and its
        share falls as hosts stop reporting it."""
        await report(analysed, "1.1.0", loads=5000, errors=500, batches=50)
        await report(analysed, "1.0.0", loads=50000, errors=50, batches=50)
        assert analysed.analyzer is not None
        await analysed.analyzer.judge_all()  # as the server does every few seconds
        assert analysed.state("checkout").canary is None
        shown = await page(analysed)
        assert by_id(shown, "verdict-none") == "No canary is running: nothing to judge."
        assert by_id(shown, "reach-table").endswith("1.1.0 no channel 50% 50")
        first = shown.split('id="history-table"')[1]
        assert "releasecontrol-analysis" in first and "failure rate 10.0% vs 0.1%" in first
        # Nine minutes on, new reports come only from the stable side.
        analysed.clock.now = T0 + timedelta(minutes=9)
        await report(analysed, "1.0.0", loads=10, batches=900, at=analysed.clock.now)
        assert by_id(await page(analysed), "reach-table") == (
            "Version Channel Share Share as a bar Reports "
            "1.0.0 stable 95% 950 1.1.0 no channel 5.0% 50"
        )
        analysed.clock.now = T0 + timedelta(minutes=11)
        assert "1.1.0" not in by_id(await page(analysed), "reach-table")

    async def test_no_reports_says_so(self, analysed: Admin) -> None:
        """Nothing reported in the window: one sentence instead of an empty table."""
        assert by_id(await page(analysed), "reach-none") == (
            "No host reported checkout in the last 10 minutes."
        )

    @pytest.mark.parametrize(
        ("share", "shown"),
        [(1.0, "100%"), (0.5, "50%"), (0.1, "10%"), (0.042, "4.2%"), (0.00042, "0.042%")],
    )
    def test_a_small_share_is_not_rounded_away(self, share: float, shown: str) -> None:
        """A version almost gone reads 0.042%, not 0%."""
        assert share_text(share) == shown
