"""`dfs` auth: delegated, short-lived Ed25519-signed tokens (JWS, `alg: EdDSA`) from one issuer.

The caller sends `authorization: Bearer <jws>`. The token is verified with
PyJWT against the issuer's public key (no shared secret): the signature, `iss`
(the configured issuer), `aud` (this server's audience), `exp` and `nbf`/`iat`
with a small leeway for clock skew (30 s by default). Then:

- `sub` is the principal's name (it becomes the default audit actor),
- `roles` (required) is a list of role names: viewer, releaser, approver, admin,
- `scopes` (optional) is a list of feature-id patterns; every feature when absent.

"Short-lived" is enforced here too: a token whose `exp` lies further ahead than
`max_ttl_seconds` (one hour by default) is refused, whatever the issuer did.

The issuer's key is a PEM `PUBLIC KEY` or the standard (or URL-safe) base64 of
the raw 32-byte Ed25519 key; a key file may hold several, one PEM block or one
base64 line each, so a rotation can publish the next key before it signs. A
key file is re-read when it changes.

Every refusal is Unauthenticated with a message saying what was wrong
(expired, not yet valid, wrong audience, another issuer, bad signature, missing
roles) and never the token itself. Once the signature verifies, every claim's
type is checked before any is used (`check_claim_types`): a malformed claim
(an `exp` that is a string, `roles` that is an object, a `scopes` of null…) is
refused naming the claim, never an internal error.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from releasecontrol.errors import ConfigError, Unauthenticated, Unavailable
from releasecontrol.files import file_stamp
from releasecontrol_server.auth.principal import (
    AuthContext,
    Metadata,
    Principal,
    Role,
    parse_roles,
    parse_scopes,
    validate_principal_name,
)
from releasecontrol_server.auth.tokens import bearer_token

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
DEFAULT_LEEWAY_SECONDS = 30
DEFAULT_MAX_TTL_SECONDS = 3600
DEFAULT_TTL_SECONDS = 300
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "exp"]
# PyJWT checks `sub` (and names the error) only from 2.10 on; () matches nothing before that.
_INVALID_SUBJECT: Any = getattr(jwt.exceptions, "InvalidSubjectError", ())
# Time claims must fit a float exactly (and `exp - now`): about 285 million years either way.
_MAX_TIME = 2**53
_TIME_CLAIMS = ("exp", "nbf", "iat")
_STRING_CLAIMS = ("iss", "sub", "jti")
# The first decode checks only the signature; the claims' types are checked before PyJWT reads them.
_SIGNATURE_ONLY: Any = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


def load_issuer_keys(data: str | bytes, *, source: str) -> tuple[Ed25519PublicKey, ...]:
    """The Ed25519 public keys in `data`: PEM `PUBLIC KEY` blocks, or base64 lines.

    Base64 lines hold the raw 32-byte key (standard or URL-safe alphabet,
    padding optional); blank lines and lines starting with '#' are skipped.
    Raises ConfigError naming `source` when there is no key or one is not Ed25519.
    """
    raw = data.encode() if isinstance(data, str) else data
    keys: list[Ed25519PublicKey] = []
    try:
        if b"-----BEGIN" in raw:
            blocks = _PEM_BLOCK.findall(raw)
            if not blocks:
                raise ValueError("no '-----BEGIN PUBLIC KEY-----' block")
            for block in blocks:
                key = serialization.load_pem_public_key(block)
                if not isinstance(key, Ed25519PublicKey):
                    raise ValueError(f"a {type(key).__name__} is not an Ed25519 key")
                keys.append(key)
        else:
            for line in raw.decode("ascii").splitlines():
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                keys.append(Ed25519PublicKey.from_public_bytes(_b64decode(line)))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"the dfs issuer public key ({source}) is not usable: {exc}; give the issuer's "
            "Ed25519 key as a PEM 'PUBLIC KEY' or the base64 of its 32 raw bytes"
        ) from None
    if not keys:
        raise ConfigError(f"the dfs issuer public key ({source}) is empty")
    return tuple(keys)


def issue_dfs_token(
    private_key: Ed25519PrivateKey,
    *,
    issuer: str,
    audience: str,
    subject: str,
    roles: Iterable[Role | str],
    scopes: Sequence[str] | None = None,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: datetime | None = None,
) -> str:
    """A signed token (JWS compact, `alg: EdDSA`) as the dfs issuer makes them: for tests and dev.

    Claims: iss, aud, sub, roles, scopes (when given), iat, nbf, exp
    (`now + ttl_seconds`) and a random jti. Raises ValueError for a bad subject,
    role or scope.
    """
    validate_principal_name(subject)
    role_names = sorted(parse_roles(list(roles)))
    issued = (now or datetime.now(UTC)).astimezone(UTC)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "roles": role_names,
        "iat": int(issued.timestamp()),
        "nbf": int(issued.timestamp()),
        "exp": int((issued + timedelta(seconds=ttl_seconds)).timestamp()),
        "jti": secrets.token_hex(8),
    }
    if scopes is not None:
        claims["scopes"] = list(parse_scopes(scopes))
    return jwt.encode(claims, private_key, algorithm=ALGORITHM)


class DfsAuthenticator:
    """The `dfs` Authenticator: a Bearer JWS signed by the configured issuer's Ed25519 key."""

    mode = "dfs"

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        public_key: str | None = None,
        public_key_path: Path | None = None,
        leeway_seconds: int = DEFAULT_LEEWAY_SECONDS,
        max_ttl_seconds: int = DEFAULT_MAX_TTL_SECONDS,
    ) -> None:
        """Check the settings and load the key; raises ConfigError naming a bad setting.

        Exactly one of `public_key` (inline PEM or base64) and `public_key_path`.
        """
        if not issuer:
            raise ConfigError("dfs auth needs dfs_issuer: the `iss` its tokens carry")
        if not audience:
            raise ConfigError("dfs auth needs dfs_audience: the `aud` tokens for this server carry")
        if (public_key is None) == (public_key_path is None):
            raise ConfigError(
                "dfs auth needs exactly one of dfs_public_key (inline PEM or base64) and "
                "dfs_public_key_path (a file): the issuer's Ed25519 public key"
            )
        if leeway_seconds < 0 or max_ttl_seconds <= 0:
            raise ConfigError(
                "dfs_leeway_seconds must be >= 0 and dfs_max_token_ttl_seconds > 0, "
                f"got {leeway_seconds} and {max_ttl_seconds}"
            )
        self.issuer = issuer
        self.audience = audience
        self.leeway_seconds = leeway_seconds
        self.max_ttl_seconds = max_ttl_seconds
        self._path = public_key_path
        self._stamp: tuple[int, int, int] | None = None
        if public_key_path is not None:
            self._stamp = file_stamp(public_key_path)
            self._keys = _load_key_file(public_key_path)
        else:
            self._keys = load_issuer_keys(public_key or "", source="dfs_public_key")

    def describe(self) -> str:
        source = str(self._path) if self._path is not None else "dfs_public_key"
        return (
            f"dfs (EdDSA tokens from issuer {self.issuer!r} for audience {self.audience!r}, "
            f"{len(self._keys)} key(s) from {source})"
        )

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The principal of the call's bearer token; raises Unauthenticated saying what failed."""
        token = bearer_token(
            metadata,
            how_to_get_one=f"get a signed token for audience {self.audience!r} from "
            f"issuer {self.issuer!r}",
        )
        return self.verify(token)

    def verify(self, token: str) -> Principal:
        """Verify `token` and return its principal; raise Unauthenticated saying what failed."""
        claims = self._decode(token)
        now = datetime.now(UTC).timestamp()
        exp = claims["exp"]
        if exp - now > self.max_ttl_seconds + self.leeway_seconds:
            raise Unauthenticated(
                f"the token is valid for {int(exp - now)} s more; this server accepts only "
                f"short-lived tokens (at most {self.max_ttl_seconds} s): ask issuer "
                f"{self.issuer!r} for a shorter one"
            )
        if "roles" not in claims:
            raise Unauthenticated(
                "the token has no 'roles' claim, so it grants nothing; ask the issuer for a "
                "token with roles (viewer, releaser, approver, admin)"
            )
        try:
            return Principal(
                validate_principal_name(claims["sub"]),
                parse_roles(claims["roles"]),
                parse_scopes(claims.get("scopes")),
            )
        except ValueError as exc:
            raise Unauthenticated(f"the token's claims are not usable: {exc}") from None

    def _decode(self, token: str) -> dict[str, Any]:
        """The token's claims: signature first, then every claim's type, then their values."""
        for key in self._current_keys():
            try:
                jwt.decode(token, key, algorithms=[ALGORITHM], options=_SIGNATURE_ONLY)
            except jwt.InvalidSignatureError:
                continue  # maybe the next key (rotation)
            except jwt.PyJWTError as exc:
                raise Unauthenticated(self._explain(exc, token)) from None
            try:
                unchecked: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
                problem = check_claim_types(unchecked)
                if problem is not None:
                    raise Unauthenticated(
                        f"{problem}; ask issuer {self.issuer!r} for a well-formed token"
                    )
                claims: dict[str, Any] = jwt.decode(
                    token,
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway_seconds,
                    options={
                        # the signature verified above, with `key`
                        "verify_signature": False,
                        "verify_exp": True,
                        "verify_nbf": True,
                        "verify_iat": True,
                        "verify_aud": True,
                        "verify_iss": True,
                        "verify_sub": True,
                        "verify_jti": True,
                        "require": _REQUIRED_CLAIMS,
                    },
                )
                return claims
            except jwt.PyJWTError as exc:
                raise Unauthenticated(self._explain(exc, token)) from None
        raise Unauthenticated(
            f"the token's signature does not verify with the public key of issuer "
            f"{self.issuer!r}: it was not issued by that issuer, or it was altered"
        )

    def _explain(self, exc: jwt.PyJWTError, token: str) -> str:
        """One sentence for a refused token; never the token itself."""
        if isinstance(exc, jwt.ExpiredSignatureError):
            return (
                f"the token expired{_at(token, 'exp', 'at')} (clock skew of "
                f"{self.leeway_seconds} s allowed); get a fresh one from issuer {self.issuer!r}"
            )
        if isinstance(exc, jwt.ImmatureSignatureError):
            return (
                f"the token is not valid yet{_at(token, 'nbf', 'until')}; check the clocks of the "
                f"issuer and the caller ({self.leeway_seconds} s of skew is allowed)"
            )
        if isinstance(exc, jwt.InvalidAudienceError):
            return (
                f"the token is for another audience; this server accepts tokens with aud "
                f"{self.audience!r}"
            )
        if isinstance(exc, jwt.InvalidIssuerError):
            return (
                f"the token comes from another issuer; this server accepts tokens from "
                f"{self.issuer!r}"
            )
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"the token has no {exc.claim!r} claim; tokens need iss, aud, sub, exp and roles"
        if isinstance(exc, _INVALID_SUBJECT):
            return "the token's 'sub' claim must be a string naming the caller"
        if isinstance(exc, jwt.InvalidIssuedAtError):
            return "the token's 'iat' claim must be a number (seconds since the epoch)"
        if isinstance(exc, jwt.InvalidAlgorithmError):
            return f"the token must be signed with alg {ALGORITHM} (Ed25519)"
        if isinstance(exc, jwt.DecodeError):
            return (
                "the bearer credential is not a signed token (JWS compact serialization); "
                f"get one from issuer {self.issuer!r}"
            )
        return f"the token is not valid ({type(exc).__name__})"

    def _current_keys(self) -> tuple[Ed25519PublicKey, ...]:
        """The issuer's keys, re-read when the key file changed; fails closed while it is broken."""
        if self._path is None:
            return self._keys
        stamp = file_stamp(self._path)
        if stamp != self._stamp:
            try:
                keys = _load_key_file(self._path)
            except ConfigError as exc:
                log.error("dfs issuer key unusable, refusing every token: %s", exc.message)
                raise Unavailable(
                    "the server cannot read its token issuer's key right now; the operator has "
                    "been told in the server log, try again later"
                ) from exc
            log.info("dfs issuer key reloaded path=%s keys=%d", self._path, len(keys))
            self._keys, self._stamp = keys, stamp
        return self._keys


def check_claim_types(claims: dict[str, Any]) -> str | None:
    """What is wrong with the type of a claim present in `claims`, naming it; None when all fit.

    `exp`, `nbf`, `iat`: a number of seconds since the epoch (not a string, a boolean, NaN
    or one beyond 2**53); `iss`, `sub`, `jti`: a string; `aud`: a string or a non-empty list
    of strings; `roles`: a list of strings; `scopes`: a list of strings when present (null
    is refused: leave it out for every feature). Missing claims are left to the checks of
    the values, which name them too.
    """
    for name in _TIME_CLAIMS:
        if name in claims and not _is_time(claims[name]):
            return (
                f"the token's {name!r} claim must be a number of seconds since the epoch, "
                f"not {_kind(claims[name])}"
            )
    for name in _STRING_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            return f"the token's {name!r} claim must be a string, not {_kind(claims[name])}"
    if "aud" in claims:
        aud = claims["aud"]
        if not isinstance(aud, str) and not (
            isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud)
        ):
            return (
                "the token's 'aud' claim must be a string or a non-empty list of strings, "
                f"not {_kind(aud)}"
            )
    for name in ("roles", "scopes"):
        if name in claims:
            value = claims[name]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return (
                    f"the token's {name!r} claim must be a list of strings, not {_kind(value)}"
                    + ("" if name == "roles" else " (leave it out for every feature)")
                )
    return None


def _is_time(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return -_MAX_TIME < value < _MAX_TIME  # False for NaN and the infinities too


def _kind(value: object) -> str:
    """How a JSON value is named in a message: its type, never its content."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number out of range"
    if isinstance(value, list):
        if any(not isinstance(v, str) for v in value):
            return "a list holding a non-string"
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _load_key_file(path: Path) -> tuple[Ed25519PublicKey, ...]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"the dfs issuer public key {path} cannot be read (dfs_public_key_path): {exc.strerror}"
        ) from exc
    return load_issuer_keys(data, source=str(path))


def _at(token: str, claim: str, word: str) -> str:
    """` <word> <RFC 3339 time>` from a claim of a token whose signature already verified."""
    try:
        value = jwt.decode(token, options={"verify_signature": False})[claim]
        return f" {word} {datetime.fromtimestamp(int(value), UTC):%Y-%m-%dT%H:%M:%SZ}"
    except (jwt.PyJWTError, KeyError, TypeError, ValueError, OverflowError):
        return ""


def _b64decode(text: str) -> bytes:
    padded = text + "=" * (-len(text) % 4)
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64 ({exc})") from None
