// Sticky bucketing against the shared table tests/vectors/bucketing.json (written by
// tests/vectors/generate.py from the formula itself); the Python host's tests read the
// same file, so both hosts put every user on the same side.
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { BUCKETS, MAX_BUCKETING_KEY_BYTES, bucket, checkBucketingKey, newBucketingKey, onCanary } from "../dist/index.js";

const VECTORS = process.env.RELEASECONTROL_VECTORS ?? fileURLToPath(new URL("../../../tests/vectors/", import.meta.url));
const TABLE = JSON.parse(readFileSync(`${VECTORS}/bucketing.json`, "utf8"));

const show = (row) => `${row.feature_id.slice(0, 12)}/${JSON.stringify(row.key).slice(0, 30)}`;

describe("the shared table", () => {
  test("is complete: an empty table would pass every row", () => {
    assert.equal(TABLE.weight_scale, BUCKETS);
    assert.equal(TABLE.max_key_bytes, MAX_BUCKETING_KEY_BYTES);
    assert.ok(TABLE.buckets.length >= 30 && TABLE.sides.length >= 20 && TABLE.invalid_keys.length >= 5);
  });

  test("every (feature id, key) lands in the bucket it lists, from its UTF-8 bytes", () => {
    for (const row of TABLE.buckets) {
      assert.equal(Buffer.from(row.key, "utf8").toString("hex"), row.key_utf8_hex, show(row));
      assert.equal(bucket(row.feature_id, row.key), row.bucket, show(row));
    }
  });

  test("at each weight around a key's bucket, the key is on the side it lists", () => {
    for (const row of TABLE.sides) {
      assert.equal(onCanary(row.weight, row.feature_id, row.key), row.canary, `${show(row)} at ${row.weight}`);
    }
  });

  test("each invalid key is refused with the table's words after bucketingKey", () => {
    for (const row of TABLE.invalid_keys) {
      assert.throws(() => checkBucketingKey(row.key), { name: "RangeError", message: `bucketingKey ${row.refusal}` }, row.why);
      assert.throws(() => bucket("checkout", row.key), { message: `bucketingKey ${row.refusal}` }, row.why);
    }
  });

  test("the worked example's steps follow from its inputs", () => {
    const ex = TABLE.example;
    const bytes = Buffer.from(ex.hashed_bytes_hex, "hex");
    assert.equal(bytes.toString("latin1"), "releasecontrol-bucket-v1\0checkout\0user-42");
    const digest = createHash("sha256").update(bytes).digest();
    assert.equal(digest.toString("hex"), ex.sha256);
    assert.equal(digest.readUInt32BE(0), ex.uint32);
    assert.equal(ex.uint32 % 10000, ex.bucket);
    assert.equal(bucket("checkout", "user-42"), ex.bucket);
  });
});

describe("keys", () => {
  test("any well-formed string of 1 to 256 UTF-8 bytes is a key, whatever its characters", () => {
    for (const key of ["x", "k".repeat(256), "é".repeat(128), "🙂".repeat(64), "\0"]) {
      assert.equal(checkBucketingKey(key), key);
      const b = bucket("checkout", key);
      assert.ok(Number.isInteger(b) && b >= 0 && b < BUCKETS);
    }
  });

  test("a key that is not a string is a TypeError naming the field", () => {
    for (const [key, what] of [[42, "number"], [null, "null"], [undefined, "undefined"], [new Uint8Array(4), "object"]]) {
      assert.throws(() => checkBucketingKey(key), { name: "TypeError", message: `bucketingKey must be a string of 1 to 256 bytes in UTF-8, not ${what}` });
    }
    assert.throws(() => checkBucketingKey("", "userId"), { message: /^userId must be 1 to 256 bytes/ });
  });

  test("a feature id that is not one is refused: it is hashed as well", () => {
    assert.throws(() => bucket("Checkout", "user-42"), { name: "RangeError", message: 'featureId "Checkout" is not a feature id' });
  });

  test("a new key is 128 random bits in lowercase hex, never twice the same", () => {
    const keys = new Set(Array.from({ length: 100 }, newBucketingKey));
    assert.equal(keys.size, 100);
    for (const k of keys) assert.match(k, /^[0-9a-f]{32}$/);
  });
});

describe("distribution", () => {
  test("at weight 2,500, 25 % ± 1.5 % of 20,000 random keys get the canary (5 standard deviations)", () => {
    const keys = Array.from({ length: 20_000 }, () => randomBytes(16).toString("hex"));
    const share = keys.filter((k) => onCanary(2500, "checkout", k)).length / keys.length;
    assert.ok(share >= 0.235 && share <= 0.265, `share ${share}`);
  });

  test("sticky: a key on the canary at weight w is on it at every w' > w", () => {
    const ramp = [0, 1, 100, 500, 2500, 5000, 9999, 10000];
    for (let i = 0; i < 2000; i++) {
      const key = randomBytes(16).toString("hex");
      const sides = ramp.map((w) => onCanary(w, "checkout", key));
      const first = sides.indexOf(true);
      assert.ok(first > 0, `${key}: on the canary at 0 % or never`);
      assert.deepEqual(sides, ramp.map((_, j) => j >= first), key);
    }
  });

  test("a weight off the scale is a RangeError", () => {
    for (const w of [-1, 10001, 2.5]) assert.throws(() => onCanary(w, "checkout", "user-42"), { name: "RangeError", message: /^weight must be an integer from 0 to 10000/ });
  });
});
