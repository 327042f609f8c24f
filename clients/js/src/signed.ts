import { isObject, jcs, parseCanonical, type JsonObject } from "./canonical.js";
import { encodeUtf8, fromBase64Strict } from "./bytes.js";
import { verifyEd25519 } from "./crypto.js";
import { refuse } from "./errors.js";
import type { PublicKey, Role } from "./trust.js";
import { isSha256, malformed, show } from "./values.js";

// Section 3.1: how every signed file (remote-index.json, roots, shards,
// releases.json) is read, in the order that decides which refusal it gets.

export const SCHEMA_VERSION = 2;

export interface Envelope {
  file: string;
  signed: JsonObject;
  signatures: { keyid: string; sig: string }[];
  /** The JCS bytes of `signed`: what is signed, and what rollback marks hash. */
  signedBytes: Uint8Array;
}

/**
 * Steps 1 to 4: UTF-8 JSON object, canonical, envelope shape, schema_version 2.
 * `parsed` sees the parsed file before any of its checks (to start downloading
 * what it names: prefetch.ts); nothing it reads there is trusted.
 */
export function readEnvelope(bytes: Uint8Array, file: string, parsed?: (value: JsonObject) => void): Envelope {
  const { value } = parseCanonical(bytes, file, parsed);
  const members = Object.keys(value).sort().join(",");
  if (members !== "signatures,signed") {
    malformed(file, "the file", `must have exactly the members "signatures" and "signed" (found ${members || "none"})`);
  }
  const signed = value["signed"];
  const signatures = value["signatures"];
  if (!isObject(signed)) malformed(file, "signed", "is not an object");
  if (!Array.isArray(signatures)) malformed(file, "signatures", "is not an array");
  signatures.forEach((entry: unknown, i: number) => {
    if (!isObject(entry) || Object.keys(entry).sort().join(",") !== "keyid,sig") {
      malformed(file, `signatures[${i}]`, 'must be an object with exactly "keyid" and "sig"');
    }
    if (!isSha256(entry["keyid"])) malformed(file, `signatures[${i}].keyid`, "is not 64 lowercase hex characters");
    if (typeof entry["sig"] !== "string") malformed(file, `signatures[${i}].sig`, "is not a string");
  });
  const version = signed["schema_version"];
  if (version !== SCHEMA_VERSION) {
    const found = version === undefined ? "no schema_version" : `schema_version ${show(version)}`;
    refuse(
      "schema-version",
      file,
      `${file} has ${found}; this host speaks ${SCHEMA_VERSION}: upgrade the host or the server so that they speak the same version`,
    );
  }
  // Step 2 made the file exactly {"signatures":<JCS>,"signed":<JCS>} ("signatures"
  // sorts first), so the JCS bytes of `signed` are the file's bytes after that
  // prefix, without the closing brace: no second serialization of the whole file.
  const prefix = encodeUtf8(`{"signatures":${jcs(signatures)},"signed":`).length;
  return {
    file,
    signed,
    signatures: signatures as { keyid: string; sig: string }[],
    signedBytes: bytes.subarray(prefix, bytes.length - 1),
  };
}

export interface SignatureCheck {
  role: Role;
  roleName: string;
  keys: ReadonlyMap<string, PublicKey>;
  allowDevKeys: boolean;
}

/**
 * Step 5: at least `threshold` distinct keyids of the role with a valid strict
 * Ed25519 signature of the JCS bytes of `signed`. Returns the keyids that counted.
 */
export async function checkSignatures(env: Envelope, check: SignatureCheck): Promise<string[]> {
  const { file } = env;
  const roleKeyids = new Set(check.role.keyids);
  const counted = new Set<string>();
  let devSkipped = 0;
  let invalid = 0;
  for (const { keyid, sig } of env.signatures) {
    if (counted.has(keyid) || !roleKeyids.has(keyid)) continue;
    const key = check.keys.get(keyid);
    if (!key) continue;
    if (key.dev && !check.allowDevKeys) {
      devSkipped++;
      continue;
    }
    const raw = fromBase64Strict(sig);
    if (raw && raw.length === 64 && (await verifyEd25519(key.raw, raw, env.signedBytes))) {
      counted.add(keyid);
    } else {
      invalid++;
    }
  }
  if (counted.size < check.role.threshold) {
    const notes = [];
    if (invalid) notes.push(`${invalid} signature(s) by the role's keys did not verify`);
    if (devSkipped) {
      notes.push(`${devSkipped} signature(s) by a dev key did not count: dev keys are insecure and allowed only with allowDevKeys / --allow-dev-keys`);
    }
    refuse(
      "signature",
      file,
      `${file} has ${counted.size} valid signature(s) from the ${check.roleName} role's keys, fewer than its threshold ${check.role.threshold}` +
        (notes.length ? ` (${notes.join("; ")})` : "") +
        ": it was not signed by keys this host trusts; do not serve it, and check the server's signing keys",
    );
  }
  return [...counted];
}

/** Step 7: a file is expired from its `expires_at` second on. */
export function checkExpiry(file: string, expires: number, now: number): void {
  if (expires <= now) {
    refuse(
      "expired",
      file,
      `${file} expired at ${new Date(expires).toISOString().replace(".000", "")}: ` +
        "the server has stopped re-signing it (or this host's clock is wrong); the host keeps its last good state",
    );
  }
}
