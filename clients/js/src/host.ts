import { Beacons, KINDS, type FailureKind } from "./beacons.js";
import { checkBucketingKey, newBucketingKey, sideFor } from "./bucketing.js";
import { RefusalError, type Refusal } from "./errors.js";
import { releasesPath } from "./files.js";
import type { FetchLike } from "./fetch.js";
import { importMapOf, type ImportMap } from "./importmap.js";
import { resolveLimits, type Limits } from "./limits.js";
import { loadInBrowser } from "./load-browser.js";
import type { AssetCache, LoadedFeature, RefreshReport } from "./model.js";
import { runRefresh, type HostSnapshot } from "./refresh.js";
import { restoreRoot, type TrustedRoot } from "./root.js";
import { emptyState, localStorageState, memoryState, parseState, serializeState, type StateStorage } from "./state.js";
import { parseTrust, type Trust, type TrustFile } from "./trust.js";
import { sortedRecord } from "./util.js";
import { isFeatureId } from "./values.js";

export interface FeatureHostOptions {
  /** The URL of `remote-index.json`; every other file is fetched from its folder, on its origin only. */
  indexUrl: string;
  /** The trust file (section 4.1), as an object or its JSON text. */
  trust: TrustFile | string;
  /** Count signatures by keys marked `"dev": true`. Insecure: for development only. */
  allowDevKeys?: boolean;
  channel?: "stable" | "canary";
  /** The features this host needs; null or absent for every feature. */
  features?: readonly string[] | null;
  limits?: Partial<Limits>;
  /** Where the high-water marks and the trusted root are kept (default: localStorage in a browser, memory elsewhere). */
  storage?: StateStorage;
  fetch?: FetchLike;
  /** The clock (read once per refresh). */
  now?: () => Date;
  /** For start(): the time between the end of one refresh and the next (default 60 s). */
  refreshIntervalMs?: number;
  /** A store of verified asset bytes (the Node host passes its file cache). */
  assetCache?: AssetCache;
  /**
   * Whose side of a percentage canary `features` and load() serve: 1 to 256
   * bytes of UTF-8, e.g. a user or device id. Default: a random 128-bit key,
   * drawn at the first canary and kept with the state (`storage`).
   */
  bucketingKey?: string;
  /**
   * Also verify the version on the other side of a running canary when some
   * key gets it, so versionFor() can hand any user theirs (default: false;
   * true for NodeFeatureHost, which serves many users).
   */
  bothSides?: boolean;
  /**
   * The control plane's beacon listener (e.g. the `beacon_url` `releasectl dev`
   * prints); with `beaconKey`, the host reports per feature version the loads
   * and failures it sees (docs/beacons.md). Both or neither.
   */
  beaconUrl?: string;
  /** The site's publishable beacon key (one of the control plane's `beacon_keys`). */
  beaconKey?: string;
  /** The most often a batch of beacons is sent while there are counts (default 10 s). */
  beaconIntervalMs?: number;
}

export interface ChangeDetail {
  featureId: string;
  from: string | null;
  to: string | null;
}

export interface RefusedDetail {
  key: string;
  refusal: Refusal;
}

function isBrowser(): boolean {
  return typeof document !== "undefined" && typeof document.createElement === "function";
}

function defaultStorage(indexUrl: string): StateStorage {
  try {
    // Reading localStorage throws in sandboxed frames; such a page passes its own storage.
    if ((globalThis as { localStorage?: Storage }).localStorage) return localStorageState(`releasecontrol-host:${indexUrl}`);
  } catch {
    /* fall through */
  }
  return memoryState();
}

function configError(what: string): never {
  throw new Error(`FeatureHost: ${what}`);
}

/**
 * Loads only features whose every file it verified (host protocol v2). Events:
 * "change" ({featureId, from, to}), "refused" ({key, refusal}), "refresh"
 * (the RefreshReport) and, from start() only, "error" ({error}) when a refresh
 * failed for a local reason (state that cannot be read or saved).
 */
export class FeatureHost extends EventTarget {
  readonly indexUrl: string;
  readonly channel: "stable" | "canary";
  readonly allowDevKeys: boolean;
  /** Whether both sides of a running canary are verified and kept, for versionFor(). */
  readonly bothSides: boolean;
  readonly limits: Readonly<Limits>;
  readonly #url: URL;
  readonly #trust: Trust;
  readonly #needed: readonly string[] | null;
  readonly #storage: StateStorage;
  readonly #fetch: FetchLike;
  readonly #now: () => Date;
  readonly #interval: number;
  readonly #assetCache: AssetCache | undefined;
  #snapshot: HostSnapshot | null = null;
  #savedText: string | null = null;
  #refused: Readonly<Record<string, Refusal>> = Object.freeze({});
  #queue: Promise<unknown> = Promise.resolve();
  #timer: ReturnType<typeof setTimeout> | undefined;
  #running = false;
  #generation = 0;
  /** The key given, else the random one from the state or drawn at the first canary. */
  #key: string | null = null;
  readonly #keyGiven: boolean;
  readonly #beacons: Beacons | undefined;

  constructor(options: FeatureHostOptions) {
    super();
    if (typeof options !== "object" || options === null) configError("options must be an object");
    let url: URL;
    try {
      url = new URL(options.indexUrl);
    } catch {
      configError(`indexUrl ${JSON.stringify(options.indexUrl)} is not an absolute URL`);
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") configError(`indexUrl must be http(s), not ${url.protocol}`);
    this.#url = url;
    this.indexUrl = url.href;
    this.#trust = parseTrust(options.trust);
    if (!globalThis.crypto?.subtle) {
      configError("WebCrypto (crypto.subtle) is missing: browsers provide it only to secure contexts (https:, or http://localhost)");
    }
    this.allowDevKeys = options.allowDevKeys ?? false;
    if (typeof this.allowDevKeys !== "boolean") configError("allowDevKeys must be true or false");
    this.channel = options.channel ?? "stable";
    if (this.channel !== "stable" && this.channel !== "canary") configError(`channel must be "stable" or "canary", not ${JSON.stringify(this.channel)}`);
    const features = options.features ?? null;
    if (features !== null) {
      if (!Array.isArray(features)) configError("features must be an array of feature ids, or null for every feature");
      features.forEach((id, i) => {
        if (!isFeatureId(id)) configError(`features[${i}] ${JSON.stringify(id)} is not a valid feature id`);
      });
    }
    this.#needed = features === null ? null : Object.freeze([...new Set(features)]);
    this.limits = resolveLimits(options.limits);
    this.#storage = options.storage ?? defaultStorage(this.indexUrl);
    if (typeof (options.fetch ?? globalThis.fetch) !== "function") configError("this runtime has no fetch: pass options.fetch");
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
    this.#now = options.now ?? (() => new Date());
    this.#interval = options.refreshIntervalMs ?? 60_000;
    if (!(this.#interval > 0)) configError("refreshIntervalMs must be a positive number of milliseconds");
    this.#assetCache = options.assetCache;
    this.bothSides = options.bothSides ?? false;
    if (typeof this.bothSides !== "boolean") configError("bothSides must be true or false");
    const { beaconUrl, beaconKey, beaconIntervalMs = 1e4 } = options;
    if (beaconUrl ?? beaconKey) {
      if (!/^https?:\/\/[^/]/.test(beaconUrl!) || !/^[\w-]{8,128}$/.test(beaconKey ?? "") || !(beaconIntervalMs > 0)) {
        configError("beacons need beaconUrl (http or https), beaconKey (8 to 128 of A-Z a-z 0-9 _ -) and a positive beaconIntervalMs");
      }
      // The listener's URL, or its /v1/beacons.
      const url = beaconUrl!.replace(/\/*(v1\/beacons)?\/*$/, "/v1/beacons");
      const beacons = (this.#beacons = new Beacons(url, beaconKey!, beaconIntervalMs, this.#fetch, () => this.#now().getTime()));
      if (isBrowser()) {
        // A page that hides may never come back: what is counted goes now, by sendBeacon.
        // After close() the beacons are stopped, and these send nothing.
        const hide = (event: Event): unknown => (event.type === "pagehide" || document.visibilityState === "hidden") && beacons.flush(true);
        document.addEventListener("visibilitychange", hide);
        addEventListener("pagehide", hide);
      }
    }
    this.#keyGiven = options.bucketingKey !== undefined;
    if (this.#keyGiven) {
      try {
        this.#key = checkBucketingKey(options.bucketingKey);
      } catch (error) {
        configError((error as Error).message);
      }
    }
  }

  /** The features served now, by id: each the version this host's own bucketing key gets. */
  get features(): ReadonlyMap<string, LoadedFeature> {
    return this.#snapshot?.features ?? new Map();
  }

  /**
   * The version user `bucketingKey` gets of `featureId` from the last good
   * state: the canary iff one runs and the host follows the canary channel or
   * the key's bucket is below the weight (`channel` and `bucket` say which).
   * Throws a TypeError or RangeError naming bucketingKey for a key that is not
   * 1 to 256 bytes of well-formed UTF-8; a RefusalError "not-found" when the
   * feature is not served, or that side has no version or is not kept (bothSides off).
   */
  versionFor(featureId: string, bucketingKey: string): LoadedFeature {
    checkBucketingKey(bucketingKey);
    const sides = this.#snapshot?.sides.get(featureId) ?? this.#notServed(featureId);
    const { side, bucket } = sideFor(this.channel, featureId, sides.weight, () => bucketingKey);
    const feature = sides[side];
    if (!feature) {
      const why = this.bothSides
        ? `${featureId} has no ${side} version to serve this user: publish one`
        : `this host keeps only its own side of ${featureId}; serving this user the ${side} side needs bothSides: true`;
      throw new RefusalError("not-found", releasesPath(featureId), why);
    }
    return Object.freeze({ ...feature, bucket });
  }

  /** What the last refresh refused, by "remote-index.json" or feature id. */
  get refused(): Readonly<Record<string, Refusal>> {
    return this.#refused;
  }

  /** The trust file's fingerprint (SHA-256 of its RFC 8785 bytes). */
  get trustFingerprint(): string {
    return this.#trust.fingerprint;
  }

  /**
   * Fetches and verifies everything, then serves what passed. Never rejects for
   * anything the origin did (that is reported); rejects only when the host's
   * own state cannot be read or saved. Refreshes run one at a time.
   */
  refresh(): Promise<RefreshReport> {
    const run = this.#queue.then(() => this.#refresh());
    this.#queue = run.catch(() => undefined);
    return run;
  }

  async #loadState(): Promise<HostSnapshot> {
    let text: string | null;
    try {
      text = await this.#storage.load();
    } catch (error) {
      throw new Error(`FeatureHost: cannot read the saved state (${(error as Error)?.message ?? error}); fix it, or delete it to start over`, { cause: error });
    }
    let state = text === null ? emptyState(this.#trust.fingerprint) : parseState(text);
    if (state.trust !== this.#trust.fingerprint) {
      // A changed trust file starts the chain of roots over; the high-water marks stay.
      state = { ...state, trust: this.#trust.fingerprint, root: null };
    }
    let root: TrustedRoot | null = null;
    if (state.root) {
      try {
        root = restoreRoot(state.root.version, state.root.text);
      } catch (error) {
        throw new Error(`FeatureHost: the saved state's root ${state.root.version} cannot be read (${(error as Error).message}); delete the state to start over`, { cause: error });
      }
    }
    this.#savedText = text;
    if (!this.#keyGiven) this.#key = state.bucketingKey ?? null;
    return { state, root, features: new Map(), sides: new Map(), remoteSequence: null };
  }

  #ownKey(): string {
    return (this.#key ??= newBucketingKey());
  }

  async #refresh(): Promise<RefreshReport> {
    const before = this.#snapshot ?? (this.#snapshot = await this.#loadState());
    const now = this.#now();
    if (!(now instanceof Date) || Number.isNaN(now.getTime())) throw new Error("FeatureHost: options.now() must return a valid Date");
    const result = await runRefresh(
      {
        indexUrl: this.#url,
        trust: this.#trust,
        allowDevKeys: this.allowDevKeys,
        channel: this.channel,
        features: this.#needed,
        limits: this.limits,
        fetch: this.#fetch,
        now: now.getTime(),
        assetCache: this.#assetCache,
        bothSides: this.bothSides,
        ownKey: () => this.#ownKey(),
        knownKey: () => this.#key,
        // A version the refresh could not download (fetch, timeout) or refused: a load that failed.
        failed: (id, version, code) => {
          this.#count(id, version, 0);
          this.#count(id, version, /^(fetch|timeout)$/.test(code) ? 2 : 3);
        },
      },
      before,
    );
    // A drawn key is kept with the marks, so a restart lands on the same side.
    if (!this.#keyGiven && this.#key !== null) result.state.bucketingKey = this.#key;
    const text = serializeState(result.state);
    if (text !== this.#savedText) {
      try {
        await this.#storage.save(text);
      } catch (error) {
        // Nothing is committed: serving a version whose marks are not durable would let a restart roll it back.
        throw new Error(`FeatureHost: cannot save the state (${(error as Error)?.message ?? error}); nothing from this refresh was applied`, { cause: error });
      }
      this.#savedText = text;
    }
    const features = new Map([...result.features].sort(([a], [b]) => (a < b ? -1 : 1)));
    this.#snapshot = { state: result.state, root: result.root, features, sides: result.sides, remoteSequence: result.remoteSequence };
    this.#refused = Object.freeze(sortedRecord(result.refused));

    const changes: ChangeDetail[] = [];
    for (const id of [...new Set([...before.features.keys(), ...features.keys()])].sort()) {
      const a = before.features.get(id);
      const b = features.get(id);
      if (a?.version !== b?.version || a?.manifestSha256 !== b?.manifestSha256) {
        changes.push({ featureId: id, from: a?.version ?? null, to: b?.version ?? null });
      }
    }
    const report: RefreshReport = {
      ok: result.refused.size === 0,
      remoteSequence: result.remoteSequence,
      rootVersion: result.root?.version ?? null,
      loaded: Object.fromEntries([...features].map(([id, f]) => [id, f.version])),
      refused: { ...this.#refused },
      changed: changes.map((c) => c.featureId),
    };
    for (const detail of changes) this.dispatchEvent(new CustomEvent<ChangeDetail>("change", { detail }));
    for (const [key, refusal] of Object.entries(this.#refused)) {
      this.dispatchEvent(new CustomEvent<RefusedDetail>("refused", { detail: { key, refusal } }));
    }
    this.dispatchEvent(new CustomEvent<RefreshReport>("refresh", { detail: report }));
    return report;
  }

  /** Refreshes now, then again `refreshIntervalMs` after each refresh ends, until stop(). */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    const generation = ++this.#generation;
    const tick = (): void => {
      this.refresh()
        .catch((error: unknown) => this.dispatchEvent(new CustomEvent("error", { detail: { error } })))
        .finally(() => {
          if (generation !== this.#generation) return;
          this.#timer = setTimeout(tick, this.#interval);
          // A Node process must be able to exit with a host still started.
          (this.#timer as { unref?: () => void }).unref?.();
        });
    };
    tick();
  }

  stop(): void {
    this.#running = false;
    this.#generation++;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * Counts one load (begun) of `version` of `featureId` for the control plane's
   * analysis; nothing without beacons. Throws a TypeError for a feature id or
   * version that cannot be one (a version is 1 to 128 characters, no space).
   */
  reportLoad(featureId: string, version: string): void {
    this.#report(featureId, version, 0);
  }

  /**
   * Counts one failed load: `kind` "entry_error" (the entry threw), "load_failure"
   * (it could not be loaded) or "refusal" (a check refused it). Report the load
   * too: failures are read per load. Throws a TypeError for anything else.
   */
  reportFailure(featureId: string, version: string, kind: FailureKind): void {
    this.#report(featureId, version, KINDS.indexOf(kind) + 1 || -1);
  }

  #report(featureId: string, version: string, at: number): void {
    if (at < 0 || !isFeatureId(featureId) || !/^\S{1,128}$/u.test(version)) {
      throw new TypeError(`FeatureHost: a report needs a feature id, its version and a kind of ${KINDS}`);
    }
    this.#count(featureId, version, at);
  }

  #count(featureId: string, version: string, at: number): void {
    this.#beacons?.count(`${featureId} ${version}`, at);
  }

  /** Sends the beacons counted so far now (they go every beaconIntervalMs anyway). */
  flushBeacons(): Promise<void> {
    return this.#beacons?.flush() ?? Promise.resolve();
  }

  /** stop(), and the last batch of beacons; later reports are not sent. */
  async close(): Promise<void> {
    this.stop();
    if (this.#beacons) {
      await this.#beacons.flush(true);
      this.#beacons.stopped = true;
    }
  }

  /**
   * Runs a feature's entry module and returns its namespace. In a browser the
   * browser itself checks every JavaScript asset against the signed manifest
   * (import map integrity and a modulepreload with SRI) before it runs.
   * Rejects with a RefusalError ("not-found", or "hash" when the browser
   * refused the bytes it got).
   */
  async load(featureId: string): Promise<unknown> {
    const feature = this.requireFeature(featureId);
    if (!isBrowser()) {
      throw new Error("FeatureHost.load() needs a browser; in Node use NodeFeatureHost from @releasecontrol/host/node");
    }
    return loadInBrowser(feature, (at) => this.#count(featureId, feature.version, at));
  }

  /** The served feature `featureId`, or a RefusalError "not-found". */
  requireFeature(featureId: string): LoadedFeature {
    return this.features.get(featureId) ?? this.#notServed(featureId);
  }

  #notServed(featureId: string): never {
    const refusal = this.#refused[featureId];
    throw new RefusalError(
      "not-found",
      refusal?.file ?? "remote-index.json",
      `${featureId} is not served by this host` + (refusal ? ` (refused: ${refusal.code}: ${refusal.message})` : "; refresh first, and check the feature id"),
    );
  }

  /** A verified import map of the served features (section 8): entry per feature, integrity of every JavaScript asset. */
  importMap(): ImportMap {
    return importMapOf(this.features.values());
  }
}
