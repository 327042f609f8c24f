"""The browser host end to end: `releasectl dev-host`'s page in Debian's Chromium, driven by
Playwright, loading features with @releasecontrol/host straight from a real dev server's origin.

One dev server and one dev-host process serve the module (the page's own refresh
interval is an hour, so each test decides when the page refreshes, with its
button); each test uses its own feature and a fresh browser context (its own
localStorage, so its own high-water marks). A tampered artifact, a rolled-back
remote-index.json and one signed by an unknown key each leave the page on the
last good version, with the refusal shown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_kit import ARTIFACTS, TIMEOUT_MS
from playwright.sync_api import Browser, BrowserContext, Page, expect

from releasecontrol.index import REMOTE_INDEX_PATH, Envelope, sign
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol.trust import SigningKey
from releasectl.launcher import LocalServer

pytestmark = pytest.mark.e2e

RELEASECTL = [sys.executable, "-c", "from releasectl import main; main()"]


class Site:
    """A dev server, a dev-host process reading its origin, and `releasectl` against them."""

    def __init__(self, server: LocalServer, work: Path) -> None:
        self.server = server
        self.work = work
        self.url = ""
        self.process: subprocess.Popen[str] | None = None

    def env(self) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("RELEASECONTROL_", "FEATURE_"))
        }
        env["RELEASECONTROL_HOME"] = str(self.server.home)
        return env

    def start_dev_host(self) -> None:
        self.process = subprocess.Popen(
            [
                *RELEASECTL,
                "dev-host",
                "--listen",
                "127.0.0.1:0",
                "--interval",
                "1h",
                "--output",
                "json",
            ],
            cwd=self.work,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        text = ""
        for line in self.process.stdout:
            text += line
            try:
                self.url = json.loads(text)["url"]
                return
            except ValueError:
                continue
        raise AssertionError(
            f"dev-host did not start: {self.process.stderr.read() if self.process.stderr else ''}"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.communicate(timeout=10)  # waits, and closes both pipes

    def publish(self, feature_id: str, version: str) -> None:
        folder = self.work / "features" / feature_id
        folder.mkdir(parents=True, exist_ok=True)
        # The feature id in the bytes: artifacts are content-addressed, and two features
        # with the same entry bytes would share one file (and one browser cache entry).
        (folder / "index.js").write_text(
            f"import {{ label }} from './lib/label.js';\n// {feature_id}\n"
            f"export const version = label('{version}');\n"
        )
        (folder / "lib").mkdir(exist_ok=True)
        (folder / "lib" / "label.js").write_text("export const label = (v) => `v${v}`;\n")
        manifest = {
            "id": feature_id,
            "version": version,
            "entry": "index.js",
            "routes": [f"/{feature_id}"],
            "compat": {"host": "^2.0.0"},
            "assets": [{"path": "index.js"}, {"path": "lib/label.js"}],
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        done = subprocess.run(
            [*RELEASECTL, "publish", "--feature", feature_id],
            cwd=self.work,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr

    def entry_artifact(self, feature_id: str, version: str) -> Path:
        manifest = json.loads(
            (self.server.origin_dir / manifest_path(feature_id, version)).read_bytes()
        )
        entry = next(a for a in manifest["assets"] if a["path"] == "index.js")
        return self.server.origin_dir / artifact_path(entry["sha256"], "index.js")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    work = tmp_path_factory.mktemp("dev-host")
    server = LocalServer(work / "home", env={"RELEASECONTROL_LOG_LEVEL": "INFO"}).start()
    running = Site(server, work)
    try:
        running.publish("checkout", "1.0.0")  # so that the dev host has something at start
        running.start_dev_host()
        yield running
    finally:
        running.stop()
        server.stop()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    context: BrowserContext = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    opened = context.new_page()
    opened.on("pageerror", lambda error: errors.append(str(error)))
    opened.goto(site.url)
    expect(opened.locator("body")).to_have_attribute("data-refreshes", "1")
    yield opened
    context.close()
    assert not errors, errors


def refresh(page: Page) -> None:
    """Click "Refresh now" and wait until the page rendered that refresh."""
    before = int(page.locator("body").get_attribute("data-refreshes") or "0")
    page.get_by_role("button", name="Refresh now").click()
    expect(page.locator("body")).to_have_attribute("data-refreshes", str(before + 1))


def row(page: Page, feature_id: str) -> dict[str, str]:
    cells = page.locator(f'tr[data-feature="{feature_id}"]')
    return {
        name: cells.locator(f"td.{name}").inner_text()
        for name in ("version", "channel", "sequence", "keys", "ran")
    }


def refusal(page: Page, key: str) -> dict[str, str]:
    item = page.locator(f'li[data-refused="{key}"]')
    return {"code": item.locator(".code").inner_text(), "file": item.locator(".file").inner_text()}


def test_the_page_loads_and_runs_each_feature_verified_in_the_browser(
    page: Page, site: Site
) -> None:
    """checkout 1.0.0: version, channel, sequence and signing key shown, and its entry ran in
    the browser, its relative import of lib/label.js resolved through the import map."""
    keyid = SigningKey.load(site.server.home / "keys" / "signing-key.pem").keyid
    shown = row(page, "checkout")
    assert shown == {
        "version": "1.0.0",
        "channel": "stable",
        "sequence": "1",
        "keys": keyid[:8] + "…",
        "ran": 'version="v1.0.0"',
    }
    expect(page.locator("#refused-none")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dev-host.png"), full_page=True)


def test_a_new_version_is_followed_and_announced(page: Page, site: Site) -> None:
    """Published after the page loaded: a refresh loads and runs it, and logs the change."""
    site.publish("search", "1.0.0")
    refresh(page)
    site.publish("search", "1.1.0")
    refresh(page)
    assert row(page, "search")["version"] == "1.1.0"
    assert row(page, "search")["ran"] == 'version="v1.1.0"'
    expect(page.locator("#events")).to_contain_text("search: 1.0.0 → 1.1.0")


def test_a_tampered_artifact_leaves_the_last_good_version(page: Page, site: Site) -> None:
    """cart 1.1.0's entry changed on the origin after publishing: refused (`hash`), 1.0.0 stays
    and keeps running."""
    site.publish("cart", "1.0.0")
    refresh(page)
    assert row(page, "cart")["ran"] == 'version="v1.0.0"'
    site.publish("cart", "1.1.0")
    entry = site.entry_artifact("cart", "1.1.0")
    entry.write_bytes(entry.read_bytes().replace(b"export", b"EXPORT", 1))
    refresh(page)
    assert row(page, "cart")["version"] == "1.0.0"
    assert refusal(page, "cart") == {"code": "hash", "file": f"artifacts/{entry.name}"}


def test_a_rolled_back_index_is_refused(page: Page, site: Site) -> None:
    """An older remote-index.json put back on the origin: refused (`rollback`); features stay."""
    top = site.server.origin_dir / REMOTE_INDEX_PATH
    site.publish("news", "1.0.0")
    old = top.read_bytes()
    site.publish("news", "1.1.0")
    refresh(page)
    assert row(page, "news")["version"] == "1.1.0"
    current = top.read_bytes()
    try:
        top.write_bytes(old)
        refresh(page)
        assert refusal(page, REMOTE_INDEX_PATH) == {"code": "rollback", "file": REMOTE_INDEX_PATH}
        assert row(page, "news")["version"] == "1.1.0"
    finally:
        top.write_bytes(current)


def test_an_index_signed_by_an_unknown_key_is_refused(page: Page, site: Site) -> None:
    """The current top level re-signed by a key no root lists: refused (`signature`)."""
    top = site.server.origin_dir / REMOTE_INDEX_PATH
    current = top.read_bytes()
    body = dict(Envelope.from_bytes(current).signed)
    body["sequence"] += 1000
    try:
        top.write_bytes(sign(body, [SigningKey.generate()]).to_bytes())
        refresh(page)
        assert refusal(page, REMOTE_INDEX_PATH) == {"code": "signature", "file": REMOTE_INDEX_PATH}
        assert row(page, "checkout")["version"] == "1.0.0"
    finally:
        top.write_bytes(current)
