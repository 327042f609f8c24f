import { binOfSync, neededBins, prepareBins, shardPath } from "./bins.js";
import { isObject } from "./canonical.js";
import { toBase64 } from "./bytes.js";
import { Ed25519Unsupported } from "./crypto.js";
import { Downloads } from "./downloads.js";
import { RefusalError, asRefusal, refuse, type Refusal, type RefusalCode } from "./errors.js";
import type { FetchLike } from "./fetch.js";
import {
  artifactPath,
  manifestPath,
  readManifest,
  readReleases,
  readRemoteIndex,
  readRootVersion,
  readShard,
  releasesPath,
  type ManifestAsset,
  type RemoteIndexFile,
  type ShardFile,
} from "./files.js";
import type { Limits } from "./limits.js";
import { sideFor, sidesToLoad, weightOf, type Side } from "./bucketing.js";
import type { AssetCache, FeatureSides, LoadedAsset, LoadedFeature } from "./model.js";
import { prefetchManifest, prefetchReleases, prefetchRoots, prefetchShards } from "./prefetch.js";
import { artifactRequest, INDEX, indexRequest, manifestRequest, originUrl, pinnedRequest, rootRequest } from "./requests.js";
import { bootstrapRoot, checkReachable, nextRoot, revokesIndexKey, rootPath, type RootContext, type TrustedRoot } from "./root.js";
import { sha256Hex } from "./sha256.js";
import { checkExpiry, checkSignatures, readEnvelope, type Envelope } from "./signed.js";
import type { HostState, Mark } from "./state.js";
import type { Trust } from "./trust.js";
import { deepFreeze, eachLimit } from "./util.js";
import type { Pin } from "./values.js";

// Section 6: one refresh, in order. Everything here is a pure function of the
// configuration, what the host had, and what the origin serves; the host
// (host.ts) saves the state and commits the result.

/** Fetching is mostly waiting on the origin: a few requests at once hide that. */
const PARALLEL = 4;

export interface RefreshContext {
  indexUrl: URL;
  trust: Trust;
  allowDevKeys: boolean;
  channel: "stable" | "canary";
  features: readonly string[] | null;
  limits: Readonly<Limits>;
  fetch: FetchLike;
  /** The clock, read once per refresh (milliseconds). */
  now: number;
  assetCache?: AssetCache | undefined;
  /** Also load the other side of a running canary when some key gets it (for versionFor). */
  bothSides: boolean;
  /** This host's bucketing key: called only when a canary runs on a stable host (the host draws one then). */
  ownKey: () => string;
  /** This host's key if it has one already, without drawing one. */
  knownKey: () => string | null;
  /** A version whose manifest or an asset could not be loaded or was refused (for beacons). */
  failed?: (featureId: string, version: string, code: RefusalCode) => void;
}

export interface HostSnapshot {
  state: HostState;
  root: TrustedRoot | null;
  /** What this host's own key gets of each feature. */
  features: ReadonlyMap<string, LoadedFeature>;
  /** Every version loaded of each feature, by side. */
  sides: ReadonlyMap<string, FeatureSides>;
  remoteSequence: number | null;
}

export interface RefreshResult extends HostSnapshot {
  refused: Map<string, Refusal>;
}

/** A refresh under way: its configuration and its downloads. */
interface Run extends RefreshContext {
  downloads: Downloads;
}

/** What a refresh is changing: saved whatever happens, since it holds only what passed. */
interface Draft {
  state: HostState;
  root: TrustedRoot | null;
}

/** A file pinned by its parent: at most and exactly its length, and its SHA-256. */
async function getPinned(run: Run, file: string, pin: Pin, parent: string): Promise<Uint8Array> {
  const bytes = await run.downloads.get(pinnedRequest(run, file, pin, parent));
  if (bytes.length !== pin.length) {
    refuse("length", file, `${file} is ${bytes.length} bytes, but ${parent} pins ${pin.length}: the origin serves another file than the one signed (a stale CDN copy?); purge it or republish`);
  }
  const digest = await sha256Hex(bytes);
  if (digest !== pin.sha256) {
    refuse("hash", file, `${file} has SHA-256 ${digest.slice(0, 12)}…, but ${parent} pins ${pin.sha256.slice(0, 12)}…: the origin serves another file than the one signed (a stale CDN copy or tampering); purge it or republish`);
  }
  return bytes;
}

function checkRollback(file: string, mark: Mark | undefined | null, sequence: number, digest: string): void {
  if (!mark) return;
  if (sequence < mark.sequence) {
    refuse("rollback", file, `${file} has sequence ${sequence}, lower than ${mark.sequence}, the highest this host has seen: an old file is being replayed; the host keeps its last good state`);
  }
  if (sequence === mark.sequence && digest !== mark.sha256) {
    refuse("rollback", file, `${file} has sequence ${sequence}, the highest this host has seen, but a different signed body: two files were signed with one sequence; the host keeps the first`);
  }
}

function raise(a: Mark | undefined | null, sequence: number, sha: string): Mark {
  return a && a.sequence > sequence ? a : { sequence, sha256: sha };
}

/**
 * Any error met while checking one file becomes a refusal of that file: a
 * refresh never rejects for what the origin served.
 */
function toRefusal(error: unknown, file: string): RefusalError {
  if (error instanceof RefusalError) return error;
  if (error instanceof Ed25519Unsupported) return new RefusalError("signature", file, `${file} cannot be verified: ${error.message}`);
  const message = (error as Error)?.message ?? String(error);
  return new RefusalError("malformed", file, `${file} could not be checked (${message}); the host keeps its last good state`, { cause: error });
}

// ---- step 1: the top level

async function topLevel(ctx: Run, draft: Draft): Promise<{ index: RemoteIndexFile; root: TrustedRoot; env: Envelope }> {
  const bytes = await ctx.downloads.get(indexRequest(ctx));
  // What it names starts downloading as soon as it is parsed; nothing of it is used before it verified.
  const env = readEnvelope(bytes, INDEX, (parsed) => prefetchShards(ctx, parsed));
  const wanted = readRootVersion(env);
  prefetchRoots(ctx, (draft.root?.version ?? ctx.trust.rootVersion) + 1, wanted);

  const rootCtx: RootContext = {
    trust: ctx.trust,
    allowDevKeys: ctx.allowDevKeys,
    fetchRoot: (version) => ctx.downloads.get(rootRequest(ctx, rootPath(version))),
  };
  const trustRoot = (root: TrustedRoot) => {
    draft.root = root;
    draft.state.root = { version: root.version, text: root.text };
  };
  if (!draft.root) trustRoot(await bootstrapRoot(rootCtx));
  checkReachable(draft.root!, wanted);
  while (draft.root!.version < wanted) {
    const next = await nextRoot(rootCtx, draft.root!);
    if (revokesIndexKey(draft.root!, next)) {
      // Everything seen so far was signed by a key no longer trusted.
      draft.state.index = null;
      draft.state.releases = {};
    }
    trustRoot(next);
  }
  const root = draft.root!;
  if (root.file.expiresAt <= ctx.now) {
    const file = rootPath(root.version);
    refuse("expired", file, `${file}, the root this host trusts, expired at ${new Date(root.file.expiresAt).toISOString().replace(".000", "")}: the root keys' holders must sign a new root; the host keeps its last good state`);
  }

  await checkSignatures(env, { role: root.file.roles.index, roleName: "index", keys: root.file.keys, allowDevKeys: ctx.allowDevKeys });
  const index = readRemoteIndex(env);
  checkExpiry(INDEX, index.expiresAt, ctx.now);
  const digest = await sha256Hex(env.signedBytes);
  checkRollback(INDEX, draft.state.index, index.sequence, digest);
  draft.state.index = raise(draft.state.index, index.sequence, digest);
  return { index, root, env };
}

// ---- step 2: shards

async function getShard(ctx: Run, index: RemoteIndexFile, bin: string, root: TrustedRoot): Promise<ShardFile> {
  const file = shardPath(index.bits, bin);
  const pin = index.shards.get(bin)!;
  const bytes = await getPinned(ctx, file, pin, INDEX);
  const env = readEnvelope(bytes, file, (parsed) => prefetchReleases(ctx, parsed, file));
  // Its bytes match a verified pin: the bins of the ids it lists hash while its signatures verify.
  const listed = env.signed["features"];
  await Promise.all([
    checkSignatures(env, { role: root.file.roles.index, roleName: "index", keys: root.file.keys, allowDevKeys: ctx.allowDevKeys }),
    prepareBins(isObject(listed) ? Object.keys(listed) : []),
  ]);
  const shard = readShard(env, index.bits, bin, pin);
  checkExpiry(file, shard.expiresAt, ctx.now);
  return shard;
}

// ---- steps 3 to 6: one feature

interface FeatureRun {
  ctx: Run;
  draft: Draft;
  index: RemoteIndexFile;
  root: TrustedRoot;
  /** Artifacts checked in this refresh, by origin path and size: content-addressed, so shared between features. */
  artifacts: Map<string, Promise<void>>;
}

function hexToBytes(hex: string): Uint8Array {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(i * 2, i * 2 + 2), 16);
  return out;
}

async function checkArtifact(run: FeatureRun, file: string, asset: ManifestAsset): Promise<void> {
  const { ctx } = run;
  const request = artifactRequest(ctx, file, asset.size);
  const cached = await ctx.assetCache?.get(asset.sha256).catch(() => null);
  if (cached && cached.length === asset.size && (await sha256Hex(cached)) === asset.sha256) return;
  const bytes = await ctx.downloads.get(request);
  if (bytes.length !== asset.size) {
    refuse("length", file, `${file} is ${bytes.length} bytes, but its manifest lists ${asset.size}: the origin serves another file than the one published; purge the CDN copy or republish`);
  }
  const digest = await sha256Hex(bytes);
  if (digest !== asset.sha256) {
    refuse("hash", file, `${file} has SHA-256 ${digest.slice(0, 12)}…, not the ${asset.sha256.slice(0, 12)}… its manifest lists: the origin serves another file than the one published (tampering or a broken copy); the host keeps its last good version`);
  }
  // A cache that cannot be written only costs a download next time.
  await ctx.assetCache?.put(asset.sha256, bytes).catch(() => undefined);
}

async function loadFeature(run: FeatureRun, featureId: string, pin: Pin): Promise<{ own: LoadedFeature; sides: FeatureSides }> {
  const { ctx, draft, root } = run;
  const shardFile = shardPath(run.index.bits, binOfSync(featureId, run.index.bits));
  const file = releasesPath(featureId);
  try {
    const bytes = await getPinned(ctx, file, pin, shardFile);
    const env = readEnvelope(bytes, file, (parsed) => prefetchManifest(ctx, parsed, featureId));
    const keyids = await checkSignatures(env, { role: root.file.roles.index, roleName: "index", keys: root.file.keys, allowDevKeys: ctx.allowDevKeys });
    const releases = readReleases(env, featureId, pin);
    checkExpiry(file, releases.expiresAt, ctx.now);
    const digest = await sha256Hex(env.signedBytes);
    checkRollback(file, draft.state.releases[featureId], releases.sequence, digest);
    draft.state.releases[featureId] = raise(draft.state.releases[featureId], releases.sequence, digest);

    const weight = weightOf(releases);
    const own = sideFor(ctx.channel, featureId, weight, ctx.ownKey);
    const loaded: Partial<Record<Side, LoadedFeature>> = {};
    for (const side of sidesToLoad(ctx, own.side, weight, releases)) {
      const version = releases[side];
      if (version === null) {
        refuse("not-found", file, `${file} has no version on the ${side} side: ${featureId} is not released there yet; nothing to load`);
      }
      loaded[side] = await loadVersion(run, featureId, version, releases.versions.get(version)!, { channel: side, sequence: releases.sequence, keyids, canaryWeight: weight });
    }
    return {
      own: deepFreeze({ ...loaded[own.side]!, bucket: own.bucket }),
      sides: deepFreeze({ weight, stable: loaded.stable ?? null, canary: loaded.canary ?? null }),
    };
  } catch (error) {
    throw toRefusal(error, file);
  }
}

/** One version's manifest and assets, each checked (steps 5 and 6). */
async function loadVersion(
  run: FeatureRun,
  featureId: string,
  version: string,
  manifestSha256: string,
  from: { channel: Side; sequence: number; keyids: readonly string[]; canaryWeight: number | null },
): Promise<LoadedFeature> {
  const { ctx, root } = run;
  const file = manifestPath(featureId, version);
  try {
    const manifestBytes = await ctx.downloads.get(manifestRequest(ctx, file));
    const digestM = await sha256Hex(manifestBytes);
    if (digestM !== manifestSha256) {
      refuse("hash", file, `${file} has SHA-256 ${digestM.slice(0, 12)}…, but releases.json lists ${manifestSha256.slice(0, 12)}…: the origin serves another manifest than the one published; purge the CDN copy or republish`);
    }
    const manifest = readManifest(manifestBytes, file, featureId, version);

    const assets: LoadedAsset[] = [];
    const failures: RefusalError[] = [];
    await eachLimit(manifest.assets, PARALLEL, async (asset) => {
      const afile = artifactPath(asset.sha256, asset.path);
      // The size is part of the key: another manifest listing the same file at another size must fail on its own.
      const key = `${afile} ${asset.size}`;
      try {
        let check = run.artifacts.get(key);
        if (!check) {
          check = checkArtifact(run, afile, asset);
          run.artifacts.set(key, check);
        }
        await check;
      } catch (error) {
        failures.push(toRefusal(error, afile));
      }
    });
    if (failures.length) {
      // The first listed asset that failed, so that a refusal does not depend on timing.
      const order = manifest.assets.map((a) => artifactPath(a.sha256, a.path));
      failures.sort((a, b) => order.indexOf(a.file) - order.indexOf(b.file));
      throw failures[0];
    }
    for (const asset of manifest.assets) {
      assets.push({
        path: asset.path,
        url: originUrl(ctx.indexUrl, artifactPath(asset.sha256, asset.path)).href,
        size: asset.size,
        sha256: asset.sha256,
        integrity: `sha256-${toBase64(hexToBytes(asset.sha256))}`,
      });
    }
    return deepFreeze({
      featureId,
      version,
      channel: from.channel,
      canaryWeight: from.canaryWeight,
      bucket: null,
      sequence: from.sequence,
      remoteSequence: run.index.sequence,
      rootVersion: root.version,
      keyids: from.keyids,
      manifest: manifest.value,
      manifestSha256,
      entry: manifest.entry,
      entryUrl: assets.find((a) => a.path === manifest.entry)!.url,
      assets,
    });
  } catch (error) {
    const refusal = toRefusal(error, file);
    ctx.failed?.(featureId, version, refusal.code);
    throw refusal;
  }
}

// ---- the whole refresh

function copyState(state: HostState): HostState {
  return { ...state, releases: { ...state.releases } };
}

export async function runRefresh(config: RefreshContext, prev: HostSnapshot): Promise<RefreshResult> {
  const ctx: Run = { ...config, downloads: new Downloads(PARALLEL) };
  // The needed ids' bins hash while remote-index.json downloads.
  void prepareBins(ctx.features ?? []);
  // The first root is named by the trust file alone: it downloads alongside
  // remote-index.json, whose request goes first (everything else waits on it).
  if (!prev.root) {
    ctx.downloads.prefetch(indexRequest(ctx));
    prefetchRoots(ctx, ctx.trust.rootVersion, ctx.trust.rootVersion);
  }
  try {
    return await refreshWith(ctx, prev);
  } finally {
    ctx.downloads.close();
  }
}

async function refreshWith(ctx: Run, prev: HostSnapshot): Promise<RefreshResult> {
  const draft: Draft = { state: copyState(prev.state), root: prev.root };
  const refused = new Map<string, Refusal>();

  let top: Awaited<ReturnType<typeof topLevel>>;
  try {
    top = await topLevel(ctx, draft);
  } catch (error) {
    // Any failure of the top level refuses the whole refresh: every feature stays as it was.
    const refusal = toRefusal(error, INDEX);
    refused.set(INDEX, asRefusal(refusal));
    return { state: draft.state, root: draft.root, features: prev.features, sides: prev.sides, remoteSequence: prev.remoteSequence, refused };
  }
  const { index, root } = top;
  const bits = index.bits;
  const features = new Map(prev.features);
  const sides = new Map(prev.sides);

  // Step 2: which shards are needed, fetched once each.
  const needed = ctx.features;
  const shards = new Map<string, ShardFile | RefusalError>();
  await eachLimit(neededBins(needed, bits, index.shards.keys()), PARALLEL, async (bin) => {
    try {
      shards.set(bin, await getShard(ctx, index, bin, root));
    } catch (error) {
      shards.set(bin, toRefusal(error, shardPath(bits, bin)));
    }
  });

  const tasks: [string, Pin][] = [];
  const notFound = (id: string, message: string, file: string) => {
    features.delete(id);
    refused.set(id, asRefusal(new RefusalError("not-found", file, message)));
  };
  if (needed) {
    for (const id of needed) {
      const bin = binOfSync(id, bits);
      const file = shardPath(bits, bin);
      const shard = shards.get(bin);
      if (!shard) {
        notFound(id, `remote-index.json has no shard for bin "${bin}" (${file}), so ${id} is not published: check the feature id, or publish it`, INDEX);
      } else if (shard instanceof RefusalError) {
        refused.set(id, asRefusal(shard));
      } else if (!shard.features.has(id)) {
        notFound(id, `${file} does not list ${id}, so it is not published: check the feature id, or publish it`, file);
      } else {
        tasks.push([id, shard.features.get(id)!]);
      }
    }
  } else {
    for (const [bin, shard] of shards) {
      if (shard instanceof RefusalError) {
        // The shard names its features; without it, report under the ids this host knows in that bin.
        const known = new Set([...features.keys(), ...Object.keys(draft.state.releases)]);
        const inBin = [...known].filter((id) => binOfSync(id, bits) === bin);
        for (const id of inBin.length ? inBin : [shard.file]) refused.set(id, asRefusal(shard));
      } else {
        for (const [id, pin] of shard.features) tasks.push([id, pin]);
      }
    }
    // A feature no longer listed in any shard of an accepted top level is dropped.
    for (const id of [...features.keys()]) {
      const shard = shards.get(binOfSync(id, bits));
      if (!shard || (!(shard instanceof RefusalError) && !shard.features.has(id))) features.delete(id);
    }
  }

  // Steps 3 to 6, then 7: what verified replaces what was served.
  const run: FeatureRun = { ctx, draft, index, root, artifacts: new Map() };
  await eachLimit(tasks, PARALLEL, async ([id, pin]) => {
    try {
      const { own, sides: all } = await loadFeature(run, id, pin);
      features.set(id, own);
      sides.set(id, all);
    } catch (error) {
      refused.set(id, asRefusal(toRefusal(error, releasesPath(id))));
    }
  });
  // What was dropped from `features` above is dropped with all its sides.
  for (const id of sides.keys()) if (!features.has(id)) sides.delete(id);
  return { state: draft.state, root: draft.root, features, sides, remoteSequence: index.sequence, refused };
}

