"""hosts: FeatureHost cold load and refresh vs python-tuf downloading the same files.

The origin is the real server's HTTP origin (a separate process, loopback),
seeded with N features of two versions, each version a manifest and two
assets. `FeatureHost.refresh()` on an empty state folder is the cold load (host
protocol v2): remote-index.json and root 1, every shard, then per feature its
releases.json (signature, pins, expiry, sequence), its stable version's manifest
(hash) and its assets (size and hash, kept in the content-addressed cache).

Baseline, in the same run and from the same origin server: a python-tuf
repository built with `tuf.api.metadata` (root, timestamp, snapshot, targets
delegating to 128 hash-bin roles, as v2 has 128 shards) whose targets are the
very manifests and assets FeatureHost loads, served from the same origin; a
fresh `tuf.ngclient.Updater` refreshes the top-level roles, then finds,
downloads and checks (length, SHA-256) every target and writes it to disk.

Then 10 features are rolled back through the gRPC API (a new releases.json,
and a stable version whose manifest and assets the host has not cached) and
`refresh()` is timed again.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

# Both packages re-export these names without listing them, which strict mypy flags.
from securesystemslib.signer import CryptoSigner  # type: ignore[attr-defined]
from tuf.api.metadata import (  # type: ignore[attr-defined]
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.ngclient import Updater  # type: ignore[attr-defined]

from bench._report import Outcome
from bench._seed import feature_name, version_name
from bench._server import BenchServer
from releasecontrol.host import FeatureHost
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol.trust import TrustStore
from releasecontrol.v1 import release_control_pb2 as pb

CHANGED = 10
REFRESH_FRACTION = 0.05
TUF_RATIO = 0.8


@dataclass(frozen=True)
class Sizes:
    counts: tuple[int, ...]


FULL = Sizes(counts=(1_000, 10_000))
QUICK = Sizes(counts=(20, 60))


# -- the python-tuf baseline ---------------------------------------------------------------


TUF_BIN_BITS = 7  # 128 hash bins, as host protocol v2's shards


def loaded_files(origin: Path, count: int) -> dict[str, bytes]:
    """What a host loads of each of the first `count` features on a seeded origin: its stable
    version's manifest and assets, by origin path."""
    files: dict[str, bytes] = {}
    for i in range(count):
        feature_id = feature_name(i)
        mpath = manifest_path(feature_id, version_name(2))  # the seed's stable version
        manifest = (origin / mpath).read_bytes()
        files[mpath] = manifest
        for asset in json.loads(manifest)["assets"]:
            apath = artifact_path(asset["sha256"], asset["path"])
            files[apath] = (origin / apath).read_bytes()
    return files


def build_tuf_repository(root: Path, files: dict[str, bytes]) -> bytes:
    """A TUF repository in `root` whose targets are `files` (origin paths), in 128 hash bins.

    Returns the trusted root.json bytes. Its targets are served from the origin
    itself, so python-tuf downloads the very files FeatureHost downloads.
    """
    root.mkdir(parents=True, exist_ok=True)
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=7)
    signers = {
        role: CryptoSigner.generate_ed25519()
        for role in ("root", "timestamp", "snapshot", "targets", "bins")
    }
    # Plain file names (no version prefix): the layout does not change what is verified.
    root_md = Metadata(Root(expires=expires, consistent_snapshot=False))
    for role in ("root", "timestamp", "snapshot", "targets"):
        root_md.signed.add_key(signers[role].public_key, role)
    bins_key = signers["bins"].public_key
    succinct = SuccinctRoles([bins_key.keyid], 1, TUF_BIN_BITS, "bin")
    targets = Targets(expires=expires)
    targets.delegations = Delegations(keys={bins_key.keyid: bins_key}, succinct_roles=succinct)
    bins: dict[str, Targets] = {name: Targets(expires=expires) for name in succinct.get_roles()}
    for path, data in files.items():
        bins[succinct.get_role_for_target(path)].targets[path] = TargetFile.from_data(path, data)
    snapshot = Snapshot(expires=expires)
    snapshot.meta["targets.json"] = MetaFile(version=1)
    for name, signed in bins.items():
        bin_md = Metadata(signed)
        bin_md.sign(signers["bins"])
        (root / f"{name}.json").write_bytes(bin_md.to_bytes())
        snapshot.meta[f"{name}.json"] = MetaFile(version=1)
    targets_md = Metadata(targets)
    targets_md.sign(signers["targets"])
    (root / "targets.json").write_bytes(targets_md.to_bytes())
    snapshot_md = Metadata(snapshot)
    snapshot_md.sign(signers["snapshot"])
    (root / "snapshot.json").write_bytes(snapshot_md.to_bytes())
    timestamp = Metadata(Timestamp(expires=expires))
    timestamp.signed.snapshot_meta = MetaFile(version=1)
    timestamp.sign(signers["timestamp"])
    (root / "timestamp.json").write_bytes(timestamp.to_bytes())
    root_md.sign(signers["root"])
    root_bytes = root_md.to_bytes()
    (root / "1.root.json").write_bytes(root_bytes)
    return root_bytes


def tuf_load(
    origin_url: str, root_bytes: bytes, paths: list[str], metadata_dir: Path, target_dir: Path
) -> float:
    """Seconds for a fresh ngclient Updater to refresh, then find, download and check (length
    and SHA-256) every target in `paths`, writing each to `target_dir`."""
    metadata_dir.mkdir(parents=True, exist_ok=True)
    target_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    updater = Updater(
        str(metadata_dir),
        origin_url + "tuf/",
        target_dir=str(target_dir),
        target_base_url=origin_url,
        bootstrap=root_bytes,
    )
    updater.refresh()
    for path in paths:
        info = updater.get_targetinfo(path)
        if info is None:
            raise RuntimeError(f"the TUF baseline did not find {path}")
        updater.download_target(info, str(target_dir / path.replace("/", "_")))
    return time.perf_counter() - start


# -- FeatureHost -------------------------------------------------------------------------------


def _host(server: BenchServer, state_dir: Path) -> FeatureHost:
    trust = TrustStore.from_file(server.home / "keys" / "trust.json")
    return FeatureHost(
        server.running.origin_url + "remote-index.json",
        trust,
        state_dir=state_dir,
        allow_insecure_dev_keys=True,  # the bench server signs with its dev key
    )


async def _roll_back(server: BenchServer, count: int, total: int) -> None:
    stub = server.stub(server.channel())
    step = max(1, total // count)
    for i in range(count):
        request = pb.RollbackRequest(
            feature_id=feature_name(i * step),
            version=version_name(1),
            context=pb.ChangeContext(reason="benchmark", request_id=str(uuid.uuid4())),
        )
        await stub.Rollback(request, metadata=server.metadata)
    await server.close_channels()


@dataclass
class Measured:
    count: int
    cold_seconds: float
    refresh_seconds: float
    fetched_on_refresh: int
    tuf_seconds: float


def _measure(work_dir: Path, count: int) -> Measured:
    with BenchServer(
        work_dir / f"server-{count}", features=count, versions=2, with_assets=True
    ) as server:
        origin = server.home / "origin"
        files = loaded_files(origin, count)
        root_bytes = build_tuf_repository(origin / "tuf", files)
        paths = sorted(files)
        # Alternate the two clients and keep each one's better run (one run each
        # at the largest sizes, where a run takes a minute).
        cold: list[float] = []
        tuf: list[float] = []
        host = None
        attempts = 2 if count <= 2_000 else 1
        for attempt in range(attempts):
            tuf.append(
                tuf_load(
                    server.running.origin_url,
                    root_bytes,
                    paths,
                    work_dir / f"tuf-client-{count}-{attempt}",
                    work_dir / f"tuf-targets-{count}-{attempt}",
                )
            )
            state = work_dir / f"host-{count}-{attempt}"
            host = _host(server, state)
            start = time.perf_counter()
            report = host.refresh()
            cold.append(time.perf_counter() - start)
            if not report.ok or len(report.loaded) != count:
                raise RuntimeError(f"the cold load refused: {dict(report.refused)}")
            if attempt < attempts - 1:
                shutil.rmtree(state)
        assert host is not None
        asyncio.run(_roll_back(server, CHANGED, count))
        start = time.perf_counter()
        report = host.refresh()
        refresh = time.perf_counter() - start
        if not report.ok or len(report.fetched) != CHANGED:
            raise RuntimeError(f"the refresh did not fetch {CHANGED}: {report.fetched}")
    return Measured(count, min(cold), refresh, len(report.fetched), min(tuf))


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "hosts",
        "FeatureHost loading from an HTTP origin vs python-tuf downloading the same files",
        "Origin: the server's HTTP origin on loopback (separate process). Each feature: "
        "two versions of a manifest and two assets; the host loads the stable one. Baseline: "
        "python-tuf ngclient Updater on a tuf.api.metadata repository of 128 Ed25519-signed "
        "hash-bin roles whose targets are the same manifests and assets, downloaded from the "
        "same origin server and checked. Best of two cold runs each, alternating (one each "
        "above 2,000 features). "
        f"Refresh: after {CHANGED} features were rolled back via gRPC.",
    )
    started = time.perf_counter()
    for count in sizes.counts:
        m = _measure(work_dir, count)
        n = f"{count:,} features"
        outcome.add(
            f"{n}: FeatureHost cold load",
            m.cold_seconds,
            "s",
            f"{m.cold_seconds / count * 1e3:.2f} ms per feature",
        )
        outcome.add(
            f"{n}: python-tuf, 132 metadata files and {3 * count:,} targets",
            m.tuf_seconds,
            "s",
            f"{m.tuf_seconds / count * 1e3:.2f} ms per feature",
        )
        outcome.add(f"{n}: refresh, {CHANGED} changed", m.refresh_seconds, "s")
        outcome.at_most(
            f"{n}: cold load ÷ python-tuf",
            m.cold_seconds / m.tuf_seconds,
            TUF_RATIO,
            reason="",
        )
        outcome.below(
            f"{n}: {CHANGED}-changed refresh ÷ cold load",
            m.refresh_seconds / m.cold_seconds * 100,
            REFRESH_FRACTION * 100,
            unit="%",
        )
    outcome.notes += [
        "Per feature, FeatureHost fetches four files (releases.json, checked against its "
        "signature, pins, expiry and sequence; the manifest and two assets, each checked by "
        "length and hash), 8 features at a time over kept-alive connections, after "
        "remote-index.json and the 128 shards; python-tuf fetches the 4 top-level roles and "
        "the 128 bins, then the same three files per feature, one at a time, checked by "
        "length and SHA-256. Client and origin share the machine's CPUs.",
    ]
    outcome.seconds = time.perf_counter() - started
    return outcome
