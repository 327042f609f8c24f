"""streaming: GetStatus and WatchReleases while a 200 MiB artifact streams to the origin.

Target (issue 12): while a CI pipeline publishes a version carrying one
200 MiB asset, GetStatus p99 latency and WatchReleases delivery latency stay at
most 2 times what they are with the server idle; with the filesystem origin,
and with an S3 origin (moto's ThreadedMotoServer, in a process of its own so
its Python work does not share this process's interpreter).

Method, for each origin: the real server (mTLS, rpc-token auth) with a few
features published through the client. A probe in this process, each part on
its own connection, runs the whole time: GetStatus of every feature and the
no-op RPC (bench/_noop) in turn, a 5 ms pause after each; and a release change
on one feature (canary → promote → rollback) every 50 ms, whose event a
WatchReleases subscriber awaits. Watch delivery is timed from sending the
change until the subscriber has its event: the server answers the caller and
tells the watchers in the same step, so the event usually arrives with the
acknowledgement or before it (that gap is reported too, and stays near 0),
and what a change's watchers wait for is the change's own way through the
write path. A publisher process (`ReleaseControlClient.publish` of a feature
folder, what `releasectl publish` runs in a CI job) publishes the asset of
random bytes `rounds` times (fresh bytes and a new version each time), and
idle windows come between: one before each round (the publisher has hashed
its files and waits) and one after the last, so a drift in the machine's
load hits idle and busy alike. A sample is idle when it lies wholly in an
idle window, busy when it was in flight between a round's first chunk and
that round's acknowledgement, i.e. while the bytes stream to the server, into
the artifact store and onto the origin; others (a second after each round,
the publisher hashing) count for neither. The targets are busy ÷
idle of GetStatus p99 and of watch delivery p99, each ≤ 2: ratios of the same
run, so the machine's speed cancels out. For where the time goes, the no-op
RPC, this process's own event-loop lateness and a 1 KiB fsync beside the
server's state (every 50 ms, on a thread) are sampled the same way; and a
last window runs the probe beside one busy-loop process, the control: what
one core of load unrelated to the server costs on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._report import Outcome, median, ms, percentile
from bench._seed import feature_files, feature_name, manifest_for, version_name
from bench._server import NOOP_METHOD, BenchServer
from releasecontrol.client import ReleaseControlClient
from releasecontrol.manifest import load_feature_folder
from releasecontrol.v1 import release_control_pb2 as pb

RATIO = 2.0
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]
BIG_FEATURE = "artifact-stream"
BIG_ASSET = "bundle.wasm"
STATUS_PAUSE = 0.005
"""Between GetStatus calls: a steady probe, not a load of its own."""
WATCH_PAUSE = 0.05
"""Between one change's event and the next change."""
FSYNC_PAUSE = 0.05
WARM_UP_SECONDS = 1.0
SETTLE_SECONDS = 1.0
"""After a round's acknowledgement, before anything else counts."""
WAIT_SECONDS = 60.0
PUBLISH_TIMEOUT_SECONDS = 600.0
S3_REGION = "us-east-1"


@dataclass(frozen=True)
class Sizes:
    artifact_mib: int
    rounds: int
    idle_seconds: float
    """In all: one window before each round and one after the last."""
    features: int = 4
    versions: int = 2


FULL = Sizes(artifact_mib=200, rounds=3, idle_seconds=12.0)
QUICK = Sizes(artifact_mib=4, rounds=1, idle_seconds=1.0)


# -- the probe ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    started: float
    seconds: float

    @property
    def ended(self) -> float:
        return self.started + self.seconds


@dataclass(frozen=True)
class WatchSample:
    sent: float
    acknowledged: float
    arrived: float
    """When the subscriber had the change's event (often a little before the acknowledgement:
    the server answers the caller, then tells the watchers, in the same step)."""

    @property
    def started(self) -> float:
        return self.sent

    @property
    def ended(self) -> float:
        return max(self.arrived, self.acknowledged)

    @property
    def delivery(self) -> float:
        """From sending the change until the subscriber has it: the change's whole way."""
        return self.arrived - self.sent

    @property
    def after_acknowledgement(self) -> float:
        return max(0.0, self.arrived - self.acknowledged)


class _Probe:
    """GetStatus and the no-op RPC in turn, `STATUS_PAUSE` apart; and a change every
    `WATCH_PAUSE`, timed until a WatchReleases subscriber has its event; the reader, the
    writer and the subscriber each on its own connection, until `stop`."""

    def __init__(self, server: BenchServer, versions: int) -> None:
        self._server = server
        self._md = server.metadata
        reading = server.channel()
        self._reader = server.stub(reading)
        self._ping = reading.unary_unary(NOOP_METHOD)
        self._writer = server.stub(server.channel())
        self._watcher = server.stub(server.channel())
        self._newest, self._previous = version_name(versions), version_name(versions - 1)
        self.status: list[Sample] = []
        self.ping: list[Sample] = []
        """The no-op RPC: the same server stack (TLS, interceptor, auth) without GetStatus."""
        self.lag: list[Sample] = []
        """How late this process's own event loop wakes from a pause (its seconds)."""
        self.watch: list[WatchSample] = []
        self._arrived: dict[int, float] = {}
        self._waiting: dict[int, asyncio.Future[float]] = {}
        self._synced = asyncio.Event()
        self._stop = asyncio.Event()
        self._changes = 0
        self._subscriber: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._subscriber = asyncio.create_task(self._subscribe())
        synced = asyncio.create_task(self._synced.wait())
        done, _ = await asyncio.wait(
            {synced, self._subscriber}, timeout=WAIT_SECONDS, return_when="FIRST_COMPLETED"
        )
        if synced not in done:
            synced.cancel()
            if self._subscriber in done:
                self._subscriber.result()  # raises what ended the subscription
            raise RuntimeError("the WatchReleases subscriber did not sync")
        self._loops = [
            asyncio.create_task(self._status_loop()),
            asyncio.create_task(self._watch_loop()),
        ]

    async def stop(self) -> None:
        self._stop.set()
        try:
            await asyncio.gather(*self._loops)
        finally:
            if self._subscriber is not None:
                self._subscriber.cancel()
                await asyncio.gather(self._subscriber, return_exceptions=True)
            await self._server.close_channels()

    async def _subscribe(self) -> None:
        call: AsyncIterator[pb.WatchReleasesResponse] = self._watcher.WatchReleases(
            pb.WatchReleasesRequest(), metadata=self._md
        )
        async for event in call:
            if event.type == pb.WATCH_EVENT_TYPE_CHANGE:
                now = time.monotonic()
                waiting = self._waiting.pop(event.global_sequence, None)
                if waiting is None:
                    self._arrived[event.global_sequence] = now
                elif not waiting.done():
                    waiting.set_result(now)
            elif event.type == pb.WATCH_EVENT_TYPE_SYNCED:
                self._synced.set()
            elif event.type == pb.WATCH_EVENT_TYPE_RESYNC_REQUIRED:
                raise RuntimeError(f"the subscriber lagged: {event.message}")

    async def _status_loop(self) -> None:
        """GetStatus and the no-op RPC in turn, a pause after each."""
        request = pb.GetStatusRequest()
        while not self._stop.is_set():
            started = time.monotonic()
            await self._reader.GetStatus(request, metadata=self._md)
            self.status.append(Sample(started, time.monotonic() - started))
            await self._pause(STATUS_PAUSE)
            started = time.monotonic()
            await self._ping(b"", metadata=self._md)
            self.ping.append(Sample(started, time.monotonic() - started))
            await self._pause(STATUS_PAUSE)

    async def _pause(self, seconds: float) -> None:
        started = time.monotonic()
        await asyncio.sleep(seconds)
        self.lag.append(Sample(started, max(0.0, time.monotonic() - started - seconds)))

    async def _change(self) -> int:
        """The next change of the cycle on feature 0 (it repeats forever, as in `propagation`);
        its global sequence."""
        step = self._changes % 3
        self._changes += 1
        feature = feature_name(0)
        context = pb.ChangeContext(reason="benchmark", request_id=str(uuid.uuid4()))
        if step == 0:
            canary = await self._writer.DeployCanary(
                pb.DeployCanaryRequest(
                    feature_id=feature, version=self._previous, soak_seconds=0, context=context
                ),
                metadata=self._md,
            )
            return int(canary.transition.global_sequence)
        if step == 1:
            promoted = await self._writer.Promote(
                pb.PromoteRequest(feature_id=feature, version=self._previous, context=context),
                metadata=self._md,
            )
            return int(promoted.transition.global_sequence)
        rolled_back = await self._writer.Rollback(
            pb.RollbackRequest(feature_id=feature, version=self._newest, context=context),
            metadata=self._md,
        )
        return int(rolled_back.transition.global_sequence)

    async def _watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            sent = time.monotonic()
            sequence = await self._change()
            acknowledged = time.monotonic()
            arrived = self._arrived.pop(sequence, None)
            if arrived is None:
                waiting: asyncio.Future[float] = loop.create_future()
                self._waiting[sequence] = waiting
                arrived = await asyncio.wait_for(waiting, WAIT_SECONDS)
            self.watch.append(WatchSample(sent, acknowledged, arrived))
            await asyncio.sleep(WATCH_PAUSE)


class _FsyncProbe:
    """On a thread: 1 KiB written and fsynced beside the server's state every `FSYNC_PAUSE`,
    what each change's commit waits for on this disk."""

    def __init__(self, directory: Path) -> None:
        self._path = directory / "fsync-probe.bin"
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(WAIT_SECONDS)

    def _run(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            while not self._stop.wait(FSYNC_PAUSE):
                started = time.monotonic()
                os.write(fd, b"x" * 1024)
                os.fsync(fd)
                self.samples.append(Sample(started, time.monotonic() - started))
        finally:
            os.close(fd)


# -- the publisher (a process of its own, as a CI job) ------------------------------------


def _write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def write_big_feature(folder: Path, size: int) -> None:
    """A feature folder with a small entry script and one asset of `size` random bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.js").write_text(f"export default '{BIG_FEATURE}';\n")
    piece = 8 * MIB
    with (folder / BIG_ASSET).open("wb") as fh:
        for start in range(0, size, piece):
            fh.write(os.urandom(min(piece, size - start)))


def _publish_rounds(folder: Path, rounds: int) -> None:
    """Publish the big feature `rounds` times, each when a line `go` arrives on stdin.

    Reports on stdout, one JSON object a line: "ready" once a round's files are
    hashed, "streaming" when its first chunk is sent, and "acknowledged" at its end
    (the times the call started, its first and last chunk were sent and it returned,
    and the bytes sent).
    """
    lock = threading.Lock()

    def say(**message: Any) -> None:
        with lock:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()

    with ReleaseControlClient.from_environment() as client:
        for r in range(rounds):
            # Fresh bytes at the start of the asset: artifacts are kept by SHA-256, and
            # bytes already kept would not be written again.
            with (folder / BIG_ASSET).open("r+b") as fh:
                fh.write(os.urandom(64))
            _write_manifest(
                folder,
                {
                    "id": BIG_FEATURE,
                    "version": f"2.{r}.0",
                    "entry": "index.js",
                    "routes": [f"/{BIG_FEATURE}"],
                    "compat": {"host": "^2.0.0"},
                    "assets": [{"path": "index.js"}, {"path": BIG_ASSET}],
                },
            )
            source = load_feature_folder(folder, feature_id=BIG_FEATURE)
            say(round=r, event="ready")
            if sys.stdin.readline().strip() != "go":
                return
            marks: dict[str, float] = {}

            def progress(
                sent: int, total: int, r: int = r, marks: dict[str, float] = marks
            ) -> None:
                now = time.monotonic()
                if "first" not in marks:
                    marks["first"] = now
                    say(round=r, event="streaming", at=now)
                if sent == total:
                    marks["last"] = now

            started = time.monotonic()
            client.publish(source, reason="benchmark: a large artifact", on_progress=progress)
            acknowledged = time.monotonic()
            say(
                round=r,
                event="acknowledged",
                started=started,
                first_chunk=marks["first"],
                last_chunk=marks["last"],
                at=acknowledged,
                bytes=source.total_bytes,
            )


@dataclass(frozen=True)
class Round:
    started: float
    first_chunk: float
    last_chunk: float
    acknowledged: float
    size: int
    server_cpu: float
    """Server CPU seconds from the first chunk to the acknowledgement."""
    machine_cpu: float
    """CPU seconds of the whole machine (every process) over the same time."""


def _cpu_now(server: BenchServer) -> tuple[float, float]:
    """(server CPU seconds, machine busy CPU seconds) so far."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    jiffies = [int(f) for f in fields[:8]]
    busy = sum(jiffies) - jiffies[3] - jiffies[4]  # all but idle and iowait
    return server.cpu_seconds(), busy / os.sysconf("SC_CLK_TCK")


class _Publisher:
    """The publisher process, stepped round by round; its reports read on a thread (the
    CPU times noted as they arrive)."""

    def __init__(self, server: BenchServer, folder: Path, rounds: int) -> None:
        self._server = server
        self._expected = rounds
        self.rounds: list[Round] = []
        self._messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cpu_at_start: tuple[float, float] = (0.0, 0.0)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.streaming", "publish", str(folder), str(rounds)],
            cwd=REPO,
            env={**os.environ, **server.client_env()},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._errors = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._stderr = threading.Thread(target=self._drain, daemon=True)
        self._stderr.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        try:
            for line in self.process.stdout:
                message = json.loads(line)
                if message["event"] == "streaming":
                    self._cpu_at_start = _cpu_now(self._server)
                elif message["event"] == "acknowledged":
                    server_cpu, machine_cpu = _cpu_now(self._server)
                    self.rounds.append(
                        Round(
                            started=message["started"],
                            first_chunk=message["first_chunk"],
                            last_chunk=message["last_chunk"],
                            acknowledged=message["at"],
                            size=message["bytes"],
                            server_cpu=server_cpu - self._cpu_at_start[0],
                            machine_cpu=machine_cpu - self._cpu_at_start[1],
                        )
                    )
                self._messages.put(message)
        finally:
            self.process.wait()
            self._messages.put(None)

    def _drain(self) -> None:
        assert self.process.stderr is not None
        self._errors = self.process.stderr.read()

    async def expect(self, event: str) -> None:
        """Wait for the publisher's next report other than "streaming"; it must be `event`."""
        loop = asyncio.get_running_loop()
        while True:
            message = await loop.run_in_executor(
                None, self._messages.get, True, PUBLISH_TIMEOUT_SECONDS
            )
            if message is None or message["event"] != "streaming":
                break
        if message is None or message["event"] != event:
            await loop.run_in_executor(None, self._stderr.join, 10.0)
            raise RuntimeError(
                f"the publisher stopped (exit status {self.process.poll()}) after "
                f"{len(self.rounds)} of {self._expected} rounds, before {event!r}:\n"
                f"{self._errors}"
            )

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def stop(self) -> None:
        """End the process (at once if it is still publishing) and close its pipes."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(10)
        self._stderr.join(10)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


# -- S3: moto in a process of its own -----------------------------------------------------


def _serve_moto() -> None:
    """Run moto's S3 server on a free port, print its endpoint, stop when stdin closes."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    sys.stdout.write(json.dumps({"endpoint": f"http://{host}:{port}"}) + "\n")
    sys.stdout.flush()
    sys.stdin.read()
    server.stop()


@contextmanager
def _moto() -> Iterator[str]:
    """moto's S3 server in a child process; its endpoint URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.streaming", "moto"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError("moto's S3 server did not start")
        yield str(json.loads(line)["endpoint"])
    finally:
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _s3_env(endpoint: str, work_dir: Path) -> dict[str, str]:
    """A fresh bucket on `endpoint`, and the server settings of an S3 origin in it."""
    import boto3
    import botocore.config

    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    boto3.session.Session(aws_access_key_id="bench", aws_secret_access_key="bench").client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        config=botocore.config.Config(s3={"addressing_style": "path"}),
    ).create_bucket(Bucket=bucket)
    return {
        "RELEASECONTROL_ORIGIN_TYPE": "s3",
        "RELEASECONTROL_S3_BUCKET": bucket,
        "RELEASECONTROL_S3_PREFIX": "cdn/",
        "RELEASECONTROL_S3_ENDPOINT_URL": endpoint,
        "RELEASECONTROL_S3_REGION": S3_REGION,
        # The bucket is the origin: no folder for the server to serve.
        "RELEASECONTROL_ORIGIN_HTTP_LISTEN": "",
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_CONFIG_FILE": str(work_dir / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(work_dir / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# -- one origin ---------------------------------------------------------------------------


@dataclass
class _Run:
    status: list[Sample]
    ping: list[Sample]
    lag: list[Sample]
    fsync: list[Sample]
    watch: list[WatchSample]
    idle: list[tuple[float, float]]
    rounds: list[Round]
    hog: list[tuple[float, float]]
    """The control window: one core of unrelated CPU load (a busy loop in its own process)."""
    idle_server_cpu: float = 0.0
    idle_machine_cpu: float = 0.0

    @property
    def busy(self) -> list[tuple[float, float]]:
        return [(r.first_chunk, r.acknowledged) for r in self.rounds]

    @property
    def idle_seconds(self) -> float:
        return sum(end - start for start, end in self.idle)


def _seed(server: BenchServer, root: Path, sizes: Sizes) -> None:
    """Publish the small features through the client, every version in turn (stable)."""
    with ReleaseControlClient.from_environment(environ=server.client_env()) as client:
        for f in range(sizes.features):
            feature_id = feature_name(f)
            for v in range(1, sizes.versions + 1):
                version = version_name(v)
                folder = root / feature_id / version
                folder.mkdir(parents=True)
                files = feature_files(feature_id, version)
                for path, data in files.items():
                    (folder / path).parent.mkdir(parents=True, exist_ok=True)
                    (folder / path).write_bytes(data)
                _write_manifest(folder, manifest_for(feature_id, version, files))
                client.publish(load_feature_folder(folder, feature_id=feature_id))


async def _phases(server: BenchServer, folder: Path, sizes: Sizes) -> _Run:
    """Idle windows and the publisher's rounds in turn, starting and ending idle; the
    probes throughout."""
    probe = _Probe(server, sizes.versions)
    await probe.start()
    fsync = _FsyncProbe(server.home)
    fsync.start()
    publisher = _Publisher(server, folder, sizes.rounds)
    idle: list[tuple[float, float]] = []
    idle_cpu = [0.0, 0.0]
    window = sizes.idle_seconds / (sizes.rounds + 1)

    async def idle_window() -> None:
        before = _cpu_now(server)
        start = time.monotonic()
        await asyncio.sleep(window)
        idle.append((start, time.monotonic()))
        after = _cpu_now(server)
        idle_cpu[0] += after[0] - before[0]
        idle_cpu[1] += after[1] - before[1]

    try:
        await asyncio.sleep(WARM_UP_SECONDS)
        for _ in range(sizes.rounds):
            await publisher.expect("ready")
            await idle_window()
            publisher.go()
            await publisher.expect("acknowledged")
            await asyncio.sleep(SETTLE_SECONDS)
        await idle_window()
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            await asyncio.sleep(0.2)
            start = time.monotonic()
            await asyncio.sleep(window)
            hogged = (start, time.monotonic())
        finally:
            hog.kill()
            hog.wait()
    finally:
        publisher.stop()
        fsync.stop()
        await probe.stop()
    return _Run(
        status=probe.status,
        ping=probe.ping,
        lag=probe.lag,
        fsync=fsync.samples,
        watch=probe.watch,
        idle=idle,
        rounds=publisher.rounds,
        hog=[hogged],
        idle_server_cpu=idle_cpu[0],
        idle_machine_cpu=idle_cpu[1],
    )


def _measure(
    work_dir: Path, folder: Path, sizes: Sizes, env: Mapping[str, str] | None = None
) -> _Run:
    with BenchServer(work_dir / "server", env=env) as server:
        _seed(server, work_dir / "seed", sizes)
        return asyncio.run(_phases(server, folder, sizes))


# -- figures ------------------------------------------------------------------------------


def _inside(started: float, ended: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(start <= started and ended <= end for start, end in windows)


def _overlaps(started: float, ended: float, windows: Sequence[tuple[float, float]]) -> bool:
    return any(started < end and start < ended for start, end in windows)


def _split(
    samples: Sequence[Sample] | Sequence[WatchSample], run: _Run
) -> tuple[list[Any], list[Any]]:
    """(idle samples: wholly in an idle window, busy samples: in flight during a round)."""
    idle = [s for s in samples if _inside(s.started, s.ended, run.idle)]
    busy = [s for s in samples if _overlaps(s.started, s.ended, run.busy)]
    return idle, busy


def _report(outcome: Outcome, label: str, run: _Run, sizes: Sizes) -> None:
    idle_status, busy_status = _split(run.status, run)
    idle_watch, busy_watch = _split(run.watch, run)
    if not busy_status or not busy_watch or not idle_status or not idle_watch:
        raise RuntimeError(
            f"{label}: too few samples (GetStatus idle {len(idle_status)}, busy "
            f"{len(busy_status)}; watch idle {len(idle_watch)}, busy {len(busy_watch)})"
        )
    rounds = len(run.rounds)
    busy_seconds = sum(r.acknowledged - r.first_chunk for r in run.rounds)
    streamed = sum(r.last_chunk - r.first_chunk for r in run.rounds)
    landing = sum(r.acknowledged - r.last_chunk for r in run.rounds)
    total = sum(r.size for r in run.rounds) / MIB
    publish_seconds = sum(r.acknowledged - r.started for r in run.rounds)
    outcome.add(
        f"{label}: publish of {sizes.artifact_mib} MiB, call to acknowledgement",
        publish_seconds / rounds,
        "s",
        f"mean of {rounds}",
    )
    outcome.add(f"{label}: upload rate, whole publish", total / publish_seconds, "MiB/s")
    outcome.add(
        f"{label}: chunks streamed in",
        streamed / rounds,
        "s",
        f"first to last chunk sent: {total / streamed:.0f} MiB/s",
    )
    outcome.add(
        f"{label}: last chunk → acknowledged",
        landing / rounds,
        "s",
        "hash check, artifact store, origin, commit",
    )

    # The targets' series: every percentile, with the counts.
    targets = {
        "GetStatus": ([s.seconds for s in idle_status], [s.seconds for s in busy_status]),
        "watch delivery": ([s.delivery for s in idle_watch], [s.delivery for s in busy_watch]),
    }
    for name, (idle, busy) in targets.items():
        outcome.add(f"{label}: {name} idle p50", ms(median(idle)), "ms")
        outcome.add(
            f"{label}: {name} idle p99", ms(percentile(idle, 0.99)), "ms", f"{len(idle)} samples"
        )
        outcome.add(f"{label}: {name} busy p50", ms(median(busy)), "ms")
        outcome.add(
            f"{label}: {name} busy p99", ms(percentile(busy, 0.99)), "ms", f"{len(busy)} samples"
        )

    # Where the time goes: p99 idle and busy (p50 in the note).
    def diagnose(name: str, idle: Sequence[float], busy: Sequence[float], note: str) -> None:
        for when, values in (("idle", idle), ("busy", busy)):
            outcome.add(
                f"{label}: {name} p99 {when}",
                ms(percentile(values, 0.99)),
                "ms",
                f"p50 {ms(median(values)):.2f} ms" + (f"; {note}" if note else ""),
            )

    diagnose(
        "watch event after the acknowledgement",
        [s.after_acknowledgement for s in idle_watch],
        [s.after_acknowledgement for s in busy_watch],
        "the fan-out",
    )
    idle_ping, busy_ping = _split(run.ping, run)
    diagnose(
        "no-op RPC",
        [s.seconds for s in idle_ping],
        [s.seconds for s in busy_ping],
        "TLS, interceptor, auth",
    )
    idle_lag, busy_lag = _split(run.lag, run)
    diagnose(
        "probe's own loop, late by",
        [s.seconds for s in idle_lag],
        [s.seconds for s in busy_lag],
        "this process",
    )
    idle_fsync, busy_fsync = _split(run.fsync, run)
    diagnose(
        "fsync of 1 KiB",
        [s.seconds for s in idle_fsync],
        [s.seconds for s in busy_fsync],
        "beside the server's state",
    )
    # Within the busy time: while the chunks stream in, and while the server lands them.
    for part, windows in (
        ("streaming", [(r.first_chunk, r.last_chunk) for r in run.rounds]),
        ("landing", [(r.last_chunk, r.acknowledged) for r in run.rounds]),
    ):
        status = [s.seconds for s in busy_status if _overlaps(s.started, s.ended, windows)]
        watch = [s.delivery for s in busy_watch if _overlaps(s.started, s.ended, windows)]
        outcome.add(
            f"{label}: GetStatus p99 while {part}",
            ms(percentile(status, 0.99)) if status else 0.0,
            "ms",
            f"{len(status)} samples",
        )
        outcome.add(
            f"{label}: watch delivery p99 while {part}",
            ms(percentile(watch, 0.99)) if watch else 0.0,
            "ms",
            f"{len(watch)} samples",
        )
    # The control: what one core of load that has nothing to do with the server costs.
    hogged = {
        "GetStatus": [s.seconds for s in run.status if _inside(s.started, s.ended, run.hog)],
        "watch delivery": [s.delivery for s in run.watch if _inside(s.started, s.ended, run.hog)],
    }
    for name, values in hogged.items():
        if values:
            ratio = percentile(values, 0.99) / percentile(targets[name][0], 0.99)
            outcome.add(
                f"{label}: {name} p99 beside a CPU hog",
                ms(percentile(values, 0.99)),
                "ms",
                f"{ratio:.2f} × idle; {len(values)} samples; one busy-loop process, nothing else",
            )
    cores = len(os.sched_getaffinity(0))
    outcome.add(
        f"{label}: server CPU busy",
        sum(r.server_cpu for r in run.rounds) / busy_seconds,
        "cores",
        f"idle {run.idle_server_cpu / run.idle_seconds:.2f} (the probe's load)",
    )
    outcome.add(
        f"{label}: machine CPU busy",
        sum(r.machine_cpu for r in run.rounds) / busy_seconds,
        "cores",
        f"of {cores}, every process; idle {run.idle_machine_cpu / run.idle_seconds:.2f}",
    )
    for name, (idle, busy) in targets.items():
        busy_p99, idle_p99 = ms(percentile(busy, 0.99)), ms(percentile(idle, 0.99))
        outcome.at_most(
            f"{label}: {name} p99 busy ÷ idle",
            busy_p99 / idle_p99,
            RATIO,
            reason=f"p99 {busy_p99:.1f} ms while the artifact streams against "
            f"{idle_p99:.1f} ms idle",
        )


def run(work_dir: Path, *, quick: bool = False) -> Outcome:
    sizes = QUICK if quick else FULL
    outcome = Outcome(
        "streaming",
        f"GetStatus and WatchReleases while a {sizes.artifact_mib} MiB artifact streams "
        "to the origin",
        f"Server: real process, mTLS, rpc-token auth, {sizes.features} features × "
        f"{sizes.versions} versions published through the client; filesystem origin, then S3 "
        "origin (moto's ThreadedMotoServer in its own process). Probe, each on its own "
        f"connection: GetStatus and a no-op RPC in turn, {STATUS_PAUSE * 1000:.0f} ms apart, "
        f"and a change every {WATCH_PAUSE * 1000:.0f} ms timed from sending it until a "
        "WatchReleases subscriber has its event. Busy: a publisher process "
        f"(ReleaseControlClient.publish) sends one {sizes.artifact_mib} MiB asset of random "
        f"bytes, {sizes.rounds} time(s), each a new version. Idle: {sizes.idle_seconds:.0f} s "
        "in all, in windows before each round and after the last; then one window beside a "
        "busy-loop process (the control).",
    )
    started = time.perf_counter()
    folder = work_dir / "big" / BIG_FEATURE
    write_big_feature(folder, sizes.artifact_mib * MIB)
    file_run = _measure(work_dir / "file", folder, sizes)
    _report(outcome, "file", file_run, sizes)
    with _moto() as endpoint:
        s3_run = _measure(work_dir / "s3", folder, sizes, _s3_env(endpoint, work_dir))
    _report(outcome, "s3", s3_run, sizes)
    outcome.notes.append(
        "Busy samples are those in flight between a round's first chunk and its "
        "acknowledgement. The publisher, the server and (for S3) moto share this machine's "
        "cores and disk with the probe, so the busy figures include that contention; the "
        "CPU-hog window shows what one core of unrelated load costs alone. moto is one Python "
        "process: while it takes a multipart upload its other requests (the changes' index "
        "files) wait, which a real S3 service would not make them do."
    )
    outcome.seconds = time.perf_counter() - started
    return outcome


def _child(argv: list[str]) -> int:
    """`python -m bench.streaming publish FOLDER ROUNDS` or `... moto`: the benchmark's
    helper processes."""
    parser = argparse.ArgumentParser(prog="python -m bench.streaming")
    commands = parser.add_subparsers(dest="command", required=True)
    publish = commands.add_parser("publish")
    publish.add_argument("folder", type=Path)
    publish.add_argument("rounds", type=int)
    commands.add_parser("moto")
    args = parser.parse_args(argv)
    if args.command == "publish":
        _publish_rounds(args.folder, args.rounds)
    else:
        _serve_moto()
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
