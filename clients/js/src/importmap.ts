import type { LoadedFeature } from "./model.js";
import { sortedRecord } from "./util.js";

/** Section 8: what a page inlines (or a host adds) so that the browser checks every module it runs. */
export interface ImportMap {
  /** feature id → its entry asset's URL. */
  imports: Record<string, string>;
  /** JavaScript asset URL → (URL its relative import of another asset resolves to → that asset's URL). */
  scopes: Record<string, Record<string, string>>;
  /** asset URL → "sha256-<base64>", for every JavaScript asset. */
  integrity: Record<string, string>;
}

const JAVASCRIPT = /\.m?js$/i;

export function isJavaScript(path: string): boolean {
  return JAVASCRIPT.test(path);
}

export function importMapOf(features: Iterable<LoadedFeature>): ImportMap {
  const imports: [string, string][] = [];
  const scopes: [string, Record<string, string>][] = [];
  const integrity: [string, string][] = [];
  for (const f of features) {
    imports.push([f.featureId, f.entryUrl]);
    scopes.push(...Object.entries(scopesOf(f)));
    for (const a of f.assets) if (isJavaScript(a.path)) integrity.push([a.url, a.integrity]);
  }
  return { imports: sortedRecord(imports), scopes: sortedRecord(scopes), integrity: sortedRecord(integrity) };
}

/** The relative specifier an asset at `from` uses for the asset at `to` (both manifest paths). */
function relative(from: string, to: string): string {
  const dir = from.split("/").slice(0, -1);
  const target = to.split("/");
  let i = 0;
  while (i < dir.length && i < target.length - 1 && dir[i] === target[i]) i++;
  const up = dir.length - i;
  return (up ? "../".repeat(up) : "./") + target.slice(i).join("/");
}

export interface FeatureImportMap {
  scopes: Record<string, Record<string, string>>;
  integrity: Record<string, string>;
}

/**
 * The import map `load()` adds for one feature. Assets live at content-addressed
 * URLs (artifacts/<sha256><ext>), so `./util.js` in the entry would resolve to
 * artifacts/util.js: a scope per JavaScript asset maps each URL its relative
 * imports resolve to onto the asset it means. No top-level `imports`: a feature
 * id mapped once could not be remapped to a newer version (import maps merge,
 * they never override), while scoped URLs of content-addressed files never
 * conflict. Integrity covers every asset such a scope can reach.
 */
export function featureImportMap(feature: LoadedFeature): FeatureImportMap {
  const integrity = sortedRecord(feature.assets.map((a) => [a.url, a.integrity] as [string, string]));
  return { scopes: scopesOf(feature), integrity };
}

/**
 * One scope per JavaScript asset of `feature`: each URL its relative import of another
 * asset resolves to (from its content-addressed URL) → that asset's URL (section 8).
 */
export function scopesOf(feature: LoadedFeature): Record<string, Record<string, string>> {
  const scopes: Record<string, Record<string, string>> = {};
  for (const from of feature.assets) {
    if (!isJavaScript(from.path)) continue;
    const map = new Map<string, string>();
    const ambiguous = new Set<string>();
    for (const to of feature.assets) {
      if (to === from) continue;
      const key = new URL(relative(from.path, to.path), from.url).href;
      if (key === to.url) continue;
      // Paths climbing above the artifacts folder can land on one URL: map none of them rather than a wrong one.
      if (map.has(key) && map.get(key) !== to.url) ambiguous.add(key);
      map.set(key, to.url);
    }
    for (const key of ambiguous) map.delete(key);
    if (map.size) scopes[from.url] = sortedRecord(map);
  }
  return sortedRecord(Object.entries(scopes));
}
