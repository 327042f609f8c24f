"""scale: the same write and read latencies at 100 and at 10,000 features (20 versions each).

Each size gets its own seeded server (see bench._seed). Writes are
canary → promote → rollback cycles on features picked at random; reads are
GetStatus of one feature and GetReleaseIndex of one feature's releases.json,
picked at random, one call in flight. Targets: write p99 at the large size
within 1.2 times (host protocol v2: a change signs three small files whatever
the feature count) and read p99 within 1.5 times the small size's; at the large
size, a host needing one feature downloads at most 50 KB of index data, the
server starts in under 5 s and its resident memory stays under 300 MB.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench._report import Outcome, median, ms, percentile
from bench._seed import feature_name
from bench._server import BenchServer
from bench._work import release_cycle
from releasecontrol.fetch import Fetched, Fetcher
from releasecontrol.host import FeatureHost
from releasecontrol.trust import TrustStore
from releasecontrol.v1 import release_control_pb2 as pb

P99_RATIO = 1.5
WRITE_P99_RATIO = 1.2
ONE_FEATURE_INDEX_KB = 50.0
START_SECONDS = 5.0
RSS_MB = 300.0


@dataclass(frozen=True)
class Sizes:
    small: int
    large: int
    versions: int
    write_cycles: int
    reads: int
    remote_reads: int


FULL = Sizes(small=100, large=10_000, versions=20, write_cycles=60, reads=600, remote_reads=30)
QUICK = Sizes(small=20, large=200, versions=5, write_cycles=3, reads=30, remote_reads=3)


@dataclass
class Measured:
    features: int
    seed_seconds: float
    database_mb: float
    remote_index_kb: float
    start_seconds: float
    rss_after_start_mb: float
    peak_rss_mb: float
    writes: list[float]
    status_reads: list[float]
    index_reads: list[float]
    remote_reads: list[float]
    status_of_all: str
    """GetStatus of every feature: the response's size, or the error it ended with."""
    peak_before_all_mb: float
    """Peak RSS before that GetStatus of every feature (which loads them all)."""
    one_feature_index: dict[str, int]
    """What a host needing one feature downloaded of index data: origin path -> bytes."""


class _CountingFetcher(Fetcher):
    """A Fetcher that notes the bytes of every answer, by origin path."""

    def __init__(self, base: str) -> None:
        super().__init__(timeout_seconds=10.0)
        self.base = base
        self.downloaded: dict[str, int] = {}

    def get(self, url: str, *, max_bytes: int, etag: str | None = None) -> Fetched:
        fetched = super().get(url, max_bytes=max_bytes, etag=etag)
        self.downloaded[url.removeprefix(self.base)] = len(fetched.body)
        return fetched


def _one_feature_index(server: BenchServer, features: int, state_dir: Path) -> dict[str, int]:
    """The index files a fresh host needing one feature downloads, and their sizes."""
    base = server.running.origin_url
    fetcher = _CountingFetcher(base)
    host = FeatureHost(
        base + "remote-index.json",
        TrustStore.from_file(server.home / "keys" / "trust.json"),
        state_dir=state_dir,
        allow_insecure_dev_keys=True,
        features=[feature_name(features // 2)],  # one, from the middle
        fetcher=fetcher,
    )
    feature_id = feature_name(features // 2)
    try:
        # The seeded origin has no manifests or artifacts (the scale server is not seeded
        # with them): the host refuses the manifest after it verified every index file.
        report = host.refresh()
    finally:
        fetcher.close()
    if f"features/{feature_id}/releases.json" not in fetcher.downloaded or any(
        key != feature_id for key in report.refusals
    ):
        raise RuntimeError(f"the one-feature host refused {dict(report.refused)}")
    return {
        path: size
        for path, size in fetcher.downloaded.items()
        if not path.startswith("artifacts/") and not path.endswith("/manifest.json")
    }


async def _workload(
    server: BenchServer, sizes: Sizes, features: int
) -> tuple[list[float], list[float], list[float], list[float], tuple[str, float]]:
    rng = random.Random(features)
    stub = server.stub(server.channel())
    md = server.metadata
    writes: list[float] = []
    await release_cycle(stub, feature_name(0), sizes.versions, md)  # connect, warm up
    for _ in range(sizes.write_cycles):
        feature = feature_name(rng.randrange(features))
        writes += await release_cycle(stub, feature, sizes.versions, md)
    status_reads: list[float] = []
    index_reads: list[float] = []
    for _ in range(sizes.reads):
        feature = feature_name(rng.randrange(features))
        start = time.perf_counter()
        await stub.GetStatus(pb.GetStatusRequest(feature_ids=[feature]), metadata=md)
        status_reads.append(time.perf_counter() - start)
        feature = feature_name(rng.randrange(features))
        start = time.perf_counter()
        await stub.GetReleaseIndex(pb.GetReleaseIndexRequest(feature_id=feature), metadata=md)
        index_reads.append(time.perf_counter() - start)
    rss_before_all = server.peak_rss_mib()
    # What `releasectl release status` asks for: every feature, a page at a time.
    try:
        size, pages, token = 0, 0, ""
        start = time.perf_counter()
        while True:
            status = await stub.GetStatus(pb.GetStatusRequest(page_token=token), metadata=md)
            size, pages, token = size + status.ByteSize(), pages + 1, status.next_page_token
            if not token:
                break
        took = time.perf_counter() - start
        total = f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"
        everything = f"{total} in {pages} page{'s' if pages > 1 else ''}, {took:.2f} s"
    except grpc.aio.AioRpcError as error:
        everything = f"{error.code().name}: {error.details()}"
    remote_reads: list[float] = []
    for _ in range(sizes.remote_reads):
        start = time.perf_counter()
        await stub.GetReleaseIndex(pb.GetReleaseIndexRequest(), metadata=md)
        remote_reads.append(time.perf_counter() - start)
    await server.close_channels()
    return writes, status_reads, index_reads, remote_reads, (everything, rss_before_all)


def _measure(work_dir: Path, sizes: Sizes, features: int) -> Measured:
    server = BenchServer(
        work_dir / f"server-{features}", features=features, versions=sizes.versions
    )
    seeding = time.perf_counter()
    with server:
        seed_seconds = time.perf_counter() - seeding - server.start_seconds
        rss_after_start = server.rss_mib()
        writes, status_reads, index_reads, remote_reads, (everything, peak_before) = asyncio.run(
            _workload(server, sizes, features)
        )
        peak = server.peak_rss_mib()
        seeded = server.seeded
        assert seeded is not None
        one_feature = _one_feature_index(server, features, work_dir / f"host-{features}")
    return Measured(
        features=features,
        seed_seconds=seed_seconds,
        database_mb=seeded.database_bytes / 1e6,
        remote_index_kb=seeded.remote_index_bytes / 1e3,
        start_seconds=server.start_seconds,
        rss_after_start_mb=rss_after_start,
        peak_rss_mb=peak,
        writes=writes,
        status_reads=status_reads,
        index_reads=index_reads,
        remote_reads=remote_reads,
        status_of_all=everything,
        peak_before_all_mb=peak_before,
        one_feature_index=one_feature,
    )


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "scale",
        f"{sizes.small:,} vs {sizes.large:,} features, {sizes.versions} versions each",
        f"One seeded server per size (real process, mTLS, rpc-token auth). Per size: "
        f"{sizes.write_cycles} canary → promote → rollback cycles on random features "
        f"({3 * sizes.write_cycles} changes), then {sizes.reads} GetStatus (one feature) and "
        f"{sizes.reads} GetReleaseIndex (one releases.json) calls on random features, one in "
        "flight. Start time: process launch until it serves. Memory: resident set (VmRSS "
        "after start, VmHWM peak after the workload).",
    )
    started = time.perf_counter()
    small = _measure(work_dir, sizes, sizes.small)
    large = _measure(work_dir, sizes, sizes.large)
    for m in (small, large):
        n = f"{m.features:,} features"
        outcome.add(
            f"{n}: seeding (not measured below)",
            m.seed_seconds,
            "s",
            f"database {m.database_mb:.0f} MB",
        )
        outcome.add(f"{n}: remote-index.json", m.remote_index_kb, "kB")
        outcome.add(
            f"{n}: index data a host needing one feature downloads",
            sum(m.one_feature_index.values()) / 1e3,
            "kB",
            ", ".join(f"{p} {b / 1e3:.1f} kB" for p, b in sorted(m.one_feature_index.items())),
        )
        outcome.add(f"{n}: write p50", ms(median(m.writes)), "ms")
        outcome.add(f"{n}: write p99", ms(percentile(m.writes, 0.99)), "ms")
        outcome.add(f"{n}: GetStatus (one) p50", ms(median(m.status_reads)), "ms")
        outcome.add(f"{n}: GetStatus (one) p99", ms(percentile(m.status_reads, 0.99)), "ms")
        outcome.add(f"{n}: GetReleaseIndex (one) p50", ms(median(m.index_reads)), "ms")
        outcome.add(f"{n}: GetReleaseIndex (one) p99", ms(percentile(m.index_reads, 0.99)), "ms")
        outcome.add(
            f"{n}: GetReleaseIndex (remote-index.json) p50", ms(median(m.remote_reads)), "ms"
        )
        outcome.add(f"{n}: server start", m.start_seconds, "s")
        outcome.add(f"{n}: RSS after start", m.rss_after_start_mb, "MB")
        outcome.add(f"{n}: peak RSS before GetStatus of all features", m.peak_before_all_mb, "MB")
        outcome.add(f"{n}: peak RSS", m.peak_rss_mb, "MB", "after it too")

    def ratio(
        name: str,
        large_values: list[float],
        small_values: list[float],
        why: str,
        target: float = P99_RATIO,
    ) -> None:
        outcome.at_most(
            f"{name} p99 at {sizes.large:,} ÷ at {sizes.small:,}",
            percentile(large_values, 0.99) / percentile(small_values, 0.99),
            target,
            reason=why,
        )

    for m in (small, large):
        outcome.notes.append(
            f"GetStatus of all {m.features:,} features, every page: {m.status_of_all}"
        )
    outcome.notes.append(
        f"write p50 at {sizes.large:,} ÷ at {sizes.small:,}: "
        f"{median(large.writes) / median(small.writes):.2f}× (p99 is the target; p50 shows the "
        "typical change)"
    )
    ratio(
        "write",
        large.writes,
        small.writes,
        "a change signs its releases.json, one shard and remote-index.json "
        f"({large.remote_index_kb:,.1f} kB at {sizes.large:,} features); what still grows "
        "with the feature count is the store (a deeper SQLite B-tree, more pages to sync)",
        WRITE_P99_RATIO,
    )
    outcome.at_most(
        f"index data for one feature at {sizes.large:,}",
        sum(large.one_feature_index.values()) / 1e3,
        ONE_FEATURE_INDEX_KB,
        unit="kB",
        reason="the top level names every shard and the shard every feature of its bin",
    )
    ratio("GetStatus (one)", large.status_reads, small.status_reads, "")
    ratio("GetReleaseIndex (one)", large.index_reads, small.index_reads, "")
    outcome.below(f"server start at {sizes.large:,}", large.start_seconds, START_SECONDS, unit="s")
    outcome.below(f"peak RSS at {sizes.large:,}", large.peak_rss_mb, RSS_MB, unit="MB")
    outcome.seconds = time.perf_counter() - started
    return outcome
