"""Debian's Chromium driven by Playwright, for the browser tests (never `playwright install`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from browser_kit import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS
from playwright.sync_api import Browser, BrowserContext, expect, sync_playwright

# Assertions wait as long as actions do: pages follow the server through live events and
# polls, which a loaded CI machine can take more than Playwright's 5 s default to deliver.
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        # CI installs Chromium (.ci/run), so there a missing browser is a failure, not a skip.
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing although CI should have installed it")
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    """A fresh browser context (its own cookies) per test."""
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(TIMEOUT_MS)
    yield ctx
    ctx.close()
