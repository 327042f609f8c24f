// npm run size: the browser bundle's size, minified and gzipped (budget: 17 KB gzipped).
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const file = new URL("../dist/releasecontrol-host.min.js", import.meta.url);
let bytes;
try {
  bytes = readFileSync(file);
} catch {
  console.error("size: dist/releasecontrol-host.min.js is missing; run npm run build first");
  process.exit(2);
}
const gzip = gzipSync(bytes, { level: 9 }).length;
const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
console.log(`dist/releasecontrol-host.min.js: ${bytes.length} bytes minified (${kb(bytes.length)}), ${gzip} bytes gzipped (${kb(gzip)})`);
if (gzip > 17 * 1024) {
  console.error(`size: ${kb(gzip)} gzipped is over the 17 KB budget`);
  process.exit(1);
}
