"""The admin UI's parts on their own: the session key file, live events, the HTTP listener."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from test_admin import Clock, make_controller, publish

from releasecontrol.errors import ConfigError
from releasecontrol_server import releases
from releasecontrol_server.admin import AdminServer, load_or_create_secret
from releasecontrol_server.admin.events import event_stream
from releasecontrol_server.admin.session import SessionRegistry
from releasecontrol_server.admin.signin import SignInThrottle, claimed_principal
from releasecontrol_server.auth.dfs import issue_dfs_token
from releasecontrol_server.auth.principal import Principal, Role
from releasecontrol_server.control import ReleaseController
from releasecontrol_server.releases import ChangeMeta
from releasecontrol_server.watch import WatchHub

VIEWER = Principal("watcher", frozenset({Role.VIEWER}))


class TestSessionKey:
    def test_made_once_with_mode_0600_and_reused(self, tmp_path: Path) -> None:
        """The first start makes a 32-byte hex key only its owner may read; later ones reuse it."""
        path = tmp_path / "admin" / "session.key"
        first = load_or_create_secret(path)
        assert len(first) == 64 and int(first, 16) >= 0
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert load_or_create_secret(path) == first

    def test_a_key_others_can_read_is_refused(self, tmp_path: Path) -> None:
        """A key file group or others could read would let them forge sign-ins: refused."""
        path = tmp_path / "session.key"
        load_or_create_secret(path)
        os.chmod(path, 0o640)
        with pytest.raises(ConfigError, match="chmod 600"):
            load_or_create_secret(path)

    def test_a_short_key_is_refused(self, tmp_path: Path) -> None:
        """A key file holding too little is refused, saying how to make a new one."""
        path = tmp_path / "session.key"
        path.write_text("abcd")
        os.chmod(path, 0o600)
        with pytest.raises(ConfigError, match="delete it and restart"):
            load_or_create_secret(path)


class Ticks:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class TestSessionRegistry:
    def test_a_session_counts_until_closed_or_expired(self) -> None:
        """Open ids count; a closed one or one past its end does not, nor one never opened."""
        ticks = Ticks()
        registry = SessionRegistry(clock=ticks)
        kept, closed = registry.open(200.0), registry.open(200.0)
        assert registry.is_open(kept) and registry.is_open(closed)
        assert registry.close(closed) and not registry.is_open(closed)
        assert not registry.close(closed)
        assert not registry.is_open("") and not registry.is_open("never-opened")
        ticks.now = 200.0
        assert not registry.is_open(kept)

    def test_it_holds_a_bounded_number_and_drops_the_oldest(self) -> None:
        """Past its size the oldest sign-in is closed first; expired ones go before that."""
        ticks = Ticks()
        registry = SessionRegistry(max_sessions=3, clock=ticks)
        short = registry.open(150.0)
        first, second = registry.open(500.0), registry.open(500.0)
        ticks.now = 160.0
        third = registry.open(500.0)  # `short` expired: room without dropping anyone
        assert len(registry) == 3 and not registry.is_open(short)
        fourth = registry.open(500.0)
        assert not registry.is_open(first)
        assert all(registry.is_open(s) for s in (second, third, fourth))


class TestSignInThrottle:
    def test_the_window_slides(self) -> None:
        """The limit counts failures within the window; each one leaves it on its own."""
        ticks = Ticks()
        throttle = SignInThrottle(per_address=2, window_seconds=60, clock=ticks)
        throttle.failed("10.0.0.1", None)
        ticks.now += 30
        throttle.failed("10.0.0.1", None)
        refused = throttle.check("10.0.0.1", None)
        assert refused is not None and refused.key == "address=10.0.0.1"
        assert refused.retry_after == 30
        assert throttle.check("10.0.0.2", None) is None  # another address is not affected
        ticks.now += 30
        assert throttle.check("10.0.0.1", None) is None

    def test_the_longest_wait_is_the_one_given(self) -> None:
        """Blocked both by address and by principal: Retry-After is the later of the two."""
        ticks = Ticks()
        throttle = SignInThrottle(per_address=1, per_principal=2, window_seconds=100, clock=ticks)
        throttle.failed("10.0.0.1", None)  # address blocked until 200
        ticks.now += 10
        throttle.failed("10.0.0.9", "carol")
        ticks.now += 10
        throttle.failed("10.0.0.8", "carol")  # principal blocked until 210
        refused = throttle.check("10.0.0.1", "carol")
        assert refused is not None and refused.key == "principal=carol"
        assert refused.retry_after == 90

    def test_the_number_of_tracked_keys_is_bounded(self) -> None:
        """A flood of addresses cannot grow memory without end: the idlest keys go first."""
        throttle = SignInThrottle(per_address=1, clock=Ticks(), max_keys=100)
        for n in range(1000):
            throttle.failed(f"10.0.{n // 256}.{n % 256}", None)
        assert len(throttle._failures) == 100
        assert throttle.check("10.0.3.231", None) is not None  # the latest is kept

    def test_only_a_dfs_token_names_a_principal(self) -> None:
        """The `sub` of a dfs token (signature unchecked) keys the limit; nothing else does."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        token = issue_dfs_token(
            Ed25519PrivateKey.generate(), issuer="i", audience="a", subject="carol", roles=["admin"]
        )
        assert claimed_principal("dfs", token) == "carol"
        assert claimed_principal("rpc-token", token) is None
        assert claimed_principal("dfs", "rc_not-a-jws") is None
        assert claimed_principal("dfs", "a.b.c") is None


def _data(chunk: str) -> dict[str, object]:
    line = next(li for li in chunk.splitlines() if li.startswith("data: "))
    return dict(json.loads(line.removeprefix("data: ")))


class TestEvents:
    @pytest.fixture
    async def controller(self, tmp_path: Path) -> AsyncIterator[ReleaseController]:
        controller, store = make_controller(tmp_path, Clock())
        await controller.start()
        await publish(controller, "checkout", "1.0.0")
        await publish(controller, "feature-pay", "1.0.0")
        yield controller
        store.close()

    async def test_a_committed_change_becomes_one_change_event(
        self, controller: ReleaseController
    ) -> None:
        """After the hello, a change anyone commits arrives as `event: change` naming it and
        the canary (with its weight) it leaves."""
        closing = asyncio.Event()
        stream = event_stream(controller.hub, VIEWER, [], closing, heartbeat_seconds=5)
        assert await anext(stream) == "retry: 2000\nevent: hello\ndata: {}\n\n"
        await publish(controller, "checkout", "1.1.0", canary=True, soak_seconds=60)
        chunk = await asyncio.wait_for(anext(stream), 2)
        assert chunk.startswith("event: change\n")
        assert _data(chunk) == {
            "feature_id": "checkout",
            "sequence": 2,
            "global_sequence": 3,
            "action": "publish",
            "version": "1.1.0",
            "actor": "ci-bot",
            "canary": "1.1.0 — opted-in hosts only",
        }
        closing.set()
        with pytest.raises(StopAsyncIteration):
            await asyncio.wait_for(anext(stream), 2)

    async def test_a_weight_change_is_sent_with_the_canarys_new_weight(
        self, controller: ReleaseController
    ) -> None:
        """A set_weight event carries the canary as pages word it, so the status line shows
        the new share without reading the page first."""
        await publish(controller, "checkout", "1.1.0", canary=True, soak_seconds=60)
        stream = event_stream(controller.hub, VIEWER, [], asyncio.Event(), heartbeat_seconds=5)
        await anext(stream)
        await controller.change(
            "checkout",
            releases.SetWeight(2500),
            ChangeMeta(actor="alice"),
            rpc="SetCanaryWeight",
            request_id="",
        )
        data = _data(await asyncio.wait_for(anext(stream), 2))
        assert (data["action"], data["version"], data["canary"]) == (
            "set_weight",
            "1.1.0",
            "1.1.0 — 25% of users",
        )
        await stream.aclose()

    async def test_changes_outside_the_principals_scope_are_not_sent(
        self, controller: ReleaseController
    ) -> None:
        """A principal scoped to feature-pay* hears nothing about checkout."""
        scoped = Principal("pay", frozenset({Role.VIEWER}), ("feature-pay*",))
        stream = event_stream(controller.hub, scoped, [], asyncio.Event(), heartbeat_seconds=5)
        await anext(stream)
        await publish(controller, "checkout", "1.1.0")
        await publish(controller, "feature-pay", "1.1.0")
        chunk = await asyncio.wait_for(anext(stream), 2)
        assert _data(chunk)["feature_id"] == "feature-pay"
        await stream.aclose()

    async def test_an_idle_stream_sends_heartbeats(self, controller: ReleaseController) -> None:
        """With nothing to say, a comment line keeps the connection alive."""
        stream = event_stream(controller.hub, VIEWER, [], asyncio.Event(), heartbeat_seconds=0.05)
        await anext(stream)
        assert await asyncio.wait_for(anext(stream), 2) == ": heartbeat\n\n"
        await stream.aclose()
        assert controller.hub.subscriber_count == 0

    async def test_a_page_that_falls_behind_is_told_to_reload(self, tmp_path: Path) -> None:
        """When the subscriber's queue overflows, the page gets `resync` and the stream ends."""
        controller, store = make_controller(tmp_path, Clock(), hub=WatchHub(1))
        with closing(store):
            await controller.start()
            stream = event_stream(controller.hub, VIEWER, [], asyncio.Event(), heartbeat_seconds=5)
            await anext(stream)
            for version in ("1.0.0", "1.1.0", "1.2.0"):  # a queue of 1 overflows
                await publish(controller, "checkout", version)
            assert (await asyncio.wait_for(anext(stream), 2)).startswith("event: resync\n")
            with pytest.raises(StopAsyncIteration):
                await anext(stream)


class TestAdminServer:
    @staticmethod
    def app() -> Starlette:
        async def hello(request: Request) -> PlainTextResponse:
            return PlainTextResponse("hello")

        return Starlette(routes=[Route("/_admin", hello)])

    async def test_serves_on_the_running_loop_and_stops(self) -> None:
        """Port 0 binds a free port, the URL names it, requests are answered, stop() returns."""
        stopped: list[bool] = []
        server = AdminServer(self.app(), "127.0.0.1:0", on_stop=lambda: stopped.append(True))
        url = await server.start()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/_admin")
        async with httpx.AsyncClient() as client:
            response = await client.get(url)
        assert response.text == "hello"
        await asyncio.wait_for(server.stop(), 10)
        assert stopped == [True]
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)

    async def test_a_busy_port_names_the_setting(self) -> None:
        """A port already taken stops the start with a ConfigError naming admin_listen."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            server = AdminServer(self.app(), f"127.0.0.1:{port}")
            with pytest.raises(ConfigError, match="admin_listen"):
                await server.start()
