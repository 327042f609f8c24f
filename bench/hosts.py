"""hosts: FeatureHost cold load and refresh vs python-tuf verifying as many metadata files.

The origin is the real server's HTTP origin (a separate process, loopback),
seeded with N features of two versions, each version a manifest and two
assets. `FeatureHost.refresh()` on an empty state folder is the cold load:
remote-index.json, then per feature its releases.json (signature, pins,
expiry, sequence), its stable version's manifest (hash) and its assets (size
and hash, kept in the content-addressed cache).

Baseline, in the same run and from the same origin server: a python-tuf
repository built with `tuf.api.metadata` (root, timestamp, snapshot,
targets delegating to N hash-bin roles, one target each, so N delegated
Ed25519-signed metadata files) and a fresh `tuf.ngclient.Updater` that
refreshes the top-level roles and looks up one target per bin: it downloads,
verifies and stores N + 4 signed metadata files. It does not download
targets; FeatureHost's figure includes manifests and assets.

Then 10 features are rolled back through the gRPC API (a new releases.json,
and a stable version whose manifest and assets the host has not cached) and
`refresh()` is timed again.
"""

from __future__ import annotations

import asyncio
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
from releasecontrol.trust import TrustStore
from releasecontrol.v1 import release_control_pb2 as pb

CHANGED = 10
REFRESH_FRACTION = 0.05


@dataclass(frozen=True)
class Sizes:
    counts: tuple[int, ...]


FULL = Sizes(counts=(1_000, 10_000))
QUICK = Sizes(counts=(20, 60))


# -- the python-tuf baseline ---------------------------------------------------------------


def build_tuf_repository(root: Path, count: int) -> tuple[bytes, list[str]]:
    """A TUF repository in `root` with `count` delegated bin roles, one target each.

    Returns the trusted root.json bytes and the target paths (one per bin).
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
    bit_length = max(1, (2 * count - 1).bit_length())
    bins_key = signers["bins"].public_key
    succinct = SuccinctRoles([bins_key.keyid], 1, bit_length, "bin")
    targets = Targets(expires=expires)
    targets.delegations = Delegations(keys={bins_key.keyid: bins_key}, succinct_roles=succinct)
    # One target per bin, in `count` distinct bins: search a name for each.
    chosen: dict[str, str] = {}
    i = 0
    while len(chosen) < count:
        path = f"features/{feature_name(len(chosen))}/{i}/manifest.json"
        i += 1
        role = succinct.get_role_for_target(path)
        if role not in chosen:
            chosen[role] = path
    snapshot = Snapshot(expires=expires)
    snapshot.meta["targets.json"] = MetaFile(version=1)
    for role, path in chosen.items():
        data = path.encode()
        bin_md = Metadata(Targets(expires=expires))
        bin_md.signed.targets[path] = TargetFile.from_data(path, data)
        bin_md.sign(signers["bins"])
        (root / f"{role}.json").write_bytes(bin_md.to_bytes())
        snapshot.meta[f"{role}.json"] = MetaFile(version=1)
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
    return root_bytes, list(chosen.values())


def tuf_load(base_url: str, root_bytes: bytes, paths: list[str], metadata_dir: Path) -> float:
    """Seconds for a fresh ngclient Updater to refresh and find every path's target info."""
    metadata_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    updater = Updater(str(metadata_dir), base_url, bootstrap=root_bytes)
    updater.refresh()
    for path in paths:
        if updater.get_targetinfo(path) is None:
            raise RuntimeError(f"the TUF baseline did not find {path}")
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
        tuf_root = server.home / "origin" / "tuf"
        root_bytes, paths = build_tuf_repository(tuf_root, count)
        # Alternate the two clients and keep each one's better run (one run each
        # at the largest sizes, where a run takes a minute).
        cold: list[float] = []
        tuf: list[float] = []
        host = None
        attempts = 2 if count <= 2_000 else 1
        for attempt in range(attempts):
            tuf.append(
                tuf_load(
                    server.running.origin_url + "tuf/",
                    root_bytes,
                    paths,
                    work_dir / f"tuf-client-{count}-{attempt}",
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
        "FeatureHost loading from an HTTP origin vs python-tuf verifying as many metadata files",
        "Origin: the server's HTTP origin on loopback (separate process). Each feature: "
        "two versions of a manifest and two assets; the host loads the stable one. Baseline: "
        "python-tuf ngclient Updater on a tuf.api.metadata repository with one Ed25519-signed "
        "hash-bin role per feature, served by the same origin server. Best of two cold runs "
        "each, alternating (one each above 2,000 features). "
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
            f"{n}: python-tuf, {count:,} + 4 metadata files",
            m.tuf_seconds,
            "s",
            f"{m.tuf_seconds / count * 1e3:.2f} ms per file",
        )
        outcome.add(f"{n}: refresh, {CHANGED} changed", m.refresh_seconds, "s")
        outcome.at_most(
            f"{n}: cold load ÷ python-tuf",
            m.cold_seconds / m.tuf_seconds,
            1.0,
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
        "hash), 8 features at a time over kept-alive connections, with its default limits "
        "(max_index_bytes 32 MiB); python-tuf fetches one signed file per bin over one "
        "kept-alive connection and no targets. Client and origin share the machine's CPUs.",
    ]
    outcome.seconds = time.perf_counter() - started
    return outcome
