// Percentage canaries in the JavaScript host: which side each key gets, what is kept, and
// what a server serving many users is handed, against a real HTTP origin.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { FeatureHost, NodeFeatureHost, RefusalError, bucket, fileState, memoryState } from "../dist/node.js";
import { CHECKOUT_V1, CHECKOUT_V2, codes, makeFixture, tamper } from "./helpers/fixture.js";

// Buckets of checkout (tests/vectors/bucketing.json): below and above a 25 % canary.
const LOW = { key: "user-4", bucket: 234 };
const MID = { key: "user-42", bucket: 4570 };
const HIGH = { key: "user-420", bucket: 7723 };

/** checkout: stable 1.0.0, canary 2.0.0 at `weight` (undefined: no canary_weight field). */
async function setWeight(fx, weight, { canary = "2.0.0" } = {}) {
  fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "1.0.0", canary, canaryWeight: weight });
  await fx.origin.publish();
}

async function withFixture(fn) {
  const fx = await makeFixture();
  const dir = await mkdtemp(join(tmpdir(), "rc-weights-"));
  try {
    await fn(fx, dir);
  } finally {
    await fx.close();
    await rm(dir, { recursive: true, force: true });
  }
}

async function refreshed(host) {
  const report = await host.refresh();
  assert.equal(report.ok, true, JSON.stringify(report.refused));
  return host;
}

const side = (host) => {
  const f = host.features.get("checkout");
  return [f.version, f.channel, f.canaryWeight, f.bucket];
};

const canaryFiles = async (fx) => [
  "features/checkout/2.0.0/manifest.json",
  await fx.origin.artifactOf("checkout", "2.0.0", "index.js"),
];

test("the keys sit in the buckets the shared table lists", () => {
  for (const { key, bucket: b } of [LOW, MID, HIGH]) assert.equal(bucket("checkout", key), b);
});

test("a stable host gets the canary iff its key's bucket is below the weight", () =>
  withFixture(async (fx) => {
    await setWeight(fx, 2500);
    assert.deepEqual(side(await refreshed(fx.host({ bucketingKey: LOW.key }))), ["2.0.0", "canary", 2500, LOW.bucket]);
    assert.deepEqual(side(await refreshed(fx.host({ bucketingKey: MID.key }))), ["1.0.0", "stable", 2500, MID.bucket]);
  }));

test("the edges: a bucket equal to the weight is stable, one below it canary; no weight field is 0 %", () =>
  withFixture(async (fx) => {
    for (const [weight, expected] of [
      [undefined, ["1.0.0", "stable", 0, LOW.bucket]],
      [0, ["1.0.0", "stable", 0, LOW.bucket]],
      [LOW.bucket, ["1.0.0", "stable", LOW.bucket, LOW.bucket]],
      [LOW.bucket + 1, ["2.0.0", "canary", LOW.bucket + 1, LOW.bucket]],
      [10000, ["2.0.0", "canary", 10000, LOW.bucket]],
    ]) {
      await setWeight(fx, weight);
      assert.deepEqual(side(await refreshed(fx.host({ bucketingKey: LOW.key }))), expected, `weight ${weight}`);
    }
  }));

test("a canary host gets the canary whatever the weight; without a canary nothing is bucketed", () =>
  withFixture(async (fx) => {
    for (const weight of [undefined, 0, 2500]) {
      await setWeight(fx, weight);
      assert.deepEqual(side(await refreshed(fx.host({ channel: "canary", bucketingKey: MID.key }))), ["2.0.0", "canary", weight ?? 0, null]);
    }
    await setWeight(fx, undefined, { canary: null });
    const storage = memoryState();
    assert.deepEqual(side(await refreshed(fx.host({ storage }))), ["1.0.0", "stable", null, null]);
    assert.ok(!(await storage.load()).includes("bucketingKey"), "no key drawn without a canary");
  }));

test("a user never leaves the canary while the weight grows, across restarts", () =>
  withFixture(async (fx) => {
    for (const weight of [500, 2500, 5000, 10000]) {
      await setWeight(fx, weight);
      for (const { key, bucket: b } of [LOW, MID, HIGH]) {
        const host = await refreshed(fx.host({ bucketingKey: key }));
        assert.equal(host.features.get("checkout").channel, b < weight ? "canary" : "stable", `${key} at ${weight}`);
      }
    }
  }));

test("a host given no key draws one at the first canary and keeps it with its state", () =>
  withFixture(async (fx, dir) => {
    const stateFile = join(dir, "state.json");
    await setWeight(fx, 5000);
    const first = await refreshed(fx.host({ storage: fileState(stateFile) }));
    const { bucketingKey } = JSON.parse(await readFile(stateFile, "utf8"));
    assert.match(bucketingKey, /^[0-9a-f]{32}$/);
    const b = bucket("checkout", bucketingKey);
    assert.deepEqual(side(first), b < 5000 ? ["2.0.0", "canary", 5000, b] : ["1.0.0", "stable", 5000, b]);
    // A restart (a new host on the same state) lands on the same side with the same key.
    const again = await refreshed(fx.host({ storage: fileState(stateFile) }));
    assert.deepEqual(side(again), side(first));
    assert.equal(JSON.parse(await readFile(stateFile, "utf8")).bucketingKey, bucketingKey);
  }));

test("a key given is used and never saved: it may be a user's id", () =>
  withFixture(async (fx) => {
    await setWeight(fx, 2500);
    const storage = memoryState();
    await refreshed(fx.host({ storage, bucketingKey: LOW.key }));
    assert.ok(!(await storage.load()).includes("bucketingKey"));
    assert.ok(!(await storage.load()).includes(LOW.key));
  }));

test("a browser host keeps its key in localStorage with its state, and in memory where localStorage is missing", () =>
  withFixture(async (fx) => {
    await setWeight(fx, 5000);
    const items = new Map();
    globalThis.localStorage = { getItem: (k) => items.get(k) ?? null, setItem: (k, v) => items.set(k, String(v)) };
    try {
      const first = await refreshed(fx.host({ storage: undefined }));
      const saved = JSON.parse(items.get(`releasecontrol-host:${fx.server.indexUrl}`));
      assert.equal(first.features.get("checkout").bucket, bucket("checkout", saved.bucketingKey));
      const again = await refreshed(fx.host({ storage: undefined }));
      assert.deepEqual(side(again), side(first));
    } finally {
      delete globalThis.localStorage;
    }
    const memory = await refreshed(fx.host({ storage: undefined }));
    assert.equal(typeof memory.features.get("checkout").bucket, "number");
  }));

test("a damaged key in the saved state stops the refresh rather than moving the host to a random side", () =>
  withFixture(async (fx, dir) => {
    const stateFile = join(dir, "state.json");
    await setWeight(fx, 2500);
    await refreshed(fx.host({ storage: fileState(stateFile) }));
    const saved = JSON.parse(await readFile(stateFile, "utf8"));
    await writeFile(stateFile, JSON.stringify({ ...saved, bucketingKey: "" }));
    await assert.rejects(fx.host({ storage: fileState(stateFile) }).refresh(), /the host's saved state has a damaged bucketing key; fix it, or delete it/);
  }));

test("a bad bucketingKey option is refused when the host is made, naming it", () =>
  withFixture(async (fx) => {
    for (const [key, message] of [
      ["", /^FeatureHost: bucketingKey must be 1 to 256 bytes long in UTF-8, not empty$/],
      ["k".repeat(257), /^FeatureHost: bucketingKey must be 1 to 256 bytes long in UTF-8, not 257 bytes$/],
      ["\ud800", /^FeatureHost: bucketingKey must be well-formed Unicode: it holds a lone surrogate \(U\+D800\)/],
      [42, /^FeatureHost: bucketingKey must be a string of 1 to 256 bytes in UTF-8, not number$/],
    ]) {
      assert.throws(() => fx.host({ bucketingKey: key }), { message });
    }
  }));

test("a Node host hands each user their side: versionFor, and load() of that user's version", () =>
  withFixture(async (fx, dir) => {
    await setWeight(fx, 2500);
    const host = new NodeFeatureHost({ indexUrl: fx.server.indexUrl, trust: fx.trust, cacheDir: dir, bucketingKey: MID.key });
    await refreshed(host);
    const low = host.versionFor("checkout", LOW.key);
    const mid = host.versionFor("checkout", MID.key);
    assert.deepEqual([low.version, low.channel, low.canaryWeight, low.bucket], ["2.0.0", "canary", 2500, LOW.bucket]);
    assert.deepEqual([mid.version, mid.channel, mid.bucket], ["1.0.0", "stable", MID.bucket]);
    assert.equal((await host.load("checkout", LOW.key)).default, "checkout v2");
    assert.equal((await host.load("checkout", MID.key)).default, "checkout v1");
    assert.equal((await host.load("checkout")).default, "checkout v1", "the host's own side");
    assert.throws(() => host.versionFor("checkout", "k".repeat(300)), { name: "RangeError", message: "bucketingKey must be 1 to 256 bytes long in UTF-8, not 300 bytes" });
    assert.throws(() => host.versionFor("nope", LOW.key), (e) => e instanceof RefusalError && e.code === "not-found" && /^nope is not served by this host/.test(e.message));
  }));

test("a fleet of 2,000 users ramps stickily and in proportion through one Node host", () =>
  withFixture(async (fx, dir) => {
    const host = new NodeFeatureHost({ indexUrl: fx.server.indexUrl, trust: fx.trust, cacheDir: dir, features: ["checkout"] });
    const users = Array.from({ length: 2000 }, (_, i) => `user-${i}`);
    let before = new Set();
    for (const weight of [500, 2500, 10000]) {
      await setWeight(fx, weight);
      await refreshed(host);
      const on = new Set(users.filter((u) => host.versionFor("checkout", u).version === "2.0.0"));
      assert.ok([...before].every((u) => on.has(u)), `someone left the canary at ${weight}`);
      assert.ok(Math.abs(on.size / users.length - weight / 10000) < 0.04, `${on.size} on the canary at ${weight}`);
      before = on;
    }
    assert.equal(before.size, users.length);
  }));

test("both versions are loaded only while both are reachable, and a broken canary keeps the whole last good state", () =>
  withFixture(async (fx, dir) => {
    const host = new NodeFeatureHost({ indexUrl: fx.server.indexUrl, trust: fx.trust, cacheDir: dir, features: ["checkout"], bucketingKey: MID.key });
    await setWeight(fx, 0);
    let from = fx.server.requests.length;
    await refreshed(host);
    const files = await canaryFiles(fx);
    assert.ok(!fx.server.requests.slice(from).some((p) => files.includes(p)), "at 0 % nobody gets the canary: not fetched");

    await setWeight(fx, 2500);
    tamper(fx, files[1]);
    const report = await host.refresh();
    assert.deepEqual(codes(report.refused), { checkout: { code: "length", file: files[1] } });
    // Nobody is handed a version whose files did not all verify: everyone stays where 0 % put them.
    assert.deepEqual(side(host), ["1.0.0", "stable", 0, MID.bucket]);
    assert.equal(host.versionFor("checkout", LOW.key).version, "1.0.0");

    fx.serving = null;
    from = fx.server.requests.length;
    await refreshed(host);
    assert.ok(files.every((p) => fx.server.requests.slice(from).includes(p)), "between 0 and 100 % both versions are verified");
    assert.equal(host.versionFor("checkout", LOW.key).version, "2.0.0");
  }));

test("a one-user host (bothSides off) fetches only its own side and says it cannot serve the other", () =>
  withFixture(async (fx) => {
    await setWeight(fx, 2500);
    const files = await canaryFiles(fx);
    tamper(fx, files[1]);
    const from = fx.server.requests.length;
    const host = await refreshed(new FeatureHost({ indexUrl: fx.server.indexUrl, trust: fx.trust, storage: memoryState(), bucketingKey: MID.key }));
    assert.equal(host.bothSides, false);
    assert.deepEqual(side(host), ["1.0.0", "stable", 2500, MID.bucket]);
    assert.ok(!fx.server.requests.slice(from).some((p) => files.includes(p)));
    assert.equal(host.versionFor("checkout", HIGH.key).version, "1.0.0");
    assert.throws(
      () => host.versionFor("checkout", LOW.key),
      (e) => e instanceof RefusalError && e.code === "not-found" && /keeps only its own side of checkout; serving this user the canary side needs bothSides: true/.test(e.message),
    );
  }));

test("a canary_weight off the scale, or set without a canary, refuses the releases.json as malformed", () =>
  withFixture(async (fx) => {
    const host = await refreshed(fx.host({ bucketingKey: LOW.key }));
    for (const [weight, canary, words] of [
      [10001, "2.0.0", /signed\.canary_weight is not an integer from 0 to 10000 \(found 10001\)/],
      [-1, "2.0.0", /signed\.canary_weight is not an integer from 0 to 10000/],
      [25.5, "2.0.0", /signed\.canary_weight is not an integer from 0 to 10000 \(found 25\.5\)/],
      [true, "2.0.0", /signed\.canary_weight is not an integer/],
      [500, null, /signed\.canary_weight is set, but no canary runs/],
    ]) {
      await setWeight(fx, weight, { canary });
      const report = await host.refresh();
      assert.deepEqual(codes(report.refused), { checkout: { code: "malformed", file: "features/checkout/releases.json" } }, String(weight));
      assert.match(report.refused.checkout.message, words);
      assert.equal(host.features.get("checkout").version, "1.0.0", "the last good state stays");
    }
  }));
