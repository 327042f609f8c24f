import { refuse } from "./errors.js";
import type { BoundedFetch, FetchLike } from "./fetch.js";
import type { Limits } from "./limits.js";
import type { Pin } from "./values.js";

// Section 7: how each file of the origin is requested, bounded in size and
// time. A refresh builds a file's request with the same function whether it
// fetches the file early (a prefetch, downloads.ts) or when it needs it, so the
// two are always the same request with the same bounds, and a limit that
// refuses a file refuses it before any byte in both cases.

export const INDEX = "remote-index.json";

/** What a request needs from the host's configuration (a RefreshContext has it). */
export interface Origin {
  indexUrl: URL;
  limits: Readonly<Limits>;
  fetch: FetchLike;
}

export type Request = Omit<BoundedFetch, "signal">;

function showBytes(n: number): string {
  return `${n} bytes`;
}

/** The origin's URL of `path`; only the index URL's origin is ever fetched. */
export function originUrl(indexUrl: URL, path: string): URL {
  const url = new URL(path, indexUrl);
  if (url.origin !== indexUrl.origin) {
    refuse("fetch", path, `${path} resolves to ${url.origin}, not the index URL's origin ${indexUrl.origin}: hosts never fetch from another origin`);
  }
  return url;
}

function request(origin: Origin, file: string, max: number, overCode: Request["overCode"], maxIs: string, revalidate: boolean): Request {
  return { url: originUrl(origin.indexUrl, file), file, max, overCode, maxIs, revalidate, timeoutMs: origin.limits.timeoutMs, fetch: origin.fetch };
}

export function indexRequest(origin: Origin): Request {
  const max = origin.limits.maxIndexBytes;
  return request(origin, INDEX, max, "too-large", `the host's limit maxIndexBytes (${showBytes(max)})`, true);
}

export function rootRequest(origin: Origin, file: string): Request {
  const max = origin.limits.maxRootBytes;
  return request(origin, file, max, "too-large", `the host's limit maxRootBytes (${showBytes(max)})`, false);
}

/** A file pinned by its parent (a shard, a releases.json): at most its pinned length, which the host's limit caps. */
export function pinnedRequest(origin: Origin, file: string, pin: Pin, parent: string): Request {
  const limit = origin.limits.maxPinnedBytes;
  if (pin.length > limit) {
    refuse(
      "too-large",
      file,
      `${parent} pins ${file} at ${pin.length} bytes, more than the host's limit maxPinnedBytes (${showBytes(limit)}); ` +
        "raise the limit only if the origin really publishes files this large",
    );
  }
  return request(origin, file, pin.length, "length", `the ${pin.length} bytes ${parent} pins`, true);
}

export function manifestRequest(origin: Origin, file: string): Request {
  const max = origin.limits.maxManifestBytes;
  return request(origin, file, max, "too-large", `the host's limit maxManifestBytes (${showBytes(max)})`, false);
}

/** An asset: at most the size its manifest lists, which the host's limit caps. */
export function artifactRequest(origin: Origin, file: string, size: number): Request {
  const limit = origin.limits.maxArtifactBytes;
  if (size > limit) {
    refuse("too-large", file, `${file} is listed at ${size} bytes, more than the host's limit maxArtifactBytes (${showBytes(limit)}); raise the limit only if features really ship assets this large`);
  }
  return request(origin, file, size, "length", `the ${size} bytes its manifest lists`, false);
}
