#!/usr/bin/env node
// releasecontrol-host: verify a ReleaseControl origin as a host would (host protocol v2).
// Exit codes: 0 everything verified, 1 something was refused, 2 bad usage or configuration.
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { FeatureHost, fileState, memoryState } from "../dist/node.js";

const PROG = "releasecontrol-host";

const TOP_HELP = `Usage: ${PROG} <command> [options]

Verify a ReleaseControl origin exactly as a host does before it runs a feature
(host protocol v2: roots, signatures, pins, expiry, rollback, sizes, hashes).

Commands:
  verify      print what a host would load; exit 1 when anything is refused
  importmap   print a verified import map (imports + integrity) for a page to inline

Run "${PROG} <command> --help" for a command's options.
Exit codes: 0 verified, 1 refused, 2 bad usage or configuration.
`;

const COMMON = `  --index-url URL        the URL of remote-index.json (required)
  --trust FILE           the trust file: root keys the host pins (required)
  --allow-dev-keys       count signatures by keys marked "dev" (insecure: development only)
  --feature F            a feature to verify; repeat for several (default: every feature)
  --channel stable|canary  the channel to follow (default: stable)
  --bucketing-key KEY    whose side of a percentage canary to show (1 to 256 bytes of UTF-8,
                         e.g. a user id; default: a random key, kept in the --state file)
  --state FILE           keep the host's state (trusted root, high-water marks) in FILE,
                         so that a later run refuses rollbacks (default: none)
  --timeout SECONDS      deadline of each request (default: 10)
  -h, --help             show this help`;

const HELP = {
  verify: `Usage: ${PROG} verify --index-url URL --trust FILE [options]

Fetches and verifies the origin like a host, then prints per feature the version
it would load, its channel, its releases.json sequence, the keys that signed it
and its entry URL. While a percentage canary runs it verifies both versions (a
user may get either) and shows the canary's weight and the key's bucket (the
side is "canary" iff the bucket is below the weight). Exits 1 and prints the
refusals when anything is refused.

Options:
${COMMON}
  --output text|json     output format (default: text)
`,
  importmap: `Usage: ${PROG} importmap --index-url URL --trust FILE [options]

Verifies the origin like a host, then prints an import map whose "imports" maps
each feature id to its entry and whose "integrity" lists the SHA-256 of every
JavaScript asset, for a page to inline in <script type="importmap">. Prints
nothing and exits 1 when anything is refused.

Options:
${COMMON}
`,
};

const OPTIONS = {
  "index-url": { type: "string" },
  trust: { type: "string" },
  "allow-dev-keys": { type: "boolean" },
  feature: { type: "string", multiple: true },
  channel: { type: "string" },
  "bucketing-key": { type: "string" },
  state: { type: "string" },
  timeout: { type: "string" },
  output: { type: "string" },
  help: { type: "boolean", short: "h" },
};

class UsageError extends Error {}

function usage(message) {
  throw new UsageError(message);
}

function parse(command, args) {
  let values;
  try {
    ({ values } = parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false }));
  } catch (error) {
    usage(`${error.message.split("\n")[0].replace(/\.$/, "")}; see ${PROG} ${command} --help`);
  }
  if (values.help) return { help: true };
  if (command === "importmap" && values.output !== undefined) usage(`importmap always prints JSON; drop --output`);
  if (!values["index-url"]) usage(`--index-url is required; see ${PROG} ${command} --help`);
  if (!values.trust) usage(`--trust is required (the trust file with the root keys); see ${PROG} ${command} --help`);
  const channel = values.channel ?? "stable";
  if (channel !== "stable" && channel !== "canary") usage(`--channel must be stable or canary, not ${JSON.stringify(channel)}`);
  const output = values.output ?? "text";
  if (output !== "text" && output !== "json") usage(`--output must be text or json, not ${JSON.stringify(output)}`);
  let timeoutMs;
  if (values.timeout !== undefined) {
    const seconds = Number(values.timeout);
    if (!(seconds > 0) || !Number.isFinite(seconds)) usage(`--timeout must be a positive number of seconds, not ${JSON.stringify(values.timeout)}`);
    timeoutMs = seconds * 1000;
  }
  let trust;
  try {
    trust = readFileSync(values.trust, "utf8");
  } catch (error) {
    usage(`cannot read trust file ${values.trust}: ${error.code ?? error.message}`);
  }
  let host;
  try {
    host = new FeatureHost({
      indexUrl: values["index-url"],
      trust,
      allowDevKeys: values["allow-dev-keys"] ?? false,
      channel,
      features: values.feature ?? null,
      limits: timeoutMs ? { timeoutMs } : {},
      storage: values.state ? fileState(values.state) : memoryState(),
      bucketingKey: values["bucketing-key"],
      // What any user may be served is verified, not only this key's side.
      bothSides: true,
    });
  } catch (error) {
    // Say it in the CLI's words: the file or the flag at fault.
    usage(
      error.message
        .replace(/^FeatureHost: /, "")
        .replace(/^trust file:/, `trust file ${values.trust}:`)
        .replace(/^indexUrl/, "--index-url")
        .replace(/^bucketingKey/, "--bucketing-key")
        .replace(/^features\[\d+\]/, "--feature"),
    );
  }
  return { host, output };
}

function describeRefusals(refused) {
  const keys = Object.keys(refused);
  const first = refused[keys[0]];
  return `${keys.length} refused (${keys.map((k) => `${k}: ${refused[k].code}`).join(", ")}); first: ${first.message}`;
}

function printText(host, report) {
  const lines = [`${host.indexUrl}: remote-index.json sequence ${report.remoteSequence ?? "-"}, root ${report.rootVersion ?? "-"}, channel ${host.channel}`];
  const rows = [["FEATURE", "VERSION", "CHANNEL", "CANARY", "BUCKET", "RELEASES", "KEYS", "ENTRY"]];
  for (const f of host.features.values()) {
    rows.push([
      f.featureId,
      f.version,
      f.channel,
      f.canaryWeight === null ? "-" : `${f.canaryWeight / 100}%`,
      f.bucket === null ? "-" : String(f.bucket),
      `#${f.sequence}`,
      f.keyids.map((k) => k.slice(0, 8)).join(","),
      f.entryUrl,
    ]);
  }
  if (rows.length > 1) {
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
    for (const r of rows) lines.push(r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join("  "));
  } else {
    lines.push("no feature would be loaded");
  }
  const refused = Object.entries(report.refused);
  if (refused.length) {
    lines.push("", "refused:");
    for (const [key, r] of refused) lines.push(`  ${key}: ${r.code} (${r.file}): ${r.message}`);
  }
  process.stdout.write(lines.join("\n") + "\n");
}

function printJson(host, report) {
  const features = {};
  for (const f of host.features.values()) {
    features[f.featureId] = {
      version: f.version,
      channel: f.channel,
      canary_weight: f.canaryWeight,
      bucket: f.bucket,
      sequence: f.sequence,
      keyids: f.keyids,
      entry_url: f.entryUrl,
      manifest_sha256: f.manifestSha256,
    };
  }
  const out = {
    ok: report.ok,
    index_url: host.indexUrl,
    channel: host.channel,
    remote_sequence: report.remoteSequence,
    root_version: report.rootVersion,
    features,
    refused: report.refused,
  };
  process.stdout.write(JSON.stringify(out, null, 2) + "\n");
}

async function main(argv) {
  const [command, ...args] = argv;
  if (command === undefined) {
    process.stderr.write(TOP_HELP);
    return 2;
  }
  if (command === "-h" || command === "--help" || command === "help") {
    process.stdout.write(TOP_HELP);
    return 0;
  }
  if (!(command in HELP)) usage(`unknown command ${JSON.stringify(command)}; use verify or importmap (see ${PROG} --help)`);
  const parsed = parse(command, args);
  if (parsed.help) {
    process.stdout.write(HELP[command]);
    return 0;
  }
  const { host, output } = parsed;
  let report;
  try {
    report = await host.refresh();
  } catch (error) {
    usage(error.message.replace(/^FeatureHost: /, ""));
  }
  if (command === "verify") {
    (output === "json" ? printJson : printText)(host, report);
    if (!report.ok) {
      process.stderr.write(`${PROG}: ${describeRefusals(report.refused)}\n`);
      return 1;
    }
    return 0;
  }
  if (!report.ok) {
    process.stderr.write(`${PROG}: not verified, no import map printed: ${describeRefusals(report.refused)}\n`);
    return 1;
  }
  process.stdout.write(JSON.stringify(host.importMap(), null, 2) + "\n");
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    if (error instanceof UsageError) {
      process.stderr.write(`${PROG}: ${error.message}\n`);
      process.exitCode = 2;
    } else {
      process.stderr.write(`${PROG}: internal error: ${error?.stack ?? error}\n`);
      process.exitCode = 70;
    }
  },
);
