"""metrics.py: what each metric counts, the /metrics endpoint's token, and the config behind it.

The RPC interceptor runs on a real grpc.aio server on an ephemeral port (no TLS:
what is measured does not depend on it; tests/integration/test_metrics.py
scrapes the real server over mTLS), with handlers that end every way a call can.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from controller_kit import change, digest, new_controller, stop
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from releasecontrol.errors import ConfigError, Unauthenticated, Unavailable
from releasecontrol_server.auth.interceptor import AuthInterceptor
from releasecontrol_server.auth.principal import AuthContext, Metadata, Principal, Role
from releasecontrol_server.config import Config, load_config, metrics_exposure
from releasecontrol_server.metrics import ServerMetrics, metrics_endpoint
from releasecontrol_server.origin.filesystem import FilesystemOrigin, Staged
from releasecontrol_server.releases import Action, AuditRecord, FeatureState, Publish
from releasecontrol_server.store import StoredTransition
from releasecontrol_server.watch import ChangeEvent, WatchHub

SERVICE = "test.Probe"


def new_metrics(outbox: int = 0, subscribers: int = 0) -> ServerMetrics:
    return ServerMetrics(outbox_files=lambda: outbox, watch_subscribers=lambda: subscribers)


def calls(metrics: ServerMetrics, method: str, code: str, service: str = SERVICE) -> float:
    labels = {"service": service, "method": method, "code": code}
    return metrics.registry.get_sample_value("releasecontrol_rpcs_total", labels) or 0.0


def timed(metrics: ServerMetrics, method: str, code: str) -> float:
    labels = {"service": SERVICE, "method": method, "code": code}
    name = "releasecontrol_rpc_duration_seconds_count"
    return metrics.registry.get_sample_value(name, labels) or 0.0


# -- the RPC interceptor -------------------------------------------------------------------


async def ok(request: bytes, context: Any) -> bytes:
    return b"ok"


async def not_found(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("unreachable")


async def set_code(request: bytes, context: Any) -> bytes:
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    return b""


async def bug(request: bytes, context: Any) -> bytes:
    raise ValueError("a bug")


async def slow(request: bytes, context: Any) -> bytes:
    await asyncio.sleep(30)
    return b""


async def upload(requests: AsyncIterator[bytes], context: Any) -> bytes:
    return b"".join([chunk async for chunk in requests])


async def endless(request: bytes, context: Any) -> AsyncIterator[bytes]:
    while True:
        yield b"tick"
        await asyncio.sleep(0.01)


async def three(request: bytes, context: Any) -> AsyncIterator[bytes]:
    for _ in range(3):
        yield b"x"


HANDLERS = {
    "Ok": grpc.unary_unary_rpc_method_handler(ok),
    "NotFound": grpc.unary_unary_rpc_method_handler(not_found),
    "SetCode": grpc.unary_unary_rpc_method_handler(set_code),
    "Bug": grpc.unary_unary_rpc_method_handler(bug),
    "Slow": grpc.unary_unary_rpc_method_handler(slow),
    "Upload": grpc.stream_unary_rpc_method_handler(upload),
    "Endless": grpc.unary_stream_rpc_method_handler(endless),
    "Three": grpc.unary_stream_rpc_method_handler(three),
}


class OnlyTheKey:
    """Admits callers whose metadata carries `key: open`, as admins."""

    mode = "test"

    def describe(self) -> str:
        return "test: the key opens"

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        if ("key", "open") not in metadata:
            raise Unauthenticated("no key")
        return Principal("tester", frozenset({Role.ADMIN}))


class Probe:
    """A grpc.aio server with HANDLERS behind the metrics and the auth interceptors."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.server = aio.server(
            interceptors=[metrics.interceptor(), AuthInterceptor(OnlyTheKey())]
        )
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, HANDLERS),)
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel: aio.Channel | None = None

    async def __aenter__(self) -> Probe:
        await self.server.start()
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.channel is not None
        await self.channel.close()
        await self.server.stop(None)

    async def unary(self, method: str, *, key: bool = True, timeout: float = 10) -> grpc.StatusCode:
        assert self.channel is not None
        metadata = (("key", "open"),) if key else ()
        try:
            await self.channel.unary_unary(f"/{SERVICE}/{method}")(
                b"", metadata=metadata, timeout=timeout
            )
        except aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK


async def ended(metrics: ServerMetrics, method: str, code: str, count: float = 1) -> None:
    """Wait (a few seconds at most) until the server has counted `count` calls' end: the
    client can hear a status before the server's handler has finished unwinding."""
    for _ in range(500):
        if calls(metrics, method, code) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{method} {code} was not counted")


class TestRpcMetricsInterceptor:
    async def test_each_call_is_counted_and_timed_by_method_and_the_code_it_ended_with(
        self,
    ) -> None:
        """Success, an abort, a code set without abort, a bug and a missed deadline each
        count once under the code the caller got, and each is in the histogram."""
        metrics = new_metrics()
        async with Probe(metrics) as probe:
            assert await probe.unary("Ok") == grpc.StatusCode.OK
            assert await probe.unary("Ok") == grpc.StatusCode.OK
            assert await probe.unary("NotFound") == grpc.StatusCode.NOT_FOUND
            assert await probe.unary("SetCode") == grpc.StatusCode.INVALID_ARGUMENT
            assert await probe.unary("Bug") == grpc.StatusCode.UNKNOWN
            assert await probe.unary("Slow", timeout=0.2) == grpc.StatusCode.DEADLINE_EXCEEDED
            await ended(metrics, "Slow", "DEADLINE_EXCEEDED")
        expected = [
            ("Ok", "OK", 2),
            ("NotFound", "NOT_FOUND", 1),
            ("SetCode", "INVALID_ARGUMENT", 1),
            ("Bug", "UNKNOWN", 1),
            ("Slow", "DEADLINE_EXCEEDED", 1),
        ]
        for method, code, count in expected:
            assert calls(metrics, method, code) == count, (method, code)
            assert timed(metrics, method, code) == count, (method, code)
        slow_seconds = metrics.registry.get_sample_value(
            "releasecontrol_rpc_duration_seconds_sum",
            {"service": SERVICE, "method": "Slow", "code": "DEADLINE_EXCEEDED"},
        )
        assert slow_seconds is not None and 0.15 < slow_seconds < 5

    async def test_a_call_the_auth_interceptor_refuses_is_counted_with_its_code(self) -> None:
        """Without credentials the handler never runs, and the call counts as UNAUTHENTICATED."""
        metrics = new_metrics()
        async with Probe(metrics) as probe:
            assert await probe.unary("Ok", key=False) == grpc.StatusCode.UNAUTHENTICATED
        assert calls(metrics, "Ok", "UNAUTHENTICATED") == 1
        assert timed(metrics, "Ok", "UNAUTHENTICATED") == 1
        assert calls(metrics, "Ok", "OK") == 0

    async def test_an_unknown_method_is_counted_without_its_name(self) -> None:
        """A method the server does not have is UNIMPLEMENTED under `unknown`: a caller's
        made-up names never become label values."""
        metrics = new_metrics()
        async with Probe(metrics) as probe:
            assert await probe.unary("NoSuchMethod") == grpc.StatusCode.UNIMPLEMENTED
        assert calls(metrics, "unknown", "UNIMPLEMENTED", service="unknown") == 1
        assert calls(metrics, "NoSuchMethod", "UNIMPLEMENTED") == 0

    async def test_a_client_stream_is_timed_like_a_unary_call(self) -> None:
        """A client-streaming call (a publish's upload) is counted and timed as one call."""
        metrics = new_metrics()
        async with Probe(metrics) as probe:
            assert probe.channel is not None
            call = probe.channel.stream_unary(f"/{SERVICE}/Upload")

            async def chunks() -> AsyncIterator[bytes]:
                for chunk in (b"a", b"b"):
                    yield chunk

            assert await call(chunks(), metadata=(("key", "open"),), timeout=10) == b"ab"
        assert calls(metrics, "Upload", "OK") == 1
        assert timed(metrics, "Upload", "OK") == 1

    async def test_a_response_stream_is_counted_when_it_ends_and_never_timed(self) -> None:
        """A stream that finishes counts OK, one the caller leaves counts CANCELLED; neither
        is in the latency histogram (a watch lasts as long as its caller listens)."""
        metrics = new_metrics()
        async with Probe(metrics) as probe:
            assert probe.channel is not None
            finished = probe.channel.unary_stream(f"/{SERVICE}/Three")
            assert [r async for r in finished(b"", metadata=(("key", "open"),))] == [b"x"] * 3
            endless = probe.channel.unary_stream(f"/{SERVICE}/Endless")(
                b"", metadata=(("key", "open"),)
            )
            assert await endless.read() == b"tick"
            assert calls(metrics, "Endless", "CANCELLED") == 0  # still running
            endless.cancel()
            await ended(metrics, "Endless", "CANCELLED")
            await ended(metrics, "Three", "OK")
        assert timed(metrics, "Three", "OK") == 0
        assert timed(metrics, "Endless", "CANCELLED") == 0


# -- changes, the gauges, one registry per server ------------------------------------------


def change_event(action: str | Action, global_sequence: int = 1) -> ChangeEvent:
    record = AuditRecord(
        feature_id="checkout",
        sequence=global_sequence,
        action=action,  # type: ignore[arg-type]  # an action this version does not know
        version="1.0.0",
        from_stable=None,
        to_stable="1.0.0",
        from_canary=None,
        to_canary=None,
        actor="ci",
        reason="",
        ticket="",
        at=datetime(2026, 11, 26, tzinfo=UTC),
    )
    transition = StoredTransition(
        id=global_sequence, record=record, global_sequence=global_sequence, request_id=""
    )
    return ChangeEvent(global_sequence, FeatureState("checkout", sequence=1), transition)


class TestChangesAndGauges:
    def test_changes_are_counted_by_the_action_of_their_audit_record(self) -> None:
        """Each change published by the hub counts under its record's action, including an
        action the metrics module was not written with; known actions start at 0."""
        metrics = new_metrics()
        hub = WatchHub(10)
        hub.on_change(metrics.count_change)
        hub.publish(change_event(Action.PUBLISH, 1))
        hub.publish(change_event(Action.PUBLISH, 2))
        hub.publish(change_event("pause_canary", 3))

        def changes(action: str) -> float | None:
            return metrics.registry.get_sample_value(
                "releasecontrol_changes_total", {"action": action}
            )

        assert changes("publish") == 2
        assert changes("pause_canary") == 1
        assert changes("rollback") == 0
        assert all(changes(action.value) is not None for action in Action)

    def test_the_gauges_are_read_when_scraped(self) -> None:
        """The outbox and subscriber gauges show what their callbacks say at scrape time."""
        state = {"outbox": 3, "subscribers": 2}
        metrics = ServerMetrics(
            outbox_files=lambda: state["outbox"], watch_subscribers=lambda: state["subscribers"]
        )
        get = metrics.registry.get_sample_value
        assert get("releasecontrol_outbox_files") == 3
        assert get("releasecontrol_watch_subscribers") == 2
        state.update(outbox=0, subscribers=0)
        assert get("releasecontrol_outbox_files") == 0
        assert get("releasecontrol_watch_subscribers") == 0

    def test_the_replica_gauges_follow_the_database_and_leadership(self) -> None:
        state = {"up": True, "leads": False}
        metrics = ServerMetrics(
            outbox_files=lambda: 0,
            watch_subscribers=lambda: 0,
            database_up=lambda: state["up"],
            leader=lambda: state["leads"],
        )
        get = metrics.registry.get_sample_value
        assert (get("releasecontrol_database_up"), get("releasecontrol_leader")) == (1, 0)
        state.update(up=False, leads=True)
        assert (get("releasecontrol_database_up"), get("releasecontrol_leader")) == (0, 1)

    def test_two_servers_in_one_process_count_apart(self) -> None:
        """Each ServerMetrics has its own registry: one server's changes are not another's."""
        first, second = new_metrics(), new_metrics()
        first.count_change(change_event(Action.PROMOTE))
        get = "releasecontrol_changes_total"
        assert first.registry.get_sample_value(get, {"action": "promote"}) == 1
        assert second.registry.get_sample_value(get, {"action": "promote"}) == 0


# -- the write path's observer -------------------------------------------------------------


class SwitchableOrigin(FilesystemOrigin):
    """A folder origin that refuses every write while `down`."""

    down = False

    def write(self, path: str, data: bytes) -> None:
        if self.down:
            raise OSError("origin down")
        super().write(path, data)

    def stage(self, path: str, data: bytes, *, sync: bool = True) -> Staged:
        if self.down:
            raise OSError("origin down")
        return super().stage(path, data, sync=sync)


class TestOriginMetrics:
    async def test_each_batch_is_timed_to_the_origin_and_each_failed_write_counted(
        self, tmp_path: Path
    ) -> None:
        """A committed batch whose files reach the origin is one observation; one whose
        write fails is a failure (not an observation), and the outbox gauge shows its files."""
        origin = SwitchableOrigin(tmp_path / "origin")
        metrics = ServerMetrics(
            outbox_files=lambda: control.pending_count(), watch_subscribers=lambda: 0
        )
        control = new_controller(tmp_path, origin, write_observer=metrics)
        get = metrics.registry.get_sample_value
        await control.start()
        try:
            for version in ("1.0.0", "1.1.0"):
                await change(control, "checkout", Publish(version, digest(version)))
            assert get("releasecontrol_origin_publish_duration_seconds_count") == 2
            assert get("releasecontrol_origin_write_failures_total") == 0
            assert get("releasecontrol_outbox_files") == 0

            origin.down = True
            with pytest.raises(Unavailable, match="committed"):
                await change(control, "checkout", Publish("1.2.0", digest("1.2.0")))
            assert get("releasecontrol_origin_publish_duration_seconds_count") == 2
            assert (get("releasecontrol_origin_write_failures_total") or 0) >= 1
            assert get("releasecontrol_outbox_files") == control.pending_count() > 0
            origin.down = False
        finally:
            await stop(control)


# -- the endpoint ---------------------------------------------------------------------------


async def get(
    app: Any, *, headers: dict[str, str] | None = None, method: str = "GET", path: str = "/metrics"
) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://metrics.test") as client:
        return await client.request(method, path, headers=headers)


class TestMetricsEndpoint:
    async def test_without_a_token_anyone_reaching_it_may_scrape(self) -> None:
        """No metrics_token: a plain GET gets the Prometheus text format, which parses."""
        metrics = new_metrics(outbox=4)
        response = await get(metrics_endpoint(metrics.registry, token=None))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        names = {f.name for f in text_string_to_metric_families(response.text)}
        assert {"releasecontrol_rpcs", "releasecontrol_outbox_files"} <= names

    @pytest.mark.parametrize(
        ("authorization", "status"),
        [
            pytest.param(None, 401, id="missing"),
            pytest.param("Bearer wrong-token-0123456789", 401, id="wrong"),
            pytest.param("Basic c2NyYXBlOjAxMjM0NTY3ODlhYmNkZWY=", 401, id="other-scheme"),
            pytest.param("Bearer scrape-0123456789abcdef-and-more", 401, id="longer"),
            pytest.param("Bearer scrape-0123456789abcdef", 200, id="right"),
            pytest.param("bearer scrape-0123456789abcdef", 200, id="scheme-any-case"),
        ],
    )
    async def test_with_a_token_only_its_bearer_may_scrape(
        self, authorization: str | None, status: int
    ) -> None:
        """With metrics_token set, only `Authorization: Bearer <token>` is answered; a refusal
        says what is needed and shows no metric."""
        app = metrics_endpoint(new_metrics().registry, token="scrape-0123456789abcdef")
        headers = {"Authorization": authorization} if authorization else {}
        response = await get(app, headers=headers)
        assert response.status_code == status
        if status == 401:
            assert response.headers["www-authenticate"] == 'Bearer realm="metrics"'
            assert "releasecontrol_" not in response.text

    async def test_only_get_and_head_are_answered(self) -> None:
        """POST is 405 naming GET; HEAD answers 200 with no body."""
        app = metrics_endpoint(new_metrics().registry, token=None)
        post = await get(app, method="POST")
        assert post.status_code == 405
        assert post.headers["allow"] == "GET, HEAD"
        head = await get(app, method="HEAD")
        assert head.status_code == 200
        assert head.content == b""

    async def test_a_scraper_asking_for_openmetrics_gets_it(self) -> None:
        """Accept: application/openmetrics-text selects OpenMetrics, ending in `# EOF`."""
        app = metrics_endpoint(new_metrics().registry, token=None)
        response = await get(app, headers={"Accept": "application/openmetrics-text"})
        assert response.headers["content-type"].startswith("application/openmetrics-text")
        assert response.text.endswith("# EOF\n")


# -- the settings ---------------------------------------------------------------------------


def config(tmp_path: Path, **environ: str) -> Config:
    return load_config({"RELEASECONTROL_HOME": str(tmp_path), **environ}, cwd=tmp_path)


class TestMetricsSettings:
    def test_the_token_is_read_from_the_environment_and_never_shown(self, tmp_path: Path) -> None:
        """RELEASECONTROL_METRICS_TOKEN sets metrics_token; the config's repr omits it."""
        token = "scrape-0123456789abcdef"
        loaded = config(tmp_path, RELEASECONTROL_METRICS_TOKEN=token)
        assert loaded.metrics_token == token
        assert token not in repr(loaded)
        assert config(tmp_path, RELEASECONTROL_METRICS_TOKEN="").metrics_token is None

    @pytest.mark.parametrize(
        "token",
        [
            pytest.param("short", id="too-short"),
            pytest.param("has a space in it 0123456789", id="space"),
            pytest.param("0123456789abcdef\u00e9", id="non-ascii"),
        ],
    )
    def test_an_unusable_token_is_refused_without_echoing_it(
        self, tmp_path: Path, token: str
    ) -> None:
        """A token that is too short or holds characters a header cannot carry stops the
        load, naming the setting, never the value."""
        with pytest.raises(ConfigError) as caught:
            config(tmp_path, RELEASECONTROL_METRICS_TOKEN=token)
        assert "RELEASECONTROL_METRICS_TOKEN" in caught.value.message
        assert token not in caught.value.message

    @pytest.mark.parametrize(
        ("env", "listen", "token", "warned"),
        [
            pytest.param("production", "0.0.0.0:8080", None, True, id="open-to-the-network"),
            pytest.param("production", "0.0.0.0:8080", "t" * 32, False, id="with-token"),
            pytest.param("production", "127.0.0.1:8080", None, False, id="loopback"),
            pytest.param("production", "[::1]:8080", None, False, id="loopback-v6"),
            pytest.param("development", "0.0.0.0:8080", None, False, id="development"),
        ],
    )
    def test_production_warns_when_metrics_are_open_beyond_loopback(
        self, env: str, listen: str, token: str | None, warned: bool
    ) -> None:
        """Only production with the admin listener off loopback and no token is warned of."""
        loaded = Config(
            env=env,  # type: ignore[arg-type]
            home=Path("/srv"),
            origin_dir=Path("/srv/origin"),
            artifact_store="/srv/artifacts",
            admin_listen=listen,
            admin_session_secret_path=Path("/srv/s"),
            database_path=Path("/srv/db"),
            tls_cert_path=Path("/srv/c"),
            tls_key_path=Path("/srv/k"),
            tls_client_ca_path=Path("/srv/ca"),
            signing_key_paths=(Path("/srv/sk"),),
            root_dir=Path("/srv/roots"),
            token_store_path=Path("/srv/t"),
            cluster_allowlist_path=Path("/srv/a"),
            metrics_token=token,
        )
        warning = metrics_exposure(loaded)
        assert (warning is not None) == warned
        if warning is not None:
            assert "metrics_token" in warning and listen in warning
