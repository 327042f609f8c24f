// One signed origin served over HTTP, and hosts pointed at it: what most tests start from.
import { FeatureHost, memoryState } from "../../dist/index.js";
import { makeKey, trustFile } from "./keys.js";
import { TestOrigin } from "./origin.js";
import { serve } from "./server.js";

export const CHECKOUT_V1 = {
  "index.js": 'import { label } from "./lib/label.js";\nexport default label("checkout", 1);\n',
  "lib/label.js": "export const label = (name, n) => `${name} v${n}`;\n",
  "style.css": "body { color: black }\n",
};
export const CHECKOUT_V2 = {
  "index.js": 'import { label } from "./lib/label.js";\nexport default label("checkout", 2);\n',
  "lib/label.js": "export const label = (name, n) => `${name} v${n}`;\n",
};
export const SEARCH_V1 = { "index.js": 'export default "search v1";\n' };

/**
 * An origin with root key seed 1, index key seed 2, and features checkout
 * (bin 63 at 7 bits) and search (bin 12) at 1.0.0, published once.
 */
export async function makeFixture({ bits = 7, publish = true } = {}) {
  const rootKey = await makeKey(1);
  const indexKey = await makeKey(2);
  const origin = new TestOrigin({ rootKeys: [rootKey], indexKeys: [indexKey], bits });
  origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1 }, stable: "1.0.0" });
  origin.setFeature("search", { versions: { "1.0.0": SEARCH_V1 }, stable: "1.0.0" });
  if (publish) await origin.publish();
  const fx = {
    rootKey,
    indexKey,
    origin,
    /** The files served now: the origin's own by default; a snapshot to replay an old origin. */
    serving: null,
    trust: trustFile([rootKey]),
    server: null,
    host(options = {}) {
      return new FeatureHost({ indexUrl: fx.server.indexUrl, trust: fx.trust, storage: memoryState(), limits: { timeoutMs: 2000 }, ...options });
    },
    async close() {
      await fx.server.close();
    },
  };
  fx.server = await serve(() => fx.serving ?? origin.files);
  return fx;
}

/** Serves the origin's files with one file's bytes replaced (a tampered CDN copy). */
export function tamper(fx, path, change = (bytes) => Buffer.concat([bytes, Buffer.from(" ")])) {
  const files = new Map(fx.origin.files);
  const bytes = files.get(path);
  if (!bytes) throw new Error(`no file ${path} to tamper with`);
  files.set(path, new Uint8Array(change(Buffer.from(bytes))));
  fx.serving = files;
}

/** Only the code and file of each refusal: what the protocol fixes (the messages are not the contract). */
export function codes(refused) {
  return Object.fromEntries(Object.entries(refused).map(([k, r]) => [k, { code: r.code, file: r.file }]));
}
