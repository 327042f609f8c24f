"""ReleaseControlClient: finding the server, TLS files, and the gRPC layer against a real server.

The server here is a tiny `grpc.server` over mTLS with a throwaway CA, whose
handlers abort with chosen codes or record what they receive; the real
control plane is exercised in tests/integration.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from releasecontrol import errors
from releasecontrol.client import (
    DEFAULT_TARGET,
    ConnectionSettings,
    ReleaseControlClient,
    resolve_connection,
    state_home,
)
from releasecontrol.manifest import load_feature_folder
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

# -- a throwaway PKI -----------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> Pki:
    return make_pki()


def make_pki() -> Pki:
    """A CA, a server pair for 127.0.0.1 and control.test, and a client pair."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test ca", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    # 127.0.0.1 and one made-up name, not "localhost": the override test relies on it.
    server = _certificate(
        "control.test",
        server_key,
        ca,
        ca_key,
        san=[x509.DNSName("control.test"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("test client", client_key, ca, ca_key)
    pem = serialization.Encoding.PEM
    return Pki(
        ca=ca.public_bytes(pem),
        server_cert=server.public_bytes(pem),
        server_key=_key_pem(server_key),
        client_cert=client.public_bytes(pem),
        client_key=_key_pem(client_key),
    )


# -- a tiny real server --------------------------------------------------------


@dataclass
class Recorder(pb_grpc.ReleaseControlServicer):
    """Aborts GetFeature with the code named by feature_id; records everything else."""

    publish_requests: list[pb.PublishVersionRequest] = field(default_factory=list)
    canary_requests: list[pb.DeployCanaryRequest] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    get_feature_calls: int = 0
    status_requests: list[pb.GetStatusRequest] = field(default_factory=list)

    def GetStatus(self, request: pb.GetStatusRequest, context: Any) -> pb.GetStatusResponse:
        """Three features a page at a time; a change lands after the first read's first page."""
        self.status_requests.append(request)
        sequence = 1 if len(self.status_requests) == 1 else 2
        ids = ["a", "b", "c"]
        start = ids.index(request.page_token) + 1 if request.page_token else 0
        page = ids[start : start + (request.page_size or 3)]
        more = start + len(page) < len(ids)
        return pb.GetStatusResponse(
            features=[pb.Feature(feature_id=i, sequence=sequence) for i in page],
            global_sequence=sequence,
            next_page_token=page[-1] if more else "",
        )

    def GetFeature(self, request: pb.GetFeatureRequest, context: Any) -> pb.GetFeatureResponse:
        self.get_feature_calls += 1
        self.metadata.append(dict(context.invocation_metadata()))
        if request.feature_id == "ok":
            return pb.GetFeatureResponse(feature=pb.Feature(feature_id="ok", sequence=7))
        code = getattr(grpc.StatusCode, request.feature_id)
        context.abort(code, f"server says {request.feature_id} for you")
        raise AssertionError("abort raises")

    def DeployCanary(
        self, request: pb.DeployCanaryRequest, context: Any
    ) -> pb.DeployCanaryResponse:
        self.canary_requests.append(request)
        if request.feature_id == "flaky" and len(self.canary_requests) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "going away, try again")
        return pb.DeployCanaryResponse(
            transition=pb.Transition(
                feature_id=request.feature_id, request_id=request.context.request_id
            )
        )

    def PublishVersion(
        self, request_iterator: Iterator[pb.PublishVersionRequest], context: Any
    ) -> pb.PublishVersionResponse:
        self.publish_requests.extend(request_iterator)
        return pb.PublishVersionResponse(manifest_sha256="ab" * 32)

    def WatchReleases(
        self, request: pb.WatchReleasesRequest, context: Any
    ) -> Iterator[pb.WatchReleasesResponse]:
        yield pb.WatchReleasesResponse(
            type=pb.WATCH_EVENT_TYPE_SNAPSHOT, feature=pb.Feature(feature_id="checkout")
        )
        if list(request.feature_ids) == ["broken"]:
            context.abort(grpc.StatusCode.NOT_FOUND, "feature 'broken' does not exist")
        yield pb.WatchReleasesResponse(type=pb.WATCH_EVENT_TYPE_SYNCED)
        while context.is_active():
            time.sleep(0.01)


@dataclass
class FakeServer:
    target: str
    recorder: Recorder
    pki: Pki

    def settings(self, **overrides: Any) -> ConnectionSettings:
        values: dict[str, Any] = {
            "target": self.target,
            "ca_pem": self.pki.ca,
            "cert_pem": self.pki.client_cert,
            "key_pem": self.pki.client_key,
        }
        values.update(overrides)
        return ConnectionSettings(**values)


@pytest.fixture
def fake_server(pki: Pki) -> Iterator[FakeServer]:
    recorder = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_ReleaseControlServicer_to_server(recorder, server)
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key, pki.server_cert)], root_certificates=pki.ca, require_client_auth=True
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        yield FakeServer(f"127.0.0.1:{port}", recorder, pki)
    finally:
        server.stop(grace=None).wait()


# A short retry window: an UNAVAILABLE without the server's ErrorInfo (the fake server's
# aborts, a refused connection) is retried for the whole of it (test_client_retry_loop.py).
RETRY_SECONDS = 0.5


@pytest.fixture
def client(fake_server: FakeServer) -> Iterator[ReleaseControlClient]:
    with ReleaseControlClient(
        fake_server.settings(), timeout_seconds=10, retry_seconds=RETRY_SECONDS
    ) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# -- finding the server ----------------------------------------------------------


def write_pki(home: Path, pki: Pki, *, client_pair: bool = True) -> None:
    (home / "pki").mkdir(parents=True, exist_ok=True)
    (home / "pki" / "ca.pem").write_bytes(pki.ca)
    if client_pair:
        (home / "pki" / "client.pem").write_bytes(pki.client_cert)
        (home / "pki" / "client-key.pem").write_bytes(pki.client_key)


def write_endpoints(home: Path, grpc_target: str) -> None:
    (home / "run").mkdir(parents=True, exist_ok=True)
    (home / "run" / "endpoints.json").write_text(
        json.dumps({"grpc": grpc_target, "origin_url": "http://127.0.0.1:4100/", "pid": 1})
    )


class TestStateHome:
    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            pytest.param({}, "work/.releasecontrol", id="default-in-cwd"),
            pytest.param({"RELEASECONTROL_HOME": "/srv/rc"}, "/srv/rc", id="absolute-env"),
            pytest.param({"RELEASECONTROL_HOME": "state"}, "work/state", id="relative-env"),
            pytest.param({"RELEASECONTROL_HOME": "  "}, "work/.releasecontrol", id="blank-env"),
        ],
    )
    def test_state_home(self, tmp_path: Path, environ: dict[str, str], expected: str) -> None:
        """RELEASECONTROL_HOME wins (relative to the cwd), else .releasecontrol in the cwd."""
        home = state_home(environ, cwd=tmp_path / "work")
        assert home == tmp_path / expected  # an absolute `expected` replaces tmp_path


class TestResolveTarget:
    @pytest.mark.parametrize(
        ("server", "env_addr", "endpoints", "expected"),
        [
            pytest.param("arg:1", "env:2", "file:3", "arg:1", id="argument-wins"),
            pytest.param(None, "env:2", "file:3", "env:2", id="env-beats-endpoints"),
            pytest.param(None, None, "file:3", "file:3", id="endpoints-file"),
            pytest.param(None, None, None, DEFAULT_TARGET, id="default"),
            pytest.param("", "", None, DEFAULT_TARGET, id="empty-values-ignored"),
        ],
    )
    def test_precedence(
        self,
        tmp_path: Path,
        pki: Pki,
        server: str | None,
        env_addr: str | None,
        endpoints: str | None,
        expected: str,
    ) -> None:
        """The target is --server, else RELEASECONTROL_ADDR, else endpoints.json, else default."""
        write_pki(tmp_path, pki)
        if endpoints is not None:
            write_endpoints(tmp_path, endpoints)
        environ = {} if env_addr is None else {"RELEASECONTROL_ADDR": env_addr}
        settings = resolve_connection(server=server, home=tmp_path, environ=environ)
        assert settings.target == expected

    def test_home_comes_from_the_environment_when_not_given(self, tmp_path: Path, pki: Pki) -> None:
        """Without `home`, RELEASECONTROL_HOME names the state directory read for endpoints."""
        write_pki(tmp_path, pki)
        write_endpoints(tmp_path, "from-home:9")
        settings = resolve_connection(environ={"RELEASECONTROL_HOME": str(tmp_path)})
        assert settings.target == "from-home:9"

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param("{not json", id="malformed"),
            pytest.param("[1, 2]", id="not-an-object"),
            pytest.param('{"pid": 1}', id="no-grpc-key"),
        ],
    )
    def test_a_broken_endpoints_file_is_named(self, tmp_path: Path, pki: Pki, content: str) -> None:
        """An unusable endpoints.json is a ConfigError naming the file and the fix."""
        write_pki(tmp_path, pki)
        (tmp_path / "run").mkdir()
        (tmp_path / "run" / "endpoints.json").write_text(content)
        with pytest.raises(errors.ConfigError, match=r"endpoints\.json.*--server"):
            resolve_connection(home=tmp_path, environ={})


class TestResolveTls:
    def test_files_come_from_the_state_directory(self, tmp_path: Path, pki: Pki) -> None:
        """Without TLS variables the CA and client pair are read from <home>/pki."""
        write_pki(tmp_path, pki)
        settings = resolve_connection(home=tmp_path, environ={})
        assert (settings.ca_pem, settings.cert_pem, settings.key_pem) == (
            pki.ca,
            pki.client_cert,
            pki.client_key,
        )
        assert settings.server_name is None and settings.token is None

    def test_environment_paths_win_over_the_state_directory(self, tmp_path: Path, pki: Pki) -> None:
        """RELEASECONTROL_TLS_CA/_CERT/_KEY name the files to use instead of <home>/pki."""
        write_pki(tmp_path / "home", pki)
        other = tmp_path / "other"
        other.mkdir()
        for name, data in [("ca", b"CA"), ("cert", b"CERT"), ("key", b"KEY")]:
            (other / name).write_bytes(data)
        environ = {
            "RELEASECONTROL_TLS_CA": str(other / "ca"),
            "RELEASECONTROL_TLS_CERT": str(other / "cert"),
            "RELEASECONTROL_TLS_KEY": str(other / "key"),
            "RELEASECONTROL_TLS_SERVER_NAME": "control.test",
        }
        settings = resolve_connection(home=tmp_path / "home", environ=environ)
        assert (settings.ca_pem, settings.cert_pem, settings.key_pem) == (b"CA", b"CERT", b"KEY")
        assert settings.server_name == "control.test"

    def test_the_client_pair_is_optional_in_the_state_directory(
        self, tmp_path: Path, pki: Pki
    ) -> None:
        """With only ca.pem in <home>/pki the client connects without a certificate."""
        write_pki(tmp_path, pki, client_pair=False)
        settings = resolve_connection(home=tmp_path, environ={})
        assert settings.cert_pem is None and settings.key_pem is None

    def test_a_missing_ca_says_what_is_missing_and_the_fix(self, tmp_path: Path) -> None:
        """No CA file is a ConfigError naming the path, `releasectl dev` and the variable."""
        with pytest.raises(errors.ConfigError) as caught:
            resolve_connection(home=tmp_path, environ={})
        message = caught.value.message
        assert str(tmp_path / "pki" / "ca.pem") in message
        assert "start `releasectl dev` first, or set RELEASECONTROL_TLS_CA" in message
        assert "\n" not in message

    @pytest.mark.parametrize(
        ("environ", "text"),
        [
            pytest.param(
                {"RELEASECONTROL_TLS_CA": "/nonexistent/ca.pem"},
                r"/nonexistent/ca\.pem \(from RELEASECONTROL_TLS_CA\)",
                id="ca-path-from-env-missing",
            ),
            pytest.param(
                {"RELEASECONTROL_TLS_CERT": "/x/client.pem"},
                "RELEASECONTROL_TLS_CERT is set but RELEASECONTROL_TLS_KEY is not",
                id="cert-without-key",
            ),
            pytest.param(
                {"RELEASECONTROL_TLS_KEY": "/x/key.pem"},
                "RELEASECONTROL_TLS_KEY is set but RELEASECONTROL_TLS_CERT is not",
                id="key-without-cert",
            ),
            pytest.param(
                {"RELEASECONTROL_TLS_CERT": "/nope/c.pem", "RELEASECONTROL_TLS_KEY": "/nope/k.pem"},
                r"/nope/c\.pem.*RELEASECONTROL_TLS_CERT",
                id="cert-path-missing",
            ),
            pytest.param(
                {"RELEASECONTROL_TOKEN_FILE": "/nope/token"},
                "RELEASECONTROL_TOKEN_FILE",
                id="token-file-missing",
            ),
        ],
    )
    def test_bad_settings_name_the_variable(
        self, tmp_path: Path, pki: Pki, environ: dict[str, str], text: str
    ) -> None:
        """A TLS or token variable that points nowhere is a ConfigError naming it."""
        write_pki(tmp_path, pki)
        with pytest.raises(errors.ConfigError, match=text):
            resolve_connection(home=tmp_path, environ=environ)


class TestResolveToken:
    @pytest.mark.parametrize(
        ("token", "file_content", "expected"),
        [
            pytest.param("t0k", None, "t0k", id="env-token"),
            pytest.param(None, "from-file\n", "from-file", id="token-file-stripped"),
            pytest.param("t0k", "from-file", "t0k", id="env-token-wins"),
            pytest.param(None, None, None, id="none"),
        ],
    )
    def test_token_sources(
        self,
        tmp_path: Path,
        pki: Pki,
        token: str | None,
        file_content: str | None,
        expected: str | None,
    ) -> None:
        """RELEASECONTROL_TOKEN, else the contents of RELEASECONTROL_TOKEN_FILE, is the token."""
        write_pki(tmp_path, pki)
        environ: dict[str, str] = {}
        if token is not None:
            environ["RELEASECONTROL_TOKEN"] = token
        if file_content is not None:
            (tmp_path / "token").write_text(file_content)
            environ["RELEASECONTROL_TOKEN_FILE"] = str(tmp_path / "token")
        assert resolve_connection(home=tmp_path, environ=environ).token == expected

    def test_an_empty_token_file_is_refused(self, tmp_path: Path, pki: Pki) -> None:
        """An empty token file is a ConfigError rather than an anonymous call."""
        write_pki(tmp_path, pki)
        (tmp_path / "token").write_text("\n")
        with pytest.raises(errors.ConfigError, match="empty"):
            resolve_connection(
                home=tmp_path, environ={"RELEASECONTROL_TOKEN_FILE": str(tmp_path / "token")}
            )

    def test_settings_repr_shows_no_secrets(self, pki: Pki) -> None:
        """The settings' repr never includes the private key or the token."""
        settings = ConnectionSettings(
            "h:1", pki.ca, pki.client_cert, pki.client_key, token="s3cret-token"
        )
        text = repr(settings)
        assert "s3cret-token" not in text and "PRIVATE KEY" not in text
        assert "h:1" in text


# -- the gRPC layer ---------------------------------------------------------------


ERROR_MAPPING = [
    pytest.param("INVALID_ARGUMENT", errors.InvalidArgument, id="invalid-argument"),
    pytest.param("NOT_FOUND", errors.NotFound, id="not-found"),
    pytest.param("ALREADY_EXISTS", errors.AlreadyExists, id="already-exists"),
    pytest.param("FAILED_PRECONDITION", errors.FailedPrecondition, id="failed-precondition"),
    pytest.param("ABORTED", errors.StaleSequence, id="aborted-is-stale-sequence"),
    pytest.param("UNAUTHENTICATED", errors.Unauthenticated, id="unauthenticated"),
    pytest.param("PERMISSION_DENIED", errors.PermissionDenied, id="permission-denied"),
    pytest.param("UNAVAILABLE", errors.Unavailable, id="unavailable"),
    pytest.param("DEADLINE_EXCEEDED", errors.Unavailable, id="deadline-is-unavailable"),
    pytest.param("INTERNAL", errors.Internal, id="internal"),
    pytest.param("DATA_LOSS", errors.Internal, id="data-loss-is-internal"),
    pytest.param("UNKNOWN", errors.Internal, id="unknown-is-internal"),
    pytest.param("RESOURCE_EXHAUSTED", errors.Internal, id="resource-exhausted-is-internal"),
]


class TestErrorMapping:
    @pytest.mark.parametrize(("code", "error"), ERROR_MAPPING)
    def test_each_status_code_becomes_its_error_class(
        self,
        client: ReleaseControlClient,
        code: str,
        error: type[errors.ReleaseControlError],
    ) -> None:
        """A server abort with a status code raises the matching class with the server's message."""
        with pytest.raises(error) as caught:
            client.get_feature(code)
        assert f"server says {code} for you" in caught.value.message
        assert not isinstance(caught.value, grpc.RpcError)
        assert caught.value.__cause__ is None and caught.value.__suppress_context__

    def test_unavailable_names_the_target_and_the_fix(
        self, client: ReleaseControlClient, fake_server: FakeServer
    ) -> None:
        """UNAVAILABLE without the server's ErrorInfo says which server could not be reached
        and how to start one."""
        with pytest.raises(errors.Unavailable) as caught:
            client.get_feature("UNAVAILABLE")
        assert fake_server.target in caught.value.message
        assert "start it with `releasectl dev`" in caught.value.message

    def test_unimplemented_is_internal_with_the_code_named(
        self, client: ReleaseControlClient
    ) -> None:
        """An RPC the server does not implement is Internal, naming UNIMPLEMENTED."""
        with pytest.raises(errors.Internal, match="UNIMPLEMENTED"):
            client.list_transitions()

    def test_no_server_listening_is_unavailable(self, pki: Pki) -> None:
        """A connection refused is Unavailable naming the target and `releasectl dev`."""
        target = f"127.0.0.1:{free_port()}"
        settings = ConnectionSettings(target, pki.ca, pki.client_cert, pki.client_key)
        with (
            ReleaseControlClient(
                settings, timeout_seconds=10, retry_seconds=RETRY_SECONDS
            ) as client,
            pytest.raises(errors.Unavailable) as caught,
        ):
            client.get_feature("ok")
        assert target in caught.value.message
        assert "is the server running? start it with `releasectl dev`" in caught.value.message

    def test_a_server_outside_the_trusted_ca_is_refused(
        self, fake_server: FakeServer, tmp_path: Path
    ) -> None:
        """A server whose certificate another CA issued fails the handshake: Unavailable."""
        other_key = ec.generate_private_key(ec.SECP256R1())
        other_ca = _certificate("other ca", other_key, None, other_key, ca=True)
        settings = fake_server.settings(ca_pem=other_ca.public_bytes(serialization.Encoding.PEM))
        with (
            ReleaseControlClient(
                settings, timeout_seconds=10, retry_seconds=RETRY_SECONDS
            ) as client,
            pytest.raises(errors.Unavailable, match=fake_server.target),
        ):
            client.get_feature("ok")


class TestCalls:
    def test_a_call_returns_the_proto_response(self, client: ReleaseControlClient) -> None:
        """A successful call returns the server's response message as is."""
        response = client.get_feature("ok")
        assert isinstance(response, pb.GetFeatureResponse)
        assert (response.feature.feature_id, response.feature.sequence) == ("ok", 7)

    def test_server_name_overrides_the_name_checked(self, fake_server: FakeServer) -> None:
        """server_name lets a target whose host is not in the certificate connect."""
        port = fake_server.target.rsplit(":", 1)[1]
        settings = fake_server.settings(target=f"localhost:{port}", server_name="control.test")
        with ReleaseControlClient(settings, timeout_seconds=10) as client:
            assert client.get_feature("ok").feature.feature_id == "ok"

    def test_the_token_is_sent_as_bearer_metadata(self, fake_server: FakeServer) -> None:
        """A token travels as `authorization: Bearer <token>` on every call."""
        with ReleaseControlClient(fake_server.settings(token="t0k"), timeout_seconds=10) as c:
            c.get_feature("ok")
        assert fake_server.recorder.metadata[-1]["authorization"] == "Bearer t0k"

    def test_no_token_sends_no_authorization(self, fake_server: FakeServer) -> None:
        """Without a token no authorization metadata is sent."""
        with ReleaseControlClient(fake_server.settings(), timeout_seconds=10) as c:
            c.get_feature("ok")
        assert "authorization" not in fake_server.recorder.metadata[-1]

    def test_request_ids_are_generated_per_call_and_kept_when_given(
        self, client: ReleaseControlClient
    ) -> None:
        """Each change without a request_id gets a fresh one; a given one is sent unchanged."""
        first = client.deploy_canary("checkout", "1.0.0").transition.request_id
        second = client.deploy_canary("checkout", "1.0.0").transition.request_id
        given = client.deploy_canary("checkout", "1.0.0", request_id="req-1")
        assert first and second and first != second
        assert given.transition.request_id == "req-1"

    def test_context_fields_reach_the_server(
        self, client: ReleaseControlClient, fake_server: FakeServer
    ) -> None:
        """actor, reason, ticket, expected_sequence and soak are sent; unset ones stay unset."""
        client.deploy_canary(
            "checkout",
            "1.3.0",
            soak_seconds=1800,
            actor="alice",
            reason="why",
            ticket="CHG-1",
            expected_sequence=0,
        )
        client.deploy_canary("checkout", "1.3.0")
        full, bare = fake_server.recorder.canary_requests
        assert (full.soak_seconds, full.context.actor, full.context.reason) == (
            1800,
            "alice",
            "why",
        )
        assert full.context.ticket == "CHG-1"
        assert full.context.HasField("expected_sequence") and full.context.expected_sequence == 0
        assert not bare.HasField("soak_seconds")
        assert not bare.context.HasField("expected_sequence")

    def test_unavailable_is_retried_with_the_same_request_id(
        self, client: ReleaseControlClient, fake_server: FakeServer
    ) -> None:
        """A change answered UNAVAILABLE (no ErrorInfo) is sent again with the same request_id."""
        response = client.deploy_canary("flaky", "1.0.0")
        ids = [r.context.request_id for r in fake_server.recorder.canary_requests]
        assert len(ids) == 2 and ids[0] == ids[1] == response.transition.request_id

    def test_an_unknown_channel_is_refused_before_sending(
        self, client: ReleaseControlClient
    ) -> None:
        """set_channel with a channel other than stable/canary is InvalidArgument, locally."""
        with pytest.raises(errors.InvalidArgument, match="'stable' or 'canary'"):
            client.set_channel("checkout", "1.0.0", "beta")  # type: ignore[arg-type]


# -- publish ------------------------------------------------------------------------


def make_feature(root: Path, files: dict[str, bytes]) -> Path:
    folder = root / "features" / "checkout"
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    manifest = {
        "id": "checkout",
        "version": "1.2.0",
        "entry": next(iter(files)),
        "routes": ["/checkout"],
        "compat": {"host": "^2.0.0"},
        "assets": [{"path": p} for p in files],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


FILES = {
    "index.js": os.urandom(10_000),
    "styles/main.css": b"body { color: red }\n" * 300,
    "empty.txt": b"",
    "img/logo.svg": b"<svg/>",
}


class TestPublish:
    def test_header_first_then_each_file_in_chunks(
        self, client: ReleaseControlClient, fake_server: FakeServer, tmp_path: Path
    ) -> None:
        """The server receives the header, then chunks whose concatenation per path is each file."""
        source = load_feature_folder(make_feature(tmp_path, FILES), feature_id="checkout")
        progress: list[tuple[int, int]] = []
        response = client.publish(
            source,
            channel="canary",
            soak_seconds=1800,
            actor="alice",
            reason="ship it",
            ticket="CHG-9",
            expected_sequence=2,
            chunk_size=4096,
            on_progress=lambda sent, total: progress.append((sent, total)),
        )
        assert response.manifest_sha256 == "ab" * 32

        first, *rest = fake_server.recorder.publish_requests
        assert first.WhichOneof("kind") == "header"
        header = first.header
        assert header.feature_id == "checkout"
        assert json.loads(header.manifest_json) == source.manifest
        assert all(a["sha256"] and "size" in a for a in json.loads(header.manifest_json)["assets"])
        assert header.channel == pb.CHANNEL_CANARY and header.soak_seconds == 1800
        ctx = header.context
        assert (ctx.actor, ctx.reason, ctx.ticket, ctx.expected_sequence) == (
            "alice",
            "ship it",
            "CHG-9",
            2,
        )
        assert ctx.request_id

        assert all(r.WhichOneof("kind") == "chunk" for r in rest)
        assert all(0 < len(r.chunk.data) <= 4096 for r in rest)
        order: list[str] = []
        received: dict[str, bytes] = {}
        for r in rest:
            if not order or order[-1] != r.chunk.path:
                assert r.chunk.path not in order, "chunks of one asset arrive together"
                order.append(r.chunk.path)
            received[r.chunk.path] = received.get(r.chunk.path, b"") + r.chunk.data
        assert order == [p for p, data in FILES.items() if data]  # manifest order
        assert received == {p: data for p, data in FILES.items() if data}

        total = sum(len(d) for d in FILES.values())
        assert progress[-1] == (total, total)
        assert [s for s, _ in progress] == sorted(s for s, _ in progress)

    def test_header_defaults_to_stable_without_soak(
        self, client: ReleaseControlClient, fake_server: FakeServer, tmp_path: Path
    ) -> None:
        """Without channel and soak the header asks for stable and leaves the soak unset."""
        source = load_feature_folder(make_feature(tmp_path, {"index.js": b"x"}))
        client.publish(source)
        header = fake_server.recorder.publish_requests[0].header
        assert header.channel == pb.CHANNEL_STABLE
        assert not header.HasField("soak_seconds")

    def test_a_file_gone_before_sending_is_named(
        self, client: ReleaseControlClient, tmp_path: Path
    ) -> None:
        """A file that vanished after loading fails with InvalidArgument naming it, no traceback."""
        folder = make_feature(tmp_path, {"index.js": b"x", "gone.js": b"y"})
        source = load_feature_folder(folder)
        (folder / "gone.js").unlink()
        with pytest.raises(errors.InvalidArgument, match=r"cannot read asset 'gone\.js'"):
            client.publish(source)

    def test_publish_raw_sends_bytes_as_given(
        self, client: ReleaseControlClient, fake_server: FakeServer
    ) -> None:
        """publish_raw sends the manifest bytes untouched and each file's bytes in chunks."""
        data = os.urandom(5000)
        client.publish_raw("checkout", b"{not json", {"a.js": data}, chunk_size=1024)
        first, *rest = fake_server.recorder.publish_requests
        assert first.header.manifest_json == b"{not json"
        assert b"".join(r.chunk.data for r in rest) == data

    @pytest.mark.parametrize("size", [0, -1, 4 * 1024 * 1024], ids=["zero", "negative", "4MiB"])
    def test_a_bad_chunk_size_is_refused(
        self, client: ReleaseControlClient, tmp_path: Path, size: int
    ) -> None:
        """A chunk size outside 1 byte..3 MiB is InvalidArgument before anything is sent."""
        source = load_feature_folder(make_feature(tmp_path, {"index.js": b"x"}))
        with pytest.raises(errors.InvalidArgument, match="chunk_size"):
            client.publish(source, chunk_size=size)


# -- watch ----------------------------------------------------------------------------


class TestWatch:
    def test_events_arrive_in_order_and_cancel_ends_quietly(
        self, client: ReleaseControlClient
    ) -> None:
        """The stream yields the server's events; cancel() then ends iteration without error."""
        stream = client.watch()
        assert next(stream).type == pb.WATCH_EVENT_TYPE_SNAPSHOT
        assert next(stream).type == pb.WATCH_EVENT_TYPE_SYNCED
        stream.cancel()
        assert list(stream) == []

    def test_cancel_from_another_thread_unblocks_the_reader(
        self, client: ReleaseControlClient
    ) -> None:
        """A reader blocked waiting for a change stops when another thread cancels."""
        with client.watch() as stream:
            events = [next(stream), next(stream)]
            timer = threading.Timer(0.2, stream.cancel)
            timer.start()
            events += list(stream)
            timer.join()
        assert [e.type for e in events] == [
            pb.WATCH_EVENT_TYPE_SNAPSHOT,
            pb.WATCH_EVENT_TYPE_SYNCED,
        ]

    def test_a_failure_mid_stream_raises_the_mapped_error(
        self, client: ReleaseControlClient
    ) -> None:
        """An abort after some events raises the matching ReleaseControlError while iterating."""
        stream = client.watch(["broken"])
        assert next(stream).type == pb.WATCH_EVENT_TYPE_SNAPSHOT
        with pytest.raises(errors.NotFound, match="'broken' does not exist"):
            next(stream)


def test_get_status_reads_every_page_again_when_a_change_lands_between_them(
    client: ReleaseControlClient, fake_server: FakeServer
) -> None:
    status = client.get_status(page_size=2)
    assert [(f.feature_id, f.sequence) for f in status.features] == [("a", 2), ("b", 2), ("c", 2)]
    assert status.global_sequence == 2
    assert status.next_page_token == ""
    tokens = [r.page_token for r in fake_server.recorder.status_requests]
    assert tokens == ["", "b", "", "b"]  # the first read saw two sequences: read again


@pytest.mark.parametrize(
    "error",
    [
        errors.SoakNotOver("canary 1.1.0 is still soaking: 59m left", seconds_left=3540),
        errors.InvalidArgument("soak must be 0s to 30d", field="soak_seconds"),
        errors.InvalidArgument("no field named"),
        errors.FailedPrecondition("already stable"),
        errors.StaleSequence("expected 3, is 4"),
        errors.NotFound("no feature 'x'"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_an_error_crosses_the_wire_as_the_same_class_with_its_attributes(
    error: errors.ReleaseControlError,
) -> None:
    """What the server puts in the status details is enough to raise the same error again."""
    reason, metadata = errors.error_details(error)
    again = errors.from_grpc_code(errors.status_code_name(error), error.message, reason, metadata)
    assert type(again) is type(error)
    assert again.message == error.message
    assert vars(again) == vars(error)
    # A server that sends no details still gets the class of the code.
    plain = errors.from_grpc_code(errors.status_code_name(error), error.message)
    assert isinstance(plain, STATUS_BASES[type(error)])


STATUS_BASES: dict[type[errors.ReleaseControlError], type[errors.ReleaseControlError]] = {
    errors.SoakNotOver: errors.FailedPrecondition,
    errors.InvalidArgument: errors.InvalidArgument,
    errors.FailedPrecondition: errors.FailedPrecondition,
    errors.StaleSequence: errors.StaleSequence,
    errors.NotFound: errors.NotFound,
}
