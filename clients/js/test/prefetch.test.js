// Prefetching: a file starts downloading as soon as its parent is parsed, before
// the parent is verified. A parent refused must still be what is reported, its
// children's downloads must neither surface (no unhandled rejection) nor be
// used, and a download nobody asked for must be stopped when the refresh ends.
import assert from "node:assert/strict";
import { afterEach, test } from "node:test";
import { Downloads } from "../dist/downloads.js";
import { codes, makeFixture } from "./helpers/fixture.js";
import { jcs, makeKey } from "./helpers/keys.js";

const unhandled = [];
process.on("unhandledRejection", (reason) => unhandled.push(reason));

afterEach(async () => {
  // Rejections are reported once the microtasks drain: give them a turn.
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual(unhandled.splice(0), [], "no download surfaced as an unhandled rejection");
});

async function withFixture(fn) {
  const fx = await makeFixture();
  try {
    await fn(fx);
  } finally {
    await fx.close();
  }
}

/** A fetch that records each request's origin path when it starts; `answer(path)` may replace its response. */
function recordingFetch(fx, answer = () => undefined) {
  const started = [];
  const fetch = (input, init) => {
    const path = input.slice(fx.server.base.length);
    started.push(path);
    return answer(path, init) ?? globalThis.fetch(input, init);
  };
  return { fetch, started };
}

/** A response that never comes: it ends only when the request is aborted, and records that. */
function hanging(init, aborted, path) {
  return new Promise((_, reject) =>
    init.signal.addEventListener("abort", () => {
      aborted.push(path);
      reject(init.signal.reason);
    }),
  );
}

test("a refused remote-index.json wins over the shard it names, whose download is stopped when the refresh ends", () =>
  withFixture(async (fx) => {
    // Signed by a key root 1 does not list: it parses (and names its shards), then fails its signatures.
    const stranger = await makeKey(9);
    fx.origin.signers = (path) => (path === "remote-index.json" ? [stranger] : null);
    await fx.origin.publish();
    const shard = await fx.origin.shardOf("search");
    const aborted = [];
    const { fetch, started } = recordingFetch(fx, (path, init) => (path === shard ? hanging(init, aborted, path) : undefined));
    const report = await fx.host({ features: ["search"], fetch, limits: { timeoutMs: 10_000 } }).refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "signature", file: "remote-index.json" } });
    assert.deepEqual(report.loaded, {});
    assert.ok(started.includes(shard), "the shard was requested as soon as remote-index.json parsed");
    assert.deepEqual(aborted, [shard], "its download was stopped, not left to its 10 s deadline");
  }));

test("a shard refused after its releases.json was prefetched: the shard's refusal is reported, not the prefetch's failure", () =>
  withFixture(async (fx) => {
    const stranger = await makeKey(9);
    fx.origin.signers = (path) => (path.startsWith("index/") ? [stranger] : null);
    await fx.origin.publish();
    const releases = "features/search/releases.json";
    const { fetch, started } = recordingFetch(fx, (path) => (path === releases ? Promise.reject(new TypeError("network down")) : undefined));
    const report = await fx.host({ features: ["search"], fetch }).refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "signature", file: await fx.origin.shardOf("search") } });
    assert.deepEqual(report.loaded, {});
    assert.ok(started.includes(releases), "releases.json was requested while the shard's signatures were checked");
  }));

test("a manifest its releases.json does not pin: the assets it names may be prefetched, but the refusal is the manifest's and nothing is served", () =>
  withFixture(async (fx) => {
    const manifest = "features/search/1.0.0/manifest.json";
    const forged = JSON.parse(Buffer.from(fx.origin.files.get(manifest)).toString());
    forged.assets = [{ path: "index.js", size: 9, sha256: "e".repeat(64) }];
    fx.serving = new Map(fx.origin.files);
    fx.serving.set(manifest, new TextEncoder().encode(jcs(forged)));
    const forgedAsset = `artifacts/${"e".repeat(64)}.js`;
    const { fetch, started } = recordingFetch(fx);
    const host = fx.host({ features: ["search"], fetch });
    const report = await host.refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "hash", file: manifest } });
    assert.deepEqual(report.loaded, {});
    assert.equal(host.features.size, 0);
    assert.ok(started.includes(forgedAsset), "the forged manifest's asset was prefetched when it arrived (and 404s): never used");
  }));

test("prefetching keeps each download's bounds: nothing over a limit is requested early", () =>
  withFixture(async (fx) => {
    const { fetch, started } = recordingFetch(fx);
    const report = await fx.host({ features: ["checkout"], fetch, limits: { maxArtifactBytes: 30 } }).refresh();
    assert.equal(report.refused.checkout.code, "too-large");
    const large = await fx.origin.artifactOf("checkout", "1.0.0", "index.js");
    assert.ok(!started.includes(large), "an asset listed over maxArtifactBytes is never requested");
  }));

test("a host needing one feature still fetches each of its files once", () =>
  withFixture(async (fx) => {
    const { fetch, started } = recordingFetch(fx);
    const report = await fx.host({ features: ["checkout"], fetch }).refresh();
    assert.deepEqual(report.loaded, { checkout: "1.0.0" });
    assert.equal(new Set(started).size, started.length, `a file fetched twice: ${started}`);
    assert.equal(started.length, 8, `remote-index.json, roots/1.json, the shard, releases.json, the manifest and 3 assets: ${started}`);
  }));

// ---- Downloads on its own

function request(file, { max = 100, fetch }) {
  return { url: new URL(`http://origin.test/${file}`), file, max, overCode: "length", maxIs: "its pinned length", revalidate: false, timeoutMs: 5000, fetch };
}

function fakeOrigin() {
  const calls = [];
  const fetch = (url, init) => {
    calls.push(url);
    if (url.endsWith("/never")) return hanging(init, [], url);
    return Promise.resolve(new Response(new TextEncoder().encode(`bytes of ${url}`)));
  };
  return { calls, fetch };
}

test("Downloads: get() takes the prefetch of the very same request only, once", async () => {
  const { calls, fetch } = fakeOrigin();
  const downloads = new Downloads(4);
  const early = downloads.prefetch(request("a", { fetch }));
  assert.ok(early);
  assert.equal(downloads.prefetch(request("a", { fetch })), undefined, "started once");
  assert.equal(await downloads.get(request("a", { fetch })), await early);
  assert.equal(calls.length, 1);
  await downloads.get(request("a", { fetch }));
  assert.equal(calls.length, 2, "a prefetch is handed over once; asking again downloads again");
  downloads.prefetch(request("b", { fetch, max: 100 }));
  await downloads.get(request("b", { fetch, max: 50 }));
  assert.equal(calls.length, 4, "another bound is another request: the prefetched bytes are not used");
  downloads.close();
});

test("Downloads: at most maxEarly prefetches in flight, and close() aborts those nobody asked for", async () => {
  const { calls, fetch } = fakeOrigin();
  const downloads = new Downloads(2);
  const first = downloads.prefetch(request("never", { fetch }));
  assert.ok(downloads.prefetch(request("x", { fetch })));
  assert.equal(downloads.prefetch(request("y", { fetch })), undefined, "a third while two are in flight: not started");
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.ok(downloads.prefetch(request("z", { fetch })), "started once one finished");
  downloads.close();
  await assert.rejects(first, "the hanging prefetch was aborted");
  assert.deepEqual(calls.map((u) => u.slice(-5)), ["never", "est/x", "est/z"]);
});
