"""writes: canary → promote → rollback cycles, durable before acknowledged, vs a durable-write loop.

The baseline loop only commits a row, signs 1 KiB with Ed25519 and atomically
replaces a file, in the same run on the same disk (before and after the
server's turn). The targets (issue 12):

- one client, one change at a time: the median change latency at most 1.5 times the
  median of a no-op RPC on the same server stack plus the loop's median round
  (what the least a durable, signed, acknowledged change over the network costs);
- 100 features from 8 concurrent clients (each on its own connection, like 8
  `releasectl` processes): changes per second at least the loop's rounds per
  second (group commit shares one transaction, one signature per touched file
  and one fsync among the changes that arrive together);
- server CPU per change below 2 ms (with 8 clients: the server's CPU time over
  the changes it made).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from bench._report import Outcome, median, ms, percentile
from bench._seed import feature_name
from bench._server import NOOP_METHOD, BenchServer
from bench._work import durable_write_baseline, release_cycle
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

LATENCY_RATIO = 1.5
RATE_RATIO = 1.0
CPU_MS = 2.0


@dataclass(frozen=True)
class Sizes:
    versions: int
    single_cycles: int
    features: int
    clients: int
    cycles_per_client: int
    baseline_rounds: int
    noop_calls: int


FULL = Sizes(
    versions=3,
    single_cycles=40,
    features=100,
    clients=8,
    cycles_per_client=15,
    baseline_rounds=200,
    noop_calls=300,
)
QUICK = Sizes(
    versions=3,
    single_cycles=3,
    features=16,
    clients=8,
    cycles_per_client=1,
    baseline_rounds=20,
    noop_calls=20,
)


async def _noop(server: BenchServer, calls: int) -> list[float]:
    """The seconds of `calls` authenticated no-op RPCs, one at a time (bench/_noop)."""
    channel = server.channel()
    ping = channel.unary_unary(NOOP_METHOD)
    for _ in range(20):  # connect and warm up
        await ping(b"", metadata=server.metadata)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        await ping(b"", metadata=server.metadata)
        times.append(time.perf_counter() - start)
    await server.close_channels()
    return times


async def _single(
    server: BenchServer, cycles: int, versions: int
) -> tuple[float, float, list[float]]:
    stub = server.stub(server.channel())
    await release_cycle(stub, feature_name(0), versions, server.metadata)  # warm up
    times: list[float] = []
    cpu = server.cpu_seconds()
    start = time.perf_counter()
    for _ in range(cycles):
        times += await release_cycle(stub, feature_name(0), versions, server.metadata)
    elapsed = time.perf_counter() - start
    cpu = server.cpu_seconds() - cpu
    await server.close_channels()
    return elapsed, cpu, times


async def _concurrent(server: BenchServer, sizes: Sizes) -> tuple[float, float, list[float]]:
    stubs = [server.stub(server.channel()) for _ in range(sizes.clients)]
    owned = [
        [feature_name(f) for f in range(sizes.features) if f % sizes.clients == c]
        for c in range(sizes.clients)
    ]
    for stub, features in zip(stubs, owned, strict=True):  # connect and warm up each client
        await release_cycle(stub, features[0], sizes.versions, server.metadata)
    times: list[float] = []

    async def client(stub: pb_grpc.ReleaseControlStub, features: list[str]) -> None:
        for i in range(sizes.cycles_per_client):
            feature = features[i % len(features)]
            times.extend(await release_cycle(stub, feature, sizes.versions, server.metadata))

    cpu = server.cpu_seconds()
    start = time.perf_counter()
    await asyncio.gather(*(client(s, f) for s, f in zip(stubs, owned, strict=True)))
    elapsed = time.perf_counter() - start
    cpu = server.cpu_seconds() - cpu
    await server.close_channels()
    return elapsed, cpu, times


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "writes",
        "release changes, each durable and on the origin before it is acknowledged",
        f"Server: real process, mTLS, rpc-token auth, {sizes.features} features × "
        f"{sizes.versions} versions. One client: {sizes.single_cycles} cycles on one feature "
        f"(3 changes each), and {sizes.noop_calls} no-op RPCs. Concurrent: {sizes.clients} "
        f"clients, own connection each, {sizes.cycles_per_client} cycles each over "
        f"{sizes.features} features. Baseline: {sizes.baseline_rounds} rounds of commit a row "
        "(WAL, synchronous=FULL) + Ed25519 sign 1 KiB + atomic durable file replace, before and "
        "after, same disk.",
    )
    started = time.perf_counter()
    before = durable_write_baseline(work_dir / "baseline", sizes.baseline_rounds)
    with BenchServer(work_dir / "server", features=sizes.features, versions=sizes.versions) as srv:
        noop = asyncio.run(_noop(srv, sizes.noop_calls))
        single_elapsed, single_cpu, single = asyncio.run(
            _single(srv, sizes.single_cycles, sizes.versions)
        )
        many_elapsed, many_cpu, many = asyncio.run(_concurrent(srv, sizes))
    after = durable_write_baseline(work_dir / "baseline", sizes.baseline_rounds)
    rounds = before + after
    baseline_rate = len(rounds) / sum(rounds)
    single_rate = len(single) / single_elapsed
    many_rate = len(many) / many_elapsed
    floor = median(noop) + median(rounds)

    outcome.add("baseline loop", baseline_rate, "rounds/s", f"p50 {ms(median(rounds)):.2f} ms")
    outcome.add("baseline p99", ms(percentile(rounds, 0.99)), "ms")
    outcome.add("no-op RPC p50", ms(median(noop)), "ms", "authenticated, same server stack")
    outcome.add("1 feature, 1 client", single_rate, "changes/s", f"{len(single)} changes")
    outcome.add("1 feature, 1 client p50", ms(median(single)), "ms")
    outcome.add("1 feature, 1 client p99", ms(percentile(single, 0.99)), "ms")
    outcome.add("1 feature, 1 client: server CPU per change", ms(single_cpu / len(single)), "ms")
    outcome.add(
        f"{sizes.features} features, {sizes.clients} clients",
        many_rate,
        "changes/s",
        f"{len(many)} changes",
    )
    outcome.add(f"{sizes.clients} clients p50", ms(median(many)), "ms")
    outcome.add(f"{sizes.clients} clients p99", ms(percentile(many, 0.99)), "ms")
    outcome.add(f"{sizes.clients} clients: server CPU per change", ms(many_cpu / len(many)), "ms")
    where = (
        "per change: gRPC, TLS and auth, the state machine, JCS and Ed25519 for three files "
        "(releases.json, its shard, remote-index.json), the transaction and the fsyncs "
        "(see docs/benchmarks.md for the profile)"
    )
    outcome.at_most(
        "1 client: change p50 ÷ (no-op RPC p50 + loop round p50)",
        median(single) / floor,
        LATENCY_RATIO,
        reason=f"a change takes {ms(median(single)):.1f} ms against {ms(floor):.1f} ms; {where}",
    )
    outcome.at_least(
        f"{sizes.features} features, {sizes.clients} clients: changes/s ÷ loop rounds/s",
        many_rate / baseline_rate,
        RATE_RATIO,
        reason=f"{many_rate:.0f} changes/s against {baseline_rate:.0f} rounds/s; {where}",
    )
    outcome.below(
        f"{sizes.clients} clients: server CPU per change",
        ms(many_cpu / len(many)),
        CPU_MS,
        unit="ms",
        reason=where,
    )
    outcome.seconds = time.perf_counter() - started
    return outcome
