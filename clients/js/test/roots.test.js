// The chain of roots (section 4.2): rotation, revocation, stale roots, expiry.
import assert from "node:assert/strict";
import { test } from "node:test";
import { codes, makeFixture } from "./helpers/fixture.js";
import { makeKey, trustFile } from "./helpers/keys.js";
import { PAST } from "./helpers/origin.js";

async function withFixture(fn) {
  const fx = await makeFixture();
  try {
    await fn(fx);
  } finally {
    await fx.close();
  }
}

test("an online key rotated through root 2 is accepted via the chain; the old top level is then a stale root", () =>
  withFixture(async (fx) => {
    const host = fx.host();
    assert.equal((await host.refresh()).rootVersion, 1);
    const before = fx.origin.snapshot();

    const newIndex = await makeKey(3);
    await fx.origin.addRoot({ version: 2, rootKeys: [fx.rootKey], indexKeys: [newIndex] });
    await fx.origin.publish();
    let report = await host.refresh();
    assert.equal(report.ok, true);
    assert.equal(report.rootVersion, 2);
    assert.deepEqual(host.features.get("checkout").keyids, [newIndex.keyid]);
    assert.equal(host.features.get("checkout").rootVersion, 2);

    fx.serving = before;
    report = await host.refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "stale-root", file: "remote-index.json" } });
    assert.match(report.refused["remote-index.json"].message, /root 1, older than the root 2/);
    assert.deepEqual(report.loaded, { checkout: "1.0.0", search: "1.0.0" }, "last good state kept");
    assert.equal(report.rootVersion, 2);
  }));

test("a new host follows several roots in one refresh, even through an expired one", () =>
  withFixture(async (fx) => {
    await fx.origin.addRoot({ version: 1, rootKeys: [fx.rootKey], indexKeys: [fx.indexKey], expires: PAST });
    const k3 = await makeKey(3);
    const k4 = await makeKey(4);
    await fx.origin.addRoot({ version: 2, rootKeys: [fx.rootKey], indexKeys: [k3] });
    await fx.origin.addRoot({ version: 3, rootKeys: [fx.rootKey], indexKeys: [k4] });
    await fx.origin.publish();
    const report = await fx.host().refresh();
    assert.equal(report.ok, true);
    assert.equal(report.rootVersion, 3);
  }));

test("root keys rotate too: a root signed by the old and the new root keys; a trust file may pin the new root", () =>
  withFixture(async (fx) => {
    const newRoot = await makeKey(7);
    await fx.origin.addRoot({ version: 2, rootKeys: [newRoot], indexKeys: [fx.indexKey], signers: [fx.rootKey, newRoot] });
    await fx.origin.publish();
    assert.equal((await fx.host().refresh()).rootVersion, 2, "old trust file still works");
    fx.trust = trustFile([newRoot], { rootVersion: 2 });
    const from = fx.server.requests.length;
    const report = await fx.host().refresh();
    assert.equal(report.ok, true);
    assert.ok(!fx.server.requests.slice(from).includes("roots/1.json"), "starts from the pinned root");
  }));

test("root: a root not signed by the previous root's keys is refused, and so is one not signed by its own", () =>
  withFixture(async (fx) => {
    const host = fx.host();
    await host.refresh();
    const intruder = await makeKey(8);
    await fx.origin.addRoot({ version: 2, rootKeys: [intruder], indexKeys: [intruder], signers: [intruder] });
    await fx.origin.publish();
    let report = await host.refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "root", file: "roots/2.json" } });
    assert.match(report.refused["remote-index.json"].message, /signature/);
    assert.deepEqual(report.loaded, { checkout: "1.0.0", search: "1.0.0" });

    const newRoot = await makeKey(7);
    await fx.origin.addRoot({ version: 2, rootKeys: [newRoot], indexKeys: [fx.indexKey], signers: [fx.rootKey] });
    await fx.origin.publish();
    report = await host.refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "root", file: "roots/2.json" } });
  }));

test("root: a missing root, and a top level too many roots ahead", () =>
  withFixture(async (fx) => {
    fx.origin.rootVersion = 2; // names root 2, which was never written
    await fx.origin.publish();
    let report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "root", file: "roots/2.json" } });
    assert.match(report.refused["remote-index.json"].message, /HTTP 404/);

    fx.origin.rootVersion = 40;
    await fx.origin.publish();
    report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "root", file: "remote-index.json" } });
    assert.match(report.refused["remote-index.json"].message, /more than 32 versions/);
  }));

test("the roots verified before a failure stay trusted", () =>
  withFixture(async (fx) => {
    const host = fx.host();
    await host.refresh();
    const k3 = await makeKey(3);
    await fx.origin.addRoot({ version: 2, rootKeys: [fx.rootKey], indexKeys: [k3] });
    const intruder = await makeKey(8);
    await fx.origin.addRoot({ version: 3, rootKeys: [intruder], indexKeys: [intruder], signers: [intruder] });
    await fx.origin.publish();
    const report = await host.refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "root", file: "roots/3.json" } });
    assert.equal(report.rootVersion, 2);
  }));

test("expired: the trusted root itself past its expires_at", () =>
  withFixture(async (fx) => {
    await fx.origin.addRoot({ version: 1, rootKeys: [fx.rootKey], indexKeys: [fx.indexKey], expires: PAST });
    await fx.origin.publish();
    const report = await fx.host().refresh();
    assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "expired", file: "roots/1.json" } });
  }));

test("revoking an index key forgets the high-water marks it set (recovery from a fast-forward attack)", async () => {
  for (const revoke of [true, false]) {
    const fx = await makeFixture();
    try {
      const host = fx.host();
      await host.refresh();
      // The index key leaks; the attacker signs a huge sequence and hosts accept it.
      fx.origin.sequence = 999;
      await fx.origin.publish();
      assert.equal((await host.refresh()).remoteSequence, 1000);
      // The operator rotates: root 2, with (revoke) or without removing the leaked key.
      const fresh = await makeKey(3);
      await fx.origin.addRoot({ version: 2, rootKeys: [fx.rootKey], indexKeys: revoke ? [fresh] : [fx.indexKey, fresh] });
      fx.origin.indexKeys = [fresh];
      fx.origin.sequence = 1;
      await fx.origin.publish();
      const report = await host.refresh();
      if (revoke) {
        assert.equal(report.ok, true, JSON.stringify(report.refused));
        assert.equal(report.remoteSequence, 2);
      } else {
        assert.deepEqual(codes(report.refused), { "remote-index.json": { code: "rollback", file: "remote-index.json" } });
      }
    } finally {
      await fx.close();
    }
  }
});
