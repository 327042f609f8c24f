// Node-only extras: state in a file, and load() through a cache of verified files.
import { createHash, randomBytes } from "node:crypto";
import { mkdir, open, readFile, rename, rm } from "node:fs/promises";
import { dirname, join, resolve, sep } from "node:path";
import { pathToFileURL } from "node:url";
import { RefusalError } from "./errors.js";
import { artifactPath } from "./files.js";
import { FeatureHost, type FeatureHostOptions } from "./host.js";
import type { AssetCache } from "./model.js";
import type { StateStorage } from "./state.js";

export * from "./index.js";

function errorCode(error: unknown): string | undefined {
  return (error as NodeJS.ErrnoException)?.code;
}

/** Writes `data` to `path` whole or not at all: a temp file beside it, flushed, then renamed over it. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const temp = `${path}.${randomBytes(6).toString("hex")}.tmp`;
  const handle = await open(temp, "wx", 0o644);
  try {
    await handle.writeFile(data);
    await handle.sync();
  } catch (error) {
    await handle.close();
    await rm(temp, { force: true });
    throw error;
  }
  await handle.close();
  try {
    await rename(temp, path);
  } catch (error) {
    await rm(temp, { force: true });
    throw error;
  }
}

/**
 * State in a file, replaced atomically. A missing file is a fresh start; a file
 * that exists but cannot be read makes the host refuse to start (section 5).
 */
export function fileState(path: string): StateStorage {
  return {
    async load() {
      try {
        return await readFile(path, "utf8");
      } catch (error) {
        if (errorCode(error) === "ENOENT") return null;
        throw new Error(`cannot read state file ${path}: ${(error as Error).message}`, { cause: error });
      }
    },
    save(text: string) {
      return writeFileAtomic(path, text);
    },
  };
}

function sha256Hex(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

/** Verified asset bytes by SHA-256, one file each: `<dir>/<sha256>`. */
export function fileAssetCache(dir: string): AssetCache {
  return {
    async get(sha256: string) {
      try {
        return new Uint8Array(await readFile(join(dir, sha256)));
      } catch {
        return null;
      }
    },
    put(sha256: string, bytes: Uint8Array) {
      return writeFileAtomic(join(dir, sha256), bytes);
    },
  };
}

export interface NodeFeatureHostOptions extends FeatureHostOptions {
  /**
   * Where verified files are kept: `artifacts/<sha256>` (every asset the
   * refreshes verified) and `features/<id>/<manifest sha256>/<asset path>` (the
   * tree load() imports from). Also the state's default home: `state.json`
   * (with the random bucketing key, when the host draws one).
   */
  cacheDir: string;
  /** The state file (default `<cacheDir>/state.json`); ignored when `storage` is given. */
  stateFile?: string;
}

/**
 * A FeatureHost for Node: state in a file, assets in a verified file cache,
 * and load() importing the entry by file URL after checking every file of the
 * feature against the signed manifest again. A server serves many users, so
 * bothSides defaults to true: load(id, userKey) runs the side of that user.
 */
export class NodeFeatureHost extends FeatureHost {
  readonly cacheDir: string;
  readonly #artifacts: AssetCache;

  constructor(options: NodeFeatureHostOptions) {
    if (typeof options?.cacheDir !== "string" || options.cacheDir === "") {
      throw new Error("NodeFeatureHost: cacheDir must be the path of a folder for verified files");
    }
    const cacheDir = resolve(options.cacheDir);
    const artifacts = fileAssetCache(join(cacheDir, "artifacts"));
    super({
      bothSides: true,
      ...options,
      storage: options.storage ?? fileState(options.stateFile ?? join(cacheDir, "state.json")),
      assetCache: artifacts,
    });
    this.cacheDir = cacheDir;
    this.#artifacts = artifacts;
    // Node runs beforeExit when nothing is left to do: the counts still pending go then.
    if (options.beaconUrl) process.on("beforeExit", this.#exit);
  }

  readonly #exit = (): void => void this.close();

  /**
   * The folder holding `featureId`'s served version (or the version user
   * `bucketingKey` gets: versionFor()) with the paths of its manifest (so
   * relative imports work), every file checked against the signed manifest
   * now. Rejects with a RefusalError "hash" for a file changed on disk.
   */
  async featureDir(featureId: string, bucketingKey?: string): Promise<string> {
    const feature = bucketingKey === undefined ? this.requireFeature(featureId) : this.versionFor(featureId, bucketingKey);
    const root = join(this.cacheDir, "features");
    const dir = join(root, featureId, feature.manifestSha256);
    // Features are ES modules; the cache folder is no package of the application's.
    const marker = join(root, "package.json");
    await readFile(marker).catch(() => writeFileAtomic(marker, '{"type":"module"}\n'));
    for (const asset of feature.assets) {
      const file = artifactPath(asset.sha256, asset.path);
      const target = join(dir, ...asset.path.split("/"));
      if (!target.startsWith(dir + sep)) throw new Error(`asset path ${asset.path} leaves ${dir}`);
      let bytes: Uint8Array | null = null;
      try {
        bytes = await readFile(target);
      } catch (error) {
        if (errorCode(error) !== "ENOENT") throw error;
      }
      if (bytes) {
        if (bytes.length !== asset.size || sha256Hex(bytes) !== asset.sha256) {
          throw new RefusalError(
            "hash",
            file,
            `${target} (${asset.path} of ${featureId} ${feature.version}) was changed on disk since it was verified: ` +
              `nothing was run; delete ${dir} and load again to write it anew from verified bytes`,
          );
        }
        continue;
      }
      const verified = await this.#artifacts.get(asset.sha256);
      if (!verified || verified.length !== asset.size || sha256Hex(verified) !== asset.sha256) {
        throw new RefusalError(
          "hash",
          file,
          `the verified copy of ${asset.path} (${featureId} ${feature.version}) is missing from ${join(this.cacheDir, "artifacts")} or was changed: ` +
            "nothing was run; refresh() to fetch and verify it again",
        );
      }
      await writeFileAtomic(target, verified);
    }
    return dir;
  }

  /**
   * Imports `featureId`'s entry module (of the version user `bucketingKey`
   * gets, when given) from the verified cache and returns its namespace.
   */
  override async load(featureId: string, bucketingKey?: string): Promise<unknown> {
    const feature = bucketingKey === undefined ? this.requireFeature(featureId) : this.versionFor(featureId, bucketingKey);
    // Beacons: a load of that version, and whether its files were refused or its entry threw.
    this.reportLoad(featureId, feature.version);
    let dir: string;
    try {
      dir = await this.featureDir(featureId, bucketingKey);
    } catch (error) {
      this.reportFailure(featureId, feature.version, error instanceof RefusalError ? "refusal" : "load_failure");
      throw error;
    }
    try {
      return await import(pathToFileURL(join(dir, ...feature.entry.split("/"))).href);
    } catch (error) {
      this.reportFailure(featureId, feature.version, "entry_error");
      throw error;
    }
  }

  /** The last batch of beacons, and no more refreshes; also run when the process is about to exit. */
  override close(): Promise<void> {
    process.off("beforeExit", this.#exit);
    return super.close();
  }
}
