"""Four eyes in the admin UI: a change that needs a second approver, the Approvals page, and
approving from it.

On a feature under `require_approval` a promote confirmed in the UI is kept as a request
and the page names it ("waits for a second approver: request 2") instead of a refusal;
another principal with the approver role reviews and approves it, and the change is
applied. The requester, a principal without the approver role and a stale review are
refused with the domain's sentence, and nothing changes. The app runs in process over a
real controller (see test_admin.py).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from test_admin import BASE, Admin, build
from test_admin_weights import by_id, text

from releasecontrol.errors import ApprovalRequired
from releasecontrol_server import releases
from releasecontrol_server.approvals import ApprovalPolicy
from releasecontrol_server.releases import ChangeMeta

PAY = "pay-checkout"
POLICY = ApprovalPolicy(("pay*",), ttl_seconds=3600)


@pytest.fixture
async def four_eyes(tmp_path: Path) -> AsyncIterator[Admin]:
    """pay-checkout under four eyes: 1.0.0 stable (its first publish approved by carol, as
    request 1) and 1.1.0 in canary with no soak left; checkout unprotected beside it."""
    async for admin in build(tmp_path, approvals=POLICY):
        with pytest.raises(ApprovalRequired) as first:
            await admin.publish(PAY, "1.0.0")
        await admin.controller.approve(first.value.approval_id, "carol")
        await admin.publish(PAY, "1.1.0", canary=True, soak_seconds=0)
        await admin.publish("checkout", "1.0.0")
        await admin.publish("checkout", "1.1.0", canary=True, soak_seconds=0)
        yield admin


async def sign_in(admin: Admin, principal: str, *roles: str, scopes: list[str] | None = None):  # type: ignore[no-untyped-def]
    response = await admin.sign_in(admin.token(principal, *roles, scopes=scopes))
    assert response.status_code == 303, response.text


async def ask_to_promote(admin: Admin) -> httpx.Response:
    """bob (approver) promotes pay-checkout 1.1.0 from the feature page: review, confirm."""
    review = await admin.review(
        PAY, action="promote", version="1.1.0", reason="fix for INC-7", ticket="INC-7"
    )
    return await admin.confirm(review)


@pytest.fixture
async def asked(four_eyes: Admin) -> Admin:
    """bob asked to promote pay-checkout 1.1.0 from the UI: request 2 waits."""
    await sign_in(four_eyes, "bob", "approver")
    done = await ask_to_promote(four_eyes)
    assert done.headers["location"] == f"/_admin/features/{PAY}?waiting=2"
    return four_eyes


async def review_approval(admin: Admin, approval_id: int = 2) -> httpx.Response:
    """Press Approve on the request's page (its form, with the page's CSRF token)."""
    path = f"/_admin/approvals/{approval_id}"
    return await admin.post(f"{path}/review", {}, csrf=await admin.csrf(path))


class TestAskingFromTheUI:
    async def test_the_review_says_a_second_approver_is_needed(self, four_eyes: Admin) -> None:
        """On a protected feature the confirmation says it asks for approval and changes
        nothing yet, and does not pin the sequence the kept request would go stale on."""
        await sign_in(four_eyes, "bob", "approver")
        page = (await four_eyes.client.get(f"/_admin/features/{PAY}")).text
        assert by_id(page, "promote-approval").startswith("Needs a second approver")
        review = await four_eyes.review(PAY, action="promote", version="1.1.0")
        assert review.status_code == 200
        assert by_id(review.text, "needs-approval") == (
            "This needs a second approver: promoting 1.1.0 to stable of pay-checkout is under "
            "four eyes (require_approval). Confirming asks for it and changes nothing yet; "
            "another principal with the approver role reviews and approves the request."
        )
        assert "Confirm and ask for approval" in review.text
        assert 'name="expected_sequence"' not in review.text

    async def test_an_unprotected_feature_confirms_as_before(self, four_eyes: Admin) -> None:
        """checkout matches no pattern: no approval note, the sequence is pinned."""
        await sign_in(four_eyes, "bob", "approver")
        review = await four_eyes.review("checkout", action="promote", version="1.1.0")
        assert 'id="needs-approval"' not in review.text
        assert '<input type="hidden" name="expected_sequence" value="2">' in review.text
        assert (
            'id="promote-approval"'
            not in (await four_eyes.client.get("/_admin/features/checkout")).text
        )

    async def test_confirming_keeps_a_request_and_the_page_names_it(
        self, four_eyes: Admin, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The confirmed promote is not applied: the feature page says it waits for a second
        approver and links to request 2; the feature is unchanged; one log line says so."""
        caplog.set_level(logging.INFO, logger="releasecontrol_server.admin.app")
        await sign_in(four_eyes, "bob", "approver")
        done = await ask_to_promote(four_eyes)
        assert done.status_code == 303
        assert done.headers["location"] == f"/_admin/features/{PAY}?waiting=2"
        assert (four_eyes.state(PAY).stable, four_eyes.state(PAY).sequence) == ("1.0.0", 2)
        page = (await four_eyes.client.get(done.headers["location"])).text
        assert by_id(page, "waiting") == (
            "Promoting 1.1.0 to stable waits for a second approver: request 2 (expires in 1h). "
            "Nothing has changed yet: another principal with the approver role approves it on "
            "the Approvals page (or runs releasectl release approve --id 2)."
        )
        assert '<a href="/_admin/approvals/2" id="waiting-link">request 2</a>' in page
        assert 'id="error"' not in page
        assert by_id(page, "pending-approvals") == (
            "request 2: promoting 1.1.0 to stable, asked by bob (fix for INC-7); expires in 1h"
        )
        assert by_id(page, "state-stable") == "1.0.0"
        line = next(r.getMessage() for r in caplog.records if "waits_for_approval" in r.message)
        assert line == (
            "admin action=promote principal=bob feature=pay-checkout result=waits_for_approval "
            "step=apply approval=2 actor=bob"
        )

    async def test_confirming_twice_is_one_request(self, asked: Admin) -> None:
        """The same promote asked again by the same principal is the waiting request."""
        again = await ask_to_promote(asked)
        assert again.headers["location"] == f"/_admin/features/{PAY}?waiting=2"
        assert len(await asked.controller.approval_requests(PAY)) == 2  # 1 approved, 2 pending

    async def test_the_banner_follows_the_request_and_only_on_its_feature(
        self, asked: Admin
    ) -> None:
        """Once approved, ?waiting= says by whom; another feature's page ignores the id."""
        await asked.controller.approve(2, "carol")
        page = (await asked.client.get(f"/_admin/features/{PAY}?waiting=2")).text
        assert by_id(page, "waiting") == (
            "Promoting 1.1.0 to stable: request 2 was approved by carol."
        )
        other = (await asked.client.get("/_admin/features/checkout?waiting=2")).text
        assert 'id="waiting"' not in other

    async def test_an_expired_request_says_so_on_the_feature_page(self, asked: Admin) -> None:
        """After its hour the banner says the request expired and nobody approved it."""
        asked.clock.now += timedelta(hours=1)
        page = (await asked.client.get(f"/_admin/features/{PAY}?waiting=2")).text
        assert "request 2 expired before anyone approved it; ask again" in by_id(page, "waiting")
        assert by_id(page, "pending-approvals") == "No request waits."


class TestAStepPlanUnderFourEyes:
    async def test_its_last_step_holds_instead_of_promoting(self, four_eyes: Admin) -> None:
        """A ramp ending at 100 % never promotes a protected feature by itself: the page says
        it holds for an approved promote, with no countdown to a promotion that will not
        come; the list says the same."""
        await sign_in(four_eyes, "alice", "admin")
        review = await four_eyes.review(
            PAY, action="canary", version="1.1.0", steps="50,100", step_soak="10m"
        )
        await four_eyes.confirm(review)
        page = (await four_eyes.client.get(f"/_admin/features/{PAY}")).text
        assert by_id(page, "state-next-step").startswith("next 100% of users in 10m")
        four_eyes.clock.now += timedelta(minutes=10)
        await four_eyes.controller.change(
            PAY,
            releases.AdvanceStep(),
            ChangeMeta(actor="releasecontrol-steps", principal="releasecontrol-steps"),
            rpc="AdvanceStep",
            request_id="",
        )
        page = (await four_eyes.client.get(f"/_admin/features/{PAY}")).text
        assert by_id(page, "state-canary") == "1.1.0 — 100% of users"
        assert by_id(page, "state-next-step") == (
            "last step: holds at 100% until promoted and a second approver approves"
        )
        assert "data-step-due" not in page
        listing = (await four_eyes.client.get("/_admin")).text
        assert "holds at 100% until promoted and a second approver approves" in listing
        unprotected = (await four_eyes.client.get("/_admin/features/checkout")).text
        assert 'id="four-eyes"' not in unprotected


class TestApprovalsPage:
    async def test_pending_requests_first_then_the_rest_marked(self, asked: Admin) -> None:
        """Request 2 (pending) with what waits, who asked, reason, ticket, expiry and an
        Approve button; request 1 below it, approved by carol."""
        await sign_in(asked, "carol", "approver")
        page = (await asked.client.get("/_admin/approvals")).text
        assert by_id(page, "approvals-summary").startswith("1 pending · 2 requests shown")
        rows = re.findall(r'<tr data-approval="(\d+)" class="(\w+)">(.*?)</tr>', page, re.S)
        assert [(n, state) for n, state, _ in rows] == [("2", "pending"), ("1", "approved")]
        assert text(rows[0][2]) == (
            "2 pay-checkout promoting 1.1.0 to stable bob 2030-01-01 12:00:00Z fix for INC-7 "
            "INC-7 pending expires in 1h Approve…"
        )
        assert 'data-expires="2030-01-01T13:00:00Z"' in rows[0][2]
        assert 'action="/_admin/approvals/2/review"' in rows[0][2]
        assert 'name="csrf_token"' in rows[0][2]
        assert text(rows[1][2]) == (
            "1 pay-checkout publishing 1.0.0 straight to stable ci-bot 2030-01-01 12:00:00Z — — "
            "approved by carol, 2030-01-01 12:00:00Z"
        )
        assert "/review" not in rows[1][2]
        assert "pay*" in by_id(page, "policy")

    async def test_an_expired_request_is_marked_and_has_no_button(self, asked: Admin) -> None:
        """Past its expiry a request reads 'expired' and cannot be approved from the list."""
        asked.clock.now += timedelta(hours=2)
        await sign_in(asked, "carol", "approver")
        page = (await asked.client.get("/_admin/approvals")).text
        row = re.search(r'<tr data-approval="2" class="expired">(.*?)</tr>', page, re.S)
        assert row and "expired" in text(row.group(1)) and "/review" not in row.group(1)
        assert by_id(page, "approvals-summary").startswith("0 pending")

    async def test_the_requester_and_a_viewer_see_why_they_may_not(self, asked: Admin) -> None:
        """bob asked: a note says another approver approves; a viewer sees authorize()'s
        sentence under the button."""
        page = (await asked.client.get("/_admin/approvals")).text
        assert by_id(page, "approval-2-note") == (
            "You asked for this: another principal with the approver role approves it."
        )
        await sign_in(asked, "victor", "viewer")
        page = (await asked.client.get("/_admin/approvals")).text
        assert by_id(page, "approval-2-note").startswith(
            "victor (roles: viewer; features: *) may not approve feature 'pay-checkout': that "
            "needs the approver or admin role"
        )

    async def test_requests_of_features_out_of_scope_are_not_listed(self, asked: Admin) -> None:
        """A principal scoped to checkout* does not see pay-checkout's requests."""
        await sign_in(asked, "dana", "approver", scopes=["checkout*"])
        page = (await asked.client.get("/_admin/approvals")).text
        assert 'data-approval="' not in page
        assert "No approval requests." in page

    async def test_filtered_by_feature(self, asked: Admin) -> None:
        """?feature= lists that feature's requests; the feature page links there."""
        feature_page = (await asked.client.get(f"/_admin/features/{PAY}")).text
        assert f'href="/_admin/approvals?feature={PAY}"' in feature_page
        page = (await asked.client.get("/_admin/approvals?feature=checkout")).text
        assert "No approval requests for checkout." in page

    async def test_the_request_page_shows_it_whole(self, asked: Admin) -> None:
        """/_admin/approvals/2: what waits, of which feature, who asked, and the Approve form."""
        await sign_in(asked, "carol", "approver")
        page = (await asked.client.get("/_admin/approvals/2")).text
        assert by_id(page, "approval-what") == "Promoting 1.1.0 to stable of pay-checkout"
        assert by_id(page, "approval-state") == "pending, expires in 1h"
        assert by_id(page, "approval-requested-by") == "bob"
        assert by_id(page, "approval-reason") == "fix for INC-7"
        assert 'action="/_admin/approvals/2/review"' in page
        assert (await asked.client.get("/_admin/approvals/99")).status_code == 404
        bad = await asked.client.get("/_admin/approvals/abc")
        assert bad.status_code == 404 and "there is no approval request 'abc'" in text(bad.text)

    async def test_every_page_links_to_approvals(self, asked: Admin) -> None:
        """The top navigation has Approvals beside Features."""
        page = (await asked.client.get("/_admin")).text
        assert '<a href="/_admin/approvals">Approvals</a>' in page


class TestApproving:
    async def test_another_approver_reviews_then_applies_the_change(
        self, asked: Admin, caplog: pytest.LogCaptureFixture
    ) -> None:
        """carol's review shows what changes; confirming applies bob's promote, its record
        naming carol; the request reads approved."""
        caplog.set_level(logging.INFO, logger="releasecontrol_server.admin.app")
        await sign_in(asked, "carol", "approver")
        review = await review_approval(asked)
        assert review.status_code == 200, review.text
        assert by_id(review.text, "headline") == (
            "Approve request 2 of bob: promoting 1.1.0 to stable of pay-checkout (stable now 1.0.0)"
        )
        assert re.search(
            r'<tr class="changed"><th scope="row">Stable</th><td>1.0.0</td><td>1.1.0</td>',
            review.text,
        )
        assert asked.state(PAY).stable == "1.0.0"  # nothing yet
        done = await asked.confirm(review)
        assert done.status_code == 303
        assert done.headers["location"].startswith(f"/_admin/features/{PAY}?done=")
        assert (asked.state(PAY).stable, asked.state(PAY).canary) == ("1.1.0", None)
        page = (await asked.client.get(done.headers["location"])).text
        assert by_id(page, "done").startswith("Promote 1.1.0 applied as sequence 3:")
        assert by_id(page, "done").endswith("; approved by carol")
        first = re.search(r"<tbody>\s*<tr>(.*?)</tr>", page.split('id="history-table"')[1], re.S)
        assert first and "bob fix for INC-7 INC-7" in text(first.group(1))
        listed = (await asked.client.get("/_admin/approvals/2")).text
        assert by_id(listed, "approval-state") == "approved by carol"
        assert "/review" not in listed
        line = next(r.getMessage() for r in caplog.records if "action=approve" in r.message)
        assert line == (
            "admin action=approve principal=carol feature=pay-checkout result=ok step=apply "
            "approval=2 requested_by=bob version=1.1.0 sequence=3"
        )

    async def test_the_requester_is_refused_and_nothing_changes(self, asked: Admin) -> None:
        """bob pressing Approve on his own request gets the four-eyes sentence, 403, on the
        request's page; the request still waits."""
        refused = await review_approval(asked)
        assert refused.status_code == 403
        assert by_id(refused.text, "error") == (
            "Refused PERMISSION_DENIED bob asked for request 2 and cannot approve it too: four "
            "eyes means another principal with the approver role approves"
        )
        assert by_id(refused.text, "approval-state") == "pending, expires in 1h"
        crafted = await asked.post("/_admin/approvals/2/apply", {})
        assert crafted.status_code == 403 and "cannot approve it too" in crafted.text
        assert asked.state(PAY).stable == "1.0.0"
        assert (await asked.controller.approval_request(2)).approved_by == ""  # type: ignore[union-attr]

    @pytest.mark.parametrize(
        ("roles", "scopes", "message"),
        [
            pytest.param(
                ("viewer",),
                None,
                "victor (roles: viewer; features: *) may not approve features: that needs the "
                "approver or admin role",
                id="viewer",
            ),
            pytest.param(
                ("releaser",),
                None,
                "victor (roles: releaser; features: *) may not approve features: that needs the "
                "approver or admin role",
                id="releaser",
            ),
            pytest.param(
                ("approver",),
                ["checkout*"],
                "victor (roles: approver; features: checkout*) may not approve feature "
                "'pay-checkout': its roles apply only to features matching checkout*",
                id="approver-of-other-features",
            ),
        ],
    )
    async def test_without_the_approver_role_for_the_feature_it_is_refused(
        self, asked: Admin, roles: tuple[str, ...], scopes: list[str] | None, message: str
    ) -> None:
        """authorize() decides, with its sentence, at the review and at the apply."""
        await sign_in(asked, "victor", *roles, scopes=scopes)
        for step in ("review", "apply"):
            refused = await asked.post(f"/_admin/approvals/2/{step}", {})
            assert refused.status_code == 403, step
            assert message in text(refused.text), step
        assert asked.state(PAY).stable == "1.0.0"

    async def test_an_expired_request_cannot_be_approved(self, asked: Admin) -> None:
        """Past its expiry the review is refused naming when it expired."""
        asked.clock.now += timedelta(hours=1, seconds=1)
        await sign_in(asked, "carol", "approver")
        refused = await asked.post("/_admin/approvals/2/review", {})
        assert refused.status_code == 409
        assert "approval request 2 expired at 2030-01-01T13:00:00Z" in by_id(refused.text, "error")

    async def test_an_approved_request_is_not_applied_twice(self, asked: Admin) -> None:
        """A second confirmation (another tab) is refused: already approved by carol."""
        await sign_in(asked, "carol", "approver")
        review = await review_approval(asked)
        assert (await asked.confirm(review)).status_code == 303
        sequence = asked.state(PAY).sequence
        again = await asked.confirm(review)
        assert again.status_code == 409
        assert "approval request 2 was already approved by carol" in again.text
        assert asked.state(PAY).sequence == sequence

    async def test_a_change_since_the_review_is_refused(self, asked: Admin) -> None:
        """If the feature changed between review and confirm, nothing is applied and the
        request still waits."""
        await sign_in(asked, "carol", "approver")
        review = await review_approval(asked)
        await asked.publish(PAY, "1.2.0", canary=True, soak_seconds=0)
        refused = await asked.confirm(review)
        assert refused.status_code == 409
        assert by_id(refused.text, "error") == (
            "Refused ABORTED feature 'pay-checkout' changed since you reviewed request 2 "
            "(sequence 2 then, 3 now); nothing was applied and the request still waits: "
            "review it again"
        )
        assert asked.state(PAY).stable == "1.0.0"

    async def test_a_change_the_state_machine_refuses_now_is_shown_at_the_review(
        self, asked: Admin
    ) -> None:
        """With another canary deployed since, promoting 1.1.0 is refused at the review,
        in the state machine's words; the request still waits."""
        await asked.publish(PAY, "1.2.0", canary=True, soak_seconds=0)
        await sign_in(asked, "carol", "approver")
        refused = await review_approval(asked)
        assert refused.status_code == 409
        assert "FAILED_PRECONDITION" in by_id(refused.text, "error")
        assert "1.1.0" in by_id(refused.text, "error")
        assert by_id(refused.text, "approval-state") == "pending, expires in 1h"

    async def test_a_publish_straight_to_stable_of_a_new_feature(self, four_eyes: Admin) -> None:
        """A never-published feature's first version waits too; approving it shows
        'none' to the version and publishes it."""
        with pytest.raises(ApprovalRequired) as asked:
            await four_eyes.publish("pay-refunds", "1.0.0")
        await sign_in(four_eyes, "carol", "approver")
        review = await review_approval(four_eyes, asked.value.approval_id)
        assert by_id(review.text, "headline") == (
            f"Approve request {asked.value.approval_id} of ci-bot: publishing 1.0.0 straight "
            "to stable of pay-refunds (stable now none)"
        )
        assert "<td>none</td><td>1.0.0</td>" in review.text
        await four_eyes.confirm(review)
        assert four_eyes.state("pay-refunds").stable == "1.0.0"

    async def test_a_cross_site_or_token_less_approve_is_refused(self, asked: Admin) -> None:
        """The form pipeline's Origin and CSRF checks hold for Approve like any change."""
        await sign_in(asked, "carol", "approver")
        csrf = await asked.csrf("/_admin/approvals/2")
        cross = await asked.client.post(
            "/_admin/approvals/2/apply",
            data={"csrf_token": csrf},
            headers={"origin": "https://evil.example"},
        )
        assert cross.status_code == 403 and "Origin/Referer" in cross.text
        tokenless = await asked.client.post(
            "/_admin/approvals/2/apply", data={}, headers={"origin": BASE}
        )
        assert tokenless.status_code == 403 and "security token" in tokenless.text
        assert asked.state(PAY).stable == "1.0.0"
