// One Node host of the fleet test (test_fleet.py): the real @releasecontrol/host NodeFeatureHost
// (clients/js/dist, built by `make js-test`), serving `users` users of `checkout`. Until
// SIGTERM it refreshes, gives each user their side (versionFor), reports the load, and an
// entry error for one load in `failRate` of version `failVersion`; on SIGTERM it sends the last
// beacons and writes each user's sides, in order, to `out` as JSON.
import { readFileSync, writeFileSync } from "node:fs";
import { NodeFeatureHost } from "../../clients/js/dist/node.js";

const [indexUrl, trustPath, cacheDir, beaconUrl, beaconKey, name, users, failVersion, failRate, out] =
  process.argv.slice(2);
const host = new NodeFeatureHost({
  indexUrl,
  trust: readFileSync(trustPath, "utf8"),
  allowDevKeys: true,
  cacheDir,
  beaconUrl,
  beaconKey,
  beaconIntervalMs: 300,
});
const keys = Array.from({ length: Number(users) }, (_, n) => `${name}-user-${n}`);
const sides = Object.fromEntries(keys.map((key) => [key, []]));
let stopping = false;
process.on("SIGTERM", () => (stopping = true));

while (!stopping) {
  await host.refresh();
  for (const key of keys) {
    let feature;
    try {
      feature = host.versionFor("checkout", key);
    } catch {
      continue; // nothing verified yet
    }
    host.reportLoad("checkout", feature.version);
    if (feature.version === failVersion && Math.random() < Number(failRate)) {
      host.reportFailure("checkout", feature.version, "entry_error");
    }
    sides[key].push([feature.version, feature.canaryWeight ?? null]);
  }
  await new Promise((resolve) => setTimeout(resolve, 100));
}
await host.close();
writeFileSync(out, JSON.stringify(sides));
