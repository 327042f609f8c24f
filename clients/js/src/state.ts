import { checkBucketingKey } from "./bucketing.js";
import { isObject, jcs } from "./canonical.js";
import { isInteger, isSha256 } from "./values.js";

// Section 5: what a host remembers. One JSON text, replaced whole after a
// refresh, written only from checks that passed.

/** Where a host keeps its state: a file on a server, localStorage in a browser. */
export interface StateStorage {
  /** The text saved last, or null when nothing was ever saved. Throws when it cannot be read. */
  load(): Promise<string | null>;
  /** Replaces the saved text whole (never half-written). */
  save(text: string): Promise<void>;
}

/** A high-water mark: the highest sequence seen and the SHA-256 of the JCS bytes of `signed` at it. */
export interface Mark {
  sequence: number;
  sha256: string;
}

export interface HostState {
  /** SHA-256 of the trust file's RFC 8785 bytes: a changed trust file starts the chain over. */
  trust: string;
  root: { version: number; text: string } | null;
  index: Mark | null;
  releases: Record<string, Mark>;
  /** The random bucketing key this host drew at its first canary (never one it was given). */
  bucketingKey?: string;
}

const FORMAT = "releasecontrol-host-state/2";

export function emptyState(fingerprint: string): HostState {
  return { trust: fingerprint, root: null, index: null, releases: {} };
}

export function serializeState(state: HostState): string {
  return jcs({ format: FORMAT, ...state });
}

function isMark(value: unknown): value is Mark {
  return isObject(value) && isInteger(value["sequence"]) && isSha256(value["sha256"]);
}

/**
 * Reads saved state. Throws (the host refuses to start) when it is damaged:
 * forgetting it silently would forget the high-water marks, which is what a
 * rollback attack needs.
 */
export function parseState(text: string): HostState {
  const bad = (what: string): never => {
    throw new Error(`the host's saved state ${what}; fix it, or delete it to start over (forgetting the high-water marks)`);
  };
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    bad("is not JSON");
  }
  if (!isObject(value) || value["format"] !== FORMAT) bad(`is not in the format ${FORMAT}`);
  const v = value as Record<string, unknown>;
  if (typeof v["trust"] !== "string") bad("has no trust fingerprint");
  const root = v["root"];
  if (root !== null && !(isObject(root) && isInteger(root["version"], 1) && typeof root["text"] === "string")) bad("has a damaged root");
  if (v["index"] !== null && !isMark(v["index"])) bad("has a damaged remote-index.json mark");
  const releases = v["releases"];
  if (!isObject(releases) || !Object.values(releases).every(isMark)) bad("has damaged releases.json marks");
  const key = v["bucketingKey"];
  try {
    if (key !== undefined) checkBucketingKey(key);
  } catch {
    // A new key would quietly move this host to a random side of every running canary.
    bad("has a damaged bucketing key");
  }
  return {
    trust: v["trust"] as string,
    root: root as HostState["root"],
    index: v["index"] as Mark | null,
    releases: { ...(releases as Record<string, Mark>) },
    ...(key === undefined ? {} : { bucketingKey: key as string }),
  };
}

/** State kept in memory only: rollback protection lasts as long as the page or process. */
export function memoryState(): StateStorage {
  let text: string | null = null;
  return {
    async load() {
      return text;
    },
    async save(next: string) {
      text = next;
    },
  };
}

/** State in `localStorage` under `key` (a browser host's default: keyed by its index URL). */
export function localStorageState(key = "releasecontrol-host"): StateStorage {
  const storage = (): Storage => {
    const s = (globalThis as { localStorage?: Storage }).localStorage;
    if (!s) throw new Error("localStorage is not available here; pass another StateStorage");
    return s;
  };
  return {
    async load() {
      return storage().getItem(key);
    },
    async save(text: string) {
      storage().setItem(key, text);
    },
  };
}
