"""ReleaseControlClient's one retry loop, against tiny real gRPC servers over mTLS.

What is retried: an UNAVAILABLE that never reached the server's code (no
`releasecontrol.v1` ErrorInfo: connection refused, the process gone) and the
server's own "retry" UNAVAILABLE (reason UNAVAILABLE), for `retry_seconds`.
What is not: OriginPending (the change committed), any other code, a watch.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2  # type: ignore[import-untyped]
from grpc_status import rpc_status  # type: ignore[import-untyped]
from test_client import FILES, Pki, free_port, make_feature, make_pki

from releasecontrol import errors
from releasecontrol.client import DEFAULT_RETRY_SECONDS, ConnectionSettings, ReleaseControlClient
from releasecontrol.manifest import load_feature_folder
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

ORIGIN_PENDING_MESSAGE = (
    "the change to 'checkout' committed as sequence 4, but writing it to the CDN origin "
    "failed; the server keeps retrying, and `releasectl release status` shows the pending writes"
)
SHUTTING_DOWN_MESSAGE = "the server is shutting down; retry"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def abort_as_server(context: Any, code: grpc.StatusCode, message: str, reason: str) -> None:
    """Abort the way the ReleaseControl server does: a google.rpc.Status in the trailers
    holding an ErrorInfo of domain releasecontrol.v1 with `reason`."""
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    status.details.add().Pack(
        error_details_pb2.ErrorInfo(reason=reason, domain=errors.ERROR_DOMAIN)
    )
    context.abort_with_status(rpc_status.to_status(status))


@dataclass
class Scripted(pb_grpc.ReleaseControlServicer):
    """Answers as the request asks; counts every call that reached it, by method."""

    calls: Counter[str] = field(default_factory=Counter)
    promote_requests: list[pb.PromoteRequest] = field(default_factory=list)
    publish_streams: list[list[pb.PublishVersionRequest]] = field(default_factory=list)
    shutting_down_for: int = 0
    """How many GetFeature("shutting-down") calls answer "shutting down" before one succeeds."""

    def GetFeature(self, request: pb.GetFeatureRequest, context: Any) -> pb.GetFeatureResponse:
        self.calls["GetFeature"] += 1
        if request.feature_id == "shutting-down" and self.calls["GetFeature"] <= (
            self.shutting_down_for
        ):
            abort_as_server(
                context, grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN_MESSAGE, "UNAVAILABLE"
            )
        if request.feature_id == "other-reason":
            abort_as_server(context, grpc.StatusCode.UNAVAILABLE, "not ours to retry", "NEW")
        if request.feature_id.isupper():  # a status code name: abort with it, no ErrorInfo
            context.abort(getattr(grpc.StatusCode, request.feature_id), "server says no")
        return pb.GetFeatureResponse(feature=pb.Feature(feature_id=request.feature_id))

    def Promote(self, request: pb.PromoteRequest, context: Any) -> pb.PromoteResponse:
        self.calls["Promote"] += 1
        self.promote_requests.append(request)
        if request.feature_id == "origin-pending":
            abort_as_server(
                context, grpc.StatusCode.UNAVAILABLE, ORIGIN_PENDING_MESSAGE, errors.ORIGIN_PENDING
            )
        return pb.PromoteResponse(
            transition=pb.Transition(
                feature_id=request.feature_id, request_id=request.context.request_id
            )
        )

    def PublishVersion(
        self, request_iterator: Iterator[pb.PublishVersionRequest], context: Any
    ) -> pb.PublishVersionResponse:
        self.calls["PublishVersion"] += 1
        self.publish_streams.append(list(request_iterator))
        if len(self.publish_streams) == 1:  # the whole stream arrived; then the server went away
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        return pb.PublishVersionResponse(manifest_sha256="cd" * 32)

    def WatchReleases(
        self, request: pb.WatchReleasesRequest, context: Any
    ) -> Iterator[pb.WatchReleasesResponse]:
        self.calls["WatchReleases"] += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
        yield pb.WatchReleasesResponse()  # never reached: abort raises


def serve(pki: Pki, servicer: Scripted, port: int = 0) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ReleaseControlServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)], root_certificates=pki.ca, require_client_auth=True
    )
    bound = server.add_secure_port(f"127.0.0.1:{port}", credentials)
    server.start()
    return server, bound


def settings(pki: Pki, port: int) -> ConnectionSettings:
    return ConnectionSettings(f"127.0.0.1:{port}", pki.ca, pki.client_cert, pki.client_key)


@dataclass
class Running:
    servicer: Scripted
    port: int


@pytest.fixture
def running(pki: Pki) -> Iterator[Running]:
    servicer = Scripted()
    server, port = serve(pki, servicer)
    try:
        yield Running(servicer, port)
    finally:
        server.stop(grace=None).wait()


def test_the_default_window_covers_a_server_restart(pki: Pki) -> None:
    """By default a call keeps trying for 5 s: a restart takes 1.3-2.6 s."""
    client = ReleaseControlClient(settings(pki, free_port()))
    assert client.retry_seconds == DEFAULT_RETRY_SECONDS == 5.0
    client.close()


def test_origin_pending_reaches_the_caller_with_the_servers_message_unretried(
    pki: Pki, running: Running
) -> None:
    """A change that committed but is not on the origin is OriginPending, sent once."""
    with ReleaseControlClient(settings(pki, running.port), retry_seconds=5) as client:
        started = time.monotonic()
        with pytest.raises(errors.OriginPending) as caught:
            client.promote("origin-pending", "1.1.0")
    assert caught.value.message == ORIGIN_PENDING_MESSAGE  # not "cannot reach ..."
    assert running.servicer.calls["Promote"] == 1
    assert time.monotonic() - started < 1.0


def test_the_servers_own_unavailable_is_retried_until_it_succeeds(
    pki: Pki, running: Running
) -> None:
    """ "Shutting down; retry" (reason UNAVAILABLE) is sent again until it succeeds."""
    running.servicer.shutting_down_for = 2
    with ReleaseControlClient(settings(pki, running.port), retry_seconds=5) as client:
        assert client.get_feature("shutting-down").feature.feature_id == "shutting-down"
    assert running.servicer.calls["GetFeature"] == 3


def test_the_servers_own_unavailable_keeps_its_message_when_the_window_ends(
    pki: Pki, running: Running
) -> None:
    """When the server keeps saying "shutting down", the caller reads that, not "cannot reach"."""
    running.servicer.shutting_down_for = 1000
    with (
        ReleaseControlClient(settings(pki, running.port), retry_seconds=0.5) as client,
        pytest.raises(errors.Unavailable) as caught,
    ):
        client.get_feature("shutting-down")
    assert type(caught.value) is errors.Unavailable
    assert caught.value.message == SHUTTING_DOWN_MESSAGE
    assert running.servicer.calls["GetFeature"] > 1


def test_a_bare_unavailable_from_a_connected_server_backs_off(pki: Pki, running: Running) -> None:
    """UNAVAILABLE without ErrorInfo (a proxy, an interceptor) while the channel is connected is
    retried with the backoff, not in a tight loop: ~0, 0.1, 0.3, 0.7, 1.0 s in a 1 s window."""
    with ReleaseControlClient(settings(pki, running.port), retry_seconds=1.0) as client:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable, match="cannot reach"):
            client.get_feature("UNAVAILABLE")
        assert 0.9 <= time.monotonic() - started < 2.0
    assert 3 <= running.servicer.calls["GetFeature"] <= 6


@pytest.mark.parametrize(
    ("feature_id", "error"),
    [
        pytest.param("FAILED_PRECONDITION", errors.FailedPrecondition, id="failed-precondition"),
        pytest.param("INTERNAL", errors.Internal, id="internal"),
        pytest.param("ABORTED", errors.StaleSequence, id="aborted"),
        pytest.param("RESOURCE_EXHAUSTED", errors.Internal, id="resource-exhausted"),
        pytest.param("other-reason", errors.Unavailable, id="unavailable-other-reason"),
    ],
)
def test_other_errors_are_not_retried(
    pki: Pki, running: Running, feature_id: str, error: type[errors.ReleaseControlError]
) -> None:
    """Any other code, or an UNAVAILABLE with a reason of ours other than UNAVAILABLE, is
    raised after one attempt."""
    with (
        ReleaseControlClient(settings(pki, running.port), retry_seconds=5) as client,
        pytest.raises(error),
    ):
        client.get_feature(feature_id)
    assert running.servicer.calls["GetFeature"] == 1


def test_a_transport_failure_is_retried_until_the_server_appears(pki: Pki) -> None:
    """A change sent while nothing listens succeeds once a server starts on the port, and the
    server sees it once, with its one request_id."""
    port = free_port()
    servicer = Scripted()
    servers: list[grpc.Server] = []
    starter = threading.Timer(1.0, lambda: servers.append(serve(pki, servicer, port)[0]))
    started = time.monotonic()
    starter.start()
    try:
        with ReleaseControlClient(settings(pki, port), retry_seconds=5) as client:
            response = client.promote("checkout", "1.1.0", reason="while it restarts")
            elapsed = time.monotonic() - started
            again = client.get_feature("checkout")
    finally:
        starter.join()
        for server in servers:
            server.stop(grace=None).wait()
    assert 1.0 <= elapsed < 4.0
    assert again.feature.feature_id == "checkout"
    assert servicer.calls["Promote"] == 1
    assert response.transition.request_id == servicer.promote_requests[0].context.request_id
    assert response.transition.request_id  # generated once for the call, kept by every attempt


def test_a_server_that_never_appears_fails_in_about_the_window(pki: Pki) -> None:
    """Nothing listening: the call gives up after retry_seconds with the one-line "cannot reach"."""
    target = settings(pki, free_port())
    with ReleaseControlClient(target, timeout_seconds=30, retry_seconds=1.0) as client:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable) as caught:
            client.get_status()
        elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 2.5
    message = caught.value.message
    assert message.startswith(f"cannot reach the ReleaseControl server at {target.target} (")
    assert message.endswith("is the server running? start it with `releasectl dev`")
    assert "\n" not in message


def test_the_call_timeout_bounds_the_retries(pki: Pki) -> None:
    """A timeout shorter than the window ends the call at the timeout."""
    with ReleaseControlClient(
        settings(pki, free_port()), timeout_seconds=0.6, retry_seconds=30
    ) as client:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable, match="cannot reach"):
            client.get_feature("ok")
        assert time.monotonic() - started < 1.5


def test_retry_seconds_zero_tries_once(pki: Pki) -> None:
    """retry_seconds=0 turns the retry off: a refused connection fails at once."""
    with ReleaseControlClient(settings(pki, free_port()), retry_seconds=0) as client:
        started = time.monotonic()
        with pytest.raises(errors.Unavailable, match="cannot reach"):
            client.get_feature("ok")
        assert time.monotonic() - started < 0.5


def test_a_negative_window_is_refused(pki: Pki) -> None:
    with pytest.raises(errors.InvalidArgument, match="retry_seconds"):
        ReleaseControlClient(settings(pki, free_port()), retry_seconds=-1)


def test_a_publish_stream_is_sent_again_whole_with_the_same_request_id(
    pki: Pki, running: Running, tmp_path: Path
) -> None:
    """PublishVersion failing as the server goes away is re-sent from a new stream: the same
    header (one request_id) and every chunk again."""
    source = load_feature_folder(make_feature(tmp_path, FILES), feature_id="checkout")
    with ReleaseControlClient(settings(pki, running.port), retry_seconds=5) as client:
        response = client.publish(source, chunk_size=4096)
    assert response.manifest_sha256 == "cd" * 32
    first, second = running.servicer.publish_streams
    assert first == second
    assert first[0].header.context.request_id
    assert b"".join(r.chunk.data for r in first[1:]) == b"".join(FILES.values())


def test_a_watch_is_not_retried(pki: Pki, running: Running) -> None:
    """WatchReleases is outside the loop: its UNAVAILABLE is raised while iterating."""
    with ReleaseControlClient(settings(pki, running.port), retry_seconds=5) as client:
        stream = client.watch()
        with pytest.raises(errors.Unavailable, match="cannot reach"):
            next(stream)
    assert running.servicer.calls["WatchReleases"] == 1
