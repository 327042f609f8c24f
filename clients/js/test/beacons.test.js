// Beacons (docs/beacons.md): what FeatureHost and NodeFeatureHost send, when,
// and what they do with each answer. A real HTTP receiver on 127.0.0.1 (port 0)
// stands for the control plane's beacon listener: it records every request and
// answers what the test tells it to. Retry-After runs on the host's `now`.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { NodeFeatureHost } from "../dist/node.js";
import { CHECKOUT_V1, CHECKOUT_V2, SEARCH_V1, makeFixture, tamper } from "./helpers/fixture.js";
import { receiver } from "./helpers/receiver.js";

const KEY = "pk_test_shop";
const NOW = new Date("2026-12-07T10:00:00.000Z");

/** A row as the wire has it: every count present. */
function row(version, loads = 0, { feature = "checkout", entry_errors = 0, load_failures = 0, refusals = 0 } = {}) {
  return { feature, version, loads, entry_errors, load_failures, refusals };
}

async function withBeacons(fn) {
  const fx = await makeFixture();
  const rx = await receiver();
  const clock = { now: NOW.getTime() };
  const hosts = [];
  const host = (options = {}) => {
    const made = fx.host({ beaconUrl: rx.url, beaconKey: KEY, beaconIntervalMs: 3_600_000, now: () => new Date(clock.now), ...options });
    hosts.push(made);
    return made;
  };
  try {
    await fn({ fx, rx, clock, host });
  } finally {
    for (const h of hosts) await h.close();
    await rx.close();
    await fx.close();
  }
}

test("reports are counted per version and sent as one batch of exactly the wire format, as text/plain", () =>
  withBeacons(async ({ rx, host }) => {
    const h = host();
    for (let i = 0; i < 3; i++) h.reportLoad("checkout", "1.0.0");
    h.reportLoad("checkout", "2.0.0");
    h.reportFailure("checkout", "2.0.0", "entry_error");
    h.reportFailure("checkout", "2.0.0", "load_failure");
    h.reportFailure("checkout", "2.0.0", "refusal");
    h.reportFailure("checkout", "2.0.0", "refusal");
    await h.flushBeacons();

    assert.equal(rx.requests.length, 1);
    const [{ method, path, type, body }] = rx.requests;
    assert.deepEqual([method, path, type], ["POST", "/v1/beacons", "text/plain;charset=UTF-8"]);
    assert.match(body.batch, /^[0-9a-f]{32}$/, "128 random bits");
    assert.deepEqual(body, {
      v: 1,
      key: KEY,
      batch: body.batch,
      sent_at: "2026-12-07T10:00:00Z",
      counts: [row("1.0.0", 3), row("2.0.0", 1, { entry_errors: 1, load_failures: 1, refusals: 2 })],
    });

    h.reportLoad("search", "1.0.0");
    await h.flushBeacons();
    assert.notEqual(rx.batches[1].batch, body.batch, "a new id for every batch");
    assert.deepEqual(rx.batches[1].counts, [row("1.0.0", 1, { feature: "search" })]);
  }));

test("nothing is sent while there is nothing to count", () =>
  withBeacons(async ({ rx, host }) => {
    const h = host({ beaconIntervalMs: 5 });
    await h.flushBeacons();
    await h.close();
    assert.deepEqual(rx.requests, []);
  }));

test("counts are sent within beaconIntervalMs without a flush", () =>
  withBeacons(async ({ rx, host }) => {
    const h = host({ beaconIntervalMs: 20 });
    h.reportLoad("checkout", "1.0.0");
    await rx.arrived(1);
    assert.deepEqual(rx.batches[0].counts, [row("1.0.0", 1)]);
  }));

test("429: the counts are kept, nothing is sent before Retry-After, then one batch carries them with the new ones", () =>
  withBeacons(async ({ rx, clock, host }) => {
    rx.answers.push({ status: 429, answer: { error: "too many" }, headers: { "retry-after": "30" } });
    const h = host();
    h.reportLoad("checkout", "1.0.0");
    await h.flushBeacons();
    h.reportLoad("checkout", "1.0.0");
    h.reportFailure("checkout", "1.0.0", "load_failure");
    clock.now += 29_000;
    await h.flushBeacons();
    assert.equal(rx.requests.length, 1, "nothing before Retry-After");
    clock.now += 2_000;
    await h.flushBeacons();
    const [refused, sent] = rx.batches;
    assert.notEqual(sent.batch, refused.batch);
    assert.deepEqual(sent.counts, [row("1.0.0", 2, { load_failures: 1 })]);
  }));

test("403: the key is not the control plane's, and nothing more is sent", () =>
  withBeacons(async ({ rx, host }) => {
    rx.answers.push({ status: 403, answer: { error: "key is not a beacon key of this control plane", field: "key" } });
    const warned = [];
    const warn = console.warn;
    console.warn = (...args) => warned.push(args.join(" "));
    try {
      const h = host();
      h.reportLoad("checkout", "1.0.0");
      await h.flushBeacons();
      h.reportLoad("checkout", "1.0.0");
      await h.flushBeacons();
      await h.close();
    } finally {
      console.warn = warn;
    }
    assert.equal(rx.requests.length, 1);
    assert.deepEqual(warned, ["releasecontrol: beacons refused 403 key is not a beacon key of this control plane"]);
  }));

test("413 splits the rows in two batches, each counted once", () =>
  withBeacons(async ({ rx, host }) => {
    rx.answers.push({ status: 413, answer: { error: "too large" } });
    const h = host();
    for (const v of ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]) h.reportLoad("checkout", v);
    await h.flushBeacons();
    const [tooLarge, ...halves] = rx.batches;
    assert.deepEqual(
      halves.map((b) => b.counts.length),
      [2, 2],
    );
    assert.deepEqual(
      halves.flatMap((b) => b.counts),
      tooLarge.counts,
    );
  }));

test("422 naming a row drops that row alone; the others go again at once under a new id", () =>
  withBeacons(async ({ rx, host }) => {
    rx.answers.push({ status: 422, answer: { error: "version '9.9.9' of 'checkout' was never published", field: "counts[1].version" } });
    const h = host();
    h.reportLoad("checkout", "1.0.0");
    h.reportLoad("checkout", "9.9.9");
    h.reportLoad("search", "1.0.0");
    await h.flushBeacons();
    const [refused, sent] = rx.batches;
    assert.notEqual(sent.batch, refused.batch);
    assert.deepEqual(sent.counts, [row("1.0.0", 1), row("1.0.0", 1, { feature: "search" })]);
  }));

test("400 and 409 drop the batch (not sent again), with one warning for many", () =>
  withBeacons(async ({ rx, host }) => {
    rx.answers.push({ status: 400, answer: { error: "no", field: "sent_at" } }, { status: 409, answer: { error: "replayed", field: "batch" } });
    const warned = [];
    const warn = console.warn;
    console.warn = (...args) => warned.push(args.join(" "));
    try {
      const h = host();
      for (let i = 0; i < 2; i++) {
        h.reportLoad("checkout", "1.0.0");
        await h.flushBeacons();
      }
      await h.flushBeacons();
    } finally {
      console.warn = warn;
    }
    assert.equal(rx.requests.length, 2);
    assert.equal(warned.length, 1);
  }));

test("no answer, or a 5xx: the counts are kept for a later batch, and nothing throws", () =>
  withBeacons(async ({ rx, host }) => {
    rx.answers.push({ hangup: true }, { status: 503, answer: { error: "unavailable" } });
    const h = host();
    h.reportLoad("checkout", "1.0.0");
    await h.flushBeacons();
    h.reportFailure("checkout", "1.0.0", "refusal");
    await h.flushBeacons();
    await h.flushBeacons();
    assert.deepEqual(
      rx.batches.map((b) => b.counts),
      [[row("1.0.0", 1)], [row("1.0.0", 1, { refusals: 1 })], [row("1.0.0", 1, { refusals: 1 })]],
    );
    assert.equal(new Set(rx.batches.map((b) => b.batch)).size, 3);
  }));

test("close() sends the last batch; reports after it are not sent", () =>
  withBeacons(async ({ rx, host }) => {
    const h = host();
    h.reportFailure("checkout", "1.0.0", "entry_error");
    await h.close();
    assert.deepEqual(
      rx.batches.map((b) => b.counts),
      [[row("1.0.0", 0, { entry_errors: 1 })]],
    );
    h.reportLoad("checkout", "1.0.0");
    await h.flushBeacons();
    assert.equal(rx.requests.length, 1);
  }));

test("a tampered asset of a new version is counted as a load of it that was refused; one that cannot be fetched, as a failed load", () =>
  withBeacons(async ({ fx, rx, host }) => {
    const h = host({ features: ["checkout"] });
    assert.equal((await h.refresh()).ok, true);
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "2.0.0" });
    await fx.origin.publish();
    const asset = await fx.origin.artifactOf("checkout", "2.0.0", "index.js");
    tamper(fx, asset, (bytes) => Buffer.from(bytes.toString().replace("2", "3")));
    const report = await h.refresh();
    assert.equal(report.refused.checkout.code, "hash");
    assert.equal(report.loaded.checkout, "1.0.0", "the last good version stays");
    await h.flushBeacons();
    assert.deepEqual(rx.batches[0].counts, [row("2.0.0", 1, { refusals: 1 })]);

    fx.serving = null;
    fx.server.behaviours.set(asset, { status: 503 });
    assert.equal((await h.refresh()).refused.checkout.code, "fetch");
    await h.flushBeacons();
    assert.deepEqual(rx.batches[1].counts, [row("2.0.0", 1, { load_failures: 1 })]);
  }));

test("a refused releases.json names no version: nothing is counted", () =>
  withBeacons(async ({ fx, rx, host }) => {
    const h = host({ features: ["checkout"] });
    await h.refresh();
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "2.0.0" });
    await fx.origin.publish();
    fx.server.behaviours.set("features/checkout/releases.json", { status: 503 });
    assert.equal((await h.refresh()).refused.checkout.code, "fetch");
    await h.close();
    assert.deepEqual(rx.requests, []);
  }));

test("a bad report is a TypeError; a bad beacon setting is a configuration error", () =>
  withBeacons(async ({ fx, rx, host }) => {
    const h = host();
    assert.throws(() => h.reportFailure("checkout", "1.0.0", "crash"), TypeError);
    assert.throws(() => h.reportLoad("Checkout!", "1.0.0"), TypeError);
    assert.throws(() => h.reportLoad("checkout", ""), TypeError);
    assert.throws(() => h.reportLoad("checkout", "1.0.0 beta"), TypeError, "a space would split the row's id");
    for (const options of [{ beaconUrl: rx.url }, { beaconKey: KEY }, { beaconUrl: "ftp://x", beaconKey: KEY }, { beaconUrl: rx.url, beaconKey: "pk" }, { beaconUrl: rx.url, beaconKey: KEY, beaconIntervalMs: 0 }]) {
      assert.throws(() => fx.host(options), /FeatureHost: beacons need beaconUrl/, JSON.stringify(options));
    }
    // Without beacons, reports are checked the same and go nowhere.
    const quiet = fx.host();
    quiet.reportLoad("checkout", "1.0.0");
    assert.throws(() => quiet.reportFailure("checkout", "1.0.0", "oops"), TypeError);
    await quiet.close();
    assert.deepEqual(rx.requests, []);
  }));

test("the beacon URL names the listener; /v1/beacons is added unless it is there", () =>
  withBeacons(async ({ rx, host }) => {
    for (const url of [rx.url, `${rx.url}/`, `${rx.url}/v1/beacons`]) {
      const h = host({ beaconUrl: url });
      h.reportLoad("checkout", "1.0.0");
      await h.close();
    }
    assert.deepEqual(
      rx.requests.map((r) => r.path),
      ["/v1/beacons", "/v1/beacons", "/v1/beacons"],
    );
  }));

// ---- NodeFeatureHost

async function withNodeHost(fn) {
  await withBeacons(async (ctx) => {
    const cacheDir = await mkdtemp(join(tmpdir(), "rc-cache-"));
    const made = [];
    const make = (options = {}) => {
      const h = new NodeFeatureHost({ indexUrl: ctx.fx.server.indexUrl, trust: ctx.fx.trust, cacheDir, limits: { timeoutMs: 2000 }, beaconUrl: ctx.rx.url, beaconKey: KEY, beaconIntervalMs: 3_600_000, ...options });
      made.push(h);
      return h;
    };
    try {
      await fn({ ...ctx, cacheDir, make });
    } finally {
      for (const h of made) await h.close();
      await rm(cacheDir, { recursive: true, force: true });
    }
  });
}

test("NodeFeatureHost.load counts a load of the version each user gets, and an entry error when the entry throws", () =>
  withNodeHost(async ({ fx, rx, make }) => {
    fx.origin.setFeature("search", { versions: { "1.0.0": SEARCH_V1, "1.1.0": { "index.js": 'throw new Error("search is broken");\n' } }, stable: "1.0.0", canary: "1.1.0", canaryWeight: 10_000 });
    await fx.origin.publish();
    const h = make({ features: ["checkout", "search"] });
    assert.equal((await h.refresh()).ok, true);
    assert.equal((await h.load("checkout", "user-1")).default, "checkout v1");
    await assert.rejects(h.load("search", "user-1"), /search is broken/);
    await h.close();
    assert.deepEqual(rx.batches[0].counts, [row("1.0.0", 1), row("1.1.0", 1, { feature: "search", entry_errors: 1 })]);
  }));

test("NodeFeatureHost.load counts a refusal when a verified file changed on disk", () =>
  withNodeHost(async ({ rx, make }) => {
    const h = make();
    await h.refresh();
    const dir = await h.featureDir("search");
    await writeFile(join(dir, "index.js"), 'export default "evil";\n');
    await assert.rejects(h.load("search"), { code: "hash" });
    await h.close();
    assert.deepEqual(rx.batches[0].counts, [row("1.0.0", 1, { feature: "search", refusals: 1 })]);
  }));

test("a Node process that ends with counts pending sends them before it exits", () =>
  withBeacons(async ({ fx, rx }) => {
    const cacheDir = await mkdtemp(join(tmpdir(), "rc-cache-"));
    try {
      const script = `
        import { NodeFeatureHost } from ${JSON.stringify(new URL("../dist/node.js", import.meta.url).href)};
        const host = new NodeFeatureHost({ indexUrl: ${JSON.stringify(fx.server.indexUrl)}, trust: ${JSON.stringify(fx.trust)},
          cacheDir: ${JSON.stringify(cacheDir)}, beaconUrl: ${JSON.stringify(rx.url)}, beaconKey: "${KEY}", beaconIntervalMs: 3600000 });
        await host.refresh();
        await host.load("checkout");
        // No close(): the process simply runs out of work.
      `;
      const child = spawn(process.execPath, ["--input-type=module", "-e", script], { stdio: ["ignore", "ignore", "pipe"] });
      let stderr = "";
      child.stderr.on("data", (c) => (stderr += c));
      const [code] = await once(child, "exit");
      assert.equal(code, 0, stderr);
      assert.deepEqual(
        rx.batches.map((b) => b.counts),
        [[row("1.0.0", 1)]],
      );
    } finally {
      await rm(cacheDir, { recursive: true, force: true });
    }
  }));
