"""The control plane's configuration: one frozen dataclass, loaded once per process.

Layers, lowest first: built-in defaults, a TOML file, the environment (the
environment wins). The TOML file is the `config_path` argument, else
`RELEASECONTROL_CONFIG`, else `$RELEASECONTROL_HOME/config.toml` when it exists.

Every setting is a top-level TOML key named like the field (`grpc_listen = ...`)
and an environment variable `RELEASECONTROL_<FIELD>` (`RELEASECONTROL_GRPC_LISTEN`).
The contract's names work too: `FEATURE_TRUST_PUBLIC_KEYS_JSON`,
`FEATURE_TRUST_PUBLIC_KEYS_PATH`, `FEATURE_ALLOW_INSECURE_DEV_KEYS`,
`ALLOW_UNAUTHENTICATED_ADMIN`, and `NODE_ENV`.

Whether this is production is the one setting where the environment does not
simply win: `env` in the file, `RELEASECONTROL_ENV` and `NODE_ENV` must agree
where they are set, or the load is refused naming both (a leftover
`RELEASECONTROL_ENV=development` must not quietly turn a production config's
safeties off). `env` and `RELEASECONTROL_ENV` take `development` or
`production`; `NODE_ENV` takes `production`, `development` or `test` (the last
two mean development); any other value (`prod`, `staging`) is refused, listing
these, rather than taken as development.

Everything is checked at load: a bad value raises `ConfigError` with one sentence
naming the setting as the user wrote it (the TOML key or the environment
variable), the value and the fix. An unknown TOML key is an error, so a typo
never passes silently. A production config that switches off a safety refuses
to load; `Config.production_problems()` is the list behind that refusal, for
`releasectl doctor` to extend.

Empty environment variables: for a yes/no setting "" means no; for an optional
setting (`auth_mode`, the trust keys, the `s3_*` settings) "" means unset;
anywhere else it is an error. Relative paths resolve against the current directory.

The origin: `origin_type = "filesystem"` (the default) writes to `origin_dir`
and serves it on `origin_http_listen`. `origin_type = "s3"` writes to the bucket
`s3_bucket` (required) instead, and then:

- nothing is served over HTTP: the files live in the bucket, not in a folder
  this process could serve, so `origin_http_listen` defaults to off and a
  non-empty one is refused rather than serving an empty folder;
- `origin_public_url`, unless set, is the bucket's own URL (path-style under
  `s3_endpoint_url`, else AWS's virtual-hosted URL); set it to the CDN in
  front of the bucket in production;
- credentials come from boto3's standard chain (AWS_ACCESS_KEY_ID and
  AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role); the config
  holds none, and an endpoint URL carrying a user or password is refused.

An `s3_*` setting with `origin_type = "filesystem"` is refused: it would be
ignored, and the files would go to the local folder instead of the bucket.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import urlsplit

import semver

from releasecontrol.errors import ConfigError
from releasecontrol.manifest import DEFAULT_MAX_MANIFEST_BYTES
from releasecontrol_server.releases import MAX_SOAK_SECONDS
from releasecontrol_server.store.location import is_postgres_url

Environment = Literal["development", "production"]
AuthMode = Literal["rpc-token", "trusted-cluster", "dfs"]
OriginType = Literal["filesystem", "s3"]
LogFormat = Literal["text", "json"]

ENVIRONMENTS: tuple[Environment, ...] = ("development", "production")
NODE_ENV_VALUES: Mapping[str, Environment] = MappingProxyType(
    {"production": "production", "development": "development", "test": "development"}
)
"""What each accepted NODE_ENV value means here; any other value is refused."""
AUTH_MODES: tuple[AuthMode, ...] = ("rpc-token", "trusted-cluster", "dfs")
ORIGIN_TYPES: tuple[OriginType, ...] = ("filesystem", "s3")
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

CONFIG_ENV_VAR = "RELEASECONTROL_CONFIG"
HOME_ENV_VAR = "RELEASECONTROL_HOME"
CONFIG_FILE_NAME = "config.toml"
DEFAULT_HOME_NAME = ".releasecontrol"

_MIB = 1024 * 1024
_DAY_SECONDS = 24 * 3600


@dataclass(frozen=True, kw_only=True)
class Config:
    """The settings of one control plane process; build it with `load_config`."""

    env: Environment = "development"
    """`production` turns on the production refusals (see `production_problems`)."""

    home: Path
    """The state directory; every path default below lives under it."""

    grpc_listen: str = "127.0.0.1:50051"
    """Where the gRPC API listens, `host:port`; port 0 picks a free port."""

    origin_type: OriginType = "filesystem"
    """Where published files go: `filesystem` (`origin_dir`) or `s3` (`s3_bucket`)."""

    origin_dir: Path
    """The CDN origin on the filesystem (default `home/origin`); unused with `s3`."""

    origin_http_listen: str = "127.0.0.1:4100"
    """Where the origin is served over HTTP, `host:port`; empty means not served
    (always empty with origin_type `s3`)."""

    origin_public_url: str = "http://127.0.0.1:4100/"
    """The origin's URL as hosts see it; http(s), always ending in `/` (with `s3`
    the bucket's URL unless set)."""

    s3_bucket: str | None = None
    """The bucket the `s3` origin writes to; required with origin_type `s3`."""

    s3_prefix: str = ""
    """A key prefix inside the bucket (`releases/`): empty, or always ending in `/`."""

    s3_endpoint_url: str | None = None
    """An S3-compatible service's http(s) URL (MinIO, Ceph, R2); unset means AWS S3."""

    s3_region: str | None = None
    """The bucket's region (`eu-west-1`); unset means boto3's own (AWS_REGION, the profile)."""

    artifact_store: str
    """Where the control plane keeps its own copy of every published artifact (for
    `releasectl origin rebuild`): a folder (default `home/artifacts`), or `s3://bucket/prefix`
    (at `s3_endpoint_url` in `s3_region` when set), separate from the CDN origin."""

    admin_listen: str = "127.0.0.1:8080"
    """Where the admin UI (`/_admin`) listens, `host:port`."""

    beacon_listen: str = "127.0.0.1:4200"
    """Where hosts send beacons (`POST /v1/beacons`, docs/beacons.md), `host:port`; served
    only while `beacon_keys` names at least one key. Hosts anywhere reach it: in production,
    behind the same kind of public endpoint as the CDN."""

    analysis_source: AnalysisSource = "beacons"
    """Where the canary analysis gets loads and failures: `beacons` (hosts report to
    beacon_listen, docs/beacons.md) or `prometheus` (two PromQL queries against
    prometheus_url, prometheus.py; docs/analysis.md)."""

    prometheus_url: str | None = None
    """`prometheus`: the server's http(s) URL (`http://prometheus:9090`; a path prefix is
    kept); no user or password in it."""

    prometheus_loads_query: str | None = None
    """`prometheus`: PromQL counting the loads of one feature version, with {feature},
    {version} and {window}, e.g. `sum(increase(frontend_feature_loads_total{feature="{feature}",
    version="{version}"}[{window}]))`; checked at load."""

    prometheus_failures_query: str | None = None
    """`prometheus`: PromQL counting the failed loads of one feature version, same placeholders;
    may split them by a `kind` label (entry_errors, load_failures, refusals)."""

    prometheus_bearer_token_path: Path | None = None
    """`prometheus`: a file holding a bearer token for the server, read again when it changes;
    unset: no Authorization header. The token is never logged or shown."""

    prometheus_timeout_seconds: float = 5.0
    """`prometheus`: how long one query may take."""

    analysis_budget_ratio: float = 1.5
    """The canary's failure budget against stable: it may fail this many times as often as
    stable, or `analysis_budget_points` more, whichever allows more (docs/analysis.md)."""

    analysis_budget_points: float = 0.1
    """The budget in percentage points of failure rate above stable's."""

    analysis_alpha: float = 0.01
    """The chance of rolling back a canary that is within budget, over its whole life."""

    analysis_min_loads: int = 500
    """Loads each side (canary and stable) must have before the analysis says anything:
    what keeps a burst of reports from one side from rolling a canary back."""

    analysis_interval_seconds: float = 5.0
    """How often every running canary is judged from the beacons (analyzer.py)."""

    webhooks: tuple[WebhookConfig, ...] = ()
    """Where to tell every change, approval request and analysis verdict (webhooks.py): TOML
    `[[webhooks]]` tables, or RELEASECONTROL_WEBHOOKS as a JSON list of the same objects,
    each with `name`, `url`, `secret_path` (the HMAC-SHA256 key, at least 16 bytes),
    optional `format` ("json" or "slack") and `events` (of "change", "approval",
    "verdict"; default all)."""

    beacon_keys: tuple[str, ...] = ()
    """The publishable keys hosts put in their beacons (one per site; not secrets). With
    none, no beacon is taken, and canaries are judged by time alone (no analysis)."""

    admin_session_secret_path: Path
    """The key that signs admin UI session cookies (default `home/admin/session.key`);
    made with mode 0600 on first start. Replacing it signs everyone out."""

    admin_session_seconds: int = 3600
    """How long an admin UI sign-in lasts (a `dfs` sign-in ends with its token)."""

    database_path: Path
    """The SQLite database (default `home/releasecontrol.db`), unless `database_url` is set."""

    database_url: str | None = field(default=None, repr=False)
    """`postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=…]`: run on PostgreSQL,
    shared by several replicas, instead of the SQLite file. May carry a password: never
    logged or shown in full (`store.location.redact`)."""

    tls_cert_path: Path
    """The server's TLS certificate, PEM (default `home/pki/server.pem`)."""

    tls_key_path: Path
    """The server's TLS private key, PEM (default `home/pki/server-key.pem`)."""

    tls_client_ca_path: Path
    """The CA that client certificates must chain to (default `home/pki/ca.pem`)."""

    require_client_cert: bool = True
    """Refuse RPCs without a client certificate; production refuses to turn it off."""

    signing_key_paths: tuple[Path, ...]
    """The online Ed25519 keys that sign every index (default `home/keys/signing-key.pem`);
    the newest root in `root_dir` must list them in its index role."""

    root_dir: Path
    """The signed roots, `<N>.json` for every version N (default `home/keys/roots`): the
    chain hosts follow from the root keys of the trust file to the online keys."""

    trust_public_keys_json: str | None = None
    """The trust file inline (FEATURE_TRUST_PUBLIC_KEYS_JSON); excludes the path."""

    trust_public_keys_path: Path | None = None
    """The trust file (FEATURE_TRUST_PUBLIC_KEYS_PATH); `home/keys/trust.json` when
    neither it nor the inline JSON is set."""

    default_soak_seconds: int = 1800
    """How long a canary soaks when the request names no soak."""

    index_expiry_seconds: int = 7 * _DAY_SECONDS
    """How long a signed index stays valid; hosts refuse it after that."""

    require_approval: tuple[str, ...] = ()
    """Feature id patterns (`*`, `?`, `[...]` as in shell globs) whose promotions to stable
    (`release promote`, with or without `--skip-soak`, and a publish straight to stable)
    need `release approve` by a second principal with the approver role (`approvals.py`)."""

    approval_ttl_seconds: int = _DAY_SECONDS
    """How long an approval request waits for its second pair of eyes before it expires."""

    origin_check_interval_seconds: int = 3600
    """How often the server compares every file hosts read on the origin with what it signed
    and writes back what differs (also right after start); 0 checks only at start."""

    max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES
    """The largest manifest a publish may send."""

    max_publish_bytes: int = 256 * _MIB
    """The largest publish (manifest and artifacts together)."""

    watch_queue_size: int = 1024
    """Events buffered per WatchReleases subscriber before it is dropped as too slow."""

    shutdown_grace_seconds: float = 5.0
    """How long in-flight RPCs may finish after a stop signal."""

    log_format: LogFormat = "text"
    """`text` (time level logger message) or `json`: every log line one JSON object with
    time, level, logger, message and the line's fields (`logs.py`)."""

    metrics_token: str | None = field(default=None, repr=False)
    """When set, `/metrics` on the admin listener answers only requests carrying
    `Authorization: Bearer <token>` (401 otherwise); unset, anyone who reaches the admin
    listener may scrape it. A secret: never logged or shown."""

    auth_mode: AuthMode | None = None
    """How callers authenticate: `rpc-token`, `trusted-cluster`, `dfs`, or none set."""

    host_version: str | None = None
    """The version of the host application features run in; `validate compat` and
    `doctor` check every manifest's `compat.host` range against it."""

    reserved_routes: tuple[str, ...] = ("/_admin",)
    """Route prefixes no feature may claim (`lint routes`); `/_admin` is always one."""

    admin_trusted_proxies: str = ""
    """Addresses (comma-separated IPs or CIDRs) of proxies in front of the admin UI whose
    X-Forwarded-Proto/For headers are believed; empty: none (direct connections)."""

    token_store_path: Path
    """`rpc-token`: the hashed token store (default `home/auth/tokens.json`)."""

    cluster_ca_path: Path | None = None
    """`trusted-cluster`: the CA workload certificates chain to; unset: tls_client_ca_path."""

    cluster_allowlist_path: Path
    """`trusted-cluster`: SPIFFE IDs and roles (default `home/auth/cluster-allowlist.toml`)."""

    dfs_issuer: str = ""
    """`dfs`: the `iss` delegated tokens must carry."""

    dfs_audience: str = "releasecontrol"
    """`dfs`: the `aud` delegated tokens must carry."""

    dfs_public_key: str | None = None
    """`dfs`: the issuer's Ed25519 public key inline (PEM or base64 of the raw key)."""

    dfs_public_key_path: Path | None = None
    """`dfs`: a file holding the issuer's public key(s)."""

    dfs_leeway_seconds: int = 30
    """`dfs`: clock skew allowed on exp/nbf."""

    dfs_max_token_ttl_seconds: int = 3600
    """`dfs`: the longest lifetime a delegated token may claim."""

    allow_insecure_dev_keys: bool = False
    """Lets dev keys sign and verify (FEATURE_ALLOW_INSECURE_DEV_KEYS); refused in production."""

    allow_unauthenticated_admin: bool = False
    """Admin UI without login (ALLOW_UNAUTHENTICATED_ADMIN); refused in production."""

    # Not settings: where the values came from, for messages and `doctor`.
    config_file: Path | None = field(default=None, compare=False)
    """The TOML file that was read, if any."""

    sources: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False
    )
    """Field name -> the setting as the user wrote it (`RELEASECONTROL_ENV`,
    `env in /etc/releasecontrol/config.toml`) or `default`."""

    @property
    def is_production(self) -> bool:
        """True when env is production."""
        return self.env == "production"

    @property
    def database(self) -> Path | str:
        """Where the store is: `database_url` when set (PostgreSQL), else `database_path`."""
        return self.database_url or self.database_path

    @property
    def endpoints_path(self) -> Path:
        """Where a running server records the addresses it bound (`home/run/endpoints.json`)."""
        return self.home / "run" / "endpoints.json"

    def setting_name(self, name: str) -> str:
        """How the user set field `name` (env var or TOML key), else the field name."""
        source = self.sources.get(name, "default")
        return name if source == "default" else source

    def production_problems(self) -> list[str]:
        """One sentence per setting production refuses; empty when fine or not production."""
        if not self.is_production:
            return []
        problems: list[str] = []
        if self.allow_insecure_dev_keys:
            problems.append(
                f"{self.setting_name('allow_insecure_dev_keys')} is on, but production refuses "
                "insecure dev keys; unset it and sign with a real key and trust file."
            )
        if self.allow_unauthenticated_admin:
            problems.append(
                f"{self.setting_name('allow_unauthenticated_admin')} is on, but production "
                "refuses an admin UI without login; unset it and configure an auth mode."
            )
        if self.auth_mode is None:
            problems.append(
                "no auth mode is set, so every caller with a client certificate could do "
                "everything; set RELEASECONTROL_AUTH_MODE to rpc-token, trusted-cluster or dfs."
            )
        if self.sources.get("trust_public_keys_path", "default") == "default" and (
            self.trust_public_keys_json is None
        ):
            problems.append(
                "no trusted public keys are configured; set FEATURE_TRUST_PUBLIC_KEYS_PATH "
                "or FEATURE_TRUST_PUBLIC_KEYS_JSON to the keys hosts trust."
            )
        if not self.require_client_cert:
            problems.append(
                f"{self.setting_name('require_client_cert')} is off, but production requires "
                "a client certificate on every RPC; set it to true."
            )
        return problems


# --- parsing one value -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Context:
    cwd: Path


_Parser = Callable[[object, str, _Context], object]


def _show(raw: object) -> str:
    text = repr(raw)
    return text if len(text) <= 80 else text[:77] + "..."


def _bad(label: str, raw: object, fix: str) -> ConfigError:
    return ConfigError(f"{label} is {_show(raw)}; {fix}.")


def _absolute(text: str, cwd: Path) -> Path:
    # normpath, not resolve(): keep the user's symlinks, just make the path absolute.
    return Path(os.path.normpath(cwd / Path(text).expanduser()))


def _parse_bool(raw: object, label: str, ctx: _Context) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off", ""):
            return False
    raise _bad(label, raw, "set it to true or false (1/0, yes/no and on/off work too)")


def _int_between(minimum: int, maximum: int, unit: str) -> _Parser:
    def parse(raw: object, label: str, ctx: _Context) -> int:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str):
            try:
                value = int(raw.strip(), 10)
            except ValueError:
                value = None
        if value is None or not minimum <= value <= maximum:
            raise _bad(
                label, raw, f"set it to a whole number of {unit} from {minimum} to {maximum}"
            )
        return value

    return parse


def _float_between(minimum: float, maximum: float) -> _Parser:
    def parse(raw: object, label: str, ctx: _Context) -> float:
        value: float | None = None
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            value = float(raw)
        elif isinstance(raw, str):
            try:
                value = float(raw.strip())
            except ValueError:
                value = None
        if value is None or not math.isfinite(value) or not minimum <= value <= maximum:
            raise _bad(label, raw, f"set it to a number of seconds from {minimum:g} to {maximum:g}")
        return value

    return parse


def _parse_environment(raw: object, label: str, ctx: _Context) -> Environment:
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word not in ENVIRONMENTS:
        raise _bad(label, raw, "set it to 'development' or 'production'")
    return word


def _parse_auth_mode(raw: object, label: str, ctx: _Context) -> AuthMode | None:
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word == "":
        return None
    if word not in AUTH_MODES:
        raise _bad(
            label, raw, "set it to 'rpc-token', 'trusted-cluster' or 'dfs', or leave it unset"
        )
    return word


def _parse_log_format(raw: object, label: str, ctx: _Context) -> LogFormat:
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word not in LOG_FORMATS:
        raise _bad(label, raw, "set it to 'text' or 'json'")
    return word


_TOKEN = re.compile(r"[\x21-\x7e]{16,4096}")


def _parse_metrics_token(raw: object, label: str, ctx: _Context) -> str | None:
    if raw == "":
        return None
    if not isinstance(raw, str) or not _TOKEN.fullmatch(raw.strip()):
        # Not echoed: the value is a secret, or close to one.
        raise ConfigError(
            f"{label} is not a usable token; set it to 16 to 4096 printable ASCII characters "
            "without spaces (e.g. `openssl rand -hex 32`), or leave it unset."
        )
    return raw.strip()


def _parse_origin_type(raw: object, label: str, ctx: _Context) -> OriginType:
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word not in ORIGIN_TYPES:
        raise _bad(label, raw, "set it to 'filesystem' or 's3'")
    return word


# AWS's rules: 3 to 63 lowercase letters, digits, dots and hyphens, letter or digit at each end.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def _parse_s3_bucket(raw: object, label: str, ctx: _Context) -> str | None:
    if raw == "":
        return None
    text = raw.strip() if isinstance(raw, str) else ""
    if not _BUCKET.fullmatch(text) or ".." in text:
        raise _bad(
            label,
            raw,
            "set it to a bucket name: 3 to 63 lowercase letters, digits, '.' and '-', "
            "starting and ending with a letter or digit",
        )
    return text


def _parse_s3_prefix(raw: object, label: str, ctx: _Context) -> str:
    # origin.s3 loads boto3, so it is imported only when a prefix is given.
    from releasecontrol_server.origin.s3 import normalize_prefix

    fix = "set it to a key prefix such as 'releases/' (letters, digits, '.', '_', '-' and '/')"
    if not isinstance(raw, str):
        raise _bad(label, raw, fix)
    try:
        return normalize_prefix(raw)
    except ValueError:
        raise _bad(label, raw, fix) from None


def _parse_s3_endpoint_url(raw: object, label: str, ctx: _Context) -> str | None:
    if raw == "":
        return None
    fix = (
        "set it to the http(s) URL of the S3-compatible service, e.g. "
        "'https://minio.internal:9000', or leave it unset for AWS S3"
    )
    text = raw.strip() if isinstance(raw, str) else ""
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise _bad(label, raw, fix) from None
    if parts.username is not None or parts.password is not None:
        # Not echoed: the value holds what looks like a credential.
        raise ConfigError(
            f"{label} carries a user name or password; credentials come from the AWS "
            "credential chain (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a "
            "role), never from the config: remove them from the URL."
        )
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise _bad(label, raw, fix)
    return text.rstrip("/")


def _parse_s3_region(raw: object, label: str, ctx: _Context) -> str | None:
    if raw == "":
        return None
    text = raw.strip() if isinstance(raw, str) else ""
    if not _REGION.fullmatch(text):
        raise _bad(label, raw, "set it to a region name such as 'eu-west-1', or leave it unset")
    return text


def _parse_artifact_store(raw: object, label: str, ctx: _Context) -> str:
    fix = "set it to a folder, or to s3://BUCKET/PREFIX for a bucket"
    if not isinstance(raw, str) or not raw.strip():
        raise _bad(label, raw, fix)
    text = raw.strip()
    if not text.startswith("s3://"):
        return str(_absolute(text, ctx.cwd))
    bucket, _, prefix = text.removeprefix("s3://").partition("/")
    checked = _parse_s3_bucket(bucket, label, ctx)
    if checked is None:
        raise _bad(label, raw, fix)
    return f"s3://{checked}/{_parse_s3_prefix(prefix, label, ctx)}"


def _parse_path(raw: object, label: str, ctx: _Context) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise _bad(label, raw, "set it to a file or directory path")
    return _absolute(raw, ctx.cwd)


def _parse_database_url(raw: object, label: str, ctx: _Context) -> str | None:
    text = raw.strip() if isinstance(raw, str) else None
    if text == "":
        return None
    fix = (
        "set it to postgresql://USER@HOST:PORT/DATABASE (a password may follow USER after a "
        "colon), or leave it unset to keep the SQLite file database_path"
    )
    if text is None:
        raise _bad(label, raw, fix)
    parts = urlsplit(text)
    if not is_postgres_url(text) or not parts.hostname:
        # Not echoed: it may carry a password.
        raise ConfigError(f"{label} is not a PostgreSQL URL; {fix}.")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigError(f"{label} has a port that is not a number; {fix}.") from None
    if not parts.path.strip("/"):
        raise ConfigError(f"{label} names no database (the path after the host); {fix}.")
    return text


def _parse_host_version(raw: object, label: str, ctx: _Context) -> str | None:
    text = raw.strip() if isinstance(raw, str) else None
    if text == "":
        return None
    if text is None or not semver.Version.is_valid(text):
        raise _bad(label, raw, "set it to the host application's SemVer version, e.g. '2.4.0'")
    return text


def _parse_reserved_routes(raw: object, label: str, ctx: _Context) -> tuple[str, ...]:
    fix = "set it to route prefixes starting with '/' (a TOML list, or comma-separated)"
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise _bad(label, raw, fix)
    routes = [str(i).strip() for i in items if str(i).strip()]
    if not all(r.startswith("/") for r in routes):
        raise _bad(label, raw, fix)
    # /_admin is where the admin UI lives: it stays reserved whatever is configured.
    return tuple(dict.fromkeys(["/_admin", *routes]))


AnalysisSource = Literal["beacons", "prometheus"]
ANALYSIS_SOURCES: tuple[AnalysisSource, ...] = ("beacons", "prometheus")


def _parse_analysis_source(raw: object, label: str, ctx: _Context) -> AnalysisSource:
    word = raw.strip().lower() if isinstance(raw, str) else None
    if word == "beacons":
        return "beacons"
    if word == "prometheus":
        return "prometheus"
    raise _bad(label, raw, "set it to 'beacons' or 'prometheus'")


def _parse_prometheus_url(raw: object, label: str, ctx: _Context) -> str | None:
    if raw == "":
        return None
    from releasecontrol_server.prometheus import check_url  # httpx only when configured

    return check_url(raw, label)


def _parse_prometheus_query(raw: object, label: str, ctx: _Context) -> str | None:
    if raw == "":
        return None
    from releasecontrol_server.prometheus import parse_query

    return parse_query(raw, label).text


WEBHOOK_EVENTS = ("change", "approval", "verdict")
WEBHOOK_FORMATS = ("json", "slack")
_WEBHOOK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_WEBHOOK_FIELDS = frozenset({"name", "url", "secret_path", "format", "events"})


@dataclass(frozen=True)
class WebhookConfig:
    """One webhook: where, signed with which key, in which body, told which events."""

    name: str
    url: str
    secret_path: Path
    format: str = "json"
    events: tuple[str, ...] = WEBHOOK_EVENTS


def _parse_webhooks(raw: object, label: str, ctx: _Context) -> tuple[WebhookConfig, ...]:
    if raw == "":
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise ConfigError(
                f"{label} is not JSON; set it to a list of webhooks, e.g. "
                '[{"name": "ops", "url": "https://…", "secret_path": "/etc/…"}]'
            ) from None
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise ConfigError(f"{label} must be a list of webhook tables ([[webhooks]] in TOML)")
    out: list[WebhookConfig] = []
    for at, item in enumerate(raw):
        where = f"{label}[{at}]"
        unknown = sorted(set(item) - _WEBHOOK_FIELDS)
        if unknown:
            raise ConfigError(
                f"{where} has an unknown field {unknown[0]!r}; webhooks take "
                f"{', '.join(sorted(_WEBHOOK_FIELDS))}"
            )
        name = item.get("name")
        if not isinstance(name, str) or not _WEBHOOK_NAME.fullmatch(name):
            raise _bad(f"{where}.name", name, "set it to a short name: a-z, 0-9 and '-'")
        if name in {w.name for w in out}:
            raise ConfigError(f"{where}.name {name!r} is used twice; give each webhook its own")
        url = item.get("url")
        parts = urlsplit(url if isinstance(url, str) else "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _bad(f"{where}.url", url, "set it to the http(s) URL that receives the events")
        secret = _parse_path(item.get("secret_path"), f"{where}.secret_path", ctx)
        kind = item.get("format", "json")
        if kind not in WEBHOOK_FORMATS:
            raise _bad(f"{where}.format", kind, "set it to 'json' or 'slack'")
        events = item.get("events", list(WEBHOOK_EVENTS))
        if (
            not isinstance(events, list)
            or not events
            or not all(e in WEBHOOK_EVENTS for e in events)
        ):
            raise _bad(f"{where}.events", events, f"set it to some of {', '.join(WEBHOOK_EVENTS)}")
        out.append(WebhookConfig(name, str(url), secret, str(kind), tuple(dict.fromkeys(events))))
    return tuple(out)


def _words(pattern: str, fix: str) -> _Parser:
    """A parser of a list of words that each match `pattern` (a TOML list, or comma-separated
    in the environment): duplicates dropped, order kept."""
    compiled = re.compile(pattern)

    def parse(raw: object, label: str, ctx: _Context) -> tuple[str, ...]:
        items = raw.split(",") if isinstance(raw, str) else raw
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise _bad(label, raw, fix)
        words = [str(i).strip() for i in items if str(i).strip()]
        if not all(compiled.fullmatch(w) for w in words):
            raise _bad(label, raw, fix)
        return tuple(dict.fromkeys(words))

    return parse


_parse_beacon_keys = _words(
    r"[A-Za-z0-9_-]{8,128}",
    "set it to publishable keys of 8 to 128 letters, digits, '-' or '_' (a TOML list, or "
    "comma-separated), e.g. pk_shop_4f9a2c",
)
_parse_feature_patterns = _words(
    r"[a-z0-9*?\[\]!-]{1,128}",
    "set it to feature id patterns such as 'feature-pay*' (a TOML list, or comma-separated): "
    "lowercase letters, digits, '-' and the glob characters * ? [ ] !",
)


def _parse_text(raw: object, label: str, ctx: _Context) -> str:
    if not isinstance(raw, str):
        raise _bad(label, raw, "set it to a string")
    return raw.strip()


def _parse_optional_text(raw: object, label: str, ctx: _Context) -> str | None:
    text = _parse_text(raw, label, ctx)
    return text or None


def _parse_optional_path(raw: object, label: str, ctx: _Context) -> Path | None:
    if raw == "":
        return None
    return _parse_path(raw, label, ctx)


def _parse_paths(raw: object, label: str, ctx: _Context) -> tuple[Path, ...]:
    fix = "set it to one or more file paths (a TOML list, or comma-separated in the environment)"
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, list):
        items = list(raw)
    else:
        raise _bad(label, raw, fix)
    if not all(isinstance(item, str) for item in items):
        raise _bad(label, raw, fix)
    texts = [str(item).strip() for item in items]
    paths = tuple(_absolute(text, ctx.cwd) for text in texts if text)
    if not paths:
        raise _bad(label, raw, fix)
    return paths


def dev_admin_opens(config: Config) -> bool:
    """True when `releasectl dev` (`releasecontrol-server --dev`) opens the admin UI to
    anyone on this machine, without login, as `unauthenticated-admin`.

    With no auth mode there is no way to sign in, so in development, unless
    ALLOW_UNAUTHENTICATED_ADMIN was set either way, the dev server turns it on,
    but only while the admin UI listens on loopback. Never in production.
    """
    chosen = config.sources.get("allow_unauthenticated_admin", "default") != "default"
    if config.is_production or config.auth_mode is not None or chosen:
        return False
    host, _ = split_listen_address(config.admin_listen)
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def metrics_exposure(config: Config) -> str | None:
    """One sentence when, in production, `/metrics` is served to more than this machine
    without a token (the admin listener is not on loopback and `metrics_token` is unset);
    None otherwise. What it shows (the features' change counts, the RPC mix, the outbox) is
    not secret, but not for anyone on the network either: the server warns at start."""
    if not config.is_production or config.metrics_token is not None:
        return None
    host, _ = split_listen_address(config.admin_listen)
    try:
        if ipaddress.ip_address(host.strip("[]")).is_loopback:
            return None
    except ValueError:
        if host == "localhost":
            return None
    return (
        f"/metrics is served on {config.admin_listen} ({config.setting_name('admin_listen')}) "
        "without a token; set metrics_token (RELEASECONTROL_METRICS_TOKEN) and give it to "
        "the scraper, or keep the admin listener on loopback behind a proxy."
    )


def split_listen_address(address: str) -> tuple[str, int]:
    """(host, port) of a `host:port` listen address (`[::1]:443` for IPv6).

    Raises ValueError when it is not one: the host must be a name, an IPv4
    address or a bracketed IPv6 address, and the port 0 to 65535.
    """
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"{address!r} is not host:port")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"port {port} is above 65535")
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        inner = host[1:-1]
        if not all(c in "0123456789abcdefABCDEF:." for c in inner):
            raise ValueError(f"{host!r} is not an IPv6 address")
        return inner, port
    if not all(c.isascii() and (c.isalnum() or c in ".-_") for c in host):
        raise ValueError(f"{host!r} is not a host name or IPv4 address (bracket IPv6: [::1])")
    return host, port


def _listen(*, allow_empty: bool, example: str) -> _Parser:
    def parse(raw: object, label: str, ctx: _Context) -> str:
        text = raw.strip() if isinstance(raw, str) else None
        if text == "" and allow_empty:
            return ""
        try:
            if text is None:
                raise ValueError("not a string")
            split_listen_address(text)
        except ValueError:
            also = ", or empty to turn it off" if allow_empty else ""
            raise _bad(
                label,
                raw,
                f"set it to host:port with a port from 0 to 65535, e.g. {example!r}{also}",
            ) from None
        return text

    return parse


def _parse_public_url(raw: object, label: str, ctx: _Context) -> str:
    fix = "set it to the http(s) URL hosts fetch the origin from, e.g. 'https://cdn.example.com/'"
    text = raw.strip() if isinstance(raw, str) else ""
    try:
        parts = urlsplit(text)
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise _bad(label, raw, fix) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise _bad(label, raw, fix)
    return text if text.endswith("/") else text + "/"


def _parse_trust_json(raw: object, label: str, ctx: _Context) -> str | None:
    if raw == "":
        return None
    fix = (
        "set it to the trust file's JSON object, "
        '{"threshold": 1, "keys": [...]}, or name the file in FEATURE_TRUST_PUBLIC_KEYS_PATH'
    )
    if not isinstance(raw, str):
        raise ConfigError(f"{label} is not a string; {fix}.")
    try:
        document = json.loads(raw)
    except json.JSONDecodeError as exc:
        # The value itself is not echoed: it is long, and a pasted file may hold anything.
        raise ConfigError(
            f"{label} is not valid JSON ({exc.msg} at character {exc.pos}); {fix}."
        ) from None
    if not isinstance(document, dict):
        raise ConfigError(f"{label} is JSON but not an object; {fix}.")
    return raw


# --- the settings table ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setting:
    name: str
    parse: _Parser
    contract_env: tuple[str, ...] = ()
    # For an optional setting an empty environment variable means "not set here".
    optional: bool = False

    @property
    def env_names(self) -> tuple[str, ...]:
        generic = f"RELEASECONTROL_{self.name.upper()}"
        return (*self.contract_env, *((generic,) if generic not in self.contract_env else ()))


_SETTINGS: tuple[_Setting, ...] = (
    _Setting("env", _parse_environment),
    _Setting("home", _parse_path),
    _Setting("grpc_listen", _listen(allow_empty=False, example="127.0.0.1:50051")),
    _Setting("origin_type", _parse_origin_type),
    _Setting("origin_dir", _parse_path),
    _Setting("origin_http_listen", _listen(allow_empty=True, example="127.0.0.1:4100")),
    _Setting("origin_public_url", _parse_public_url),
    _Setting("s3_bucket", _parse_s3_bucket, optional=True),
    _Setting("s3_prefix", _parse_s3_prefix, optional=True),
    _Setting("s3_endpoint_url", _parse_s3_endpoint_url, optional=True),
    _Setting("s3_region", _parse_s3_region, optional=True),
    _Setting("artifact_store", _parse_artifact_store),
    _Setting("admin_listen", _listen(allow_empty=False, example="127.0.0.1:8080")),
    _Setting("beacon_listen", _listen(allow_empty=False, example="127.0.0.1:4200")),
    _Setting("beacon_keys", _parse_beacon_keys),
    _Setting("webhooks", _parse_webhooks),
    _Setting("analysis_interval_seconds", _float_between(0.1, 3600)),
    _Setting("analysis_budget_ratio", _float_between(1.0, 1000.0)),
    _Setting("analysis_budget_points", _float_between(0.0, 100.0)),
    _Setting("analysis_alpha", _float_between(0.0001, 0.5)),
    _Setting("analysis_min_loads", _int_between(1, 1_000_000_000, "loads")),
    _Setting("analysis_source", _parse_analysis_source),
    _Setting("prometheus_url", _parse_prometheus_url, optional=True),
    _Setting("prometheus_loads_query", _parse_prometheus_query, optional=True),
    _Setting("prometheus_failures_query", _parse_prometheus_query, optional=True),
    _Setting("prometheus_bearer_token_path", _parse_optional_path, optional=True),
    _Setting("prometheus_timeout_seconds", _float_between(0.1, 120)),
    _Setting("admin_session_secret_path", _parse_path),
    _Setting("admin_session_seconds", _int_between(60, _DAY_SECONDS, "seconds")),
    _Setting("database_path", _parse_path),
    _Setting("database_url", _parse_database_url, optional=True),
    _Setting("tls_cert_path", _parse_path),
    _Setting("tls_key_path", _parse_path),
    _Setting("tls_client_ca_path", _parse_path),
    _Setting("require_client_cert", _parse_bool),
    _Setting("signing_key_paths", _parse_paths),
    _Setting("root_dir", _parse_path),
    _Setting(
        "trust_public_keys_json",
        _parse_trust_json,
        ("FEATURE_TRUST_PUBLIC_KEYS_JSON",),
        optional=True,
    ),
    _Setting(
        "trust_public_keys_path",
        _parse_optional_path,
        ("FEATURE_TRUST_PUBLIC_KEYS_PATH",),
        optional=True,
    ),
    _Setting("default_soak_seconds", _int_between(0, MAX_SOAK_SECONDS, "seconds")),
    _Setting("index_expiry_seconds", _int_between(60, 366 * _DAY_SECONDS, "seconds")),
    _Setting("require_approval", _parse_feature_patterns),
    _Setting("approval_ttl_seconds", _int_between(60, 30 * _DAY_SECONDS, "seconds")),
    _Setting("origin_check_interval_seconds", _int_between(0, 7 * _DAY_SECONDS, "seconds")),
    _Setting("max_manifest_bytes", _int_between(1, 64 * _MIB, "bytes")),
    _Setting("max_publish_bytes", _int_between(1, 64 * 1024 * _MIB, "bytes")),
    _Setting("watch_queue_size", _int_between(1, 1_000_000, "events")),
    _Setting("shutdown_grace_seconds", _float_between(0, 600)),
    _Setting("log_format", _parse_log_format),
    _Setting("metrics_token", _parse_metrics_token, optional=True),
    _Setting("auth_mode", _parse_auth_mode, optional=True),
    _Setting("host_version", _parse_host_version, optional=True),
    _Setting("reserved_routes", _parse_reserved_routes),
    _Setting("admin_trusted_proxies", _parse_text),
    _Setting("token_store_path", _parse_path),
    _Setting("cluster_ca_path", _parse_optional_path, optional=True),
    _Setting("cluster_allowlist_path", _parse_path),
    _Setting("dfs_issuer", _parse_text),
    _Setting("dfs_audience", _parse_text),
    _Setting("dfs_public_key", _parse_optional_text, optional=True),
    _Setting("dfs_public_key_path", _parse_optional_path, optional=True),
    _Setting("dfs_leeway_seconds", _int_between(0, 600, "seconds")),
    _Setting("dfs_max_token_ttl_seconds", _int_between(60, 7 * _DAY_SECONDS, "seconds")),
    _Setting("allow_insecure_dev_keys", _parse_bool, ("FEATURE_ALLOW_INSECURE_DEV_KEYS",)),
    _Setting("allow_unauthenticated_admin", _parse_bool, ("ALLOW_UNAUTHENTICATED_ADMIN",)),
)
_BY_NAME = {setting.name: setting for setting in _SETTINGS}
_TRUST_PAIR = ("trust_public_keys_json", "trust_public_keys_path")
_S3_SETTINGS = ("s3_bucket", "s3_prefix", "s3_endpoint_url", "s3_region")
_S3_SHARED = ("s3_endpoint_url", "s3_region")

SETTING_NAMES: tuple[str, ...] = tuple(_BY_NAME)
"""Every setting, as a TOML key (and, upper-cased after RELEASECONTROL_, an env var)."""

ENV_VAR_NAMES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {setting.name: setting.env_names for setting in _SETTINGS}
)
"""Setting -> the environment variables that set it, contract name first."""


def _home_defaults(home: Path) -> dict[str, object]:
    return {
        "origin_dir": home / "origin",
        "artifact_store": str(home / "artifacts"),
        "database_path": home / "releasecontrol.db",
        "tls_cert_path": home / "pki" / "server.pem",
        "tls_key_path": home / "pki" / "server-key.pem",
        "tls_client_ca_path": home / "pki" / "ca.pem",
        "signing_key_paths": (home / "keys" / "signing-key.pem",),
        "root_dir": home / "keys" / "roots",
        "token_store_path": home / "auth" / "tokens.json",
        "cluster_allowlist_path": home / "auth" / "cluster-allowlist.toml",
        "admin_session_secret_path": home / "admin" / "session.key",
    }


# --- loading -----------------------------------------------------------------------------------


def load_config(
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
    *,
    cwd: Path | None = None,
    refuse_production_problems: bool = True,
) -> Config:
    """Load and check the config: defaults, then the TOML file, then `environ`.

    `environ` defaults to `os.environ`, `cwd` to the current directory (relative
    paths resolve against it). Raises ConfigError, naming the setting and the
    fix, for a missing or unreadable file, an unknown key, a bad value, or a
    production config that switches off a safety.
    """
    environ = os.environ if environ is None else environ
    ctx = _Context(cwd=Path(os.path.abspath(Path.cwd() if cwd is None else cwd)))

    file_path = _config_file(environ, config_path, ctx)
    table = _read_toml(file_path) if file_path is not None else {}

    # name -> (raw value, the setting as the user wrote it); later layers overwrite.
    raw: dict[str, tuple[object, str]] = {
        key: (value, f"{key} in {file_path}") for key, value in table.items()
    }
    from_env = {
        setting.name: found
        for setting in _SETTINGS
        if (found := _from_environment(setting, environ)) is not None
    }
    environment = _agreed_environment(raw.get("env"), from_env.get("env"), environ, ctx)
    if environment is not None:
        from_env["env"] = environment
    # The inline trust JSON and the trust path are one choice: an environment that
    # makes it overrides the file's choice entirely, whichever of the two each used.
    if any(name in from_env for name in _TRUST_PAIR):
        for name in _TRUST_PAIR:
            raw.pop(name, None)
    raw.update(from_env)

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, (value, label) in raw.items():
        values[name] = _BY_NAME[name].parse(value, label, ctx)
        sources[name] = label

    home = values.setdefault("home", ctx.cwd / DEFAULT_HOME_NAME)
    for name, default in _home_defaults(home).items():
        values.setdefault(name, default)
    _choose_trust_source(values, sources, home)
    _check_origin(values, sources)
    _check_analysis(values, sources)
    _check_artifact_store(values, sources)
    for name in SETTING_NAMES:
        sources.setdefault(name, "default")

    config = Config(**values, config_file=file_path, sources=MappingProxyType(sources))
    # `doctor` loads with refuse_production_problems=False to report each problem.
    problems = config.production_problems()
    if problems and refuse_production_problems:
        raise ConfigError(" ".join(problems))
    return config


def _agreed_environment(
    from_file: tuple[object, str] | None,
    from_env: tuple[str, str] | None,
    environ: Mapping[str, str],
    ctx: _Context,
) -> tuple[str, str] | None:
    """`env` as the file, RELEASECONTROL_ENV and NODE_ENV say it, once they agree.

    Returns (value, where it was set: the environment's name when it spoke) or None
    when none did. Raises ConfigError for an unknown value (listing the accepted
    ones) and for sources that disagree about production (naming both).
    """
    said: list[tuple[Environment, object, str]] = []  # (meaning, as written, where)
    for found in (from_file, from_env):
        if found is not None:
            value, label = found
            said.append((_parse_environment(value, label, ctx), value, label))
    node = environ.get("NODE_ENV", "")
    if node.strip():
        meaning = NODE_ENV_VALUES.get(node.strip().lower())
        if meaning is None:
            accepted = ", ".join(f"'{v}'" for v in NODE_ENV_VALUES)
            raise _bad(
                "NODE_ENV",
                node,
                f"ReleaseControl reads it to tell production; set it to one of {accepted} "
                "('development' and 'test' mean development), or unset it",
            )
        said.append((meaning, node, "NODE_ENV"))
    if not said:
        return None
    for meaning, value, label in said[1:]:
        first_meaning, first_value, first_label = said[0]
        if meaning != first_meaning:
            raise ConfigError(
                f"{first_label} is {_show(first_value)} but {label} is {_show(value)}: they "
                "disagree about whether this server is production; set them to the same "
                "value, or unset the one that is wrong."
            )
    meaning, _, label = said[-1]  # the environment's name, when it spoke: it set the value
    return meaning, label


def _from_environment(setting: _Setting, environ: Mapping[str, str]) -> tuple[str, str] | None:
    present = [
        (name, environ[name])
        for name in setting.env_names
        if name in environ and not (setting.optional and environ[name] == "")
    ]
    if not present:
        return None
    if len({value for _, value in present}) > 1:
        names = " and ".join(name for name, _ in present)
        raise ConfigError(f"{names} are both set, to different values; set only {present[0][0]}.")
    name, value = present[0]
    return value, name


def _choose_trust_source(values: dict[str, Any], sources: dict[str, str], home: Path) -> None:
    json_value = values.get("trust_public_keys_json")
    path_value = values.get("trust_public_keys_path")
    if json_value is not None and path_value is not None:
        raise ConfigError(
            f"{sources['trust_public_keys_json']} and {sources['trust_public_keys_path']} "
            "are both set; set only one: the trust file inline, or its path."
        )
    if json_value is None and path_value is None:
        values["trust_public_keys_path"] = home / "keys" / "trust.json"
        sources["trust_public_keys_path"] = "default"
    values.setdefault("trust_public_keys_json", None)
    values.setdefault("trust_public_keys_path", None)


_PROMETHEUS_NEEDS = ("prometheus_url", "prometheus_loads_query", "prometheus_failures_query")
_PROMETHEUS_SETTINGS = (
    *_PROMETHEUS_NEEDS,
    "prometheus_bearer_token_path",
    "prometheus_timeout_seconds",
)


def _check_analysis(values: dict[str, Any], sources: dict[str, str]) -> None:
    """`prometheus` needs its server and both queries; `beacons` refuses prometheus_*
    settings, which it would ignore."""
    source = values.get("analysis_source", "beacons")
    label = sources.get("analysis_source", "analysis_source")
    if source == "prometheus":
        missing = [name for name in _PROMETHEUS_NEEDS if not values.get(name)]
        if missing:
            raise ConfigError(
                f"analysis_source is 'prometheus' ({label}) but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set; set "
                f"{', '.join(f'RELEASECONTROL_{m.upper()}' for m in missing)} (docs/analysis.md)."
            )
        return
    for name in _PROMETHEUS_SETTINGS:
        if values.get(name) is not None and name in sources:
            raise ConfigError(
                f"{sources[name]} is set, but analysis_source is {source!r} ({label}), so it "
                "would be ignored; set analysis_source to 'prometheus' "
                f"(RELEASECONTROL_ANALYSIS_SOURCE=prometheus) or remove {sources[name]}."
            )


def _check_origin(values: dict[str, Any], sources: dict[str, str]) -> None:
    """Apply the origin rules of the module docstring: what `s3` needs, changes and refuses."""
    origin_type = values.get("origin_type", "filesystem")
    type_label = sources.get("origin_type", "origin_type")
    if origin_type != "s3":
        # The endpoint and region serve an artifact store in a bucket as well.
        bucket_store = str(values.get("artifact_store", "")).startswith("s3://")
        for name in _S3_SETTINGS:
            if values.get(name) and not (bucket_store and name in _S3_SHARED):
                raise ConfigError(
                    f"{sources[name]} is set, but origin_type is {origin_type!r} "
                    f"({type_label}), so it would be ignored; set origin_type to 's3' "
                    f"(RELEASECONTROL_ORIGIN_TYPE=s3) or remove {sources[name]}."
                )
        return
    bucket = values.get("s3_bucket")
    if bucket is None:
        raise ConfigError(
            f"origin_type is 's3' ({type_label}) but s3_bucket is not set; set s3_bucket "
            "(RELEASECONTROL_S3_BUCKET) to the bucket to publish to."
        )
    listen = values.get("origin_http_listen", "")
    if listen:
        raise ConfigError(
            f"{sources['origin_http_listen']} is {listen!r}, but with origin_type 's3' the "
            "files are in the bucket, not in a folder this process could serve; leave "
            "origin_http_listen empty and point origin_public_url at the bucket or its CDN."
        )
    values["origin_http_listen"] = ""
    prefix = values.get("s3_prefix", "")
    if "origin_public_url" not in values:
        values["origin_public_url"] = _s3_bucket_url(
            bucket, prefix, values.get("s3_endpoint_url"), values.get("s3_region")
        )


def _check_artifact_store(values: dict[str, Any], sources: dict[str, str]) -> None:
    """The artifact store is the control plane's own copy: never inside the origin it rebuilds."""
    store = str(values["artifact_store"])
    if store.startswith("s3://"):
        # Inside the origin's bucket prefix (or equal to it) is inside what hosts read.
        prefix = f"s3://{values.get('s3_bucket')}/{values.get('s3_prefix', '')}".rstrip("/")
        same = values.get("origin_type") == "s3" and (store.rstrip("/") + "/").startswith(
            prefix + "/"
        )
    else:
        origin = Path(values["origin_dir"])
        same = values.get("origin_type") != "s3" and (
            Path(store) == origin or origin in Path(store).parents
        )
    if same:
        label = sources.get("artifact_store", "artifact_store (default)")
        raise ConfigError(
            f"{label} is {store!r}, inside the CDN origin; the artifact store is the copy an "
            "emptied origin is rebuilt from, so put it beside the database instead "
            "(e.g. RELEASECONTROL_HOME/artifacts)."
        )


def _s3_bucket_url(bucket: str, prefix: str, endpoint_url: str | None, region: str | None) -> str:
    """The bucket's own URL ending in `/`: path-style on an endpoint, else AWS's."""
    if endpoint_url is not None:
        return f"{endpoint_url}/{bucket}/{prefix}"
    host = f"s3.{region}.amazonaws.com" if region else "s3.amazonaws.com"
    if "." in bucket:
        # A dotted bucket name breaks the TLS wildcard of a virtual-hosted name.
        return f"https://{host}/{bucket}/{prefix}"
    return f"https://{bucket}.{host}/{prefix}"


def _config_file(
    environ: Mapping[str, str], config_path: Path | None, ctx: _Context
) -> Path | None:
    if config_path is not None:
        path = _absolute(str(config_path), ctx.cwd)
        if not path.is_file():
            raise ConfigError(f"the config file {path} does not exist; create it or pass another.")
        return path
    if environ.get(CONFIG_ENV_VAR, ""):
        path = _parse_path(environ[CONFIG_ENV_VAR], CONFIG_ENV_VAR, ctx)
        if not path.is_file():
            raise ConfigError(
                f"{CONFIG_ENV_VAR} is {str(path)!r}, which is not a file; "
                "point it at a TOML config file or unset it."
            )
        return path
    if environ.get(HOME_ENV_VAR, ""):
        home = _parse_path(environ[HOME_ENV_VAR], HOME_ENV_VAR, ctx)
    else:
        home = ctx.cwd / DEFAULT_HOME_NAME
    candidate = home / CONFIG_FILE_NAME
    return candidate if candidate.is_file() else None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(
            f"the config file {path} cannot be read ({exc.strerror}); "
            "fix its permissions or point RELEASECONTROL_CONFIG elsewhere."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the config file {path} is not valid TOML ({exc}); fix it.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"the config file {path} is not UTF-8 text; save it as UTF-8.") from None
    for key in table:
        if key not in _BY_NAME:
            close = difflib.get_close_matches(key, SETTING_NAMES, n=1)
            fix = f"did you mean {close[0]!r}?" if close else "remove it (settings are top-level)."
            raise ConfigError(f"{key!r} in {path} is not a setting; {fix}")
    return table
