"""The real server in each auth mode: who gets in, what each role may do, what is recorded."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningServer, make_feature, start_server
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient, resolve_connection
from releasecontrol.manifest import load_feature_folder
from releasecontrol_server.auth.dfs import issue_dfs_token
from releasecontrol_server.auth.tokens import create_token
from releasecontrol_server.pki import ensure_dev_pki, issue_client_certificate

pytestmark = pytest.mark.integration


def client_with(server: RunningServer, **changes: object) -> ReleaseControlClient:
    settings = resolve_connection(server=server.grpc, home=server.home, environ={})
    return ReleaseControlClient(dataclasses.replace(settings, **changes))  # type: ignore[arg-type]


def publish(client: ReleaseControlClient, tmp_path: Path, feature_id: str, version: str) -> None:
    folder = make_feature(tmp_path / f"{feature_id}-{version}", feature_id, version)
    client.publish(load_feature_folder(folder, feature_id=feature_id))


class TestRpcToken:
    @pytest.fixture
    def server(self, tmp_path: Path) -> Iterator[RunningServer]:
        home = tmp_path / "home"
        # The server refuses to start in rpc-token mode without a token store.
        create_token(home / "auth" / "tokens.json", "bootstrap", ["viewer"])
        running = start_server(home, RELEASECONTROL_AUTH_MODE="rpc-token")
        yield running
        running.stop()

    def token(self, server: RunningServer, principal: str, *roles: str, scopes=None) -> str:  # type: ignore[no-untyped-def]
        return create_token(server.home / "auth" / "tokens.json", principal, roles, scopes)

    def test_each_role_may_do_exactly_its_actions(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """Without a token nothing works; viewers read, releasers publish, approvers promote."""
        with pytest.raises(errors.Unauthenticated):
            server.client().get_status()

        releaser = client_with(server, token=self.token(server, "ci-bot", "releaser"))
        publish(releaser, tmp_path, "checkout", "1.0.0")
        publish(releaser, tmp_path, "checkout", "1.1.0")
        releaser.deploy_canary("checkout", "1.0.0", soak_seconds=0)
        with pytest.raises(errors.PermissionDenied, match="approver"):
            releaser.promote("checkout", "1.0.0")

        viewer = client_with(server, token=self.token(server, "auditor", "viewer"))
        assert viewer.get_status().features[0].feature_id == "checkout"
        with pytest.raises(errors.PermissionDenied, match="auditor"):
            viewer.deploy_canary("checkout", "1.0.0", soak_seconds=0)

        approver = client_with(server, token=self.token(server, "alice", "approver"))
        response = approver.promote("checkout", "1.0.0")
        assert response.transition.actor == "alice"  # the principal is the default actor
        history = viewer.list_transitions(feature_id="checkout").transitions
        assert [t.actor for t in history] == ["alice", "ci-bot", "ci-bot", "ci-bot"]

    def test_a_role_limited_to_some_features_stops_at_them(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """A releaser scoped to feature-pay* publishes feature-payments but not checkout."""
        scoped = client_with(
            server, token=self.token(server, "pay-team", "releaser", scopes=["feature-pay*"])
        )
        publish(scoped, tmp_path, "feature-payments", "1.0.0")
        with pytest.raises(errors.PermissionDenied, match="checkout"):
            publish(scoped, tmp_path, "checkout", "1.0.0")
        admin = client_with(server, token=self.token(server, "root", "admin"))
        publish(admin, tmp_path, "checkout", "1.0.0")
        # Reads are filtered to the scope too.
        assert [f.feature_id for f in scoped.get_status().features] == ["feature-payments"]

    def test_a_wrong_token_is_refused_without_echoing_it(self, server: RunningServer) -> None:
        """An unknown bearer token is UNAUTHENTICATED and the message does not contain it."""
        secret = "rc_this-is-not-a-real-token"
        with pytest.raises(errors.Unauthenticated) as caught:
            client_with(server, token=secret).get_status()
        assert secret not in caught.value.message
        assert secret not in server.log()


class TestTrustedCluster:
    def test_only_allow_listed_spiffe_ids_get_in(self, tmp_path: Path) -> None:
        """A cluster certificate on the allow-list gets its roles; another identity is denied."""
        home = tmp_path / "home"
        paths = ensure_dev_pki(home / "pki")
        (home / "auth").mkdir(parents=True)
        (home / "auth" / "cluster-allowlist.toml").write_text(
            '[allow."spiffe://releasecontrol.dev/deployer"]\nroles = ["releaser"]\n'
        )
        deployer_cert, deployer_key = issue_client_certificate(paths, "deployer", tmp_path / "c")
        stranger_cert, stranger_key = issue_client_certificate(paths, "stranger", tmp_path / "c")
        server = start_server(home, RELEASECONTROL_AUTH_MODE="trusted-cluster")
        try:
            deployer = client_with(
                server, cert_pem=deployer_cert.read_bytes(), key_pem=deployer_key.read_bytes()
            )
            publish(deployer, tmp_path, "checkout", "1.0.0")
            with pytest.raises(errors.PermissionDenied):
                deployer.promote("checkout", "1.0.0")
            stranger = client_with(
                server, cert_pem=stranger_cert.read_bytes(), key_pem=stranger_key.read_bytes()
            )
            with pytest.raises(errors.PermissionDenied, match="stranger"):
                stranger.get_status()
        finally:
            server.stop()


class TestDelegatedTokens:
    def test_tokens_from_the_issuer_pass_and_others_do_not(self, tmp_path: Path) -> None:
        """A fresh EdDSA token from the configured issuer works; another issuer's key does not."""
        issuer_key = Ed25519PrivateKey.generate()
        public = issuer_key.public_key().public_bytes(
            Encoding.PEM, PublicFormat.SubjectPublicKeyInfo
        )
        home = tmp_path / "home"
        server = start_server(
            home,
            RELEASECONTROL_AUTH_MODE="dfs",
            RELEASECONTROL_DFS_ISSUER="https://issuer.test",
            RELEASECONTROL_DFS_PUBLIC_KEY=public.decode(),
        )
        try:
            good = issue_dfs_token(
                issuer_key,
                issuer="https://issuer.test",
                audience="releasecontrol",
                subject="deploy-pipeline",
                roles=["releaser"],
            )
            client = client_with(server, token=good)
            publish(client, tmp_path, "checkout", "1.0.0")
            assert client.list_transitions().transitions[0].actor == "deploy-pipeline"

            forged = issue_dfs_token(
                Ed25519PrivateKey.generate(),
                issuer="https://issuer.test",
                audience="releasecontrol",
                subject="deploy-pipeline",
                roles=["admin"],
            )
            with pytest.raises(errors.Unauthenticated, match="signature"):
                client_with(server, token=forged).get_status()
            wrong_audience = issue_dfs_token(
                issuer_key,
                issuer="https://issuer.test",
                audience="someone-else",
                subject="deploy-pipeline",
                roles=["admin"],
            )
            with pytest.raises(errors.Unauthenticated, match="audience"):
                client_with(server, token=wrong_audience).get_status()
        finally:
            server.stop()
