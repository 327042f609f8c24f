import { decodeUtf8 } from "./bytes.js";
import { RefusalError, refuse } from "./errors.js";
import { readRoot, type RootFile } from "./files.js";
import { checkSignatures, readEnvelope } from "./signed.js";
import type { Trust } from "./trust.js";

// Section 4.2: the chain of roots from what the trust file pins to what
// remote-index.json was signed under.

/** A host follows at most this many root versions in one refresh. */
export const MAX_ROOT_STEPS = 32;

export interface TrustedRoot {
  version: number;
  /** The root file's text, kept in the host's state. */
  text: string;
  file: RootFile;
}

export function rootPath(version: number): string {
  return `roots/${version}.json`;
}

export interface RootContext {
  trust: Trust;
  allowDevKeys: boolean;
  fetchRoot(version: number): Promise<Uint8Array>;
}

/** Every failure while following the chain is `root`, with the underlying reason kept in the message. */
function asRootRefusal(error: unknown, file: string): never {
  if (error instanceof RefusalError) {
    if (error.code === "root") throw error;
    throw new RefusalError(
      "root",
      file,
      `the chain of roots stops at ${file} (${error.code}: ${error.message}); the host keeps the roots it verified and its last good state`,
      { cause: error },
    );
  }
  throw error;
}

/** The first root: `roots/<root_version>.json` signed by the trust file's keys and threshold. */
export async function bootstrapRoot(ctx: RootContext): Promise<TrustedRoot> {
  const version = ctx.trust.rootVersion;
  const file = rootPath(version);
  try {
    const bytes = await ctx.fetchRoot(version);
    const env = readEnvelope(bytes, file);
    await checkSignatures(env, {
      role: ctx.trust.role,
      roleName: "trust file's root",
      keys: ctx.trust.keys,
      allowDevKeys: ctx.allowDevKeys,
    });
    const root = readRoot(env, version);
    return { version, text: decodeUtf8(bytes), file: root };
  } catch (error) {
    asRootRefusal(error, file);
  }
}

/**
 * Root `version` = `current.version + 1`: signed by the threshold of the trusted
 * root's root role and by the threshold of its own root role.
 */
export async function nextRoot(ctx: RootContext, current: TrustedRoot): Promise<TrustedRoot> {
  const version = current.version + 1;
  const file = rootPath(version);
  try {
    const bytes = await ctx.fetchRoot(version);
    const env = readEnvelope(bytes, file);
    const root = readRoot(env, version);
    await checkSignatures(env, {
      role: current.file.roles.root,
      roleName: `previous root's (${rootPath(current.version)}) root`,
      keys: current.file.keys,
      allowDevKeys: ctx.allowDevKeys,
    });
    await checkSignatures(env, {
      role: root.roles.root,
      roleName: "root",
      keys: root.keys,
      allowDevKeys: ctx.allowDevKeys,
    });
    return { version, text: decodeUtf8(bytes), file: root };
  } catch (error) {
    asRootRefusal(error, file);
  }
}

/** True when `next` drops a keyid of `previous`'s index role: everything that key signed is forgotten. */
export function revokesIndexKey(previous: TrustedRoot, next: TrustedRoot): boolean {
  const kept = new Set(next.file.roles.index.keyids);
  return previous.file.roles.index.keyids.some((keyid) => !kept.has(keyid));
}

/** Checks that remote-index.json's root_version can be reached from the trusted root. */
export function checkReachable(current: TrustedRoot, wanted: number): void {
  if (wanted < current.version) {
    refuse(
      "stale-root",
      "remote-index.json",
      `remote-index.json was signed under root ${wanted}, older than the root ${current.version} this host trusts: ` +
        "the origin serves an old top level (or a key this host left behind); the host keeps its last good state",
    );
  }
  if (wanted > current.version + MAX_ROOT_STEPS) {
    refuse(
      "root",
      "remote-index.json",
      `remote-index.json names root ${wanted}, more than ${MAX_ROOT_STEPS} versions past the trusted root ${current.version}: ` +
        "update the trust file (root_version and keys) to a recent root",
    );
  }
}

/** Restores a root kept in the host's state (it verified when it was kept). */
export function restoreRoot(version: number, text: string): TrustedRoot {
  const bytes = new TextEncoder().encode(text);
  return { version, text, file: readRoot(readEnvelope(bytes, rootPath(version)), version) };
}
