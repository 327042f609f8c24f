"""The admin UI end to end: the real server process, `releasectl` processes, and Debian's
Chromium driven by Playwright.

One server (rpc-token auth, features matching `pay*` under four eyes) serves the
whole module; each test uses its own feature and its own browser context (cookies),
so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_kit import ARTIFACTS, TIMEOUT_MS
from playwright.sync_api import Browser, BrowserContext, Page, expect

from releasecontrol.manifest import manifest_path
from releasecontrol_server.auth.tokens import create_token
from releasectl.launcher import LocalServer

pytestmark = pytest.mark.e2e

RELEASECTL = [sys.executable, "-c", "from releasectl import main; main()"]


class Site:
    """The running server, its tokens, and `releasectl` against it."""

    def __init__(self, server: LocalServer, tokens: dict[str, str], work: Path) -> None:
        self.server = server
        self.tokens = tokens
        self.work = work
        self.url: str = server.endpoints["admin_url"]
        self.origin = self.url.removesuffix("/_admin")

    def releasectl(
        self, *args: str, token: str = "ci-bot", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `releasectl ARGS` as a user would, with a token from the store; must succeed
        unless `check` is False."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELEASECONTROL_")}
        env["RELEASECONTROL_HOME"] = str(self.server.home)
        env["RELEASECONTROL_TOKEN"] = self.tokens[token]
        done = subprocess.run(
            [*RELEASECTL, *args], cwd=self.work, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 or not check, f"releasectl {' '.join(args)}: {done.stderr}"
        return done

    def publish(self, feature_id: str, version: str, *extra: str) -> None:
        """Write features/<id>/manifest.json and its files, then `releasectl publish` it."""
        self._write_feature(feature_id, version)
        self.releasectl("publish", "--feature", feature_id, *extra)

    def _write_feature(self, feature_id: str, version: str) -> None:
        folder = self.work / "features" / feature_id
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.js").write_text(f"export const version = '{version}';\n")
        manifest = {
            "id": feature_id,
            "version": version,
            "entry": "index.js",
            "routes": [f"/{feature_id}"],
            "compat": {"host": "^2.0.0"},
            "assets": [{"path": "index.js"}],
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))

    def publish_unchecked(self, feature_id: str, version: str) -> subprocess.CompletedProcess[str]:
        """`publish` that may be refused (a feature under four eyes waits for an approver)."""
        self._write_feature(feature_id, version)
        return self.releasectl("publish", "--feature", feature_id, check=False)

    def status(self, feature_id: str) -> dict[str, Any]:
        """What `releasectl release status --output json` says about one feature."""
        out = json.loads(self.releasectl("release", "status", "--output", "json").stdout)
        features = out["features"] if isinstance(out, dict) else out
        return next(f for f in features if f["feature_id"] == feature_id)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("e2e") / "home"
    store = home / "auth" / "tokens.json"
    # The token store must exist before an rpc-token server starts.
    tokens = {
        "alice": create_token(store, "alice", ["admin"]),
        "victor": create_token(store, "victor", ["viewer"]),
        "ci-bot": create_token(store, "ci-bot", ["releaser", "approver"]),
        "bob": create_token(store, "bob", ["approver"]),
        "carol": create_token(store, "carol", ["approver"]),
    }
    server = LocalServer(
        home,
        env={
            "RELEASECONTROL_AUTH_MODE": "rpc-token",
            "RELEASECONTROL_LOG_LEVEL": "INFO",
            "RELEASECONTROL_REQUIRE_APPROVAL": "pay*",
        },
    ).start()
    try:
        yield Site(server, tokens, home.parent)
    finally:
        server.stop()


def sign_in(page: Page, site: Site, who: str) -> None:
    page.goto(f"{site.url}/signin")
    page.get_by_label("Token").fill(site.tokens[who])
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator(".who strong")).to_have_text(who)


def state(page: Page) -> dict[str, str]:
    """The feature page's state panel: stable, canary (with its weight), sequence."""
    return {
        "stable": page.locator("#state-stable").inner_text(),
        "canary": page.locator("#state-canary").inner_text(),
        "sequence": page.locator("#state-sequence").inner_text(),
    }


def test_sign_in_session_cookie_and_sign_out(site: Site, context: BrowserContext) -> None:
    """Signed out, pages lead to sign-in; a token signs in with a strict HttpOnly cookie."""
    page = context.new_page()
    page.goto(f"{site.url}/features/checkout")
    expect(page).to_have_url(f"{site.url}/signin?next=%2F_admin%2Ffeatures%2Fcheckout")
    page.get_by_label("Token").fill("rc_wrong")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not known to this server")

    sign_in(page, site, "alice")
    cookie = next(c for c in context.cookies() if c["name"] == "rc_admin_session")
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/_admin"
    assert page.evaluate("document.cookie") == ""  # not readable from script

    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{site.url}/signin")
    page.goto(site.url)
    expect(page).to_have_url(f"{site.url}/signin?next=%2F_admin")

    # The session ended on the server: the cookie copied before signing out is worthless.
    context.add_cookies([cookie])
    page.goto(site.url)
    expect(page).to_have_url(f"{site.url}/signin?next=%2F_admin")


def test_canary_refused_promote_skip_soak_rollback_and_hot_refresh(
    site: Site, context: BrowserContext
) -> None:
    """The operator's round trip: everything the issue lists, through forms and confirm pages."""
    site.publish("checkout", "1.0.0")
    site.publish("checkout", "1.1.0", "--channel", "canary")
    page = context.new_page()
    sign_in(page, site, "alice")

    # The list shows what the CLI published.
    row = page.locator('tr[data-feature="checkout"]')
    expect(row.locator("td.stable")).to_have_text("1.0.0")
    expect(row.locator("td.canary")).to_have_text("1.1.0 — opted-in hosts only")
    row.get_by_role("link", name="checkout").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("checkout")

    # Deploy the canary again with a one-hour soak, confirming what will change.
    form = page.locator("form", has=page.get_by_role("heading", name="Deploy canary"))
    form.get_by_label("Version").select_option("1.1.0")
    form.get_by_label("Soak", exact=True).fill("1h")
    form.get_by_label("Reason", exact=True).fill("redeploy <b>with</b> a longer soak")
    form.get_by_role("button", name="Review canary…").click()
    expect(page.locator("#headline")).to_have_text(
        "Deploy checkout 1.1.0 as canary to opted-in hosts only with a 1h soak "
        "(canary now 1.1.0 — opted-in hosts only, stable stays 1.0.0)"
    )
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#done")).to_contain_text("Deploy canary 1.1.0 applied as sequence 3")
    expect(page.locator("#history-table")).to_contain_text("redeploy <b>with</b> a longer soak")

    # Promote before the soak is over: the state machine's refusal, nothing changed.
    promote = page.locator("form", has=page.get_by_role("heading", name="Promote canary"))
    promote.get_by_role("button", name="Review promote…").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("FAILED_PRECONDITION")
    expect(alert).to_contain_text("canary 1.1.0 of feature 'checkout' is still soaking")
    expect(alert).to_contain_text("skip the rest of the soak, giving a reason")
    assert state(page) == {
        "stable": "1.0.0",
        "canary": "1.1.0 — opted-in hosts only",
        "sequence": "3",
    }

    # Promote skipping the soak, with a reason and a ticket.
    promote = page.locator("form", has=page.get_by_role("heading", name="Promote canary"))
    promote.get_by_label("Skip the rest of the soak").check()
    promote.get_by_label("Reason", exact=True).fill("hotfix for INC-42")
    promote.get_by_label("Ticket").fill("INC-42")
    promote.get_by_role("button", name="Review promote…").click()
    expect(page.locator("#headline")).to_contain_text(
        "Promote checkout 1.1.0 to stable (stable now 1.0.0), skipping the soak with"
    )
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#done")).to_contain_text("Promote 1.1.0 applied as sequence 4")
    assert state(page) == {"stable": "1.1.0", "canary": "none", "sequence": "4"}

    # Roll back to the earlier stable version.
    rollback = page.locator("form", has=page.get_by_role("heading", name="Roll back stable"))
    rollback.get_by_label("Version").select_option("1.0.0")
    rollback.get_by_label("Reason", exact=True).fill("error rate up")
    rollback.get_by_role("button", name="Review rollback…").click()
    expect(page.locator("#headline")).to_have_text("Roll back checkout to 1.0.0 (stable now 1.1.0)")
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#done")).to_contain_text("Rollback 1.0.0 applied as sequence 5")
    cli = site.status("checkout")
    assert (cli["stable"], cli["sequence"]) == ("1.0.0", 5)

    history = page.locator("#history-table tbody tr")
    expect(history).to_have_count(5)
    expect(history.nth(0)).to_contain_text("rollback 1.0.0")
    expect(history.nth(0)).to_contain_text("alice")
    expect(history.nth(1)).to_contain_text("hotfix for INC-42")
    expect(history.nth(1)).to_contain_text("INC-42")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-feature.png"), full_page=True)

    # Hot refresh: a manifest lost on the origin is restored, and the page says so.
    lost = site.server.origin_dir / manifest_path("checkout", "1.1.0")
    recorded = lost.read_bytes()
    lost.unlink()
    page.get_by_role("button", name="Hot refresh checkout's manifests").click()
    summary = page.locator("#refresh-summary")
    expect(summary).to_contain_text("Checked 2 manifests of 1 feature")
    expect(summary).to_contain_text("1 restored")
    expect(page.locator("#checks-table tr.changed")).to_contain_text("1.1.0")
    assert lost.read_bytes() == recorded


def test_pages_update_when_the_cli_changes_a_release(site: Site, context: BrowserContext) -> None:
    """With the list and a feature page open, a CLI change shows up in both without a reload."""
    site.publish("search", "2.0.0")
    site.publish("search", "2.1.0", "--channel", "canary")
    listing = context.new_page()
    sign_in(listing, site, "alice")
    feature = context.new_page()
    feature.goto(f"{site.url}/features/search")
    for page in (listing, feature):
        page.evaluate("window.__notReloaded = true")
        # The server says hello once it has subscribed the page to changes.
        page.wait_for_selector('body[data-live="connected"]', state="attached")
    # Something typed into a form is kept when the form is re-read.
    promote = feature.locator("#promote-form")
    promote.get_by_label("Reason", exact=True).fill("typed before the CLI")

    site.releasectl(
        "release", "promote", "--feature", "search", "--version", "2.1.0",
        "--skip-soak", "--reason", "from the CLI",
    )  # fmt: skip

    expect(feature.locator("#state-stable")).to_have_text("2.1.0")
    expect(feature.locator("#state-canary")).to_have_text("none")
    expect(feature.locator("#live-status")).to_contain_text("search: promote 2.1.0 by ci-bot")
    expect(feature.locator("#history-table")).to_contain_text("from the CLI")
    expect(listing.locator('tr[data-feature="search"] td.stable')).to_have_text("2.1.0")
    # The forms follow: no canary is left to set a weight for; the typed reason stays.
    expect(feature.locator("#set_weight-form")).to_contain_text("No canary is running")
    expect(feature.locator("#rollback-form").get_by_label("Version")).to_have_value("2.0.0")
    expect(promote.get_by_label("Reason", exact=True)).to_have_value("typed before the CLI")
    for page in (listing, feature):
        assert page.evaluate("window.__notReloaded") is True


def test_a_viewer_sees_the_refusal_and_nothing_changes(site: Site, context: BrowserContext) -> None:
    """A viewer may look, but a promote is refused with authorize()'s message."""
    site.publish("profile", "1.0.0")
    site.publish("profile", "1.1.0", "--channel", "canary", "--soak", "0s")
    page = context.new_page()
    sign_in(page, site, "victor")
    page.goto(f"{site.url}/features/profile")
    promote = page.locator("form", has=page.get_by_role("heading", name="Promote canary"))
    expect(promote.locator(".note")).to_contain_text("victor (roles: viewer")
    promote.get_by_role("button", name="Review promote…").click()
    alert = page.get_by_role("alert")
    expect(alert).to_contain_text("PERMISSION_DENIED")
    expect(alert).to_contain_text(
        "victor (roles: viewer; features: *) may not promote feature 'profile': "
        "that needs the approver or admin role"
    )
    assert site.status("profile")["stable"] == "1.0.0"


def test_a_post_without_the_csrf_token_is_refused(site: Site, context: BrowserContext) -> None:
    """A signed-in browser's POST lacking the form's CSRF token gets 403 and changes nothing."""
    site.publish("cart", "1.0.0")
    site.publish("cart", "1.1.0", "--channel", "canary", "--soak", "0s")
    page = context.new_page()
    sign_in(page, site, "alice")
    response = context.request.post(
        f"{site.url}/features/cart/apply",
        form={"action": "promote", "version": "1.1.0"},
        headers={"Origin": site.origin},
    )
    assert response.status == 403
    assert "security token" in response.text()
    assert site.status("cart")["stable"] == "1.0.0"


def test_a_percentage_canary_from_the_forms(site: Site, context: BrowserContext) -> None:
    """Deploy a 5 % canary, then set it to 25 %: each shown on the page, in another open
    page without a reload, and in the CLI's status; a bad percentage changes nothing."""
    site.publish("ramp", "1.0.0")
    site.publish("ramp", "1.1.0", "--channel", "canary")
    listing = context.new_page()
    sign_in(listing, site, "alice")
    listing.wait_for_selector('body[data-live="connected"]', state="attached")
    listing.evaluate("window.__notReloaded = true")
    page = context.new_page()
    page.goto(f"{site.url}/features/ramp")
    assert state(page) == {
        "stable": "1.0.0",
        "canary": "1.1.0 — opted-in hosts only",
        "sequence": "2",
    }

    # A percentage above 100: the sentence under the Percent input, nothing changed.
    canary = page.locator("form", has=page.get_by_role("heading", name="Deploy canary"))
    canary.get_by_label("Version").select_option("1.1.0")
    canary.get_by_label("Percent").fill("150")
    canary.get_by_role("button", name="Review canary…").click()
    canary = page.locator("form", has=page.get_by_role("heading", name="Deploy canary"))
    percent = canary.get_by_label("Percent")
    expect(percent).to_have_attribute("aria-invalid", "true")
    expect(percent).to_have_value("150")
    expect(percent).to_have_accessible_description(
        re.compile(r"^percent '150' is above 100 %; give 0 to 100")
    )
    expect(canary.locator(".field-error")).to_have_text(
        "percent '150' is above 100 %; give 0 to 100"
    )
    assert state(page)["sequence"] == "2"
    assert site.status("ramp")["canary"]["weight_percent"] == 0

    # 5 %: reviewed, confirmed, shown.
    percent.fill("5")
    canary.get_by_label("Reason", exact=True).fill("first users")
    canary.get_by_role("button", name="Review canary…").click()
    expect(page.locator("#headline")).to_contain_text("Deploy ramp 1.1.0 as canary to 5% of users")
    expect(page.locator("#changes-table")).to_contain_text("1.1.0 — 5% of users (soak 30m)")
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#done")).to_contain_text("Deploy canary 1.1.0 applied as sequence 3")
    expect(page.locator("#state-canary")).to_have_text("1.1.0 — 5% of users")
    row = listing.locator('tr[data-feature="ramp"] td.canary')
    expect(row).to_have_text("1.1.0 — 5% of users")
    assert site.status("ramp")["canary"]["weight_percent"] == 5

    # Set the weight to 25 %.
    weight = page.locator("form", has=page.get_by_role("heading", name="Set canary weight"))
    expect(weight).to_contain_text("Canary 1.1.0 — 5% of users.")
    weight.get_by_label("Percent").fill("25")
    weight.get_by_label("Reason", exact=True).fill("errors flat")
    weight.get_by_role("button", name="Review weight…").click()
    expect(page.locator("#headline")).to_have_text(
        "Serve canary 1.1.0 of ramp to 25% of users (now 5% of users)"
    )
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#done")).to_have_text(
        "Set weight 1.1.0 applied as sequence 4: canary 1.1.0 weight 5% -> 25%"
    )
    assert state(page) == {"stable": "1.0.0", "canary": "1.1.0 — 25% of users", "sequence": "4"}
    first = page.locator("#history-table tbody tr").first
    expect(first).to_contain_text("set weight 1.1.0")
    expect(first).to_contain_text("errors flat")
    expect(row).to_have_text("1.1.0 — 25% of users")
    expect(listing.locator("#live-status")).to_contain_text(
        "ramp: set weight 1.1.0 by alice (sequence 4); canary 1.1.0 — 25% of users"
    )
    assert listing.evaluate("window.__notReloaded") is True
    assert site.status("ramp")["canary"]["weight_percent"] == 25


def test_a_step_ramp_moves_on_the_open_page(site: Site, context: BrowserContext) -> None:
    """A ramp started from the CLI: the open page shows step 1, then, when the server moves
    it, step 2 and the history row of releasecontrol-steps, without a reload."""
    site.publish("stairs", "1.0.0")
    site.publish("stairs", "1.1.0", "--channel", "canary")
    page = context.new_page()
    sign_in(page, site, "alice")
    page.goto(f"{site.url}/features/stairs")
    page.wait_for_selector('body[data-live="connected"]', state="attached")
    page.evaluate("window.__notReloaded = true")

    site.releasectl(
        "release", "canary", "--feature", "stairs", "--version", "1.1.0",
        "--steps", "5,50", "--step-soak", "3s",
    )  # fmt: skip

    expect(page.locator("#state-plan")).to_have_text("step 1 of 2 of 5,50 % (each 3s)")
    expect(page.locator("#state-canary")).to_have_text("1.1.0 — 5% of users")
    expect(page.locator("#state-next-step")).to_contain_text("next 50% of users")
    expect(page.locator("#set_weight-now")).to_have_text(
        "Canary 1.1.0 — 5% of users; setting a weight stops its step plan."
    )
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-canary-steps.png"), full_page=True)
    # The server moves the step once it held 3s (it looks every second).
    expect(page.locator("#state-plan")).to_have_text("step 2 of 2 of 5,50 % (each 3s)")
    expect(page.locator("#state-canary")).to_have_text("1.1.0 — 50% of users")
    expect(page.locator("#state-next-step")).to_have_text("last step: holds at 50% until promoted")
    first = page.locator("#history-table tbody tr").first
    expect(first).to_contain_text("advance step 1.1.0")
    expect(first).to_contain_text("canary 1.1.0 weight 5% -> 50%: step 2 of 2 of 5,50 %")
    expect(first).to_contain_text("releasecontrol-steps")
    expect(page.locator("#live-status")).to_contain_text(
        "stairs: advance step 1.1.0 by releasecontrol-steps"
    )
    assert page.evaluate("window.__notReloaded") is True


def test_four_eyes_a_promote_waits_and_another_approver_approves(
    site: Site, browser: Browser
) -> None:
    """On a feature under four eyes, bob's promote from the UI waits as a request the page
    names and links; bob's own Approve is refused; carol, signed in in another browser,
    approves it there, and stable changes (also on bob's open page, without a reload)."""
    # Setup from the CLI: the first publish of pay-checkout waits too; alice approves it.
    first = site.publish_unchecked("pay-checkout", "1.0.0")
    assert "needs a second approver" in " ".join(first.stderr.split())
    pending = json.loads(site.releasectl("release", "approvals", "--output", "json").stdout)
    site.releasectl("release", "approve", "--id", str(pending[0]["id"]), token="alice")
    site.publish("pay-checkout", "1.1.0", "--channel", "canary", "--soak", "0s")

    bobs = browser.new_context(viewport={"width": 1280, "height": 900})
    carols = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        for ctx in (bobs, carols):
            ctx.set_default_timeout(TIMEOUT_MS)
        page = bobs.new_page()
        sign_in(page, site, "bob")
        page.goto(f"{site.url}/features/pay-checkout")
        expect(page.locator("#four-eyes")).to_contain_text("pay-checkout is under four eyes")
        expect(page.locator("#analysis-off")).to_have_text(
            "No analysis: the control plane takes no beacons (set beacon_keys); canaries are "
            "judged by time alone."
        )

        # bob promotes: the confirmation says it asks for a second approver.
        promote = page.locator("form", has=page.get_by_role("heading", name="Promote canary"))
        expect(promote.locator("#promote-approval")).to_contain_text("Needs a second approver")
        promote.get_by_label("Reason", exact=True).fill("fix for INC-7")
        promote.get_by_label("Ticket").fill("INC-7")
        promote.get_by_role("button", name="Review promote…").click()
        expect(page.locator("#needs-approval")).to_contain_text(
            "This needs a second approver: promoting 1.1.0 to stable of pay-checkout"
        )
        page.get_by_role("button", name="Confirm and ask for approval").click()

        # Not an error: the page names the waiting request and links to it.
        waiting = page.locator("#waiting")
        expect(waiting).to_contain_text(
            re.compile(r"Promoting 1\.1\.0 to stable waits for a second approver: request \d+")
        )
        expect(page.get_by_role("alert")).to_have_count(0)
        approval_id = page.locator("#waiting-link").inner_text().removeprefix("request ")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "admin-waiting-for-approval.png"))
        assert state(page)["stable"] == "1.0.0"
        assert site.status("pay-checkout")["stable"] == "1.0.0"

        # bob's own Approve is refused with the four-eyes sentence; nothing changes.
        page.locator("#waiting-link").click()
        expect(page.locator("#approval-state")).to_contain_text("pending, expires in")
        expect(page.locator("#approve-note")).to_have_text(
            "You asked for this: another principal with the approver role approves it."
        )
        page.get_by_role("button", name=f"Approve request {approval_id}…").click()
        alert = page.get_by_role("alert")
        expect(alert).to_contain_text("PERMISSION_DENIED")
        expect(alert).to_contain_text(
            f"bob asked for request {approval_id} and cannot approve it too: four eyes means "
            "another principal with the approver role approves"
        )
        assert site.status("pay-checkout")["stable"] == "1.0.0"

        # bob keeps the feature page open while carol approves in her browser.
        watching = bobs.new_page()
        watching.goto(f"{site.url}/features/pay-checkout")
        watching.wait_for_selector('body[data-live="connected"]', state="attached")
        watching.evaluate("window.__notReloaded = true")
        expect(watching.locator("#pending-approvals")).to_contain_text(
            f"request {approval_id}: promoting 1.1.0 to stable, asked by bob (fix for INC-7)"
        )

        other = carols.new_page()
        sign_in(other, site, "carol")
        other.get_by_role("navigation", name="Main").get_by_role("link", name="Approvals").click()
        row = other.locator(f'tr[data-approval="{approval_id}"]')
        expect(row).to_contain_text("pay-checkout")
        expect(row).to_contain_text("promoting 1.1.0 to stable")
        expect(row).to_contain_text("bob")
        expect(row).to_contain_text("fix for INC-7")
        expect(row).to_contain_text("INC-7")
        expect(row.locator("td.state")).to_contain_text(re.compile(r"pending\s*expires in 2[34]h"))
        other.screenshot(path=str(ARTIFACTS / "admin-approvals.png"), full_page=True)
        row.get_by_role("button", name=f"Approve request {approval_id}…").click()
        expect(other.locator("#headline")).to_have_text(
            f"Approve request {approval_id} of bob: promoting 1.1.0 to stable of pay-checkout "
            "(stable now 1.0.0)"
        )
        expect(other.locator("#changes-table tr.changed").first).to_contain_text("1.1.0")
        other.get_by_role("button", name="Confirm").click()
        expect(other.locator("#done")).to_contain_text("Promote 1.1.0 applied as sequence")
        expect(other.locator("#done")).to_contain_text("approved by carol")
        expect(other.locator("#state-stable")).to_have_text("1.1.0")
        assert site.status("pay-checkout")["stable"] == "1.1.0"

        # bob's open page follows: stable 1.1.0, nothing waits, the history names both.
        expect(watching.locator("#state-stable")).to_have_text("1.1.0")
        expect(watching.locator("#pending-approvals")).to_have_text("No request waits.")
        first_row = watching.locator("#history-table tbody tr").first
        expect(first_row).to_contain_text("promote 1.1.0")
        expect(first_row).to_contain_text("approved by carol")
        expect(first_row).to_contain_text("fix for INC-7")
        assert watching.evaluate("window.__notReloaded") is True
        other.goto(f"{site.url}/approvals/{approval_id}")
        expect(other.locator("#approval-state")).to_have_text("approved by carol")
    finally:
        bobs.close()
        carols.close()
