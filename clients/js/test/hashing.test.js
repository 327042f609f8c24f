// The synchronous SHA-256 (its constants are computed, not listed) and the bins
// a refresh prepares through WebCrypto: the same digests and bins as ever.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import { binOfSync, prepareBins } from "../dist/bins.js";
import { sha256Sync } from "../dist/sha256.js";

test("sha256Sync agrees with node:crypto for every length up to a few blocks", () => {
  for (let n = 0; n < 300; n++) {
    const data = randomBytes(n);
    assert.equal(Buffer.from(sha256Sync(new Uint8Array(data))).toString("hex"), createHash("sha256").update(data).digest("hex"), `${n} bytes`);
  }
});

test("bins prepared through WebCrypto are the bins of bins.json", async () => {
  const bins = JSON.parse(readFileSync(new URL("../../../tests/vectors/bins.json", import.meta.url), "utf8"));
  const ids = Object.keys(bins);
  const unprepared = ids.map((id) => Object.keys(bins[id]).map((bits) => binOfSync(id, Number(bits))));
  await prepareBins(ids);
  ids.forEach((id, i) => {
    assert.deepEqual(Object.keys(bins[id]).map((bits) => binOfSync(id, Number(bits))), unprepared[i], id);
    for (const [bits, bin] of Object.entries(bins[id])) assert.equal(binOfSync(id, Number(bits)), bin, `${id} at ${bits} bits`);
  });
});
