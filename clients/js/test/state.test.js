// What a host remembers (section 5): rollback refused across refreshes and restarts.
import assert from "node:assert/strict";
import { mkdtemp, readFile, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { fileState } from "../dist/node.js";
import { CHECKOUT_V1, CHECKOUT_V2, codes, makeFixture } from "./helpers/fixture.js";
import { makeKey, trustFile } from "./helpers/keys.js";

async function withFixture(fn) {
  const fx = await makeFixture();
  const dir = await mkdtemp(join(tmpdir(), "rc-state-"));
  try {
    await fn(fx, join(dir, "state.json"), dir);
  } finally {
    await fx.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test("rollback: an older remote-index.json is refused after a newer one, across refreshes and across a new host on the same state file", () =>
  withFixture(async (fx, stateFile, dir) => {
    const old = fx.origin.snapshot(); // sequence 1
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "2.0.0" });
    await fx.origin.publish(); // sequence 2
    const host = fx.host({ storage: fileState(stateFile) });
    assert.deepEqual((await host.refresh()).loaded, { checkout: "2.0.0", search: "1.0.0" });

    fx.serving = old;
    let report = await host.refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "rollback", file: "remote-index.json" } });
    assert.match(report.refused["remote-index.json"].message, /sequence 1, lower than 2/);
    assert.deepEqual(report.loaded, { checkout: "2.0.0", search: "1.0.0" }, "the newer versions are still served");

    const saved = JSON.parse(await readFile(stateFile, "utf8"));
    assert.equal(saved.index.sequence, 2);
    assert.deepEqual(Object.keys(saved.releases).sort(), ["checkout", "search"]);
    assert.deepEqual(await readdir(dir), ["state.json"], "no temp file left behind");

    // A restarted host (new instance, same state file) refuses the replay too.
    const restarted = fx.host({ storage: fileState(stateFile) });
    report = await restarted.refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "rollback", file: "remote-index.json" } });
    assert.deepEqual(report.loaded, {});
    fx.serving = null;
    assert.deepEqual((await restarted.refresh()).loaded, { checkout: "2.0.0", search: "1.0.0" });
  }));

test("rollback: the same sequence with another signed body is refused", () =>
  withFixture(async (fx, stateFile) => {
    const host = fx.host({ storage: fileState(stateFile) });
    await host.refresh();
    fx.origin.sequence -= 1; // sign sequence 1 again, with another body
    fx.origin.hook = (path, signed) => (path === "remote-index.json" ? { ...signed, issued_at: "2026-01-02T00:00:00Z" } : signed);
    await fx.origin.publish();
    const report = await host.refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "rollback", file: "remote-index.json" } });
    assert.match(report.refused["remote-index.json"].message, /different signed body/);
  }));

test("rollback: a releases.json older than the one seen is refused for its feature, under a new top level", () =>
  withFixture(async (fx, stateFile) => {
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "2.0.0" });
    await fx.origin.publish(); // checkout releases sequence 2
    const host = fx.host({ storage: fileState(stateFile) });
    await host.refresh();
    // The server is made to sign checkout's sequence-1 releases.json again (new top level, new shard).
    fx.origin.features.get("checkout").sequence = 0;
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1 }, stable: "1.0.0" });
    await fx.origin.publish();
    const report = await fx.host({ storage: fileState(stateFile) }).refresh();
    assert.deepEqual(codes(report.refused), { checkout: { code: "rollback", file: "features/checkout/releases.json" } });
    assert.deepEqual(report.loaded, { search: "1.0.0" });
  }));

test("a state file that cannot be read stops the host instead of forgetting it; it is left as it was", () =>
  withFixture(async (fx, stateFile) => {
    await writeFile(stateFile, "{ not json");
    const host = fx.host({ storage: fileState(stateFile) });
    await assert.rejects(host.refresh(), /saved state is not JSON; fix it, or delete it to start over/);
    assert.equal(await readFile(stateFile, "utf8"), "{ not json");
    await writeFile(stateFile, JSON.stringify({ format: "something-else" }));
    await assert.rejects(fx.host({ storage: fileState(stateFile) }).refresh(), /is not in the format/);
  }));

test("a state that cannot be saved rejects the refresh and applies nothing", () =>
  withFixture(async (fx) => {
    const storage = { load: async () => null, save: async () => Promise.reject(new Error("disk full")) };
    const host = fx.host({ storage });
    await assert.rejects(host.refresh(), /cannot save the state \(disk full\); nothing from this refresh was applied/);
    assert.equal(host.features.size, 0);
  }));

test("the state names the trust file's fingerprint; a changed trust file follows the chain again from its root", () =>
  withFixture(async (fx, stateFile) => {
    const host = fx.host({ storage: fileState(stateFile) });
    await host.refresh();
    const saved = JSON.parse(await readFile(stateFile, "utf8"));
    assert.equal(saved.trust, host.trustFingerprint);
    assert.equal(saved.root.version, 1);

    const other = await makeKey(9);
    fx.trust = trustFile([other]);
    const from = fx.server.requests.length;
    const report = await fx.host({ storage: fileState(stateFile) }).refresh();
    assert.ok(fx.server.requests.slice(from).includes("roots/1.json"), "root 1 fetched again");
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "root", file: "roots/1.json" } });
  }));
