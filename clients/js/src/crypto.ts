import { toBase64 } from "./bytes.js";

// Ed25519 through WebCrypto: native in Node 20+ and in current browsers, so the
// library ships no curve code of its own.

// The order of the Ed25519 group. RFC 8032 strict verification refuses S >= L;
// the check is done here so that every runtime gives the same verdict whatever
// its WebCrypto does.
const L = 2n ** 252n + 27742317777372353535851937790883648493n;

/** Raised when this runtime's WebCrypto has no Ed25519: nothing can be verified here. */
export class Ed25519Unsupported extends Error {
  constructor(cause: unknown) {
    super(
      "this runtime's WebCrypto has no Ed25519 (Node 20+, Chrome 137+, Firefox 129+ and Safari 17+ have it); " +
        "nothing can be verified here",
      { cause },
    );
    this.name = "Ed25519Unsupported";
  }
}

const keys = new Map<string, Promise<CryptoKey>>();

function importKey(publicKey: Uint8Array): Promise<CryptoKey> {
  const id = toBase64(publicKey);
  let key = keys.get(id);
  if (!key) {
    key = crypto.subtle
      .importKey("raw", publicKey as Uint8Array<ArrayBuffer>, { name: "Ed25519" }, false, ["verify"])
      .catch((error: unknown) => {
        keys.delete(id);
        // A key of the right length that the runtime rejects means no Ed25519 here:
        // the 32-byte length is checked before a key gets this far.
        throw (error as Error)?.name === "NotSupportedError" ? new Ed25519Unsupported(error) : error;
      });
    keys.set(id, key);
  }
  return key;
}

function scalarIsCanonical(signature: Uint8Array): boolean {
  let s = 0n;
  for (let i = 63; i >= 32; i--) s = (s << 8n) | BigInt(signature[i]!);
  return s < L;
}

/**
 * True when `signature` (64 bytes) is a valid strict Ed25519 signature of
 * `message` by the raw 32-byte `publicKey`. An invalid public key point counts as
 * an invalid signature; a runtime without Ed25519 throws Ed25519Unsupported.
 */
export async function verifyEd25519(
  publicKey: Uint8Array,
  signature: Uint8Array,
  message: Uint8Array,
): Promise<boolean> {
  if (publicKey.length !== 32 || signature.length !== 64 || !scalarIsCanonical(signature)) return false;
  let key: CryptoKey;
  try {
    key = await importKey(publicKey);
  } catch (error) {
    if (error instanceof Ed25519Unsupported) throw error;
    return false;
  }
  try {
    return await crypto.subtle.verify(
      { name: "Ed25519" },
      key,
      signature as Uint8Array<ArrayBuffer>,
      message as Uint8Array<ArrayBuffer>,
    );
  } catch {
    return false;
  }
}
