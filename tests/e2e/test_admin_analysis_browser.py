"""The feature page's analysis, soak by exposure and reach, end to end: a real server taking
beacons (its own, with beacon keys), counts POSTed to its beacon listener as hosts send
them, and Debian's Chromium watching the page.

A canary deployed from the form with Min loads shows its verdict and exposure as counts
arrive; when the canary fails, the server rolls it back and the open page shows the
rollback, the version on no channel, and the reports still coming from it.
"""

from __future__ import annotations

import json
import secrets
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from browser_kit import ARTIFACTS, TIMEOUT_MS
from playwright.sync_api import BrowserContext, expect
from test_admin_browser import Site, sign_in, state

from releasecontrol_server.auth.tokens import create_token
from releasectl.launcher import LocalServer

pytestmark = pytest.mark.e2e

KEY = "pk_e2e_shop"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    home = tmp_path_factory.mktemp("e2e-analysis") / "home"
    store = home / "auth" / "tokens.json"
    tokens = {
        "alice": create_token(store, "alice", ["admin"]),
        "ci-bot": create_token(store, "ci-bot", ["releaser", "approver"]),
    }
    server = LocalServer(
        home,
        env={
            "RELEASECONTROL_AUTH_MODE": "rpc-token",
            "RELEASECONTROL_BEACON_KEYS": KEY,
            "RELEASECONTROL_ANALYSIS_INTERVAL_SECONDS": "0.5",
        },
    ).start()
    try:
        yield Site(server, tokens, home.parent)
    finally:
        server.stop()


def send(site: Site, *rows: tuple[str, int, int]) -> None:
    """One batch of (version, loads, entry errors) rows for shop, as a host sends it."""
    body: dict[str, Any] = {
        "v": 1,
        "key": KEY,
        "batch": secrets.token_urlsafe(16),
        "sent_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "counts": [
            {"feature": "shop", "version": v, "loads": loads, "entry_errors": errors}
            for v, loads, errors in rows
        ],
    }
    request = urllib.request.Request(
        site.server.endpoints["beacon_url"] + "/v1/beacons",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"content-type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 202


def test_verdict_exposure_and_reach_follow_the_beacons(site: Site, context: BrowserContext) -> None:
    """Waiting, then running with 600 of 1,000 loads and half the reports on each version;
    then a failing canary rolled back by the server, seen on the open page."""
    site.publish("shop", "1.0.0")
    site.publish("shop", "1.1.0", "--channel", "canary")
    page = context.new_page()
    sign_in(page, site, "alice")
    page.goto(f"{site.url}/features/shop")

    # A 50 % canary that needs 1,000 loads, from the form.
    canary = page.locator("form", has=page.get_by_role("heading", name="Deploy canary"))
    canary.get_by_label("Version").select_option("1.1.0")
    canary.get_by_label("Percent").fill("50")
    canary.get_by_label("Min loads").fill("1000")
    canary.get_by_role("button", name="Review canary…").click()
    expect(page.locator("#headline")).to_contain_text("with a 30m and 1,000 loads soak")
    page.get_by_role("button", name="Confirm").click()
    expect(page.locator("#done")).to_contain_text("Deploy canary 1.1.0 applied")
    expect(page.locator("#verdict")).to_have_text("waiting too few loads on a side to judge yet")
    expect(page.locator("#exposure")).to_have_text(
        "Soak by exposure: 0 of 1,000 loads (1,000 to go)"
    )
    expect(page.locator("#reach-none")).to_have_text(
        "No host reported shop in the last 10 minutes."
    )
    page.wait_for_selector('body[data-live="connected"]', state="attached")
    page.evaluate("window.__notReloaded = true")

    # Hosts report: the open page follows (it re-reads every 5 s; counts are kept every 1 s).
    send(site, ("1.1.0", 600, 0), ("1.0.0", 600, 0))
    expect(page.locator("#exposure")).to_have_text(
        "Soak by exposure: 600 of 1,000 loads (400 to go)", timeout=TIMEOUT_MS
    )
    expect(page.locator("#state-exposure")).to_have_text("and 600 of 1,000 loads")
    expect(page.locator("#verdict-kind")).to_have_text("running")
    expect(page.locator("#verdict-reason")).to_have_text(
        "Failure rate 0% vs 0% over 1,200 loads; no decision yet."
    )
    expect(page.locator('#reach-table tr[data-version="1.1.0"] td.share')).to_have_text("50%")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "admin-analysis-running.png"), full_page=True)

    # The canary fails: the server rolls it back by itself; the page shows it happen.
    send(site, ("1.1.0", 5000, 500), ("1.0.0", 50000, 50))
    expect(page.locator("#state-canary")).to_have_text("none", timeout=TIMEOUT_MS)
    first = page.locator("#history-table tbody tr").first
    expect(first).to_contain_text("releasecontrol-analysis")
    expect(first).to_contain_text(
        "failure rate 8.9% vs 0.1% over 56,200 loads (canary: 500 entry errors)"
    )
    expect(page.locator("#verdict-none")).to_have_text("No canary is running: nothing to judge.")
    expect(page.locator('#reach-table tr[data-version="1.1.0"]')).to_contain_text("no channel")
    assert state(page)["stable"] == "1.0.0"
    assert page.evaluate("window.__notReloaded") is True
    page.screenshot(path=str(ARTIFACTS / "admin-analysis.png"), full_page=True)
