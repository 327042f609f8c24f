import { fetchBounded } from "./fetch.js";
import type { Request } from "./requests.js";

// One refresh's downloads. A refresh is a chain (remote-index.json names the
// shard, the shard names releases.json, ...) and each link used to wait for
// the previous file's verification before its request went out. prefetch()
// starts a request as soon as the parent is parsed; get() hands its bytes over
// only when the refresh, having verified the parent, makes the very same
// request (same file, same bounds). So nothing unverified decides what bytes
// are used, a refused parent still wins (its child is simply never asked for),
// and each download keeps its own size cap and deadline. What nobody asked for
// is aborted when the refresh ends.

function keyOf(request: Request): string {
  return [request.file, request.max, request.overCode, request.maxIs, request.revalidate].join("\n");
}

export class Downloads {
  readonly #early = new Map<string, Promise<Uint8Array>>();
  readonly #stop = new AbortController();
  readonly #maxEarly: number;
  #inFlight = 0;

  /** At most `maxEarly` prefetches in flight at once: beyond that, a file waits for its turn as before. */
  constructor(maxEarly: number) {
    this.#maxEarly = maxEarly;
  }

  /** The bytes of `request`: the prefetch of the same request if one was started, else a new download. */
  get(request: Request): Promise<Uint8Array> {
    const key = keyOf(request);
    const early = this.#early.get(key);
    if (early) {
      this.#early.delete(key);
      return early;
    }
    return fetchBounded({ ...request, signal: this.#stop.signal });
  }

  /**
   * Starts `request` before anything vouches for the file; returns the download, or
   * undefined when it was not started (already started, or enough in flight).
   */
  prefetch(request: Request): Promise<Uint8Array> | undefined {
    const key = keyOf(request);
    if (this.#early.has(key) || this.#inFlight >= this.#maxEarly) return undefined;
    this.#inFlight++;
    const bytes = fetchBounded({ ...request, signal: this.#stop.signal });
    // Handled here: a prefetch nobody asks for (its parent was refused) must not
    // surface as an unhandled rejection; whoever does ask still gets the rejection.
    bytes.then(
      () => this.#inFlight--,
      () => this.#inFlight--,
    );
    this.#early.set(key, bytes);
    return bytes;
  }

  /** Ends the refresh's downloads: prefetches nobody asked for are aborted. */
  close(): void {
    this.#early.clear();
    this.#stop.abort();
  }
}
