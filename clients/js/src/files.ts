import { isBinName, binOfSync, MAX_BITS } from "./bins.js";
import { BUCKETS } from "./bucketing.js";
import { decodeUtf8, fromBase64Strict } from "./bytes.js";
import { isObject, type JsonObject } from "./canonical.js";
import { refuse } from "./errors.js";
import { sha256HexSync } from "./sha256.js";
import type { Envelope } from "./signed.js";
import type { PublicKey, Role } from "./trust.js";
import {
  field,
  integerAt,
  isFeatureId,
  isInteger,
  isSha256,
  malformed,
  objectAt,
  pinAt,
  sha256At,
  show,
  stringAt,
  timeAt,
  type Pin,
} from "./values.js";

// The fields of each file (sections 3.3 to 3.6 and 6 step 5): `malformed` for a
// missing field or a wrong type, `mismatch` where a value disagrees with what
// pinned the file or where it was found.

function mismatch(file: string, what: string): never {
  refuse(
    "mismatch",
    file,
    `${file}: ${what}; the origin serves a file in the wrong place (mix and match): the host keeps its last good state`,
  );
}

function checkType(env: Envelope, type: string): void {
  const found = stringAt(env.signed, "type", env.file, "signed");
  if (found !== type) mismatch(env.file, `signed.type is ${show(found)}, not "${type}"`);
}

// SemVer 2.0 (semver.org's regular expression): every version is one, so a version is
// always a safe path segment of features/<id>/<version>/manifest.json (3.6).
const SEMVER =
  /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

export function isPathSafeVersion(value: unknown): value is string {
  return typeof value === "string" && SEMVER.test(value);
}

// ---- roots/<N>.json (3.3)

export interface RootFile {
  version: number;
  expiresAt: number;
  keys: ReadonlyMap<string, PublicKey>;
  roles: { root: Role; index: Role };
}

function readRole(roles: JsonObject, name: string, keys: ReadonlyMap<string, PublicKey>, file: string): Role {
  const role = objectAt(roles, name, file, "signed.roles");
  const at = `signed.roles.${name}`;
  const keyids = field(role, "keyids", file, at);
  if (!Array.isArray(keyids) || keyids.length === 0) malformed(file, `${at}.keyids`, "is not a non-empty array");
  const seen = new Set<string>();
  for (const keyid of keyids) {
    if (typeof keyid !== "string" || !keys.has(keyid)) malformed(file, `${at}.keyids`, `names ${show(keyid)}, which is not in signed.keys`);
    if (seen.has(keyid)) malformed(file, `${at}.keyids`, `lists ${keyid.slice(0, 8)}… twice`);
    seen.add(keyid);
  }
  const threshold = integerAt(role, "threshold", file, at, 1, keyids.length);
  return { keyids: keyids as string[], threshold };
}

export function readRoot(env: Envelope, expectedVersion: number): RootFile {
  const { file, signed } = env;
  checkType(env, "root");
  const version = integerAt(signed, "version", file, "signed", 1);
  if (version !== expectedVersion) mismatch(file, `signed.version is ${version}, not ${expectedVersion} as its path says`);
  timeAt(signed, "issued_at", file, "signed");
  const expiresAt = timeAt(signed, "expires_at", file, "signed");
  const keysObj = objectAt(signed, "keys", file, "signed");
  const keys = new Map<string, PublicKey>();
  for (const [keyid, entry] of Object.entries(keysObj)) {
    const at = `signed.keys.${keyid.slice(0, 8)}…`;
    if (!isObject(entry)) malformed(file, at, "is not an object");
    if (entry["alg"] !== "ed25519") malformed(file, `${at}.alg`, `is ${show(entry["alg"])}, not "ed25519"`);
    const raw = typeof entry["public_key"] === "string" ? fromBase64Strict(entry["public_key"]) : null;
    if (!raw || raw.length !== 32) malformed(file, `${at}.public_key`, "is not standard base64 of 32 bytes");
    if (sha256HexSync(raw) !== keyid) malformed(file, at, "is not the SHA-256 of its public_key");
    const dev = entry["dev"] ?? false;
    if (typeof dev !== "boolean") malformed(file, `${at}.dev`, "is not true or false");
    keys.set(keyid, { raw, dev });
  }
  const roles = objectAt(signed, "roles", file, "signed");
  return {
    version,
    expiresAt,
    keys,
    roles: { root: readRole(roles, "root", keys, file), index: readRole(roles, "index", keys, file) },
  };
}

// ---- remote-index.json (3.4)

export interface RemoteIndexFile {
  sequence: number;
  rootVersion: number;
  expiresAt: number;
  bits: number;
  shards: ReadonlyMap<string, Pin>;
}

/** Read before the signatures are checked: it says which root to check them against. */
export function readRootVersion(env: Envelope): number {
  return integerAt(env.signed, "root_version", env.file, "signed", 1);
}

export function readRemoteIndex(env: Envelope): RemoteIndexFile {
  const { file, signed } = env;
  checkType(env, "remote-index");
  const sequence = integerAt(signed, "sequence", file, "signed");
  const rootVersion = readRootVersion(env);
  timeAt(signed, "issued_at", file, "signed");
  const expiresAt = timeAt(signed, "expires_at", file, "signed");
  const bins = objectAt(signed, "bins", file, "signed");
  const bits = integerAt(bins, "bits", file, "signed.bins", 0, MAX_BITS);
  const shardsObj = objectAt(bins, "shards", file, "signed.bins");
  const shards = new Map<string, Pin>();
  for (const bin of Object.keys(shardsObj)) {
    if (!isBinName(bin, bits)) malformed(file, `signed.bins.shards."${bin}"`, `is not a bin name for ${bits} bits`);
    shards.set(bin, pinAt(shardsObj, bin, file, "signed.bins.shards", 0));
  }
  return { sequence, rootVersion, expiresAt, bits, shards };
}

// ---- index/<bits>/<bin>.json (3.5)

export interface ShardFile {
  expiresAt: number;
  features: ReadonlyMap<string, Pin>;
}

export function readShard(env: Envelope, bits: number, bin: string, pin: Pin): ShardFile {
  const { file, signed } = env;
  checkType(env, "index-shard");
  const foundBits = integerAt(signed, "bits", file, "signed");
  const foundBin = stringAt(signed, "bin", file, "signed");
  const sequence = integerAt(signed, "sequence", file, "signed");
  timeAt(signed, "issued_at", file, "signed");
  const expiresAt = timeAt(signed, "expires_at", file, "signed");
  const featuresObj = objectAt(signed, "features", file, "signed");
  const features = new Map<string, Pin>();
  for (const id of Object.keys(featuresObj)) {
    if (!isFeatureId(id)) malformed(file, `signed.features."${id}"`, "is not a valid feature id");
    features.set(id, pinAt(featuresObj, id, file, "signed.features", 1));
  }
  if (foundBits !== bits) mismatch(file, `signed.bits is ${foundBits}, but remote-index.json uses ${bits}`);
  if (foundBin !== bin) mismatch(file, `signed.bin is ${show(foundBin)}, but it was fetched as bin "${bin}"`);
  if (sequence !== pin.sequence) {
    mismatch(file, `signed.sequence is ${sequence}, but remote-index.json pins ${pin.sequence} (a shard of another top level)`);
  }
  for (const id of features.keys()) {
    const home = binOfSync(id, bits);
    if (home !== bin) mismatch(file, `it lists feature "${id}", whose bin is "${home}", not "${bin}": a shard cannot speak for another bin`);
  }
  return { expiresAt, features };
}

// ---- features/<id>/releases.json (3.6)

export interface ReleasesFile {
  sequence: number;
  expiresAt: number;
  stable: string | null;
  canary: string | null;
  /** `canary_weight` (out of 10,000), null when absent: a file signed before weights, or no canary. */
  canaryWeight: number | null;
  /** version → manifest_sha256 */
  versions: ReadonlyMap<string, string>;
}

function versionOrNull(obj: JsonObject, name: string, file: string, where: string): string | null {
  const value = field(obj, name, file, where);
  if (value !== null && typeof value !== "string") malformed(file, `${where}.${name}`, "is neither a version string nor null");
  return value;
}

export function readReleases(env: Envelope, featureId: string, pin: Pin): ReleasesFile {
  const { file, signed } = env;
  checkType(env, "releases");
  const id = stringAt(signed, "feature_id", file, "signed");
  const sequence = integerAt(signed, "sequence", file, "signed", 1);
  timeAt(signed, "issued_at", file, "signed");
  const expiresAt = timeAt(signed, "expires_at", file, "signed");
  const channels = objectAt(signed, "channels", file, "signed");
  const stable = versionOrNull(channels, "stable", file, "signed.channels");
  const canary = versionOrNull(channels, "canary", file, "signed.channels");
  const active = field(signed, "active_version", file, "signed");
  if (active !== stable) malformed(file, "signed.active_version", `is ${show(active)}, not channels.stable ${show(stable)}`);
  const list = field(signed, "versions", file, "signed");
  if (!Array.isArray(list)) malformed(file, "signed.versions", "is not an array");
  const versions = new Map<string, string>();
  list.forEach((entry: unknown, i: number) => {
    const at = `signed.versions[${i}]`;
    if (!isObject(entry)) malformed(file, at, "is not an object");
    const version = stringAt(entry, "version", file, at);
    if (!isPathSafeVersion(version)) malformed(file, `${at}.version`, `${show(version)} is not a SemVer 2.0 version`);
    if (versions.has(version)) malformed(file, `${at}.version`, `lists ${show(version)} twice`);
    versions.set(version, sha256At(entry, "manifest_sha256", file, at));
    timeAt(entry, "published_at", file, at);
  });
  for (const [name, version] of [["stable", stable], ["canary", canary]] as const) {
    if (version !== null && !versions.has(version)) {
      malformed(file, `signed.channels.${name}`, `names ${show(version)}, which signed.versions does not list`);
    }
  }
  // canary_soak is informational (hosts do not act on it); an absent one reads as null.
  const soak = signed["canary_soak"] ?? null;
  if (soak !== null) {
    if (!isObject(soak)) malformed(file, "signed.canary_soak", "is neither null nor an object");
    const started = timeAt(soak, "started_at", file, "signed.canary_soak");
    const duration = integerAt(soak, "duration_seconds", file, "signed.canary_soak");
    const ends = timeAt(soak, "ends_at", file, "signed.canary_soak");
    if (ends !== started + duration * 1000) malformed(file, "signed.canary_soak.ends_at", "is not started_at + duration_seconds");
  }
  // Optional: absent in files signed before weights (read as 0 by hosts).
  let canaryWeight: number | null = null;
  if ((signed["canary_weight"] ?? null) !== null) {
    canaryWeight = integerAt(signed, "canary_weight", file, "signed", 0, BUCKETS);
    if (canary === null) malformed(file, "signed.canary_weight", "is set, but no canary runs");
  }
  if (id !== featureId) mismatch(file, `signed.feature_id is ${show(id)}, but its shard lists it as "${featureId}"`);
  if (sequence !== pin.sequence) mismatch(file, `signed.sequence is ${sequence}, but its shard pins ${pin.sequence}`);
  return { sequence, expiresAt, stable, canary, canaryWeight, versions };
}

// ---- features/<id>/<version>/manifest.json (6 step 5)

export interface ManifestAsset {
  path: string;
  size: number;
  sha256: string;
}

export interface Manifest {
  value: JsonObject;
  entry: string;
  assets: ManifestAsset[];
}

function isRelativePath(path: string): boolean {
  return !path.startsWith("/") && !path.includes("\\") && path.split("/").every((s) => s !== "" && s !== "." && s !== "..");
}

export function readManifest(bytes: Uint8Array, file: string, featureId: string, version: string): Manifest {
  let value: unknown;
  try {
    value = JSON.parse(decodeUtf8(bytes));
  } catch {
    malformed(file, "the file", "is not UTF-8 JSON");
  }
  if (!isObject(value)) malformed(file, "the file", "is not a JSON object");
  const id = stringAt(value, "id", file, "manifest");
  if (id !== featureId) mismatch(file, `id is ${show(id)}, not "${featureId}"`);
  const v = stringAt(value, "version", file, "manifest");
  if (v !== version) mismatch(file, `version is ${show(v)}, not ${show(version)}`);
  const entry = stringAt(value, "entry", file, "manifest");
  const list = field(value, "assets", file, "manifest");
  if (!Array.isArray(list) || list.length === 0) malformed(file, "manifest.assets", "is not a non-empty array");
  const assets: ManifestAsset[] = [];
  const paths = new Set<string>();
  list.forEach((item: unknown, i: number) => {
    const at = `manifest.assets[${i}]`;
    if (!isObject(item)) malformed(file, at, "is not an object");
    const path = stringAt(item, "path", file, at);
    if (!isRelativePath(path)) {
      malformed(file, `${at}.path`, `${show(path)} is not a relative path (no leading /, no \\, no empty, . or .. segment)`);
    }
    if (paths.has(path)) malformed(file, `${at}.path`, `${show(path)} is listed twice`);
    paths.add(path);
    const size = field(item, "size", file, at);
    if (!isInteger(size)) malformed(file, `${at}.size`, "is not an integer");
    const sha256 = field(item, "sha256", file, at);
    if (!isSha256(sha256)) malformed(file, `${at}.sha256`, "is not 64 lowercase hex characters");
    assets.push({ path, size, sha256 });
  });
  if (!paths.has(entry)) malformed(file, "manifest.entry", `${show(entry)} is not one of its assets' paths`);
  return { value, entry, assets };
}

/** `artifacts/<sha256><ext>` (section 2): the extension keeps the type a CDN serves it with. */
export function artifactPath(sha256: string, assetPath: string): string {
  const name = assetPath.slice(assetPath.lastIndexOf("/") + 1);
  const dot = name.lastIndexOf(".");
  const ext = dot > 0 && dot < name.length - 1 ? name.slice(dot).toLowerCase() : "";
  return `artifacts/${sha256}${/^\.[a-z0-9]{1,10}$/.test(ext) ? ext : ""}`;
}

export function releasesPath(featureId: string): string {
  return `features/${featureId}/releases.json`;
}

export function manifestPath(featureId: string, version: string): string {
  return `features/${featureId}/${version}/manifest.json`;
}
