import { concat } from "./bytes.js";
import { RefusalError, type RefusalCode } from "./errors.js";

export type FetchLike = (input: string, init?: RequestInit) => Promise<Response>;

export interface BoundedFetch {
  url: URL;
  /** The origin path, for refusals. */
  file: string;
  /** The most bytes accepted; a host stops reading there. */
  max: number;
  /** `too-large` when `max` is a host limit, `length` when it is what a parent pins. */
  overCode: Extract<RefusalCode, "too-large" | "length">;
  /** Says what `max` is, for the refusal: "the host's limit maxIndexBytes (2097152 bytes)". */
  maxIs: string;
  /** Index files live at fixed paths: a cache in between must revalidate them. */
  revalidate: boolean;
  timeoutMs: number;
  fetch: FetchLike;
  /** Stops the download: a refresh ends with prefetched files nobody asked for. */
  signal?: AbortSignal;
}

function seconds(ms: number): string {
  return `${Number((ms / 1000).toFixed(3))} s`;
}

/**
 * Downloads one file with a deadline on the whole request (connect to last
 * byte) and a size cap enforced while streaming, so neither a slow drip nor an
 * endless body costs more than the limits. Only a plain 200 is accepted: a
 * redirect could lead to another origin.
 */
export async function fetchBounded(spec: BoundedFetch): Promise<Uint8Array> {
  const { file } = spec;
  const controller = new AbortController();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      // Made here, not up front: an Error (its stack, its message) costs every download, and few time out.
      // Reject first: aborting rejects the fetch at once, and the race must see the timeout.
      reject(
        new RefusalError(
          "timeout",
          file,
          `${file} did not arrive within ${seconds(spec.timeoutMs)} (the request deadline); ` +
            "the origin or the network is too slow: the host keeps its last good state and tries again next refresh",
        ),
      );
      controller.abort();
    }, spec.timeoutMs);
  });
  const stop = (): void => controller.abort();
  spec.signal?.addEventListener("abort", stop);
  if (spec.signal?.aborted) stop();
  const work = download(spec, controller, () => controller.signal.aborted);
  // The loser of the race must not surface as an unhandled rejection.
  work.catch(() => undefined);
  try {
    return await Promise.race([work, deadline]);
  } catch (error) {
    controller.abort();
    throw error;
  } finally {
    clearTimeout(timer);
    spec.signal?.removeEventListener("abort", stop);
  }
}

async function download(spec: BoundedFetch, controller: AbortController, aborted: () => boolean): Promise<Uint8Array> {
  const { file } = spec;
  let response: Response;
  try {
    response = await spec.fetch(spec.url.href, {
      signal: controller.signal,
      redirect: "error",
      cache: spec.revalidate ? "no-cache" : "default",
      credentials: "same-origin",
    });
  } catch (error) {
    if (aborted()) throw error;
    throw new RefusalError(
      "fetch",
      file,
      `${file} could not be fetched from ${spec.url.href} (${describe(error)}; redirects are refused too): ` +
        "check the index URL and that the origin is up",
      { cause: error },
    );
  }
  if (response.status !== 200) {
    response.body?.cancel().catch(() => undefined);
    throw new RefusalError(
      "fetch",
      file,
      `${file} answered HTTP ${response.status} instead of 200 at ${spec.url.href}: ` +
        "check that the origin serves every file the index names",
    );
  }
  const over = (size: string) =>
    new RefusalError(
      spec.overCode,
      file,
      `${file} is ${size} bytes, more than ${spec.maxIs}; the host stopped reading: ` +
        (spec.overCode === "length"
          ? "the origin serves another file than the one signed; republish or purge the CDN cache"
          : "raise the limit only if the origin really publishes files this large"),
    );
  // A declared length is only comparable when the body is not content-encoded
  // (fetch counts decoded bytes); a cross-origin response hides Content-Encoding,
  // so there the cap is enforced while reading only.
  const declared = response.headers.get("content-length");
  const encoding = response.headers.get("content-encoding");
  const encodingVisible = response.type === "basic" || response.type === "default";
  if (declared !== null && /^\d+$/.test(declared) && encodingVisible && (!encoding || encoding === "identity")) {
    if (Number(declared) > spec.max) {
      response.body?.cancel().catch(() => undefined);
      throw over(declared);
    }
  }
  if (!response.body) return new Uint8Array(0);
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > spec.max) {
        reader.cancel().catch(() => undefined);
        throw over(`at least ${total}`);
      }
      chunks.push(value);
    }
  } catch (error) {
    if (error instanceof RefusalError || aborted()) throw error;
    throw new RefusalError(
      "fetch",
      file,
      `${file} broke off after ${total} bytes (${describe(error)}): the origin or the network failed mid-transfer`,
      { cause: error },
    );
  }
  return concat(chunks, total);
}

function describe(error: unknown): string {
  const e = error as { message?: string; cause?: { message?: string; code?: string } };
  const inner = e?.cause?.code ?? e?.cause?.message;
  return inner ? `${e.message ?? String(error)}: ${inner}` : (e?.message ?? String(error));
}
