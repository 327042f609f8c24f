/** The most a host downloads per file, and how long it waits for one (section 7). */
export interface Limits {
  /** `remote-index.json`. */
  maxIndexBytes: number;
  /** Each `roots/<N>.json`. */
  maxRootBytes: number;
  /** The most a pin's `length` may say (shards, `releases.json`). */
  maxPinnedBytes: number;
  /** Each `manifest.json`. */
  maxManifestBytes: number;
  /** The most an asset's `size` may say. */
  maxArtifactBytes: number;
  /** Each request, whole: connect to last byte. */
  timeoutMs: number;
}

const MiB = 1024 * 1024;

export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  maxIndexBytes: 2 * MiB,
  maxRootBytes: 1 * MiB,
  maxPinnedBytes: 16 * MiB,
  maxManifestBytes: 1 * MiB,
  maxArtifactBytes: 64 * MiB,
  timeoutMs: 10_000,
});

/** The defaults with `overrides` applied; throws for a limit that is not a positive number. */
export function resolveLimits(overrides: Partial<Limits> | undefined): Readonly<Limits> {
  const limits: Limits = { ...DEFAULT_LIMITS };
  for (const [name, value] of Object.entries(overrides ?? {})) {
    if (!(name in DEFAULT_LIMITS)) {
      throw new Error(`limits.${name} is not a limit; use ${Object.keys(DEFAULT_LIMITS).join(", ")}`);
    }
    if (value === undefined) continue;
    if (typeof value !== "number" || !Number.isFinite(value) || value <= 0) {
      throw new Error(`limits.${name} must be a positive number, not ${String(value)}`);
    }
    limits[name as keyof Limits] = value;
  }
  return Object.freeze(limits);
}
