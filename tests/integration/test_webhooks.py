"""Webhooks against the real server (issue 14, item 6): every change, approval request and
verdict reaches a real HTTP receiver, signed with HMAC-SHA256, retried while the receiver
fails, and delivered across a server restart: each event at least once, with an id the
receiver de-duplicates by, in order; a Slack-compatible body; `releasectl webhook test`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import make_feature, releasectl, start_server

from releasecontrol import errors
from releasecontrol.manifest import load_feature_folder
from releasecontrol_server.webhooks import SIGNATURE_HEADER, verify

pytestmark = pytest.mark.integration

SECRET = b"0123456789abcdef0123456789abcdef"


class Receiver:
    """An HTTP receiver on 127.0.0.1 that keeps what it got, and can be made to fail."""

    def __init__(self) -> None:
        self.got: list[dict[str, Any]] = []
        self.failing = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                if receiver.failing:
                    self.send_response(503)
                    self.end_headers()
                    return
                receiver.got.append(
                    {
                        "path": self.path,
                        "id": int(self.headers["x-releasecontrol-event-id"]),
                        "kind": self.headers["x-releasecontrol-event"],
                        "signed": verify(
                            SECRET, body, self.headers[SIGNATURE_HEADER], int(time.time())
                        ),
                        "body": json.loads(body),
                    }
                )
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict[str, Any]]:
        return [g for g in self.got if g["path"] == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.server.shutdown()
    made.server.server_close()


def environment(tmp_path: Path, receiver: Receiver) -> dict[str, str]:
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET)
    hooks = [
        {"name": "ops", "url": receiver.url + "/ops", "secret_path": str(secret)},
        {
            "name": "chat",
            "url": receiver.url + "/chat",
            "secret_path": str(secret),
            "format": "slack",
            "events": ["approval", "verdict"],
        },
    ]
    return {
        "RELEASECONTROL_WEBHOOKS": json.dumps(hooks),
        "RELEASECONTROL_REQUIRE_APPROVAL": "feature-pay*",
    }


def wait_for(check: Any, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_every_event_is_delivered_signed_in_order_across_a_restart(
    tmp_path: Path, receiver: Receiver
) -> None:
    env = environment(tmp_path, receiver)
    server = start_server(tmp_path / "home", **env)
    try:
        client = server.client()
        client.publish(load_feature_folder(make_feature(tmp_path / "a", "checkout", "1.0.0")))
        wait_for(lambda: len(receiver.at("/ops")) == 1)

        receiver.failing = True  # the receiver goes down; events wait, in order
        client.publish(
            load_feature_folder(make_feature(tmp_path / "b", "checkout", "1.1.0")),
            channel="canary",
        )
        client.publish(load_feature_folder(make_feature(tmp_path / "c", "feature-pay", "1.0.0")))
    except errors.ApprovalRequired as waiting:
        approval_id = waiting.approval_id
    else:
        pytest.fail("a publish straight to stable of feature-pay must wait for approval")
    time.sleep(1.5)  # a failed delivery or two, retried with backoff
    server.stop()
    receiver.failing = False

    server = start_server(tmp_path / "home", **env)  # the cursor and the events survive
    try:
        wait_for(lambda: len({g["id"] for g in receiver.at("/ops")}) == 3)
        wait_for(lambda: len(receiver.at("/chat")) == 1)
    finally:
        server.stop()

    ops = receiver.at("/ops")
    ids = [g["id"] for g in ops]
    assert ids == sorted(ids)  # in order (a repeat may follow a kill, never an older one)
    by_id = {g["id"]: g for g in ops}
    assert len(by_id) == 3
    assert all(g["signed"] for g in receiver.got)
    first, canary, approval = (by_id[i]["body"] for i in sorted(by_id))
    assert (first["kind"], first["feature"], first["data"]["action"]) == (
        "change",
        "checkout",
        "publish",
    )
    assert (canary["data"]["action"], canary["data"]["to_canary"]) == ("publish", "1.1.0")
    assert approval["kind"] == "approval"
    assert approval["data"]["approval_id"] == approval_id
    assert approval["data"]["what"] == "publishing 1.0.0 straight to stable"
    (chat,) = receiver.at("/chat")
    assert chat["body"] == {
        "text": f"feature-pay: publishing 1.0.0 straight to stable waits for a second approver "
        f"(request {approval_id}, asked by {approval['data']['requested_by']}): "
        f"`releasectl release approve --id {approval_id}`"
    }


def test_releasectl_webhook_test_reports_each_receiver(tmp_path: Path, receiver: Receiver) -> None:
    server = start_server(tmp_path / "home", **environment(tmp_path, receiver))
    try:
        done = releasectl(server, tmp_path, "webhook", "test")
        assert done.returncode == 0, done.stderr
        assert "ops: " + receiver.url + "/ops: delivered (HTTP 204" in done.stdout
        assert {g["path"] for g in receiver.got} == {"/ops", "/chat"}
        assert all(g["kind"] == "test" and g["signed"] for g in receiver.got)

        receiver.failing = True
        done = releasectl(server, tmp_path, "webhook", "test", "--name", "ops")
        assert done.returncode == 1
        assert done.stderr == "error: not delivered to ops\n"
        assert "refused with HTTP 503" in done.stdout
        unknown = releasectl(server, tmp_path, "webhook", "test", "--name", "nope")
        assert unknown.returncode == 3 and "no webhook is named 'nope'" in unknown.stderr
    finally:
        server.stop()


def test_a_bad_webhook_config_stops_the_start_with_one_line(tmp_path: Path) -> None:
    from releasectl.launcher import LocalServerError

    bad = json.dumps([{"name": "ops", "url": "ftp://x", "secret_path": "/nope"}])
    wanted = r"WEBHOOKS\[0\]\.url is .ftp://x.; set it to the http\(s\) URL"
    with pytest.raises(LocalServerError, match=wanted):
        start_server(tmp_path / "home", RELEASECONTROL_WEBHOOKS=bad)
