import { newBucketingKey } from "./bucketing.js";
import type { FetchLike } from "./fetch.js";

// Beacons (docs/beacons.md): per feature version, the loads begun and those that
// failed, summed here and POSTed in batches. Counts only: no user, no URL. It
// ships in the browser bundle, so it is kept small.

/** Why a load failed: the entry threw, a file could not be loaded, or a check refused it. */
export type FailureKind = "entry_error" | "load_failure" | "refusal";

/** The failure kinds in the order of their counts in a row, after the loads. */
export const KINDS: readonly FailureKind[] = ["entry_error", "load_failure", "refusal"];

/** "feature version" (neither holds a space) and its counts: loads, then KINDS. */
type Row = [string, number[]];

export class Beacons {
  /** Set once the control plane refused the key (403), or the host closed: nothing more is sent. */
  stopped = false;
  #pending = new Map<string, number[]>();
  #notBefore = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #sending: Promise<void> = Promise.resolve();
  /** A refusal is a bug or a misconfiguration that repeats: said once. */
  #warned = false;

  readonly url: string;
  readonly #key: string;
  readonly #interval: number;
  readonly #fetch: FetchLike;
  readonly #now: () => number;

  constructor(url: string, key: string, intervalMs: number, fetch: FetchLike, now: () => number) {
    this.url = url;
    this.#key = key;
    this.#interval = intervalMs;
    this.#fetch = fetch;
    this.#now = now;
  }

  /** Adds `n` to count `at` (0 the loads, else 1 + the kind's index in KINDS) of row `id`. */
  count(id: string, at: number, n = 1): void {
    if (this.stopped) return;
    let counts = this.#pending.get(id);
    // Bounded memory: past 1,000 versions waiting, counts of a new one are dropped.
    if (!counts && this.#pending.size < 1e3) this.#pending.set(id, (counts = [0, 0, 0, 0]));
    if (counts) counts[at]! += n;
    this.#timer ??= setTimeout(
      () => {
        this.#timer = undefined;
        void this.flush();
      },
      Math.max(this.#interval, this.#notBefore - this.#now()),
    );
    // A Node process may exit with counts pending: close() (or beforeExit) sends them.
    (this.#timer as { unref?: () => void }).unref?.();
  }

  /**
   * Sends what is pending, one flush after another. `final` (the page hides, the
   * host closes) sends at once, by navigator.sendBeacon where there is one (called
   * before this returns: a page may be gone after its pagehide handler), and keeps
   * nothing for later.
   */
  flush(final = false): Promise<void> {
    return (this.#sending = final ? this.#flush(final) : this.#sending.then(() => this.#flush(final)));
  }

  async #flush(final: boolean): Promise<void> {
    const now = this.#now();
    if (this.stopped || now < this.#notBefore) return;
    const queue: Row[][] = [];
    for (const rows = [...this.#pending]; rows.length; ) queue.push(rows.splice(0, 200));
    this.#pending.clear();
    for (let rows: Row[] | undefined; (rows = queue.shift()); ) {
      const body = JSON.stringify({
        v: 1,
        key: this.#key,
        batch: newBucketingKey(),
        sent_at: new Date(now).toISOString().slice(0, 19) + "Z",
        counts: rows.map(([id, c]) => {
          const [feature, version] = id.split(" ");
          return { feature, version, loads: c[0], entry_errors: c[1], load_failures: c[2], refusals: c[3] };
        }),
      });
      // A string body goes as text/plain: no CORS preflight. sendBeacon outlives the page, but answers nothing.
      if (final && (globalThis as { navigator?: { sendBeacon?(url: string, body: string): boolean } }).navigator?.sendBeacon?.(this.url, body)) continue;
      let status = 0;
      let answer: { field?: string; error?: string } = {};
      try {
        const response = await this.#fetch(this.url, { method: "POST", body, keepalive: final, signal: AbortSignal.timeout(1e4) });
        status = response.status;
        this.#notBefore = status === 429 ? this.#now() + 1e3 * (+response.headers.get("retry-after")! || 10) : 0;
        answer = Object(await response.json());
      } catch {
        /* no answer (or no JSON) */
      }
      const bad = /^counts\[(\d+)/.exec(answer.field!);
      if (status === 413 && rows[1]) {
        queue.unshift(rows.slice(0, rows.length >> 1), rows.slice(rows.length >> 1));
      } else if (status === 422 && bad && rows[1]) {
        // A version never published spoils only its own row.
        queue.unshift(rows.filter((_, i) => i !== +bad[1]!));
      } else if (status === 429 || (!final && !(status > 199 && status < 500))) {
        // Too many (not counted), no answer or a 5xx (the server or a proxy in front of it
        // failed): the rows go with a later batch.
        for (const [id, counts] of [rows, ...queue].flat()) counts.forEach((n, i) => this.count(id, i, n));
        return;
      } else if (status > 299) {
        // 403: not this control plane's key, sending stops. 400, 409, 422: dropped.
        this.#warned ||= (console.warn("releasecontrol: beacons refused", status, answer.error), true);
        if ((this.stopped = status === 403)) return;
      }
    }
  }
}
