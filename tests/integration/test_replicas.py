"""Three replicas on one PostgreSQL, with failures (issue 15, item 4).

What it proves. Three real `releasecontrol-server` processes share one PostgreSQL (started
by the test: initdb, pg_ctl, a loopback port), one filesystem origin and one artifact
store. Three client threads make changes through them (each on features of its own, so the
state each acknowledged change left is known); one watcher per replica reads WatchReleases.
Meanwhile the test SIGKILLs a replica at a random moment (twice, restarting it after), and
restarts the database once (an immediate shutdown: a crash). A client whose replica fails
sends the same request (same request_id) to the next replica. Then:

- no acknowledged change is lost or rewritten, none applied twice (request ids), and each
  feature's history holds sequences 1..N, its state what the last acknowledged change left;
- every watcher's stream, as long as its replica lived, went up one global sequence at a
  time, changes committed through the other replicas included;
- the origin's remote-index.json and every releases.json, sampled all along, never went
  down a sequence; at the end a host verifies every feature at the control plane's state
  and no replica owes the origin anything;
- the lease moved: after each kill, changes were acknowledged and published through the
  other replicas, and every replica followed changes the others committed.

Failover is measured and printed (and kept in `test-artifacts/failover.json`, which
docs/benchmarks.md quotes): kill -> the killed replica's client acknowledged through
another replica; kill -> the origin serves everything committed at the kill.

Bounds: seeded; about 8 s of changes; every call times out after 10 s; a change is
retried for at most 30 s.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import folder_read, host_view, make_feature
from test_deploy_examples import probe_script
from test_kill import all_transitions

from bench._postgres import PostgresServer, running_postgres
from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient
from releasecontrol.index import Envelope
from releasecontrol.manifest import load_feature_folder
from releasecontrol.v1 import release_control_pb2 as pb
from releasectl.launcher import LocalServer

pytestmark = pytest.mark.integration

SEED = 15_04  # issue 15, item 4
REPLICAS = 3
WRITERS = 3
RUN_SECONDS = 8.0
KILLS = 2
CALL_TIMEOUT_SECONDS = 10.0
RETRY_FOR_SECONDS = 30.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

NOT_RETRIED = (
    errors.InvalidArgument,
    errors.NotFound,
    errors.FailedPrecondition,
    errors.StaleSequence,
    errors.PermissionDenied,
    errors.Unauthenticated,
)
"""Answers that mean the change is wrong, not that the replica is away."""


@dataclass
class Cluster:
    shared: Path
    url: str
    database: PostgresServer
    replicas: list[LocalServer] = field(default_factory=list)
    alive: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def env(self) -> dict[str, str]:
        return {
            "RELEASECONTROL_LOG_LEVEL": "INFO",
            "RELEASECONTROL_DATABASE_URL": self.url,
            "RELEASECONTROL_ORIGIN_DIR": str(self.shared / "origin"),
            "RELEASECONTROL_ARTIFACT_STORE": str(self.shared / "artifacts"),
        }

    def start(self, index: int) -> LocalServer:
        server = LocalServer(self.shared / f"replica-{index}", env=self.env()).start()
        with self.lock:
            if index < len(self.replicas):
                self.replicas[index] = server
                self.alive[index] = True
            else:
                self.replicas.append(server)
                self.alive.append(True)
        return server

    def client(self, index: int) -> ReleaseControlClient | None:
        with self.lock:
            if not self.alive[index]:
                return None
            server = self.replicas[index]
        return server.client(timeout_seconds=CALL_TIMEOUT_SECONDS, retry_seconds=0.0)

    @property
    def trust(self) -> Path:
        return self.shared / "replica-0" / "keys" / "trust.json"

    def database_sequence(self) -> int:
        rows = self.database.sql(self.url, "SELECT value FROM meta WHERE key = 'global_sequence'")
        return int(str(rows[0][0]))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_postgres(fsync=True) as database:
        url = database.new_database()
        made = Cluster(tmp_path, url, database)
        first = made.start(0)  # makes the dev keys and PKI the others share
        first_home = first.home
        for index in range(1, REPLICAS):
            home = tmp_path / f"replica-{index}"
            for part in ("pki", "keys", "admin", "auth"):
                if (first_home / part).exists():
                    shutil.copytree(first_home / part, home / part)
            made.start(index)
        try:
            yield made
        finally:
            for server in made.replicas:
                server.stop()


@dataclass
class Acked:
    transition: pb.Transition
    feature: pb.Feature
    via: int
    at: float


@dataclass
class Writer:
    """One client thread: changes on features of its own, through replica `target` until it
    fails, then the next."""

    number: int
    cluster: Cluster
    src: Path
    stop: threading.Event
    rng: random.Random
    target: int = 0
    states: dict[str, pb.Feature] = field(default_factory=dict)
    acked: list[Acked] = field(default_factory=list)
    moves: list[tuple[float, int, int]] = field(default_factory=list)
    """(when, from replica, to replica) each time a failure sent it elsewhere."""
    error: BaseException | None = None
    versions: Iterator[int] = field(default_factory=lambda: iter(range(1, 10_000)))

    @property
    def features(self) -> tuple[str, str]:
        return (f"w{self.number}-cart", f"w{self.number}-search")

    def next_change(self) -> tuple[str, str, Callable[[ReleaseControlClient, str], Any]]:
        feature_id = self.rng.choice(self.features)
        state = self.states.get(feature_id)
        if state is not None and state.HasField("canary"):
            version = state.canary.version
            return (
                feature_id,
                version,
                lambda c, rid: c.promote(feature_id, version, request_id=rid),
            )
        if state is not None and self.rng.random() < 0.3:
            earlier = [v.version for v in state.versions if v.was_stable]
            earlier = [v for v in earlier if v != state.stable_version]
            if earlier:
                version = self.rng.choice(earlier)
                return (
                    feature_id,
                    version,
                    lambda c, rid: c.rollback(feature_id, version, reason="drill", request_id=rid),
                )
        version = f"1.{next(self.versions)}.0"
        folder = make_feature(self.src / f"{feature_id}-{version}", feature_id, version)
        source = load_feature_folder(folder, feature_id=feature_id)
        canary = state is not None and self.rng.random() < 0.5
        return (
            feature_id,
            version,
            lambda c, rid: c.publish(
                source,
                channel="canary" if canary else "stable",
                soak_seconds=0 if canary else None,
                request_id=rid,
                timeout_seconds=CALL_TIMEOUT_SECONDS,
            ),
        )

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.one()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def one(self) -> None:
        feature_id, version, send = self.next_change()
        rid = f"w{self.number}-{self.rng.getrandbits(64):016x}"
        deadline = time.monotonic() + RETRY_FOR_SECONDS
        while True:
            client = self.cluster.client(self.target)
            try:
                if client is None:
                    raise errors.Unavailable("replica down")
                response = send(client, rid)
                break
            except NOT_RETRIED:
                raise
            except errors.ReleaseControlError:
                if time.monotonic() > deadline:
                    raise
                moved_from = self.target
                self.target = (self.target + 1) % REPLICAS
                self.moves.append((time.monotonic(), moved_from, self.target))
                time.sleep(0.1)
            finally:
                if client is not None:
                    client.close()
        t = response.transition
        before = self.states.get(feature_id)
        assert (t.feature_id, t.version, t.request_id) == (feature_id, version, rid), t
        assert t.sequence == (before.sequence if before else 0) + 1, t
        self.states[feature_id] = response.feature
        self.acked.append(Acked(t, response.feature, self.target, time.monotonic()))


@dataclass
class Watcher:
    """WatchReleases on one replica: the global sequences of its CHANGE events, checked to go
    up one at a time."""

    replica: int
    cluster: Cluster
    sequences: list[int] = field(default_factory=list)
    error: BaseException | None = None
    stream: Any = None

    def run(self) -> None:
        client = self.cluster.client(self.replica)
        assert client is not None
        try:
            self.stream = client.watch()
            seen: int | None = None
            for event in self.stream:
                if event.type == pb.WATCH_EVENT_TYPE_SYNCED:
                    seen = event.global_sequence
                elif event.type == pb.WATCH_EVENT_TYPE_CHANGE:
                    assert seen is not None, "a change before SYNCED"
                    assert event.global_sequence == seen + 1, (
                        f"replica {self.replica}: after {seen} came {event.global_sequence}"
                    )
                    seen = event.global_sequence
                    self.sequences.append(seen)
                elif event.type == pb.WATCH_EVENT_TYPE_RESYNC_REQUIRED:
                    raise AssertionError(f"replica {self.replica}: {event.message}")
        except errors.ReleaseControlError:
            pass  # the replica was killed: its stream ends
        except BaseException as exc:
            self.error = exc
        finally:
            client.close()


def signed_sequence(path: Path) -> int | None:
    try:
        return int(Envelope.from_bytes(path.read_bytes()).signed["sequence"])
    except (OSError, errors.VerificationError, KeyError, ValueError):
        return None


@dataclass
class OriginSampler:
    """remote-index.json's and each releases.json's sequence on the origin, sampled every
    20 ms; a sequence that goes down is kept."""

    origin: Path
    stop: threading.Event
    top: list[tuple[float, int]] = field(default_factory=list)
    went_down: list[str] = field(default_factory=list)

    def run(self) -> None:
        last: dict[Path, int] = {}
        while not self.stop.is_set():
            for path in [
                self.origin / "remote-index.json",
                *self.origin.glob("features/*/releases.json"),
            ]:
                sequence = signed_sequence(path)
                if sequence is None:
                    continue
                if sequence < last.get(path, 0):
                    self.went_down.append(
                        f"{path.relative_to(self.origin)}: {last[path]} -> {sequence}"
                    )
                last[path] = sequence
                if path.name == "remote-index.json":
                    self.top.append((time.monotonic(), sequence))
            time.sleep(0.02)


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Seconds until `condition()` held; fails after `seconds`."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > seconds:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.02)
    return time.monotonic() - start


def test_three_replicas_lose_nothing_through_kills_and_a_database_restart(
    cluster: Cluster, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    stop = threading.Event()
    writers = [
        Writer(n, cluster, tmp_path / "src", stop, random.Random(f"{SEED}:{n}"), target=n)
        for n in range(WRITERS)
    ]
    watchers = [Watcher(n, cluster) for n in range(REPLICAS)]
    sampler = OriginSampler(cluster.shared / "origin", stop)
    threads = [threading.Thread(target=w.run, name=f"writer-{w.number}") for w in writers] + [
        threading.Thread(target=w.run, name=f"watcher-{w.replica}") for w in watchers
    ]
    threads.append(threading.Thread(target=sampler.run, name="origin-sampler"))
    for thread in threads:
        thread.start()

    failovers: list[dict[str, Any]] = []
    restarted = database_back = 0.0
    try:
        plan = sorted(rng.uniform(1.5, RUN_SECONDS - 3) for _ in range(KILLS))
        restart_database_at = rng.uniform(2.0, RUN_SECONDS - 2)
        began = time.monotonic()
        events = sorted([(at, "kill") for at in plan] + [(restart_database_at, "database")])
        for at, what in events:
            time.sleep(max(0.0, began + at - time.monotonic()))
            if what == "database":
                restarted = time.monotonic()
                cluster.database.restart()
                database_back = time.monotonic()
                continue
            victim = rng.randrange(REPLICAS)
            server = cluster.replicas[victim]
            assert server.process is not None
            with cluster.lock:
                cluster.alive[victim] = False
            killed_at = time.monotonic()
            server.process.send_signal(signal.SIGKILL)
            server.process.wait()
            committed = cluster.database_sequence()
            caught_up = wait_for(
                lambda committed=committed: bool(sampler.top) and sampler.top[-1][1] >= committed,
                30,
                "the origin catching up after a kill",
            )
            failovers.append(
                {"killed": victim, "origin_caught_up_s": round(caught_up, 3), "at": killed_at}
            )
            cluster.start(victim)  # back, on its own state directory
        time.sleep(max(0.0, began + RUN_SECONDS - time.monotonic()))
    finally:
        stop.set()
        for w in watchers:
            if w.stream is not None:
                w.stream.cancel()
        for thread in threads:
            thread.join(timeout=60)
    for w in writers:
        assert w.error is None, f"writer {w.number}: {w.error!r}"
    for watcher in watchers:
        assert watcher.error is None, f"watcher {watcher.replica}: {watcher.error!r}"

    # Failover as a client sees it: kill -> its next change acknowledged by another replica.
    for failover in failovers:
        killed_at = failover.pop("at")
        after = [
            a.at - killed_at
            for w in writers
            for a in w.acked
            if a.at > killed_at and a.via != failover["killed"]
        ]
        assert after, "nothing was acknowledged by another replica after a kill"
        failover["next_ack_elsewhere_s"] = round(min(after), 3)
        moved = [
            a.at - when
            for w in writers
            for when, source, _ in w.moves
            if source == failover["killed"] and when >= killed_at
            for a in w.acked[:]
            if a.at > when
        ]
        failover["moved_client_acked_s"] = round(min(moved), 3) if moved else None

    # The database restart: changes went on after it, through the same replicas.
    after_restart = [a.at for w in writers for a in w.acked if a.at > database_back]
    assert after_restart, "nothing was acknowledged after the database restarted"
    database_failover = {
        "down_s": round(database_back - restarted, 3),
        "next_ack_after_back_s": round(min(after_restart) - database_back, 3),
    }

    # Everything settles: every replica owes the origin nothing, and they agree.
    clients = [cluster.client(n) for n in range(REPLICAS)]
    try:
        final = clients[0]
        assert final is not None

        def settled() -> bool:
            return all(c is not None and c.get_status().pending_origin_writes == 0 for c in clients)

        try:
            wait_for(settled, 30, "the outbox emptied")
        except pytest.fail.Exception:
            owed = [c.get_status().pending_origin_writes if c else None for c in clients]
            tails = [
                f"--- replica {n} ({owed[n]} owed) ---\n" + "\n".join(s.log().splitlines()[-40:])
                for n, s in enumerate(cluster.replicas)
            ]
            pytest.fail(f"the outbox emptied: not within 30 s; owed {owed}\n" + "\n".join(tails))
        status = final.get_status()
        for other in clients[1:]:
            assert other is not None
            wait_for(
                lambda other=other: other.get_status().global_sequence == status.global_sequence,
                10,
                "every replica following the last change",
            )
        history = all_transitions(final)
    finally:
        for c in clients:
            if c is not None:
                c.close()

    acked = [a for w in writers for a in w.acked]
    assert len(acked) >= 30, f"only {len(acked)} changes ran"
    by_id = {t.id: t for t in history}
    lost = [a.transition for a in acked if by_id.get(a.transition.id) != a.transition]
    assert lost == [], f"acknowledged changes lost or rewritten: {lost[:3]}"
    ids = [t.request_id for t in history if t.request_id]
    assert len(ids) == len(set(ids)), "a request_id was applied twice"
    assert sorted(t.id for t in history) == list(range(1, status.global_sequence + 1))
    features = {f.feature_id: f for f in status.features}
    for w in writers:
        for feature_id, known in w.states.items():
            now = features[feature_id]
            assert (now.sequence, now.stable_version) == (known.sequence, known.stable_version)
            sequences = sorted(t.sequence for t in history if t.feature_id == feature_id)
            assert sequences == list(range(1, now.sequence + 1)), feature_id

    assert sampler.went_down == [], f"the origin went back: {sampler.went_down[:3]}"
    # The origin serves exactly the index the database holds, and hosts verify it.
    origin = cluster.shared / "origin"
    ((stored_top,),) = cluster.database.sql(
        cluster.url, "SELECT content FROM files WHERE path = 'remote-index.json'"
    )
    assert (origin / "remote-index.json").read_bytes() == bytes(stored_top)  # type: ignore[arg-type]
    read = folder_read(origin)
    for feature in status.features:
        view = host_view(read, cluster.trust, feature.feature_id)
        assert view.releases.sequence == feature.sequence, feature.feature_id

    for watcher in watchers:
        assert len(watcher.sequences) > 5, f"watcher {watcher.replica} saw too little"
    logs = [server.log() for server in cluster.replicas]
    assert all("followed" in log for log in logs), "a replica never followed the others"
    # Exactly one replica leads (runs steps, analysis, webhooks), as each one's /metrics says.
    leaders = [
        line
        for server in cluster.replicas
        for line in httpx.get(server.endpoints["metrics_url"], timeout=10).text.splitlines()
        if line.startswith("releasecontrol_leader ")
    ]
    assert sorted(leaders) == ["releasecontrol_leader 0.0"] * 2 + ["releasecontrol_leader 1.0"]
    assert len(failovers) == KILLS

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "failover.json").write_text(
        json.dumps(
            {"changes": len(acked), "failovers": failovers, "database": database_failover},
            indent=2,
        )
        + "\n"
    )
    print(f"\n{len(acked)} changes; failovers: {failovers}; database: {database_failover}")


REPLICAS_DEPLOYMENT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes-replicas"


def probe(server: LocalServer, which: str) -> bool:
    """The three-replica Deployment's `which` probe (readinessProbe, livenessProbe), run
    against `server` with its dev PKI as the probe certificate: whether it passes."""
    command = probe_script(
        server.grpc, server.home / "pki", REPLICAS_DEPLOYMENT / "deployment.yaml", which
    )
    done = subprocess.run(
        [sys.executable, "-c", *command], capture_output=True, text=True, timeout=30, check=False
    )
    return done.returncode == 0


def test_a_replica_that_loses_the_database_is_not_ready_until_it_is_back(tmp_path: Path) -> None:
    """The readiness probe of deploy/kubernetes-replicas fails while the replica cannot reach
    PostgreSQL (its changes are refused as UNAVAILABLE, saying so) and passes again, by
    itself, once the database is back; liveness passes throughout (an outage of the database
    must not restart every replica)."""
    with running_postgres() as database:
        url = database.new_database()
        server = LocalServer(tmp_path / "replica", env={"RELEASECONTROL_DATABASE_URL": url}).start()
        try:
            client = server.client(timeout_seconds=CALL_TIMEOUT_SECONDS, retry_seconds=0.0)
            src = tmp_path / "src"
            for version in ("1.0.0", "1.1.0"):
                folder = make_feature(src / version, "checkout", version)
                client.publish(load_feature_folder(folder, feature_id="checkout"))
            assert probe(server, "readinessProbe") and probe(server, "livenessProbe")
            banner = f"  database       {url} (PostgreSQL: several replicas may share it)"
            assert banner in server.log()

            database.stop("immediate")
            wait_for(lambda: not probe(server, "readinessProbe"), 20, "readiness failing")
            assert probe(server, "livenessProbe")
            with pytest.raises(errors.Unavailable, match="database"):
                client.rollback("checkout", "1.0.0", reason="during the outage")

            database.start()
            wait_for(lambda: probe(server, "readinessProbe"), 20, "readiness back")
            answer = client.rollback("checkout", "1.0.0", reason="after the outage")
            assert answer.feature.stable_version == "1.0.0"
        finally:
            server.stop()
