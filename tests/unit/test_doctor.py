"""The production checklist: each check function on a good and on a broken configuration."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from host_repository import KEY_A, KEY_B, ROOT_B, HostRepository

from releasecontrol.errors import ConfigError
from releasecontrol.published import Published, PublishedManifest
from releasecontrol.root import Root
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server import doctor
from releasecontrol_server.auth.tokens import create_token, revoke_tokens
from releasecontrol_server.config import Config
from releasecontrol_server.doctor import CheckResult, HttpAnswer, PublishedRead
from releasecontrol_server.pki import ensure_dev_pki

# -- a production configuration made of fresh material ----------------------------------------


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a JSON string of plain text is a TOML basic string


def write_toml(path: Path, settings: Mapping[str, object]) -> Path:
    path.write_text("".join(f"{k} = {toml_value(v)}\n" for k, v in settings.items()))
    return path


def write_root(
    root_dir: Path,
    version: int,
    root_key: SigningKey,
    index_keys: list[SigningKey],
    *,
    signers: list[SigningKey] | None = None,
    index_threshold: int = 1,
    dev_index: bool = False,
    lifetime: timedelta = timedelta(days=365),
) -> None:
    """Root `version` listing `root_key` and `index_keys` (dev ones if `dev_index`), signed
    by `signers` (default: `root_key`), written as `<root_dir>/<version>.json`."""
    now = datetime.now(UTC).replace(microsecond=0)
    root = Root.create(
        version=version,
        root_keys=[root_key.trusted_key()],
        index_keys=[k.trusted_key(dev=dev_index) for k in index_keys],
        issued_at=now,
        expires_at=now + lifetime,
        index_threshold=index_threshold,
    )
    root_dir.mkdir(parents=True, exist_ok=True)
    data = root.sign(signers if signers is not None else [root_key]).to_bytes()
    (root_dir / f"{version}.json").write_bytes(data)


def good_settings(root: Path) -> dict[str, object]:
    """A production rpc-token configuration whose every file exists and is valid: an online
    signing key, root 1 listing it signed by a root key kept apart (`offline/`), and a trust
    file pinning that root key."""
    pki = ensure_dev_pki(root / "pki")
    (root / "keys").mkdir(parents=True)
    (root / "offline").mkdir()
    root_key = SigningKey.generate()
    root_key.save(root / "offline" / "root-key.pem")
    key = SigningKey.generate()
    key.save(root / "keys" / "signing-key.pem")
    write_root(root / "keys" / "roots", 1, root_key, [key])
    trust = TrustStore.for_keys([root_key.trusted_key()])
    (root / "keys" / "trust.json").write_text(trust.to_json())
    create_token(root / "auth" / "tokens.json", "ops", ["admin"])
    return {
        "env": "production",
        "home": str(root / "state"),
        "origin_dir": str(root / "origin"),
        "tls_cert_path": str(pki.server_cert),
        "tls_key_path": str(pki.server_key),
        "tls_client_ca_path": str(pki.ca_cert),
        "signing_key_paths": [str(root / "keys" / "signing-key.pem")],
        "root_dir": str(root / "keys" / "roots"),
        "trust_public_keys_path": str(root / "keys" / "trust.json"),
        "auth_mode": "rpc-token",
        "token_store_path": str(root / "auth" / "tokens.json"),
        "host_version": "2.4.0",
    }


def load(root: Path, settings: Mapping[str, object], **environ: str) -> Config:
    return doctor.load_config_for_doctor(environ, write_toml(root / "config.toml", settings))


@pytest.fixture
def settings(tmp_path: Path) -> dict[str, object]:
    return good_settings(tmp_path)


Change = Callable[[Path, dict[str, object]], None]


def assert_result(result: CheckResult, status: str, *fragments: str) -> None:
    assert result.status == status, result
    for fragment in fragments:
        assert fragment in result.reason, result
    if status == "PASS":
        assert result.fix == ""
    else:
        assert result.fix, result


# -- loading --------------------------------------------------------------------------------------


class TestLoadConfigForDoctor:
    def test_a_production_config_the_server_refuses_still_loads_as_production(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """Dev keys on and no auth mode: the config loads, production, with the unsafe settings."""
        settings.pop("auth_mode")
        config = load(tmp_path, {**settings, "allow_insecure_dev_keys": True})
        assert config.is_production
        assert config.allow_insecure_dev_keys and config.auth_mode is None
        assert config.setting_name("env") == f"env in {tmp_path / 'config.toml'}"
        assert len(config.production_problems()) == 2

    def test_production_from_the_environment_is_named_so(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """RELEASECONTROL_ENV=production with a refused setting names the variable as the source."""
        settings.pop("env")
        config = load(
            tmp_path, settings, RELEASECONTROL_ENV="production", ALLOW_UNAUTHENTICATED_ADMIN="1"
        )
        assert config.is_production and config.allow_unauthenticated_admin
        assert config.setting_name("env") == "RELEASECONTROL_ENV"

    def test_a_bad_value_is_still_an_error(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """A value that does not parse is not a production refusal: it raises, naming it."""
        with pytest.raises(ConfigError, match="grpc_listen"):
            load(tmp_path, {**settings, "grpc_listen": "nowhere"})

    def test_run_doctor_reports_a_config_that_does_not_load_as_one_item(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """A typo'd key gives one FAIL item named config, with the loader's sentence."""
        path = write_toml(tmp_path / "config.toml", {**settings, "auth_mod": "dfs"})
        report = doctor.run_doctor({}, path)
        assert [r.name for r in report.results] == ["config"]
        assert_result(report.results[0], "FAIL", "auth_mod", "auth_mode")


# -- the settings ---------------------------------------------------------------------------------


def _set(**changes: object) -> Change:
    def change(root: Path, settings: dict[str, object]) -> None:
        settings.update(changes)

    return change


def _drop(*names: str) -> Change:
    def change(root: Path, settings: dict[str, object]) -> None:
        for name in names:
            settings.pop(name, None)

    return change


def _write(setting: str, data: bytes) -> Change:
    def change(root: Path, settings: dict[str, object]) -> None:
        Path(str(settings[setting])).write_bytes(data)

    return change


def _no_change(root: Path, settings: dict[str, object]) -> None:
    pass


def _compose(*changes: Change) -> Change:
    def change(root: Path, settings: dict[str, object]) -> None:
        for each in changes:
            each(root, settings)

    return change


SETTING_CASES = [
    pytest.param(doctor.check_production_mode, _no_change, "PASS", ["production"], id="prod-ok"),
    pytest.param(
        doctor.check_production_mode,
        _set(env="development"),
        "FAIL",
        ["development", "env in"],
        id="prod-development",
    ),
    pytest.param(doctor.check_trusted_keys, _no_change, "PASS", ["1 trusted key"], id="trust-ok"),
    pytest.param(
        doctor.check_trusted_keys,
        _drop("trust_public_keys_path"),
        "FAIL",
        ["no trusted public keys are configured"],
        id="trust-not-configured",
    ),
    pytest.param(
        doctor.check_trusted_keys,
        _write("trust_public_keys_path", b'{"keys": "nope"}'),
        "FAIL",
        ['"keys" must be a non-empty list'],
        id="trust-malformed",
    ),
    pytest.param(
        doctor.check_trusted_keys,
        _set(trust_public_keys_path="/nonexistent/trust.json"),
        "FAIL",
        ["/nonexistent/trust.json"],
        id="trust-missing",
    ),
    pytest.param(doctor.check_dev_keys_off, _no_change, "PASS", ["off"], id="devkeys-off"),
    pytest.param(
        doctor.check_dev_keys_off,
        _set(allow_insecure_dev_keys=True),
        "FAIL",
        ["allow_insecure_dev_keys in"],
        id="devkeys-on",
    ),
    pytest.param(
        doctor.check_unauthenticated_admin_off, _no_change, "PASS", ["login"], id="admin-login"
    ),
    pytest.param(
        doctor.check_unauthenticated_admin_off,
        _set(allow_unauthenticated_admin=True),
        "FAIL",
        ["allow_unauthenticated_admin in"],
        id="admin-open",
    ),
    # Issue 13 item 17: in development with no auth mode `releasectl dev` opens the UI.
    pytest.param(
        doctor.check_unauthenticated_admin_off,
        _compose(_set(env="development"), _drop("auth_mode")),
        "FAIL",
        ["`releasectl dev` turns it on", "without login"],
        id="admin-dev-bypass",
    ),
    pytest.param(
        doctor.check_unauthenticated_admin_off,
        _compose(_set(env="development", admin_listen="[::1]:8080"), _drop("auth_mode")),
        "FAIL",
        ["`releasectl dev` turns it on"],
        id="admin-dev-bypass-ipv6-loopback",
    ),
    pytest.param(
        doctor.check_unauthenticated_admin_off,
        _compose(_set(env="development", allow_unauthenticated_admin=False), _drop("auth_mode")),
        "PASS",
        ["requires login", "nobody can sign in"],
        id="admin-dev-closed-on-purpose",
    ),
    pytest.param(
        doctor.check_unauthenticated_admin_off,
        _compose(_set(env="development", admin_listen="0.0.0.0:8080"), _drop("auth_mode")),
        "PASS",
        ["requires login"],
        id="admin-dev-not-on-loopback",
    ),
    pytest.param(
        doctor.check_unauthenticated_admin_off,
        _set(env="development"),
        "PASS",
        ["requires login (auth mode rpc-token"],
        id="admin-dev-with-auth-mode",
    ),
]


class TestSettings:
    @pytest.mark.parametrize(("check", "change", "status", "fragments"), SETTING_CASES)
    def test_check(
        self,
        tmp_path: Path,
        settings: dict[str, object],
        check: Callable[[Config], CheckResult],
        change: Change,
        status: str,
        fragments: list[str],
    ) -> None:
        """Each settings check passes on the good config, fails naming the setting on the bad."""
        change(tmp_path, settings)
        assert_result(check(load(tmp_path, settings)), status, *fragments)

    def test_an_environment_variable_is_named_as_the_operator_wrote_it(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """FEATURE_ALLOW_INSECURE_DEV_KEYS=1 is named by that variable, with the fix to unset it."""
        config = load(tmp_path, settings, FEATURE_ALLOW_INSECURE_DEV_KEYS="1")
        result = doctor.check_dev_keys_off(config)
        assert_result(result, "FAIL", "FEATURE_ALLOW_INSECURE_DEV_KEYS is on")
        assert "unset FEATURE_ALLOW_INSECURE_DEV_KEYS" in result.fix


# -- auth -----------------------------------------------------------------------------------------


def _cluster(root: Path, settings: dict[str, object]) -> None:
    allow = root / "auth" / "cluster-allowlist.toml"
    allow.write_text('[allow."spiffe://releasecontrol.dev/deployer"]\nroles = ["releaser"]\n')
    settings.update(auth_mode="trusted-cluster", cluster_allowlist_path=str(allow))


def _cluster_without_allowlist(root: Path, settings: dict[str, object]) -> None:
    settings.update(
        auth_mode="trusted-cluster", cluster_allowlist_path=str(root / "auth" / "missing.toml")
    )


def _issuer_key(root: Path) -> Path:
    public = Ed25519PrivateKey.generate().public_key()
    path = root / "auth" / "issuer.pub.pem"
    path.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


def _dfs(root: Path, settings: dict[str, object]) -> None:
    settings.update(
        auth_mode="dfs",
        dfs_issuer="https://issuer.example",
        dfs_public_key_path=str(_issuer_key(root)),
    )


def _dfs_without_issuer(root: Path, settings: dict[str, object]) -> None:
    settings.update(auth_mode="dfs", dfs_public_key_path=str(_issuer_key(root)))


def _empty_token_store(root: Path, settings: dict[str, object]) -> None:
    revoke_tokens(Path(str(settings["token_store_path"])), "ops")


AUTH_CASES = [
    pytest.param(_no_change, "PASS", ["rpc-token", "1 tokens"], id="rpc-token"),
    pytest.param(_drop("auth_mode"), "FAIL", ["no auth mode is set"], id="no-mode"),
    pytest.param(
        _set(token_store_path="/nonexistent/tokens.json"),
        "FAIL",
        ["rpc-token", "/nonexistent/tokens.json does not exist"],
        id="rpc-token-no-store",
    ),
    pytest.param(
        _write("token_store_path", b"{not json"),
        "FAIL",
        ["is not valid"],
        id="rpc-token-bad-store",
    ),
    pytest.param(_empty_token_store, "WARN", ["holds no token"], id="rpc-token-empty-store"),
    pytest.param(_cluster, "PASS", ["trusted-cluster", "allow-list"], id="cluster"),
    pytest.param(
        _cluster_without_allowlist,
        "FAIL",
        ["trusted-cluster", "missing.toml"],
        id="cluster-no-list",
    ),
    pytest.param(_dfs, "PASS", ["dfs"], id="dfs"),
    pytest.param(_dfs_without_issuer, "FAIL", ["dfs", "dfs_issuer"], id="dfs-no-issuer"),
]


class TestAuthMode:
    @pytest.mark.parametrize(("change", "status", "fragments"), AUTH_CASES)
    def test_check(
        self,
        tmp_path: Path,
        settings: dict[str, object],
        change: Change,
        status: str,
        fragments: list[str],
    ) -> None:
        """The mode's material loads as the server loads it, or the item fails with the reason."""
        change(tmp_path, settings)
        assert_result(doctor.check_auth_mode(load(tmp_path, settings)), status, *fragments)


# -- TLS ------------------------------------------------------------------------------------------


def _expiring(days: int) -> Change:
    def change(root: Path, settings: dict[str, object]) -> None:
        # Leaves are valid 365 days: issued 365 - days ago, one expires in `days` days.
        old = ensure_dev_pki(root / "old-pki", now=datetime.now(UTC) - timedelta(days=365 - days))
        settings.update(tls_cert_path=str(old.server_cert), tls_key_path=str(old.server_key))

    return change


def _other_key(root: Path, settings: dict[str, object]) -> None:
    other = ensure_dev_pki(root / "other-pki")
    settings["tls_key_path"] = str(other.server_key)


def _leaf_as_client_ca(root: Path, settings: dict[str, object]) -> None:
    settings["tls_client_ca_path"] = settings["tls_cert_path"]


TLS_CASES = [
    pytest.param(
        _no_change,
        "PASS",
        ["'localhost'", "the key matches", "client certificates required"],
        id="good",
    ),
    pytest.param(_expiring(10), "FAIL", ["in 10 day(s), within 30 days"], id="expires-in-10-days"),
    pytest.param(_expiring(-1), "FAIL", ["expired on"], id="expired"),
    pytest.param(_other_key, "FAIL", ["does not match the certificate"], id="key-mismatch"),
    pytest.param(
        _set(tls_cert_path="/nonexistent/server.pem"),
        "FAIL",
        ["/nonexistent/server.pem", "cannot be read"],
        id="no-cert",
    ),
    pytest.param(
        _write("tls_key_path", b"not a key"), "FAIL", ["not an unencrypted PEM"], id="bad-key"
    ),
    pytest.param(
        _write("tls_client_ca_path", b"garbage"),
        "FAIL",
        ["client CA", "no PEM certificate"],
        id="bad-client-ca",
    ),
    pytest.param(_leaf_as_client_ca, "FAIL", ["is not a CA certificate"], id="client-ca-not-ca"),
    pytest.param(
        _set(require_client_cert=False),
        "FAIL",
        ["require_client_cert in", "is off"],
        id="client-cert-optional",
    ),
]


class TestTls:
    @pytest.mark.parametrize(("change", "status", "fragments"), TLS_CASES)
    def test_check(
        self,
        tmp_path: Path,
        settings: dict[str, object],
        change: Change,
        status: str,
        fragments: list[str],
    ) -> None:
        """Certificate, key and client CA parse, match and outlive 30 days, else it says which."""
        change(tmp_path, settings)
        assert_result(doctor.check_tls(load(tmp_path, settings)), status, *fragments)

    def test_the_clock_is_passed_in(self, tmp_path: Path, settings: dict[str, object]) -> None:
        """The same certificate passes today and fails when checked 340 days from now."""
        config = load(tmp_path, settings)
        later = datetime.now(UTC) + timedelta(days=340)
        assert doctor.check_tls(config).status == "PASS"
        assert_result(doctor.check_tls(config, now=later), "FAIL", "within 30 days")


# -- signing keys ---------------------------------------------------------------------------------


def _root_key(root: Path) -> SigningKey:
    return SigningKey.load(root / "offline" / "root-key.pem")


def _signing_key(settings: dict[str, object]) -> SigningKey:
    return SigningKey.load(Path(str(settings["signing_key_paths"][0])))  # type: ignore[index]


def _untrusted_signing_key(root: Path, settings: dict[str, object]) -> None:
    stranger = root / "keys" / "stranger.pem"
    SigningKey.generate().save(stranger)
    settings["signing_key_paths"] = [str(stranger)]


def _root_1(**options: Any) -> Change:
    """Root 1 signed again, listing the signing key with `options` (see write_root)."""

    more_keys = options.pop("more_keys", [])

    def change(root: Path, settings: dict[str, object]) -> None:
        index_keys = [_signing_key(settings), *more_keys]
        write_root(root / "keys" / "roots", 1, _root_key(root), index_keys, **options)

    return change


def _dev_root_key_trusted(root: Path, settings: dict[str, object]) -> None:
    trust = TrustStore.for_keys([_root_key(root).trusted_key(dev=True)])
    Path(str(settings["trust_public_keys_path"])).write_text(trust.to_json())


def _no_roots(root: Path, settings: dict[str, object]) -> None:
    settings["root_dir"] = str(root / "keys" / "no-roots")


def _root_3_without_2(root: Path, settings: dict[str, object]) -> None:
    write_root(root / "keys" / "roots", 3, _root_key(root), [_signing_key(settings)])


def _rotated(root: Path, settings: dict[str, object]) -> None:
    """Root 2 (signed by the root key) lists a new online key, which the server signs with."""
    new = root / "keys" / "signing-key-2.pem"
    SigningKey.generate().save(new)
    write_root(root / "keys" / "roots", 2, _root_key(root), [SigningKey.load(new)])
    settings["signing_key_paths"] = [str(new)]


def _rotated_but_old_key(root: Path, settings: dict[str, object]) -> None:
    write_root(root / "keys" / "roots", 2, _root_key(root), [KEY_A])


SIGNING_CASES = [
    pytest.param(_no_change, "PASS", ["root 1 (expires", "lists the 1 signing key(s)"], id="good"),
    pytest.param(_rotated, "PASS", ["root 2 (expires"], id="rotated"),
    pytest.param(
        _untrusted_signing_key,
        "FAIL",
        ["stranger.pem", "not an online key of root 1", "hosts would refuse"],
        id="untrusted",
    ),
    pytest.param(
        _rotated_but_old_key,
        "FAIL",
        ["signing-key.pem", "not an online key of root 2"],
        id="rotated-away",
    ),
    pytest.param(
        _set(signing_key_paths=["/nonexistent/key.pem"]),
        "FAIL",
        ["/nonexistent/key.pem"],
        id="missing",
    ),
    pytest.param(_root_1(dev_index=True), "FAIL", ["root 1 lists a dev key"], id="dev-online-key"),
    pytest.param(
        _dev_root_key_trusted, "FAIL", ["the trust file names dev key"], id="dev-root-key"
    ),
    pytest.param(
        _root_1(more_keys=[KEY_B], index_threshold=2),
        "FAIL",
        ["root 1 needs 2 online keys", "gives 1"],
        id="below-threshold",
    ),
    pytest.param(
        _root_1(signers=[ROOT_B]),
        "FAIL",
        ["roots/1.json is not signed by the trust file's keys"],
        id="root-not-signed-by-trust",
    ),
    pytest.param(_no_roots, "FAIL", ["no roots in", "keys init-root"], id="no-roots"),
    pytest.param(_root_3_without_2, "FAIL", ["lacks root version(s) [2]"], id="root-gap"),
    pytest.param(
        _write("trust_public_keys_path", b"[]"), "FAIL", ["must be a JSON object"], id="no-trust"
    ),
]


class TestSigningKeys:
    @pytest.mark.parametrize(("change", "status", "fragments"), SIGNING_CASES)
    def test_check(
        self,
        tmp_path: Path,
        settings: dict[str, object],
        change: Change,
        status: str,
        fragments: list[str],
    ) -> None:
        """The roots chain from the trust file's root keys, and the signing keys are online keys
        of the newest root, enough for its threshold, none of it a dev key in production."""
        change(tmp_path, settings)
        assert_result(doctor.check_signing_keys(load(tmp_path, settings)), status, *fragments)

    def test_a_dev_key_is_only_refused_in_production(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """In development a dev online key and dev root key are what `releasectl dev` makes."""
        _root_1(dev_index=True)(tmp_path, settings)
        _dev_root_key_trusted(tmp_path, settings)
        config = load(tmp_path, {**settings, "env": "development"})
        assert_result(doctor.check_signing_keys(config), "PASS", "root 1")

    def test_a_root_near_its_expiry_warns_and_an_expired_one_fails(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """Root 1 lasts 365 days: fine today, a warning 340 days on, a failure after 366."""
        config = load(tmp_path, settings)
        today = datetime.now(UTC)
        assert doctor.check_signing_keys(config, now=today).status == "PASS"
        result = doctor.check_signing_keys(config, now=today + timedelta(days=340))
        assert_result(result, "WARN", "root expires in less than 30 days")
        assert "sign root 2" in result.fix
        expired = doctor.check_signing_keys(config, now=today + timedelta(days=366))
        assert_result(expired, "FAIL", "root 1", "expired at")


# -- routes and compat over what is published -----------------------------------------------------


def manifest(fid: str, routes: list[str], host: str = "^2.0.0", **shared: str) -> dict[str, Any]:
    return {
        "id": fid,
        "version": "1.0.0",
        "entry": "index.js",
        "routes": routes,
        "compat": {"host": host, "shared": shared},
        "assets": [{"path": "index.js", "size": 1, "sha256": "0" * 64}],
    }


def published(*manifests: dict[str, Any]) -> PublishedRead:
    live = tuple(
        PublishedManifest(m["id"], m["version"], ("stable",), "0" * 64, m) for m in manifests
    )
    return PublishedRead(
        "/srv/origin/remote-index.json",
        Published(
            "/srv/origin/remote-index.json",
            found=True,
            manifests=live,
            index_paths=("remote-index.json",),
            signatures_checked=True,
        ),
    )


NOTHING = PublishedRead(
    "/srv/origin/remote-index.json", Published("/srv/origin/remote-index.json", found=False)
)
UNREADABLE = PublishedRead(
    "/srv/origin/remote-index.json", error="features/pay/releases.json has sha256 abc…"
)

PUBLISHED_CASES = [
    pytest.param(
        doctor.check_routes,
        published(manifest("pay", ["/pay/*"]), manifest("cart", ["/cart"])),
        "PASS",
        ["2 live manifest(s)", "pay 1.0.0, cart 1.0.0"],
        id="routes-ok",
    ),
    pytest.param(
        doctor.check_routes,
        published(manifest("pay", ["/pay/*"]), manifest("card", ["/pay/card"])),
        "FAIL",
        ["'pay'", "'/pay/*'", "'card'", "'/pay/card'", "overlap"],
        id="routes-overlap",
    ),
    pytest.param(
        doctor.check_routes,
        published(manifest("ops", ["/api/ops"])),
        "FAIL",
        ["reserved prefix '/api'"],
        id="routes-reserved-from-config",
    ),
    pytest.param(doctor.check_routes, NOTHING, "WARN", ["nothing is published"], id="routes-none"),
    pytest.param(doctor.check_routes, UNREADABLE, "FAIL", ["cannot be read"], id="routes-broken"),
    pytest.param(
        doctor.check_compat,
        published(manifest("pay", ["/pay"], react="^18.2.0")),
        "PASS",
        ["host 2.4.0, strict"],
        id="compat-ok",
    ),
    pytest.param(
        doctor.check_compat,
        published(manifest("pay", ["/pay"], host="^3.0.0")),
        "FAIL",
        ["'^3.0.0' does not include the host version 2.4.0"],
        id="compat-host",
    ),
    pytest.param(
        doctor.check_compat,
        published(manifest("pay", ["/pay"], react=">=18")),
        "FAIL",
        ["warning:", "no upper bound"],
        id="compat-warning-is-strict",
    ),
    pytest.param(doctor.check_compat, NOTHING, "WARN", ["nothing is published"], id="compat-none"),
    pytest.param(doctor.check_compat, UNREADABLE, "FAIL", ["cannot be read"], id="compat-broken"),
]


class TestPublishedChecks:
    @pytest.mark.parametrize(("check", "read", "status", "fragments"), PUBLISHED_CASES)
    def test_check(
        self,
        tmp_path: Path,
        settings: dict[str, object],
        check: Callable[[Config, PublishedRead], CheckResult],
        read: PublishedRead,
        status: str,
        fragments: list[str],
    ) -> None:
        """Routes lint clean and compat holds strictly over the live manifests, else FAIL."""
        config = load(tmp_path, {**settings, "reserved_routes": ["/api"]})
        assert_result(check(config, read), status, *fragments)

    def test_compat_without_a_host_version_fails_naming_the_setting(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """With no host_version nothing can be checked: FAIL saying where to set it."""
        settings.pop("host_version")
        result = doctor.check_compat(load(tmp_path, settings), published(manifest("a", ["/a"])))
        assert_result(result, "FAIL", "host_version is not set")
        assert "RELEASECONTROL_HOST_VERSION" in result.fix


class TestReadOrigin:
    def test_a_filesystem_origin_is_read_directly_and_verified(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """Stable and canary manifests in origin_dir are read, signatures checked with the trust."""
        repo = HostRepository(tmp_path / "origin", keys=[KEY_A])
        repo.add_version("pay", "1.0.0")
        repo.add_version("pay", "1.1.0", channel="canary")
        repo.add_version("cart", "2.0.0")
        repo.publish()
        (tmp_path / "keys" / "trust.json").write_text(repo.trust().to_json())
        read = doctor.read_origin(load(tmp_path, settings))
        assert read.error == "" and read.published is not None
        assert read.published.signatures_checked
        found = [(m.feature_id, m.version, m.channels) for m in read.published.manifests]
        assert found == [
            ("cart", "2.0.0", ("stable",)),
            ("pay", "1.0.0", ("stable",)),
            ("pay", "1.1.0", ("canary",)),
        ]
        assert set(read.published.index_paths) == {
            "remote-index.json",
            repo.shard_path_of("cart"),
            repo.shard_path_of("pay"),
            "features/cart/releases.json",
            "features/pay/releases.json",
        }

    def test_an_origin_of_other_root_keys_cannot_be_read(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """Roots signed by a root key the trust file does not pin: an error naming the root."""
        repo = HostRepository(tmp_path / "origin", keys=[KEY_B], root_keys=[ROOT_B])
        repo.add_version("pay", "1.0.0")
        repo.publish()
        read = doctor.read_origin(load(tmp_path, settings))
        assert read.published is None
        assert "roots/1.json is not signed by the trust file's keys" in read.error

    def test_an_index_signed_by_a_key_the_root_does_not_list_cannot_be_read(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """Trusted roots, but remote-index.json signed by another online key: named."""
        repo = HostRepository(tmp_path / "origin", keys=[KEY_A])
        repo.add_version("pay", "1.0.0")
        repo.publish()
        repo.publish_remote(keys=[KEY_B])
        (tmp_path / "keys" / "trust.json").write_text(repo.trust().to_json())
        read = doctor.read_origin(load(tmp_path, settings))
        assert read.published is None
        assert "remote-index.json is not signed by the index keys" in read.error

    def test_an_empty_origin_is_nothing_published(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """No remote-index.json: read fine, found False."""
        read = doctor.read_origin(load(tmp_path, settings))
        assert read.published is not None and not read.published.found


# -- the origin's caching headers -----------------------------------------------------------------


def answering(
    headers: Mapping[str, Mapping[str, str]], status: Mapping[str, int] | None = None
) -> tuple[Callable[[str], HttpAnswer], list[str]]:
    asked: list[str] = []

    def head(url: str) -> HttpAnswer:
        asked.append(url)
        paths = [p for p in (*headers, *(status or {})) if url.endswith("/" + p)]
        path = paths[0] if paths else ""
        return HttpAnswer((status or {}).get(path, 200), headers.get(path, {}))

    return head, asked


@pytest.mark.parametrize(
    ("value", "revalidates"),
    [
        ("no-cache", True),
        ("public, no-cache", True),
        ("max-age=0, must-revalidate", True),
        ('max-age="0", Must-Revalidate', True),
        ("max-age=0", False),
        ("max-age=300, must-revalidate", False),
        ("max-age=0, must-revalidate, s-maxage=600", False),
        ("public, max-age=31536000, immutable", False),
        ("", False),
        (None, False),
    ],
)
def test_revalidates(value: str | None, revalidates: bool) -> None:
    """no-cache, or max-age=0 with must-revalidate (and no shared-cache max age), revalidate."""
    assert doctor.revalidates(value) is revalidates


class TestOriginHeaders:
    READ = PublishedRead(
        "x",
        Published("x", found=True, index_paths=("remote-index.json", "features/pay/releases.json")),
    )

    def test_every_index_file_is_asked_and_passes_with_no_cache(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """remote-index.json and each releases.json, at origin_public_url, with no-cache: PASS."""
        config = load(tmp_path, {**settings, "origin_public_url": "https://cdn.example.com/f/"})
        head, asked = answering(
            {
                "remote-index.json": {"cache-control": "no-cache"},
                "features/pay/releases.json": {"cache-control": "max-age=0, must-revalidate"},
            }
        )
        result = doctor.check_origin_headers(config, self.READ, head=head)
        assert_result(result, "PASS", "2 index file(s)")
        assert asked == [
            "https://cdn.example.com/f/remote-index.json",
            "https://cdn.example.com/f/features/pay/releases.json",
        ]

    def test_a_cached_releases_file_fails_naming_it_and_its_header(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """A releases.json cached for 5 minutes fails: hosts could miss a rollback."""
        head, _ = answering(
            {
                "remote-index.json": {"cache-control": "no-cache"},
                "features/pay/releases.json": {"cache-control": "public, max-age=300"},
            }
        )
        result = doctor.check_origin_headers(load(tmp_path, settings), self.READ, head=head)
        assert_result(result, "FAIL", "releases.json", "'Cache-Control: public, max-age=300'")
        assert "no-cache" in result.fix

    def test_no_cache_control_at_all_fails(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """An index served without Cache-Control is left to each cache's heuristics: FAIL."""
        head, _ = answering({})
        result = doctor.check_origin_headers(load(tmp_path, settings), None, head=head)
        assert_result(result, "FAIL", "no Cache-Control")

    def test_nothing_published_is_a_warning_that_says_so(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """A 404 on remote-index.json: nothing to check yet, WARN with the next step."""
        head, _ = answering({}, status={"remote-index.json": 404})
        result = doctor.check_origin_headers(load(tmp_path, settings), None, head=head)
        assert_result(result, "WARN", "nothing is published yet", "404")

    def test_an_unreachable_origin_fails_saying_so(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """A refused connection: FAIL, the URL named, and the fix says to start the server."""

        def refuse(url: str) -> HttpAnswer:
            raise ConnectionRefusedError(111, "Connection refused")

        result = doctor.check_origin_headers(load(tmp_path, settings), None, head=refuse)
        assert_result(
            result, "FAIL", "unreachable", "http://127.0.0.1:4100/remote-index.json", "refused"
        )
        assert "start the server" in result.fix


# -- the whole report -----------------------------------------------------------------------------


class TestRunDoctor:
    def test_every_production_refusal_is_a_failed_item(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """Each of the server's production refusals shows up as exactly one FAIL item."""
        settings.pop("auth_mode")
        settings.pop("trust_public_keys_path")
        settings.update(
            allow_insecure_dev_keys=True,
            allow_unauthenticated_admin=True,
            require_client_cert=False,
        )
        path = write_toml(tmp_path / "config.toml", settings)
        head, _ = answering({"remote-index.json": {"cache-control": "no-cache"}})
        report = doctor.run_doctor({}, path, head=head)
        assert [r.name for r in report.results] == list(doctor.CHECK_NAMES)
        failed = {r.name for r in report.failed}
        assert failed == {
            "trusted-keys",
            "insecure-dev-keys",
            "unauthenticated-admin",
            "auth-mode",
            "tls",
            "signing-keys",
        }
        assert not report.ok

    def test_the_json_form_lists_every_item(
        self, tmp_path: Path, settings: dict[str, object]
    ) -> None:
        """to_dict has ok, the config file and one object per item with all four fields."""
        path = write_toml(tmp_path / "config.toml", settings)
        head, _ = answering({}, status={"remote-index.json": 404})
        data = doctor.run_doctor({}, path, head=head).to_dict()
        assert data["config_file"] == str(path)
        assert data["ok"] is True
        assert [c["name"] for c in data["checks"]] == list(doctor.CHECK_NAMES)
        assert all(set(c) == {"name", "status", "reason", "fix"} for c in data["checks"])
        assert {c["name"] for c in data["checks"] if c["status"] == "WARN"} == {
            "database",  # no database yet: made at the first start
            "lint-routes",
            "validate-compat",
            "origin-headers",
        }


class TestDevAdminBypassAgreesWithTheServer:
    @pytest.mark.parametrize(
        ("environ", "opens"),
        [
            ({}, True),
            ({"RELEASECONTROL_ADMIN_LISTEN": "localhost:8080"}, True),
            ({"RELEASECONTROL_ADMIN_LISTEN": "192.0.2.1:8080"}, False),
            ({"ALLOW_UNAUTHENTICATED_ADMIN": "0"}, False),
            ({"RELEASECONTROL_AUTH_MODE": "rpc-token"}, False),
        ],
    )
    def test_doctor_reports_what_releasecontrol_server_dev_does(
        self, tmp_path: Path, environ: dict[str, str], opens: bool
    ) -> None:
        """The FAIL appears exactly when `--dev` turns the bypass on (one decision, shared)."""
        from releasecontrol_server.main import open_dev_admin

        config = doctor.load_config_for_doctor(environ, None, cwd=tmp_path)
        assert open_dev_admin(config).allow_unauthenticated_admin is opens
        result = doctor.check_unauthenticated_admin_off(config)
        assert (result.status == "FAIL") is opens, result
