"""Fill a server's state directory with features, through the control plane's own code.

Publishing 10,000 features with 20 versions each through 200,000 RPCs would
take longer than every benchmark together, so `seed_home` runs what the
server runs for each publish (the state machine, the signer, the store) and
commits the changes in a few large transactions. The database then holds
every version and every audit record, the origin every signed index file,
exactly as if each version had been published by `releasectl publish`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from releasecontrol.manifest import artifact_path, canonical_bytes, manifest_path
from releasecontrol.shards import Pin
from releasecontrol_server import releases
from releasecontrol_server.config import Config, load_config
from releasecontrol_server.keyring import load_keyring
from releasecontrol_server.main import prepare_dev
from releasecontrol_server.releases import ChangeMeta, FeatureState, Publish
from releasecontrol_server.sharding import ShardedIndex
from releasecontrol_server.signer import Signer, pin_of
from releasecontrol_server.store import Change, SignedFile, open_store
from releasectl.launcher import server_environment

_CHANGES_PER_TRANSACTION = 5000


def feature_name(index: int) -> str:
    return f"feature-{index:05d}"


def version_name(index: int) -> str:
    """The `index`-th version (1-based): 1.0.0, 1.1.0, …"""
    return f"1.{index - 1}.0"


def feature_files(feature_id: str, version: str) -> dict[str, bytes]:
    """The built files of one version: a small entry script and a style sheet."""
    return {
        "index.js": f"export default '{feature_id}@{version}';\n".encode()
        + b"/*"
        + b"x" * 400
        + b"*/\n",
        "styles/main.css": f"/* {feature_id} {version} */ body {{ margin: 0 }}\n".encode(),
    }


def manifest_for(feature_id: str, version: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "id": feature_id,
        "version": version,
        "entry": "index.js",
        "routes": [f"/{feature_id}"],
        "compat": {"host": "^2.0.0", "shared": {"react": "^18.2.0"}},
        "assets": [
            {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for path, data in files.items()
        ],
    }


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    """RFC 8785 bytes of a manifest of ASCII strings and integers, fast.

    For such values sorted keys without whitespace are exactly JCS; the
    result is checked against `canonical_bytes` once per seeded feature.
    """
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def write_plain(root: Path, path: str, data: bytes) -> None:
    """Put a file on a filesystem origin without fsync: seeding, not a measured write."""
    target = root.joinpath(*path.split("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.seed")
    temp.write_bytes(data)
    os.replace(temp, target)


@dataclass(frozen=True)
class Seeded:
    features: int
    versions: int
    global_sequence: int
    remote_index_bytes: int
    database_bytes: int


def server_config(home: Path, env: Mapping[str, str] | None = None) -> Config:
    """The config the server in `home` will run with (`LocalServer` passes the same environment)."""
    return load_config(server_environment(home, env))


def seed_home(
    home: Path,
    *,
    features: int,
    versions: int,
    env: Mapping[str, str] | None = None,
    with_assets: bool = False,
) -> Seeded:
    """Publish `features` features of `versions` versions each into the server state in `home`.

    Every version goes through `releases.apply` and is committed with its
    manifest and audit record; each feature's releases.json, the shards and
    remote-index.json (host protocol v2) are signed by the server's `Signer` with
    the dev key the server will use, and written to the origin folder with the
    roots. With `with_assets`,
    manifests and artifacts are written to the origin too (what hosts fetch).
    """
    config = server_config(home, env)
    prepare_dev(config)
    keyring = load_keyring(config)
    signer = Signer(keyring.keys, config.index_expiry_seconds)
    origin = config.origin_dir
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)
    meta = ChangeMeta(actor="bench-seed", reason="benchmark data set")
    pins: dict[str, Pin] = {}
    to_write: list[SignedFile] = []
    with open_store(config.database) as store:
        global_sequence = store.global_sequence()
        batch: list[Change] = []
        for i in range(features):
            feature_id = feature_name(i)
            state: FeatureState | None = None
            for v in range(1, versions + 1):
                version = version_name(v)
                files = feature_files(feature_id, version)
                manifest = _canonical(manifest_for(feature_id, version, files))
                if v == 1:
                    expected = canonical_bytes(manifest_for(feature_id, version, files))
                    assert manifest == expected, "the seed's manifest encoding is not JCS"
                digest = hashlib.sha256(manifest).hexdigest()
                now = start + timedelta(seconds=v)
                outcome = releases.apply(state, feature_id, Publish(version, digest), meta, now)
                assert isinstance(outcome, releases.Transition)
                state = outcome.state
                global_sequence += 1
                signed: tuple[SignedFile, ...] = ()
                if v == versions:
                    releases_file = signer.releases_file(state, now)
                    pins[feature_id] = pin_of(releases_file)
                    signed = (releases_file,)
                    to_write.append(releases_file)
                if with_assets:
                    for name, data in files.items():
                        digest = hashlib.sha256(data).hexdigest()
                        write_plain(origin, artifact_path(digest, name), data)
                if with_assets or v == versions:
                    # The live version's manifest always: the server's origin check would
                    # otherwise spend the benchmark restoring every one of them.
                    write_plain(origin, manifest_path(feature_id, version), manifest)
                batch.append(
                    Change(
                        state=state,
                        record=outcome.record,
                        global_sequence=global_sequence,
                        files=signed,
                        manifest=(version, manifest),
                    )
                )
                if len(batch) > _CHANGES_PER_TRANSACTION:
                    store.commit_many(batch)
                    batch = []
        if batch:
            store.commit_many(batch)
        # Every shard and the top level, as a server signs them after its changes.
        index_files = ShardedIndex(pins, {}).rebuild(
            signer=signer,
            root_version=keyring.root_version,
            now=start + timedelta(hours=1),
            sequence=global_sequence,
        )
        store.commit_many([], index_files=[*keyring.roots, *index_files])
        to_write += [*keyring.roots, *index_files]
        remote = index_files[-1]
        for file in to_write:
            write_plain(origin, file.path, file.content)
        store.mark_all_written([(f.path, f.sha256) for f in to_write])
        # On PostgreSQL (database_url) there is no file to measure.
        database_bytes = 0 if config.database_url else config.database_path.stat().st_size
    return Seeded(features, versions, global_sequence, len(remote.content), database_bytes)
