// Runs one case of the shared test vectors (docs/host-protocol.md section 10):
// one host per case with fresh memory state, one refresh per step against the
// step's folder served over HTTP with the step's misbehaviours.
import { readdir, readFile } from "node:fs/promises";
import { join, relative, sep } from "node:path";
import { FeatureHost, memoryState } from "../../dist/index.js";
import { serve } from "./server.js";

const LIMITS = {
  max_index_bytes: "maxIndexBytes",
  max_root_bytes: "maxRootBytes",
  max_pinned_bytes: "maxPinnedBytes",
  max_manifest_bytes: "maxManifestBytes",
  max_artifact_bytes: "maxArtifactBytes",
};

export function limitsOf(limits = {}) {
  const out = {};
  for (const [name, value] of Object.entries(limits ?? {})) {
    if (name === "timeout_seconds") out.timeoutMs = value * 1000;
    else if (LIMITS[name]) out[LIMITS[name]] = value;
    else throw new Error(`case.json: unknown limit ${name}`);
  }
  return out;
}

const SERVE = new Set(["status", "drip_bytes_per_second", "endless"]);

async function readTree(dir) {
  const files = new Map();
  for (const entry of await readdir(dir, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const full = join(entry.parentPath ?? entry.path, entry.name);
    files.set(relative(dir, full).split(sep).join("/"), new Uint8Array(await readFile(full)));
  }
  return files;
}

/** Runs the case in `caseDir`; resolves with each step's expectation and report. */
export async function runCase(caseDir) {
  const spec = JSON.parse(await readFile(join(caseDir, "case.json"), "utf8"));
  let files = new Map();
  const server = await serve(() => files);
  try {
    const host = new FeatureHost({
      indexUrl: server.indexUrl,
      trust: spec.trust,
      allowDevKeys: spec.allow_dev_keys ?? false,
      channel: spec.channel ?? "stable",
      features: spec.features ?? null,
      limits: limitsOf(spec.limits),
      storage: memoryState(),
    });
    const steps = [];
    for (const step of spec.steps) {
      files = await readTree(join(caseDir, step.origin));
      server.behaviours.clear();
      for (const [path, behaviour] of Object.entries(step.serve ?? {})) {
        for (const key of Object.keys(behaviour)) if (!SERVE.has(key)) throw new Error(`case.json: unknown serve behaviour ${key}`);
        server.behaviours.set(path, behaviour);
      }
      steps.push({ step, report: await host.refresh() });
    }
    return { spec, steps };
  } finally {
    await server.close();
  }
}

/** What a step's expectation compares: code and file per refused key. */
export function refusedCodes(refused) {
  return Object.fromEntries(Object.entries(refused).map(([k, r]) => [k, { code: r.code, file: r.file }]));
}
