// Strictness a verifier can get wrong: signature malleability, base64 spellings,
// times that do not exist, paths that climb out, what the bundle contains.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";
import { bundleOptions } from "../scripts/bundle-options.mjs";
import { codes, makeFixture, SEARCH_V1 } from "./helpers/fixture.js";
import { jcs } from "./helpers/keys.js";

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const L = 2n ** 252n + 27742317777372353535851937790883648493n;

async function withFixture(fn) {
  const fx = await makeFixture();
  try {
    await fn(fx);
  } finally {
    await fx.close();
  }
}

/** Serves remote-index.json with its first signature's `sig` replaced by `change(sig)`. */
function changeTopSignature(fx, change) {
  const file = JSON.parse(Buffer.from(fx.origin.files.get("remote-index.json")).toString());
  file.signatures[0].sig = change(file.signatures[0].sig);
  fx.serving = new Map(fx.origin.files);
  fx.serving.set("remote-index.json", new TextEncoder().encode(jcs(file)));
}

test("a malleated signature (S + L, the same point for a lax verifier) does not count", () =>
  withFixture(async (fx) => {
    changeTopSignature(fx, (sig) => {
      const bytes = Buffer.from(sig, "base64");
      let s = 0n;
      for (let i = 63; i >= 32; i--) s = (s << 8n) | BigInt(bytes[i]);
      s += L;
      assert.ok(s < 2n ** 256n, "fixed key seed: S + L still fits in 32 bytes");
      for (let i = 32; i < 64; i++) {
        bytes[i] = Number(s & 0xffn);
        s >>= 8n;
      }
      return bytes.toString("base64");
    });
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "signature", file: "remote-index.json" } });
  }));

test("a signature spelt another way in base64 (non-zero padding bits, URL alphabet, no padding) does not count", () =>
  withFixture(async (fx) => {
    const variants = [
      // The 86th character carries 2 bits of the last byte and 4 unused ones: set one of those.
      (sig) => sig.slice(0, 85) + B64[B64.indexOf(sig[85]) + 1] + "==",
      (sig) => sig.replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, ""),
      (sig) => sig.replace(/=+$/, ""),
    ];
    for (const change of variants) {
      changeTopSignature(fx, (sig) => {
        const out = change(sig);
        assert.notEqual(out, sig);
        assert.deepEqual(Buffer.from(out, "base64"), Buffer.from(sig, "base64"), "a lax decoder reads the same 64 bytes");
        return out;
      });
      const report = await fx.host().refresh();
      assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "signature", file: "remote-index.json" } }, change.toString());
    }
  }));

test("malformed: a time that does not exist, a version that is not a path segment, an asset path that climbs out", () =>
  withFixture(async (fx) => {
    fx.origin.hook = (path, signed) => (path === "remote-index.json" ? { ...signed, expires_at: "2126-02-30T00:00:00Z" } : signed);
    await fx.origin.publish();
    let report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "malformed", file: "remote-index.json" } });
    assert.match(report.refused["remote-index.json"].message, /expires_at is not a time/);

    fx.origin.hook = (path, signed) =>
      path === "features/search/releases.json"
        ? { ...signed, active_version: "..", channels: { stable: "..", canary: null }, versions: [{ ...signed.versions[0], version: ".." }] }
        : signed;
    await fx.origin.publish();
    report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "malformed", file: "features/search/releases.json" } });

    fx.origin.hook = (_p, s) => s;
    fx.origin.setFeature("search", { versions: { "1.0.1": { ...SEARCH_V1, "../evil.js": "x" } }, stable: "1.0.1" });
    await fx.origin.publish();
    report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "malformed", file: "features/search/1.0.1/manifest.json" } });
    assert.match(report.refused.search.message, /not a relative path/);
  }));

test("mismatch: a manifest of another feature served under this one's pin", () =>
  withFixture(async (fx) => {
    fx.origin.hook = (path, signed) => signed;
    const files = fx.origin.files;
    // Point search's version at checkout's manifest (signed by the index key, so only the id disagrees).
    const checkoutManifest = files.get("features/checkout/1.0.0/manifest.json");
    const sha = Buffer.from(await crypto.subtle.digest("SHA-256", checkoutManifest)).toString("hex");
    fx.origin.hook = (path, signed) =>
      path === "features/search/releases.json" ? { ...signed, versions: [{ ...signed.versions[0], manifest_sha256: sha }] } : signed;
    await fx.origin.publish();
    fx.origin.files.set("features/search/1.0.0/manifest.json", checkoutManifest);
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { search: { code: "mismatch", file: "features/search/1.0.0/manifest.json" } });
  }));

test("the browser bundle is one ES module without Node imports, under 17 KB gzipped, and builds to the same bytes", async () => {
  const bundle = readFileSync(new URL("../dist/releasecontrol-host.min.js", import.meta.url));
  assert.doesNotMatch(bundle.toString(), /from\s*"node:|import\("node:|require\(/);
  assert.ok(gzipSync(bundle, { level: 9 }).length <= 17 * 1024, `${gzipSync(bundle, { level: 9 }).length} bytes gzipped`);
  const build = () =>
    esbuild.build({ ...bundleOptions, entryPoints: [new URL("../src/index.ts", import.meta.url).pathname], write: false });
  const [a, b] = [await build(), await build()];
  assert.equal(Buffer.compare(a.outputFiles[0].contents, b.outputFiles[0].contents), 0);
  assert.equal(Buffer.compare(Buffer.from(a.outputFiles[0].contents), bundle), 0, "dist matches a fresh build of src");
});

test("the package's exports: the core for browsers and Node, and ./node for the Node extras", async () => {
  const core = await import("@releasecontrol/host");
  const node = await import("@releasecontrol/host/node");
  for (const name of ["FeatureHost", "binOf", "memoryState", "localStorageState", "RefusalError", "DEFAULT_LIMITS"]) {
    assert.ok(name in core, name);
  }
  for (const name of ["NodeFeatureHost", "fileState", "FeatureHost"]) assert.ok(name in node, name);
  assert.equal(node.FeatureHost, core.FeatureHost, "one FeatureHost class, whichever entry imported it");
  assert.deepEqual(core.DEFAULT_LIMITS, {
    maxIndexBytes: 2 * 1024 * 1024,
    maxRootBytes: 1024 * 1024,
    maxPinnedBytes: 16 * 1024 * 1024,
    maxManifestBytes: 1024 * 1024,
    maxArtifactBytes: 64 * 1024 * 1024,
    timeoutMs: 10_000,
  });
});
