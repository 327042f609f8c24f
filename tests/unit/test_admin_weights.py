"""Percentage canaries in the admin UI: the canary and set-weight forms, and how every page
words a canary's weight and step plan.

The forms read percentages and ramps with the CLI's helpers (releasecontrol.weights)
and build the same commands; a bad value is shown next to its input and nothing
changes. The app runs in process over a real controller (see test_admin.py).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_admin import T0, Admin, build

from releasecontrol.errors import FailedPrecondition, InvalidArgument
from releasecontrol_server import releases
from releasecontrol_server.admin.actions import ChangeRequest, Kind, form_field
from releasecontrol_server.releases import ChangeMeta
from releasectl import main as releasectl_main

STEP_ACTOR = "releasecontrol-steps"


def from_form(**fields: str) -> ChangeRequest:
    return ChangeRequest.from_form(
        "checkout", fields, principal_name="alice", default_soak_seconds=1800
    )


_BLOCK = re.compile(r"</?(?:div|p|td|th|tr|dd|dt)\b[^>]*>")


def text(fragment: str) -> str:
    """A page fragment as a person reads it: blocks apart, inline tags dropped, entities
    decoded, whitespace collapsed."""
    spaced = re.sub(r"<[^>]+>", "", _BLOCK.sub(" ", fragment))
    return " ".join(html.unescape(spaced).split())


def by_id(page: str, element_id: str) -> str:
    """The text of the element with `element_id` (up to its closing tag of the same name)."""
    found = re.search(rf'<(\w+)[^>]* id="{element_id}"[^>]*>(.*?)</\1>', page, re.S)
    assert found, f"no #{element_id} on the page"
    return text(found.group(2))


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[Admin]:
    async for built in build(tmp_path):
        yield built


@pytest.fixture
async def releaser(admin: Admin) -> Admin:
    """Signed in as `alice`, admin, with checkout 1.0.0 stable and 1.1.0 published beside it."""
    await admin.publish("checkout", "1.0.0")
    await admin.publish("checkout", "1.1.0", canary=True, soak_seconds=0)
    response = await admin.sign_in(admin.token("alice", "admin"))
    assert response.status_code == 303, response.text
    return admin


async def deploy(admin: Admin, **fields: str) -> None:
    """Deploy 1.1.0 as canary through the form, review then confirm."""
    review = await admin.review("checkout", action="canary", version="1.1.0", **fields)
    assert (await admin.confirm(review)).status_code == 303


async def advance(admin: Admin) -> None:
    """What the server's step runner sends once the current step held."""
    await admin.controller.change(
        "checkout",
        releases.AdvanceStep(),
        ChangeMeta(actor=STEP_ACTOR, principal=STEP_ACTOR),
        rpc="AdvanceStep",
        request_id="",
    )


class TestCanaryForm:
    @pytest.mark.parametrize(
        ("fields", "weight", "steps", "step_seconds", "soak_seconds"),
        [
            pytest.param({}, 0, (), 0, 1800, id="nothing-opted-in-hosts-default-soak"),
            pytest.param({"percent": "5"}, 500, (), 0, 1800, id="percent"),
            pytest.param({"percent": "2.55%", "soak": "1h"}, 255, (), 0, 3600, id="decimals"),
            pytest.param({"percent": "0"}, 0, (), 0, 1800, id="zero-is-opted-in-hosts"),
            pytest.param(
                {"steps": "5, 25,50,100", "step_soak": "10m"},
                0,
                (500, 2500, 5000, 10000),
                600,
                0,
                id="steps-soak-is-the-ramp",
            ),
        ],
    )
    def test_the_fields_become_the_clis_command(
        self,
        fields: dict[str, str],
        weight: int,
        steps: tuple[int, ...],
        step_seconds: int,
        soak_seconds: int,
    ) -> None:
        """The form builds the DeployCanary `release canary` builds for the same values."""
        request = from_form(action="canary", version="1.1.0", **fields)
        assert request.command() == releases.DeployCanary(
            "1.1.0", soak_seconds, weight=weight, steps=steps, step_seconds=step_seconds
        )

    @pytest.mark.parametrize(
        ("fields", "field", "message"),
        [
            pytest.param(
                {"percent": "101"},
                "percent",
                "percent '101' is above 100 %; give 0 to 100",
                id="above-100",
            ),
            pytest.param(
                {"percent": "-5"}, "percent", "percent '-5' is not a percentage", id="negative"
            ),
            pytest.param(
                {"percent": "1.234"}, "percent", "with at most two decimals", id="three-decimals"
            ),
            pytest.param(
                {"percent": "five"}, "percent", "percent 'five' is not a percentage", id="words"
            ),
            pytest.param(
                {"steps": "25,5", "step_soak": "10m"},
                "steps",
                "steps 25,5 % do not increase (5% after 25%)",
                id="decreasing-steps",
            ),
            pytest.param(
                {"steps": "0,50", "step_soak": "10m"},
                "steps",
                "steps has a step of 0 %",
                id="zero-step",
            ),
            pytest.param(
                {"steps": "5,,50", "step_soak": "10m"},
                "steps",
                "steps '5,,50' is not a list of percentages",
                id="empty-step",
            ),
            pytest.param(
                {"steps": "5,25"},
                "step_soak",
                "steps and a step soak go together",
                id="steps-without-step-soak",
            ),
            pytest.param(
                {"step_soak": "10m"},
                "steps",
                "steps and a step soak go together",
                id="step-soak-without-steps",
            ),
            pytest.param(
                {"steps": "5,25", "step_soak": "1m", "percent": "5"},
                "percent",
                "leave the percent and the soak empty",
                id="steps-and-percent",
            ),
            pytest.param(
                {"steps": "5,25", "step_soak": "1m", "soak": "30m"},
                "soak",
                "leave the percent and the soak empty",
                id="steps-and-soak",
            ),
            pytest.param(
                {"steps": "5,25", "step_soak": "soon"},
                "step_soak",
                "duration 'soon' is not understood",
                id="step-soak-not-a-duration",
            ),
            pytest.param(
                {"soak": "soon"}, "soak", "duration 'soon' is not understood", id="bad-soak"
            ),
        ],
    )
    def test_a_bad_value_is_refused_naming_its_input(
        self, fields: dict[str, str], field: str, message: str
    ) -> None:
        """Each bad percentage, ramp or combination is one sentence naming the form's input."""
        with pytest.raises(InvalidArgument) as refused:
            from_form(action="canary", version="1.1.0", **fields)
        assert refused.value.field == field
        assert message in refused.value.message
        assert "\n" not in refused.value.message and "--" not in refused.value.message

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            pytest.param("percent", "101", id="above-100"),
            pytest.param("percent", "-5", id="negative"),
            pytest.param("percent", "1.234", id="three-decimals"),
            pytest.param("steps", "25,5", id="decreasing"),
            pytest.param("steps", "5,,50", id="empty-step"),
            pytest.param("steps", "0,50", id="zero-step"),
        ],
    )
    def test_the_cli_gives_the_same_sentence_for_the_same_value(
        self, option: str, value: str
    ) -> None:
        """A value `release canary` refuses is refused by the form in the same words, with
        the input's name where the CLI names its option."""
        extra = ["--step-soak", "10m"] if option == "steps" else []
        args = ["release", "canary", "--feature", "checkout", "--version", "1.1.0"]
        cli = CliRunner().invoke(
            releasectl_main, [*args, f"--{option}", value, *extra], prog_name="releasectl"
        )
        assert cli.exit_code == 2, cli.output
        form_fields = {option: value, **({"step_soak": "10m"} if extra else {})}
        with pytest.raises(InvalidArgument) as refused:
            from_form(action="canary", version="1.1.0", **form_fields)
        assert f"--{refused.value.message}" in " ".join(cli.output.split())

    @pytest.mark.parametrize(
        "fields",
        [
            pytest.param({"percent": "2.55", "soak": "45m"}, id="percent"),
            pytest.param({"percent": "0.01"}, id="smallest"),
            pytest.param({"steps": "0.5,12.25,100", "step_soak": "90s"}, id="steps"),
            pytest.param({}, id="opted-in-hosts"),
        ],
    )
    def test_the_confirmation_sends_back_exactly_the_request(self, fields: dict[str, str]) -> None:
        """The hidden fields of the confirm page read back as the same command."""
        request = from_form(action="canary", version="1.1.0", **fields).confirmed(7)
        again = from_form(**dict(request.hidden_fields()))
        assert again == request and again.command() == request.command()


class TestSetWeightForm:
    def test_it_is_the_set_canary_weight_rpc_for_authorization(self) -> None:
        """The change is recorded as SetCanaryWeight and needs what deploying a canary needs."""
        request = from_form(action="set_weight", percent="25")
        assert (request.rpc, request.command()) == ("SetCanaryWeight", releases.SetWeight(2500))
        assert request.action == from_form(action="canary", version="1.1.0").action
        again = from_form(**dict(request.confirmed(3).hidden_fields()))
        assert again.command() == releases.SetWeight(2500)

    @pytest.mark.parametrize(
        ("percent", "message"),
        [
            pytest.param("", "give the percentage of users the canary serves", id="empty"),
            pytest.param("150", "percent '150' is above 100 %", id="above-100"),
            pytest.param("1/2", "percent '1/2' is not a percentage", id="fraction"),
        ],
    )
    def test_a_bad_percentage_names_the_input(self, percent: str, message: str) -> None:
        """Set weight needs a percentage from 0 to 100, read as `release set-weight` reads it."""
        with pytest.raises(InvalidArgument) as refused:
            from_form(action="set_weight", percent=percent)
        assert (refused.value.field, message in refused.value.message) == ("percent", True)


class TestFormField:
    @pytest.mark.parametrize(
        ("kind", "field", "shown_at"),
        [
            pytest.param("canary", "weight", "percent", id="state-machine-weight"),
            pytest.param("canary", "step_seconds", "step_soak", id="state-machine-step-seconds"),
            pytest.param("canary", "soak_seconds", "soak", id="state-machine-soak"),
            pytest.param("canary", "steps", "steps", id="form-steps"),
            pytest.param("set_weight", "weight", "percent", id="set-weight"),
            pytest.param("promote", "reason", "reason", id="common-input"),
            pytest.param("promote", "percent", None, id="not-this-forms-input"),
            pytest.param("canary", "request_id", None, id="hidden-field"),
            pytest.param("nonsense", "percent", None, id="unknown-form"),
        ],
    )
    def test_an_invalid_field_is_shown_at_its_input(
        self, kind: str, field: str, shown_at: str | None
    ) -> None:
        """Field names of the form and of the state machine lead to the form's input."""
        assert form_field(kind, InvalidArgument("bad", field=field)) == shown_at

    def test_other_refusals_are_not_about_an_input(self) -> None:
        """A rule that forbids the change now is shown at the top, not beside a field."""
        assert form_field("canary", FailedPrecondition("not now")) is None


class TestShowingTheWeight:
    async def test_a_canary_for_opted_in_hosts_says_so_everywhere(self, releaser: Admin) -> None:
        """Weight 0: the list, the state panel and the versions table say opted-in hosts only."""
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert by_id(page, "state-canary") == "1.1.0 — opted-in hosts only"
        assert "Step plan" not in page
        versions = by_id(page, "versions-table")
        assert "1.1.0 canary opted-in hosts only" in versions
        listing = (await releaser.client.get("/_admin")).text
        assert '<td class="canary">1.1.0 — opted-in hosts only</td>' in listing

    async def test_a_percentage_canary_shows_its_share_of_users(self, releaser: Admin) -> None:
        """A 25 % canary reads '1.1.0 — 25% of users' in the list, state and versions."""
        await deploy(releaser, percent="25")
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert by_id(page, "state-canary") == "1.1.0 — 25% of users"
        assert "1.1.0 canary 25% of users" in by_id(page, "versions-table")
        assert by_id(page, "set_weight-now") == "Canary 1.1.0 — 25% of users."
        listing = (await releaser.client.get("/_admin")).text
        assert '<td class="canary">1.1.0 — 25% of users</td>' in listing

    async def test_a_step_plan_shows_its_step_and_when_the_next_is_due(
        self, releaser: Admin
    ) -> None:
        """Step 1 of 4 at 5 %, the next step's weight and when it is due, ticking down."""
        await deploy(releaser, steps="5,25,50,100", step_soak="10m")
        releaser.clock.now = T0 + timedelta(minutes=4)
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert by_id(page, "state-canary") == "1.1.0 — 5% of users"
        assert by_id(page, "state-plan") == "step 1 of 4 of 5,25,50,100 % (each 10m)"
        assert by_id(page, "state-next-step") == (
            "next 25% of users in 6m (at 2030-01-01 12:10:00Z)"
        )
        assert 'data-step-due="2030-01-01T12:10:00Z"' in page
        assert "setting a weight stops its step plan" in by_id(page, "set_weight-now")
        listing = (await releaser.client.get("/_admin")).text
        cell = re.search(r'<td class="canary">(.*?)</td>', listing, re.S)
        assert cell and text(cell.group(1)) == (
            "1.1.0 — 5% of users step 1 of 4 of 5,25,50,100 % (each 10m); next 25% of users in 6m"
        )

    async def test_the_last_step_of_100_says_it_promotes(self, releaser: Admin) -> None:
        """On the last step, of 100 %, the page says the canary is promoted when it has held."""
        await deploy(releaser, steps="50,100", step_soak="10m")
        releaser.clock.now = T0 + timedelta(minutes=10)
        await advance(releaser)
        releaser.clock.now = T0 + timedelta(minutes=15)
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert by_id(page, "state-canary") == "1.1.0 — 100% of users"
        assert by_id(page, "state-plan") == "step 2 of 2 of 50,100 % (each 10m)"
        assert by_id(page, "state-next-step") == (
            "promotes to stable in 5m (at 2030-01-01 12:20:00Z)"
        )

    async def test_a_ramp_ending_below_100_holds_its_last_step(self, releaser: Admin) -> None:
        """A ramp to 50 % stays there: no countdown, and the page says it waits for a promote."""
        await deploy(releaser, steps="5,50", step_soak="10m")
        releaser.clock.now = T0 + timedelta(minutes=10)
        await advance(releaser)
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert by_id(page, "state-next-step") == "last step: holds at 50% until promoted"
        assert "data-step-due" not in page

    async def test_a_due_step_that_has_not_moved_yet_says_due_now(self, releaser: Admin) -> None:
        """Past its time, before the server's next check, the step reads 'due now'."""
        await deploy(releaser, steps="5,50", step_soak="10m")
        releaser.clock.now = T0 + timedelta(minutes=11)
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert (
            by_id(page, "state-next-step") == "next 50% of users due now (at 2030-01-01 12:10:00Z)"
        )


class TestDeployingAndSettingTheWeight:
    async def test_deploy_with_a_percentage_reviews_then_applies(self, releaser: Admin) -> None:
        """The review names the share; confirming deploys it at that weight."""
        review = await releaser.review(
            "checkout", action="canary", version="1.1.0", percent="5", soak="1h"
        )
        assert by_id(review.text, "headline") == (
            "Deploy checkout 1.1.0 as canary to 5% of users with a 1h soak "
            "(canary now 1.1.0 — opted-in hosts only, stable stays 1.0.0)"
        )
        assert releaser.state("checkout").canary.weight == 0  # type: ignore[union-attr]
        done = await releaser.confirm(review)
        canary = releaser.state("checkout").canary
        assert canary is not None and (canary.weight, canary.soak_seconds) == (500, 3600)
        page = (await releaser.client.get(done.headers["location"])).text
        assert by_id(page, "done") == (
            "Deploy canary 1.1.0 applied as sequence 3: soak 1h; 5% of users; "
            "canary 1.1.0 redeployed; soak restarted"
        )

    async def test_deploy_with_steps_shows_the_plan_it_starts(self, releaser: Admin) -> None:
        """The review of a ramp names its steps and step soak, and the plan it starts."""
        review = await releaser.review(
            "checkout", action="canary", version="1.1.0", steps="5,25,50,100", step_soak="10m"
        )
        assert by_id(review.text, "headline") == (
            "Deploy checkout 1.1.0 as canary in steps of 5,25,50,100 %, each held 10m, then "
            "promoted (canary now 1.1.0 — opted-in hosts only, stable stays 1.0.0)"
        )
        rows = dict(
            (name, (before, after))
            for name, before, after in re.findall(
                r'<th scope="row">([\w ]+)</th><td>([^<]*)</td><td>([^<]*)</td>', review.text
            )
        )
        assert rows["Canary"] == (
            "1.1.0 — opted-in hosts only (soak 0s)",
            "1.1.0 — 5% of users (soak 40m)",
        )
        assert rows["Step plan"] == ("none", "step 1 of 4 of 5,25,50,100 % (each 10m)")
        await releaser.confirm(review)
        canary = releaser.state("checkout").canary
        assert canary is not None
        assert (canary.steps, canary.step_seconds) == ((500, 2500, 5000, 10000), 600)

    async def test_set_weight_reviews_then_applies_and_history_says_so(
        self, releaser: Admin
    ) -> None:
        """From 5 % to 25 %: the review, the change, and the history row's sentence."""
        await deploy(releaser, percent="5")
        review = await releaser.review(
            "checkout", action="set_weight", percent="25", reason="errors flat", ticket="REL-9"
        )
        assert by_id(review.text, "headline") == (
            "Serve canary 1.1.0 of checkout to 25% of users (now 5% of users)"
        )
        assert (
            "<td>1.1.0 — 5% of users (soak 30m)</td><td>1.1.0 — 25% of users (soak 30m)</td>"
            in (review.text)
        )
        assert releaser.state("checkout").canary.weight == 500  # type: ignore[union-attr]
        done = await releaser.confirm(review)
        assert releaser.state("checkout").canary.weight == 2500  # type: ignore[union-attr]
        page = (await releaser.client.get(done.headers["location"])).text
        assert by_id(page, "done") == (
            "Set weight 1.1.0 applied as sequence 4: canary 1.1.0 weight 5% -> 25%"
        )
        assert by_id(page, "state-canary") == "1.1.0 — 25% of users"
        first = re.search(r"<tbody>\s*<tr>(.*?)</tr>", page.split('id="history-table"')[1], re.S)
        assert first and text(first.group(1)) == (
            "4 2030-01-01 12:00:00Z set weight 1.1.0 canary 1.1.0 weight 5% -> 25% "
            "1.0.0 1.1.0 alice errors flat REL-9"
        )

    async def test_setting_a_weight_stops_a_step_plan(self, releaser: Admin) -> None:
        """Taking over a ramp: the review says the plan stops, and after it no plan is shown."""
        await deploy(releaser, steps="5,25,50,100", step_soak="10m")
        review = await releaser.review("checkout", action="set_weight", percent="10")
        assert by_id(review.text, "headline") == (
            "Serve canary 1.1.0 of checkout to 10% of users (now 5% of users), stopping its "
            "step plan 5,25,50,100 %"
        )
        assert re.search(
            r'<tr class="changed"><th scope="row">Step plan</th>'
            r"<td>step 1 of 4 of 5,25,50,100 % \(each 10m\)</td><td>none</td></tr>",
            review.text,
        )
        await releaser.confirm(review)
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert by_id(page, "state-canary") == "1.1.0 — 10% of users"
        assert 'id="state-plan"' not in page
        assert "step plan 5,25,50,100 % stopped" in page

    async def test_the_weight_it_already_has_is_nothing_to_confirm(self, releaser: Admin) -> None:
        """Setting the weight the canary serves says so and offers no Confirm button."""
        await deploy(releaser, percent="25")
        review = await releaser.review("checkout", action="set_weight", percent="25")
        assert review.status_code == 200
        assert by_id(review.text, "headline") == (
            "Nothing to change: canary 1.1.0 already serves 25% of users"
        )
        assert "/apply" not in review.text and "Confirm" not in review.text

    async def test_an_advanced_step_reads_as_a_sentence_in_the_history(
        self, releaser: Admin
    ) -> None:
        """The server's advance_step row names the step, by releasecontrol-steps."""
        await deploy(releaser, steps="5,25,50,100", step_soak="10m")
        releaser.clock.now = T0 + timedelta(minutes=10)
        await advance(releaser)
        page = (await releaser.client.get("/_admin/features/checkout")).text
        assert by_id(page, "state-plan") == "step 2 of 4 of 5,25,50,100 % (each 10m)"
        first = re.search(r"<tbody>\s*<tr>(.*?)</tr>", page.split('id="history-table"')[1], re.S)
        assert first and text(first.group(1)) == (
            "4 2030-01-01 12:10:00Z advance step 1.1.0 canary 1.1.0 weight 5% -> 25%: "
            "step 2 of 4 of 5,25,50,100 % 1.0.0 1.1.0 releasecontrol-steps — —"
        )

    async def test_without_a_canary_there_is_no_weight_to_set(self, admin: Admin) -> None:
        """No canary: the form says to deploy one; a crafted request is the state machine's 409."""
        await admin.publish("checkout", "1.0.0")
        await admin.sign_in(admin.token("alice", "admin"))
        page = (await admin.client.get("/_admin/features/checkout")).text
        form = page.split('id="set_weight-h"')[1].split("</form>")[0]
        assert "No canary is running: deploy one first." in form and "<input" not in form
        refused = await admin.review("checkout", action="set_weight", percent="5")
        assert refused.status_code == 409
        assert "no canary is running" in refused.text
        assert admin.state("checkout").sequence == 1

    async def test_a_viewer_may_not_set_the_weight(self, admin: Admin) -> None:
        """Set weight needs the role deploying a canary needs: authorize()'s sentence."""
        await admin.publish("checkout", "1.0.0")
        await admin.publish("checkout", "1.1.0", canary=True)
        await admin.sign_in(admin.token("auditor", "viewer"))
        page = (await admin.client.get("/_admin/features/checkout")).text
        note = by_id(page, "set_weight-note")
        assert "auditor (roles: viewer; features: *) may not deploy_canary" in note
        refused = await admin.review("checkout", action="set_weight", percent="5")
        assert refused.status_code == 403 and "may not deploy_canary" in refused.text
        assert admin.state("checkout").canary.weight == 0  # type: ignore[union-attr]

    async def test_a_set_weight_is_one_log_line_with_the_percentage(
        self, releaser: Admin, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The log line of a weight change names the running canary and the new percentage."""
        caplog.set_level(logging.INFO, logger="releasecontrol_server.admin.app")
        await deploy(releaser, percent="5")
        await releaser.confirm(
            await releaser.review("checkout", action="set_weight", percent="7.5")
        )
        lines = [r.getMessage() for r in caplog.records if "step=apply" in r.getMessage()]
        assert lines[-1] == (
            "admin action=set_weight principal=alice feature=checkout result=ok step=apply "
            "version=1.1.0 sequence=4 actor=alice percent=7.5"
        )


class TestBadValuesOnThePage:
    async def test_a_bad_percentage_is_shown_beside_its_input_and_nothing_changes(
        self, releaser: Admin
    ) -> None:
        """The message sits under the Percent input, which is marked invalid and keeps the
        typed value; the alert links to it; the feature is untouched."""
        before = releaser.state("checkout")
        page = await releaser.review(
            "checkout", action="canary", version="1.1.0", percent="150", reason="ramp"
        )
        assert page.status_code == 400
        assert by_id(page.text, "canary-percent-error") == (
            "percent '150' is above 100 %; give 0 to 100"
        )
        field = re.search(r'<input id="canary-percent"[^>]*>', page.text)
        assert field
        assert 'value="150"' in field.group(0) and 'aria-invalid="true"' in field.group(0)
        assert "canary-percent-error" in field.group(0)  # aria-describedby
        assert '<a href="#canary-percent">Go to the field</a>' in page.text
        assert 'value="ramp"' in page.text
        # Only the canary form's input: set weight's Percent is not marked.
        assert page.text.count('aria-invalid="true"') == 1
        assert releaser.state("checkout") == before

    async def test_a_rule_of_the_state_machine_is_shown_at_the_form_input(
        self, releaser: Admin
    ) -> None:
        """A step soak of 0 passes the form but not the state machine, whose step_seconds
        error is shown under Step soak."""
        before = releaser.state("checkout")
        page = await releaser.review(
            "checkout", action="canary", version="1.1.0", steps="5,100", step_soak="0s"
        )
        assert page.status_code == 400
        assert by_id(page.text, "canary-step_soak-error").startswith(
            "steps need a step soak of at least 1s"
        )
        assert releaser.state("checkout") == before

    async def test_a_bad_weight_on_the_set_weight_form_is_shown_there(
        self, releaser: Admin
    ) -> None:
        """The set-weight form's own Percent input carries its error; nothing changes."""
        before = releaser.state("checkout")
        page = await releaser.review("checkout", action="set_weight", percent="abc")
        assert page.status_code == 400
        assert by_id(page.text, "set_weight-percent-error").startswith(
            "percent 'abc' is not a percentage"
        )
        assert 'id="canary-percent-error"' not in page.text
        assert releaser.state("checkout") == before

    async def test_a_crafted_confirmation_is_checked_again(self, releaser: Admin) -> None:
        """An apply that skips the review meets the same parsing: 400, nothing changes."""
        before = releaser.state("checkout")
        page = await releaser.post(
            "/_admin/features/checkout/apply",
            {"action": "canary", "version": "1.1.0", "steps": "50,25", "step_soak": "1m"},
        )
        assert page.status_code == 400
        assert by_id(page.text, "canary-steps-error").startswith("steps 50,25 % do not increase")
        assert releaser.state("checkout") == before


def test_every_kind_has_a_form_on_the_page() -> None:
    """Each Kind the actions offer has its form (heading id) in the feature template."""
    template = (
        Path(__file__).resolve().parents[2]
        / "server/releasecontrol_server/admin/templates/feature.html"
    ).read_text()
    for kind in Kind:
        assert f'id="{kind.value}-h"' in template, kind
