"""reads: GetStatus and GetReleaseIndex vs a no-op RPC on the same server stack.

The no-op is `/bench.v1.Noop/Ping` (bench/_noop), served by the same server
process over the same mTLS connection and through the same interceptor, which
authenticates its bearer token and checks its role as for any ReleaseControl
call, then answers empty bytes. The standard health `Check` is measured too,
as a stricter reference: the interceptor lets health probes skip
authentication. Target: the reads' QPS at least 0.8 of the no-op's, at 1 and
at 16 calls in flight. Rounds alternate between the RPCs, so drift in the
machine's speed hits them all alike. The server's CPU time per call is
reported too: on two cores shared by client and server, it is what QPS follows.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench._report import Outcome, median, ms, percentile
from bench._seed import feature_name
from bench._server import NOOP_METHOD, BenchServer
from releasecontrol.v1 import release_control_pb2 as pb

TARGET_RATIO = 0.8
NOOP = "no-op (authenticated Ping)"
HEALTH = "no-op without auth (health Check)"


@dataclass(frozen=True)
class Sizes:
    features: int
    versions: int
    rounds: int
    seconds_per_round: float
    concurrency: tuple[int, ...] = (1, 16)


FULL = Sizes(features=10, versions=5, rounds=5, seconds_per_round=0.8)
QUICK = Sizes(features=3, versions=2, rounds=1, seconds_per_round=0.15)


async def load(
    call: Callable[[], Awaitable[Any]], concurrency: int, seconds: float
) -> tuple[int, float, list[float]]:
    """Keep `concurrency` calls in flight for `seconds`: (calls, elapsed, latencies)."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), time.perf_counter() - start, latencies


async def _measure(server: BenchServer, sizes: Sizes) -> dict[tuple[str, int], list[float]]:
    channel = server.channel()
    stub = server.stub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    md = server.metadata
    one = feature_name(0)
    ping = channel.unary_unary(NOOP_METHOD)
    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        NOOP: lambda: ping(b"", metadata=md),
        HEALTH: lambda: health.Check(health_pb2.HealthCheckRequest(), metadata=md),
        "GetStatus (all features)": lambda: stub.GetStatus(pb.GetStatusRequest(), metadata=md),
        "GetReleaseIndex (remote-index.json)": lambda: stub.GetReleaseIndex(
            pb.GetReleaseIndexRequest(), metadata=md
        ),
        "GetStatus (one feature)": lambda: stub.GetStatus(
            pb.GetStatusRequest(feature_ids=[one]), metadata=md
        ),
        "GetReleaseIndex (one releases.json)": lambda: stub.GetReleaseIndex(
            pb.GetReleaseIndexRequest(feature_id=one), metadata=md
        ),
    }
    for call in calls.values():  # connect, and warm every path once
        for _ in range(20):
            await call()
    results: dict[tuple[str, int], list[float]] = {}
    totals: dict[tuple[str, int], list[float]] = {}
    for _ in range(sizes.rounds):
        for concurrency in sizes.concurrency:
            for name, call in calls.items():
                cpu = server.cpu_seconds()
                count, elapsed, latencies = await load(call, concurrency, sizes.seconds_per_round)
                cpu = server.cpu_seconds() - cpu
                results.setdefault((name, concurrency), []).extend(latencies)
                total = totals.setdefault((name, concurrency), [0.0, 0.0, 0.0])
                total[0] += count
                total[1] += elapsed
                total[2] += cpu
    await server.close_channels()
    # QPS over all rounds, the server's CPU seconds per call, then the latencies.
    return {
        key: [totals[key][0] / totals[key][1], totals[key][2] / totals[key][0], *lat]
        for key, lat in results.items()
    }


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "reads",
        "reads vs a no-op RPC on the same server stack",
        f"Server: real process, mTLS, rpc-token auth, {sizes.features} features × "
        f"{sizes.versions} versions. One grpc.aio channel; {sizes.rounds} rounds × "
        f"{sizes.seconds_per_round:g} s per RPC and concurrency, alternating. The no-op is "
        "/bench.v1.Noop/Ping through the same TLS, interceptor and token authentication; "
        "grpc.health.v1.Health/Check (same TLS and interceptor, authentication skipped) is "
        "the stricter reference.",
    )
    started = time.perf_counter()
    with BenchServer(work_dir / "server", features=sizes.features, versions=sizes.versions) as srv:
        measured = asyncio.run(_measure(srv, sizes))
    for concurrency in sizes.concurrency:
        noop_qps = measured[(NOOP, concurrency)][0]
        health_qps = measured[(HEALTH, concurrency)][0]
        for (name, inflight), values in measured.items():
            if inflight != concurrency:
                continue
            qps, cpu, latencies = values[0], values[1], values[2:]
            outcome.add(
                f"{name}, {inflight} in flight",
                qps,
                "QPS",
                f"p50 {ms(median(latencies)):.2f} ms, p99 {ms(percentile(latencies, 0.99)):.2f} "
                f"ms; server CPU {ms(cpu):.2f} ms/call",
            )
            if name in (NOOP, HEALTH):
                continue
            outcome.add(
                f"{name}, {inflight} in flight: QPS ÷ health Check QPS", qps / health_qps, "×"
            )
            outcome.at_least(
                f"{name}, {inflight} in flight: QPS ÷ no-op QPS",
                qps / noop_qps,
                TARGET_RATIO,
                reason="",
            )
    outcome.seconds = time.perf_counter() - started
    return outcome
