import { encodeUtf8, toHex } from "./bytes.js";
import { sha256Sync } from "./sha256.js";
import { isFeatureId } from "./values.js";

// Section 11: sticky bucketing. While a canary runs, its signed canary_weight
// says how many of 10,000 buckets get it; a user's bucket of a feature is
//   uint32_be(SHA-256("releasecontrol-bucket-v1" 0x00 featureId 0x00 key)[0:4]) mod 10000
// the same in every host (tests/vectors/bucketing.json), and never changes, so
// while the weight only grows nobody leaves the canary.

/** The scale of `canary_weight`: 2500 serves the canary to a quarter of bucketed users. */
export const BUCKETS = 10_000;
/** The longest bucketing key, in bytes of UTF-8. */
export const MAX_BUCKETING_KEY_BYTES = 256;
const DOMAIN = "releasecontrol-bucket-v1";

export type Side = "stable" | "canary";

/**
 * `key` if it can be bucketed: a string of 1 to 256 bytes of UTF-8, well-formed
 * (a lone surrogate has no UTF-8 encoding). Throws a TypeError or RangeError
 * whose message names `name` and the limit.
 */
export function checkBucketingKey(key: unknown, name = "bucketingKey"): string {
  if (typeof key !== "string") {
    throw new TypeError(`${name} must be a string of 1 to ${MAX_BUCKETING_KEY_BYTES} bytes in UTF-8, not ${key === null ? "null" : typeof key}`);
  }
  // With the u flag, a pair is one character outside the range: only a lone surrogate matches.
  const lone = /[\ud800-\udfff]/u.exec(key)?.[0];
  if (lone) {
    throw new RangeError(`${name} must be well-formed Unicode: it holds a lone surrogate (U+${lone.charCodeAt(0).toString(16).toUpperCase()}), which has no UTF-8 encoding`);
  }
  const size = encodeUtf8(key).length;
  if (size < 1 || size > MAX_BUCKETING_KEY_BYTES) {
    throw new RangeError(`${name} must be 1 to ${MAX_BUCKETING_KEY_BYTES} bytes long in UTF-8, not ${size ? `${size} bytes` : "empty"}`);
  }
  return key;
}

/**
 * The bucket (0 to 9,999) of `key` for `featureId`, the same in every host.
 * Throws for a feature id that is not one (feature ids hold no 0x00, so the
 * hashed bytes name one (feature id, key) pair) or a key checkBucketingKey refuses.
 */
export function bucket(featureId: string, key: string): number {
  if (!isFeatureId(featureId)) throw new RangeError(`featureId ${JSON.stringify(featureId)} is not a feature id`);
  checkBucketingKey(key);
  const d = sha256Sync(encodeUtf8(`${DOMAIN}\0${featureId}\0${key}`));
  return (((d[0]! << 24) | (d[1]! << 16) | (d[2]! << 8) | d[3]!) >>> 0) % BUCKETS;
}

/**
 * Whether user `key` gets the running canary of `featureId` at `weight` (the
 * signed canary_weight; null, from a file signed before weights, counts as 0).
 */
export function onCanary(weight: number | null, featureId: string, key: string): boolean {
  const w = weight ?? 0;
  if (!Number.isInteger(w) || w < 0 || w > BUCKETS) throw new RangeError(`weight must be an integer from 0 to ${BUCKETS}, not ${String(weight)}`);
  return bucket(featureId, key) < w;
}

/** A random key for a host given none: 128 bits as 32 lowercase hex digits. */
export function newBucketingKey(): string {
  return toHex(globalThis.crypto.getRandomValues(new Uint8Array(16)));
}

/**
 * The side a key gets at `weight` (null: no canary runs) on a host following
 * `channel`, and the key's bucket when the bucket chose. `key` is called only then.
 */
export function sideFor(channel: Side, featureId: string, weight: number | null, key: () => string): { side: Side; bucket: number | null } {
  if (weight === null) return { side: "stable", bucket: null };
  if (channel === "canary") return { side: "canary", bucket: null };
  const b = bucket(featureId, key());
  return { side: b < weight ? "canary" : "stable", bucket: b };
}

/** The weight a host acts on: null when no canary runs, 0 when releases.json names none. */
export function weightOf(releases: { canary: string | null; canaryWeight: number | null }): number | null {
  return releases.canary === null ? null : (releases.canaryWeight ?? 0);
}

/**
 * The sides a host loads of a feature, its own first: with bothSides on a
 * stable host, both while 0 < weight < 10,000 (some keys get each) and the
 * other side has a version, so that a user is never handed a version not on disk.
 */
export function sidesToLoad(
  host: { channel: Side; bothSides: boolean },
  own: Side,
  weight: number | null,
  versions: { stable: string | null; canary: string | null },
): Side[] {
  const other: Side = own === "stable" ? "canary" : "stable";
  const both = host.bothSides && host.channel === "stable" && weight !== null && weight > 0 && weight < BUCKETS && versions[other] !== null;
  return both ? [own, other] : [own];
}
