"""browser: a cold load of one feature in Chromium with @releasecontrol/host vs no verification.

The origin is the real server's HTTP origin (a separate process, loopback),
seeded with N features of two versions. A bench page on another loopback port
loads one feature, in a fresh browser context (empty cache) each run:

- verified: `new FeatureHost({features: [id]})`, `refresh()` (remote-index.json,
  roots/1.json, the shard, releases.json, the manifest and both assets, each
  checked), then `load(id)` (import map with integrity, modulepreload, import);
- baseline: the same files fetched with no check at all (remote-index.json,
  roots/1.json, the shard, releases.json, the manifest), then `import()` of the
  entry, which fetches it.

Timed as a user waits: from the navigation's start (performance.now() in the
page) to the entry's module namespace, the page's own loading included (the
verified page imports the library as an app imports its bundle). Runs
alternate; the medians are compared. Target: verified ≤
1.3 times the baseline. Also recorded: the library as a browser loads it (the minified
bundle, gzipped), target ≤ 17 KB (15 KB until per-user bucketing and beacons joined it, issue 14).
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench._report import Outcome
from bench._seed import feature_name, version_name
from bench._server import BenchServer
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol.shards import DEFAULT_BITS, bin_of, shard_path
from releasecontrol_server.origin.http import OriginHttpServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
BUNDLE = (
    Path(__file__).resolve().parents[1] / "clients/releasecontrol/static/releasecontrol-host.min.js"
)
RATIO = 1.3
BUNDLE_KB = 17.0
FULL = {"features": 1_000, "runs": 15}
QUICK = {"features": 20, "runs": 3}

_VERIFIED = """<!doctype html><meta charset="utf-8"><script type="module">
import { FeatureHost, memoryState } from "/releasecontrol-host.min.js";
const config = %(config)s;
try {
  const host = new FeatureHost({ indexUrl: config.indexUrl, trust: config.trust,
    allowDevKeys: true, features: [config.feature], storage: memoryState() });
  const report = await host.refresh();
  if (!report.ok) throw new Error(JSON.stringify(report.refused));
  const namespace = await host.load(config.feature);
  window.__result = { ms: performance.now(), exports: Object.keys(namespace) };
} catch (error) { window.__result = { error: String(error) }; }
</script>"""

_BASELINE = """<!doctype html><meta charset="utf-8"><script type="module">
const config = %(config)s;
try {
  for (const url of config.files) {
    const answer = await fetch(url, { cache: "no-cache" });
    await answer.arrayBuffer();
  }
  const namespace = await import(config.entryUrl);
  window.__result = { ms: performance.now(), exports: Object.keys(namespace) };
} catch (error) { window.__result = { error: String(error) }; }
</script>"""


def _pages(folder: Path, server: BenchServer, feature_id: str) -> None:
    origin = server.running.origin_url
    manifest_file = manifest_path(feature_id, version_name(2))
    manifest = json.loads((server.home / "origin" / manifest_file).read_bytes())
    entry = next(a for a in manifest["assets"] if a["path"] == manifest["entry"])
    others = [a for a in manifest["assets"] if a is not entry]
    files = [
        "remote-index.json",
        "roots/1.json",
        shard_path(DEFAULT_BITS, bin_of(feature_id, DEFAULT_BITS)),
        f"features/{feature_id}/releases.json",
        manifest_file,
        *(artifact_path(a["sha256"], a["path"]) for a in others),  # the style sheet
    ]
    trust = json.loads((server.home / "keys" / "trust.json").read_text())
    common = {"feature": feature_id, "indexUrl": origin + "remote-index.json", "trust": trust}
    baseline = {
        **common,
        "files": [origin + f for f in files],
        "entryUrl": f"{origin}artifacts/{entry['sha256']}.js",
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "verified.html").write_text(_VERIFIED % {"config": json.dumps(common)})
    (folder / "baseline.html").write_text(_BASELINE % {"config": json.dumps(baseline)})
    (folder / "releasecontrol-host.min.js").write_bytes(BUNDLE.read_bytes())


def _load(browser: Any, url: str) -> float:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_function("window.__result !== undefined", timeout=30_000)
        result = page.evaluate("window.__result")
    finally:
        context.close()
    if "error" in result or not result["exports"]:
        raise RuntimeError(f"the page at {url} failed: {result}")
    return float(result["ms"])


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "browser",
        "a cold load of one feature in Chromium: @releasecontrol/host vs no verification",
        f"Origin: the server's HTTP origin on loopback, {sizes['features']:,} features seeded. "
        "Each run a fresh browser context (Debian's Chromium, headless, through Playwright) "
        "opens a page on another loopback port that loads one feature: verified "
        "(FeatureHost.refresh() then load(), SRI) or baseline (the same files fetched, then "
        f"import() of the entry, no check). {sizes['runs']} runs each, alternating; medians.",
    )
    started = time.perf_counter()
    packed = gzip.compress(BUNDLE.read_bytes(), compresslevel=9, mtime=0)
    outcome.add("bundle, minified", BUNDLE.stat().st_size / 1e3, "kB")
    outcome.add("bundle, minified and gzipped", len(packed) / 1e3, "kB")
    outcome.at_most(
        "the library as a browser loads it (gzipped)", len(packed) / 1e3, BUNDLE_KB, unit="kB"
    )
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with BenchServer(
        work_dir / "server", features=sizes["features"], versions=2, with_assets=True
    ) as server:
        pages = work_dir / "pages"
        feature_id = feature_name(sizes["features"] // 2)
        _pages(pages, server, feature_id)
        # The pages and the library from a server as quick as the CDN's (not http.server):
        # its cost would otherwise weigh on the verified side only.
        http = OriginHttpServer(pages, "127.0.0.1", 0)
        http.start()
        base = http.url
        verified: list[float] = []
        baseline: list[float] = []
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
                )
                try:
                    _load(browser, base + "baseline.html")  # warm the browser process
                    for _ in range(sizes["runs"]):
                        baseline.append(_load(browser, base + "baseline.html"))
                        verified.append(_load(browser, base + "verified.html"))
                finally:
                    browser.close()
        finally:
            http.stop()
    v, b = statistics.median(verified), statistics.median(baseline)
    outcome.add("verified cold load, median", v, "ms")
    outcome.add("baseline cold load, median", b, "ms")
    outcome.at_most("verified ÷ baseline", v / b, RATIO, reason="")
    outcome.seconds = time.perf_counter() - started
    return outcome
