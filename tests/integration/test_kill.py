"""Kill tests: a server SIGKILLed in the middle of changes and publishes loses nothing.

What it proves. A real `releasecontrol-server --dev` process is killed, round after round,
while a client makes changes one after the other (publishes of new versions to stable and
to canary, canary deploys, promotes, rollbacks of three features). After each kill the
server is started again on the same home, and:

- every change that was acknowledged (its call returned) is in the audit history, record
  for record, and in the state: a feature's sequence, stable, canary and versions are what
  the last acknowledged change left, or what the one interrupted change made, if it
  committed; nothing else changed;
- no sequence goes down, none is used twice and none is skipped: each feature's history
  holds sequences 1..N, remote-index.json's sequence is the last acknowledged one (plus one
  if the interrupted change committed);
- the server owes the origin nothing (`pending_origin_writes == 0`), and no staging file
  (`.<name>.*.tmp`) is left on the origin;
- a host verifies the origin from the trust file down (remote-index.json, the shard,
  releases.json) at exactly the sequences and channels the control plane reports, and
  every listed version's manifest and artifacts hash to what they are pinned at;
- the interrupted change, sent again with its request_id, is applied exactly once: the
  stored answer if it had committed, a new change otherwise.

Kills come from the test-only hooks of tests/killpoints (`killed_at`: the n-th pass of
`artifact`, `stage`, `commit`, `publish` or `mark`), and, so that they also land where no
hook is, from a SIGKILL sent by the test at a random moment while changes run.

Bounds. Seeded (deterministic choices of changes, kill points, passes and delays); per
kill point 3 rounds of at most 12 changes; 7 rounds of random-moment kills 0.05-0.5 s
into changes (at most 300 changes, the kill ends each round long before); every call
times out after 10 s. About 30 s in all on 2 cores.
"""

from __future__ import annotations

import inspect
import itertools
import json
import random
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import folder_read, host_view, killed_at, make_feature, sha256, start_server

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient
from releasecontrol.manifest import artifact_path, load_feature_folder, manifest_path
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.verifier import Refusal
from releasectl.launcher import LocalServer

pytestmark = pytest.mark.integration

SEED = 12_07  # issue 12, item 7
FEATURES = ("checkout", "search", "profile")
CALL_TIMEOUT_SECONDS = 10.0
EXIT_TIMEOUT_SECONDS = 15.0

HOOK_ROUNDS = 3
"""Rounds per kill point, each killed at the n-th pass, n drawn from 1..HOOK_MAX_NTH."""
HOOK_MAX_NTH = {"artifact": 4, "stage": 24, "commit": 8, "publish": 30, "mark": 8}
"""So that the kill comes at any change of a round, not only the first."""
HOOK_MAX_CHANGES = 12
"""Enough that every point is passed HOOK_MAX_NTH times: every change commits and marks
once, stages and renames 3 index files (a publish also its manifest, and 2 artifacts into
the artifact store and onto the origin); about 2 changes in 5 are publishes."""

NO_RETRY: dict[str, float] = (
    {"retry_seconds": 0.0}
    if "retry_seconds" in inspect.signature(ReleaseControlClient).parameters
    else {}
)
"""For the client of a server about to be killed: its retry loop would try a dead server
for 5 s on every kill, and the test wants the failure at once (the same request is sent
again, by the test, after the restart)."""

RANDOM_ROUNDS = 7
RANDOM_KILL_DELAY_SECONDS = (0.05, 0.5)
RANDOM_MAX_CHANGES = 300
"""A bound only: at a few ms or more a change, the kill ends the round well before."""


@dataclass(frozen=True)
class Change:
    """One change the client makes; `send` may be called again (same request_id)."""

    feature_id: str
    what: str
    version: str
    request_id: str
    send: Callable[[ReleaseControlClient], Any]

    def __str__(self) -> str:
        return f"{self.what} {self.feature_id} {self.version} (request_id {self.request_id})"


@dataclass
class Run:
    """What the client knows: the state each acknowledged change left, and every one of them."""

    home: Path
    src: Path
    rng: random.Random
    states: dict[str, pb.Feature] = field(default_factory=dict)
    global_sequence: int = 0
    acked: list[pb.Transition] = field(default_factory=list)
    versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    rounds: list[str] = field(default_factory=list)
    """One line per round: how it was to be killed, how it ended, what the kill interrupted."""
    not_killed: list[str] = field(default_factory=list)
    staging_left: int = 0
    """Staging files the kills left on the origin, found before the restart removed them."""


def canary_of(feature: pb.Feature) -> str:
    return feature.canary.version if feature.HasField("canary") else ""


def summary(feature: pb.Feature) -> tuple[Any, ...]:
    """What a change decides of a feature: sequence, channels, versions."""
    versions = sorted((v.version, v.manifest_sha256, v.was_stable) for v in feature.versions)
    return (feature.sequence, feature.stable_version, canary_of(feature), versions)


def request_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def publish_change(run: Run, feature_id: str, version: str, *, canary: bool) -> Change:
    folder = make_feature(run.src / f"{feature_id}-{version}", feature_id, version)
    source = load_feature_folder(folder, feature_id=feature_id)
    rid = request_id(run.rng)

    def send(client: ReleaseControlClient) -> pb.PublishVersionResponse:
        return client.publish(
            source,
            channel="canary" if canary else "stable",
            soak_seconds=0 if canary else None,
            request_id=rid,
            timeout_seconds=CALL_TIMEOUT_SECONDS,
        )

    return Change(feature_id, "publish-canary" if canary else "publish", version, rid, send)


def next_change(run: Run) -> Change:
    """A change the release rules allow on the known state, drawn from `run.rng`."""
    rng = run.rng
    feature_id = rng.choice(FEATURES)
    state = run.states[feature_id]
    stable = state.stable_version
    not_stable = [v.version for v in state.versions if v.version != stable]
    earlier = [v.version for v in state.versions if v.was_stable and v.version != stable]
    options = ["publish", "publish-canary"]
    options += ["canary"] if not_stable else []
    options += ["promote"] if state.HasField("canary") else []
    options += ["rollback"] if earlier else []
    what = rng.choice(options)
    if what in ("publish", "publish-canary"):
        version = f"1.{next(run.versions)}.0"
        return publish_change(run, feature_id, version, canary=what == "publish-canary")
    rid = request_id(rng)
    send: Callable[[ReleaseControlClient], Any]
    if what == "canary":
        version = rng.choice(not_stable)

        def send(client: ReleaseControlClient) -> Any:
            return client.deploy_canary(feature_id, version, soak_seconds=0, request_id=rid)

    elif what == "promote":
        version = canary_of(state)

        def send(client: ReleaseControlClient) -> Any:
            return client.promote(feature_id, version, request_id=rid)  # soaked 0 s

    else:
        version = rng.choice(earlier)

        def send(client: ReleaseControlClient) -> Any:
            return client.rollback(feature_id, version, reason="kill test", request_id=rid)

    return Change(feature_id, what, version, rid, send)


def acknowledge(run: Run, change: Change, response: Any) -> None:
    """Record an answered change, after checking it is the next one of its feature and of
    remote-index.json."""
    t: pb.Transition = response.transition
    before = run.states.get(change.feature_id)
    assert response.HasField("transition"), f"{change}: answered without a change"
    assert (t.feature_id, t.version, t.request_id) == (
        change.feature_id,
        change.version,
        change.request_id,
    ), f"{change}: answered with {t}"
    assert t.sequence == (before.sequence if before else 0) + 1, f"{change}: {t}"
    assert t.global_sequence == run.global_sequence + 1, f"{change}: {t}"
    assert response.feature.sequence == t.sequence, f"{change}: {response.feature}"
    run.states[change.feature_id] = response.feature
    run.global_sequence = t.global_sequence
    run.acked.append(t)


def all_transitions(client: ReleaseControlClient) -> list[pb.Transition]:
    out: list[pb.Transition] = []
    token = ""
    while True:
        page = client.list_transitions(page_size=500, page_token=token)
        out.extend(page.transitions)
        if not (token := page.next_page_token):
            return out


def staging_files(folder: Path) -> list[str]:
    """Hidden files under `folder`: the `.<name>.*.tmp` a write leaves until its rename."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.is_file())


def staging_files_left(origin: Path, within: float = 5.0) -> list[str]:
    """The hidden files still under `origin` after at most `within` seconds: a running
    server's own (staged, or displaced by a rename and removed by the next sync moments
    later) go by themselves; what a killed one left must be gone since its restart."""
    deadline = time.monotonic() + within
    while (left := staging_files(origin)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return left


def check_history(history: list[pb.Transition], status: pb.GetStatusResponse) -> None:
    """Every feature's changes have sequences 1..N, remote-index.json's only go up to the
    current one, and no request was applied twice."""
    for feature in status.features:
        sequences = sorted(t.sequence for t in history if t.feature_id == feature.feature_id)
        expected = list(range(1, feature.sequence + 1))
        assert sequences == expected, f"{feature.feature_id}: history sequences {sequences}"
    in_order = [t.global_sequence for t in sorted(history, key=lambda t: t.id)]
    assert in_order == sorted(set(in_order)), "remote-index.json sequences not increasing"
    assert in_order[-1] == status.global_sequence, "remote-index.json is not the last change's"
    ids = [t.request_id for t in history if t.request_id]
    assert len(ids) == len(set(ids)), "a request_id was applied twice"


def check_origin(home: Path, status: pb.GetStatusResponse) -> None:
    """No staging file left; a host verifies every feature at exactly the control plane's
    state, and every version's manifest and artifacts hash to what they are pinned at."""
    origin = home / "origin"
    assert staging_files_left(origin) == [], "staging files left on the origin"
    read = folder_read(origin)
    for feature in status.features:
        view = host_view(read, home / "keys" / "trust.json", feature.feature_id)
        assert view.top.sequence == status.global_sequence, "remote-index.json on the origin"
        releases = view.releases
        assert (releases.sequence, releases.stable or "", releases.canary or "") == (
            feature.sequence,
            feature.stable_version,
            canary_of(feature),
        ), f"{feature.feature_id}: releases.json on the origin"
        pinned = {v.version: v.manifest_sha256 for v in releases.versions}
        listed = {v.version: v.manifest_sha256 for v in feature.versions}
        assert pinned == listed, f"{feature.feature_id}: versions on the origin"
        for version, digest in pinned.items():
            manifest = (origin / manifest_path(feature.feature_id, version)).read_bytes()
            assert sha256(manifest) == digest, f"{feature.feature_id} {version} manifest"
            for asset in json.loads(manifest)["assets"]:
                data = (origin / artifact_path(asset["sha256"], asset["path"])).read_bytes()
                assert sha256(data) == asset["sha256"], f"{feature.feature_id} {version} {asset}"


def check_restart(run: Run, interrupted: Change | None) -> bool:
    """Start the server normally after a round and check everything the module docstring
    lists; then send the interrupted change again and check it is applied exactly once.
    True when the interrupted change had committed before the kill."""
    server = start_server(run.home)
    try:
        client = server.client(timeout_seconds=CALL_TIMEOUT_SECONDS)
        status = client.get_status()
        assert status.pending_origin_writes == 0, "origin writes still owed after the start"
        history = all_transitions(client)
        by_id = {t.id: t for t in history}
        lost = [brief(t) for t in run.acked if by_id.get(t.id) != t]
        assert lost == [], "acknowledged changes lost or rewritten"
        committed = [t for t in history if interrupted and t.request_id == interrupted.request_id]
        assert len(committed) <= 1, f"{interrupted} applied {len(committed)} times"
        assert status.global_sequence == run.global_sequence + len(committed), (
            f"remote-index.json sequence {status.global_sequence}, acknowledged "
            f"{run.global_sequence}, interrupted change committed: {bool(committed)}"
        )
        features = {f.feature_id: f for f in status.features}
        assert set(features) == set(run.states), "other features than the ones published"
        for feature_id, known in run.states.items():
            now = features[feature_id]
            if committed and committed[0].feature_id == feature_id:
                t = committed[0]
                assert (now.sequence, now.stable_version, canary_of(now)) == (
                    known.sequence + 1,
                    t.to_stable,
                    t.to_canary,
                ), f"{feature_id}: state is not what the committed {interrupted} made"
            else:
                assert summary(now) == summary(known), f"{feature_id}: state changed"
        check_history(history, status)
        check_origin(run.home, status)

        if interrupted is None:
            return False
        # Sent again with its request_id: the stored answer if it committed, else applied now.
        response = interrupted.send(client)
        if committed:
            assert response.transition == committed[0], f"{interrupted}: another answer"
            run.states[interrupted.feature_id] = response.feature
            run.global_sequence = status.global_sequence
            run.acked.append(response.transition)
        else:
            acknowledge(run, interrupted, response)
        status = client.get_status()
        assert status.pending_origin_writes == 0, f"origin writes owed after {interrupted}"
        assert status.global_sequence == run.global_sequence, f"after {interrupted}"
        assert {f.feature_id: summary(f) for f in status.features} == {
            f: summary(s) for f, s in run.states.items()
        }, f"the state is not what {interrupted} answered"
        history = all_transitions(client)
        applied = [t for t in history if t.request_id == interrupted.request_id]
        assert applied == [run.acked[-1]], f"{interrupted} applied as {list(map(brief, applied))}"
        check_history(history, status)
        check_origin(run.home, status)
        return bool(committed)
    except (AssertionError, Refusal) as exc:
        exc.add_note(f"restarted server log: {server.log_path}\n{tail(server)}")
        raise
    finally:
        server.stop()


def brief(t: pb.Transition) -> str:
    action = pb.TransitionAction.Name(t.action)
    return f"#{t.id} {t.feature_id} sequence {t.sequence} {action} {t.version}"


def tail(server: LocalServer, lines: int = 15) -> str:
    return "\n".join(server.log().splitlines()[-lines:])


def run_round(
    run: Run,
    label: str,
    *,
    env: dict[str, str],
    kill_after: float | None = None,
    max_changes: int,
) -> bool:
    """Start a server with `env`, make changes until it dies (or `max_changes`), check the
    restart; True when the server was killed (SIGKILL), False when it lived to be stopped."""
    acked_before = len(run.acked)
    server = start_server(run.home, **env)
    assert server.process is not None
    process = server.process
    interrupted: Change | None = None
    failure: errors.ReleaseControlError | None = None
    killer = threading.Timer(kill_after, process.kill) if kill_after is not None else None
    try:
        client = server.client(timeout_seconds=CALL_TIMEOUT_SECONDS, **NO_RETRY)
        if killer is not None:
            killer.start()
        for _ in range(max_changes):
            change = next_change(run)
            try:
                response = change.send(client)
            except errors.ReleaseControlError as exc:
                interrupted, failure = change, exc
                break
            acknowledge(run, change, response)
        if killer is not None:
            killer.cancel()
            killer.join()
        if interrupted is not None:
            try:
                process.wait(timeout=EXIT_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                pytest.fail(f"{label}: {interrupted} failed with the server running: {failure}")
    finally:
        if killer is not None:
            killer.cancel()
        server.stop()  # SIGTERM when it still runs (never killed); closes the client
    code = process.returncode
    killed = code == -signal.SIGKILL
    if interrupted is not None:
        assert killed, f"{label}: the server exited {code}, not killed\n{tail(server)}"
    acked = len(run.acked) - acked_before
    left = len(staging_files(run.home / "origin"))
    run.staging_left += left
    try:
        committed = check_restart(run, interrupted)
    except (AssertionError, Refusal) as exc:
        exc.add_note(
            f"{label}: interrupted change {interrupted} ({failure}); "
            f"killed server log: {server.log_path}\n{tail(server)}"
        )
        raise
    line = f"{label}: {'killed' if killed else f'not killed (exit {code})'} after {acked} changes"
    line += f", {left} staging files left" if left else ""
    if interrupted is not None:
        line += f", during {interrupted.what} ({'committed' if committed else 'not committed'})"
    run.rounds.append(line)
    if not killed:
        run.not_killed.append(line)
    return killed


def start_run(tmp_path: Path, seed: str) -> Run:
    """A home where each feature has 1.0.0 stable, checked like any round."""
    run = Run(tmp_path / "home", tmp_path / "src", random.Random(f"{SEED}:{seed}"))
    server = start_server(run.home)
    try:
        client = server.client(timeout_seconds=CALL_TIMEOUT_SECONDS)
        for feature_id in FEATURES:
            change = publish_change(run, feature_id, "1.0.0", canary=False)
            acknowledge(run, change, change.send(client))
    finally:
        server.stop()
    check_restart(run, None)
    return run


@pytest.mark.parametrize(
    "point",
    [
        "artifact",
        "stage",
        "commit",
        "publish",
        "mark",
    ],
)
def test_kills_at_a_write_path_point_lose_no_acknowledged_change(
    tmp_path: Path, point: str
) -> None:
    """Killed at the n-th pass of `point` (n drawn per round), the server restarts with every
    acknowledged change, its sequences, a clean and verifying origin; each round is killed."""
    run = start_run(tmp_path, point)
    for round_no in range(1, HOOK_ROUNDS + 1):
        nth = run.rng.randint(1, HOOK_MAX_NTH[point])
        run_round(
            run,
            f"round {round_no} (killed at {point}:{nth})",
            env=killed_at(point, nth),
            max_changes=HOOK_MAX_CHANGES,
        )
    print("\n".join(run.rounds))  # shown with -s, or when the test fails
    if point == "stage":
        # Killed between staging and renaming: the restart had leftovers to remove.
        assert run.staging_left > 0, run.rounds
    # Each round passes `point` at least HOOK_MAX_NTH times: a round the hook did not kill
    # means the hook no longer fires where its name says, and the rounds proved less.
    assert run.not_killed == [], run.rounds
