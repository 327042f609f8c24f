import type { Refusal } from "./errors.js";

/** One asset of a loaded feature: where it is, and what its bytes must be. */
export interface LoadedAsset {
  /** Its path in the manifest (relative imports between assets use these). */
  readonly path: string;
  /** Its content-addressed URL on the origin: `artifacts/<sha256><ext>`. */
  readonly url: string;
  readonly size: number;
  readonly sha256: string;
  /** Subresource Integrity: `sha256-<base64>`. */
  readonly integrity: string;
}

/** One feature version this host verified and serves. */
export interface LoadedFeature {
  readonly featureId: string;
  readonly version: string;
  /**
   * The side this version was chosen from: "canary" when a canary runs and the
   * host follows the canary channel or the key's bucket is below its weight.
   */
  readonly channel: "stable" | "canary";
  /** While a canary runs: the share of bucketed users it serves, out of 10,000 (0 when releases.json names none); null when none runs. */
  readonly canaryWeight: number | null;
  /**
   * The bucket (0 to 9,999) of the key the side was chosen for (the host's own in
   * `features`, the user's from versionFor()) when a canary runs and the host
   * follows stable; null otherwise.
   */
  readonly bucket: number | null;
  /** The sequence of the releases.json it was selected from. */
  readonly sequence: number;
  /** The sequence of the remote-index.json it was verified under. */
  readonly remoteSequence: number;
  /** The root version it was verified under. */
  readonly rootVersion: number;
  /** The keys whose signatures counted on its releases.json. */
  readonly keyids: readonly string[];
  /** The manifest as published (frozen). */
  readonly manifest: Readonly<Record<string, unknown>>;
  readonly manifestSha256: string;
  /** The manifest's entry path. */
  readonly entry: string;
  readonly entryUrl: string;
  readonly assets: readonly LoadedAsset[];
}

/** Every version of one feature a host verified from one releases.json, by side. */
export interface FeatureSides {
  /** The canary's weight (0 when releases.json names none); null when no canary runs. */
  readonly weight: number | null;
  /** Null when that side has no version, or the host does not load it (bothSides off). */
  readonly stable: LoadedFeature | null;
  readonly canary: LoadedFeature | null;
}

/** What one refresh did. */
export interface RefreshReport {
  /** True when nothing was refused. */
  ok: boolean;
  /** The sequence of the remote-index.json now trusted; null before the first good one. */
  remoteSequence: number | null;
  /** The version of the trusted root; null before the first. */
  rootVersion: number | null;
  /** feature id → the version served now (the last good one where an update was refused). */
  loaded: Record<string, string>;
  /** "remote-index.json" or a feature id → why this refresh refused it. */
  refused: Record<string, Refusal>;
  /** The features whose served version changed (added, replaced or dropped). */
  changed: string[];
}

/**
 * A content-addressed store of asset bytes this host verified: a host MAY serve
 * an asset from it instead of downloading it again (section 6 step 6). The host
 * hashes what `get` returns again before trusting it.
 */
export interface AssetCache {
  get(sha256: string): Promise<Uint8Array | null>;
  put(sha256: string, bytes: Uint8Array): Promise<void>;
}
