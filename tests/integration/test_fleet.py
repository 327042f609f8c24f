"""A simulated fleet through a percentage ramp (issue 14, "Done when").

Eight server-side hosts of the real Python host library and two of the JavaScript one
(NodeFeatureHost in Node processes, fleet_node_host.mjs), 100 users each (a bucketing key
per user), load `checkout` from a real origin (the origin folder served over HTTP by the
test, so it stays put while the control plane restarts) and report every load, and the
failures the test injects, as beacons to the real control plane:

1. a healthy 1.1.0 ramps 5 -> 25 -> 100 % (the server moves each step once it held and the
   analysis has data) and is promoted; every user stays on the side they were put on while
   the weight grows;
2. the control plane restarts (the webhook's events wait in the store);
3. 1.2.0 ramps again, its users' loads fail one time in ten: the server rolls it back by
   itself (actor releasecontrol-analysis, the figures in the reason) and no user gets it
   after that;
4. the webhook receiver got every event, each once by id, in order, signed.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, make_feature, start_server

from releasecontrol.client import ReleaseControlClient
from releasecontrol.host import FeatureHost
from releasecontrol.manifest import load_feature_folder
from releasecontrol.trust import TrustStore
from releasecontrol_server.origin.http import OriginHttpServer
from releasecontrol_server.webhooks import SIGNATURE_HEADER, verify

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KEY = "pk_fleet_test"
SECRET = b"fleet-webhook-secret-0123456789"
HOSTS, USERS = 8, 100
NODE_HOSTS = 2
NODE_HOST = Path(__file__).with_name("fleet_node_host.mjs")
JS_BUILT = Path(__file__).resolve().parents[2] / "clients" / "js" / "dist" / "node.js"
PLAN = (500, 2500, 10_000)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Receiver:
    """The webhook receiver: every POST kept with its id, kind and whether it verified."""

    def __init__(self) -> None:
        self.got: list[tuple[int, str, bool, dict[str, Any]]] = []
        got = self.got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                signed = verify(SECRET, body, self.headers[SIGNATURE_HEADER], int(time.time()))
                got.append(
                    (
                        int(self.headers["x-releasecontrol-event-id"]),
                        self.headers["x-releasecontrol-event"],
                        signed,
                        json.loads(body),
                    )
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Fleet:
    """HOSTS hosts of USERS users each; `tick` loads the feature once per user."""

    def __init__(self, root: Path, index_url: str, trust: TrustStore, beacon_url: str) -> None:
        self.hosts = [
            FeatureHost(
                index_url,
                trust,
                state_dir=root / f"host-{n}",
                allow_insecure_dev_keys=True,
                beacon_url=beacon_url,
                beacon_key=KEY,
                beacon_interval_seconds=0.3,
            )
            for n in range(HOSTS)
        ]
        self.users = [[f"user-{h}-{u}" for u in range(USERS)] for h in range(HOSTS)]
        self.sides: dict[str, list[tuple[str, int | None]]] = {}
        """Per user: (version, canary weight) of each load, in order."""

    def tick(self, fails: Callable[[str, random.Random], bool], rng: random.Random) -> None:
        for host, users in zip(self.hosts, self.users, strict=True):
            host.refresh()
            for user in users:
                loaded = host.version_for("checkout", user)
                host.report_load("checkout", loaded.version)
                if fails(loaded.version, rng):
                    host.report_failure("checkout", loaded.version, "entry_error")
                self.sides.setdefault(user, []).append((loaded.version, loaded.canary_weight))

    def close(self) -> None:
        for host in self.hosts:
            host.close()


def start_node_hosts(
    root: Path, index_url: str, trust_path: Path, beacon_url: str
) -> list[tuple[subprocess.Popen[bytes], Path]]:
    """NODE_HOSTS Node processes running NodeFeatureHost, failing 1.2.0 one load in ten."""
    if shutil.which("node") is None or not JS_BUILT.is_file():
        pytest.fail("node and the built clients/js are needed: `make js-test` builds it")
    started = []
    for n in range(NODE_HOSTS):
        out = root / f"node-{n}.json"
        args = [index_url, str(trust_path), str(root / f"node-{n}"), beacon_url, KEY]
        args += [f"node-{n}", str(USERS), "1.2.0", "0.1", str(out)]
        started.append((subprocess.Popen(["node", str(NODE_HOST), *args]), out))
    return started


def stop_node_hosts(started: list[tuple[subprocess.Popen[bytes], Path]]) -> dict[str, Any]:
    """Each Node user's sides, after the hosts sent their last beacons."""
    sides: dict[str, Any] = {}
    for process, out in started:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        sides.update(json.loads(out.read_text()))
    return sides


def drive(
    fleet: Fleet,
    client: ReleaseControlClient,
    done: Callable[[], bool],
    fails: Callable[[str, random.Random], bool],
    seconds: float = 90,
) -> None:
    rng = random.Random(14)
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, client.list_transitions(feature_id="checkout")
        fleet.tick(fails, rng)
        time.sleep(0.1)


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginHttpServer]:
    (tmp_path / "home" / "origin").mkdir(parents=True)
    serving = OriginHttpServer(tmp_path / "home" / "origin", "127.0.0.1", 0)
    serving.start()
    yield serving
    serving.stop()


def test_a_fleet_ramps_a_healthy_canary_and_rolls_a_failing_one_back(
    tmp_path: Path, origin: OriginHttpServer
) -> None:
    receiver = Receiver()
    beacon_port = free_port()
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    env = {
        "RELEASECONTROL_BEACON_KEYS": KEY,
        "RELEASECONTROL_BEACON_LISTEN": f"127.0.0.1:{beacon_port}",
        "RELEASECONTROL_ANALYSIS_INTERVAL_SECONDS": "0.2",
        "RELEASECONTROL_WEBHOOKS": json.dumps(
            [{"name": "fleet", "url": receiver.url, "secret_path": str(secret)}]
        ),
    }
    server: RunningServer = start_server(tmp_path / "home", **env)
    fleet: Fleet | None = None
    node_hosts: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        client = server.client()
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            folder = make_feature(tmp_path / version, "checkout", version)
            client.publish(
                load_feature_folder(folder), channel="stable" if version == "1.0.0" else "canary"
            )
        fleet = Fleet(
            tmp_path / "fleet",
            origin.url + "remote-index.json",
            TrustStore.from_file(server.trust_path),
            f"http://127.0.0.1:{beacon_port}",
        )
        node_hosts = start_node_hosts(
            tmp_path / "fleet",
            origin.url + "remote-index.json",
            server.trust_path,
            f"http://127.0.0.1:{beacon_port}",
        )

        # 1. A healthy canary ramps and is promoted.
        client.deploy_canary("checkout", "1.1.0", steps=PLAN, step_seconds=1)
        drive(
            fleet,
            client,
            lambda: client.get_status().features[0].stable_version == "1.1.0",
            lambda version, rng: rng.random() < 0.001,
        )
        weights = [w for user in fleet.sides.values() for _, w in user if w is not None]
        assert {500, 2500, 10_000} <= set(weights)
        for user, loads in fleet.sides.items():  # sticky: never back to stable in the ramp
            sides = [version for version, _ in loads]
            if "1.1.0" in sides:
                first = sides.index("1.1.0")
                assert set(sides[first:]) == {"1.1.0"}, (user, sides)
        ramp = [
            (t.action, t.actor)
            for t in reversed(client.list_transitions(feature_id="checkout").transitions)
        ][-3:]
        assert ramp == [
            (9, "releasecontrol-steps"),  # TRANSITION_ACTION_ADVANCE_STEP: 5 -> 25 %
            (9, "releasecontrol-steps"),  # 25 -> 100 %
            (3, "releasecontrol-steps"),  # TRANSITION_ACTION_PROMOTE
        ]

        # 2. The control plane restarts; the hosts keep the origin they read.
        server.stop()
        server = start_server(tmp_path / "home", **env)
        client = server.client()

        # 3. A failing canary is rolled back by the server.
        fleet.sides.clear()
        client.deploy_canary("checkout", "1.2.0", steps=PLAN, step_seconds=1)
        drive(
            fleet,
            client,
            lambda: not client.get_status().features[0].canary.version,
            lambda version, rng: rng.random() < (0.1 if version == "1.2.0" else 0.001),
        )
        last = client.list_transitions(feature_id="checkout").transitions[0]
        assert last.actor == "releasecontrol-analysis"
        assert last.reason.startswith("failure rate ")
        assert last.detail == "canary 1.2.0 rolled back; stable 1.1.0 stays"
        fleet.tick(lambda version, rng: False, random.Random(0))
        assert {loads[-1][0] for loads in fleet.sides.values()} == {"1.1.0"}
        time.sleep(1)  # the Node hosts' next refresh
        node_sides = stop_node_hosts(node_hosts)
        node_hosts = []
        assert len(node_sides) == NODE_HOSTS * USERS
        on_canary = 0
        for user, loads in node_sides.items():
            versions = [version for version, _ in loads]
            assert versions[-1] == "1.1.0", (user, versions)
            if "1.1.0" in versions:  # never back to 1.0.0 once on 1.1.0
                assert "1.0.0" not in versions[versions.index("1.1.0") :], (user, versions)
            if "1.2.0" in versions:  # on 1.2.0 until the rollback, then off it for good
                on_canary += 1
                after = versions[versions.index("1.2.0") :]
                assert "1.2.0" not in after[after.index("1.1.0") :], (user, versions)
        assert on_canary > 0, "no Node user was ever on the failing canary"

        # 4. Every event, once by id, in order, signed.
        changes = [
            t
            for t in client.list_transitions(feature_id="checkout").transitions
            if t.action != 6  # TRANSITION_ACTION_RESIGN: not told
        ]
        deadline = time.monotonic() + 20
        while sum(1 for g in {e[0]: e for e in receiver.got}.values() if g[1] == "change") < len(
            changes
        ):
            assert time.monotonic() < deadline, receiver.got
            time.sleep(0.1)
    finally:
        for process, _ in node_hosts:
            process.kill()
        if fleet is not None:
            fleet.close()
        server.stop()
        receiver.server.shutdown()
        receiver.server.server_close()
    by_id = {}
    for event_id, _kind, signed, body in receiver.got:
        assert signed
        assert by_id.setdefault(event_id, body) == body  # a repeat is the same event
    assert sorted(by_id) == list(range(1, max(by_id) + 1))  # none missing
    assert [g[0] for g in receiver.got] == sorted(g[0] for g in receiver.got)  # in order
    kinds = [by_id[i]["kind"] for i in sorted(by_id)]
    assert kinds.count("change") == len(changes)
    verdicts = [by_id[i]["data"] for i in sorted(by_id) if by_id[i]["kind"] == "verdict"]
    assert verdicts[-1]["verdict"] == "fail" and verdicts[-1]["canary_version"] == "1.2.0"
