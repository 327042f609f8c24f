import { isObject, jcs } from "./canonical.js";
import { fromBase64Strict } from "./bytes.js";
import { sha256HexSync } from "./sha256.js";
import { isInteger, isSha256 } from "./values.js";

/** What a host pins (section 4.1): the root keys of root version `root_version`. */
export interface TrustFile {
  threshold?: number;
  root_version?: number;
  keys: { keyid: string; alg: "ed25519"; public_key: string; dev?: boolean }[];
}

export interface PublicKey {
  raw: Uint8Array;
  dev: boolean;
}

export interface Role {
  keyids: string[];
  threshold: number;
}

export interface Trust {
  rootVersion: number;
  role: Role;
  keys: ReadonlyMap<string, PublicKey>;
  /** SHA-256 hex of the trust file's RFC 8785 bytes: a changed trust file starts the chain over. */
  fingerprint: string;
}

function fail(what: string): never {
  throw new Error(`trust file: ${what}`);
}

/**
 * Reads and checks a trust file (an object, or its JSON text). A bad trust file
 * is a configuration error, not a refusal: it throws one line naming the field.
 */
export function parseTrust(input: TrustFile | string): Trust {
  let value: unknown = input;
  if (typeof input === "string") {
    try {
      value = JSON.parse(input);
    } catch (error) {
      fail(`is not JSON (${(error as Error).message})`);
    }
  }
  if (!isObject(value)) fail("is not a JSON object");
  const keysValue = value["keys"];
  if (!Array.isArray(keysValue)) fail("keys is missing or not an array");
  const threshold = value["threshold"] ?? 1;
  if (!isInteger(threshold, 1)) fail(`threshold must be an integer of at least 1, not ${JSON.stringify(threshold)}`);
  if (threshold > keysValue.length) {
    fail(`threshold ${threshold} is more than the ${keysValue.length} key(s) listed`);
  }
  const rootVersion = value["root_version"] ?? 1;
  if (!isInteger(rootVersion, 1)) {
    fail(`root_version must be an integer of at least 1, not ${JSON.stringify(rootVersion)}`);
  }
  const keys = new Map<string, PublicKey>();
  keysValue.forEach((entry: unknown, i: number) => {
    const at = `keys[${i}]`;
    if (!isObject(entry)) fail(`${at} is not an object`);
    if (entry["alg"] !== "ed25519") fail(`${at}.alg must be "ed25519", not ${JSON.stringify(entry["alg"])}`);
    const raw = typeof entry["public_key"] === "string" ? fromBase64Strict(entry["public_key"]) : null;
    if (!raw || raw.length !== 32) fail(`${at}.public_key is not standard base64 of a 32-byte Ed25519 key`);
    const keyid = entry["keyid"];
    if (!isSha256(keyid)) fail(`${at}.keyid is not 64 lowercase hex characters`);
    if (sha256HexSync(raw) !== keyid) fail(`${at}.keyid does not match its public_key (it must be the SHA-256 of the raw key)`);
    if (keys.has(keyid)) fail(`${at}.keyid ${keyid.slice(0, 8)}… is listed twice`);
    const dev = entry["dev"] ?? false;
    if (typeof dev !== "boolean") fail(`${at}.dev must be true or false`);
    keys.set(keyid, { raw, dev });
  });
  let canonical: string;
  try {
    canonical = jcs(value);
  } catch (error) {
    fail(`has no RFC 8785 encoding (${(error as Error).message})`);
  }
  return {
    rootVersion,
    role: { keyids: [...keys.keys()], threshold },
    keys,
    fingerprint: sha256HexSync(canonical),
  };
}
