"""The control plane's Prometheus metrics: one registry per server, served at `/metrics`.

    ServerMetrics(outbox_files=..., watch_subscribers=...)   the metrics of one server
    ServerMetrics.interceptor()                               counts and times every RPC
    ServerMetrics.count_change                                a WatchHub change observer
    metrics_endpoint(registry, token=...)                     the ASGI app behind /metrics

Every metric of the control plane is listed here, and only here (docs/metrics.md
says how to read them):

releasecontrol_rpcs_total{service, method, code}  (counter)
    RPCs handled, counted when the call ends, by its gRPC status code: calls the
    auth interceptor refuses too; a method the server does not have counts as
    service and method `unknown`, code UNIMPLEMENTED.
releasecontrol_rpc_duration_seconds{service, method, code}  (histogram)
    The same calls, from reaching the server to their status, for those answered
    with one message (unary, and client streaming: a publish's upload included).
    A response stream (WatchReleases, RebuildOrigin) is only counted: it lasts as
    long as its caller listens.
releasecontrol_changes_total{action}  (counter)
    Committed changes, by their audit record's action (publish, deploy_canary,
    promote, rollback, set_channel, resign, reconcile, and whatever action the
    state machine gains: the label is the record's, every known one starts at 0).
releasecontrol_origin_publish_duration_seconds  (histogram)
    Per committed batch: from the store commit to every file of it in place on the
    origin (readable by hosts; the fsync follows in the background). A batch whose
    write failed is not observed here but counted below.
releasecontrol_origin_write_failures_total  (counter)
    Attempts to write committed files to the origin that failed (a batch's, or a
    background retry's); the outbox keeps the files until a retry succeeds.
releasecontrol_outbox_files  (gauge, read at scrape time)
    Committed files the origin may still lack: 0 once writes have settled.
releasecontrol_watch_subscribers  (gauge, read at scrape time)
    Open change streams: WatchReleases calls and admin UI live pages.
releasecontrol_database_up, releasecontrol_leader  (gauges, read at scrape time)
    1 while the database answers this replica (its gRPC health is SERVING); 1 on the one
    replica that runs the one-per-cluster jobs (always 1 on SQLite).
process_*, python_info
    prometheus_client's process (CPU, memory, file descriptors) and platform collectors.

Buckets of both histograms: `LATENCY_BUCKETS`, 1 ms to 10 s.

releasecontrol_beacons_total{outcome}  (counter)
    Beacon batches received (beacons.py), by outcome: accepted, bad (not a batch),
    forged (a key not configured), replayed (a batch id seen, or too old), unknown
    (a feature or version never published), limited (over the rate); the rate of
    `accepted` is the ingest rate.
releasecontrol_analysis_verdicts_total{verdict}  (counter)
    Canary analysis verdicts (analyzer.py), one per running canary each time the
    analysis runs (every 5 s): waiting, running, pass, fail.

Labels stay bounded: `service` and `method` come from the methods the server
has, `code` from gRPC's 17 codes, `action` from the state machine's actions.
No label ever carries a feature id, a principal or anything a caller chose.

Each server has its own `CollectorRegistry` (never prometheus_client's global
one), so several servers in one process (tests) do not share counts.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import grpc
from grpc import aio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from releasecontrol_server.analysis import Kind
from releasecontrol_server.beacons import OUTCOMES as BEACON_OUTCOMES
from releasecontrol_server.releases import Action
from releasecontrol_server.watch import ChangeEvent

if TYPE_CHECKING:  # an annotation only: /metrics does not need the analyzer to load
    from releasecontrol_server.analyzer import Judged

__all__ = ["LATENCY_BUCKETS", "METRICS_PATH", "ServerMetrics", "metrics_endpoint"]

METRICS_PATH = "/metrics"
"""Where the admin HTTP listener serves the metrics."""

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Seconds, 1 ms to 10 s (and +Inf): a read from memory to a large publish or a slow origin."""

UNKNOWN_METHOD = "unknown"
"""`service` and `method` of a call to a method the server does not have (UNIMPLEMENTED)."""

# Wrapped handlers kept, one per method (the server has a few dozen).
_WRAPPED_METHODS = 1024

ASGIApp = Callable[[Any, Any, Any], Coroutine[Any, Any, None]]


class ServerMetrics:
    """The metrics of one control plane process, in a registry of their own.

    `outbox_files` and `watch_subscribers` are read at scrape time, on the event loop:
    they must be cheap and must not block.
    """

    def __init__(
        self,
        *,
        outbox_files: Callable[[], int],
        watch_subscribers: Callable[[], int],
        database_up: Callable[[], bool] = lambda: True,
        leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.rpcs = Counter(
            "releasecontrol_rpcs",
            "RPCs handled, by gRPC status code, counted when the call ends.",
            ("service", "method", "code"),
            registry=registry,
        )
        self.rpc_seconds = Histogram(
            "releasecontrol_rpc_duration_seconds",
            "Time from an RPC reaching the server to its status, for RPCs answered with one "
            "message (response streams are only counted in releasecontrol_rpcs_total).",
            ("service", "method", "code"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.changes = Counter(
            "releasecontrol_changes",
            "Committed changes, by the audit record's action.",
            ("action",),
            registry=registry,
        )
        for action in Action:  # every known action visible from the start, at 0
            self.changes.labels(action=action.value)
        self.origin_publish_seconds = Histogram(
            "releasecontrol_origin_publish_duration_seconds",
            "Per committed batch: from the store commit to every file in place on the origin.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.origin_write_failures = Counter(
            "releasecontrol_origin_write_failures",
            "Attempts to write committed files to the origin that failed (retried later).",
            registry=registry,
        )
        Gauge(
            "releasecontrol_outbox_files",
            "Committed files the origin may still lack (the store's outbox).",
            registry=registry,
        ).set_function(outbox_files)
        Gauge(
            "releasecontrol_watch_subscribers",
            "Open change streams: WatchReleases calls and admin UI live pages.",
            registry=registry,
        ).set_function(watch_subscribers)
        Gauge(
            "releasecontrol_database_up",
            "1 while the database answers this replica (gRPC health SERVING), else 0.",
            registry=registry,
        ).set_function(lambda: int(database_up()))
        Gauge(
            "releasecontrol_leader",
            "1 on the replica that runs the one-per-cluster jobs (leader.py), else 0.",
            registry=registry,
        ).set_function(lambda: int(leader()))
        self.beacons = Counter(
            "releasecontrol_beacons",
            "Beacon batches received, by outcome (accepted, bad, forged, replayed, unknown, "
            "limited); the rate of accepted ones is the ingest rate.",
            ("outcome",),
            registry=registry,
        )
        for outcome in BEACON_OUTCOMES:
            self.beacons.labels(outcome=outcome)
        self.verdicts = Counter(
            "releasecontrol_analysis_verdicts",
            "Canary analysis verdicts reached, by kind (waiting, running, pass, fail): one per "
            "canary each time its analysis runs.",
            ("verdict",),
            registry=registry,
        )
        for kind in Kind:
            self.verdicts.labels(verdict=kind.value)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    def interceptor(self) -> RpcMetricsInterceptor:
        """The gRPC server interceptor that counts and times every call; put it first in
        `aio.server(interceptors=[...])` so that it sees the calls the others refuse."""
        return RpcMetricsInterceptor(self)

    def count_change(self, event: ChangeEvent) -> None:
        """Count one committed change (a `WatchHub.on_change` observer)."""
        self.changes.labels(action=str(event.transition.record.action)).inc()

    # The write path's observer (`writer.WriteObserver`), called on the write thread.

    def count_beacon(self, outcome: str) -> None:
        """A beacon batch's outcome (beacons.Ingest.on_outcome)."""
        self.beacons.labels(outcome=outcome).inc()

    def count_verdict(self, judged: Judged) -> None:
        """An analysis verdict (analyzer.CanaryAnalyzer.on_verdict)."""
        self.verdicts.labels(verdict=judged.verdict.kind.value).inc()

    def origin_published(self, seconds: float) -> None:
        """A committed batch's files are all in place on the origin, `seconds` after its
        commit."""
        self.origin_publish_seconds.observe(seconds)

    def origin_write_failed(self) -> None:
        """Writing committed files to the origin failed (the outbox keeps them)."""
        self.origin_write_failures.inc()


class RpcMetricsInterceptor(aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no types
    """Counts every call by method and status code, and times those with one answer."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self._rpcs = metrics.rpcs
        self._seconds = metrics.rpc_seconds
        # method -> (the handler the next interceptors gave, that handler measured)
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[Any], Awaitable[Any]],
        handler_call_details: Any,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:  # gRPC answers UNIMPLEMENTED; the name is the caller's: not a label
            self._rpcs.labels(UNKNOWN_METHOD, UNKNOWN_METHOD, "UNIMPLEMENTED").inc()
            return None
        method: str = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        measured = self._measure(handler, method)
        if len(self._wrapped) >= _WRAPPED_METHODS:
            self._wrapped.clear()
        self._wrapped[method] = (handler, measured)
        return measured

    def _measure(self, handler: Any, method: str) -> Any:
        """`handler` with its end counted (and, for one answer, timed) under `method`."""
        service, _, name = method.lstrip("/").rpartition("/")
        rpcs, seconds = self._rpcs, self._seconds
        # The method's series by code, looked up once each: labels() costs more than the
        # count itself, and every call pays it.
        counted: dict[str, Any] = {}
        timed: dict[str, Any] = {}

        def count(code: str) -> None:
            series = counted.get(code)
            if series is None:
                series = counted[code] = rpcs.labels(service, name, code)
            series.inc()

        def time_it(code: str, elapsed: float) -> None:
            series = timed.get(code)
            if series is None:
                series = timed[code] = seconds.labels(service, name, code)
            series.observe(elapsed)

        options = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }

        if handler.response_streaming:
            inner = handler.stream_stream if handler.request_streaming else handler.unary_stream

            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                code = "OK"
                try:
                    result = inner(request, context)
                    if hasattr(result, "__aiter__"):
                        async for response in result:
                            yield response
                    elif inspect.isawaitable(result):
                        await result  # a handler that writes with context.write()
                    else:
                        for response in result:
                            yield response
                    code = _set_code(context)
                except BaseException as exc:
                    code = _code_of(exc, context)
                    raise
                finally:
                    count(code)

            if handler.request_streaming:
                return grpc.stream_stream_rpc_method_handler(streaming, **options)
            return grpc.unary_stream_rpc_method_handler(streaming, **options)

        inner = handler.stream_unary if handler.request_streaming else handler.unary_unary

        async def unary(request: Any, context: Any) -> Any:
            began = time.perf_counter()
            code = "OK"
            try:
                result = inner(request, context)
                response = await result if inspect.isawaitable(result) else result
                code = _set_code(context)
                return response
            except BaseException as exc:
                code = _code_of(exc, context)
                raise
            finally:
                count(code)
                time_it(code, time.perf_counter() - began)

        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(unary, **options)
        return grpc.unary_unary_rpc_method_handler(unary, **options)


def _set_code(context: Any) -> str:
    """The status of a call whose handler returned: OK unless it set another code."""
    code = context.code()
    return "OK" if code is None else str(code.name)


def _code_of(exc: BaseException, context: Any) -> str:
    """The status a call ends with when its handler raised `exc`, as gRPC sends it."""
    code = context.code()
    if code is not None:  # context.abort() (an AbortError), or set_code() before raising
        return str(code.name)
    if isinstance(exc, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return "DEADLINE_EXCEEDED"
        return "CANCELLED"  # the caller left, or the server is stopping
    return "UNKNOWN"  # what gRPC answers for an exception that escapes a handler


def metrics_endpoint(registry: CollectorRegistry, *, token: str | None) -> ASGIApp:
    """The ASGI app serving `registry` in the Prometheus text format (or OpenMetrics, when
    the scraper asks for it) to GET and HEAD. With `token`, a request must carry
    `Authorization: Bearer <token>` (401 otherwise); the comparison takes the same time
    whatever the mismatch."""
    expected = token.encode() if token else None

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _answer(send, 405, b"use GET\n", [(b"allow", b"GET, HEAD")])
            return
        headers = dict(scope["headers"])
        if expected is not None and not _bearer_matches(headers.get(b"authorization"), expected):
            challenge = [(b"www-authenticate", b'Bearer realm="metrics"')]
            await _answer(send, 401, b"a bearer token is required (metrics_token)\n", challenge)
            return
        encoder, content_type = choose_encoder(headers.get(b"accept", b"").decode("latin-1"))
        body = encoder(registry)
        await _answer(
            send,
            200,
            b"" if method == "HEAD" else body,
            [(b"content-type", content_type.encode()), (b"cache-control", b"no-store")],
        )

    return app


def _bearer_matches(header: bytes | None, expected: bytes) -> bool:
    if header is None:
        return False
    scheme, _, value = header.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), expected)


async def _answer(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    if not any(name == b"content-type" for name, _ in headers):
        headers = [*headers, (b"content-type", b"text/plain; charset=utf-8")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
