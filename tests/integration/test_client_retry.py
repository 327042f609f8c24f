"""A client rides out a restart of the real server: its retry window (5 s by default) covers
the 1.3-2.6 s a restart takes, and a change sent while the server is down is applied once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import make_feature, start_server

from releasecontrol.client import DEFAULT_RETRY_SECONDS, ReleaseControlClient, resolve_connection
from releasecontrol.manifest import load_feature_folder
from releasectl.launcher import LocalServer

pytestmark = pytest.mark.integration

DOWN_SECONDS = 0.5  # with a restart (1.3-2.6 s), well inside the 5 s retry window
"""How long after the server stopped its replacement starts (then it takes its start time)."""


def test_a_read_and_a_change_made_while_the_server_restarts_succeed_once(tmp_path: Path) -> None:
    """Stop the server, start it again on the same port 1.5 s later: a get_status and a
    rollback sent while it is down both succeed once it is back, with the default window,
    and the rollback is applied exactly once (the feature's sequence goes up by one)."""
    home = tmp_path / "home"
    first = start_server(home)
    port = first.grpc.rsplit(":", 1)[1]
    # Not first.client(): stop() closes those. One channel, across the restart.
    client = ReleaseControlClient(resolve_connection(server=first.grpc, home=home, environ={}))
    restarted: list[LocalServer] = []
    failures: list[BaseException] = []
    try:
        for version in ("1.0.0", "1.1.0"):
            folder = make_feature(tmp_path / version, "checkout", version)
            client.publish(load_feature_folder(folder, feature_id="checkout"))
        before = client.get_status(["checkout"])
        assert before.features[0].stable_version == "1.1.0"
        assert client.retry_seconds == DEFAULT_RETRY_SECONDS

        first.stop()

        def restart() -> None:
            time.sleep(DOWN_SECONDS)
            try:
                restarted.append(start_server(home, RELEASECONTROL_GRPC_LISTEN=f"127.0.0.1:{port}"))
            except BaseException as exc:  # reported by the test, not lost in the thread
                failures.append(exc)

        restarter = threading.Thread(target=restart)
        started = time.monotonic()
        restarter.start()
        with ThreadPoolExecutor(max_workers=2) as pool:
            status = pool.submit(client.get_status, ["checkout"])
            rollback = pool.submit(
                client.rollback, "checkout", "1.0.0", reason="sent while the server restarts"
            )
            rolled = rollback.result(timeout=20)
            read = status.result(timeout=20)
        waited = time.monotonic() - started
        restarter.join()
        assert not failures, failures

        assert waited >= DOWN_SECONDS  # both were sent while nothing listened
        assert read.features[0].stable_version in ("1.0.0", "1.1.0")
        sequence = before.features[0].sequence
        assert rolled.feature.stable_version == "1.0.0"
        assert rolled.feature.sequence == sequence + 1
        after = client.get_status(["checkout"])
        assert after.features[0].sequence == sequence + 1
        assert after.global_sequence == before.global_sequence + 1
        history = client.list_transitions("checkout").transitions
        rollbacks = [t for t in history if t.request_id == rolled.transition.request_id]
        assert len(rollbacks) == 1 and rollbacks[0].sequence == sequence + 1
    finally:
        client.close()
        first.stop()
        for server in restarted:
            server.stop()
