"""`trusted-cluster` auth: the client certificate's SPIFFE ID, from the cluster CA, allow-listed.

gRPC has already checked the TLS chain against the server's client CA
(`tls_client_ca_path`). The cluster CA may be a different, stricter set, so the
peer certificate is verified again here, with `cryptography`'s X.509 path
validation (signature, validity at the current time, client-auth usage)
against the certificates in `cluster_ca_path`. gRPC hands over the leaf only,
not the chain the client sent: when workload certificates come from an
intermediate CA, put that intermediate in the cluster CA file.

The identity is the certificate's one URI SAN, a SPIFFE ID
(`spiffe://<trust-domain>/<path>`); a certificate with no or several URI SANs
is refused, since it could name two callers. The ID must be on the allow-list,
a TOML (or, for `*.json`, JSON) file of SPIFFE IDs or glob patterns:

    [allow."spiffe://prod.example.org/ns/ci/sa/release-bot"]
    roles = ["releaser"]
    scopes = ["feature-pay*"]      # optional: every feature when left out

    [allow."spiffe://prod.example.org/ns/ops/*"]
    roles = ["approver"]

An exact ID wins over patterns; among patterns the longest match wins. `*`
matches across `/`. A pattern's trust domain is always literal.

Both files are re-read when they change (inode, mtime or size), so rotating
the CA or editing the allow-list needs no restart. A file that turns
unreadable or invalid fails closed: every call is refused (UNAVAILABLE) and
the reason logged until it is fixed.
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Generic, TypeVar

from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from releasecontrol.errors import (
    ConfigError,
    PermissionDenied,
    ReleaseControlError,
    Unauthenticated,
    Unavailable,
)
from releasecontrol.files import file_stamp
from releasecontrol_server.auth.principal import (
    AuthContext,
    Metadata,
    Principal,
    Role,
    parse_roles,
    parse_scopes,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

_TRUST_DOMAIN = r"[a-z0-9._-]+"
_SEGMENT = r"[A-Za-z0-9._-]+"
_SPIFFE_ID = re.compile(rf"^spiffe://({_TRUST_DOMAIN})((?:/{_SEGMENT})+)\Z")
_SPIFFE_PATTERN = re.compile(rf"^spiffe://({_TRUST_DOMAIN})(/[A-Za-z0-9._\-/*?]+)\Z")
_MAX_SPIFFE_ID_LENGTH = 2048


def peer_certificate(auth_context: AuthContext) -> bytes | None:
    """The PEM of the client certificate gRPC verified for this call, or None without one."""
    for pem in auth_context.get("x509_pem_cert", ()):
        return bytes(pem)
    return None


def parse_spiffe_id(uri: str) -> str:
    """Return `uri` when it is a SPIFFE ID (`spiffe://<trust-domain>/<path>`); raise ValueError."""
    match = _SPIFFE_ID.match(uri)
    if (
        len(uri) > _MAX_SPIFFE_ID_LENGTH
        or match is None
        or any(s in (".", "..") for s in match.group(2).split("/")[1:])
    ):
        raise ValueError(
            f"{uri!r} is not a SPIFFE ID: expected spiffe://<trust-domain>/<path> with a "
            "lowercase trust domain and a path of letters, digits, '.', '-' and '_'"
        )
    return uri


def spiffe_id_of(cert: x509.Certificate) -> str:
    """The certificate's SPIFFE ID: its one URI SAN. Raises Unauthenticated otherwise."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if len(uris) != 1:
        raise Unauthenticated(
            f"the client certificate carries {len(uris)} URI SANs; trusted-cluster auth needs "
            "exactly one, the caller's SPIFFE ID (use the workload's X.509-SVID)"
        )
    try:
        return parse_spiffe_id(uris[0])
    except ValueError as exc:
        raise Unauthenticated(
            f"the client certificate's URI SAN {exc}; use the workload's X.509-SVID"
        ) from None


@dataclass(frozen=True)
class AllowRule:
    """One allow-list entry: a SPIFFE ID or glob pattern and what it may do."""

    pattern: str
    roles: frozenset[Role]
    scopes: tuple[str, ...]

    @property
    def is_pattern(self) -> bool:
        return any(c in self.pattern for c in "*?")


@dataclass(frozen=True)
class AllowList:
    """The parsed allow-list: which SPIFFE IDs may call, with which roles and scopes."""

    path: Path
    rules: tuple[AllowRule, ...]

    @classmethod
    def load(cls, path: Path) -> AllowList:
        """Read the TOML (JSON for `*.json`) allow-list; raise ConfigError naming the problem."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(
                f"cluster allow-list {path} does not exist (cluster_allowlist_path): write one "
                'with an [allow."spiffe://<trust-domain>/<path>"] table per caller'
            ) from None
        except OSError as exc:
            raise ConfigError(f"cluster allow-list {path} cannot be read: {exc.strerror}") from exc
        try:
            is_json = path.suffix == ".json"
            data = json.loads(raw) if is_json else tomllib.loads(raw.decode("utf-8"))
            return cls(path, _parse_rules(data))
        except (ValueError, TypeError) as exc:  # TOML and JSON decode errors are ValueErrors
            raise ConfigError(f"cluster allow-list {path} is not valid: {exc}") from exc

    def lookup(self, spiffe_id: str) -> AllowRule | None:
        """The rule for `spiffe_id`: the exact entry, else the longest matching pattern."""
        for rule in self.rules:
            if not rule.is_pattern and rule.pattern == spiffe_id:
                return rule
        patterns = sorted(
            (r for r in self.rules if r.is_pattern), key=lambda r: (-len(r.pattern), r.pattern)
        )
        for rule in patterns:
            if fnmatchcase(spiffe_id, rule.pattern):
                return rule
        return None


def load_ca_certificates(path: Path) -> list[x509.Certificate]:
    """The PEM certificates in `path` (one or more); raise ConfigError when there are none."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"cluster CA {path} cannot be read (cluster_ca_path): {exc.strerror}; point it at "
            "the PEM file of the CA that issues your workload certificates"
        ) from exc
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise ConfigError(
            f"cluster CA {path} holds no PEM certificate (cluster_ca_path): {exc}"
        ) from exc
    return certs


class ClusterAuthenticator:
    """The `trusted-cluster` Authenticator: an allow-listed SPIFFE ID from a cluster-CA cert."""

    mode = "trusted-cluster"

    def __init__(
        self,
        ca_path: Path,
        allowlist_path: Path,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """Load both files once; raises ConfigError when either is missing or invalid."""
        self._clock = clock
        self._ca = _Watched(ca_path, load_ca_certificates)
        self._allow = _Watched(allowlist_path, AllowList.load)

    def describe(self) -> str:
        return (
            f"trusted-cluster (SPIFFE IDs from certificates of {self._ca.path}, "
            f"allow-list {self._allow.path})"
        )

    def authenticate(self, metadata: Metadata, auth_context: AuthContext) -> Principal:
        """The allow-listed principal of the call's client certificate.

        Raises Unauthenticated (no certificate, not from the cluster CA, not
        exactly one SPIFFE URI SAN), PermissionDenied (not on the allow-list),
        Unavailable (the CA or allow-list file is broken right now).
        """
        pem = peer_certificate(auth_context)
        if pem is None:
            raise Unauthenticated(
                "no client certificate: trusted-cluster auth identifies callers by their "
                "certificate; connect with the workload's X.509-SVID"
            )
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise Unauthenticated("the client certificate could not be parsed") from None
        # The SAN's shape is checked first only for a precise message; the ID is
        # trusted only once the chain to the cluster CA has verified.
        spiffe_id = spiffe_id_of(cert)
        verifier = (
            PolicyBuilder()
            .store(Store(self._ca.current()))
            .time(self._clock())
            .build_client_verifier()
        )
        try:
            verifier.verify(cert, [])
        except VerificationError as exc:
            log.info("cluster certificate refused subject=%s detail=%s", cert.subject, exc)
            raise Unauthenticated(
                "the client certificate is not a valid certificate from the cluster CA this "
                "server trusts (wrong issuer, expired, or not for client auth); use a "
                "certificate issued by the cluster CA"
            ) from None
        rule = self._allow.current().lookup(spiffe_id)
        if rule is None:
            raise PermissionDenied(
                f"{spiffe_id} is not on this server's trusted-cluster allow-list; ask an "
                "operator to add it with its roles"
            )
        return Principal(spiffe_id, rule.roles, rule.scopes)


class _Watched(Generic[T]):
    """A file parsed once and re-parsed when it changes; fails closed while it is broken."""

    def __init__(self, path: Path, parse: Callable[[Path], T]) -> None:
        self.path = path
        self._parse = parse
        # The stamp is taken before the parse, so a change in between is seen next time.
        self._stamp = file_stamp(path)
        self._value = parse(path)

    def current(self) -> T:
        stamp = file_stamp(self.path)
        if stamp != self._stamp:
            try:
                value = self._parse(self.path)
            except ReleaseControlError as exc:
                log.error("auth file unusable, refusing every call: %s", exc.message)
                raise Unavailable(
                    "the server cannot read its trusted-cluster configuration right now; the "
                    "operator has been told in the server log, try again later"
                ) from exc
            log.info("auth file reloaded path=%s", self.path)
            self._value, self._stamp = value, stamp
        return self._value


def _parse_rules(data: Any) -> tuple[AllowRule, ...]:
    if not isinstance(data, dict) or set(data) != {"allow"} or not isinstance(data["allow"], dict):
        raise ValueError(
            "expected only an 'allow' table mapping SPIFFE IDs or patterns to "
            "{roles = [...], scopes = [...]}"
        )
    rules = []
    for pattern, entry in data["allow"].items():
        where = f"allow.{json.dumps(pattern)}"
        _check_pattern(pattern, where)
        if not isinstance(entry, dict) or "roles" not in entry:
            raise ValueError(f"{where} must be a table with 'roles' (and optional 'scopes')")
        unknown = sorted(set(entry) - {"roles", "scopes"})
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; only roles and scopes")
        try:
            rules.append(
                AllowRule(pattern, parse_roles(entry["roles"]), parse_scopes(entry.get("scopes")))
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    return tuple(rules)


def _check_pattern(pattern: object, where: str) -> None:
    if not isinstance(pattern, str):
        raise ValueError(f"{where}: a key must be a SPIFFE ID string")
    if any(c in pattern for c in "*?"):
        if _SPIFFE_PATTERN.match(pattern) is None:
            raise ValueError(
                f"{where}: a pattern must be spiffe://<trust-domain>/<path> with '*' or '?' "
                "only in the path; the trust domain is literal"
            )
    else:
        parse_spiffe_id(pattern)
