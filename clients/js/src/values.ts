import { isObject, type JsonObject } from "./canonical.js";
import { refuse } from "./errors.js";

// The value rules of section 3.2, as checks that refuse with `malformed` and
// name the file and the field. `where` is the field's path, e.g. "signed.bins.bits".

const SHA256 = /^[0-9a-f]{64}$/;
const FEATURE_ID = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const TIME = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z$/;

export function isSha256(value: unknown): value is string {
  return typeof value === "string" && SHA256.test(value);
}

export function isFeatureId(value: unknown): value is string {
  return typeof value === "string" && FEATURE_ID.test(value);
}

export function isInteger(value: unknown, min = 0): value is number {
  return typeof value === "number" && Number.isSafeInteger(value) && value >= min;
}

/** A value from the origin, for a message: JSON, cut short (the origin chooses its length). */
export function show(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 48 ? `${text.slice(0, 45)}…` : text;
}

function malformed(file: string, where: string, what: string): never {
  refuse("malformed", file, `${file}: ${where} ${what}; the file does not follow host protocol v2, republish it`);
}

export function field(obj: JsonObject, name: string, file: string, where: string): unknown {
  if (!Object.hasOwn(obj, name)) malformed(file, `${where}.${name}`, "is missing");
  return obj[name];
}

export function objectAt(obj: JsonObject, name: string, file: string, where: string): JsonObject {
  const value = field(obj, name, file, where);
  if (!isObject(value)) malformed(file, `${where}.${name}`, "is not an object");
  return value;
}

export function stringAt(obj: JsonObject, name: string, file: string, where: string): string {
  const value = field(obj, name, file, where);
  if (typeof value !== "string") malformed(file, `${where}.${name}`, "is not a string");
  return value;
}

export function integerAt(obj: JsonObject, name: string, file: string, where: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  const value = field(obj, name, file, where);
  if (!isInteger(value, min) || value > max) {
    malformed(file, `${where}.${name}`, `is not an integer from ${min} to ${max} (found ${show(value)})`);
  }
  return value;
}

export function sha256At(obj: JsonObject, name: string, file: string, where: string): string {
  const value = field(obj, name, file, where);
  if (!isSha256(value)) malformed(file, `${where}.${name}`, "is not 64 lowercase hex characters");
  return value;
}

/** Milliseconds since the epoch of a `YYYY-MM-DDTHH:MM:SSZ` time that exists, or null. */
export function parseTime(value: unknown): number | null {
  if (typeof value !== "string") return null;
  const m = TIME.exec(value);
  if (!m) return null;
  const [y, mo, d, h, mi, s] = m.slice(1).map(Number) as [number, number, number, number, number, number];
  const ms = Date.UTC(y, mo - 1, d, h, mi, s);
  // Date.UTC rolls 02-30 over to 03-02; a time that does not exist does not round-trip.
  const back = new Date(ms);
  if (
    back.getUTCFullYear() !== y ||
    back.getUTCMonth() !== mo - 1 ||
    back.getUTCDate() !== d ||
    back.getUTCHours() !== h ||
    back.getUTCMinutes() !== mi ||
    back.getUTCSeconds() !== s
  ) {
    return null;
  }
  return ms;
}

export function timeAt(obj: JsonObject, name: string, file: string, where: string): number {
  const ms = parseTime(field(obj, name, file, where));
  if (ms === null) malformed(file, `${where}.${name}`, "is not a time YYYY-MM-DDTHH:MM:SSZ that exists");
  return ms;
}

/** A pin: what a parent says about the file it points to. */
export interface Pin {
  sha256: string;
  length: number;
  sequence: number;
}

export function pinAt(obj: JsonObject, name: string, file: string, where: string, minSequence: number): Pin {
  const pin = objectAt(obj, name, file, where);
  const at = `${where}.${name}`;
  return {
    sha256: sha256At(pin, "sha256", file, at),
    length: integerAt(pin, "length", file, at, 1),
    sequence: integerAt(pin, "sequence", file, at, minSequence),
  };
}

export { malformed };
