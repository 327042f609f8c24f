// Node load(): verified files written to a cache, checked again, then imported by file URL.
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { NodeFeatureHost, RefusalError } from "../dist/node.js";
import { makeFixture } from "./helpers/fixture.js";

async function withHost(fn) {
  const fx = await makeFixture();
  const cacheDir = await mkdtemp(join(tmpdir(), "rc-cache-"));
  const make = () => new NodeFeatureHost({ indexUrl: fx.server.indexUrl, trust: fx.trust, cacheDir, limits: { timeoutMs: 2000 } });
  try {
    await fn({ fx, cacheDir, make });
  } finally {
    await fx.close();
    await rm(cacheDir, { recursive: true, force: true });
  }
}

test("load() imports a verified entry module, whose relative import of another asset works", () =>
  withHost(async ({ fx, cacheDir, make }) => {
    const host = make();
    assert.equal((await host.refresh()).ok, true);
    const mod = await host.load("checkout");
    assert.equal(mod.default, "checkout v1");

    const feature = host.features.get("checkout");
    const dir = join(cacheDir, "features", "checkout", feature.manifestSha256);
    assert.deepEqual((await readdir(dir, { recursive: true })).sort(), ["index.js", "lib", "lib/label.js", "style.css"]);
    assert.equal(await readFile(join(dir, "lib/label.js"), "utf8"), fx.origin.features.get("checkout").versions["1.0.0"]["lib/label.js"]);
    assert.ok((await readdir(join(cacheDir, "artifacts"))).includes(feature.assets[0].sha256), "verified bytes kept by SHA-256");
    assert.ok((await readFile(join(cacheDir, "state.json"), "utf8")).includes('"sequence":1'), "state kept in the cache dir by default");
  }));

test("load() refuses a cached file changed on disk, and runs nothing", () =>
  withHost(async ({ cacheDir, make }) => {
    const host = make();
    await host.refresh();
    const dir = await host.featureDir("search");
    // Someone edits the cached entry; a fresh process (new host, same cache) must not run it.
    await writeFile(join(dir, "index.js"), 'globalThis.__tampered = true; export default "evil";\n');
    const restarted = make();
    await restarted.refresh();
    await assert.rejects(restarted.load("search"), (e) => {
      assert.ok(e instanceof RefusalError);
      assert.equal(e.code, "hash");
      assert.match(e.file, /^artifacts\/[0-9a-f]{64}\.js$/);
      assert.match(e.message, /changed on disk/);
      return true;
    });
    assert.equal(globalThis.__tampered, undefined);
    assert.ok(dir.startsWith(cacheDir));
  }));

test("a changed file in the artifact cache is not trusted: the next refresh downloads and verifies it again", () =>
  withHost(async ({ fx, cacheDir, make }) => {
    const host = make();
    await host.refresh();
    const entry = host.features.get("search").assets[0];
    await writeFile(join(cacheDir, "artifacts", entry.sha256), "export default 'evil';\n");
    const artifact = await fx.origin.artifactOf("search", "1.0.0", "index.js");
    const from = fx.server.requests.length;
    const again = make();
    await again.refresh();
    assert.ok(fx.server.requests.slice(from).includes(artifact), "downloaded again");
    assert.equal((await again.load("search")).default, "search v1");
  }));

test("an unchanged verified asset is served from the cache, not downloaded again", () =>
  withHost(async ({ fx, make }) => {
    const host = make();
    await host.refresh();
    const from = fx.server.requests.length;
    await host.refresh();
    assert.ok(!fx.server.requests.slice(from).some((p) => p.startsWith("artifacts/")));
  }));
