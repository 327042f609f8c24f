// A signed host-protocol-v2 origin built in memory: what the tests serve.
import { binOf } from "../../dist/index.js";
import { jcs, sha256Hex, signedFile } from "./keys.js";

export const ISSUED = "2026-01-01T00:00:00Z";
export const FAR = "2126-01-01T00:00:00Z";
export const PAST = "2001-01-01T00:00:00Z";

const enc = (text) => (typeof text === "string" ? new TextEncoder().encode(text) : text);

function ext(path) {
  const name = path.slice(path.lastIndexOf("/") + 1);
  const dot = name.lastIndexOf(".");
  const e = dot > 0 && dot < name.length - 1 ? name.slice(dot).toLowerCase() : "";
  return /^\.[a-z0-9]{1,10}$/.test(e) ? e : "";
}

export class TestOrigin {
  /**
   * rootKeys / indexKeys: the keys of root 1's roles. `hook(path, signed)` may
   * change a signed body before it is signed; `signers(path)` may choose who signs.
   */
  constructor({ rootKeys, indexKeys, bits = 7, rootThreshold = 1, indexThreshold = 1 }) {
    this.bits = bits;
    this.files = new Map();
    this.features = new Map();
    this.sequence = 0;
    this.roots = [];
    this.hook = (_path, signed) => signed;
    this.signers = () => null;
    this.rootKeys = rootKeys;
    this.indexKeys = indexKeys;
    this.rootThreshold = rootThreshold;
    this.indexThreshold = indexThreshold;
  }

  async sign(path, signed, keys) {
    const body = this.hook(path, structuredClone(signed)) ?? signed;
    this.files.set(path, await signedFile(body, this.signers(path) ?? keys));
  }

  /** Writes roots/<version>.json with these roles, signed by `signers` (default: its own root keys). */
  async addRoot({ version, rootKeys, indexKeys, signers, expires = FAR, rootThreshold = 1, indexThreshold = 1 }) {
    const keys = {};
    for (const k of [...rootKeys, ...indexKeys]) keys[k.keyid] = { alg: "ed25519", public_key: k.publicKey, ...(k.dev ? { dev: true } : {}) };
    const signed = {
      schema_version: 2,
      type: "root",
      version,
      issued_at: ISSUED,
      expires_at: expires,
      keys,
      roles: {
        root: { keyids: rootKeys.map((k) => k.keyid), threshold: rootThreshold },
        index: { keyids: indexKeys.map((k) => k.keyid), threshold: indexThreshold },
      },
    };
    await this.sign(`roots/${version}.json`, signed, signers ?? rootKeys);
    this.rootVersion = version;
    this.rootKeys = rootKeys;
    this.indexKeys = indexKeys;
  }

  /**
   * Sets one feature: its versions ({version: {path: content}}), channels and
   * entry, and the canary's weight out of 10,000 (undefined: no canary_weight field).
   */
  setFeature(id, { versions, stable = null, canary = null, entry = "index.js", canaryWeight = undefined }) {
    const previous = this.features.get(id);
    this.features.set(id, { versions, stable, canary, entry, canaryWeight, sequence: (previous?.sequence ?? 0) + 1 });
  }

  removeFeature(id) {
    this.features.delete(id);
  }

  /** Signs everything again: every releases.json, every shard and remote-index.json (sequence + 1). */
  async publish({ expires = FAR } = {}) {
    if (!this.rootVersion) await this.addRoot({ version: 1, rootKeys: this.rootKeys, indexKeys: this.indexKeys, rootThreshold: this.rootThreshold, indexThreshold: this.indexThreshold });
    this.sequence += 1;
    const shards = new Map();
    for (const [id, f] of this.features) {
      const versions = [];
      for (const [version, files] of Object.entries(f.versions)) {
        const assets = [];
        for (const [path, content] of Object.entries(files)) {
          const bytes = enc(content);
          const sha256 = await sha256Hex(bytes);
          this.files.set(`artifacts/${sha256}${ext(path)}`, bytes);
          assets.push({ path, size: bytes.length, sha256 });
        }
        const manifest = enc(jcs({ id, version, entry: f.entry, assets }));
        this.files.set(`features/${id}/${version}/manifest.json`, manifest);
        versions.push({ version, manifest_sha256: await sha256Hex(manifest), published_at: ISSUED });
      }
      const path = `features/${id}/releases.json`;
      await this.sign(
        path,
        {
          schema_version: 2,
          type: "releases",
          feature_id: id,
          sequence: f.sequence,
          active_version: f.stable,
          channels: { stable: f.stable, canary: f.canary },
          canary_soak: null,
          ...(f.canaryWeight === undefined ? {} : { canary_weight: f.canaryWeight }),
          versions,
          issued_at: ISSUED,
          expires_at: expires,
        },
        this.indexKeys,
      );
      const bytes = this.files.get(path);
      const bin = await binOf(id, this.bits);
      if (!shards.has(bin)) shards.set(bin, {});
      shards.get(bin)[id] = { sha256: await sha256Hex(bytes), length: bytes.length, sequence: f.sequence };
    }
    const pins = {};
    for (const [bin, features] of shards) {
      const path = `index/${this.bits}/${bin}.json`;
      await this.sign(
        path,
        { schema_version: 2, type: "index-shard", bits: this.bits, bin, sequence: this.sequence, issued_at: ISSUED, expires_at: expires, features },
        this.indexKeys,
      );
      const bytes = this.files.get(path);
      pins[bin] = { sha256: await sha256Hex(bytes), length: bytes.length, sequence: this.sequence };
    }
    await this.sign(
      "remote-index.json",
      {
        schema_version: 2,
        type: "remote-index",
        sequence: this.sequence,
        root_version: this.rootVersion,
        issued_at: ISSUED,
        expires_at: expires,
        bins: { bits: this.bits, shards: pins },
      },
      this.indexKeys,
    );
    return this;
  }

  /** A copy of every file now: serve it later to replay an old origin. */
  snapshot() {
    return new Map(this.files);
  }

  shardOf(id) {
    return binOf(id, this.bits).then((bin) => `index/${this.bits}/${bin}.json`);
  }

  async artifactOf(id, version, path) {
    const bytes = enc(this.features.get(id).versions[version][path]);
    return `artifacts/${await sha256Hex(bytes)}${ext(path)}`;
  }
}
