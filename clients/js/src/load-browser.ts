import { RefusalError } from "./errors.js";
import { artifactPath } from "./files.js";
import { featureImportMap } from "./importmap.js";
import type { LoadedFeature } from "./model.js";

// Section 8: the browser, not this library, must check the bytes it runs; the
// refresh checked them once, but the CDN could serve other bytes the second
// time. Nothing is imported before the import map (integrity of every asset)
// is in the document and the entry's modulepreload with SRI has loaded.

const mapped = new Set<string>();
const preloads = new Map<string, Promise<void>>();

function entryFile(feature: LoadedFeature): string {
  const entry = feature.assets.find((a) => a.path === feature.entry)!;
  return artifactPath(entry.sha256, entry.path);
}

function addImportMap(feature: LoadedFeature): void {
  const key = `${feature.featureId}@${feature.manifestSha256}`;
  if (mapped.has(key)) return;
  const script = document.createElement("script");
  script.type = "importmap";
  script.textContent = JSON.stringify(featureImportMap(feature));
  // Chromium 133+ merges an import map added after modules ran; earlier browsers ignore it.
  document.head.append(script);
  mapped.add(key);
}

function preload(feature: LoadedFeature): Promise<void> {
  const entry = feature.assets.find((a) => a.path === feature.entry)!;
  let done = preloads.get(entry.url);
  if (!done) {
    done = new Promise<void>((resolve, reject) => {
      const link = document.createElement("link");
      link.rel = "modulepreload";
      link.integrity = entry.integrity;
      link.href = entry.url;
      link.onload = () => resolve();
      link.onerror = () =>
        reject(
          new RefusalError(
            "hash",
            entryFile(feature),
            `the browser refused ${entryFile(feature)}, the entry of ${feature.featureId} ${feature.version}: ` +
              "its bytes do not match the signed manifest (or it could not be fetched); it did not run. Reload the page once the CDN serves the published file",
          ),
        );
      document.head.append(link);
    });
    preloads.set(entry.url, done);
  }
  return done;
}

/** `count(at)`: a beacon count of this version: 0 a load, 1 an entry error, 2 a failed load. */
export async function loadInBrowser(feature: LoadedFeature, count: (at: number) => void): Promise<unknown> {
  count(0);
  addImportMap(feature);
  try {
    await preload(feature);
  } catch (error) {
    // The browser refused the entry's bytes or could not fetch them: a failed load.
    count(2);
    throw error;
  }
  try {
    return await import(/* webpackIgnore: true */ /* @vite-ignore */ feature.entryUrl);
  } catch (error) {
    // The module (or one it imports) threw or did not load, after the host verified it.
    count(1);
    // A module that threw while it ran is the feature's own error; a TypeError is the loader's
    // (a dependency that failed its integrity check or could not be fetched).
    if (!(error instanceof TypeError)) throw error;
    throw new RefusalError(
      "hash",
      entryFile(feature),
      `the browser did not run ${feature.featureId} ${feature.version} (${(error as Error)?.message ?? error}): ` +
        "a module it imports does not match the signed manifest or could not be fetched",
      { cause: error },
    );
  }
}
