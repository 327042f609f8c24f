"""propagation: from a transition's acknowledgement until every WatchReleases subscriber has it.

One process holds all the subscribers, each on its own grpc.aio channel (its
own TLS connection, as separate hosts would have), watching every feature.
Once all are synced, a writer on another connection runs release changes one
at a time; for each, the clock starts when the change's RPC returns (it is
then committed, signed and on the origin) and stops when the last subscriber
has received that change's event. Events that arrive before the
acknowledgement count as 0. Target: p99 under 500 ms with 1,000 subscribers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._report import Outcome, median, ms, percentile
from bench._seed import feature_name, version_name
from bench._server import BenchServer
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

TARGET_MS = 500.0
WAIT_SECONDS = 60.0


@dataclass(frozen=True)
class Sizes:
    subscribers: int
    transitions: int
    features: int = 10
    versions: int = 3


FULL = Sizes(subscribers=1000, transitions=30)
QUICK = Sizes(subscribers=20, transitions=4)


class _Arrivals:
    """When each subscriber received each global sequence's change event."""

    def __init__(self, subscribers: int) -> None:
        self.subscribers = subscribers
        self.times: dict[int, list[float]] = {}
        self._complete: dict[int, asyncio.Event] = {}
        self.synced = 0
        self.all_synced = asyncio.Event()

    def complete(self, sequence: int) -> asyncio.Event:
        return self._complete.setdefault(sequence, asyncio.Event())

    def got(self, sequence: int, at: float) -> None:
        times = self.times.setdefault(sequence, [])
        times.append(at)
        if len(times) == self.subscribers:
            self.complete(sequence).set()

    def sync(self) -> None:
        self.synced += 1
        if self.synced == self.subscribers:
            self.all_synced.set()


async def _subscribe(stub: pb_grpc.ReleaseControlStub, md: Any, arrivals: _Arrivals) -> None:
    call: AsyncIterator[pb.WatchReleasesResponse] = stub.WatchReleases(
        pb.WatchReleasesRequest(), metadata=md
    )
    async for event in call:
        if event.type == pb.WATCH_EVENT_TYPE_CHANGE:
            arrivals.got(event.global_sequence, time.perf_counter())
        elif event.type == pb.WATCH_EVENT_TYPE_SYNCED:
            arrivals.sync()
        elif event.type == pb.WATCH_EVENT_TYPE_RESYNC_REQUIRED:
            raise RuntimeError(f"a subscriber lagged: {event.message}")


async def _measure(server: BenchServer, sizes: Sizes) -> tuple[float, list[float], list[float]]:
    md = server.metadata
    arrivals = _Arrivals(sizes.subscribers)
    connecting = time.perf_counter()
    tasks = [
        asyncio.create_task(_subscribe(server.stub(server.channel()), md, arrivals))
        for _ in range(sizes.subscribers)
    ]
    try:
        await asyncio.wait_for(arrivals.all_synced.wait(), WAIT_SECONDS)
        setup = time.perf_counter() - connecting
        writer = server.stub(server.channel())
        newest, previous = version_name(sizes.versions), version_name(sizes.versions - 1)
        latencies: list[float] = []
        spreads: list[float] = []  # from sending the change: its whole round trip included
        for i in range(sizes.transitions):
            feature = feature_name(0)
            context = pb.ChangeContext(reason="benchmark", request_id=f"propagation-{i}")
            if i % 3 == 0:
                call = writer.DeployCanary(
                    pb.DeployCanaryRequest(
                        feature_id=feature, version=previous, soak_seconds=0, context=context
                    ),
                    metadata=md,
                )
            elif i % 3 == 1:
                call = writer.Promote(
                    pb.PromoteRequest(feature_id=feature, version=previous, context=context),
                    metadata=md,
                )
            else:
                call = writer.Rollback(
                    pb.RollbackRequest(feature_id=feature, version=newest, context=context),
                    metadata=md,
                )
            sent = time.perf_counter()
            response = await call
            acknowledged = time.perf_counter()
            sequence = response.transition.global_sequence
            await asyncio.wait_for(arrivals.complete(sequence).wait(), WAIT_SECONDS)
            times = arrivals.times[sequence]
            latencies.append(max(0.0, max(times) - acknowledged))
            spreads.append(max(times) - sent)
            await asyncio.sleep(0.05)  # let the subscribers settle between changes
        return setup, latencies, spreads
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.close_channels()


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "propagation",
        f"a transition reaching {sizes.subscribers:,} WatchReleases subscribers",
        f"Server: real process, mTLS, rpc-token auth, {sizes.features} features. "
        f"{sizes.subscribers:,} subscribers in this process, one grpc.aio channel (TLS "
        f"connection) each, watching all features; {sizes.transitions} transitions "
        "(canary, promote, rollback) one at a time from another connection.",
    )
    started = time.perf_counter()
    with BenchServer(work_dir / "server", features=sizes.features, versions=sizes.versions) as srv:
        setup, latencies, from_sent = asyncio.run(_measure(srv, sizes))
        peak = srv.peak_rss_mib()
    outcome.add("subscribers connected and synced in", setup, "s")
    outcome.add("all subscribers have it, p50", ms(median(latencies)), "ms")
    outcome.add("all subscribers have it, p99", ms(percentile(latencies, 0.99)), "ms")
    outcome.add("all subscribers have it, max", ms(max(latencies)), "ms")
    outcome.add("from sending the change until all have it, p50", ms(median(from_sent)), "ms")
    outcome.add(
        "from sending the change until all have it, p99", ms(percentile(from_sent, 0.99)), "ms"
    )
    outcome.add("server peak RSS", peak, "MB")
    outcome.below(
        f"acknowledged → all {sizes.subscribers:,} subscribers, p99",
        ms(percentile(latencies, 0.99)),
        TARGET_MS,
        unit="ms",
    )
    outcome.notes.append(
        "The subscribers all run in this one process, so the time includes decoding every "
        "event here; separate hosts would each decode one."
    )
    outcome.seconds = time.perf_counter() - started
    return outcome
