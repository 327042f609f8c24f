import canonicalize from "canonicalize";
import { decodeUtf8 } from "./bytes.js";
import { refuse } from "./errors.js";

export type JsonObject = Record<string, unknown>;

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/**
 * The RFC 8785 (JCS) text of a JSON value, by the `canonicalize` package (a
 * well-kept implementation: security-relevant code is not ours to write when a
 * library does it; its cost on a cold page, ~1 ms for remote-index.json, is a
 * small part of a load). Throws for values JCS cannot encode (a lone surrogate).
 */
export function jcs(value: unknown): string {
  const text = canonicalize(value);
  if (text === undefined) throw new TypeError("value has no JSON encoding");
  return text;
}

/**
 * Steps 1 and 2 of section 3.1: the bytes are UTF-8, parse as one JSON object,
 * and are exactly the JCS encoding of what they parse to. Re-serializing is the
 * check: it refuses duplicate members (JSON.parse keeps the last, JCS writes one),
 * whitespace, escapes and number forms JCS does not write, a BOM, and lone
 * surrogates (jcs throws for them: JCS has no encoding for them). `parsed` sees
 * the object as soon as it is parsed, before it is checked.
 */
export function parseCanonical(bytes: Uint8Array, file: string, parsed?: (value: JsonObject) => void): { value: JsonObject; text: string } {
  let text: string;
  try {
    text = decodeUtf8(bytes);
  } catch {
    refuse("malformed", file, `${file} is not UTF-8: the origin served a damaged file; republish it`);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    refuse("malformed", file, `${file} is not JSON (${(error as Error).message}); republish it`);
  }
  if (!isObject(value)) {
    refuse("malformed", file, `${file} is JSON but not an object; republish it`);
  }
  parsed?.(value);
  let canonical: string;
  try {
    canonical = jcs(value);
  } catch (error) {
    refuse(
      "not-canonical",
      file,
      `${file} has no RFC 8785 encoding this host can check (${(error as Error).message}): a lone surrogate or absurd nesting; republish it`,
    );
  }
  if (canonical !== text) {
    refuse(
      "not-canonical",
      file,
      `${file} is not in RFC 8785 form (whitespace, member order, escapes, number form or a duplicate member): ` +
        "two parsers could disagree about what was signed; republish it with a server that writes canonical files",
    );
  }
  return { value, text };
}
