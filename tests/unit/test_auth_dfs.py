"""dfs auth: short-lived EdDSA tokens from one issuer, every way of being wrong, key formats."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.errors import ConfigError, Unauthenticated, Unavailable
from releasecontrol_server.auth.dfs import DfsAuthenticator, issue_dfs_token, load_issuer_keys
from releasecontrol_server.auth.principal import Role

ISSUER = "https://dfs.example.org"
AUDIENCE = "releasecontrol"
ISSUER_KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()


def public_pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def now() -> datetime:
    return datetime.now(UTC)


def claims(**changes: Any) -> dict[str, Any]:
    """Good claims, with `changes` applied (a value of None removes the claim)."""
    t = int(now().timestamp())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "ci-bot",
        "roles": ["releaser"],
        "iat": t,
        "nbf": t,
        "exp": t + 300,
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def signed(key: Ed25519PrivateKey = ISSUER_KEY, **changes: Any) -> str:
    return jwt.encode(claims(**changes), key, algorithm="EdDSA")


@pytest.fixture
def auth() -> DfsAuthenticator:
    return DfsAuthenticator(issuer=ISSUER, audience=AUDIENCE, public_key=public_pem(ISSUER_KEY))


class TestGoodTokens:
    def test_an_issued_token_authenticates_with_its_claims(self, auth: DfsAuthenticator):
        """A token from the issuer for this audience yields sub, roles and scopes."""
        token = issue_dfs_token(
            ISSUER_KEY,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject="ci-bot",
            roles=["releaser", Role.VIEWER],
            scopes=["feature-pay*"],
        )
        principal = auth.authenticate(bearer(token), {})
        assert principal.name == "ci-bot"
        assert principal.roles == {Role.RELEASER, Role.VIEWER}
        assert principal.scopes == ("feature-pay*",)

    def test_without_scopes_every_feature(self, auth: DfsAuthenticator):
        """A token without a scopes claim applies its roles to every feature."""
        assert auth.verify(signed()).scopes == ("*",)

    def test_the_issued_header_and_claims(self):
        """issue_dfs_token makes an EdDSA JWS with iss, aud, sub, roles, iat, nbf, exp, jti."""
        at = datetime(2030, 1, 1, tzinfo=UTC)
        token = issue_dfs_token(
            ISSUER_KEY,
            issuer=ISSUER,
            audience=AUDIENCE,
            subject="s",
            roles=["admin"],
            ttl_seconds=60,
            now=at,
        )
        assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
        body = jwt.decode(token, options={"verify_signature": False})
        assert body["exp"] - body["iat"] == 60
        assert body["iat"] == int(at.timestamp())
        assert {"iss", "aud", "sub", "roles", "nbf", "jti"} <= set(body)

    @pytest.mark.parametrize(
        "offsets",
        [{"exp": -10}, {"nbf": 10}, {"iat": 10}],
        ids=["expired-10s-ago", "valid-in-10s", "issued-10s-ahead"],
    )
    def test_small_clock_skew_is_allowed(self, auth: DfsAuthenticator, offsets: dict[str, int]):
        """Times up to 30 s off are accepted (clock skew between issuer, caller and server)."""
        # Offsets from the moment the test runs, not from collection time.
        at = int(now().timestamp())
        change = {claim: at + offset for claim, offset in offsets.items()}
        assert auth.verify(signed(**change)).name == "ci-bot"

    def test_an_audience_list_containing_ours_is_accepted(self, auth: DfsAuthenticator):
        """A token for several audiences, this one among them, is accepted."""
        assert auth.verify(signed(aud=["other", AUDIENCE])).name == "ci-bot"

    def test_a_rotated_key_set_accepts_both_keys(self):
        """With two issuer keys configured, tokens signed by either verify."""
        auth = DfsAuthenticator(
            issuer=ISSUER,
            audience=AUDIENCE,
            public_key=public_pem(ISSUER_KEY) + public_pem(OTHER_KEY),
        )
        assert auth.verify(signed(ISSUER_KEY)).name == "ci-bot"
        assert auth.verify(signed(OTHER_KEY)).name == "ci-bot"


def _tampered() -> str:
    header, _, signature = signed().split(".")
    body = base64.urlsafe_b64encode(json.dumps(claims(roles=["admin"])).encode())
    return f"{header}.{body.decode().rstrip('=')}.{signature}"


REFUSALS: list[tuple[str, Callable[[], str], str]] = [
    (
        "expired",
        lambda: signed(iat=int(now().timestamp()) - 3600, exp=int(now().timestamp()) - 60),
        "expired at",
    ),
    ("not-yet-valid", lambda: signed(nbf=int(now().timestamp()) + 120), "not valid yet"),
    ("wrong-audience", lambda: signed(aud="another-service"), "another audience"),
    ("another-issuer", lambda: signed(iss="https://evil.example.org"), "another issuer"),
    ("bad-signature", lambda: signed(OTHER_KEY), "signature does not verify"),
    ("tampered-claims", _tampered, "signature does not verify"),
    ("missing-roles", lambda: signed(roles=None), "no 'roles' claim"),
    ("unknown-role", lambda: signed(roles=["root"]), "unknown role 'root'"),
    ("roles-not-a-list", lambda: signed(roles="admin"), "must be a list"),
    ("bad-scope", lambda: signed(scopes=["Feature*"]), "not a feature-id pattern"),
    ("missing-exp", lambda: signed(exp=None), "no 'exp' claim"),
    ("missing-sub", lambda: signed(sub=None), "no 'sub' claim"),
    ("missing-aud", lambda: signed(aud=None), "no 'aud' claim"),
    ("sub-not-a-string", lambda: signed(sub=5), "'sub' claim must be a string"),
    ("sub-with-spaces", lambda: signed(sub="two words"), "spaces or control characters"),
    (
        "too-long-lived",
        lambda: signed(exp=int(now().timestamp()) + 7200),
        "short-lived",
    ),
    (
        "hs256-with-the-public-key-as-secret",
        lambda: jwt.encode(claims(), public_raw(ISSUER_KEY), algorithm="HS256"),
        "alg EdDSA",
    ),
    (
        "alg-none",
        lambda: jwt.encode(claims(), None, algorithm="none"),
        "alg EdDSA",
    ),
    (
        "es256",
        lambda: jwt.encode(claims(), ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"),
        "alg EdDSA",
    ),
    ("an-rpc-token", lambda: "rc_" + "x" * 43, "not a signed token"),
    ("garbage", lambda: "a.b.c", "not a signed token"),
]


def _future() -> int:
    return int(now().timestamp()) + 300


# Issue 13 item 6: each claim of the wrong type is UNAUTHENTICATED naming the claim, never a crash.
MALFORMED: list[tuple[str, dict[str, Any], str]] = [
    ("exp-a-numeric-string", {"exp": str(_future())}, "'exp' claim must be a number"),
    ("exp-a-word", {"exp": "tomorrow"}, "'exp' claim must be a number"),
    ("exp-a-boolean", {"exp": True}, "'exp' claim must be a number"),
    ("exp-a-list", {"exp": [1]}, "'exp' claim must be a number"),
    ("exp-null", {"exp": "__null__"}, "'exp' claim must be a number"),
    ("exp-huge", {"exp": 10**400}, "'exp' claim must be a number"),
    ("nbf-a-string", {"nbf": "0"}, "'nbf' claim must be a number"),
    ("iat-an-object", {"iat": {"t": 1}}, "'iat' claim must be a number"),
    ("iss-a-number", {"iss": 7}, "'iss' claim must be a string"),
    ("sub-a-list", {"sub": ["ci-bot"]}, "'sub' claim must be a string"),
    ("jti-a-number", {"jti": 5}, "'jti' claim must be a string"),
    ("aud-a-number", {"aud": 5}, "'aud' claim must be a string or a non-empty list"),
    ("aud-a-list-of-numbers", {"aud": [AUDIENCE, 5]}, "'aud' claim must be a string or"),
    ("roles-an-object", {"roles": {"admin": True}}, "'roles' claim must be a list of strings"),
    ("roles-holding-a-number", {"roles": ["viewer", 3]}, "'roles' claim must be a list"),
    ("roles-null", {"roles": "__null__"}, "'roles' claim must be a list of strings"),
    ("scopes-null", {"scopes": "__null__"}, "'scopes' claim must be a list of strings"),
    ("scopes-a-string", {"scopes": "feature-*"}, "'scopes' claim must be a list of strings"),
]


def _malformed(changes: dict[str, Any]) -> str:
    """A correctly signed token whose claims carry `changes` ("__null__" is JSON null)."""
    body = claims()
    body.update({k: (None if v == "__null__" else v) for k, v in changes.items()})
    # PyJWS signs any bytes: jwt.encode itself refuses some mistyped claims (an `iss` number).
    return jwt.PyJWS().encode(json.dumps(body).encode(), ISSUER_KEY, algorithm="EdDSA")


class TestMalformedClaims:
    @pytest.mark.parametrize(
        ("changes", "error"), [(c, e) for _, c, e in MALFORMED], ids=[i for i, _, _ in MALFORMED]
    )
    def test_a_claim_of_the_wrong_type_is_unauthenticated_naming_it(
        self, auth: DfsAuthenticator, changes: dict[str, Any], error: str
    ):
        """A signed token with a mistyped claim is refused (not a TypeError), naming the claim."""
        token = _malformed(changes)
        with pytest.raises(Unauthenticated, match=error) as info:
            auth.authenticate(bearer(token), {})
        assert ISSUER in info.value.message  # who to ask for a well-formed one
        assert token not in info.value.message

    def test_a_float_exp_is_still_accepted(self, auth: DfsAuthenticator):
        """NumericDate allows fractions (RFC 7519 §2): a float `exp` is well-formed."""
        assert auth.verify(signed(exp=now().timestamp() + 300.5)).name == "ci-bot"

    def test_a_mistyped_claim_under_a_foreign_signature_says_signature(
        self, auth: DfsAuthenticator
    ):
        """Types are looked at only once the signature verified: a forger learns nothing more."""
        token = jwt.encode(claims(exp="x"), OTHER_KEY, algorithm="EdDSA")
        with pytest.raises(Unauthenticated, match="signature does not verify"):
            auth.verify(token)


class TestRefusals:
    @pytest.mark.parametrize(
        ("make", "error"), [(m, e) for _, m, e in REFUSALS], ids=[i for i, _, _ in REFUSALS]
    )
    def test_each_bad_token_is_refused_with_a_helpful_message(
        self, auth: DfsAuthenticator, make: Callable[[], str], error: str
    ):
        """Every defect is Unauthenticated, says what is wrong, and never echoes the token."""
        token = make()
        with pytest.raises(Unauthenticated, match=error) as info:
            auth.authenticate(bearer(token), {})
        assert token not in info.value.message
        for part in token.split("."):
            assert len(part) < 8 or part not in info.value.message

    def test_no_credentials_says_where_to_get_a_token(self, auth: DfsAuthenticator):
        """A call without a token is told which issuer and audience to ask for."""
        with pytest.raises(Unauthenticated, match="no credentials") as info:
            auth.authenticate((), {})
        assert ISSUER in info.value.message and AUDIENCE in info.value.message

    def test_the_max_lifetime_is_configurable(self):
        """A token valid for longer than dfs_max_token_ttl_seconds is refused."""
        strict = DfsAuthenticator(
            issuer=ISSUER, audience=AUDIENCE, public_key=public_pem(ISSUER_KEY), max_ttl_seconds=60
        )
        with pytest.raises(Unauthenticated, match="at most 60 s"):
            strict.verify(signed())


class TestKeys:
    @pytest.mark.parametrize(
        "encode",
        [
            lambda k: public_pem(k),
            lambda k: base64.b64encode(public_raw(k)).decode(),
            lambda k: base64.urlsafe_b64encode(public_raw(k)).decode().rstrip("="),
            lambda k: "# issuer key\n\n" + base64.b64encode(public_raw(k)).decode() + "\n",
        ],
        ids=["pem", "base64", "base64url-unpadded", "base64-with-comment"],
    )
    def test_the_issuer_key_formats(self, encode: Callable[[Ed25519PrivateKey], str]):
        """The issuer key may be PEM or the base64 of the raw 32 bytes."""
        [key] = load_issuer_keys(encode(ISSUER_KEY), source="test")
        assert key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        ) == public_raw(ISSUER_KEY)

    @pytest.mark.parametrize(
        "data",
        [
            "",
            "not base64!",
            base64.b64encode(b"short").decode(),
            ec.generate_private_key(ec.SECP256R1())
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode(),
            "-----BEGIN CERTIFICATE-----\nMII=\n-----END CERTIFICATE-----\n",
        ],
        ids=["empty", "not-base64", "wrong-length", "ecdsa-key", "no-public-key-block"],
    )
    def test_unusable_keys_are_refused_at_start(self, data: str):
        """A key that is not Ed25519 or does not parse stops the server at start."""
        with pytest.raises(ConfigError, match="dfs issuer public key"):
            DfsAuthenticator(issuer=ISSUER, audience=AUDIENCE, public_key=data)

    def test_a_key_file_rotation_applies_without_restart(self, tmp_path: Path):
        """Replacing the key file switches the key tokens must be signed with."""
        path = tmp_path / "issuer.pub"
        path.write_text(public_pem(ISSUER_KEY))
        auth = DfsAuthenticator(issuer=ISSUER, audience=AUDIENCE, public_key_path=path)
        assert auth.verify(signed(ISSUER_KEY))
        tmp = tmp_path / "issuer.pub.new"
        tmp.write_text(public_pem(OTHER_KEY))
        os.replace(tmp, path)
        assert auth.verify(signed(OTHER_KEY))
        with pytest.raises(Unauthenticated, match="signature"):
            auth.verify(signed(ISSUER_KEY))

    def test_a_broken_key_file_fails_closed(self, tmp_path: Path):
        """A key file that turns unreadable refuses every token until fixed."""
        path = tmp_path / "issuer.pub"
        path.write_text(public_pem(ISSUER_KEY))
        auth = DfsAuthenticator(issuer=ISSUER, audience=AUDIENCE, public_key_path=path)
        path.write_text("garbage")
        with pytest.raises(Unavailable):
            auth.verify(signed())
        path.write_text(public_pem(ISSUER_KEY))
        assert auth.verify(signed()).name == "ci-bot"

    @pytest.mark.parametrize(
        ("kwargs", "error"),
        [
            ({"issuer": "", "public_key": "k"}, "dfs_issuer"),
            ({"audience": "", "public_key": "k"}, "dfs_audience"),
            ({}, "exactly one of dfs_public_key"),
            ({"public_key": "k", "public_key_path": Path("k")}, "exactly one of dfs_public_key"),
            ({"public_key_path": Path("/nonexistent/key.pub")}, "dfs_public_key_path"),
            ({"public_key": public_pem(ISSUER_KEY), "leeway_seconds": -1}, "dfs_leeway_seconds"),
        ],
        ids=[
            "no-issuer",
            "no-audience",
            "no-key",
            "two-keys",
            "missing-key-file",
            "negative-leeway",
        ],
    )
    def test_incomplete_settings_are_refused_at_start(self, kwargs: dict[str, Any], error: str):
        """Missing or contradictory dfs settings stop the server at start, naming the setting."""
        settings: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **kwargs}
        with pytest.raises(ConfigError, match=error):
            DfsAuthenticator(**settings)

    def test_issuing_checks_roles(self):
        """issue_dfs_token refuses unknown roles instead of minting a useless token."""
        with pytest.raises(ValueError, match="unknown role"):
            issue_dfs_token(ISSUER_KEY, issuer=ISSUER, audience=AUDIENCE, subject="s", roles=["x"])
