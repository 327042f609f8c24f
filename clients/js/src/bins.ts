import { encodeUtf8 } from "./bytes.js";
import { sha256, sha256Sync } from "./sha256.js";

// Section 3.7: a feature's bin is a prefix of the SHA-256 of its id, so a host
// finds the shard of any id without reading a table.

export const MAX_BITS = 16;

/** Hex digits of a bin name for `bits`: max(1, ceil(bits / 4)). */
export function binWidth(bits: number): number {
  return Math.max(1, Math.ceil(bits / 4));
}

function checkBits(bits: number): void {
  if (!Number.isInteger(bits) || bits < 0 || bits > MAX_BITS) {
    throw new RangeError(`bits must be an integer from 0 to ${MAX_BITS}, not ${String(bits)}`);
  }
}

function firstWord(digest: Uint8Array): number {
  return ((digest[0]! << 24) | (digest[1]! << 16) | (digest[2]! << 8) | digest[3]!) >>> 0;
}

function binFromDigest(digest: Uint8Array | number, bits: number): string {
  const first = typeof digest === "number" ? digest : firstWord(digest);
  // `>>> 32` would shift by 0 in JavaScript: 0 bits is one bin, "0".
  const value = bits === 0 ? 0 : first >>> (32 - bits);
  return value.toString(16).padStart(binWidth(bits), "0");
}

/** The first 32 bits of the SHA-256 of ids hashed ahead of need (prepareBins); bounded. */
const prepared = new Map<string, number>();

/**
 * Hashes `ids` through WebCrypto, all at once and off the main thread, so that
 * binOfSync finds them ready. A refresh maps every id a shard lists to its bin;
 * on a cold page the JavaScript SHA-256 runs interpreted, then stalls the main
 * thread (~1 ms) while the engine compiles it hot. Never rejects: an id that
 * is not ready is hashed when needed.
 */
export async function prepareBins(ids: readonly string[]): Promise<void> {
  if (prepared.size > 10_000) prepared.clear();
  await Promise.all(
    ids.map((id) =>
      prepared.has(id)
        ? undefined
        : sha256(encodeUtf8(id)).then(
            (digest) => void prepared.set(id, firstWord(digest)),
            () => undefined,
          ),
    ),
  );
}

/** The bin of `featureId` under `bits` (0 to 16), e.g. binOf("checkout", 7) → "63". */
export async function binOf(featureId: string, bits: number): Promise<string> {
  checkBits(bits);
  return binFromDigest(await sha256(encodeUtf8(featureId)), bits);
}

/** binOf without awaiting: ids are short, and a refresh maps many of them. */
export function binOfSync(featureId: string, bits: number): string {
  checkBits(bits);
  return binFromDigest(prepared.get(featureId) ?? sha256Sync(encodeUtf8(featureId)), bits);
}

/** True when `name` is a bin under `bits`: lowercase hex of binWidth(bits) digits, below 2^bits. */
export function isBinName(name: string, bits: number): boolean {
  if (name.length !== binWidth(bits) || !/^[0-9a-f]+$/.test(name)) return false;
  return parseInt(name, 16) < 2 ** bits;
}

export function shardPath(bits: number, bin: string): string {
  return `index/${bits}/${bin}.json`;
}

/** The bins (sorted) whose shards a host needing `features` (null: every one) reads, of the `listed` ones. */
export function neededBins(features: readonly string[] | null, bits: number, listed: Iterable<string>): string[] {
  const shards = new Set(listed);
  return [...(features ? new Set(features.map((id) => binOfSync(id, bits)).filter((bin) => shards.has(bin))) : shards)].sort();
}
