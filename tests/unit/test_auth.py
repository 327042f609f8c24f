"""Roles, scopes and the one authorization decision; and the PKI helpers the auth tests share.

The other `test_auth_*.py` files import `make_pki`, `issue_cert` and
`auth_context` from here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from releasecontrol.errors import PermissionDenied, Unauthenticated
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol_server.auth.authorize import (
    RPC_ACTIONS,
    Action,
    acting_as,
    action_for_method,
    authorize,
    current_caller,
    current_principal,
    decide,
    permits,
    require,
    require_each,
)
from releasecontrol_server.auth.principal import (
    Principal,
    Role,
    parse_roles,
    parse_scopes,
    validate_principal_name,
)
from releasecontrol_server.pki import PkiPaths, ensure_dev_pki

# -- shared helpers ----------------------------------------------------------------------


def make_pki(directory: Path) -> PkiPaths:
    """A fresh dev PKI (CA, server, client certificate) in `directory`."""
    return ensure_dev_pki(directory)


def issue_cert(
    paths: PkiPaths,
    out: Path,
    *,
    uris: list[str],
    cn: str = "caller",
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> tuple[Path, Path]:
    """A client certificate signed by the CA in `paths` with exactly these URI SANs."""
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(paths.ca_key.read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(minutes=5))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    out.mkdir(parents=True, exist_ok=True)
    slug = f"{cn}-{len(list(out.iterdir()))}"
    cert_path, key_path = out / f"{slug}.pem", out / f"{slug}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def auth_context(cert_path: Path | None) -> dict[str, list[bytes]]:
    """What `ServicerContext.auth_context()` holds for a TLS peer with this certificate."""
    if cert_path is None:
        return {"transport_security_type": [b"ssl"]}
    return {"transport_security_type": [b"ssl"], "x509_pem_cert": [cert_path.read_bytes()]}


def principal(*roles: Role, scopes: tuple[str, ...] = ("*",), name: str = "alice") -> Principal:
    return Principal(name, frozenset(roles), scopes)


# -- roles -------------------------------------------------------------------------------

# The contract's table, written out independently of ROLE_ACTIONS:
# viewer (read, watch), releaser (publish, canary), approver (promote, rollback,
# fallback), admin (everything); and issue 14's four eyes: `release approve` needs
# the approver role.
CONTRACT = {
    Role.VIEWER: {"read", "watch"},
    Role.RELEASER: {"read", "watch", "publish", "deploy_canary"},
    Role.APPROVER: {"read", "watch", "promote", "rollback", "set_channel", "approve"},
    Role.ADMIN: {a.value for a in Action},
}


class TestRoles:
    @pytest.mark.parametrize(
        ("role", "action"),
        [(r, a) for r in Role for a in Action],
        ids=[f"{r.value}-{a.value}" for r in Role for a in Action],
    )
    def test_each_role_grants_exactly_the_contracts_actions(self, role: Role, action: Action):
        """A role allows an action exactly when the contract's role table lists it."""
        assert permits(principal(role), action, "checkout") == (action.value in CONTRACT[role])

    def test_roles_add_up(self):
        """A principal with two roles may do what either role allows."""
        both = principal(Role.RELEASER, Role.APPROVER)
        assert permits(both, Action.PUBLISH, "checkout")
        assert permits(both, Action.PROMOTE, "checkout")
        assert not permits(both, Action.REFRESH_MANIFESTS, "checkout")

    def test_no_role_allows_nothing(self):
        """A principal without roles is refused even reading."""
        assert not permits(principal(), Action.READ, "checkout")

    @pytest.mark.parametrize(
        ("values", "error"),
        [
            (["viewer", "wizard"], "unknown role 'wizard'"),
            ([], "roles is empty"),
            ("admin", "must be a list"),
            (None, "must be a list"),
        ],
        ids=["unknown-role", "empty", "a-string-not-a-list", "missing"],
    )
    def test_bad_role_lists_are_refused_with_the_valid_names(self, values: object, error: str):
        """Role lists from files and tokens are checked and the message lists the valid roles."""
        with pytest.raises(ValueError, match=error):
            parse_roles(values)

    def test_role_names_parse(self):
        """Role names parse to Roles."""
        assert parse_roles(["admin", "viewer"]) == {Role.ADMIN, Role.VIEWER}


# -- scopes ------------------------------------------------------------------------------


class TestScopes:
    @pytest.mark.parametrize(
        ("scopes", "feature", "allowed"),
        [
            (("feature-pay*",), "feature-payments", True),
            (("feature-pay*",), "feature-pay", True),
            (("feature-pay*",), "checkout", False),
            (("feature-pay*",), "feature-dashboard", False),
            (("feature-pay*", "checkout"), "checkout", True),
            (("*",), "anything", True),
            (("feature-?",), "feature-a", True),
            (("feature-?",), "feature-ab", False),
        ],
        ids=[
            "pay-glob-allows-feature-payments",
            "pay-glob-allows-its-prefix",
            "pay-glob-refuses-checkout",
            "pay-glob-refuses-dashboard",
            "second-scope-allows-checkout",
            "star-allows-every-feature",
            "question-mark-one-char",
            "question-mark-not-two",
        ],
    )
    def test_scopes_limit_the_features_roles_apply_to(
        self, scopes: tuple[str, ...], feature: str, allowed: bool
    ):
        """A feature is in scope exactly when one of the principal's patterns matches it."""
        assert permits(principal(Role.ADMIN, scopes=scopes), Action.READ, feature) is allowed

    def test_no_feature_checks_only_the_role(self):
        """Without a feature (lists, the remote index) a scoped principal passes on its role."""
        scoped = principal(Role.VIEWER, scopes=("feature-pay*",))
        assert permits(scoped, Action.READ)
        assert not permits(scoped, Action.PUBLISH)

    @pytest.mark.parametrize(
        "values",
        [[], ["Feature-Pay*"], ["feature pay"], ["[a-z]*"], [""], "feature-*"],
        ids=["empty", "uppercase", "space", "brackets", "empty-pattern", "string-not-list"],
    )
    def test_bad_scopes_are_refused(self, values: object):
        """Scopes are lowercase feature-id patterns with * and ?; anything else is an error."""
        with pytest.raises(ValueError):
            parse_scopes(values)

    def test_missing_scopes_mean_every_feature(self):
        """Leaving scopes out (None) is every feature."""
        assert parse_scopes(None) == ("*",)


class TestPrincipal:
    @pytest.mark.parametrize(
        "name",
        ["", "two words", "tab\tname", "x" * 257, "new\nline"],
        ids=["empty", "space", "tab", "too-long", "newline"],
    )
    def test_unusable_names_are_refused(self, name: str):
        """A principal name goes into audit records and logs: printable, no spaces, bounded."""
        with pytest.raises(ValueError):
            validate_principal_name(name)
        with pytest.raises(ValueError):
            Principal(name, frozenset({Role.VIEWER}))

    def test_roles_must_be_role_values(self):
        """A Principal refuses role strings that were not parsed."""
        with pytest.raises(ValueError):
            Principal("alice", frozenset({"admin"}))  # type: ignore[arg-type]

    def test_spiffe_ids_are_valid_names(self):
        """SPIFFE IDs and e-mail-like subjects are valid principal names."""
        assert validate_principal_name("spiffe://example.org/ns/ci") == "spiffe://example.org/ns/ci"
        assert validate_principal_name("user:alice@example.org")


# -- the decision ------------------------------------------------------------------------


class TestAuthorize:
    def test_a_missing_role_names_principal_action_feature_and_the_role_needed(self):
        """The refusal says who, what, on which feature, and which role would allow it."""
        with pytest.raises(PermissionDenied) as info:
            authorize(principal(Role.VIEWER, name="ci-bot"), Action.PUBLISH, "checkout")
        message = info.value.message
        for part in ("ci-bot", "viewer", "publish", "'checkout'", "releaser or admin"):
            assert part in message

    def test_an_out_of_scope_feature_names_the_scopes(self):
        """The refusal for a feature outside the scopes names the patterns and the feature."""
        with pytest.raises(PermissionDenied) as info:
            authorize(
                principal(Role.RELEASER, scopes=("feature-pay*",)), Action.PUBLISH, "checkout"
            )
        message = info.value.message
        assert "feature-pay*" in message
        assert "'checkout'" in message
        assert "releaser or admin" in message

    def test_an_allowed_action_returns(self):
        """An allowed action returns None and reports allowed."""
        scoped = principal(Role.RELEASER, scopes=("feature-pay*",))
        assert authorize(scoped, Action.DEPLOY_CANARY, "feature-payments") is None
        assert decide(scoped, Action.DEPLOY_CANARY, "feature-payments").allowed

    def test_a_refusal_is_logged_as_one_structured_line(self, caplog: pytest.LogCaptureFixture):
        """A refusal logs the principal, method, action, feature and reason."""
        caplog.set_level(logging.WARNING, logger="releasecontrol_server.auth.authorize")
        with (
            acting_as(principal(Role.VIEWER, name="bob"), "/releasecontrol.v1.ReleaseControl/X"),
            pytest.raises(PermissionDenied),
        ):
            require(Action.PROMOTE, "checkout")
        [record] = caplog.records
        line = record.getMessage()
        assert "code=PERMISSION_DENIED" in line
        assert "method=/releasecontrol.v1.ReleaseControl/X" in line
        assert "principal=bob" in line
        assert "action=promote" in line
        assert "feature=checkout" in line


class TestRpcActions:
    def test_every_rpc_of_the_service_has_an_action(self):
        """RPC_ACTIONS covers exactly the RPCs of releasecontrol.v1.ReleaseControl."""
        service = pb.DESCRIPTOR.services_by_name["ReleaseControl"]
        assert set(RPC_ACTIONS) == {m.name for m in service.methods}

    @pytest.mark.parametrize(
        ("rpc", "action"),
        [
            ("ListFeatures", Action.READ),
            ("GetFeature", Action.READ),
            ("GetReleaseIndex", Action.READ),
            ("GetStatus", Action.READ),
            ("ListTransitions", Action.READ),
            ("WatchReleases", Action.WATCH),
            ("PublishVersion", Action.PUBLISH),
            ("DeployCanary", Action.DEPLOY_CANARY),
            ("Promote", Action.PROMOTE),
            ("Rollback", Action.ROLLBACK),
            ("SetChannel", Action.SET_CHANNEL),
            ("RefreshManifests", Action.REFRESH_MANIFESTS),
        ],
        ids=lambda v: str(v),
    )
    def test_each_rpc_maps_to_its_action(self, rpc: str, action: Action):
        """Each RPC performs the action the contract's roles talk about."""
        assert action_for_method(f"/releasecontrol.v1.ReleaseControl/{rpc}") is action

    @pytest.mark.parametrize(
        "method",
        [
            "/releasecontrol.v1.ReleaseControl/NewRpcWithoutARule",
            "/releasecontrol.v2.ReleaseControl/GetFeature",
            "/other.Service/GetFeature",
        ],
        ids=["unlisted-rpc", "other-version", "other-service"],
    )
    def test_an_unknown_method_needs_admin(self, method: str):
        """A method without a rule fails closed: only admin may call it."""
        assert action_for_method(method) is Action.ADMIN


class TestCurrentCaller:
    def test_outside_a_call_require_refuses(self):
        """Without an authenticated caller (interceptor not wired) require refuses."""
        assert current_caller() is None
        with pytest.raises(Unauthenticated, match="not authenticated"):
            require(Action.READ)
        with pytest.raises(Unauthenticated):
            current_principal()

    def test_acting_as_sets_the_caller_for_the_block_only(self):
        """acting_as makes the principal current inside the block and restores after."""
        viewer = principal(Role.VIEWER)
        with acting_as(viewer, "/m") as p:
            assert p is viewer
            assert current_principal() is viewer
            assert require(Action.READ, "checkout") is viewer
        assert current_caller() is None

    def test_require_each_checks_every_feature(self):
        """require_each refuses when any one named feature is out of scope."""
        scoped = principal(Role.VIEWER, scopes=("feature-pay*",))
        with acting_as(scoped):
            assert require_each(Action.WATCH, ["feature-pay", "feature-payments"]) is scoped
            assert require_each(Action.WATCH, []) is scoped
            with pytest.raises(PermissionDenied, match="'checkout'"):
                require_each(Action.WATCH, ["feature-payments", "checkout"])
            with pytest.raises(PermissionDenied):
                require_each(Action.PUBLISH, [])
