"""The production checklist behind `releasectl doctor`: one result per item, never an exception.

    run_doctor(environ, config_path)  load the config (refusals included) and run every check
    load_config_for_doctor(...)       the config even when production refuses it
    check_*(config, ...)              one item each -> CheckResult(name, status, reason, fix)

Each check is a function of the config (and, for the origin, of what it read)
returning a `CheckResult`: PASS, WARN (advisory: nothing wrong found, but
something could not be checked yet) or FAIL, a reason naming the setting as the
operator wrote it, and the fix. The CLI only prints them.

The config is loaded with the production refusals turned into FAIL items
instead of an error: a config the server refuses to start with is exactly the
one an operator runs doctor on. Only a config that does not load at all (a
typo'd key, a bad value) is a single FAIL item.
"""

from __future__ import annotations

import itertools
import logging
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from releasecontrol import compat, routes
from releasecontrol.errors import ConfigError, InvalidArgument, ReleaseControlError
from releasecontrol.index import REMOTE_INDEX_PATH, Envelope
from releasecontrol.keyfiles import ROOT_RENEW_BEFORE
from releasecontrol.published import Published, folder_reader, http_reader, read_published
from releasecontrol.trust import TrustStore, short_keyid
from releasecontrol_server.config import Config, dev_admin_opens, load_config
from releasecontrol_server.keyring import load_keyring, trusted_keys
from releasecontrol_server.store import SCHEMA_VERSION
from releasecontrol_server.store.inspect import inspect_database

__all__ = [
    "CHECK_NAMES",
    "CheckResult",
    "DoctorReport",
    "HttpAnswer",
    "PublishedRead",
    "Status",
    "check_auth_mode",
    "check_compat",
    "check_database",
    "check_dev_keys_off",
    "check_origin_headers",
    "check_production_mode",
    "check_routes",
    "check_signing_keys",
    "check_tls",
    "check_trusted_keys",
    "check_unauthenticated_admin_off",
    "http_head",
    "load_config_for_doctor",
    "read_origin",
    "revalidates",
    "run_doctor",
]

log = logging.getLogger(__name__)

Status = Literal["PASS", "WARN", "FAIL"]

EXPIRY_MARGIN = timedelta(days=30)
"""A certificate expiring sooner than this fails: time enough to renew it calmly."""

CHECK_NAMES: tuple[str, ...] = (
    "production-mode",
    "trusted-keys",
    "insecure-dev-keys",
    "unauthenticated-admin",
    "auth-mode",
    "tls",
    "signing-keys",
    "database",
    "lint-routes",
    "validate-compat",
    "origin-headers",
)
"""Every item, in the order doctor runs and prints them."""

_MAX_FINDINGS_IN_REASON = 3


@dataclass(frozen=True)
class CheckResult:
    """One checklist item: its name, PASS/WARN/FAIL, why, and what to do about it."""

    name: str
    """A stable kebab-case id (`tls`, `auth-mode`), one of CHECK_NAMES or `config`."""
    status: Status
    reason: str
    """What was found, naming the setting as the operator wrote it."""
    fix: str = ""
    """What to do; empty on PASS."""

    def to_dict(self) -> dict[str, str]:
        """The item as `--output json` prints it."""
        return {"name": self.name, "status": self.status, "reason": self.reason, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    """Every item's result, and which config file was checked."""

    config_file: Path | None
    results: tuple[CheckResult, ...]

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        """The FAIL items; the deployment is not ready while there is one."""
        return tuple(r for r in self.results if r.status == "FAIL")

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_file": str(self.config_file) if self.config_file else None,
            "ok": self.ok,
            "checks": [r.to_dict() for r in self.results],
        }


def _pass(name: str, reason: str) -> CheckResult:
    return CheckResult(name, "PASS", reason)


def _fail(name: str, problems: Sequence[tuple[str, str]]) -> CheckResult:
    """A FAIL item from (reason, fix) pairs: the reasons and the fixes each joined."""
    reasons = "; ".join(reason for reason, _ in problems)
    fixes = "; ".join(dict.fromkeys(fix for _, fix in problems if fix))
    return CheckResult(name, "FAIL", reasons, fixes)


# -- loading the config ---------------------------------------------------------------------------


def load_config_for_doctor(
    environ: Mapping[str, str], config_path: Path | None = None, *, cwd: Path | None = None
) -> Config:
    """The config as `load_config` reads it, but without refusing a production config.

    A production config with problems loads as what it is, so each problem
    becomes a FAIL item. Raises ConfigError when the config does not load for
    any other reason.
    """
    return load_config(environ, config_path, cwd=cwd, refuse_production_problems=False)


# -- the settings ---------------------------------------------------------------------------------


def _where(config: Config, field: str) -> str:
    """How the operator set `field` (`RELEASECONTROL_ENV`, `env in FILE`), or 'the default'."""
    return (
        "the default"
        if config.sources.get(field, "default") == "default"
        else (config.setting_name(field))
    )


def check_production_mode(config: Config) -> CheckResult:
    """PASS when env is production: only then does the server refuse unsafe settings."""
    where = _where(config, "env")
    if config.is_production:
        return _pass("production-mode", f"env is production ({where})")
    return _fail(
        "production-mode",
        [
            (
                f"env is {config.env} ({where}), so the server does not refuse unsafe settings",
                'set RELEASECONTROL_ENV=production, or env = "production" in the config file',
            )
        ],
    )


def _load_trust(config: Config) -> TrustStore:
    return trusted_keys(config)


def _trust_source(config: Config) -> str:
    if config.trust_public_keys_json is not None:
        return config.setting_name("trust_public_keys_json")
    return f"{config.trust_public_keys_path} ({config.setting_name('trust_public_keys_path')})"


_TRUST_FIX = (
    "set FEATURE_TRUST_PUBLIC_KEYS_PATH (trust_public_keys_path) to a trust file "
    '{"threshold": 1, "keys": [{"keyid": ..., "alg": "ed25519", "public_key": ...}]} '
    "listing the root keys hosts pin (`releasectl keys init-root` writes one)"
)


def check_trusted_keys(config: Config) -> CheckResult:
    """PASS when trusted keys are configured explicitly and the trust file parses."""
    name = "trusted-keys"
    explicit = config.trust_public_keys_json is not None or (
        config.sources.get("trust_public_keys_path", "default") != "default"
    )
    if not explicit:
        return _fail(
            name,
            [
                (
                    "no trusted public keys are configured (only the development fallback "
                    f"{config.trust_public_keys_path})",
                    _TRUST_FIX,
                )
            ],
        )
    try:
        trust = _load_trust(config)
    except ConfigError as exc:
        return _fail(name, [(exc.message, _TRUST_FIX)])
    return _pass(
        name,
        f"{len(trust.keys)} trusted key(s), threshold {trust.threshold}, "
        f"from {_trust_source(config)}",
    )


def check_dev_keys_off(config: Config) -> CheckResult:
    """PASS when FEATURE_ALLOW_INSECURE_DEV_KEYS is off."""
    name = "insecure-dev-keys"
    setting = config.setting_name("allow_insecure_dev_keys")
    if not config.allow_insecure_dev_keys:
        return _pass(name, "insecure dev keys are off")
    return _fail(
        name,
        [
            (
                f"{setting} is on: dev keys (their private half unprotected on disk) would "
                "sign and verify",
                f"unset {setting} (or set it to false) and sign with a real key",
            )
        ],
    )


def check_unauthenticated_admin_off(config: Config) -> CheckResult:
    """PASS when the admin UI requires login: ALLOW_UNAUTHENTICATED_ADMIN is off, and
    `releasectl dev` would not turn it on (development with no auth mode, on loopback)."""
    name = "unauthenticated-admin"
    setting = config.setting_name("allow_unauthenticated_admin")
    if dev_admin_opens(config):
        return _fail(
            name,
            [
                (
                    f"{setting} is not set, but with no auth mode in development "
                    "`releasectl dev` turns it on: anyone on this machine can use the admin UI "
                    "without login, as unauthenticated-admin",
                    "set RELEASECONTROL_AUTH_MODE (auth_mode) to rpc-token or dfs so the admin "
                    f"UI requires sign-in, or set {setting}=0 to keep it closed",
                )
            ],
        )
    if not config.allow_unauthenticated_admin:
        if config.auth_mode in ("rpc-token", "dfs"):
            return _pass(
                name, f"the admin UI requires login (auth mode {config.auth_mode}: a token)"
            )
        mode = config.auth_mode or "none"
        return _pass(
            name,
            f"the admin UI requires login, and with auth mode {mode} nobody can sign in to it "
            "(only rpc-token and dfs have a sign-in)",
        )
    return _fail(
        name,
        [
            (
                f"{setting} is on: anyone reaching the admin UI could promote and roll back",
                f"unset {setting} (or set it to false); admins log in with the auth mode",
            )
        ],
    )


_AUTH_FIXES = {
    "rpc-token": (
        "create the token store with `releasectl token create --principal P --role R "
        "--store {token_store_path}` (it is written mode 0600)"
    ),
    "trusted-cluster": (
        "point cluster_ca_path at the CA that issues workload certificates and "
        "cluster_allowlist_path at the allow-list of SPIFFE IDs and roles"
    ),
    "dfs": (
        "set dfs_issuer, dfs_audience and dfs_public_key_path (or dfs_public_key) to the "
        "issuer's name, this server's audience and the issuer's Ed25519 public key"
    ),
}


def check_auth_mode(config: Config) -> CheckResult:
    """PASS when an auth mode is set and its material loads as the server would load it."""
    from releasecontrol_server.auth.interceptor import authenticator_for

    name = "auth-mode"
    if config.auth_mode is None:
        return _fail(
            name,
            [
                (
                    "no auth mode is set, so every caller with a client certificate from the "
                    "client CA is admin",
                    "set RELEASECONTROL_AUTH_MODE (auth_mode) to rpc-token, trusted-cluster or "
                    "dfs, and provide that mode's material",
                )
            ],
        )
    where = _where(config, "auth_mode")
    fix = _AUTH_FIXES[config.auth_mode].format(token_store_path=config.token_store_path)
    try:
        # The same call main.serve makes: what loads here loads at start.
        authenticator = authenticator_for(config)
    except ConfigError as exc:
        return _fail(name, [(f"auth mode {config.auth_mode} ({where}): {exc.message}", fix)])
    if config.auth_mode == "rpc-token" and not _token_count(config.token_store_path):
        return CheckResult(
            name,
            "WARN",
            f"auth mode rpc-token ({where}): the token store {config.token_store_path} holds "
            "no token, so no caller can authenticate yet",
            fix,
        )
    return _pass(name, f"{authenticator.describe()} ({where})")


def _token_count(path: Path) -> int:
    from releasecontrol_server.auth.tokens import TokenStore

    try:
        return len(TokenStore.load(path).entries)
    except ConfigError:
        return 0


# -- TLS ------------------------------------------------------------------------------------------


class _Problem(Exception):
    def __init__(self, reason: str, fix: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.fix = fix


def _read_certificates(path: Path, what: str, setting: str) -> list[x509.Certificate]:
    fix = f"point {setting} at the PEM file of the {what}"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _Problem(
            f"the {what} {path} ({setting}) cannot be read: {exc.strerror}", fix
        ) from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise _Problem(
            f"the {what} {path} ({setting}) holds no PEM certificate that parses", fix
        ) from None
    return certificates


def _subject(certificate: x509.Certificate) -> str:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else certificate.subject.rfc4514_string() or "(no subject)"


def _validity_problem(
    certificate: x509.Certificate, label: str, now: datetime, renew: str
) -> tuple[str, str] | None:
    if certificate.not_valid_before_utc > now:
        return (
            f"{label} is not valid until {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
            f"{renew}, or fix this machine's clock",
        )
    left = certificate.not_valid_after_utc - now
    if left <= timedelta(0):
        return (f"{label} expired on {certificate.not_valid_after_utc:%Y-%m-%d}", renew)
    if left < EXPIRY_MARGIN:
        days_left = -(-left // timedelta(days=1))  # rounded up: 9.99 days left is "10"
        return (
            f"{label} expires on {certificate.not_valid_after_utc:%Y-%m-%d}, in {days_left} "
            f"day(s), within {EXPIRY_MARGIN.days} days",
            renew,
        )
    return None


def _public_der(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def check_tls(config: Config, *, now: datetime | None = None) -> CheckResult:
    """PASS when the server certificate and key parse and match, the chain in the
    certificate file links up, nothing (client CA included) expires within 30 days,
    and client certificates are required."""
    name = "tls"
    moment = now or datetime.now(UTC)
    cert_setting = config.setting_name("tls_cert_path")
    key_setting = config.setting_name("tls_key_path")
    ca_setting = config.setting_name("tls_client_ca_path")
    problems: list[tuple[str, str]] = []
    summary: list[str] = []

    leaf: x509.Certificate | None = None
    try:
        chain = _read_certificates(config.tls_cert_path, "server certificate", cert_setting)
        leaf = chain[0]
        renew = f"renew the server certificate {config.tls_cert_path}"
        problem = _validity_problem(
            leaf, f"the server certificate {config.tls_cert_path}", moment, renew
        )
        if problem:
            problems.append(problem)
        for child, parent in itertools.pairwise(chain):
            try:
                child.verify_directly_issued_by(parent)
            except (ValueError, TypeError, InvalidSignature):
                problems.append(
                    (
                        f"in {config.tls_cert_path}, {_subject(child)!r} is not issued by the "
                        f"next certificate {_subject(parent)!r}",
                        "put the server certificate first, then each issuer in order",
                    )
                )
        summary.append(
            f"server certificate {_subject(leaf)!r} valid until {leaf.not_valid_after_utc:%Y-%m-%d}"
        )
    except _Problem as exc:
        problems.append((exc.reason, exc.fix))

    try:
        key_data = config.tls_key_path.read_bytes()
        key = serialization.load_pem_private_key(key_data, password=None)
    except OSError as exc:
        problems.append(
            (
                f"the server key {config.tls_key_path} ({key_setting}) cannot be read: "
                f"{exc.strerror}",
                f"point {key_setting} at the server certificate's private key (PEM)",
            )
        )
    except (ValueError, TypeError):
        problems.append(
            (
                f"the server key {config.tls_key_path} ({key_setting}) is not an unencrypted "
                "PEM private key",
                f"point {key_setting} at the server certificate's private key, unencrypted PEM",
            )
        )
    else:
        if leaf is not None:
            if _public_der(key.public_key()) != _public_der(leaf.public_key()):
                problems.append(
                    (
                        f"the server key {config.tls_key_path} does not match the certificate "
                        f"{config.tls_cert_path}",
                        "install the key the certificate was issued for (or reissue the "
                        "certificate for this key)",
                    )
                )
            else:
                summary.append("the key matches")

    try:
        authorities = _read_certificates(config.tls_client_ca_path, "client CA", ca_setting)
        for authority in authorities:
            label = f"the client CA {_subject(authority)!r} in {config.tls_client_ca_path}"
            try:
                constraints = authority.extensions.get_extension_for_class(x509.BasicConstraints)
                is_ca = constraints.value.ca
            except x509.ExtensionNotFound:
                is_ca = False
            if not is_ca:
                problems.append(
                    (
                        f"{label} is not a CA certificate (no BasicConstraints CA:TRUE)",
                        f"point {ca_setting} at the CA that issues client certificates",
                    )
                )
            problem = _validity_problem(authority, label, moment, f"renew {label}")
            if problem:
                problems.append(problem)
        summary.append(f"client CA {config.tls_client_ca_path} ({len(authorities)} certificate(s))")
    except _Problem as exc:
        problems.append((exc.reason, exc.fix))

    if not config.require_client_cert:
        setting = config.setting_name("require_client_cert")
        problems.append(
            (
                f"{setting} is off: RPCs without a client certificate would be accepted",
                f"set {setting} to true",
            )
        )
    if problems:
        return _fail(name, problems)
    return _pass(name, "; ".join([*summary, "client certificates required"]))


# -- signing ------------------------------------------------------------------------------------


def check_signing_keys(config: Config, *, now: datetime | None = None) -> CheckResult:
    """PASS when the roots chain from the trust file (as hosts follow them), the newest has
    not expired, and the signing keys are its online keys, enough of them for its
    threshold (and, in production, none of it is a dev key); WARN when the newest root
    expires within 30 days."""
    name = "signing-keys"
    now = datetime.now(UTC) if now is None else now
    try:
        keyring = load_keyring(config, now=now)
    except ConfigError as exc:
        return _fail(
            name,
            [
                (
                    exc.message,
                    "keep every signed root in root_dir, and sign with online keys the newest "
                    "root lists (`releasectl keys rotate`, `releasectl keys sign-root`)",
                )
            ],
        )
    root = keyring.root
    expires = f"{root.expires_at:%Y-%m-%dT%H:%M:%SZ}"
    keys = ", ".join(short_keyid(k.keyid) for k in keyring.keys)
    index = root.roles["index"]
    summary = (
        f"root {root.version} (expires {expires}) lists the {len(keyring.keys)} signing "
        f"key(s) {keys}; index threshold {index.threshold}"
    )
    if root.expires_at - now < ROOT_RENEW_BEFORE:
        return CheckResult(
            name,
            "WARN",
            f"{summary}; the root expires in less than {ROOT_RENEW_BEFORE.days} days",
            f"sign root {root.version + 1} with the root keys before {expires}: hosts refuse "
            "everything once the root expired",
        )
    return _pass(name, summary)


# -- what is published ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedRead:
    """What `read_origin` found: the published manifests, or why they could not be read."""

    where: str
    """The origin folder or URL read."""
    published: Published | None = None
    error: str = ""


MIN_POSTGRES = 13
"""The oldest PostgreSQL the store is tested against the features of (identity columns,
advisory locks, LISTEN/NOTIFY are older; 13 is the oldest still supported upstream)."""


def check_database(config: Config, read: PublishedRead) -> CheckResult:
    """The database: reachable, of a schema this release knows, for PostgreSQL a supported
    version with connections enough for its replicas, and the one whose index the origin
    serves (a second database publishing to the same origin, or a restored one, shows as an
    origin ahead of it)."""
    name = "database"
    setting = _where(config, "database_url" if config.database_url else "database_path")
    try:
        facts = inspect_database(config.database)
    except ConfigError as exc:
        fix = (
            "check database_url and that PostgreSQL runs and lets this user in"
            if config.database_url
            else "restore the database file from a backup (`releasectl restore PATH`)"
        )
        return _fail(name, [(f"{exc.message} ({setting})", fix)])
    problems: list[tuple[str, str]] = []
    if facts.schema_version > SCHEMA_VERSION:
        problems.append(
            (
                f"the database {facts.where} has schema version {facts.schema_version}, newer "
                f"than this release's {SCHEMA_VERSION}",
                "run the release that wrote it, or a newer one",
            )
        )
    if facts.engine == "postgresql":
        major = int(facts.server_version.split(".")[0].split()[0])
        if major < MIN_POSTGRES:
            problems.append(
                (
                    f"PostgreSQL {facts.server_version} is older than {MIN_POSTGRES}",
                    f"upgrade PostgreSQL to {MIN_POSTGRES} or newer",
                )
            )
        need = facts.per_replica * (len(facts.replicas) + 1)  # a rolling update adds one
        if facts.connection_limit < need:
            problems.append(
                (
                    f"PostgreSQL lets ordinary roles open {facts.connection_limit} connections; "
                    f"{len(facts.replicas)} replicas use up to {facts.per_replica} each, and a "
                    f"rolling update starts one more: {need}",
                    "raise max_connections (a pooler in front must run in session mode: the "
                    "replicas hold advisory locks and LISTEN)",
                )
            )
    origin = read.published.remote_sequence if read.published is not None else None
    ours = _signed_sequence(facts.top)
    if origin is not None and ours is not None and origin > ours:
        problems.append(
            (
                f"the origin serves remote-index.json at sequence {origin}, above this "
                f"database's {ours}: another database publishes to this origin, or this one was "
                "restored from an older backup",
                "point every replica at one database (database_url); for a restored one, run "
                "`releasectl origin rebuild`",
            )
        )
    if problems:
        return _fail(name, problems)
    what = f"{facts.engine} {facts.server_version} at {facts.where} ({setting})"
    if facts.schema_version < SCHEMA_VERSION:
        when = "empty" if facts.schema_version == 0 else f"schema {facts.schema_version}"
        return CheckResult(
            name,
            "WARN",
            f"{what} is {when}; the server brings it to schema {SCHEMA_VERSION} at start",
            "start the server, or run `releasecontrol-server migrate` first",
        )
    reason = f"{what}, schema {facts.schema_version}"
    if facts.engine == "postgresql":
        reason += (
            f"; {len(facts.replicas)} replica{'' if len(facts.replicas) == 1 else 's'} connected"
            + (f" ({', '.join(facts.replicas)})" if facts.replicas else "")
            + f"; {facts.connections_used} of {facts.connection_limit} connections in use"
        )
    return _pass(name, reason)


def _signed_sequence(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        return int(Envelope.from_bytes(data).signed["sequence"])
    except (ReleaseControlError, KeyError, TypeError, ValueError):
        return None


def read_origin(config: Config, *, timeout_seconds: float = 10.0) -> PublishedRead:
    """The live manifests on the config's origin: the files directly for a filesystem
    origin, else over HTTP(S) from origin_public_url. Never raises."""
    from releasecontrol.fetch import Fetcher

    if config.origin_type == "filesystem":
        where = str(config.origin_dir / REMOTE_INDEX_PATH)
        reader = folder_reader(config.origin_dir)
    else:
        where = config.origin_public_url + REMOTE_INDEX_PATH
        reader = http_reader(
            config.origin_public_url,
            fetcher=Fetcher(timeout_seconds=timeout_seconds, user_agent="releasectl-doctor"),
        )
    trust: TrustStore | None
    try:
        trust = _load_trust(config)
        if config.is_production and not config.allow_insecure_dev_keys:
            trust = trust.without_dev_keys()
    except (ConfigError, ValueError):
        # trusted-keys or signing-keys reports why; the routes and compat of what
        # is there can still be checked, with the hash chain but no signatures.
        trust = None
    try:
        published = read_published(reader, source=where, trust=trust, allow_dev_keys=True)
    except ReleaseControlError as exc:
        return PublishedRead(where, error=exc.message)
    return PublishedRead(where, published=published)


def _cannot_read(name: str, read: PublishedRead) -> CheckResult:
    return _fail(
        name,
        [
            (
                f"the published manifests at {read.where} cannot be read: {read.error}",
                "fix the origin (or origin_dir / origin_public_url) so hosts can load it",
            )
        ],
    )


def _nothing_published(name: str, read: PublishedRead, what: str) -> CheckResult:
    return CheckResult(
        name,
        "WARN",
        f"nothing is published at {read.where} yet, so there is no {what} to check",
        "publish a feature (`releasectl publish`), then run doctor again",
    )


def _findings_text(findings: Sequence[routes.Finding]) -> str:
    shown = [f"{f.severity}: {f.message}" for f in findings[:_MAX_FINDINGS_IN_REASON]]
    more = len(findings) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more else "")


def _live(published: Published) -> str:
    live = ", ".join(f"{m.feature_id} {m.version}" for m in published.manifests) or "none"
    if not published.signatures_checked:
        live += "; signatures not checked, see trusted-keys and signing-keys"
    return live


def check_routes(config: Config, read: PublishedRead) -> CheckResult:
    """PASS when `lint routes` finds no error in the published manifests (warnings are
    named in the reason)."""
    name = "lint-routes"
    if read.published is None:
        return _cannot_read(name, read)
    if not read.published.found:
        return _nothing_published(name, read, "route")
    try:
        findings = routes.lint_routes(
            routes.routes_by_feature(read.published.manifest_dicts()),
            reserved=config.reserved_routes,
        )
    except InvalidArgument as exc:
        return _fail(name, [(exc.message, "fix reserved_routes in the config")])
    if routes.failed(findings, strict=False):
        return _fail(
            name,
            [
                (
                    _findings_text(findings),
                    "change the manifests' routes and publish again; "
                    "`releasectl lint routes` lists every finding",
                )
            ],
        )
    warnings = f"; {_findings_text(findings)}" if findings else ""
    return _pass(
        name,
        f"routes of {len(read.published.manifests)} live manifest(s) "
        f"({_live(read.published)}) pass{warnings}",
    )


def check_compat(config: Config, read: PublishedRead) -> CheckResult:
    """PASS when `validate compat --strict` finds nothing in the published manifests,
    against the config's host_version."""
    name = "validate-compat"
    if config.host_version is None:
        return _fail(
            name,
            [
                (
                    "host_version is not set, so compat ranges cannot be checked",
                    "set host_version (RELEASECONTROL_HOST_VERSION) to the version of the "
                    "host application, e.g. '2.4.0'",
                )
            ],
        )
    if read.published is None:
        return _cannot_read(name, read)
    if not read.published.found:
        return _nothing_published(name, read, "compat range")
    findings = compat.check_compat(
        read.published.manifest_dicts(), host_version=config.host_version
    )
    if compat.failed(findings, strict=True):
        return _fail(
            name,
            [
                (
                    _findings_text(findings),
                    "change the manifests' compat ranges (or host_version) and publish again; "
                    "`releasectl validate compat --strict` lists every finding",
                )
            ],
        )
    return _pass(
        name,
        f"compat of {len(read.published.manifests)} live manifest(s) ({_live(read.published)}) "
        f"holds for host {config.host_version}, strict",
    )


# -- the origin's caching headers -----------------------------------------------------------------


@dataclass(frozen=True)
class HttpAnswer:
    """An HTTP status and the response headers (names lower-cased)."""

    status: int
    headers: Mapping[str, str]


Head = Callable[[str], HttpAnswer]
"""Asks a URL for its headers; raises OSError when it cannot be reached."""


def http_head(url: str, *, timeout_seconds: float = 10.0) -> HttpAnswer:
    """HEAD `url` (a GET, body unread, when HEAD is not allowed); raises OSError when the
    origin cannot be reached. Error statuses are answers, not exceptions."""
    answer = _request(url, "HEAD", timeout_seconds)
    if answer.status in (405, 501):
        answer = _request(url, "GET", timeout_seconds)
    return answer


def _request(url: str, method: str, timeout_seconds: float) -> HttpAnswer:
    request = urllib.request.Request(
        url, method=method, headers={"User-Agent": "releasectl-doctor"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_seconds) as response:
            return HttpAnswer(response.status, {k.lower(): v for k, v in response.headers.items()})
    except urllib.error.HTTPError as exc:
        with exc:
            return HttpAnswer(exc.code, {k.lower(): v for k, v in exc.headers.items()})


def revalidates(cache_control: str | None) -> bool:
    """Whether a Cache-Control value makes every cache revalidate before each reuse:
    `no-cache`, or `max-age=0` with `must-revalidate` (and no shared-cache `s-maxage`)."""
    if not cache_control:
        return False
    directives: dict[str, str] = {}
    for part in cache_control.split(","):
        key, _, value = part.strip().partition("=")
        directives[key.strip().lower()] = value.strip().strip('"')
    if "no-cache" in directives:
        return True
    if directives.get("s-maxage", "0") != "0":
        return False
    return directives.get("max-age") == "0" and "must-revalidate" in directives


_HEADER_FIX = (
    "serve remote-index.json and features/*/releases.json with `Cache-Control: no-cache` (or "
    "`max-age=0, must-revalidate`) so hosts see a new index, a rollback above all, at once; "
    "on a CDN, add a cache rule for those paths"
)


def check_origin_headers(
    config: Config, read: PublishedRead | None = None, *, head: Head | None = None
) -> CheckResult:
    """PASS when remote-index.json and every releases.json are served from
    origin_public_url with revalidation headers. WARN when nothing is published yet,
    FAIL when the origin is unreachable or a file may be cached stale."""
    name = "origin-headers"
    ask = head or http_head
    base = config.origin_public_url
    paths = [REMOTE_INDEX_PATH]
    if read is not None and read.published is not None:
        paths += [p for p in read.published.index_paths if p != REMOTE_INDEX_PATH]
    problems: list[tuple[str, str]] = []
    checked = 0
    for path in paths:
        url = base + path
        try:
            answer = ask(url)
        except OSError as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            return _fail(
                name,
                [
                    (
                        f"the origin is unreachable: {url} could not be fetched ({reason})",
                        "start the server (it serves origin_dir on origin_http_listen) or make "
                        f"{config.setting_name('origin_public_url')} reachable from here, then "
                        "run doctor again",
                    )
                ],
            )
        if answer.status == 404 and path == REMOTE_INDEX_PATH:
            return CheckResult(
                name,
                "WARN",
                f"nothing is published yet: {url} answered 404, so its caching headers "
                "cannot be checked",
                "publish a feature (`releasectl publish`), then run doctor again",
            )
        if not 200 <= answer.status < 300:
            problems.append(
                (
                    f"{url} answered HTTP {answer.status}",
                    "make the origin serve every published file",
                )
            )
            continue
        cache_control = answer.headers.get("cache-control")
        if not revalidates(cache_control):
            shown = f"'Cache-Control: {cache_control}'" if cache_control else "no Cache-Control"
            problems.append(
                (f"{url} is served with {shown}, so caches may serve it stale", _HEADER_FIX)
            )
        checked += 1
    if problems:
        return _fail(name, problems)
    return _pass(name, f"{checked} index file(s) at {base} are served with revalidation headers")


# -- all of it ------------------------------------------------------------------------------------


def run_doctor(
    environ: Mapping[str, str],
    config_path: Path | None = None,
    *,
    cwd: Path | None = None,
    now: datetime | None = None,
    head: Head | None = None,
    timeout_seconds: float = 10.0,
) -> DoctorReport:
    """Load the config and run every check, in CHECK_NAMES order.

    A config that does not load at all is one FAIL item named `config`.
    Never raises for anything the operator could fix.
    """
    try:
        config = load_config_for_doctor(environ, config_path, cwd=cwd)
    except ConfigError as exc:
        return DoctorReport(
            config_path,
            (
                CheckResult(
                    "config",
                    "FAIL",
                    f"the configuration does not load: {exc.message}",
                    "fix the setting named, then run doctor again",
                ),
            ),
        )
    published = read_origin(config, timeout_seconds=timeout_seconds)
    results = (
        check_production_mode(config),
        check_trusted_keys(config),
        check_dev_keys_off(config),
        check_unauthenticated_admin_off(config),
        check_auth_mode(config),
        check_tls(config, now=now),
        check_signing_keys(config),
        check_database(config, published),
        check_routes(config, published),
        check_compat(config, published),
        check_origin_headers(
            config,
            published,
            head=head or (lambda url: http_head(url, timeout_seconds=timeout_seconds)),
        ),
    )
    for result in results:
        log.debug("doctor check=%s status=%s", result.name, result.status)
    return DoctorReport(config.config_file, results)
