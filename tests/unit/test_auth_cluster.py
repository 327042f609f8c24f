"""trusted-cluster auth: SPIFFE IDs from cluster-CA certificates, the allow-list, reloads."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID
from test_auth import auth_context, issue_cert, make_pki

from releasecontrol.errors import ConfigError, PermissionDenied, Unauthenticated, Unavailable
from releasecontrol_server.auth.cluster import (
    AllowList,
    ClusterAuthenticator,
    parse_spiffe_id,
)
from releasecontrol_server.auth.principal import Role
from releasecontrol_server.pki import PkiPaths, issue_client_certificate

DEV = "spiffe://releasecontrol.dev"

ALLOW = f"""
[allow."{DEV}/dev-operator"]
roles = ["releaser"]
scopes = ["feature-pay*"]

[allow."{DEV}/ops/*"]
roles = ["approver"]

[allow."{DEV}/ops/admins/*"]
roles = ["admin"]
"""


def replace(path: Path, text: str) -> None:
    """Replace a file atomically, as config management does (new inode)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture
def pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "cluster-pki")


@pytest.fixture
def other_pki(tmp_path: Path) -> PkiPaths:
    return make_pki(tmp_path / "other-pki")


@pytest.fixture
def allowlist(tmp_path: Path) -> Path:
    path = tmp_path / "allow.toml"
    path.write_text(ALLOW)
    return path


@pytest.fixture
def auth(pki: PkiPaths, allowlist: Path) -> ClusterAuthenticator:
    return ClusterAuthenticator(pki.ca_cert, allowlist)


class TestGoodCallers:
    def test_an_allow_listed_spiffe_id_gets_its_roles_and_scopes(
        self, auth: ClusterAuthenticator, pki: PkiPaths
    ):
        """A cluster-CA certificate whose SPIFFE ID is on the allow-list is that principal."""
        principal = auth.authenticate((), auth_context(pki.client_cert))
        assert principal.name == f"{DEV}/dev-operator"
        assert principal.roles == {Role.RELEASER}
        assert principal.scopes == ("feature-pay*",)

    @pytest.mark.parametrize(
        ("workload", "role"),
        [("ops/alice", Role.APPROVER), ("ops/admins/root", Role.ADMIN)],
        ids=["shorter-pattern", "longest-pattern-wins"],
    )
    def test_patterns_match_and_the_longest_wins(
        self, auth: ClusterAuthenticator, pki: PkiPaths, tmp_path: Path, workload: str, role: Role
    ):
        """A glob pattern admits IDs under it; of several matching patterns the longest applies."""
        cert, _ = issue_client_certificate(pki, workload, tmp_path / "certs")
        assert auth.authenticate((), auth_context(cert)).roles == {role}

    def test_an_exact_entry_beats_a_pattern(self, pki: PkiPaths, tmp_path: Path):
        """An exact SPIFFE ID entry wins over a longer matching pattern."""
        path = tmp_path / "exact.toml"
        path.write_text(
            f'[allow."{DEV}/team/bot"]\nroles = ["viewer"]\n'
            f'[allow."{DEV}/team/b*"]\nroles = ["admin"]\n'
        )
        cert, _ = issue_client_certificate(pki, "team/bot", tmp_path / "certs")
        auth = ClusterAuthenticator(pki.ca_cert, path)
        assert auth.authenticate((), auth_context(cert)).roles == {Role.VIEWER}

    def test_a_ca_bundle_trusts_each_of_its_cas(
        self, pki: PkiPaths, other_pki: PkiPaths, allowlist: Path, tmp_path: Path
    ):
        """A cluster CA file with two CAs (a rotation) accepts certificates from both."""
        bundle = tmp_path / "bundle.pem"
        bundle.write_bytes(pki.ca_cert.read_bytes() + other_pki.ca_cert.read_bytes())
        auth = ClusterAuthenticator(bundle, allowlist)
        for paths in (pki, other_pki):
            assert auth.authenticate((), auth_context(paths.client_cert)).name.endswith(
                "/dev-operator"
            )

    def test_a_json_allow_list_works_too(self, auth: ClusterAuthenticator, tmp_path: Path):
        """An allow-list named *.json is read as JSON with the same structure."""
        path = tmp_path / "allow.json"
        path.write_text(f'{{"allow": {{"{DEV}/x": {{"roles": ["viewer"], "scopes": ["a*"]}}}}}}')
        [rule] = AllowList.load(path).rules
        assert rule.roles == {Role.VIEWER} and rule.scopes == ("a*",)


class TestRefusals:
    def test_no_certificate_is_refused(self, auth: ClusterAuthenticator):
        """A call without a client certificate is Unauthenticated."""
        with pytest.raises(Unauthenticated, match="no client certificate"):
            auth.authenticate((), auth_context(None))

    def test_a_certificate_from_another_ca_is_refused(
        self, auth: ClusterAuthenticator, other_pki: PkiPaths
    ):
        """A certificate the cluster CA did not issue is refused, even with an allowed ID."""
        with pytest.raises(Unauthenticated, match="cluster CA"):
            auth.authenticate((), auth_context(other_pki.client_cert))

    @pytest.mark.parametrize(
        ("uris", "error"),
        [
            ([f"{DEV}/dev-operator", f"{DEV}/ops/alice"], "2 URI SANs"),
            ([f"{DEV}/dev-operator", "https://example.org/"], "2 URI SANs"),
            ([], "0 URI SANs"),
            (["https://releasecontrol.dev/dev-operator"], "not a SPIFFE ID"),
            (["spiffe://releasecontrol.dev"], "not a SPIFFE ID"),
            (["spiffe://Upper.Dev/x"], "not a SPIFFE ID"),
            (["spiffe://releasecontrol.dev/a/../b"], "not a SPIFFE ID"),
        ],
        ids=[
            "two-spiffe-ids",
            "spiffe-id-and-another-uri",
            "no-uri-san",
            "https-uri",
            "no-path",
            "uppercase-trust-domain",
            "dot-dot-segment",
        ],
    )
    def test_a_certificate_without_exactly_one_spiffe_id_is_refused(
        self, auth: ClusterAuthenticator, pki: PkiPaths, tmp_path: Path, uris: list[str], error: str
    ):
        """Only a certificate whose one URI SAN is a SPIFFE ID names a caller."""
        cert, _ = issue_cert(pki, tmp_path / "certs", uris=uris)
        with pytest.raises(Unauthenticated, match=error):
            auth.authenticate((), auth_context(cert))

    def test_a_spiffe_id_not_on_the_allow_list_is_denied(
        self, auth: ClusterAuthenticator, pki: PkiPaths, tmp_path: Path
    ):
        """A valid cluster identity that is not allow-listed is PermissionDenied, naming it."""
        cert, _ = issue_client_certificate(pki, "intruder", tmp_path / "certs")
        with pytest.raises(PermissionDenied, match=f"{DEV}/intruder is not on"):
            auth.authenticate((), auth_context(cert))

    def test_an_expired_certificate_is_refused(self, pki: PkiPaths, allowlist: Path):
        """The cluster CA check includes validity at the current time."""
        later = ClusterAuthenticator(
            pki.ca_cert, allowlist, clock=lambda: datetime.now(UTC) + timedelta(days=400)
        )
        with pytest.raises(Unauthenticated, match="expired"):
            later.authenticate((), auth_context(pki.client_cert))

    def test_a_certificate_not_for_client_auth_is_refused(
        self, auth: ClusterAuthenticator, pki: PkiPaths, tmp_path: Path
    ):
        """A server-only certificate from the cluster CA does not identify a client."""
        cert, _ = issue_cert(
            pki,
            tmp_path / "certs",
            uris=[f"{DEV}/dev-operator"],
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
        )
        with pytest.raises(Unauthenticated):
            auth.authenticate((), auth_context(cert))


class TestReload:
    def test_an_allow_list_edit_applies_without_restart(
        self, auth: ClusterAuthenticator, pki: PkiPaths, allowlist: Path, tmp_path: Path
    ):
        """Adding and removing an ID in the allow-list file applies on the next call."""
        cert, _ = issue_client_certificate(pki, "newcomer", tmp_path / "certs")
        with pytest.raises(PermissionDenied):
            auth.authenticate((), auth_context(cert))
        replace(allowlist, ALLOW + f'[allow."{DEV}/newcomer"]\nroles = ["viewer"]\n')
        assert auth.authenticate((), auth_context(cert)).roles == {Role.VIEWER}
        # An in-place edit (same inode) is seen too.
        allowlist.write_text(ALLOW)
        with pytest.raises(PermissionDenied):
            auth.authenticate((), auth_context(cert))

    def test_a_ca_rotation_applies_without_restart(
        self, pki: PkiPaths, other_pki: PkiPaths, allowlist: Path, tmp_path: Path
    ):
        """Replacing the cluster CA file switches which certificates are accepted."""
        ca = tmp_path / "cluster-ca.pem"
        ca.write_bytes(pki.ca_cert.read_bytes())
        auth = ClusterAuthenticator(ca, allowlist)
        auth.authenticate((), auth_context(pki.client_cert))
        replace(ca, other_pki.ca_cert.read_text())
        auth.authenticate((), auth_context(other_pki.client_cert))
        with pytest.raises(Unauthenticated):
            auth.authenticate((), auth_context(pki.client_cert))

    def test_a_broken_allow_list_fails_closed_until_fixed(
        self,
        auth: ClusterAuthenticator,
        pki: PkiPaths,
        allowlist: Path,
        caplog: pytest.LogCaptureFixture,
    ):
        """An allow-list that turns invalid or vanishes refuses everyone and logs why."""
        ctx = auth_context(pki.client_cert)
        replace(allowlist, "[allow\nbroken")
        with pytest.raises(Unavailable), caplog.at_level(logging.ERROR):
            auth.authenticate((), ctx)
        assert "auth file unusable" in caplog.text
        allowlist.unlink()
        with pytest.raises(Unavailable):
            auth.authenticate((), ctx)
        replace(allowlist, ALLOW)
        assert auth.authenticate((), ctx).roles == {Role.RELEASER}


class TestConfiguration:
    @pytest.mark.parametrize(
        ("content", "error"),
        [
            ("[allow\n", "not valid"),
            ('roles = ["admin"]', "only an 'allow' table"),
            (f'[allow."{DEV}/x"]\nscopes = ["*"]', "with 'roles'"),
            (f'[allow."{DEV}/x"]\nroles = ["root"]', "unknown role 'root'"),
            (f'[allow."{DEV}/x"]\nroles = ["admin"]\nrole = "x"', r"unknown keys \['role'\]"),
            (f'[allow."{DEV}/x"]\nroles = ["admin"]\nscopes = []', "scopes is empty"),
            ('[allow."spiffe://*/x"]\nroles = ["admin"]', "trust domain is literal"),
            ('[allow."spiffe://prod*/x"]\nroles = ["admin"]', "trust domain is literal"),
            ('[allow."https://example.org/x"]\nroles = ["admin"]', "not a SPIFFE ID"),
        ],
        ids=[
            "not-toml",
            "no-allow-table",
            "no-roles",
            "unknown-role",
            "unknown-key",
            "empty-scopes",
            "glob-trust-domain",
            "glob-in-trust-domain-prefix",
            "not-spiffe",
        ],
    )
    def test_a_bad_allow_list_is_refused_at_start(
        self, pki: PkiPaths, tmp_path: Path, content: str, error: str
    ):
        """A malformed allow-list stops the server at start with the reason."""
        path = tmp_path / "allow.toml"
        path.write_text(content)
        with pytest.raises(ConfigError, match=error):
            ClusterAuthenticator(pki.ca_cert, path)

    def test_missing_files_are_refused_at_start(self, pki: PkiPaths, tmp_path: Path):
        """A missing CA or allow-list file stops the server at start, naming the setting."""
        with pytest.raises(ConfigError, match="cluster_allowlist_path"):
            ClusterAuthenticator(pki.ca_cert, tmp_path / "none.toml")
        allow = tmp_path / "allow.toml"
        allow.write_text(ALLOW)
        with pytest.raises(ConfigError, match="cluster_ca_path"):
            ClusterAuthenticator(tmp_path / "none.pem", allow)
        (tmp_path / "empty.pem").write_text("nothing here")
        with pytest.raises(ConfigError, match="no PEM certificate"):
            ClusterAuthenticator(tmp_path / "empty.pem", allow)

    def test_spiffe_ids_parse(self):
        """A well-formed SPIFFE ID is returned unchanged."""
        assert parse_spiffe_id(f"{DEV}/ns/ci/sa/bot") == f"{DEV}/ns/ci/sa/bot"
