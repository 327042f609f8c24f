"""replicas: three replicas on one PostgreSQL, against one replica on SQLite; failover.

Every server is a real process (mTLS, rpc-token auth); PostgreSQL is started by the
benchmark (initdb, pg_ctl on a loopback port, fsync on, as SQLite runs synchronous=FULL).
The three replicas share the database, one origin folder and one artifact store.

- writes: 8 clients, each on its own connection and features, run canary → promote →
  rollback cycles; spread round-robin over the 3 replicas on PostgreSQL, against the same
  8 clients on one replica on SQLite (the embedded default), in the same run;
- reads: GetStatus with 16 calls in flight, spread over the 3 replicas, against all on
  one of them;
- failover: while 8 clients make changes through all three, one replica is SIGKILLed,
  `kills` times (restarted after each): kill → the next change acknowledged by another
  replica; kill → the origin serves everything committed at the kill.

Targets: failover within 5 s (next change elsewhere) and 10 s (origin caught up: a replica
that died after its commit leaves files owed, which the others write within a retry
period). Writes and reads are compared with the single replica; on two cores shared by
every process, more replicas add no CPU, so the ratios say what coordination costs rather
than what scaling out gains.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench._postgres import running_postgres
from bench._report import Outcome, median, ms, percentile
from bench._seed import feature_name, version_name
from bench._server import BenchServer
from bench._work import release_cycle
from bench.reads import load
from releasecontrol.index import Envelope
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

FAILOVER_NEXT_ACK_S = 5.0
FAILOVER_ORIGIN_S = 10.0
WRITE_RATIO = 0.5
READ_RATIO = 0.8


@dataclass(frozen=True)
class Sizes:
    features: int
    versions: int
    clients: int
    cycles_per_client: int
    read_seconds: float
    kills: int
    run_before_kill: float


FULL = Sizes(
    features=48,
    versions=3,
    clients=8,
    cycles_per_client=10,
    read_seconds=3.0,
    kills=3,
    run_before_kill=2.0,
)
QUICK = Sizes(
    features=8,
    versions=3,
    clients=8,
    cycles_per_client=1,
    read_seconds=0.3,
    kills=1,
    run_before_kill=0.5,
)


def _replicas(work_dir: Path, url: str, sizes: Sizes) -> list[BenchServer]:
    """Three replicas on `url`: the first seeds the database and makes the keys and PKI the
    others share (each has a token of its own)."""
    shared = work_dir / "shared"
    env = {
        "RELEASECONTROL_DATABASE_URL": url,
        "RELEASECONTROL_ORIGIN_DIR": str(shared / "origin"),
        "RELEASECONTROL_ARTIFACT_STORE": str(shared / "artifacts"),
    }
    first = BenchServer(
        work_dir / "replica-0", features=sizes.features, versions=sizes.versions, env=env
    ).start()
    servers = [first]
    for index in (1, 2):
        home = work_dir / f"replica-{index}"
        for part in ("pki", "keys"):
            shutil.copytree(first.home / part, home / part)
        servers.append(BenchServer(home, env=env).start())
    return servers


async def _writes(servers: list[BenchServer], sizes: Sizes) -> tuple[float, list[float]]:
    """8 clients spread round-robin over `servers`: (changes/s, latencies)."""
    clients = []
    for c in range(sizes.clients):
        server = servers[c % len(servers)]
        features = [feature_name(f) for f in range(sizes.features) if f % sizes.clients == c]
        clients.append((server, server.stub(server.channel()), features))
    for server, stub, features in clients:  # connect and warm up
        await release_cycle(stub, features[0], sizes.versions, server.metadata)
    times: list[float] = []

    async def cycles(
        server: BenchServer, stub: pb_grpc.ReleaseControlStub, features: list[str]
    ) -> None:
        for i in range(sizes.cycles_per_client):
            feature = features[i % len(features)]
            times.extend(await release_cycle(stub, feature, sizes.versions, server.metadata))

    start = time.perf_counter()
    await asyncio.gather(*(cycles(*client) for client in clients))
    elapsed = time.perf_counter() - start
    for server in servers:
        await server.close_channels()
    return len(times) / elapsed, times


async def _reads(servers: list[BenchServer], seconds: float) -> float:
    """GetStatus calls per second, 16 in flight, spread over `servers`."""
    stubs = [(s, s.stub(s.channel())) for s in servers]
    turn = 0

    async def call() -> None:
        nonlocal turn
        server, stub = stubs[turn % len(stubs)]
        turn += 1
        await stub.GetStatus(pb.GetStatusRequest(), metadata=server.metadata)

    await load(call, 16, 0.2)  # warm up every connection
    calls, elapsed, _ = await load(call, 16, seconds)
    for server in servers:
        await server.close_channels()
    return calls / elapsed


def _origin_sequence(origin: Path) -> int:
    try:
        return int(
            Envelope.from_bytes((origin / "remote-index.json").read_bytes()).signed["sequence"]
        )
    except (OSError, KeyError, ValueError):
        return 0


async def _failover(
    servers: list[BenchServer],
    sizes: Sizes,
    origin: Path,
    top_committed: Callable[[], int],
) -> list[tuple[float, float]]:
    """(kill → next change acknowledged elsewhere, kill → origin caught up) per kill."""
    stop = asyncio.Event()
    acks: list[tuple[float, int]] = []  # (when, replica)
    alive = [True] * len(servers)
    starts = [0] * len(servers)  # how often each replica was started again

    async def client(number: int) -> None:
        # One connection per replica (and per start of it), kept like a real client's.
        stubs: dict[tuple[int, int], pb_grpc.ReleaseControlStub] = {}
        feature = feature_name(number)
        stable = version_name(sizes.versions)
        target = number % len(servers)
        while not stop.is_set():
            newest, previous = version_name(sizes.versions), version_name(sizes.versions - 1)
            version = previous if stable == newest else newest
            request = pb.RollbackRequest(
                feature_id=feature,
                version=version,
                context=pb.ChangeContext(reason="failover", request_id=str(uuid.uuid4())),
            )
            while not stop.is_set():
                if not alive[target]:
                    target = (target + 1) % len(servers)
                    continue
                server = servers[target]
                key = (target, starts[target])
                if key not in stubs:
                    stubs[key] = server.stub(server.channel())
                try:
                    await stubs[key].Rollback(request, metadata=server.metadata, timeout=10)
                    break
                except grpc.aio.AioRpcError:
                    del stubs[key]
                    target = (target + 1) % len(servers)
                    await asyncio.sleep(0.05)
            stable = version
            acks.append((time.monotonic(), target))

    tasks = [asyncio.create_task(client(n)) for n in range(sizes.clients)]
    results = []
    try:
        for kill in range(sizes.kills):
            await asyncio.sleep(sizes.run_before_kill)
            victim = kill % len(servers)
            process = servers[victim].running.process
            assert process is not None
            alive[victim] = False
            killed_at = time.monotonic()
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            owed = top_committed()
            while _origin_sequence(origin) < owed:
                await asyncio.sleep(0.01)
            caught_up = time.monotonic() - killed_at
            while not any(at > killed_at and via != victim for at, via in acks):
                await asyncio.sleep(0.01)
            next_ack = min(at for at, via in acks if at > killed_at and via != victim) - killed_at
            results.append((next_ack, caught_up))
            await servers[victim].close_channels()
            await asyncio.to_thread(servers[victim].running.start)  # the same home again
            starts[victim] += 1
            alive[victim] = True
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in servers:
            await server.close_channels()
    return results


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "replicas",
        "three replicas on one PostgreSQL vs one on SQLite, and failover",
        f"Servers: real processes, mTLS, rpc-token auth, {sizes.features} features × "
        f"{sizes.versions} versions; PostgreSQL started by the benchmark (fsync on). Writes: "
        f"{sizes.clients} clients, own connection each, {sizes.cycles_per_client} cycles each "
        f"(3 changes), round-robin over the replicas. Reads: GetStatus, 16 in flight, "
        f"{sizes.read_seconds:g} s. Failover: {sizes.kills} SIGKILLs of a replica while "
        f"{sizes.clients} clients make changes through all three.",
    )
    started = time.perf_counter()
    with BenchServer(
        work_dir / "sqlite", features=sizes.features, versions=sizes.versions
    ) as single:
        sqlite_rate, sqlite_times = asyncio.run(_writes([single], sizes))
    with running_postgres(fsync=True) as database:
        url = database.new_database()
        servers = _replicas(work_dir, url, sizes)
        try:
            pg_rate, pg_times = asyncio.run(_writes(servers, sizes))
            one_reads = asyncio.run(_reads(servers[:1], sizes.read_seconds))
            three_reads = asyncio.run(_reads(servers, sizes.read_seconds))

            def top_committed() -> int:
                rows = database.sql(
                    url, "SELECT sequence FROM files WHERE path = 'remote-index.json'"
                )
                return int(str(rows[0][0]))

            failovers = asyncio.run(
                _failover(
                    servers,
                    sizes,
                    work_dir / "shared" / "origin",
                    top_committed,
                )
            )
        finally:
            for server in servers:
                server.stop()

    outcome.add(
        "writes, 1 replica on SQLite",
        sqlite_rate,
        "changes/s",
        f"p50 {ms(median(sqlite_times)):.1f} ms",
    )
    outcome.add(
        "writes, 3 replicas on PostgreSQL",
        pg_rate,
        "changes/s",
        f"p50 {ms(median(pg_times)):.1f} ms, p99 {ms(percentile(pg_times, 0.99)):.1f} ms",
    )
    outcome.add("reads, 1 replica", one_reads, "calls/s", "GetStatus, 16 in flight")
    outcome.add("reads, 3 replicas", three_reads, "calls/s", "GetStatus, 16 in flight")
    next_acks = [n for n, _ in failovers]
    caught_up = [c for _, c in failovers]
    outcome.add(
        "failover: kill → next change elsewhere (worst)",
        max(next_acks),
        "s",
        ", ".join(f"{n:.2f}" for n in next_acks),
    )
    outcome.add(
        "failover: kill → origin caught up (worst)",
        max(caught_up),
        "s",
        ", ".join(f"{c:.2f}" for c in caught_up),
    )
    outcome.at_least(
        "writes: 3 replicas on PostgreSQL ÷ 1 on SQLite",
        pg_rate / sqlite_rate,
        WRITE_RATIO,
        reason="every change waits for the lease and a round trip to PostgreSQL per statement",
    )
    outcome.at_least(
        "reads: 3 replicas ÷ 1",
        three_reads / one_reads,
        READ_RATIO,
        reason="reads are CPU-bound and the machine's cores are shared by every replica",
    )
    outcome.below(
        "failover: kill → next change elsewhere", max(next_acks), FAILOVER_NEXT_ACK_S, unit="s"
    )
    outcome.below("failover: kill → origin caught up", max(caught_up), FAILOVER_ORIGIN_S, unit="s")
    outcome.seconds = time.perf_counter() - started
    return outcome
