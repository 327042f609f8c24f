// The shared test vectors in tests/vectors/ (made by tests/vectors/generate.py):
// every case must give exactly the verdicts its case.json expects. The Python
// host runs the same files. No vectors is a failure, not a skip.
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdtemp, rm, writeFile, mkdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, test } from "node:test";
import { binOf } from "../dist/index.js";
import { CHECKOUT_V1, CHECKOUT_V2, SEARCH_V1 } from "./helpers/fixture.js";
import { makeKey, trustFile } from "./helpers/keys.js";
import { TestOrigin } from "./helpers/origin.js";
import { refusedCodes, runCase } from "./helpers/vectors.js";

const VECTORS = process.env.RELEASECONTROL_VECTORS ?? fileURLToPath(new URL("../../../tests/vectors/", import.meta.url));

function listCases(root) {
  if (!existsSync(root)) return [];
  return readdirSync(root, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(root, d.name, "case.json")))
    .map((d) => d.name)
    .sort();
}

async function checkCase(dir) {
  const { steps } = await runCase(dir);
  steps.forEach(({ step, report }, i) => {
    const where = `step ${i + 1} (${step.origin})`;
    assert.deepEqual(report.loaded, step.expect.loaded ?? {}, `${where}: loaded`);
    assert.deepEqual(refusedCodes(report.refused), step.expect.refused ?? {}, `${where}: refused (messages: ${JSON.stringify(report.refused)})`);
  });
}

const cases = listCases(VECTORS);

describe(`shared vectors in ${VECTORS}`, () => {
  test("tests/vectors holds cases", () => {
    assert.ok(cases.length > 0, `no <case>/case.json under ${VECTORS}: the shared vectors are missing (run tests/vectors/generate.py)`);
  });

  for (const name of cases) {
    const description = JSON.parse(readFileSync(join(VECTORS, name, "case.json"), "utf8")).description ?? "";
    test(`${name}: ${description}`, () => checkCase(join(VECTORS, name)));
  }

  test("bins.json agrees with binOf", async () => {
    const file = join(VECTORS, "bins.json");
    assert.ok(existsSync(file), `${file} is missing`);
    const bins = JSON.parse(readFileSync(file, "utf8"));
    const triples = [];
    if (Array.isArray(bins)) {
      for (const e of bins) triples.push([e.feature_id ?? e.id, Number(e.bits), e.bin]);
    } else {
      for (const [k, v] of Object.entries(bins)) {
        for (const [k2, bin] of Object.entries(v)) {
          // {"7": {"checkout": "63"}} or {"checkout": {"7": "63"}}
          triples.push(/^\d+$/.test(k) ? [k2, Number(k), bin] : [k, Number(k2), bin]);
        }
      }
    }
    assert.ok(triples.length > 0, "bins.json lists no bins");
    for (const [id, bits, bin] of triples) assert.equal(await binOf(id, bits), bin, `${id} at ${bits} bits`);
  });
});

// The runner itself, on a case written here in the same format: proves it
// serves steps, applies `serve` misbehaviours and limits, and compares exactly.
test("the vector runner runs a case written in the section 10 format", async () => {
  const root = await mkdtemp(join(tmpdir(), "rc-vectors-"));
  try {
    const rootKey = await makeKey(1);
    const origin = new TestOrigin({ rootKeys: [rootKey], indexKeys: [await makeKey(2)] });
    const write = async (step, files) => {
      for (const [path, bytes] of files) {
        const full = join(root, "selftest", step, ...path.split("/"));
        await mkdir(dirname(full), { recursive: true });
        await writeFile(full, bytes);
      }
    };
    origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1 }, stable: "1.0.0" });
    origin.setFeature("search", { versions: { "1.0.0": SEARCH_V1 }, stable: "1.0.0" });
    await origin.publish();
    await write("step-1", origin.files);
    origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "2.0.0" });
    await origin.publish();
    await write("step-2", origin.files);
    const spec = {
      description: "an upgrade, a slow shard, then a replayed old top level",
      trust: trustFile([rootKey]),
      allow_dev_keys: false,
      channel: "stable",
      features: ["checkout", "search"],
      limits: { timeout_seconds: 0.6, max_index_bytes: 65536 },
      steps: [
        { origin: "step-1", expect: { loaded: { checkout: "1.0.0", search: "1.0.0" }, refused: {} } },
        {
          origin: "step-2",
          serve: { "index/7/12.json": { drip_bytes_per_second: 64 } },
          expect: { loaded: { checkout: "2.0.0", search: "1.0.0" }, refused: { search: { code: "timeout", file: "index/7/12.json" } } },
        },
        {
          origin: "step-1",
          expect: { loaded: { checkout: "2.0.0", search: "1.0.0" }, refused: { "remote-index.json": { code: "rollback", file: "remote-index.json" } } },
        },
        {
          origin: "step-2",
          serve: { "remote-index.json": { status: 503 } },
          expect: { loaded: { checkout: "2.0.0", search: "1.0.0" }, refused: { "remote-index.json": { code: "fetch", file: "remote-index.json" } } },
        },
        {
          origin: "step-2",
          serve: { "remote-index.json": { endless: true } },
          expect: { loaded: { checkout: "2.0.0", search: "1.0.0" }, refused: { "remote-index.json": { code: "too-large", file: "remote-index.json" } } },
        },
      ],
    };
    await writeFile(join(root, "selftest", "case.json"), JSON.stringify(spec, null, 2));
    assert.deepEqual(listCases(root), ["selftest"]);
    await checkCase(join(root, "selftest"));

    // And a wrong expectation fails: the runner compares exactly.
    spec.steps[0].expect.loaded.extra = "9.9.9";
    await writeFile(join(root, "selftest", "case.json"), JSON.stringify(spec));
    await assert.rejects(checkCase(join(root, "selftest")), /step 1 \(step-1\): loaded/);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
