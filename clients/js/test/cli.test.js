// The releasecontrol-host CLI, run as a user runs it: a subprocess against a real origin.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import { CHECKOUT_V1, CHECKOUT_V2, makeFixture, tamper } from "./helpers/fixture.js";

const BIN = fileURLToPath(new URL("../bin/releasecontrol-host.js", import.meta.url));

/** Runs the CLI; resolves with {code, stdout, stderr} (the origin keeps serving meanwhile). */
function cli(...args) {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { env: { PATH: process.env.PATH }, timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error ? error.code : 0, stdout, stderr });
    });
  });
}

describe("releasecontrol-host", () => {
  let fx;
  let dir;
  let trustPath;
  before(async () => {
    fx = await makeFixture();
    dir = await mkdtemp(join(tmpdir(), "rc-cli-"));
    trustPath = join(dir, "trust.json");
    await writeFile(trustPath, JSON.stringify(fx.trust));
  });
  after(async () => {
    await fx.close();
    await rm(dir, { recursive: true, force: true });
  });
  const base = () => ["--index-url", fx.server.indexUrl, "--trust", trustPath];

  test("verify prints what a host would load and exits 0", async () => {
    fx.serving = null;
    const { code, stdout, stderr } = await cli("verify", ...base());
    assert.equal(code, 0, stderr);
    assert.equal(stderr, "");
    assert.match(stdout, /remote-index\.json sequence 1, root 1, channel stable/);
    const row = stdout.split("\n").find((l) => l.startsWith("checkout "));
    assert.ok(row, stdout);
    // No canary runs: no weight, no bucket.
    assert.match(row, /^checkout\s+1\.0\.0\s+stable\s+-\s+-\s+#1\s+/);
    assert.ok(row.includes(fx.indexKey.keyid.slice(0, 8)) && !row.includes(fx.indexKey.keyid), "short keyid");
    assert.ok(row.endsWith(fx.server.base + (await fx.origin.artifactOf("checkout", "1.0.0", "index.js"))));
  });

  test("verify --output json has one entry per feature and the refusals", async () => {
    fx.serving = null;
    const { code, stdout } = await cli("verify", ...base(), "--output", "json", "--feature", "checkout", "--feature", "nope");
    assert.equal(code, 1);
    const out = JSON.parse(stdout);
    assert.deepEqual(Object.keys(out).sort(), ["channel", "features", "index_url", "ok", "refused", "remote_sequence", "root_version"]);
    assert.equal(out.ok, false);
    assert.equal(out.remote_sequence, 1);
    assert.equal(out.root_version, 1);
    assert.deepEqual(Object.keys(out.features), ["checkout"]);
    const checkout = out.features.checkout;
    assert.equal(checkout.version, "1.0.0");
    assert.equal(checkout.channel, "stable");
    assert.equal(checkout.canary_weight, null);
    assert.equal(checkout.bucket, null);
    assert.equal(checkout.sequence, 1);
    assert.deepEqual(checkout.keyids, [fx.indexKey.keyid]);
    assert.match(checkout.entry_url, /\/artifacts\/[0-9a-f]{64}\.js$/);
    assert.match(checkout.manifest_sha256, /^[0-9a-f]{64}$/);
    assert.deepEqual(Object.keys(out.refused), ["nope"]);
    assert.equal(out.refused.nope.code, "not-found");
    assert.equal(out.refused.nope.file, "remote-index.json");
    assert.equal(typeof out.refused.nope.message, "string");
  });

  test("verify exits 1 on a refusal: the refusals on stdout, one line on stderr", async () => {
    tamper(fx, await fx.origin.artifactOf("search", "1.0.0", "index.js"));
    const { code, stdout, stderr } = await cli("verify", ...base());
    fx.serving = null;
    assert.equal(code, 1);
    assert.match(stdout, /refused:\n  search: length \(artifacts\/[0-9a-f]{64}\.js\): /);
    assert.match(stdout, /^checkout\s+1\.0\.0/m, "what still verifies is listed");
    assert.equal(stderr.trim().split("\n").length, 1);
    assert.match(stderr, /^releasecontrol-host: 1 refused \(search: length\)/);
  });

  test("verify --state refuses a rollback on a later run", async () => {
    const state = join(dir, "state.json");
    const old = fx.origin.snapshot();
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "2.0.0" });
    await fx.origin.publish();
    fx.serving = null;
    assert.equal((await cli("verify", ...base(), "--state", state)).code, 0);
    fx.serving = old;
    const { code, stdout } = await cli("verify", ...base(), "--state", state, "--output", "json");
    fx.serving = null;
    assert.equal(code, 1);
    assert.equal(JSON.parse(stdout).refused["remote-index.json"].code, "rollback");
  });

  test("verify shows a percentage canary's weight and the key's bucket, and verifies both versions", async () => {
    const [files, features, sequence] = [fx.origin.snapshot(), new Map(fx.origin.features), fx.origin.sequence];
    // "user-4" is in bucket 234 of checkout, "user-42" in bucket 4570 (tests/vectors/bucketing.json).
    fx.origin.setFeature("checkout", { versions: { "1.0.0": CHECKOUT_V1, "2.0.0": CHECKOUT_V2 }, stable: "1.0.0", canary: "2.0.0", canaryWeight: 2500 });
    await fx.origin.publish();
    fx.serving = null;
    try {
      const low = await cli("verify", ...base(), "--feature", "checkout", "--bucketing-key", "user-4");
      assert.equal(low.code, 0, low.stderr);
      assert.match(low.stdout, /^checkout\s+2\.0\.0\s+canary\s+25%\s+234\s+#\d+\s+/m);
      const high = await cli("verify", ...base(), "--feature", "checkout", "--bucketing-key", "user-42", "--output", "json");
      assert.equal(high.code, 0, high.stderr);
      const checkout = JSON.parse(high.stdout).features.checkout;
      assert.deepEqual([checkout.version, checkout.channel, checkout.canary_weight, checkout.bucket], ["1.0.0", "stable", 2500, 4570]);
      // A user on the other side may get the canary: it is verified too, so a broken one fails the run.
      tamper(fx, await fx.origin.artifactOf("checkout", "2.0.0", "index.js"));
      const broken = await cli("verify", ...base(), "--feature", "checkout", "--bucketing-key", "user-42");
      assert.equal(broken.code, 1);
      assert.match(broken.stderr, /checkout: length/);
    } finally {
      [fx.origin.files, fx.origin.features, fx.origin.sequence] = [files, features, sequence];
      fx.serving = null;
    }
  });

  test("verify --timeout bounds each request", async () => {
    fx.server.behaviours.set("remote-index.json", { handler: () => undefined });
    try {
      const start = Date.now();
      const { code, stderr } = await cli("verify", ...base(), "--timeout", "0.5");
      assert.equal(code, 1);
      assert.match(stderr, /remote-index\.json: timeout/);
      assert.ok(Date.now() - start < 5000);
    } finally {
      fx.server.behaviours.clear();
    }
  });

  test("importmap prints a verified import map", async () => {
    fx.serving = null;
    const { code, stdout, stderr } = await cli("importmap", ...base(), "--feature", "search");
    assert.equal(code, 0, stderr);
    const map = JSON.parse(stdout);
    const url = fx.server.base + (await fx.origin.artifactOf("search", "1.0.0", "index.js"));
    assert.deepEqual(map.imports, { search: url });
    assert.deepEqual(Object.keys(map.integrity), [url]);
    assert.match(map.integrity[url], /^sha256-[A-Za-z0-9+/]{43}=$/);
  });

  test("importmap prints nothing and exits 1 with one line when verification fails", async () => {
    tamper(fx, "remote-index.json", () => Buffer.from("nope"));
    const { code, stdout, stderr } = await cli("importmap", ...base());
    fx.serving = null;
    assert.equal(code, 1);
    assert.equal(stdout, "");
    assert.equal(stderr.trim().split("\n").length, 1);
    assert.match(stderr, /not verified.*remote-index\.json: malformed/);
  });

  test("--help at the top and for each command", async () => {
    for (const args of [["--help"], ["verify", "--help"], ["importmap", "-h"]]) {
      const { code, stdout } = await cli(...args);
      assert.equal(code, 0);
      assert.match(stdout, /^Usage: releasecontrol-host/);
    }
    assert.match((await cli("verify", "--help")).stdout, /--allow-dev-keys/);
  });

  test("bad usage exits 2 with one clear line", async () => {
    const badTrust = join(dir, "bad-trust.json");
    await writeFile(badTrust, JSON.stringify({ threshold: 0, keys: fx.trust.keys }));
    for (const [args, message] of [
      [[], /Usage/],
      [["deploy"], /unknown command "deploy"/],
      [["verify", ...base(), "--bogus"], /Unknown option '--bogus'/],
      [["verify", "--index-url", "http://127.0.0.1:9/remote-index.json"], /--trust is required/],
      [["verify", "--trust", trustPath], /--index-url is required/],
      [["verify", "--index-url", "http://x/remote-index.json", "--trust", join(dir, "missing.json")], /cannot read trust file .*missing\.json: ENOENT/],
      [["verify", "--index-url", "http://x/remote-index.json", "--trust", badTrust], /trust file .*bad-trust\.json: threshold must be an integer of at least 1/],
      [["verify", ...base(), "--feature", "Not_An_Id"], /--feature "Not_An_Id" is not a valid feature id/],
      [["verify", ...base(), "--channel", "beta"], /--channel must be stable or canary/],
      [["verify", ...base(), "--timeout", "soon"], /--timeout must be a positive number of seconds/],
      [["verify", ...base(), "--output", "xml"], /--output must be text or json/],
      [["verify", ...base(), "--bucketing-key", ""], /^releasecontrol-host: --bucketing-key must be 1 to 256 bytes long in UTF-8, not empty$/m],
      [["verify", "--index-url", "not a url", "--trust", trustPath], /^releasecontrol-host: --index-url "not a url" is not an absolute URL/],
    ]) {
      const { code, stderr } = await cli(...args);
      assert.equal(code, 2, `${args.join(" ")}: ${stderr}`);
      if (args.length) assert.equal(stderr.trim().split("\n").length, 1, stderr);
      assert.match(stderr, message);
    }
  });
});
