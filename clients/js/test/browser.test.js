// load() in a real browser (Chromium): the browser itself enforces the hashes,
// through the import map's integrity and a modulepreload with SRI.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { CHECKOUT_V1, CHECKOUT_V2, makeFixture } from "./helpers/fixture.js";
import { receiver } from "./helpers/receiver.js";

const CHROMIUM = [process.env.CHROMIUM, "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome"].find(
  (p) => p && existsSync(p),
);
const BUNDLE = new URL("../dist/releasecontrol-host.min.js", import.meta.url);

const PAGE = (trust) => `<!doctype html>
<meta charset="utf-8">
<title>host</title>
<script type="module">
import { FeatureHost } from "/bundle.js";
const out = {};
try {
  // No storage given: a browser host keeps its state in localStorage, keyed by the index URL.
  const host = new FeatureHost({ indexUrl: location.origin + "/remote-index.json", trust: ${JSON.stringify(trust)} });
  const report = await host.refresh();
  out.loaded = report.loaded;
  out.refused = report.refused;
  out.checkout = (await host.load("checkout")).default;
  out.importMaps = document.querySelectorAll('script[type="importmap"]').length;
  out.preloads = [...document.querySelectorAll('link[rel="modulepreload"]')].map((l) => l.integrity);
  out.storageKeys = Object.keys(localStorage);
  // The CDN now serves other bytes for search's entry than the ones the refresh verified.
  await fetch("/tamper", { method: "POST" });
  try {
    const mod = await host.load("search");
    out.search = mod.default;
  } catch (e) {
    out.searchError = { name: e.name, code: e.code, file: e.file, message: e.message };
  }
  out.tamperedRan = globalThis.__tampered === true;
} catch (e) {
  out.error = String((e && e.stack) || e);
}
await fetch("/result", { method: "POST", body: JSON.stringify(out) });
</script>`;

/**
 * Serves `page` (and the bundle) from the fixture's origin, opens it in headless
 * Chromium, and resolves with what the page POSTs to /result. `routes` adds
 * handlers ({name: (req, res) => …}) the page may call.
 */
// `keepUntil`: a promise Chromium is kept running for after the page's result (up to 30 s),
// e.g. a beacon the page queued with sendBeacon, which leaves after the page is done.
async function inChromium(fx, page, routes = {}, { keepUntil } = {}) {
  const profile = await mkdtemp(join(tmpdir(), "rc-chromium-"));
  let browser;
  try {
    fx.origin.files.set("page.html", new TextEncoder().encode(page));
    fx.origin.files.set("bundle.js", new Uint8Array(readFileSync(BUNDLE)));
    let resolveResult;
    const result = new Promise((resolve) => (resolveResult = resolve));
    for (const [name, handler] of Object.entries(routes)) fx.server.behaviours.set(name, { handler });
    fx.server.behaviours.set("result", {
      handler: (req, res) => {
        let body = "";
        req.on("data", (c) => (body += c));
        req.on("end", () => {
          res.end("ok");
          resolveResult(JSON.parse(body));
        });
      },
    });
    browser = spawn(
      CHROMIUM,
      ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions", `--user-data-dir=${profile}`, `${fx.server.base}page.html`],
      { stdio: "ignore", detached: true },
    );
    let timer;
    const out = await Promise.race([
      result,
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error("no result from Chromium in 60 s")), 60_000))),
    ]).finally(() => clearTimeout(timer));
    if (keepUntil) {
      await Promise.race([keepUntil, new Promise((resolve) => (timer = setTimeout(resolve, 30_000)))]).finally(() =>
        clearTimeout(timer),
      );
    }
    return out;
  } finally {
    if (browser?.pid) {
      try {
        process.kill(-browser.pid, "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    await rm(profile, { recursive: true, force: true });
  }
}

test("in Chromium, load() runs a verified feature and refuses bytes the CDN changed after the refresh", { skip: !CHROMIUM && "no Chromium here" }, async () => {
  const fx = await makeFixture();
  try {
    const files = fx.origin.files;
    const searchEntry = await fx.origin.artifactOf("search", "1.0.0", "index.js");
    const out = await inChromium(fx, PAGE(fx.trust), {
      tamper: (_req, res) => {
        files.set(searchEntry, new TextEncoder().encode('globalThis.__tampered = true; export default "evil";\n'));
        res.end("ok");
      },
    });

    assert.equal(out.error, undefined);
    assert.deepEqual(out.loaded, { checkout: "1.0.0", search: "1.0.0" });
    assert.deepEqual(out.refused, {});
    assert.equal(out.checkout, "checkout v1", "the entry and its relative import ran");
    assert.equal(out.importMaps, 1);
    assert.equal(out.preloads.length, 1);
    assert.match(out.preloads[0], /^sha256-/);
    assert.deepEqual(out.storageKeys, [`releasecontrol-host:${fx.server.indexUrl}`]);
    assert.equal(out.search, undefined, "the tampered module returned nothing");
    assert.equal(out.searchError.name, "RefusalError");
    assert.equal(out.searchError.code, "hash");
    assert.equal(out.searchError.file, searchEntry);
    assert.equal(out.tamperedRan, false, "the browser did not run the changed bytes");
  } finally {
    await fx.close();
  }
});

const CANARY_PAGE = (trust) => `<!doctype html>
<meta charset="utf-8">
<title>host</title>
<script type="module">
import { FeatureHost, bucket } from "/bundle.js";
const out = {};
try {
  // No key given: the host draws one at the first canary and keeps it in localStorage with its state.
  const options = { indexUrl: location.origin + "/remote-index.json", trust: ${JSON.stringify(trust)}, features: ["checkout"] };
  const host = new FeatureHost(options);
  await host.refresh();
  const feature = host.features.get("checkout");
  out.first = { version: feature.version, channel: feature.channel, weight: feature.canaryWeight, bucket: feature.bucket };
  out.ran = (await host.load("checkout")).default;
  const saved = JSON.parse(localStorage.getItem("releasecontrol-host:" + options.indexUrl));
  out.savedBucket = bucket("checkout", saved.bucketingKey);
  // Another host on this page (as after a reload) reads the same key: the same side.
  const again = new FeatureHost(options);
  await again.refresh();
  out.again = again.features.get("checkout").bucket;
} catch (e) {
  out.error = String((e && e.stack) || e);
}
await fetch("/result", { method: "POST", body: JSON.stringify(out) });
</script>`;

test("in Chromium, a host with no key keeps the key it drew in localStorage and runs the side of its bucket", { skip: !CHROMIUM && "no Chromium here" }, async () => {
  const fx = await makeFixture();
  try {
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "1.0.0", canary: "2.0.0", canaryWeight: 5000 });
    await fx.origin.publish();
    const out = await inChromium(fx, CANARY_PAGE(fx.trust));
    assert.equal(out.error, undefined);
    const onCanary = out.savedBucket < 5000;
    assert.deepEqual(out.first, {
      version: onCanary ? "2.0.0" : "1.0.0",
      channel: onCanary ? "canary" : "stable",
      weight: 5000,
      bucket: out.savedBucket,
    });
    assert.equal(out.ran, onCanary ? "checkout v2" : "checkout v1");
    assert.equal(out.again, out.savedBucket);
  } finally {
    await fx.close();
  }
});

const BEACON_PAGE = (trust, beaconUrl) => `<!doctype html>
<meta charset="utf-8">
<title>host</title>
<script type="module">
import { FeatureHost } from "/bundle.js";
const out = { sent: [] };
try {
  // What the page hands navigator.sendBeacon, passed on unchanged.
  const sendBeacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = (url, data) => {
    out.sent.push({ url, type: typeof data });
    return sendBeacon(url, data);
  };
  const host = new FeatureHost({ indexUrl: location.origin + "/remote-index.json", trust: ${JSON.stringify(trust)},
    beaconUrl: ${JSON.stringify(beaconUrl)}, beaconKey: "pk_test_shop" });
  await host.refresh();
  out.checkout = (await host.load("checkout")).default;
  host.reportFailure("checkout", "1.0.0", "entry_error");
  out.beforeHide = out.sent.length;
  // The page goes away: what is counted leaves by sendBeacon.
  dispatchEvent(new PageTransitionEvent("pagehide"));
} catch (e) {
  out.error = String((e && e.stack) || e);
}
await fetch("/result", { method: "POST", body: JSON.stringify(out) });
</script>`;

test("in Chromium, the counts leave by navigator.sendBeacon with a text/plain string when the page hides: no preflight to another origin", { skip: !CHROMIUM && "no Chromium here" }, async () => {
  const fx = await makeFixture();
  const rx = await receiver();
  try {
    const arrival = rx.arrived(1);
    const out = await inChromium(fx, BEACON_PAGE(fx.trust, rx.url), {}, { keepUntil: arrival });
    assert.equal(out.error, undefined);
    assert.equal(out.checkout, "checkout v1");
    assert.equal(out.beforeHide, 0, "nothing sent before the interval or the page hiding");
    assert.deepEqual(out.sent, [{ url: `${rx.url}/v1/beacons`, type: "string" }]);
    const [request] = await arrival;
    assert.deepEqual(
      rx.requests.map((r) => [r.method, r.type]),
      [["POST", "text/plain;charset=UTF-8"]],
      "one simple request: no OPTIONS preflight",
    );
    assert.deepEqual(request.body.counts, [{ feature: "checkout", version: "1.0.0", loads: 1, entry_errors: 1, load_failures: 0, refusals: 0 }]);
  } finally {
    await rx.close();
    await fx.close();
  }
});
