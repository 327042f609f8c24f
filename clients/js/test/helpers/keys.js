// Ed25519 test keys from fixed seeds, through WebCrypto (the same API the library verifies with).
import canonicalize from "canonicalize";

const PKCS8_PREFIX = Uint8Array.from([0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20]);

export function b64(bytes) {
  return Buffer.from(bytes).toString("base64");
}

export function sha256Hex(bytes) {
  return crypto.subtle.digest("SHA-256", bytes).then((d) => Buffer.from(d).toString("hex"));
}

/** A key from a 32-byte seed (or a number n: 32 bytes of n). `dev` marks it a dev key where it is listed. */
export async function makeKey(seed, { dev = false } = {}) {
  const seedBytes = typeof seed === "number" ? new Uint8Array(32).fill(seed) : seed;
  const pkcs8 = new Uint8Array([...PKCS8_PREFIX, ...seedBytes]);
  const privateKey = await crypto.subtle.importKey("pkcs8", pkcs8, { name: "Ed25519" }, true, ["sign"]);
  const jwk = await crypto.subtle.exportKey("jwk", privateKey);
  const raw = new Uint8Array(Buffer.from(jwk.x, "base64url"));
  return { privateKey, raw, publicKey: b64(raw), keyid: await sha256Hex(raw), dev };
}

export async function signBytes(key, bytes) {
  return b64(new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, key.privateKey, bytes)));
}

export const jcs = (value) => canonicalize(value);

/** A signed file's bytes: {"signatures": [...], "signed": ...} in RFC 8785 form. */
export async function signedFile(signed, keys) {
  const body = new TextEncoder().encode(jcs(signed));
  const signatures = [];
  for (const key of keys) signatures.push({ keyid: key.keyid, sig: await signBytes(key, body) });
  return new TextEncoder().encode(jcs({ signatures, signed }));
}

/** A trust file pinning `keys` as the root keys of `rootVersion`. */
export function trustFile(keys, { threshold = 1, rootVersion } = {}) {
  const trust = {
    threshold,
    keys: keys.map((k) => ({ keyid: k.keyid, alg: "ed25519", public_key: k.publicKey, ...(k.dev ? { dev: true } : {}) })),
  };
  if (rootVersion !== undefined) trust.root_version = rootVersion;
  return trust;
}
