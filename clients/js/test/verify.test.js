// What a host serves, and what it refuses, for origins built and signed here.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { FeatureHost, memoryState, RefusalError } from "../dist/index.js";
import { CHECKOUT_V1, CHECKOUT_V2, SEARCH_V1, codes, makeFixture, tamper } from "./helpers/fixture.js";
import { jcs, makeKey, signedFile, trustFile } from "./helpers/keys.js";
import { PAST } from "./helpers/origin.js";

const flipLastByte = (b) => {
  const c = Buffer.from(b);
  c[c.length - 2] ^= 1;
  return c;
};

/** Re-encodes a served JSON file's bytes with `edit(text)`; the signature stays the original one. */
const editText = (edit) => (b) => Buffer.from(edit(b.toString("utf8")));

describe("a valid origin", () => {
  let fx;
  before(async () => (fx = await makeFixture()));
  after(() => fx.close());

  test("loads every feature, with every asset verified and bound to its SHA-256", async () => {
    const host = fx.host();
    const report = await host.refresh();
    assert.deepEqual(report.refused, {});
    assert.equal(report.ok, true);
    assert.deepEqual(report.loaded, { checkout: "1.0.0", search: "1.0.0" });
    assert.equal(report.remoteSequence, 1);
    assert.equal(report.rootVersion, 1);
    assert.deepEqual(report.changed, ["checkout", "search"]);

    const checkout = host.features.get("checkout");
    assert.equal(checkout.version, "1.0.0");
    assert.equal(checkout.channel, "stable");
    assert.equal(checkout.sequence, 1);
    assert.equal(checkout.remoteSequence, 1);
    assert.equal(checkout.rootVersion, 1);
    assert.deepEqual(checkout.keyids, [fx.indexKey.keyid]);
    assert.equal(checkout.entry, "index.js");
    assert.deepEqual(checkout.assets.map((a) => a.path), ["index.js", "lib/label.js", "style.css"]);
    const entry = checkout.assets[0];
    assert.equal(checkout.entryUrl, entry.url);
    assert.equal(entry.url, fx.server.base + (await fx.origin.artifactOf("checkout", "1.0.0", "index.js")));
    assert.equal(entry.integrity, `sha256-${Buffer.from(entry.sha256, "hex").toString("base64")}`);
    assert.equal(entry.size, Buffer.byteLength(CHECKOUT_V1["index.js"]));
    assert.ok(Object.isFrozen(checkout) && Object.isFrozen(checkout.manifest), "a served feature cannot be changed by its user");
    assert.deepEqual(host.refused, {});
  });

  test("a host needing one feature fetches only its shard, its releases.json, its manifest and assets", async () => {
    const host = fx.host({ features: ["search"] });
    const from = fx.server.requests.length;
    const report = await host.refresh();
    assert.deepEqual(report.loaded, { search: "1.0.0" });
    const fetched = fx.server.requests.slice(from).sort();
    assert.deepEqual(fetched, [
      await fx.origin.artifactOf("search", "1.0.0", "index.js"),
      "features/search/1.0.0/manifest.json",
      "features/search/releases.json",
      "index/7/12.json",
      "remote-index.json",
      "roots/1.json",
    ].sort());
  });

  test("importMap() maps each feature to its entry and lists the integrity of every JavaScript asset only", async () => {
    const host = fx.host();
    await host.refresh();
    const map = host.importMap();
    const checkout = host.features.get("checkout");
    const search = host.features.get("search");
    assert.deepEqual(map.imports, { checkout: checkout.entryUrl, search: search.entryUrl });
    const js = [...checkout.assets, ...search.assets].filter((a) => a.path.endsWith(".js"));
    assert.deepEqual(map.integrity, Object.fromEntries(js.map((a) => [a.url, a.integrity]).sort()));
    assert.ok(!Object.keys(map.integrity).some((u) => u.endsWith(".css")));
  });

  test("binOf gives the doc's example bins", async () => {
    const { binOf } = await import("../dist/index.js");
    assert.equal(await binOf("checkout", 7), "63");
    assert.equal(await binOf("search", 7), "12");
    assert.equal(await binOf("checkout", 0), "0");
    assert.equal(await binOf("checkout", 16), "c776");
  });
});

describe("refusals: one host per check, last good state kept", () => {
  let fx;
  before(async () => (fx = await makeFixture()));
  after(() => fx.close());

  /** A host that loaded the valid origin once; then `fx.serving` is set by the test. */
  async function goodHost(options) {
    fx.serving = null;
    const host = fx.host(options);
    assert.equal((await host.refresh()).ok, true);
    return host;
  }

  test("fetch: remote-index.json answering 500 refuses the whole refresh and keeps every feature", async () => {
    const host = await goodHost();
    fx.server.behaviours.set("remote-index.json", { status: 500 });
    try {
      const report = await host.refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "fetch", file: "remote-index.json" } });
      assert.match(report.refused["remote-index.json"].message, /HTTP 500/);
      assert.deepEqual(report.loaded, { checkout: "1.0.0", search: "1.0.0" });
      assert.equal(report.remoteSequence, 1);
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("fetch: a redirect is refused (it could lead to another origin)", async () => {
    fx.server.behaviours.set("remote-index.json", {
      handler: (_req, res) => {
        res.writeHead(302, { location: "http://127.0.0.2:9/remote-index.json" });
        res.end();
      },
    });
    try {
      const report = await fx.host().refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "fetch", file: "remote-index.json" } });
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("fetch: an asset missing on the origin refuses that feature only", async () => {
    const host = await goodHost();
    const path = await fx.origin.artifactOf("search", "1.0.0", "index.js");
    fx.serving = new Map(fx.origin.files);
    fx.serving.delete(path);
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "fetch", file: path } });
    assert.deepEqual(report.loaded, { checkout: "1.0.0" });
    const again = await host.refresh();
    assert.deepEqual(again.loaded, { checkout: "1.0.0", search: "1.0.0" }, "a host that had search keeps it");
  });

  test("hash: an asset with the right length but other bytes refuses its feature; the other loads", async () => {
    const host = await goodHost();
    const path = await fx.origin.artifactOf("checkout", "1.0.0", "lib/label.js");
    tamper(fx, path, flipLastByte);
    const report = await host.refresh();
    assert.deepEqual(codes(report.refused), { checkout: { code: "hash", file: path } });
    assert.deepEqual(report.loaded, { checkout: "1.0.0", search: "1.0.0" });
    assert.deepEqual(report.changed, []);
    assert.match(report.refused.checkout.message, /SHA-256/);
  });

  test("length: an asset longer than its manifest lists", async () => {
    const path = await fx.origin.artifactOf("search", "1.0.0", "index.js");
    tamper(fx, path);
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "length", file: path } });
  });

  test("length: a shard shorter than remote-index.json pins refuses every needed feature of its bin", async () => {
    tamper(fx, "index/7/12.json", (b) => b.subarray(0, b.length - 1));
    const report = await fx.host({ features: ["checkout", "search"] }).refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "length", file: "index/7/12.json" } });
    assert.deepEqual(report.loaded, { checkout: "1.0.0" });
  });

  test("hash: a changed shard (same length) keeps its features' last good versions", async () => {
    const host = await goodHost();
    tamper(fx, "index/7/63.json", editText((t) => t.replace('"sequence":1', '"sequence":2')));
    const report = await host.refresh();
    assert.deepEqual(codes(report.refused), { checkout: { code: "hash", file: "index/7/63.json" } });
    assert.deepEqual(report.loaded, { checkout: "1.0.0", search: "1.0.0" });
  });

  test("hash: a manifest that is not the one releases.json lists", async () => {
    tamper(fx, "features/search/1.0.0/manifest.json", editText((t) => t + "\n"));
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "hash", file: "features/search/1.0.0/manifest.json" } });
  });

  test("malformed: remote-index.json that is not JSON", async () => {
    tamper(fx, "remote-index.json", () => Buffer.from("<html>oops</html>"));
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "malformed", file: "remote-index.json" } });
    assert.deepEqual(report.loaded, {});
    assert.equal(report.remoteSequence, null);
  });

  test("malformed: a byte that is not UTF-8, and a leading BOM", async () => {
    tamper(fx, "remote-index.json", (b) => Buffer.concat([b.subarray(0, 20), Buffer.from([0xff]), b.subarray(21)]));
    assert.equal((await fx.host().refresh()).refused["remote-index.json"].code, "malformed");
    tamper(fx, "remote-index.json", (b) => Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), b]));
    assert.equal((await fx.host().refresh()).refused["remote-index.json"].code, "malformed");
  });

  test("not-canonical: insignificant whitespace, a duplicate member, an escaped character and a lone surrogate", async () => {
    const variants = [
      (t) => t.replace('{"signatures"', '{ "signatures"'),
      (t) => t.replace('"type":"remote-index"', '"type":"remote-index","type":"remote-index"'),
      (t) => t.replace('"type":"remote-index"', '"type":"remote\\u002dindex"'),
      (t) => t.replace('"schema_version":2', '"schema_version":2,"x":"\\ud800"'),
      (t) => t.replace('"schema_version":2', '"schema_version":2.0'),
    ];
    for (const edit of variants) {
      tamper(fx, "remote-index.json", editText(edit));
      const report = await fx.host().refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "not-canonical", file: "remote-index.json" } }, edit.toString());
    }
  });

  test("malformed: an envelope with another member, or a signature that is not {keyid, sig}", async () => {
    for (const edit of [
      (t) => t.replace('{"signatures"', '{"extra":1,"signatures"'),
      (t) => t.replace('"sig":', '"sag":'),
    ]) {
      tamper(fx, "remote-index.json", editText(edit));
      assert.equal((await fx.host().refresh()).refused["remote-index.json"].code, "malformed");
    }
  });

  test("schema-version: a v1 file says which version it found and which this host speaks", async () => {
    fx.origin.hook = (path, signed) => (path === "remote-index.json" ? { ...signed, schema_version: 1 } : signed);
    await fx.origin.publish();
    fx.origin.hook = (_p, s) => s;
    fx.serving = null;
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "schema-version", file: "remote-index.json" } });
    assert.match(report.refused["remote-index.json"].message, /schema_version 1; this host speaks 2/);
    await fx.origin.publish();
  });

  test("signature: remote-index.json signed by an unknown key", async () => {
    const stranger = await makeKey(9);
    fx.origin.signers = (path) => (path === "remote-index.json" ? [stranger] : null);
    await fx.origin.publish();
    fx.origin.signers = () => null;
    fx.serving = null;
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "signature", file: "remote-index.json" } });
    await fx.origin.publish();
  });

  test("signature: a releases.json whose signature does not verify refuses that feature", async () => {
    const other = await makeKey(2);
    fx.origin.signers = (path) => (path === "features/search/releases.json" ? [other] : null);
    fx.origin.hook = (path, signed) => signed;
    await fx.origin.publish();
    // Same key, but the signature of another body: swap in the signature of a different file.
    const good = JSON.parse(Buffer.from(fx.origin.files.get("features/search/releases.json")).toString());
    const bad = JSON.parse(Buffer.from(fx.origin.files.get("features/checkout/releases.json")).toString());
    good.signatures = bad.signatures;
    fx.origin.files.set("features/search/releases.json", new TextEncoder().encode(jcs(good)));
    // Re-pin it so that only the signature fails.
    fx.origin.signers = () => null;
    const pinFile = fx.origin.files.get("features/search/releases.json");
    const sha = await crypto.subtle.digest("SHA-256", pinFile).then((d) => Buffer.from(d).toString("hex"));
    const shard = JSON.parse(Buffer.from(fx.origin.files.get("index/7/12.json")).toString()).signed;
    shard.features.search = { sha256: sha, length: pinFile.length, sequence: shard.features.search.sequence };
    fx.origin.files.set("index/7/12.json", await signedFile(shard, [fx.indexKey]));
    const shardBytes = fx.origin.files.get("index/7/12.json");
    const top = JSON.parse(Buffer.from(fx.origin.files.get("remote-index.json")).toString()).signed;
    top.bins.shards["12"] = {
      sha256: await crypto.subtle.digest("SHA-256", shardBytes).then((d) => Buffer.from(d).toString("hex")),
      length: shardBytes.length,
      sequence: top.bins.shards["12"].sequence,
    };
    fx.origin.files.set("remote-index.json", await signedFile(top, [fx.indexKey]));
    fx.serving = null;
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "signature", file: "features/search/releases.json" } });
    assert.deepEqual(report.loaded, { checkout: "1.0.0" });
    await fx.origin.publish();
  });

  test("mismatch: a shard of another top level (its sequence is not the pinned one)", async () => {
    fx.serving = null;
    const oldShard = fx.origin.files.get("index/7/63.json");
    const host = fx.host({ features: ["checkout"] });
    // Re-sign the top level pinning the old shard's bytes but claiming another sequence.
    const top = JSON.parse(Buffer.from(fx.origin.files.get("remote-index.json")).toString()).signed;
    top.bins.shards["63"].sequence += 5;
    fx.serving = new Map(fx.origin.files);
    fx.serving.set("index/7/63.json", oldShard);
    fx.serving.set("remote-index.json", await signedFile(top, [fx.indexKey]));
    const report = await host.refresh();
    assert.deepEqual(codes(report.refused), { checkout: { code: "mismatch", file: "index/7/63.json" } });
  });

  test("mismatch: a shard naming a feature of another bin is refused", async () => {
    fx.serving = null;
    const files = new Map(fx.origin.files);
    const shard12 = JSON.parse(Buffer.from(files.get("index/7/12.json")).toString()).signed;
    const shard63 = JSON.parse(Buffer.from(files.get("index/7/63.json")).toString()).signed;
    shard12.features.checkout = shard63.features.checkout;
    const bytes = await signedFile(shard12, [fx.indexKey]);
    files.set("index/7/12.json", bytes);
    const top = JSON.parse(Buffer.from(files.get("remote-index.json")).toString()).signed;
    top.bins.shards["12"] = {
      sha256: Buffer.from(await crypto.subtle.digest("SHA-256", bytes)).toString("hex"),
      length: bytes.length,
      sequence: top.bins.shards["12"].sequence,
    };
    files.set("remote-index.json", await signedFile(top, [fx.indexKey]));
    fx.serving = files;
    const report = await fx.host({ features: ["search"] }).refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "mismatch", file: "index/7/12.json" } });
    assert.match(report.refused.search.message, /checkout/);
  });

  test("expired: remote-index.json past its expires_at refuses the refresh; releases.json past it refuses its feature", async () => {
    fx.origin.hook = (path, signed) => (path === "remote-index.json" ? { ...signed, expires_at: PAST } : signed);
    await fx.origin.publish();
    fx.serving = null;
    let report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "expired", file: "remote-index.json" } });
    fx.origin.hook = (path, signed) => (path === "features/search/releases.json" ? { ...signed, expires_at: PAST } : signed);
    await fx.origin.publish();
    report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "expired", file: "features/search/releases.json" } });
    fx.origin.hook = (_p, s) => s;
    await fx.origin.publish();
  });

  test("not-found: a needed feature that no shard lists, or with no version on the channel", async () => {
    fx.serving = null;
    let report = await fx.host({ features: ["checkout", "nope"] }).refresh();
    assert.deepEqual(codes(report.refused), { nope: { code: "not-found", file: "remote-index.json" } }, "bin 65 has no shard");
    assert.deepEqual(report.loaded, { checkout: "1.0.0" });
    report = await fx.host({ features: ["f60"] }).refresh();
    assert.deepEqual(codes(report.refused), { f60: { code: "not-found", file: "index/7/12.json" } }, "bin 12's shard does not list f60");

    fx.origin.setFeature("cart", { versions: { "0.1.0": SEARCH_V1 }, stable: null, canary: "0.1.0" });
    await fx.origin.publish();
    report = await fx.host({ features: ["cart"] }).refresh();
    assert.deepEqual(codes(report.refused), { cart: { code: "not-found", file: "features/cart/releases.json" } });
    report = await fx.host({ features: ["cart"], channel: "canary" }).refresh();
    assert.deepEqual(report.loaded, { cart: "0.1.0" });
    fx.origin.removeFeature("cart");
    await fx.origin.publish();
  });

  test("too-large: a pin or an asset size over the host's limits is refused before downloading", async () => {
    fx.serving = null;
    const from = fx.server.requests.length;
    let report = await fx.host({ features: ["checkout", "search"], limits: { maxPinnedBytes: 100, timeoutMs: 2000 } }).refresh();
    assert.deepEqual(codes(report.refused), {
      checkout: { code: "too-large", file: "index/7/63.json" },
      search: { code: "too-large", file: "index/7/12.json" },
    });
    assert.ok(!fx.server.requests.slice(from).some((p) => p.startsWith("index/")), "no shard was downloaded");
    // A host of every feature that never read a shard cannot name its features: the shard's path is the key.
    report = await fx.host({ limits: { maxPinnedBytes: 100, timeoutMs: 2000 } }).refresh();
    assert.deepEqual(codes(report.refused), {
      "index/7/12.json": { code: "too-large", file: "index/7/12.json" },
      "index/7/63.json": { code: "too-large", file: "index/7/63.json" },
    });
    report = await fx.host({ limits: { maxArtifactBytes: 30, timeoutMs: 2000 } }).refresh();
    assert.equal(report.refused.checkout.code, "too-large");
    assert.match(report.refused.checkout.file, /^artifacts\/[0-9a-f]{64}\.js$/);
    assert.deepEqual(report.loaded, { search: "1.0.0" });
  });

  test("a refusal event per refusal, a refresh event per refresh", async () => {
    tamper(fx, "remote-index.json", () => Buffer.from("{}"));
    const host = fx.host();
    const seen = [];
    host.addEventListener("refused", (e) => seen.push(["refused", e.detail.key, e.detail.refusal.code]));
    host.addEventListener("refresh", (e) => seen.push(["refresh", e.detail.ok]));
    await host.refresh();
    assert.deepEqual(seen, [
      ["refused", "remote-index.json", "malformed"],
      ["refresh", false],
    ]);
  });
});

describe("limits on every download", () => {
  let fx;
  before(async () => (fx = await makeFixture()));
  after(() => fx.close());

  test("an endless body is cut off at the limit (too-large), quickly", async () => {
    fx.server.behaviours.set("remote-index.json", { endless: true });
    try {
      const start = Date.now();
      const report = await fx.host({ limits: { maxIndexBytes: 64 * 1024, timeoutMs: 5000 } }).refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "too-large", file: "remote-index.json" } });
      assert.ok(Date.now() - start < 3000, "stopped reading at the limit");
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("an endless asset is cut off at its manifest size (length)", async () => {
    const path = await fx.origin.artifactOf("search", "1.0.0", "index.js");
    fx.server.behaviours.set(path, { endless: true });
    try {
      const report = await fx.host().refresh();
      assert.deepEqual(codes(report.refused), { search: { code: "length", file: path } });
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("a body dripping slower than the deadline is refused (timeout) at the deadline; other bins load", async () => {
    fx.server.behaviours.set("index/7/12.json", { drip_bytes_per_second: 64 });
    try {
      const start = Date.now();
      const report = await fx.host({ features: ["checkout", "search"], limits: { timeoutMs: 700 } }).refresh();
      const took = Date.now() - start;
      assert.deepEqual(codes(report.refused), { search: { code: "timeout", file: "index/7/12.json" } });
      assert.deepEqual(report.loaded, { checkout: "1.0.0" });
      assert.ok(took >= 650 && took < 2500, `gave up at the deadline (${took} ms)`);
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("a Content-Length over the limit is refused from the headers, without waiting for the body", async () => {
    fx.server.behaviours.set("remote-index.json", { declare_length: 50 * 1024 * 1024 });
    try {
      const start = Date.now();
      const report = await fx.host({ limits: { timeoutMs: 5000 } }).refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "too-large", file: "remote-index.json" } });
      assert.ok(Date.now() - start < 2000, "did not wait for the body");
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("a server that accepts the connection and never answers: timeout", async () => {
    fx.server.behaviours.set("remote-index.json", { handler: () => undefined });
    try {
      const report = await fx.host({ limits: { timeoutMs: 300 } }).refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "timeout", file: "remote-index.json" } });
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("limits are checked when the host is made", () => {
    assert.throws(() => fx.host({ limits: { maxIndexBytes: 0 } }), /limits\.maxIndexBytes must be a positive number/);
    assert.throws(() => fx.host({ limits: { maxIndex: 5 } }), /limits\.maxIndex is not a limit/);
  });
});

describe("changes between refreshes", () => {
  let fx;
  before(async () => (fx = await makeFixture()));
  after(() => fx.close());

  test("change events say what was added, upgraded and dropped", async () => {
    const host = fx.host();
    const changes = [];
    host.addEventListener("change", (e) => changes.push(e.detail));
    await host.refresh();
    assert.deepEqual(changes, [
      { featureId: "checkout", from: null, to: "1.0.0" },
      { featureId: "search", from: null, to: "1.0.0" },
    ]);

    changes.length = 0;
    let report = await host.refresh();
    assert.deepEqual(changes, [], "nothing changed, no event");
    assert.deepEqual(report.changed, []);

    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "2.0.0" });
    fx.origin.removeFeature("search");
    await fx.origin.publish();
    report = await host.refresh();
    assert.deepEqual(changes, [
      { featureId: "checkout", from: "1.0.0", to: "2.0.0" },
      { featureId: "search", from: "1.0.0", to: null },
    ]);
    assert.deepEqual(report.loaded, { checkout: "2.0.0" });
    assert.deepEqual(report.changed, ["checkout", "search"]);
    assert.equal(host.features.get("checkout").sequence, 2);
    assert.equal(host.features.has("search"), false);
  });

  test("canary: a canary host loads the canary version while one runs, a stable host the stable one", async () => {
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "1.0.0", canary: "2.0.0" });
    await fx.origin.publish();
    const stable = fx.host({ features: ["checkout"] });
    const canary = fx.host({ features: ["checkout"], channel: "canary" });
    await stable.refresh();
    await canary.refresh();
    assert.equal(stable.features.get("checkout").version, "1.0.0");
    assert.equal(stable.features.get("checkout").channel, "stable");
    assert.equal(canary.features.get("checkout").version, "2.0.0");
    assert.equal(canary.features.get("checkout").channel, "canary");
  });

  test("refreshes run one at a time, and start() refreshes until stop()", async () => {
    let inFlight = 0;
    let most = 0;
    const counting = async (url, init) => {
      const isTop = url.endsWith("/remote-index.json");
      if (isTop) most = Math.max(most, ++inFlight);
      try {
        return await fetch(url, init);
      } finally {
        if (isTop) inFlight--;
      }
    };
    const host = fx.host({ fetch: counting, refreshIntervalMs: 20 });
    const reports = await Promise.all([host.refresh(), host.refresh(), host.refresh()]);
    assert.equal(most, 1, "never two top-level fetches at once");
    assert.ok(reports.every((r) => r.ok));

    let count = 0;
    host.addEventListener("refresh", () => count++);
    host.start();
    await new Promise((r) => setTimeout(r, 400));
    host.stop();
    const stopped = count;
    assert.ok(stopped >= 3, `refreshed ${stopped} times in 400 ms at 20 ms intervals`);
    await new Promise((r) => setTimeout(r, 150));
    assert.ok(count <= stopped + 1, "no refresh after stop() but the one running");
  });

  test("load() outside a browser says to use the Node host; an unknown feature is not-found", async () => {
    const host = fx.host();
    await host.refresh();
    await assert.rejects(host.load("checkout"), /NodeFeatureHost/);
    await assert.rejects(host.load("nope"), (e) => e instanceof RefusalError && e.code === "not-found");
  });
});

describe("dev keys", () => {
  test("a dev index key counts only with allowDevKeys, and the refusal says why", async () => {
    const fx = await makeFixture({ publish: false });
    try {
      const devKey = await makeKey(5, { dev: true });
      await fx.origin.addRoot({ version: 1, rootKeys: [fx.rootKey], indexKeys: [devKey] });
      await fx.origin.publish();
      let report = await fx.host().refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "signature", file: "remote-index.json" } });
      assert.match(report.refused["remote-index.json"].message, /dev key did not count/);
      report = await fx.host({ allowDevKeys: true }).refresh();
      assert.equal(report.ok, true);
      assert.deepEqual(report.loaded, { checkout: "1.0.0", search: "1.0.0" });
    } finally {
      await fx.close();
    }
  });

  test("a dev root key in the trust file counts only with allowDevKeys", async () => {
    const fx = await makeFixture({ publish: false });
    try {
      const devRoot = await makeKey(6, { dev: true });
      await fx.origin.addRoot({ version: 1, rootKeys: [devRoot], indexKeys: [fx.indexKey] });
      await fx.origin.publish();
      fx.trust = trustFile([devRoot]);
      let report = await fx.host().refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "root", file: "roots/1.json" } });
      assert.match(report.refused["remote-index.json"].message, /dev key did not count/);
      report = await fx.host({ allowDevKeys: true }).refresh();
      assert.equal(report.ok, true);
    } finally {
      await fx.close();
    }
  });
});

describe("thresholds", () => {
  test("a keyid counts once: two signatures by one key do not meet a threshold of 2", async () => {
    const fx = await makeFixture({ publish: false });
    try {
      const second = await makeKey(3);
      await fx.origin.addRoot({ version: 1, rootKeys: [fx.rootKey], indexKeys: [fx.indexKey, second], indexThreshold: 2 });
      fx.origin.signers = (path) => (path === "remote-index.json" ? [fx.indexKey, fx.indexKey] : [fx.indexKey, second]);
      await fx.origin.publish();
      let report = await fx.host().refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "signature", file: "remote-index.json" } });
      fx.origin.signers = () => [fx.indexKey, second];
      await fx.origin.publish();
      report = await fx.host().refresh();
      const host = fx.host();
      report = await host.refresh();
      assert.equal(report.ok, true);
      assert.deepEqual([...host.features.get("checkout").keyids].sort(), [fx.indexKey.keyid, second.keyid].sort());
    } finally {
      await fx.close();
    }
  });
});

describe("the trust file is configuration: a bad one throws one line naming the field", () => {
  const url = "https://cdn.example/remote-index.json";
  let key;
  before(async () => (key = await makeKey(1)));
  const make = (trust) => new FeatureHost({ indexUrl: url, trust, storage: memoryState() });
  const entry = () => ({ keyid: key.keyid, alg: "ed25519", public_key: key.publicKey });

  for (const [name, trust, message] of [
    ["not an object", () => "[1]", /trust file: is not a JSON object/],
    ["not JSON", () => "{", /trust file: is not JSON/],
    ["threshold 0", () => ({ threshold: 0, keys: [entry()] }), /threshold must be an integer of at least 1/],
    ["threshold over the key count", () => ({ threshold: 2, keys: [entry()] }), /threshold 2 is more than the 1 key/],
    ["unknown alg", () => ({ keys: [{ ...entry(), alg: "rsa" }] }), /keys\[0\]\.alg must be "ed25519"/],
    ["key not 32 bytes", () => ({ keys: [{ ...entry(), public_key: "AAAA" }] }), /keys\[0\]\.public_key is not standard base64 of a 32-byte/],
    ["keyid mismatch", () => ({ keys: [{ ...entry(), keyid: "0".repeat(64) }] }), /keys\[0\]\.keyid does not match its public_key/],
    ["duplicate keyid", () => ({ threshold: 1, keys: [entry(), entry()] }), /keys\[1\]\.keyid .* is listed twice/],
    ["root_version 0", () => ({ root_version: 0, keys: [entry()] }), /root_version must be an integer of at least 1/],
    ["root_version 1.5", () => ({ root_version: 1.5, keys: [entry()] }), /root_version must be an integer/],
  ]) {
    test(name, () => {
      assert.throws(() => make(trust()), (e) => {
        assert.match(e.message, message);
        assert.equal(e.message.includes("\n"), false);
        return true;
      });
    });
  }

  test("a good trust file, as text or object, gives the same fingerprint", () => {
    const trust = { threshold: 1, keys: [entry()] };
    const a = make(trust);
    const b = make(JSON.stringify(trust, null, 2));
    assert.match(a.trustFingerprint, /^[0-9a-f]{64}$/);
    assert.equal(a.trustFingerprint, b.trustFingerprint);
  });

  test("other options are checked too", () => {
    assert.throws(() => new FeatureHost({ indexUrl: "ftp://x/remote-index.json", trust: { keys: [entry()] } }), /indexUrl must be http\(s\)/);
    assert.throws(() => new FeatureHost({ indexUrl: url, trust: { keys: [entry()] }, channel: "beta" }), /channel must be "stable" or "canary"/);
    assert.throws(() => new FeatureHost({ indexUrl: url, trust: { keys: [entry()] }, features: ["Bad_Id"] }), /features\[0\] "Bad_Id" is not a valid feature id/);
  });
});
