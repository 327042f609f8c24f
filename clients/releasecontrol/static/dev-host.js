// The page `releasectl dev-host` serves: every feature loaded in this browser by
// @releasecontrol/host, straight from the CDN, after it verified everything
// (docs/host-protocol.md). Shows per feature the verified version, channel (with a
// percentage canary's weight and this browser's bucket),
// releases.json sequence and signing key, what ran, and what was refused and why.
// The CDN is not trusted: everything shown from it goes in as text, never as HTML.
import { FeatureHost } from "/static/releasecontrol-host.min.js";

const config = JSON.parse(document.getElementById("config").textContent);
const host = new FeatureHost({
  indexUrl: config.indexUrl,
  trust: config.trust,
  allowDevKeys: config.allowDevKeys,
  channel: config.channel,
  refreshIntervalMs: config.intervalMs,
});
// For a person poking at it in the console.
globalThis.releasecontrolHost = host;

const ran = new Map(); // feature id -> {version, text, failed}

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// The side served, and while a canary runs, its weight and this browser's bucket: the side is
// the canary iff the bucket is below the weight (or the page follows the canary channel).
function sideText(feature) {
  if (feature.canaryWeight === null) return feature.channel;
  const share = `canary at ${feature.canaryWeight / 100}%`;
  return feature.bucket === null ? `${feature.channel} (opted in; ${share})` : `${feature.channel} (${share}, bucket ${feature.bucket})`;
}

function describeModule(namespace) {
  const parts = [];
  for (const [name, value] of Object.entries(namespace)) {
    const shown = ["string", "number", "boolean"].includes(typeof value) ? JSON.stringify(value) : typeof value;
    parts.push(`${name}=${shown}`);
  }
  return parts.length ? parts.join(", ") : "(no exports)";
}

async function runLoaded() {
  for (const feature of host.features.values()) {
    const seen = ran.get(feature.featureId);
    if (seen && seen.version === feature.version) continue;
    try {
      const namespace = await host.load(feature.featureId);
      ran.set(feature.featureId, { version: feature.version, text: describeModule(namespace), failed: false });
    } catch (error) {
      ran.set(feature.featureId, { version: feature.version, text: error.message ?? String(error), failed: true });
    }
  }
}

function render(report) {
  const rows = document.getElementById("features");
  rows.replaceChildren();
  for (const feature of [...host.features.values()].sort((a, b) => a.featureId.localeCompare(b.featureId))) {
    const tr = document.createElement("tr");
    tr.dataset.feature = feature.featureId;
    const result = ran.get(feature.featureId);
    tr.append(
      cell(feature.featureId, "feature"),
      cell(feature.version, "version"),
      cell(sideText(feature), "channel"),
      cell(String(feature.sequence), "sequence"),
      cell(feature.keyids.map((k) => k.slice(0, 8) + "…").join(", "), "keys"),
      cell(result ? result.text : "not run yet", result && result.failed ? "ran failed" : "ran"),
    );
    rows.append(tr);
  }
  if (!host.features.size) {
    const tr = document.createElement("tr");
    const td = cell("nothing verified yet", "empty");
    td.colSpan = 6;
    tr.append(td);
    rows.append(tr);
  }
  const refused = document.getElementById("refused");
  refused.replaceChildren();
  for (const [key, refusal] of Object.entries(host.refused).sort()) {
    const li = document.createElement("li");
    li.dataset.refused = key;
    const code = document.createElement("code");
    code.className = "code";
    code.textContent = refusal.code;
    const file = document.createElement("span");
    file.className = "file";
    file.textContent = refusal.file;
    const message = document.createElement("span");
    message.className = "message";
    message.textContent = refusal.message;
    li.append(document.createTextNode(`${key}: `), code, document.createTextNode(" "), file, document.createTextNode(" — "), message);
    refused.append(li);
  }
  document.getElementById("refused-none").hidden = Object.keys(host.refused).length > 0;
  const status = document.getElementById("status");
  status.textContent =
    `refreshed ${new Date().toISOString().slice(0, 19)}Z: ` +
    (report.remoteSequence === null
      ? "no remote-index.json verified yet"
      : `remote-index.json sequence ${report.remoteSequence}, root ${report.rootVersion}`) +
    (report.ok ? ", nothing refused" : ", with refusals");
  status.dataset.remoteSequence = String(report.remoteSequence ?? "");
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes ?? "0") + 1);
}

function logEvent(text) {
  const li = document.createElement("li");
  li.textContent = `${new Date().toISOString().slice(11, 19)} ${text}`;
  document.getElementById("events").prepend(li);
}

host.addEventListener("change", (event) => {
  const { featureId, from, to } = event.detail;
  logEvent(`${featureId}: ${from ?? "none"} → ${to ?? "none"}`);
});
host.addEventListener("refresh", async (event) => {
  await runLoaded();
  render(event.detail);
});
host.addEventListener("error", (event) => logEvent(`refresh failed: ${event.detail.error}`));
document.getElementById("refresh").addEventListener("click", () => {
  host.refresh();
});
host.start();
