"""Config: defaults, TOML then environment, contract names, every refusal naming its setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from releasecontrol.errors import ConfigError
from releasecontrol_server.config import ENV_VAR_NAMES, SETTING_NAMES, Config, load_config

TRUST_JSON = json.dumps({"threshold": 1, "keys": []})
# What production needs besides the defaults: an auth mode and explicitly trusted keys.
PRODUCTION_READY = {
    "RELEASECONTROL_AUTH_MODE": "rpc-token",
    "FEATURE_TRUST_PUBLIC_KEYS_PATH": "/etc/releasecontrol/trust.json",
}


def write_toml(directory: Path, text: str, name: str = "config.toml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class TestDefaults:
    def test_defaults_live_under_dot_releasecontrol_in_cwd(self, tmp_path: Path) -> None:
        """With no file and no environment, the contract defaults apply under ./.releasecontrol."""
        config = load_config({}, cwd=tmp_path)
        home = tmp_path / ".releasecontrol"
        assert config.env == "development"
        assert not config.is_production
        assert config.home == home
        assert config.grpc_listen == "127.0.0.1:50051"
        assert config.origin_dir == home / "origin"
        assert config.origin_http_listen == "127.0.0.1:4100"
        assert config.origin_public_url == "http://127.0.0.1:4100/"
        assert config.origin_type == "filesystem"
        assert config.artifact_store == str(home / "artifacts")
        assert (config.s3_bucket, config.s3_prefix) == (None, "")
        assert (config.s3_endpoint_url, config.s3_region) == (None, None)
        assert config.admin_listen == "127.0.0.1:8080"
        assert config.database_path == home / "releasecontrol.db"
        assert config.tls_cert_path == home / "pki" / "server.pem"
        assert config.tls_key_path == home / "pki" / "server-key.pem"
        assert config.tls_client_ca_path == home / "pki" / "ca.pem"
        assert config.require_client_cert is True
        assert config.signing_key_paths == (home / "keys" / "signing-key.pem",)
        assert config.trust_public_keys_json is None
        assert config.trust_public_keys_path == home / "keys" / "trust.json"
        assert config.default_soak_seconds == 1800
        assert config.index_expiry_seconds == 7 * 24 * 3600
        assert config.max_manifest_bytes == 1024 * 1024
        assert config.max_publish_bytes == 256 * 1024 * 1024
        assert config.watch_queue_size == 1024
        assert config.shutdown_grace_seconds == 5.0
        assert config.auth_mode is None
        assert config.allow_insecure_dev_keys is False
        assert config.allow_unauthenticated_admin is False
        assert config.endpoints_path == home / "run" / "endpoints.json"
        assert config.config_file is None
        assert set(config.sources.values()) == {"default"}

    def test_home_moves_every_path_default(self, tmp_path: Path) -> None:
        """RELEASECONTROL_HOME, even relative, becomes an absolute home that every path follows."""
        config = load_config({"RELEASECONTROL_HOME": "state"}, cwd=tmp_path)
        home = tmp_path / "state"
        assert config.home == home
        assert config.database_path == home / "releasecontrol.db"
        assert config.signing_key_paths == (home / "keys" / "signing-key.pem",)
        assert config.trust_public_keys_path == home / "keys" / "trust.json"
        assert config.endpoints_path == home / "run" / "endpoints.json"

    def test_relative_paths_resolve_against_cwd(self, tmp_path: Path) -> None:
        """A relative path setting becomes absolute against cwd, normalised."""
        config = load_config({"RELEASECONTROL_DATABASE_PATH": "./data/../db/rc.db"}, cwd=tmp_path)
        assert config.database_path == tmp_path / "db" / "rc.db"

    def test_every_setting_has_a_field_and_an_env_var(self) -> None:
        """Every Config field is a setting whose generic env var is RELEASECONTROL_<NAME>."""
        fields = set(Config.__dataclass_fields__) - {"config_file", "sources"}
        assert set(SETTING_NAMES) == fields
        for name in SETTING_NAMES:
            assert f"RELEASECONTROL_{name.upper()}" in ENV_VAR_NAMES[name]

    def test_config_is_frozen(self, tmp_path: Path) -> None:
        """A loaded config cannot be changed in place."""
        config = load_config({}, cwd=tmp_path)
        with pytest.raises(AttributeError):
            config.grpc_listen = "0.0.0.0:1"  # type: ignore[misc]


class TestLayers:
    def test_environment_wins_over_toml_which_wins_over_defaults(self, tmp_path: Path) -> None:
        """A TOML value replaces the default, and the environment replaces the TOML value."""
        path = write_toml(
            tmp_path,
            'grpc_listen = "127.0.0.1:6000"\ndefault_soak_seconds = 60\n'
            'signing_key_paths = ["a.pem", "/abs/b.pem"]\n',
        )
        config = load_config({"RELEASECONTROL_GRPC_LISTEN": "127.0.0.1:0"}, path, cwd=tmp_path)
        assert config.grpc_listen == "127.0.0.1:0"
        assert config.default_soak_seconds == 60
        assert config.signing_key_paths == (tmp_path / "a.pem", Path("/abs/b.pem"))
        assert config.admin_listen == "127.0.0.1:8080"
        assert config.config_file == path
        assert config.sources["grpc_listen"] == "RELEASECONTROL_GRPC_LISTEN"
        assert config.sources["default_soak_seconds"] == f"default_soak_seconds in {path}"
        assert config.sources["admin_listen"] == "default"

    def test_config_file_from_environment_variable(self, tmp_path: Path) -> None:
        """RELEASECONTROL_CONFIG names the file when no path is passed."""
        write_toml(tmp_path / "etc", "watch_queue_size = 7\n")
        config = load_config({"RELEASECONTROL_CONFIG": "etc/config.toml"}, cwd=tmp_path)
        assert config.watch_queue_size == 7
        assert config.config_file == tmp_path / "etc" / "config.toml"

    def test_config_file_found_in_home(self, tmp_path: Path) -> None:
        """Without a path or RELEASECONTROL_CONFIG, $home/config.toml is read when it exists."""
        write_toml(tmp_path / "state", "watch_queue_size = 9\n")
        config = load_config({"RELEASECONTROL_HOME": str(tmp_path / "state")}, cwd=tmp_path)
        assert config.watch_queue_size == 9
        default_home = load_config({}, cwd=tmp_path / "state")
        assert default_home.watch_queue_size == 1024

    def test_toml_can_move_home(self, tmp_path: Path) -> None:
        """A home set in the TOML file moves the path defaults with it."""
        path = write_toml(tmp_path, 'home = "/srv/rc"\n')
        config = load_config({}, path, cwd=tmp_path)
        assert config.home == Path("/srv/rc")
        assert config.origin_dir == Path("/srv/rc/origin")

    @pytest.mark.parametrize(
        ("environ", "field", "expected"),
        [
            pytest.param(
                {"RELEASECONTROL_ENV": "production", **PRODUCTION_READY},
                "env",
                "production",
                id="env",
            ),
            pytest.param({"RELEASECONTROL_HOME": "/h"}, "home", Path("/h"), id="home"),
            pytest.param(
                {"RELEASECONTROL_AUTH_MODE": "trusted-cluster"},
                "auth_mode",
                "trusted-cluster",
                id="auth-mode",
            ),
            pytest.param(
                {"FEATURE_TRUST_PUBLIC_KEYS_JSON": TRUST_JSON},
                "trust_public_keys_json",
                TRUST_JSON,
                id="trust-json",
            ),
            pytest.param(
                {"FEATURE_TRUST_PUBLIC_KEYS_PATH": "/k/trust.json"},
                "trust_public_keys_path",
                Path("/k/trust.json"),
                id="trust-path",
            ),
            pytest.param(
                {"FEATURE_ALLOW_INSECURE_DEV_KEYS": "1"},
                "allow_insecure_dev_keys",
                True,
                id="insecure-dev-keys",
            ),
            pytest.param(
                {"ALLOW_UNAUTHENTICATED_ADMIN": "true"},
                "allow_unauthenticated_admin",
                True,
                id="unauthenticated-admin",
            ),
            pytest.param(
                {"RELEASECONTROL_ALLOW_UNAUTHENTICATED_ADMIN": "yes"},
                "allow_unauthenticated_admin",
                True,
                id="unauthenticated-admin-generic-name",
            ),
            pytest.param(
                {"RELEASECONTROL_SIGNING_KEY_PATHS": "/a.pem, /b.pem,"},
                "signing_key_paths",
                (Path("/a.pem"), Path("/b.pem")),
                id="signing-keys-comma-separated",
            ),
            pytest.param(
                {"RELEASECONTROL_ORIGIN_PUBLIC_URL": "https://cdn.example.com/rc"},
                "origin_public_url",
                "https://cdn.example.com/rc/",
                id="public-url-gets-trailing-slash",
            ),
            pytest.param(
                {"RELEASECONTROL_ORIGIN_HTTP_LISTEN": ""},
                "origin_http_listen",
                "",
                id="origin-http-off",
            ),
            pytest.param(
                {"RELEASECONTROL_GRPC_LISTEN": "[::1]:0"},
                "grpc_listen",
                "[::1]:0",
                id="ipv6-ephemeral-port",
            ),
            pytest.param(
                {"RELEASECONTROL_SHUTDOWN_GRACE_SECONDS": "0.5"},
                "shutdown_grace_seconds",
                0.5,
                id="grace-float",
            ),
            pytest.param(
                {"RELEASECONTROL_REQUIRE_CLIENT_CERT": "OFF"},
                "require_client_cert",
                False,
                id="bool-case-insensitive",
            ),
            pytest.param(
                {"RELEASECONTROL_AUTH_MODE": ""},
                "auth_mode",
                None,
                id="empty-optional-is-unset",
            ),
        ],
    )
    def test_environment_names(
        self, tmp_path: Path, environ: dict[str, str], field: str, expected: object
    ) -> None:
        """Each contract name (and the generic name) sets its field, converted to its type."""
        config = load_config(environ, cwd=tmp_path)
        assert getattr(config, field) == expected

    @pytest.mark.parametrize("word", ["1", "true", "YES", "on", " True "])
    def test_true_words(self, tmp_path: Path, word: str) -> None:
        """1/true/yes/on, any case, are true."""
        config = load_config({"FEATURE_ALLOW_INSECURE_DEV_KEYS": word}, cwd=tmp_path)
        assert config.allow_insecure_dev_keys is True

    @pytest.mark.parametrize("word", ["0", "false", "No", "OFF", ""])
    def test_false_words(self, tmp_path: Path, word: str) -> None:
        """0/false/no/off and the empty string, any case, are false (and override the file)."""
        path = write_toml(tmp_path, "allow_insecure_dev_keys = true\n")
        config = load_config({"FEATURE_ALLOW_INSECURE_DEV_KEYS": word}, path, cwd=tmp_path)
        assert config.allow_insecure_dev_keys is False

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            pytest.param(
                {"NODE_ENV": "production", **PRODUCTION_READY},
                "production",
                id="node-env-production",
            ),
            pytest.param({"NODE_ENV": " Production ", **PRODUCTION_READY}, "production", id="case"),
            pytest.param({"NODE_ENV": "test"}, "development", id="node-env-test"),
            pytest.param({"NODE_ENV": "development"}, "development", id="node-env-development"),
            pytest.param({"NODE_ENV": ""}, "development", id="node-env-empty-is-unset"),
            pytest.param(
                {"NODE_ENV": "production", "RELEASECONTROL_ENV": "production", **PRODUCTION_READY},
                "production",
                id="both-agree",
            ),
            pytest.param(
                {"NODE_ENV": "test", "RELEASECONTROL_ENV": "development"},
                "development",
                id="both-agree-development",
            ),
        ],
    )
    def test_node_env_alias(self, tmp_path: Path, environ: dict[str, str], expected: str) -> None:
        """NODE_ENV production/development/test say production or not; agreeing sources pass."""
        assert load_config(environ, cwd=tmp_path).env == expected

    def test_the_file_and_the_environment_agreeing_is_fine(self, tmp_path: Path) -> None:
        """env in the file and RELEASECONTROL_ENV saying the same: the variable is the source."""
        path = write_toml(tmp_path, 'env = "production"\n')
        config = load_config(
            {"RELEASECONTROL_ENV": "production", **PRODUCTION_READY}, path, cwd=tmp_path
        )
        assert config.is_production
        assert config.sources["env"] == "RELEASECONTROL_ENV"

    @pytest.mark.parametrize(
        ("file_env", "environ", "named"),
        [
            pytest.param(
                "production",
                {"RELEASECONTROL_ENV": "development"},
                ("env in", "RELEASECONTROL_ENV is 'development'"),
                id="env-var-development-over-file-production",
            ),
            pytest.param(
                "development",
                {"NODE_ENV": "production"},
                ("env in", "NODE_ENV is 'production'"),
                id="node-env-production-over-file-development",
            ),
            pytest.param(
                "production",
                {"NODE_ENV": "test"},
                ("env in", "NODE_ENV is 'test'"),
                id="node-env-test-under-file-production",
            ),
            pytest.param(
                None,
                {"NODE_ENV": "production", "RELEASECONTROL_ENV": "development"},
                ("RELEASECONTROL_ENV is 'development'", "NODE_ENV is 'production'"),
                id="node-env-against-releasecontrol-env",
            ),
        ],
    )
    def test_sources_disagreeing_about_production_are_refused_naming_both(
        self,
        tmp_path: Path,
        file_env: str | None,
        environ: dict[str, str],
        named: tuple[str, str],
    ) -> None:
        """Issue 13 item 10: no source silently overrides another about production."""
        path = write_toml(tmp_path, f'env = "{file_env}"\n') if file_env else None
        message = _message({**environ, **PRODUCTION_READY}, tmp_path, path)
        assert all(part in message for part in named), message
        assert "disagree about whether this server is production" in message
        assert message.count("\n") == 0

    @pytest.mark.parametrize("value", ["prod", "staging", "Production1", "dev"])
    def test_an_unknown_node_env_is_refused_listing_the_accepted_values(
        self, tmp_path: Path, value: str
    ) -> None:
        """NODE_ENV=prod (a typo) is refused, not taken as development."""
        message = _message({"NODE_ENV": value}, tmp_path)
        assert f"NODE_ENV is {value!r}" in message
        assert "'production', 'development', 'test'" in message

    @pytest.mark.parametrize("value", ["prod", "dev", "test"])
    def test_an_unknown_releasecontrol_env_is_refused_listing_the_accepted_values(
        self, tmp_path: Path, value: str
    ) -> None:
        """RELEASECONTROL_ENV takes development or production only; the message lists them."""
        message = _message({"RELEASECONTROL_ENV": value}, tmp_path)
        assert f"RELEASECONTROL_ENV is {value!r}" in message
        assert "'development' or 'production'" in message

    def test_trust_inline_json_replaces_the_default_path(self, tmp_path: Path) -> None:
        """Inline trust JSON leaves no trust path; neither set gives home/keys/trust.json."""
        config = load_config({"FEATURE_TRUST_PUBLIC_KEYS_JSON": TRUST_JSON}, cwd=tmp_path)
        assert config.trust_public_keys_json == TRUST_JSON
        assert config.trust_public_keys_path is None

    def test_environment_trust_choice_overrides_the_files_other_choice(
        self, tmp_path: Path
    ) -> None:
        """A trust path in the environment wins over inline trust JSON in the file."""
        path = write_toml(tmp_path, f"trust_public_keys_json = '{TRUST_JSON}'\n")
        config = load_config({"FEATURE_TRUST_PUBLIC_KEYS_PATH": "t.json"}, path, cwd=tmp_path)
        assert config.trust_public_keys_json is None
        assert config.trust_public_keys_path == tmp_path / "t.json"


def _message(environ: dict[str, str], tmp_path: Path, config_path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(environ, config_path, cwd=tmp_path)
    return caught.value.message


class TestBadValues:
    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            pytest.param("RELEASECONTROL_ENV", "staging", id="env-unknown"),
            pytest.param("RELEASECONTROL_HOME", "  ", id="home-blank"),
            pytest.param("RELEASECONTROL_GRPC_LISTEN", "localhost", id="listen-no-port"),
            pytest.param("RELEASECONTROL_GRPC_LISTEN", "127.0.0.1:65536", id="listen-port-high"),
            pytest.param("RELEASECONTROL_GRPC_LISTEN", "127.0.0.1:-1", id="listen-port-negative"),
            pytest.param("RELEASECONTROL_GRPC_LISTEN", "", id="listen-empty"),
            pytest.param("RELEASECONTROL_ADMIN_LISTEN", ":8080", id="listen-no-host"),
            pytest.param("RELEASECONTROL_ADMIN_LISTEN", "::1:8080", id="listen-ipv6-unbracketed"),
            pytest.param("RELEASECONTROL_ORIGIN_HTTP_LISTEN", "4100", id="origin-listen-bare-port"),
            pytest.param("RELEASECONTROL_ORIGIN_PUBLIC_URL", "ftp://cdn/", id="url-scheme"),
            pytest.param("RELEASECONTROL_ORIGIN_PUBLIC_URL", "cdn.example.com", id="url-no-scheme"),
            pytest.param("RELEASECONTROL_ORIGIN_PUBLIC_URL", "http://cdn/?a=1", id="url-query"),
            pytest.param("RELEASECONTROL_ORIGIN_PUBLIC_URL", "http://cdn:99999/", id="url-port"),
            pytest.param("RELEASECONTROL_DATABASE_PATH", "", id="path-empty"),
            pytest.param("RELEASECONTROL_REQUIRE_CLIENT_CERT", "maybe", id="bool-word"),
            pytest.param("FEATURE_ALLOW_INSECURE_DEV_KEYS", "2", id="bool-number"),
            pytest.param("ALLOW_UNAUTHENTICATED_ADMIN", "enabled", id="bool-admin"),
            pytest.param("RELEASECONTROL_SIGNING_KEY_PATHS", " , ", id="signing-keys-none"),
            pytest.param("RELEASECONTROL_DEFAULT_SOAK_SECONDS", "30m", id="int-with-unit"),
            pytest.param("RELEASECONTROL_DEFAULT_SOAK_SECONDS", "-1", id="soak-negative"),
            pytest.param("RELEASECONTROL_DEFAULT_SOAK_SECONDS", "99999999", id="soak-too-long"),
            pytest.param("RELEASECONTROL_INDEX_EXPIRY_SECONDS", "59", id="expiry-below-60"),
            pytest.param("RELEASECONTROL_MAX_MANIFEST_BYTES", "0", id="size-zero"),
            pytest.param("RELEASECONTROL_MAX_PUBLISH_BYTES", "1.5", id="size-not-integer"),
            pytest.param("RELEASECONTROL_WATCH_QUEUE_SIZE", "0", id="queue-zero"),
            pytest.param("RELEASECONTROL_SHUTDOWN_GRACE_SECONDS", "nan", id="grace-nan"),
            pytest.param("RELEASECONTROL_SHUTDOWN_GRACE_SECONDS", "-1", id="grace-negative"),
            pytest.param("RELEASECONTROL_AUTH_MODE", "password", id="auth-mode-unknown"),
        ],
    )
    def test_bad_environment_value_names_variable_and_value(
        self, tmp_path: Path, variable: str, value: str
    ) -> None:
        """A bad environment value raises ConfigError naming the variable, the value and a fix."""
        message = _message({variable: value}, tmp_path)
        assert variable in message
        assert repr(value) in message
        assert "; " in message  # what is wrong; how to fix it

    @pytest.mark.parametrize(
        ("toml", "key", "shown"),
        [
            pytest.param("grpc_listen = 50051", "grpc_listen", "50051", id="listen-not-string"),
            pytest.param(
                'require_client_cert = "maybe"', "require_client_cert", "'maybe'", id="bool"
            ),
            pytest.param("max_manifest_bytes = 0", "max_manifest_bytes", "0", id="size-zero"),
            pytest.param(
                "default_soak_seconds = true", "default_soak_seconds", "True", id="int-bool"
            ),
            pytest.param("watch_queue_size = 1.5", "watch_queue_size", "1.5", id="int-float"),
            pytest.param(
                "signing_key_paths = [1]", "signing_key_paths", "[1]", id="paths-not-strings"
            ),
            pytest.param("signing_key_paths = []", "signing_key_paths", "[]", id="paths-empty"),
            pytest.param('env = "prod"', "env", "'prod'", id="env-unknown"),
            pytest.param("database_path = 3", "database_path", "3", id="path-not-string"),
        ],
    )
    def test_bad_toml_value_names_key_and_file(
        self, tmp_path: Path, toml: str, key: str, shown: str
    ) -> None:
        """A bad TOML value raises ConfigError naming the key, the file and the value."""
        path = write_toml(tmp_path, toml + "\n")
        message = _message({}, tmp_path, path)
        assert f"{key} in {path}" in message
        assert shown in message

    def test_bad_trust_json_is_named_but_not_echoed(self, tmp_path: Path) -> None:
        """Trust JSON that is not a JSON object is refused without echoing the pasted value."""
        pasted = '{"threshold": 1, "keys": [SECRET-LOOKING'
        message = _message({"FEATURE_TRUST_PUBLIC_KEYS_JSON": pasted}, tmp_path)
        assert "FEATURE_TRUST_PUBLIC_KEYS_JSON" in message
        assert "SECRET-LOOKING" not in message
        not_object = _message({"FEATURE_TRUST_PUBLIC_KEYS_JSON": "[1]"}, tmp_path)
        assert "not an object" in not_object

    def test_both_trust_sources_in_one_layer_are_refused(self, tmp_path: Path) -> None:
        """Inline trust JSON and a trust path together are ambiguous, so both are named."""
        message = _message(
            {
                "FEATURE_TRUST_PUBLIC_KEYS_JSON": TRUST_JSON,
                "FEATURE_TRUST_PUBLIC_KEYS_PATH": "/t.json",
            },
            tmp_path,
        )
        assert "FEATURE_TRUST_PUBLIC_KEYS_JSON" in message
        assert "FEATURE_TRUST_PUBLIC_KEYS_PATH" in message

    def test_contract_and_generic_names_disagreeing_are_refused(self, tmp_path: Path) -> None:
        """Two names for one setting with different values name both instead of picking one."""
        message = _message(
            {"ALLOW_UNAUTHENTICATED_ADMIN": "1", "RELEASECONTROL_ALLOW_UNAUTHENTICATED_ADMIN": "0"},
            tmp_path,
        )
        assert (
            "ALLOW_UNAUTHENTICATED_ADMIN and RELEASECONTROL_ALLOW_UNAUTHENTICATED_ADMIN" in message
        )

    @pytest.mark.parametrize(
        ("toml", "key", "hint"),
        [
            pytest.param('grpc_listn = "127.0.0.1:1"', "grpc_listn", "grpc_listen", id="typo"),
            pytest.param("[server]\nport = 1", "server", "top-level", id="table"),
        ],
    )
    def test_unknown_toml_key_is_refused(
        self, tmp_path: Path, toml: str, key: str, hint: str
    ) -> None:
        """An unknown TOML key is an error naming it (and the likely intended key)."""
        path = write_toml(tmp_path, toml + "\n")
        message = _message({}, tmp_path, path)
        assert repr(key) in message
        assert str(path) in message
        assert hint in message

    def test_invalid_toml_is_refused(self, tmp_path: Path) -> None:
        """A file that is not TOML raises ConfigError naming the file."""
        path = write_toml(tmp_path, "grpc_listen = \n")
        assert str(path) in _message({}, tmp_path, path)

    @pytest.mark.parametrize(
        ("environ", "config_path", "named"),
        [
            pytest.param({}, Path("nope.toml"), "nope.toml", id="argument"),
            pytest.param(
                {"RELEASECONTROL_CONFIG": "nope.toml"}, None, "RELEASECONTROL_CONFIG", id="env"
            ),
        ],
    )
    def test_named_config_file_must_exist(
        self, tmp_path: Path, environ: dict[str, str], config_path: Path | None, named: str
    ) -> None:
        """A config file asked for by name but missing is an error, not silently skipped."""
        assert named in _message(environ, tmp_path, config_path)


class TestProduction:
    def test_production_with_defaults_loads(self, tmp_path: Path) -> None:
        """The defaults are production-safe once an auth mode and trusted keys are named."""
        config = load_config({"RELEASECONTROL_ENV": "production", **PRODUCTION_READY}, cwd=tmp_path)
        assert config.is_production
        assert config.production_problems() == []

    @pytest.mark.parametrize(
        ("missing", "named"),
        [
            pytest.param("RELEASECONTROL_AUTH_MODE", "RELEASECONTROL_AUTH_MODE", id="no-auth-mode"),
            pytest.param(
                "FEATURE_TRUST_PUBLIC_KEYS_PATH",
                "FEATURE_TRUST_PUBLIC_KEYS_PATH",
                id="no-trust-keys",
            ),
        ],
    )
    def test_production_needs_auth_and_trusted_keys(
        self, tmp_path: Path, missing: str, named: str
    ) -> None:
        """Production refuses to start without an auth mode or explicitly trusted keys."""
        environ = {"RELEASECONTROL_ENV": "production", **PRODUCTION_READY}
        del environ[missing]
        assert named in _message(environ, tmp_path)

    @pytest.mark.parametrize(
        ("variable", "value"),
        [
            pytest.param("FEATURE_ALLOW_INSECURE_DEV_KEYS", "1", id="insecure-dev-keys"),
            pytest.param("ALLOW_UNAUTHENTICATED_ADMIN", "1", id="unauthenticated-admin"),
            pytest.param("RELEASECONTROL_REQUIRE_CLIENT_CERT", "0", id="no-client-cert"),
        ],
    )
    @pytest.mark.parametrize("production", ["RELEASECONTROL_ENV", "NODE_ENV"])
    def test_production_refuses_unsafe_settings(
        self, tmp_path: Path, variable: str, value: str, production: str
    ) -> None:
        """Production refuses to load with a safety switched off, naming the variable."""
        message = _message(
            {production: "production", variable: value, **PRODUCTION_READY}, tmp_path
        )
        assert variable in message
        assert "production" in message
        development = load_config({variable: value}, cwd=tmp_path)
        assert development.production_problems() == []

    def test_production_refusal_names_toml_key(self, tmp_path: Path) -> None:
        """A refusal for a value from the file names the TOML key and file."""
        path = write_toml(tmp_path, 'env = "production"\nrequire_client_cert = false\n')
        assert f"require_client_cert in {path}" in _message({}, tmp_path, path)

    def test_every_production_problem_is_reported(self, tmp_path: Path) -> None:
        """Several refusals come in one message, one sentence each."""
        message = _message(
            {
                "RELEASECONTROL_ENV": "production",
                "FEATURE_ALLOW_INSECURE_DEV_KEYS": "1",
                "ALLOW_UNAUTHENTICATED_ADMIN": "1",
            },
            tmp_path,
        )
        assert "FEATURE_ALLOW_INSECURE_DEV_KEYS" in message
        assert "ALLOW_UNAUTHENTICATED_ADMIN is on" in message


S3 = {"RELEASECONTROL_ORIGIN_TYPE": "s3", "RELEASECONTROL_S3_BUCKET": "rc-releases"}


class TestOriginSettings:
    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            pytest.param(
                {},
                {"origin_type": "filesystem", "origin_http_listen": "127.0.0.1:4100"},
                id="filesystem-by-default",
            ),
            pytest.param(
                {"RELEASECONTROL_ORIGIN_TYPE": "filesystem", "RELEASECONTROL_S3_BUCKET": ""},
                {"origin_type": "filesystem", "s3_bucket": None},
                id="empty-s3-setting-is-unset",
            ),
            pytest.param(
                S3,
                {
                    "origin_type": "s3",
                    "s3_bucket": "rc-releases",
                    "s3_prefix": "",
                    "s3_endpoint_url": None,
                    "s3_region": None,
                    "origin_http_listen": "",
                    "origin_public_url": "https://rc-releases.s3.amazonaws.com/",
                },
                id="s3-bucket-only",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_ORIGIN_TYPE": " S3 "},
                {"origin_type": "s3"},
                id="type-any-case",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_REGION": "eu-west-1", "RELEASECONTROL_S3_PREFIX": "/cdn"},
                {
                    "s3_region": "eu-west-1",
                    "s3_prefix": "cdn/",
                    "origin_public_url": "https://rc-releases.s3.eu-west-1.amazonaws.com/cdn/",
                },
                id="region-and-prefix",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_BUCKET": "rc.releases.example"},
                {"origin_public_url": "https://s3.amazonaws.com/rc.releases.example/"},
                id="dotted-bucket-path-style-url",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_ENDPOINT_URL": "http://127.0.0.1:9000/"},
                {
                    "s3_endpoint_url": "http://127.0.0.1:9000",
                    "origin_public_url": "http://127.0.0.1:9000/rc-releases/",
                },
                id="endpoint-path-style-url",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_ORIGIN_PUBLIC_URL": "https://cdn.example.com/rc"},
                {"origin_public_url": "https://cdn.example.com/rc/"},
                id="public-url-set-is-kept",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_ORIGIN_HTTP_LISTEN": ""},
                {"origin_http_listen": ""},
                id="http-listen-explicitly-off",
            ),
        ],
    )
    def test_valid_origin_settings(
        self, tmp_path: Path, environ: dict[str, str], expected: dict[str, object]
    ) -> None:
        """Each valid origin setting loads, normalised, with the s3 defaults that follow from it."""
        config = load_config(environ, cwd=tmp_path)
        assert {name: getattr(config, name) for name in expected} == expected

    def test_s3_from_toml(self, tmp_path: Path) -> None:
        """The s3 settings work as TOML keys too."""
        path = write_toml(
            tmp_path,
            'origin_type = "s3"\ns3_bucket = "rc-releases"\ns3_prefix = "prod"\n'
            's3_endpoint_url = "https://minio.internal:9000"\ns3_region = "garage"\n',
        )
        config = load_config({}, path, cwd=tmp_path)
        assert (config.origin_type, config.s3_bucket, config.s3_prefix) == (
            "s3",
            "rc-releases",
            "prod/",
        )
        assert (config.s3_endpoint_url, config.s3_region) == (
            "https://minio.internal:9000",
            "garage",
        )
        assert config.sources["s3_bucket"] == f"s3_bucket in {path}"

    @pytest.mark.parametrize(
        ("environ", "named", "said"),
        [
            pytest.param(
                {"RELEASECONTROL_ORIGIN_TYPE": "s3"},
                "s3_bucket",
                "RELEASECONTROL_ORIGIN_TYPE",
                id="missing-bucket",
            ),
            pytest.param(
                {"RELEASECONTROL_ORIGIN_TYPE": "gcs"},
                "RELEASECONTROL_ORIGIN_TYPE",
                "'gcs'",
                id="unknown-origin-type",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_ENDPOINT_URL": "ftp://minio:9000"},
                "RELEASECONTROL_S3_ENDPOINT_URL",
                "'ftp://minio:9000'",
                id="endpoint-not-http",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_ENDPOINT_URL": "minio:9000"},
                "RELEASECONTROL_S3_ENDPOINT_URL",
                "'minio:9000'",
                id="endpoint-no-scheme",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_ENDPOINT_URL": "http://minio:99999"},
                "RELEASECONTROL_S3_ENDPOINT_URL",
                "99999",
                id="endpoint-bad-port",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_ENDPOINT_URL": "http://minio:9000/rc-releases"},
                "RELEASECONTROL_S3_ENDPOINT_URL",
                "/rc-releases",
                id="endpoint-with-path",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_ENDPOINT_URL": "http://minio:9000/?x=1"},
                "RELEASECONTROL_S3_ENDPOINT_URL",
                "?x=1",
                id="endpoint-with-query",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_BUCKET": "RC_Releases"},
                "RELEASECONTROL_S3_BUCKET",
                "'RC_Releases'",
                id="bucket-not-lowercase",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_BUCKET": "rc"},
                "RELEASECONTROL_S3_BUCKET",
                "3 to 63",
                id="bucket-too-short",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_BUCKET": "rc..releases"},
                "RELEASECONTROL_S3_BUCKET",
                "'rc..releases'",
                id="bucket-double-dot",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_PREFIX": "cdn/../other"},
                "RELEASECONTROL_S3_PREFIX",
                "'cdn/../other'",
                id="prefix-dot-dot",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_PREFIX": "my prefix"},
                "RELEASECONTROL_S3_PREFIX",
                "'my prefix'",
                id="prefix-space",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_S3_REGION": "eu west 1"},
                "RELEASECONTROL_S3_REGION",
                "'eu west 1'",
                id="region-bad",
            ),
            pytest.param(
                {**S3, "RELEASECONTROL_ORIGIN_HTTP_LISTEN": "127.0.0.1:4100"},
                "RELEASECONTROL_ORIGIN_HTTP_LISTEN",
                "bucket",
                id="http-listen-with-s3",
            ),
            pytest.param(
                {"RELEASECONTROL_S3_BUCKET": "rc-releases"},
                "RELEASECONTROL_S3_BUCKET",
                "'filesystem'",
                id="s3-setting-without-s3-type",
            ),
        ],
    )
    def test_bad_origin_settings_are_refused(
        self, tmp_path: Path, environ: dict[str, str], named: str, said: str
    ) -> None:
        """A bad or missing origin setting raises ConfigError naming it, what is wrong, the fix."""
        message = _message(environ, tmp_path)
        assert named in message
        assert said in message
        assert "; " in message

    def test_missing_bucket_in_toml_names_the_file(self, tmp_path: Path) -> None:
        """origin_type s3 in a file without a bucket names the file's origin_type and s3_bucket."""
        path = write_toml(tmp_path, 'origin_type = "s3"\n')
        message = _message({}, tmp_path, path)
        assert f"origin_type in {path}" in message
        assert "s3_bucket" in message

    def test_credentials_in_endpoint_url_are_refused_and_not_echoed(self, tmp_path: Path) -> None:
        """An endpoint URL carrying a user or password is refused without repeating them."""
        environ = {**S3, "RELEASECONTROL_S3_ENDPOINT_URL": "https://AKIDEXAMPLE:s3cr3t@minio:9000"}
        message = _message(environ, tmp_path)
        assert "RELEASECONTROL_S3_ENDPOINT_URL" in message
        assert "AWS_ACCESS_KEY_ID" in message
        assert "s3cr3t" not in message
        assert "AKIDEXAMPLE" not in message


class TestChecksSettings:
    def test_host_version_and_reserved_routes(self, tmp_path: Path) -> None:
        """host_version is SemVer; reserved_routes always keeps /_admin and drops duplicates."""
        config = load_config(
            {
                "RELEASECONTROL_HOST_VERSION": "2.4.0",
                "RELEASECONTROL_RESERVED_ROUTES": "/internal, /_admin",
            },
            cwd=tmp_path,
        )
        assert config.host_version == "2.4.0"
        assert config.reserved_routes == ("/_admin", "/internal")
        assert load_config({}, cwd=tmp_path).reserved_routes == ("/_admin",)

    @pytest.mark.parametrize(
        ("environ", "named"),
        [
            pytest.param(
                {"RELEASECONTROL_HOST_VERSION": "v2"},
                "RELEASECONTROL_HOST_VERSION",
                id="host-version-not-semver",
            ),
            pytest.param(
                {"RELEASECONTROL_RESERVED_ROUTES": "internal"},
                "RELEASECONTROL_RESERVED_ROUTES",
                id="route-without-slash",
            ),
        ],
    )
    def test_bad_values_are_named(
        self, tmp_path: Path, environ: dict[str, str], named: str
    ) -> None:
        """A bad host version or reserved route is refused, naming the variable."""
        assert named in _message(environ, tmp_path)


class TestAdminSettings:
    def test_session_defaults_live_under_home(self, tmp_path: Path) -> None:
        """The admin session key defaults to home/admin/session.key and a sign-in to one hour."""
        config = load_config({"RELEASECONTROL_HOME": str(tmp_path / "h")}, cwd=tmp_path)
        assert config.admin_session_secret_path == tmp_path / "h" / "admin" / "session.key"
        assert config.admin_session_seconds == 3600

    def test_session_settings_from_toml_and_environment(self, tmp_path: Path) -> None:
        """The session key path comes from TOML, the lifetime from the environment, which wins."""
        path = write_toml(
            tmp_path,
            'admin_session_secret_path = "keys/admin.key"\nadmin_session_seconds = 600\n',
        )
        config = load_config({"RELEASECONTROL_ADMIN_SESSION_SECONDS": "900"}, path, cwd=tmp_path)
        assert config.admin_session_secret_path == tmp_path / "keys" / "admin.key"
        assert config.admin_session_seconds == 900

    @pytest.mark.parametrize("value", ["59", "86401", "1h", ""], ids=str)
    def test_session_lifetime_out_of_range_is_refused(self, tmp_path: Path, value: str) -> None:
        """A sign-in shorter than a minute or longer than a day is refused, naming the variable."""
        message = _message({"RELEASECONTROL_ADMIN_SESSION_SECONDS": value}, tmp_path)
        assert "RELEASECONTROL_ADMIN_SESSION_SECONDS" in message


class TestArtifactStore:
    def test_a_folder_resolves_against_cwd(self, tmp_path: Path) -> None:
        config = load_config({"RELEASECONTROL_ARTIFACT_STORE": "kept"}, cwd=tmp_path)
        assert config.artifact_store == str(tmp_path / "kept")

    def test_a_bucket_with_a_prefix_and_the_shared_endpoint(self, tmp_path: Path) -> None:
        """A bucket store may use s3_endpoint_url and s3_region with a filesystem origin."""
        config = load_config(
            {
                "RELEASECONTROL_ARTIFACT_STORE": "s3://rc-artifacts/kept",
                "RELEASECONTROL_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
                "RELEASECONTROL_S3_REGION": "eu-west-1",
            },
            cwd=tmp_path,
        )
        assert config.artifact_store == "s3://rc-artifacts/kept/"
        assert config.origin_type == "filesystem"
        assert config.s3_endpoint_url == "http://127.0.0.1:9000"

    def test_the_origins_bucket_settings_stay_refused_with_a_folder_origin(
        self, tmp_path: Path
    ) -> None:
        with pytest.raises(ConfigError, match="RELEASECONTROL_S3_BUCKET is set"):
            load_config(
                {
                    "RELEASECONTROL_ARTIFACT_STORE": "s3://rc-artifacts",
                    "RELEASECONTROL_S3_BUCKET": "rc-releases",
                },
                cwd=tmp_path,
            )

    @pytest.mark.parametrize(
        ("value", "fix"),
        [
            ("s3://Not_A_Bucket/x", "bucket name"),
            ("s3://rc-artifacts/../x", "key prefix"),
            ("   ", "s3://BUCKET/PREFIX"),
        ],
    )
    def test_a_bad_value_names_the_variable_and_the_fix(
        self, tmp_path: Path, value: str, fix: str
    ) -> None:
        with pytest.raises(ConfigError, match="RELEASECONTROL_ARTIFACT_STORE") as caught:
            load_config({"RELEASECONTROL_ARTIFACT_STORE": value}, cwd=tmp_path)
        assert fix in caught.value.message

    @pytest.mark.parametrize(
        "environ",
        [
            {"RELEASECONTROL_ARTIFACT_STORE": "origin/artifacts"},
            {
                "RELEASECONTROL_ARTIFACT_STORE": "s3://rc-releases/p/",
                **S3,
                "RELEASECONTROL_S3_PREFIX": "p",
            },
            {
                "RELEASECONTROL_ARTIFACT_STORE": "s3://rc-releases/p/kept",
                **S3,
                "RELEASECONTROL_S3_PREFIX": "p",
            },
            {"RELEASECONTROL_ARTIFACT_STORE": "s3://rc-releases/artifacts", **S3},
        ],
        ids=["folder-in-origin", "the-origins-bucket", "under-its-prefix", "in-a-whole-bucket"],
    )
    def test_a_store_inside_the_origin_is_refused(
        self, tmp_path: Path, environ: dict[str, str]
    ) -> None:
        environ = {"RELEASECONTROL_ORIGIN_DIR": "origin", **environ}
        if "RELEASECONTROL_ORIGIN_TYPE" in environ:
            del environ["RELEASECONTROL_ORIGIN_DIR"]
        with pytest.raises(ConfigError, match="inside the CDN origin"):
            load_config(environ, cwd=tmp_path)
