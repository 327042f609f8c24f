"""The auth interceptor on a real grpc.aio server over mTLS: every mode, real calls, real metadata.

A tiny ReleaseControl servicer of our own stands in for the real one: it calls
`require(action, feature_id)` the way the real servicer must, and records every
change it makes, so a refused call can be shown to have changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from test_auth import issue_cert, make_pki
from test_auth_dfs import AUDIENCE, ISSUER, ISSUER_KEY, OTHER_KEY, _malformed, public_pem

from releasecontrol.errors import ConfigError, ReleaseControlError, status_code_name
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc
from releasecontrol_server.auth.authorize import (
    Action,
    current_principal,
    permits,
    require,
    require_each,
)
from releasecontrol_server.auth.cluster import ClusterAuthenticator
from releasecontrol_server.auth.dfs import DfsAuthenticator, issue_dfs_token
from releasecontrol_server.auth.interceptor import (
    Authenticator,
    AuthInterceptor,
    MtlsOnlyAuthenticator,
    make_authenticator,
)
from releasecontrol_server.auth.principal import AuthContext, Metadata, Principal
from releasecontrol_server.auth.tokens import TokenAuthenticator, create_token
from releasecontrol_server.pki import PkiPaths, issue_client_certificate

DEV = "spiffe://releasecontrol.dev"
OTHER_METHOD = "/test.Other/Ping"


# -- a tiny servicer that authorizes the way the real one must ----------------------------


async def refuse(context: Any, error: ReleaseControlError) -> None:
    await context.abort(getattr(grpc.StatusCode, status_code_name(error)), error.message)


@dataclass
class TinyServicer(pb_grpc.ReleaseControlServicer):
    """Answers with the caller's name; `changes` records every state change it makes."""

    changes: list[str] = field(default_factory=list)
    handler_runs: list[str] = field(default_factory=list)

    async def GetFeature(self, request: pb.GetFeatureRequest, context: Any) -> Any:
        self.handler_runs.append("GetFeature")
        try:
            principal = require(Action.READ, request.feature_id)
        except ReleaseControlError as error:
            return await refuse(context, error)
        await asyncio.sleep(0)  # let concurrent calls interleave
        assert current_principal() is principal
        return pb.GetFeatureResponse(
            feature=pb.Feature(feature_id=request.feature_id, updated_by=principal.name)
        )

    async def ListFeatures(self, request: pb.ListFeaturesRequest, context: Any) -> Any:
        principal = require(Action.READ)
        visible = [
            f for f in ("checkout", "feature-payments") if permits(principal, Action.READ, f)
        ]
        return pb.ListFeaturesResponse(features=[pb.Feature(feature_id=f) for f in visible])

    async def DeployCanary(self, request: pb.DeployCanaryRequest, context: Any) -> Any:
        self.handler_runs.append("DeployCanary")
        try:
            principal = require(Action.DEPLOY_CANARY, request.feature_id)
        except ReleaseControlError as error:
            return await refuse(context, error)
        self.changes.append(f"canary {request.feature_id} {request.version} by {principal.name}")
        return pb.DeployCanaryResponse()

    async def PublishVersion(self, request_iterator: AsyncIterator[Any], context: Any) -> Any:
        self.handler_runs.append("PublishVersion")
        chunks = 0
        header: Any = None
        async for message in request_iterator:
            if header is None:
                header = message.header
                try:
                    require(Action.PUBLISH, header.feature_id)
                except ReleaseControlError as error:
                    return await refuse(context, error)
            else:
                chunks += 1
        self.changes.append(f"publish {header.feature_id} ({chunks} chunks)")
        return pb.PublishVersionResponse()

    async def WatchReleases(
        self, request: pb.WatchReleasesRequest, context: Any
    ) -> AsyncIterator[Any]:
        self.handler_runs.append("WatchReleases")
        try:
            principal = require_each(Action.WATCH, request.feature_ids)
        except ReleaseControlError as error:
            await refuse(context, error)
            return
        for feature_id in request.feature_ids:
            yield pb.WatchReleasesResponse(
                type=pb.WATCH_EVENT_TYPE_SNAPSHOT,
                feature=pb.Feature(feature_id=feature_id, updated_by=principal.name),
            )
        yield pb.WatchReleasesResponse(type=pb.WATCH_EVENT_TYPE_SYNCED)


class OtherService(grpc.GenericRpcHandler):
    """A service that is neither ReleaseControl nor a probe: only admin may call it."""

    def service(self, details: Any) -> Any:
        if details.method != OTHER_METHOD:
            return None

        async def ping(request: bytes, context: Any) -> bytes:
            return b"pong " + current_principal().name.encode()

        return grpc.unary_unary_rpc_method_handler(ping)


# -- a real server over mTLS -------------------------------------------------------------


@dataclass
class Running:
    port: int
    servicer: TinyServicer
    server_ca: bytes

    def channel(
        self, cert: Path | None, key: Path | None, *, token: str | None = None
    ) -> aio.Channel:
        """A TLS channel with this client certificate (or none) and, if given, a bearer token."""
        creds = grpc.ssl_channel_credentials(
            self.server_ca,
            key.read_bytes() if key else None,
            cert.read_bytes() if cert else None,
        )
        if token is not None:
            call_creds = grpc.access_token_call_credentials(token)
            creds = grpc.composite_channel_credentials(creds, call_creds)
        return aio.secure_channel(f"127.0.0.1:{self.port}", creds)


@asynccontextmanager
async def serving(
    authenticator: Authenticator,
    pki: PkiPaths,
    *,
    client_cas: Sequence[Path] = (),
    require_client_auth: bool = True,
) -> AsyncIterator[Running]:
    """A grpc.aio server on 127.0.0.1:0 with the interceptor, the tiny servicer and health."""
    servicer = TinyServicer()
    server = aio.server(interceptors=[AuthInterceptor(authenticator)])
    pb_grpc.add_ReleaseControlServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers((OtherService(),))
    client_ca = b"".join(p.read_bytes() for p in (pki.ca_cert, *client_cas))
    credentials = grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=require_client_auth,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield Running(port, servicer, pki.ca_cert.read_bytes())
    finally:
        await server.stop(None)


async def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call ends with (OK and '' when it succeeds)."""
    try:
        result = call
        if hasattr(result, "__aiter__"):
            async for _ in result:
                pass
        else:
            await result
    except aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def get(channel: aio.Channel, feature_id: str = "checkout") -> Any:
    return pb_grpc.ReleaseControlStub(channel).GetFeature(
        pb.GetFeatureRequest(feature_id=feature_id)
    )


def canary(channel: aio.Channel, feature_id: str = "checkout") -> Any:
    return pb_grpc.ReleaseControlStub(channel).DeployCanary(
        pb.DeployCanaryRequest(feature_id=feature_id, version="1.0.0")
    )


def publish(channel: aio.Channel, feature_id: str = "checkout", chunks: int = 3) -> Any:
    async def messages() -> AsyncIterator[pb.PublishVersionRequest]:
        yield pb.PublishVersionRequest(header=pb.PublishHeader(feature_id=feature_id))
        for i in range(chunks):
            yield pb.PublishVersionRequest(chunk=pb.ArtifactChunk(path="a.js", data=b"x" * i))

    return pb_grpc.ReleaseControlStub(channel).PublishVersion(messages())


def watch(channel: aio.Channel, *feature_ids: str) -> Any:
    return pb_grpc.ReleaseControlStub(channel).WatchReleases(
        pb.WatchReleasesRequest(feature_ids=list(feature_ids))
    )


OK = grpc.StatusCode.OK
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
DENIED = grpc.StatusCode.PERMISSION_DENIED


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def other_pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "other-pki")


@pytest.fixture
def client(pki: PkiPaths) -> tuple[Path, Path]:
    return pki.client_cert, pki.client_key


# -- rpc-token ---------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "tokens.json"


@pytest.fixture
def tokens(store: Path) -> dict[str, str]:
    return {
        "viewer": create_token(store, "ci-viewer", ["viewer"]),
        "releaser": create_token(store, "ci-releaser", ["releaser"]),
        "pay-releaser": create_token(store, "pay-bot", ["releaser"], ["feature-pay*"]),
        "admin": create_token(store, "root", ["admin"]),
    }


class TestRpcToken:
    async def test_a_good_token_passes_as_its_principal(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A known bearer token reaches the servicer as its principal."""
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=tokens["viewer"]) as ch,
        ):
            response = await get(ch)
        assert response.feature.updated_by == "ci-viewer"

    async def test_no_token_is_unauthenticated_and_says_how_to_get_one(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A call with a client certificate but no token is refused before the servicer runs."""
        async with serving(TokenAuthenticator(store), pki) as srv, srv.channel(*client) as ch:
            code, message = await code_of(get(ch))
            assert srv.servicer.handler_runs == []
        assert code is UNAUTHENTICATED
        assert "no credentials" in message and "releasectl token create" in message

    async def test_an_unknown_token_is_refused_and_never_logged(
        self,
        pki: PkiPaths,
        client: tuple[Path, Path],
        store: Path,
        tokens: dict[str, str],
        caplog: pytest.LogCaptureFixture,
    ):
        """An unknown token is UNAUTHENTICATED; the log names method and reason, never the token."""
        forged = "rc_" + "Z" * 43
        caplog.set_level(logging.INFO)
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=forged) as ch,
        ):
            code, message = await code_of(get(ch))
        assert code is UNAUTHENTICATED
        assert forged not in message
        [line] = [r.getMessage() for r in caplog.records if "auth refused" in r.getMessage()]
        assert "code=UNAUTHENTICATED" in line
        assert "method=/releasecontrol.v1.ReleaseControl/GetFeature" in line
        assert f"principal=- cert={DEV}/dev-operator" in line  # who the certificate names
        assert forged not in caplog.text
        for token in tokens.values():
            assert token not in caplog.text

    async def test_a_role_that_lacks_the_action_is_denied_without_a_change(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A viewer's canary deploy is PERMISSION_DENIED by the interceptor; nothing runs."""
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=tokens["viewer"]) as ch,
        ):
            code, message = await code_of(canary(ch))
            assert srv.servicer.handler_runs == []
            assert srv.servicer.changes == []
        assert code is DENIED
        assert "ci-viewer" in message and "deploy_canary" in message
        assert "releaser or admin" in message

    async def test_a_feature_outside_the_scope_is_denied_without_a_change(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A feature-pay* releaser deploys feature-payments but not checkout."""
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=tokens["pay-releaser"]) as ch,
        ):
            assert (await code_of(canary(ch, "feature-payments")))[0] is OK
            code, message = await code_of(canary(ch, "checkout"))
            assert srv.servicer.changes == ["canary feature-payments 1.0.0 by pay-bot"]
        assert code is DENIED
        assert "'checkout'" in message and "feature-pay*" in message

    async def test_a_publish_stream_is_refused_by_role_before_it_is_read(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A viewer's PublishVersion stream is refused before the servicer reads a message."""
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=tokens["viewer"]) as ch,
        ):
            code, _ = await code_of(publish(ch))
            assert srv.servicer.handler_runs == []
        assert code is DENIED

    async def test_a_publish_stream_is_refused_by_scope_after_the_header(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A scoped releaser's publish of another feature is refused once the header names it."""
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=tokens["pay-releaser"]) as ch,
        ):
            denied, _ = await code_of(publish(ch, "checkout"))
            allowed, _ = await code_of(publish(ch, "feature-payments"))
            assert srv.servicer.changes == ["publish feature-payments (3 chunks)"]
        assert denied is DENIED and allowed is OK

    async def test_a_watch_stream_is_authorized_per_feature(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A server-streaming call runs as the caller and refuses features outside its scope."""
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=tokens["pay-releaser"]) as ch,
        ):
            events = [e async for e in watch(ch, "feature-payments")]
            code, _ = await code_of(watch(ch, "feature-payments", "checkout"))
        assert [e.feature.updated_by for e in events[:1]] == ["pay-bot"]
        assert events[-1].type == pb.WATCH_EVENT_TYPE_SYNCED
        assert code is DENIED

    async def test_a_list_shows_only_features_in_scope(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """Without a feature id only the role is checked; the answer is filtered by scope."""
        async with (
            serving(TokenAuthenticator(store), pki) as srv,
            srv.channel(*client, token=tokens["pay-releaser"]) as ch,
        ):
            response = await pb_grpc.ReleaseControlStub(ch).ListFeatures(pb.ListFeaturesRequest())
        assert [f.feature_id for f in response.features] == ["feature-payments"]

    async def test_an_rpc_only_admin_may_call_is_denied_to_others(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """RefreshManifests needs admin: a releaser is denied, an admin reaches the servicer."""
        async with serving(TokenAuthenticator(store), pki) as srv:
            async with srv.channel(*client, token=tokens["releaser"]) as ch:
                stub = pb_grpc.ReleaseControlStub(ch)
                denied, _ = await code_of(stub.RefreshManifests(pb.RefreshManifestsRequest()))
            async with srv.channel(*client, token=tokens["admin"]) as ch:
                stub = pb_grpc.ReleaseControlStub(ch)
                admitted, _ = await code_of(stub.RefreshManifests(pb.RefreshManifestsRequest()))
        assert denied is DENIED
        assert admitted is grpc.StatusCode.UNIMPLEMENTED  # the tiny servicer has none

    async def test_a_token_created_while_serving_works_without_restart(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A token made after the server started is accepted on the next call."""
        async with serving(TokenAuthenticator(store), pki) as srv:
            later = create_token(store, "late-bot", ["viewer"])
            async with srv.channel(*client, token=later) as ch:
                assert (await get(ch)).feature.updated_by == "late-bot"

    async def test_concurrent_callers_never_see_each_other(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """Interleaved calls from different principals each run as their own caller."""
        names = {"viewer": "ci-viewer", "releaser": "ci-releaser", "admin": "root"}
        async with serving(TokenAuthenticator(store), pki) as srv:
            channels = {k: srv.channel(*client, token=tokens[k]) for k in names}
            try:
                calls = [(k, get(channels[k])) for _ in range(10) for k in names]
                results = await asyncio.gather(*(c for _, c in calls))
            finally:
                for ch in channels.values():
                    await ch.close()
        assert [r.feature.updated_by for r in results] == [names[k] for k, _ in calls]


# -- probes and other services -----------------------------------------------------------


class TestUnauthenticatedServices:
    async def test_health_needs_no_credentials(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """The health service answers probes without a token."""
        async with serving(TokenAuthenticator(store), pki) as srv, srv.channel(*client) as ch:
            response = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    async def test_another_service_needs_admin(
        self, pki: PkiPaths, client: tuple[Path, Path], store: Path, tokens: dict[str, str]
    ):
        """A service that is not ReleaseControl nor a probe is authenticated and needs admin."""
        async with serving(TokenAuthenticator(store), pki) as srv:
            async with srv.channel(*client) as ch:
                anonymous, _ = await code_of(ch.unary_unary(OTHER_METHOD)(b""))
            async with srv.channel(*client, token=tokens["releaser"]) as ch:
                releaser, _ = await code_of(ch.unary_unary(OTHER_METHOD)(b""))
            async with srv.channel(*client, token=tokens["admin"]) as ch:
                answer = await ch.unary_unary(OTHER_METHOD)(b"")
        assert anonymous is UNAUTHENTICATED and releaser is DENIED
        assert answer == b"pong root"


# -- trusted-cluster ---------------------------------------------------------------------


@pytest.fixture
def allowlist(tmp_path: Path) -> Path:
    path = tmp_path / "allow.toml"
    path.write_text(
        f'[allow."{DEV}/dev-operator"]\nroles = ["releaser"]\nscopes = ["feature-pay*"]\n'
        f'[allow."{DEV}/ops/*"]\nroles = ["approver"]\n'
    )
    return path


class TestTrustedCluster:
    async def test_an_allow_listed_certificate_passes_with_its_scope(
        self, pki: PkiPaths, client: tuple[Path, Path], allowlist: Path
    ):
        """The SPIFFE ID is the principal; its allow-list roles and scopes apply."""
        async with (
            serving(ClusterAuthenticator(pki.ca_cert, allowlist), pki) as srv,
            srv.channel(*client) as ch,
        ):
            response = await get(ch, "feature-payments")
            assert response.feature.updated_by == f"{DEV}/dev-operator"
            assert (await code_of(canary(ch, "feature-payments")))[0] is OK
            assert (await code_of(canary(ch, "checkout")))[0] is DENIED
            assert len(srv.servicer.changes) == 1

    async def test_a_certificate_from_another_ca_is_refused(
        self, pki: PkiPaths, other_pki: PkiPaths, allowlist: Path
    ):
        """A certificate the TLS layer accepts (a looser client CA) but not from the cluster CA."""
        async with (
            serving(
                ClusterAuthenticator(pki.ca_cert, allowlist), pki, client_cas=[other_pki.ca_cert]
            ) as srv,
            srv.channel(other_pki.client_cert, other_pki.client_key) as ch,
        ):
            code, message = await code_of(get(ch))
        assert code is UNAUTHENTICATED
        assert "cluster CA" in message

    async def test_two_uri_sans_are_refused(self, pki: PkiPaths, allowlist: Path, tmp_path: Path):
        """A certificate naming two identities is refused."""
        cert, key = issue_cert(
            pki, tmp_path / "certs", uris=[f"{DEV}/dev-operator", f"{DEV}/ops/root"]
        )
        async with (
            serving(ClusterAuthenticator(pki.ca_cert, allowlist), pki) as srv,
            srv.channel(cert, key) as ch,
        ):
            code, message = await code_of(get(ch))
        assert code is UNAUTHENTICATED
        assert "2 URI SANs" in message

    async def test_an_id_not_on_the_allow_list_is_denied(
        self, pki: PkiPaths, allowlist: Path, tmp_path: Path
    ):
        """A valid cluster identity without an allow-list entry is PERMISSION_DENIED."""
        cert, key = issue_client_certificate(pki, "stranger", tmp_path / "certs")
        async with (
            serving(ClusterAuthenticator(pki.ca_cert, allowlist), pki) as srv,
            srv.channel(cert, key) as ch,
        ):
            code, message = await code_of(get(ch))
        assert code is DENIED
        assert f"{DEV}/stranger" in message

    async def test_the_allow_list_reloads_without_restart(
        self, pki: PkiPaths, allowlist: Path, tmp_path: Path
    ):
        """Adding an ID to the allow-list file admits it on the next call, same server."""
        cert, key = issue_client_certificate(pki, "newcomer", tmp_path / "certs")
        async with (
            serving(ClusterAuthenticator(pki.ca_cert, allowlist), pki) as srv,
            srv.channel(cert, key) as ch,
        ):
            before, _ = await code_of(get(ch))
            new = allowlist.with_name("allow.toml.new")
            new.write_text(
                allowlist.read_text() + f'[allow."{DEV}/newcomer"]\nroles = ["viewer"]\n'
            )
            os.replace(new, allowlist)
            after = await get(ch)
        assert before is DENIED
        assert after.feature.updated_by == f"{DEV}/newcomer"


# -- dfs ---------------------------------------------------------------------------------


def dfs_token(key: Ed25519PrivateKey = ISSUER_KEY, **overrides: Any) -> str:
    settings: dict[str, Any] = {
        "issuer": ISSUER,
        "audience": AUDIENCE,
        "subject": "deployer@example.org",
        "roles": ["releaser"],
        "scopes": ["feature-pay*"],
        **overrides,
    }
    return issue_dfs_token(key, **settings)


def dfs_authenticator() -> DfsAuthenticator:
    return DfsAuthenticator(issuer=ISSUER, audience=AUDIENCE, public_key=public_pem(ISSUER_KEY))


class TestDfs:
    async def test_a_good_token_passes_with_its_scope(
        self, pki: PkiPaths, client: tuple[Path, Path]
    ):
        """A token from the issuer for this audience is its `sub`, limited to its scopes."""
        async with (
            serving(dfs_authenticator(), pki) as srv,
            srv.channel(*client, token=dfs_token()) as ch,
        ):
            response = await get(ch, "feature-payments")
            assert response.feature.updated_by == "deployer@example.org"
            assert (await code_of(canary(ch, "feature-payments")))[0] is OK
            assert (await code_of(canary(ch, "checkout")))[0] is DENIED

    @pytest.mark.parametrize(
        ("token", "error"),
        [
            (lambda: dfs_token(ttl_seconds=-120), "expired"),
            (lambda: dfs_token(audience="someone-else"), "another audience"),
            (lambda: dfs_token(issuer="https://other.example.org"), "another issuer"),
            (lambda: dfs_token(OTHER_KEY), "signature does not verify"),
            # issue 13 item 6: was INTERNAL (a TypeError on `exp - now`)
            (lambda: _malformed({"exp": "9999999999"}), "'exp' claim must be a number"),
        ],
        ids=["expired", "wrong-audience", "another-issuer", "bad-signature", "exp-a-string"],
    )
    async def test_bad_tokens_are_unauthenticated(
        self, pki: PkiPaths, client: tuple[Path, Path], token: Any, error: str
    ):
        """Each defective token ends the call UNAUTHENTICATED with its reason; nothing runs."""
        presented = token()
        async with (
            serving(dfs_authenticator(), pki) as srv,
            srv.channel(*client, token=presented) as ch,
        ):
            code, message = await code_of(get(ch))
            assert srv.servicer.handler_runs == []
        assert code is UNAUTHENTICATED
        assert error in message
        assert presented not in message


# -- no auth mode ------------------------------------------------------------------------


class TestMtlsOnly:
    async def test_the_certificate_identity_is_admin_and_a_warning_says_so(
        self, pki: PkiPaths, client: tuple[Path, Path], caplog: pytest.LogCaptureFixture
    ):
        """Without an auth mode a client certificate makes its holder admin; a warning says so."""
        caplog.set_level(logging.WARNING, logger="releasecontrol_server.auth.interceptor")
        async with serving(make_authenticator(None), pki) as srv, srv.channel(*client) as ch:
            assert (await get(ch)).feature.updated_by == f"{DEV}/dev-operator"
            assert (await code_of(canary(ch)))[0] is OK
        assert "no auth mode set" in caplog.text and "admin" in caplog.text

    async def test_without_a_certificate_it_is_refused_unless_anonymous_is_allowed(
        self, pki: PkiPaths
    ):
        """A dev server not requiring certificates admits anonymous callers only when told to."""
        for allow, expected in ((False, UNAUTHENTICATED), (True, OK)):
            async with (
                serving(
                    MtlsOnlyAuthenticator(allow_anonymous=allow), pki, require_client_auth=False
                ) as srv,
                srv.channel(None, None) as ch,
            ):
                assert (await code_of(get(ch)))[0] is expected


# -- failures inside the authenticator ---------------------------------------------------


class Exploding:
    mode = "exploding"

    def describe(self) -> str:
        return "raises"

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        raise RuntimeError("secret detail")


class TestFailures:
    async def test_a_crashing_authenticator_fails_closed_as_internal(
        self, pki: PkiPaths, client: tuple[Path, Path], caplog: pytest.LogCaptureFixture
    ):
        """A bug in an authenticator ends the call INTERNAL without its detail; nothing runs."""
        caplog.set_level(logging.ERROR)
        async with serving(Exploding(), pki) as srv, srv.channel(*client) as ch:
            code, message = await code_of(get(ch))
            assert srv.servicer.handler_runs == []
        assert code is grpc.StatusCode.INTERNAL
        assert "secret detail" not in message
        assert "checking credentials" in caplog.text and "secret detail" in caplog.text

    @pytest.mark.parametrize(
        ("mode", "settings", "error"),
        [
            ("rpc-token", {}, "token_store_path"),
            ("trusted-cluster", {}, "cluster_ca_path"),
            ("dfs", {}, "dfs_issuer"),
            ("kerberos", {}, "not known"),
        ],
        ids=["rpc-token-without-store", "cluster-without-files", "dfs-without-issuer", "unknown"],
    )
    def test_make_authenticator_names_the_missing_setting(
        self, mode: str, settings: dict[str, Any], error: str
    ):
        """A mode without its settings stops the server at start, naming the setting."""
        with pytest.raises(ConfigError, match=error):
            make_authenticator(mode, **settings)

    def test_make_authenticator_builds_each_mode(
        self, pki: PkiPaths, store: Path, tokens: dict[str, str], allowlist: Path
    ):
        """Each mode name yields its authenticator."""
        assert make_authenticator("rpc-token", token_store_path=store).mode == "rpc-token"
        assert (
            make_authenticator(
                "trusted-cluster", cluster_ca_path=pki.ca_cert, cluster_allowlist_path=allowlist
            ).mode
            == "trusted-cluster"
        )
        assert (
            make_authenticator(
                "dfs",
                dfs_issuer=ISSUER,
                dfs_audience=AUDIENCE,
                dfs_public_key=public_pem(ISSUER_KEY),
            ).mode
            == "dfs"
        )
        assert make_authenticator(None).mode == "mtls-only"


async def test_each_method_is_guarded_once_and_rebuilt_when_its_handler_changes() -> None:
    """The guarded handler is built on a method's first call and reused; a new servicer
    handler for the method gets a new guard; public services pass through unguarded."""
    from releasecontrol_server.auth.interceptor import AuthInterceptor, MtlsOnlyAuthenticator

    async def behaviour(request: Any, context: Any) -> Any:
        return request

    first = grpc.unary_unary_rpc_method_handler(behaviour)
    second = grpc.unary_unary_rpc_method_handler(behaviour)
    current = first

    class Details:
        def __init__(self, method: str) -> None:
            self.method = method

    async def continuation(details: Any) -> Any:
        return current

    interceptor = AuthInterceptor(MtlsOnlyAuthenticator())
    promote = Details("/releasecontrol.v1.ReleaseControl/Promote")
    guarded = await interceptor.intercept_service(continuation, promote)
    assert guarded is not first and guarded.unary_unary is not behaviour
    assert await interceptor.intercept_service(continuation, promote) is guarded
    current = second
    rebuilt = await interceptor.intercept_service(continuation, promote)
    assert rebuilt is not guarded and rebuilt is not second
    health = Details("/grpc.health.v1.Health/Check")
    assert await interceptor.intercept_service(continuation, health) is second
    assert await interceptor.intercept_service(continuation, health) is second
