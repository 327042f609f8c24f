"""A CDN origin for host tests: a repository simulator and an HTTP front that misbehaves.

`HostRepository` writes into a folder what the control plane publishes to the
origin (host protocol v2, docs/host-protocol.md): content-addressed artifacts,
canonical manifests, a signed `releases.json` per feature, one signed shard per
non-empty hash bin, a signed `remote-index.json`, and the roots, signed with
deterministic test keys. Its hooks sign with other keys (or none), change the
body after signing, pin a file under another hash or sequence, and replay saved
bytes, which is how the attack tests (and tests/vectors/generate.py) build each
attack.

`OriginFront` stands between the host and the real `OriginHttpServer` serving
that folder (both on loopback, port 0): it records every request with its
status, and can make one path misbehave: stream forever, trickle, hang, lie
about its length, or answer an error status.

Usage::

    repo = HostRepository(tmp_path / "origin")
    repo.add_version("checkout", "1.0.0")
    repo.publish()        # releases.json seq 1, its shard, remote-index.json seq 1
    with OriginHttpServer(repo.root, port=0) as origin, OriginFront(origin.url) as front:
        host = FeatureHost(front.url + "remote-index.json", repo.trust(), state_dir=...)
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.canonical import jcs
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    CanarySoak,
    Envelope,
    ReleasesIndex,
    VersionEntry,
    releases_path,
    sign,
)
from releasecontrol.manifest import artifact_path, canonical_bytes, manifest_path
from releasecontrol.root import Root, root_path
from releasecontrol.shards import DEFAULT_BITS, Pin, RemoteIndex, Shard, bin_of, shard_path
from releasecontrol.trust import SigningKey, TrustStore


def fixed_key(n: int) -> SigningKey:
    """A deterministic signing key, so failures are reproducible."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


# Online (index) keys, and root keys kept apart from them as an operator would.
KEY_A, KEY_B, KEY_C, KEY_DEV = fixed_key(1), fixed_key(2), fixed_key(3), fixed_key(4)
ROOT_A, ROOT_B, ROOT_C = fixed_key(11), fixed_key(12), fixed_key(13)
NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
EXPIRY = timedelta(days=7)
ROOT_EXPIRY = timedelta(days=365)


def trust_for(*keys: SigningKey, threshold: int = 1, dev: Sequence[SigningKey] = ()) -> TrustStore:
    """A trust store of `keys` needing `threshold`; keys also in `dev` are marked dev keys."""
    dev_ids = {k.keyid for k in dev}
    return TrustStore.for_keys(
        [k.trusted_key(dev=k.keyid in dev_ids) for k in keys], threshold=threshold
    )


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def default_files(feature_id: str, version: str) -> dict[str, bytes]:
    """Two small assets whose bytes name the feature and version, so every version differs."""
    return {
        "index.js": f"export default '{feature_id}@{version}';\n".encode(),
        "styles/main.css": f"/* {feature_id} {version} */ body {{ margin: 0 }}\n".encode(),
    }


@dataclass
class SimFeature:
    """What the control plane knows of one feature; published on `HostRepository.publish`."""

    sequence: int = 0
    stable: str | None = None
    canary: str | None = None
    versions: dict[str, VersionEntry] = field(default_factory=dict)


Tamper = Callable[[dict[str, Any]], None]


class HostRepository:
    """Builds signed origin files into `root`; see the module docstring.

    Index files are signed with `keys` (the index role of the current root)
    unless a call says otherwise, issued at `now` and expiring `expiry` later.
    Root 1 lists `root_keys` (threshold `root_threshold`) and `keys` (threshold
    `threshold`). `pins` is what the next shards pin of each feature's
    releases.json, `shard_pins` what the next remote-index.json pins.
    """

    def __init__(
        self,
        root: Path,
        *,
        keys: Sequence[SigningKey] = (KEY_A,),
        threshold: int = 1,
        root_keys: Sequence[SigningKey] = (ROOT_A,),
        root_threshold: int = 1,
        dev_keys: Sequence[SigningKey] = (),
        bits: int = DEFAULT_BITS,
        now: datetime = NOW,
        expiry: timedelta = EXPIRY,
        root_expiry: timedelta = ROOT_EXPIRY,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.keys = list(keys)
        self.root_keys = list(root_keys)
        self.dev_keyids = {k.keyid for k in dev_keys}
        self.bits = bits
        self.now = now
        self.expiry = expiry
        self.root_expiry = root_expiry
        self.remote_sequence = 0
        self.root_version = 0
        self.features: dict[str, SimFeature] = {}
        self.pins: dict[str, Pin] = {}
        self.shard_pins: dict[str, Pin] = {}
        self._dirty: set[str] = set()
        self._dirty_bins: set[str] = set()
        self._root_keys: dict[int, list[SigningKey]] = {}
        self._root_thresholds: dict[int, int] = {}
        self.publish_root(
            self.model_root(1, root_keys, keys, root_threshold=root_threshold, threshold=threshold),
            root_keys=root_keys,
        )

    # -- files ---------------------------------------------------------------------------------

    def read(self, path: str) -> bytes:
        return (self.root / path).read_bytes()

    def write(self, path: str, data: bytes) -> None:
        """Put `data` at origin `path` as is: the hook for replaying and replacing files."""
        file = self.root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp = file.with_name(f".{file.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(file)

    def delete(self, path: str) -> None:
        (self.root / path).unlink(missing_ok=True)

    # -- trust and roots -------------------------------------------------------------------------

    def trust(self, *, threshold: int | None = None, root_version: int = 1) -> TrustStore:
        """The trust file a host of this origin pins: the root keys of `root_version` (dev ones
        marked), needing that root's threshold unless `threshold` is given."""
        keys = [
            k.trusted_key(dev=k.keyid in self.dev_keyids) for k in self._root_keys[root_version]
        ]
        return TrustStore(
            threshold=self._root_thresholds[root_version] if threshold is None else threshold,
            keys={k.keyid: k for k in keys},
            root_version=root_version,
        )

    def model_root(
        self,
        version: int,
        root_keys: Sequence[SigningKey],
        index_keys: Sequence[SigningKey],
        *,
        root_threshold: int = 1,
        threshold: int = 1,
    ) -> Root:
        dev = self.dev_keyids
        return Root.create(
            version=version,
            root_keys=[k.trusted_key(dev=k.keyid in dev) for k in root_keys],
            index_keys=[k.trusted_key(dev=k.keyid in dev) for k in index_keys],
            issued_at=self.now,
            expires_at=self.now + self.root_expiry,
            root_threshold=root_threshold,
            index_threshold=threshold,
        )

    def publish_root(
        self,
        root: Root,
        *,
        root_keys: Sequence[SigningKey],
        signers: Sequence[SigningKey] | None = None,
        tamper: Tamper | None = None,
    ) -> bytes:
        """Write roots/<version>.json and make it the current root. `root_keys`: the signing
        keys of its root role; `signers` default to the previous root's root keys and those."""
        if signers is None:
            previous = self._root_keys.get(root.version - 1, [])
            signers = list({k.keyid: k for k in [*previous, *root_keys]}.values())
        data = self.signed(root.to_dict(), keys=signers, tamper=tamper)
        self.write(root_path(root.version), data)
        self._root_keys[root.version] = list(root_keys)
        self._root_thresholds[root.version] = root.roles["root"].threshold
        self.root_version = root.version
        return data

    def rotate(
        self,
        index_keys: Sequence[SigningKey],
        *,
        root_keys: Sequence[SigningKey] | None = None,
        threshold: int = 1,
        resign: bool = True,
    ) -> None:
        """Root version + 1 with `index_keys` as the online keys (and `root_keys` as the root
        keys, default unchanged), signed by the old and new root keys; with `resign`, every
        releases.json (same body), every shard and the top level signed again by them."""
        new_root_keys = list(root_keys) if root_keys is not None else self.root_keys
        self.publish_root(
            self.model_root(self.root_version + 1, new_root_keys, index_keys, threshold=threshold),
            root_keys=new_root_keys,
        )
        self.root_keys = new_root_keys
        self.keys = list(index_keys)
        if resign:
            for feature_id in sorted(self.pins):
                data = self.signed(self._signed_body(self.read(releases_path(feature_id))))
                self.put_releases(feature_id, data)
            self._dirty_bins |= set(self.shard_pins)
            self.publish()

    # -- what the control plane does -------------------------------------------------------------

    def add_version(
        self,
        feature_id: str,
        version: str,
        files: Mapping[str, bytes] | None = None,
        *,
        channel: str | None = "stable",
        manifest_changes: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Publish a version's artifacts and manifest, list it, and put it on `channel`.

        `manifest_changes` overrides manifest fields (a manifest for another
        feature or version); the index lists the SHA-256 of what is written.
        Returns the manifest.
        """
        files = dict(files if files is not None else default_files(feature_id, version))
        for name, data in files.items():
            self.write(artifact_path(sha256(data), name), data)
        manifest: dict[str, Any] = {
            "id": feature_id,
            "version": version,
            "entry": next(iter(files)),
            "routes": [f"/{feature_id}"],
            "compat": {"host": "^2.0.0", "shared": {}},
            "assets": [
                {"path": path, "size": len(data), "sha256": sha256(data)}
                for path, data in files.items()
            ],
        }
        manifest.update(manifest_changes or {})
        data = canonical_bytes(manifest)
        self.write(manifest_path(feature_id, version), data)
        feature = self.features.setdefault(feature_id, SimFeature())
        feature.versions[version] = VersionEntry(version, sha256(data), self.now)
        if channel == "stable":
            feature.stable = version
        elif channel == "canary":
            feature.canary = version
        self._dirty.add(feature_id)
        return manifest

    def set_channels(self, feature_id: str, *, stable: str | None, canary: str | None) -> None:
        """Point the channels (a promote, a rollback, a fallback); published on `publish`."""
        feature = self.features[feature_id]
        feature.stable, feature.canary = stable, canary
        self._dirty.add(feature_id)

    def remove_feature(self, feature_id: str) -> None:
        """Drop a feature from its shard on the next publish (its files stay on the origin)."""
        self.features.pop(feature_id, None)
        if self.pins.pop(feature_id, None) is not None:
            self._dirty_bins.add(bin_of(feature_id, self.bits))
        self._dirty.discard(feature_id)

    def publish(self) -> None:
        """Sign every changed feature's releases.json (sequence + 1), their shards (at the next
        top sequence), then remote-index.json."""
        for feature_id in sorted(self._dirty):
            self.publish_releases(feature_id)
        for name in sorted(self._dirty_bins):
            self.publish_shard(name, sequence=self.remote_sequence + 1)
        self.publish_remote()

    def publish_releases(
        self,
        feature_id: str,
        /,
        *,
        pin: bool = True,
        pinned_sequence: int | None = None,
        **hooks: Any,
    ) -> bytes:
        """Sign and write the feature's next releases.json (sequence + 1).

        `hooks` go to `releases_bytes` (keys, tamper, field changes); the file is
        pinned in the next shard unless `pin` is False, under `pinned_sequence`
        when given. Returns the file bytes.
        """
        self.features[feature_id].sequence += 1
        data = self.releases_bytes(feature_id, **hooks)
        self.put_releases(feature_id, data, pin=pin, sequence=pinned_sequence)
        self._dirty.discard(feature_id)
        return data

    # -- signing, with hooks for attacks ---------------------------------------------------------

    def releases_body(self, feature_id: str, *, sequence: int | None = None) -> dict[str, Any]:
        """The releases.json body of the feature's current state (at `sequence` if given)."""
        feature = self.features[feature_id]
        soak = CanarySoak(self.now, 1800) if feature.canary else None
        return ReleasesIndex(
            feature_id=feature_id,
            sequence=feature.sequence if sequence is None else sequence,
            stable=feature.stable,
            canary=feature.canary,
            canary_soak=soak,
            versions=tuple(feature.versions.values()),
            issued_at=self.now,
            expires_at=self.now + self.expiry,
        ).to_dict()

    def shard_body(
        self, name: str, *, sequence: int | None = None, features: Mapping[str, Pin] | None = None
    ) -> dict[str, Any]:
        """The body of bin `name`'s shard pinning `pins` of its features (or `features`)."""
        if features is None:
            features = {fid: p for fid, p in self.pins.items() if bin_of(fid, self.bits) == name}
        return Shard(
            bits=self.bits,
            bin=name,
            sequence=self.remote_sequence + 1 if sequence is None else sequence,
            features={},
            issued_at=self.now,
            expires_at=self.now + self.expiry,
        ).to_dict() | {"features": {fid: p.to_dict() for fid, p in sorted(features.items())}}

    def remote_body(
        self, *, sequence: int | None = None, root_version: int | None = None
    ) -> dict[str, Any]:
        """The remote-index.json body pinning `shard_pins` (at `sequence` if given)."""
        return RemoteIndex(
            sequence=self.remote_sequence if sequence is None else sequence,
            root_version=self.root_version if root_version is None else root_version,
            bits=self.bits,
            shards=dict(self.shard_pins),
            issued_at=self.now,
            expires_at=self.now + self.expiry,
        ).to_dict()

    def signed(
        self,
        body: Mapping[str, Any],
        *,
        keys: Sequence[SigningKey] | None = None,
        tamper: Tamper | None = None,
    ) -> bytes:
        """The file bytes of `body` signed by `keys` (none: no signatures at all).

        `tamper` changes the body after signing, so the signatures no longer match.
        """
        keys = self.keys if keys is None else keys
        envelope = sign(body, keys) if keys else Envelope(signed=body, signatures=())
        document = envelope.to_dict()
        if tamper is not None:
            tamper(document["signed"])
        return jcs(document)

    @staticmethod
    def _signed_body(data: bytes) -> dict[str, Any]:
        return Envelope.from_bytes(data).to_dict()["signed"]

    def releases_bytes(
        self,
        feature_id: str,
        /,
        *,
        keys: Sequence[SigningKey] | None = None,
        tamper: Tamper | None = None,
        sequence: int | None = None,
        **changes: Any,
    ) -> bytes:
        """A signed releases.json of the feature's state with top-level `changes` applied."""
        body = self.releases_body(feature_id, sequence=sequence)
        body.update(changes)
        return self.signed(body, keys=keys, tamper=tamper)

    def put_releases(
        self, feature_id: str, data: bytes, *, pin: bool = True, sequence: int | None = None
    ) -> None:
        """Write a releases.json; `pin` records its hash, length and sequence for the next
        shard. `sequence` pins a sequence other than the file's own (mix-and-match)."""
        self.write(releases_path(feature_id), data)
        if pin:
            if sequence is None:
                sequence = int(self._signed_body(data)["sequence"])
            self.pins[feature_id] = Pin.of(data, sequence)
            self._dirty_bins.add(bin_of(feature_id, self.bits))

    def publish_shard(
        self,
        name: str,
        *,
        keys: Sequence[SigningKey] | None = None,
        tamper: Tamper | None = None,
        sequence: int | None = None,
        pin: bool = True,
        pinned_sequence: int | None = None,
        features: Mapping[str, Pin] | None = None,
        **changes: Any,
    ) -> bytes:
        """Sign and write bin `name`'s shard; pin it in the next remote-index.json unless `pin`
        is False (under `pinned_sequence` when given)."""
        body = self.shard_body(name, sequence=sequence, features=features)
        body.update(changes)
        data = self.signed(body, keys=keys, tamper=tamper)
        self.write(shard_path(self.bits, name), data)
        if pin:
            own = int(body["sequence"]) if isinstance(body["sequence"], int) else 0
            self.shard_pins[name] = Pin.of(
                data, own if pinned_sequence is None else pinned_sequence
            )
        self._dirty_bins.discard(name)
        return data

    def publish_remote(
        self,
        *,
        keys: Sequence[SigningKey] | None = None,
        tamper: Tamper | None = None,
        sequence: int | None = None,
        root_version: int | None = None,
        **changes: Any,
    ) -> bytes:
        """Sign and write remote-index.json: the next sequence unless `sequence` is given."""
        if sequence is None:
            self.remote_sequence += 1
        body = self.remote_body(sequence=sequence, root_version=root_version)
        body.update(changes)
        data = self.signed(body, keys=keys, tamper=tamper)
        self.write(REMOTE_INDEX_PATH, data)
        return data

    def bin(self, feature_id: str) -> str:
        return bin_of(feature_id, self.bits)

    def shard_path_of(self, feature_id: str) -> str:
        return shard_path(self.bits, self.bin(feature_id))


# --- the HTTP front ---------------------------------------------------------------------------

ENDLESS = "endless"  # 200, no length, streams until the client hangs up
TRICKLE = "trickle"  # 200, a plausible length, one byte every 20 ms
HANG = "hang"  # reads the request, never answers
HUGE_LENGTH = "huge-length"  # declares a terabyte, sends a little
TRUNCATED = "truncated"  # declares 100 bytes, sends 10, closes


@dataclass(frozen=True)
class Request:
    path: str
    status: int  # 0 when the front never answered (a hang, a stream cut off)
    if_none_match: str | None


class OriginFront:
    """An HTTP front on loopback for `upstream_url`: records requests, injects faults.

    `faults` maps an origin path ("remote-index.json") to a fault above or to
    an int status to answer instead.
    """

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.faults: dict[str, str | int] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the front first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def paths(self) -> list[str]:
        """The paths requested so far, in order."""
        with self._lock:
            return [r.path for r in self.requests]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def start(self) -> None:
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                path = urlsplit(self.path).path.lstrip("/")
                etag = self.headers.get("If-None-Match")
                fault = front.faults.get(path)

                def record(status: int) -> None:
                    # Called before the answer is sent, so a client that has its
                    # answer always finds its request recorded.
                    front._record(Request(path, status, etag))

                # OSError: the client hung up, which is what the faults are for.
                with contextlib.suppress(OSError):
                    front._answer(self, fault, record)
                self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _answer(
        self,
        handler: BaseHTTPRequestHandler,
        fault: str | int | None,
        record: Callable[[int], None],
    ) -> None:
        if isinstance(fault, int):
            body = b"injected error\n"
            record(fault)
            handler.send_response(fault)
            handler.send_header("Content-Length", str(len(body)))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(body)
            return
        if fault == HANG:
            record(0)
            self._stopping.wait(30)
            return
        if fault in (ENDLESS, TRICKLE, HUGE_LENGTH, TRUNCATED):
            record(200)
            handler.send_response(200)
            length = {TRICKLE: "100000", HUGE_LENGTH: str(1 << 40), TRUNCATED: "100"}
            if fault in length:
                handler.send_header("Content-Length", length[fault])
            handler.send_header("Connection", "close")
            handler.end_headers()
            if fault == TRUNCATED:
                handler.wfile.write(b"0123456789")
                return
            chunk = b"x" if fault == TRICKLE else b"x" * 65536
            deadline = time.monotonic() + 30
            while not self._stopping.is_set() and time.monotonic() < deadline:
                handler.wfile.write(chunk)
                handler.wfile.flush()
                if fault == TRICKLE:
                    time.sleep(0.02)
            return
        self._relay(handler, record)

    def _relay(self, handler: BaseHTTPRequestHandler, record: Callable[[int], None]) -> None:
        connection = http.client.HTTPConnection(*self._upstream, timeout=5)
        try:
            headers = {}
            if etag := handler.headers.get("If-None-Match"):
                headers["If-None-Match"] = etag
            connection.request("GET", handler.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            record(response.status)
            handler.send_response(response.status)
            for name in ("Content-Type", "Content-Length", "ETag", "Cache-Control"):
                if (value := response.getheader(name)) is not None:
                    handler.send_header(name, value)
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(body)
        finally:
            connection.close()

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> OriginFront:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
