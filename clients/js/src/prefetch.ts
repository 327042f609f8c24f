import { MAX_BITS, neededBins, shardPath } from "./bins.js";
import type { JsonObject } from "./canonical.js";
import type { Downloads } from "./downloads.js";
import { artifactPath, isPathSafeVersion, manifestPath, readManifest, releasesPath } from "./files.js";
import type { AssetCache } from "./model.js";
import { artifactRequest, INDEX, manifestRequest, pinnedRequest, rootRequest, type Origin, type Request } from "./requests.js";
import { sideFor, sidesToLoad } from "./bucketing.js";
import { rootPath } from "./root.js";
import { integerAt, isFeatureId, objectAt, pinAt } from "./values.js";

// What a file names, downloaded as soon as the file is parsed, while its own
// checks (canonical form, signatures, fields) still run (downloads.ts). Only
// what a needed file names is looked at, and leniently: anything missing or
// odd means no prefetch, and the refresh reports it in its own order. Every
// request is the one the refresh makes once the file is verified (same
// builder, same values when the file is the one that verifies), so nothing
// fetched here is used unless the refresh asks for exactly it.

export interface Prefetching extends Origin {
  downloads: Downloads;
  features: readonly string[] | null;
  channel: "stable" | "canary";
  assetCache?: AssetCache | undefined;
  bothSides: boolean;
  knownKey: () => string | null;
}

/** The refresh takes files a few at a time: prefetching more than that would only crowd them. */
const AHEAD = 4;

function start(run: Prefetching, request: () => Request): Promise<Uint8Array> | undefined {
  try {
    return run.downloads.prefetch(request());
  } catch {
    return undefined; // not a request the refresh would make (a limit, a value out of range)
  }
}

function signedOf(file: JsonObject): JsonObject {
  return objectAt(file, "signed", "", "");
}

/** Roots `from` to `to`: the chain remote-index.json asks the host to follow. */
export function prefetchRoots(run: Prefetching, from: number, to: number): void {
  for (let version = from; version <= Math.min(to, from + AHEAD - 1); version++) start(run, () => rootRequest(run, rootPath(version)));
}

/** remote-index.json, parsed: the shards the host needs. */
export function prefetchShards(run: Prefetching, file: JsonObject): void {
  try {
    const bins = objectAt(signedOf(file), "bins", "", "");
    const bits = integerAt(bins, "bits", "", "", 0, MAX_BITS);
    const shards = objectAt(bins, "shards", "", "");
    for (const bin of neededBins(run.features, bits, Object.keys(shards)).slice(0, AHEAD)) {
      start(run, () => pinnedRequest(run, shardPath(bits, bin), pinAt(shards, bin, "", "", 0), INDEX));
    }
  } catch {
    /* not a top level the refresh would accept */
  }
}

/** A shard, parsed: the releases.json of each needed feature it lists. */
export function prefetchReleases(run: Prefetching, file: JsonObject, shardFile: string): void {
  try {
    const features = objectAt(signedOf(file), "features", "", "");
    const ids = (run.features ?? Object.keys(features)).filter((id) => isFeatureId(id) && Object.hasOwn(features, id));
    for (const id of ids.slice(0, AHEAD)) start(run, () => pinnedRequest(run, releasesPath(id), pinAt(features, id, "", "", 1), shardFile));
  } catch {
    /* not a shard the refresh would accept */
  }
}

/**
 * A releases.json, parsed: the manifest of each version the host will load
 * (none while a stable host has no key to choose its side with), then, once
 * each arrives, its assets.
 */
export function prefetchManifest(run: Prefetching, file: JsonObject, featureId: string): void {
  try {
    const signed = signedOf(file);
    const channels = objectAt(signed, "channels", "", "") as { stable: string | null; canary: string | null };
    const weight = channels.canary == null ? null : ((signed["canary_weight"] as number | null) ?? 0);
    // Without a key yet, bucket() throws: no prefetch.
    const own = sideFor(run.channel, featureId, weight, () => run.knownKey()!).side;
    for (const side of sidesToLoad(run, own, weight, channels)) {
      const version = channels[side];
      if (!isPathSafeVersion(version)) continue;
      const manifest = manifestPath(featureId, version);
      start(run, () => manifestRequest(run, manifest))?.then(
        (bytes) => prefetchAssets(run, bytes, manifest, featureId, version),
        () => undefined,
      );
    }
  } catch {
    /* not a releases.json the refresh would accept */
  }
}

/** A manifest's assets (not when a cache of verified assets may already hold them). */
function prefetchAssets(run: Prefetching, bytes: Uint8Array, file: string, featureId: string, version: string): void {
  if (run.assetCache) return;
  try {
    for (const asset of readManifest(bytes, file, featureId, version).assets.slice(0, AHEAD)) {
      start(run, () => artifactRequest(run, artifactPath(asset.sha256, asset.path), asset.size));
    }
  } catch {
    /* not a manifest the refresh would accept */
  }
}
