"""The operator commands: token create/revoke, lint routes, validate compat and doctor."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from host_repository import KEY_A, ROOT_B, HostRepository, trust_for
from test_doctor import good_settings, write_toml

from releasecontrol_server.auth.tokens import TokenStore
from releasecontrol_server.origin.http import OriginHttpServer
from releasectl import main


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test runs in an empty directory with no ReleaseControl or FEATURE_ variables."""
    for name in list(os.environ):
        if name.startswith(("RELEASECONTROL_", "FEATURE_")) or name == "NODE_ENV":
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="releasectl")


def assert_one_line_error(
    result: Result, *fragments: str, stdout: bool = False, code: int = 1
) -> str:
    """Exit `code`, one `error: …` line on stderr holding every fragment; stdout empty unless
    told."""
    assert result.exit_code == code, result.output
    if not stdout:
        assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.output
    return lines[0]


def manifest(
    fid: str,
    routes: list[str],
    *,
    host: str = "^2.0.0",
    shared: dict[str, str] | None = None,
    version: str = "1.0.0",
) -> dict[str, Any]:
    return {
        "id": fid,
        "version": version,
        "entry": "index.js",
        "routes": routes,
        "compat": {"host": host, "shared": shared or {}},
        "assets": [{"path": "index.js"}],
    }


def features(root: Path, *manifests: dict[str, Any]) -> Path:
    """A ./features-like folder with one <id>/manifest.json per manifest."""
    for m in manifests:
        folder = root / m["id"]
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps(m))
    return root


# -- help -----------------------------------------------------------------------------------------

HELP = [
    pytest.param(["token"], ["create", "revoke"], id="token"),
    pytest.param(
        ["token", "create"],
        ["--principal", "--role", "--scope", "--store", "--config", "--output"],
        id="token-create",
    ),
    pytest.param(["token", "revoke"], ["--principal", "--store", "--config"], id="token-revoke"),
    pytest.param(["doctor"], ["--config", "--output", "30 days"], id="doctor"),
    pytest.param(["lint"], ["routes"], id="lint"),
    pytest.param(
        ["lint", "routes"],
        ["--dir", "--index-url", "--reserved", "--config", "--output"],
        id="lint-routes",
    ),
    pytest.param(["validate"], ["compat"], id="validate"),
    pytest.param(
        ["validate", "compat"],
        ["--strict", "--host-version", "--dir", "--index-url", "--config", "--output"],
        id="validate-compat",
    ),
]


class TestHelp:
    @pytest.mark.parametrize(("command", "names"), HELP)
    def test_help_names_every_option_and_shows_an_example(
        self, command: list[str], names: list[str]
    ) -> None:
        """`--help` exits 0, names the options and gives an example."""
        result = run(*command, "--help")
        assert result.exit_code == 0, result.output
        for name in names:
            assert name in result.output
        assert "Example:" in result.output
        assert f"releasectl {command[0]}" in result.output

    def test_the_new_commands_are_listed_at_the_top(self) -> None:
        """`releasectl --help` lists token, doctor, lint and validate."""
        result = run("--help")
        for name in ("token", "doctor", "lint", "validate"):
            assert f"  {name} " in result.output


# -- token ----------------------------------------------------------------------------------------


class TestToken:
    def test_create_prints_the_token_once_and_stores_only_its_hash(self, isolated: Path) -> None:
        """stdout is the token alone; the default store keeps its SHA-256, mode 0600."""
        result = run("token", "create", "--principal", "ci-bot", "--role", "releaser")
        assert result.exit_code == 0, result.output
        token = result.stdout.strip()
        assert result.stdout == token + "\n" and token.startswith("rc_")
        assert "shown only once" in result.stderr
        store_path = isolated / ".releasecontrol" / "auth" / "tokens.json"
        text = store_path.read_text()
        assert token not in text
        assert hashlib.sha256(token.encode()).hexdigest() in text
        assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
        principal = TokenStore.load(store_path).authenticate(token)
        assert (principal.name, sorted(principal.roles)) == ("ci-bot", ["releaser"])

    def test_roles_and_scopes_are_recorded_and_json_has_them(self, isolated: Path) -> None:
        """Two roles, a scope, an explicit --store: all recorded; --output json shows them."""
        store = isolated / "elsewhere" / "tokens.json"
        result = run(
            "token", "create", "--principal", "pay-team", "--role", "releaser", "--role",
            "approver", "--scope", "feature-pay*", "--store", str(store), "--output", "json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["principal"] == "pay-team" and data["store"] == str(store)
        assert data["roles"] == ["approver", "releaser"] and data["scopes"] == ["feature-pay*"]
        principal = TokenStore.load(store).authenticate(data["token"])
        assert principal.scopes == ("feature-pay*",)

    def test_the_global_home_picks_the_default_store(self, isolated: Path) -> None:
        """`releasectl --home H token create` writes H/auth/tokens.json."""
        result = run("--home", "h", "token", "create", "--principal", "a", "--role", "viewer")
        assert result.exit_code == 0, result.output
        assert (isolated / "h" / "auth" / "tokens.json").is_file()

    def test_the_config_names_the_store(self, isolated: Path) -> None:
        """token_store_path from the config file is the default store."""
        config = write_toml(isolated / "c.toml", {"token_store_path": "vault/t.json"})
        result = run(
            "token", "create", "--principal", "a", "--role", "viewer", "--config", str(config)
        )
        assert result.exit_code == 0, result.output
        assert (isolated / "vault" / "t.json").is_file()

    @pytest.mark.parametrize(
        ("args", "fragments"),
        [
            (["--principal", "ci-bot", "--role", "superuser"], ["superuser"]),
            (["--principal", "bad name!", "--role", "viewer"], ["bad name!"]),
            (["--principal", "ci", "--role", "viewer", "--scope", "Bad Scope"], ["Bad Scope"]),
        ],
        ids=["role", "principal", "scope"],
    )
    def test_bad_input_is_one_line_and_writes_nothing(
        self, isolated: Path, args: list[str], fragments: list[str]
    ) -> None:
        """An unknown role, a malformed principal or scope: one line naming it, no store made."""
        assert_one_line_error(run("token", "create", *args), *fragments)
        assert not (isolated / ".releasecontrol" / "auth" / "tokens.json").exists()

    def test_revoke_removes_every_token_of_the_principal(self, isolated: Path) -> None:
        """Two tokens of one principal are revoked, another principal's stays valid."""
        tokens = [
            run("token", "create", "--principal", p, "--role", "viewer").stdout.strip()
            for p in ("old-bot", "old-bot", "keeper")
        ]
        result = run("token", "revoke", "--principal", "old-bot")
        assert result.exit_code == 0, result.output
        assert "revoked 2 token(s) of 'old-bot'" in result.stdout
        store = TokenStore.load(isolated / ".releasecontrol" / "auth" / "tokens.json")
        assert [e.principal.name for e in store.entries] == ["keeper"]
        assert store.authenticate(tokens[2]).name == "keeper"

    def test_revoking_an_unknown_principal_says_nothing_was_revoked(self, isolated: Path) -> None:
        """A principal with no token (a typo): exit 1, one line naming it and the store."""
        run("token", "create", "--principal", "keeper", "--role", "viewer")
        assert_one_line_error(
            run("token", "revoke", "--principal", "kepeer"), "'kepeer'", "tokens.json", "nothing"
        )

    def test_revoking_without_a_store_says_how_to_make_one(self) -> None:
        """No token store yet: one line naming the file and `releasectl token create`."""
        assert_one_line_error(
            run("token", "revoke", "--principal", "x"), "does not exist", "token create"
        )


# -- lint routes over a folder --------------------------------------------------------------------


class TestLintRoutesDir:
    def test_clean_routes_pass(self, isolated: Path) -> None:
        """Distinct routes: exit 0, the count of manifests checked, 'no findings'."""
        folder = features(isolated / "f", manifest("pay", ["/pay/*"]), manifest("cart", ["/cart"]))
        result = run("lint", "routes", "--dir", str(folder))
        assert result.exit_code == 0, result.output
        assert f"checked 2 manifest(s) from {folder}" in result.stdout
        assert "no findings" in result.stdout

    def test_an_overlap_names_both_features_and_both_patterns(self, isolated: Path) -> None:
        """'/pay/*' and '/pay/card' of two features overlap: exit 1, the finding names all four."""
        folder = features(
            isolated / "f", manifest("pay", ["/pay/*"]), manifest("card", ["/pay/card"])
        )
        result = run("lint", "routes", "--dir", str(folder))
        finding = next(line for line in result.stdout.splitlines() if line.startswith("error:"))
        for fragment in ("'card'", "'pay'", "'/pay/*'", "'/pay/card'", "overlap"):
            assert fragment in finding
        assert_one_line_error(result, "lint routes failed: 1 error(s)", stdout=True)

    def test_the_admin_route_is_reserved(self, isolated: Path) -> None:
        """A route under /_admin is an error naming the feature and the reserved prefix."""
        folder = features(isolated / "f", manifest("sneaky", ["/_admin/users"]))
        result = run("lint", "routes", "--dir", str(folder))
        assert (
            "feature 'sneaky' route '/_admin/users' is under the reserved prefix" in result.stdout
        )
        assert result.exit_code == 1

    def test_reserved_prefixes_come_from_flags_and_the_config(
        self, isolated: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """--reserved /api and the config's /status both count; JSON lists every prefix."""
        folder = features(isolated / "f", manifest("a", ["/api/x"]), manifest("b", ["/status"]))
        monkeypatch.setenv("RELEASECONTROL_RESERVED_ROUTES", "/status")
        result = run("lint", "routes", "--dir", str(folder), "--reserved", "/api", "-o", "json")
        assert result.exit_code == 1
        data = json.loads(result.stdout)
        assert data["reserved"] == ["/_admin", "/status", "/api"]
        assert sorted(f["patterns"][1] for f in data["findings"]) == ["/api", "/status"]
        assert {f["rule"] for f in data["findings"]} == {"route-reserved"}
        assert data["ok"] is False and data["errors"] == 2

    def test_a_reserved_prefix_that_is_not_a_literal_path_is_a_usage_error(
        self, isolated: Path
    ) -> None:
        """--reserved '/:x' is refused as bad usage (exit 2), naming the flag."""
        folder = features(isolated / "f", manifest("a", ["/a"]))
        result = run("lint", "routes", "--dir", str(folder), "--reserved", "/:x")
        assert result.exit_code == 2
        assert "--reserved" in result.stderr

    def test_a_folder_without_manifests_is_one_line(self, isolated: Path) -> None:
        """An empty --dir: one line naming the folder; a bad input, so exit 2."""
        (isolated / "empty").mkdir()
        result = run("lint", "routes", "--dir", "empty")
        assert_one_line_error(result, "no <id>/manifest.json", code=2)

    def test_dir_and_index_url_together_are_bad_usage(self, isolated: Path) -> None:
        """Only one source at a time: exit 2."""
        folder = features(isolated / "f", manifest("a", ["/a"]))
        result = run(
            "lint", "routes", "--dir", str(folder), "--index-url", "http://cdn/remote-index.json"
        )
        assert result.exit_code == 2
        assert "not both" in result.stderr

    def test_no_source_at_all_says_every_way_to_give_one(self) -> None:
        """No --dir, no URL, no running dev server: one line naming all the options."""
        assert_one_line_error(
            run("lint", "routes"), "--dir", "--index-url", "FEATURE_REMOTE_INDEX_URL", "dev"
        )


# -- validate compat over a folder ----------------------------------------------------------------


class TestValidateCompatDir:
    def test_a_warning_passes_unless_strict(self, isolated: Path) -> None:
        """A shared range without an upper bound: exit 0 with the warning, exit 1 with --strict."""
        folder = features(isolated / "f", manifest("a", ["/a"], shared={"react": ">=18"}))
        relaxed = run("validate", "compat", "--dir", str(folder), "--host-version", "2.1.0")
        assert relaxed.exit_code == 0, relaxed.output
        assert "warning: feature 'a' 1.0.0: shared library 'react' range '>=18'" in relaxed.stdout
        strict = run(
            "validate", "compat", "--strict", "--dir", str(folder), "--host-version", "2.1.0"
        )
        assert_one_line_error(strict, "1 warning(s) (--strict)", stdout=True)
        assert "no upper bound" in strict.stdout

    def test_a_host_outside_the_range_fails_naming_both(self, isolated: Path) -> None:
        """compat.host '^2.0.0' and host 3.0.0: an error naming the feature, range and version."""
        folder = features(isolated / "f", manifest("a", ["/a"]))
        result = run("validate", "compat", "--dir", str(folder), "--host-version", "3.0.0")
        assert "'^2.0.0' does not include the host version 3.0.0" in result.stdout
        assert_one_line_error(result, "validate compat failed: 1 error(s)", stdout=True)

    def test_shared_ranges_that_cannot_meet_fail_naming_both_features(self, isolated: Path) -> None:
        """react ^17 in one feature and ^18 in another: one error naming both and both ranges."""
        folder = features(
            isolated / "f",
            manifest("a", ["/a"], shared={"react": "^17.0.0"}),
            manifest("b", ["/b"], shared={"react": "^18.0.0"}),
        )
        result = run(
            "validate", "compat", "--dir", str(folder), "--host-version", "2.0.0", "-o", "json"
        )
        assert result.exit_code == 1
        data = json.loads(result.stdout)
        [finding] = data["findings"]
        assert finding["feature_ids"] == ["a", "b"]
        assert finding["patterns"] == ["^17.0.0", "^18.0.0"]
        assert data["host_version"] == "2.0.0" and data["strict"] is False

    def test_the_host_version_comes_from_the_config(
        self, isolated: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without --host-version, host_version from the config (here its env var) is used."""
        folder = features(isolated / "f", manifest("a", ["/a"]))
        monkeypatch.setenv("RELEASECONTROL_HOST_VERSION", "2.9.1")
        result = run("validate", "compat", "--dir", str(folder), "-o", "json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["host_version"] == "2.9.1"

    def test_no_host_version_names_both_ways_to_give_one(self, isolated: Path) -> None:
        """Neither flag nor config: one line naming --host-version and host_version."""
        folder = features(isolated / "f", manifest("a", ["/a"]))
        assert_one_line_error(
            run("validate", "compat", "--dir", str(folder)), "--host-version", "host_version"
        )

    def test_a_malformed_host_version_is_one_line(self, isolated: Path) -> None:
        """--host-version 'two' is not SemVer: one line saying so."""
        folder = features(isolated / "f", manifest("a", ["/a"]))
        assert_one_line_error(
            run("validate", "compat", "--dir", str(folder), "--host-version", "two"), "'two'"
        )


# -- both over a published origin -----------------------------------------------------------------


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[tuple[HostRepository, str]]:
    repo = HostRepository(tmp_path / "origin", keys=[KEY_A])
    repo.add_version("pay", "1.0.0", manifest_changes={"routes": ["/pay/*"]})
    repo.add_version("card", "1.0.0", manifest_changes={"routes": ["/pay/card"]}, channel="canary")
    repo.publish()
    with OriginHttpServer(repo.root, port=0) as server:
        yield repo, server.url


class TestPublishedOrigin:
    def test_lint_reads_the_live_manifests_at_the_index_url(
        self, origin: tuple[HostRepository, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The canary of one feature overlaps the stable of another: found, verified, exit 1."""
        repo, url = origin
        monkeypatch.setenv("FEATURE_TRUST_PUBLIC_KEYS_JSON", repo.trust().to_json())
        result = run("lint", "routes", "--index-url", url + "remote-index.json", "-o", "json")
        assert result.exit_code == 1
        data = json.loads(result.stdout)
        assert data["origin"]["signatures_checked"] is True
        assert [(m["feature_id"], m["channels"]) for m in data["origin"]["manifests"]] == [
            ("card", ["canary"]),
            ("pay", ["stable"]),
        ]
        assert [f["rule"] for f in data["findings"]] == ["route-overlap"]

    def test_an_untrusted_origin_is_refused_in_one_line(
        self, origin: tuple[HostRepository, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Pinning other root keys: nothing is linted, one line says which root is not trusted."""
        _, url = origin
        monkeypatch.setenv("FEATURE_TRUST_PUBLIC_KEYS_JSON", trust_for(ROOT_B).to_json())
        assert_one_line_error(
            run("lint", "routes", "--index-url", url + "remote-index.json"),
            "roots/1.json is not signed by the trust file's keys",
        )

    def test_a_v1_trust_file_of_the_online_key_is_refused_in_one_line(
        self, origin: tuple[HostRepository, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A trust file naming the online key (as v1 hosts had it), not the root keys: refused,
        and the line names the root that could not be trusted."""
        _, url = origin
        monkeypatch.setenv("FEATURE_TRUST_PUBLIC_KEYS_JSON", trust_for(KEY_A).to_json())
        assert_one_line_error(
            run("lint", "routes", "--index-url", url + "remote-index.json"),
            "cannot follow the chain of roots",
            "roots/1.json",
        )

    def test_without_a_trust_file_it_notes_that_signatures_were_not_checked(
        self, origin: tuple[HostRepository, str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """No trust anywhere: the lint still runs on the hash-checked files, with a note."""
        _, url = origin
        monkeypatch.setenv("FEATURE_REMOTE_INDEX_URL", url + "remote-index.json")
        result = run("validate", "compat", "--host-version", "2.0.0")
        assert result.exit_code == 0, result.output
        assert "signatures were not checked" in result.stderr
        assert f"checked 2 manifest(s) from {url}remote-index.json" in result.stdout

    def test_the_running_dev_server_is_found_through_its_endpoints_file(
        self, isolated: Path, origin: tuple[HostRepository, str]
    ) -> None:
        """With no URL given, the origin_url in <home>/run/endpoints.json is read."""
        _, url = origin
        endpoints = isolated / ".releasecontrol" / "run" / "endpoints.json"
        endpoints.parent.mkdir(parents=True)
        endpoints.write_text(json.dumps({"grpc": "127.0.0.1:1", "origin_url": url, "pid": 1}))
        result = run("lint", "routes")
        assert result.exit_code == 1
        assert f"checked 2 manifest(s) from {url}remote-index.json" in result.stdout

    def test_nothing_published_is_said_and_passes(self, tmp_path: Path) -> None:
        """An origin without remote-index.json: exit 0, and a note says nothing is published."""
        (tmp_path / "empty").mkdir()
        with OriginHttpServer(tmp_path / "empty", port=0) as server:
            result = run("lint", "routes", "--index-url", server.url + "remote-index.json")
        assert result.exit_code == 0, result.output
        assert "nothing is published at" in result.stderr
        assert "checked 0 manifest(s)" in result.stdout


# -- doctor ---------------------------------------------------------------------------------------


class TestDoctor:
    def test_a_broken_config_prints_each_item_and_fails_in_one_line(self, isolated: Path) -> None:
        """FAIL items show the reason and a fix line; stderr names the failed items."""
        settings = good_settings(isolated / "m")
        settings["allow_insecure_dev_keys"] = True
        (isolated / "empty").mkdir()
        with OriginHttpServer(isolated / "empty", port=0) as server:
            settings["origin_public_url"] = server.url
            config = write_toml(isolated / "config.toml", settings)
            result = run("doctor", "--config", str(config))
        lines = result.stdout.splitlines()
        assert lines[0].startswith("PASS  production-mode")
        failed = [line for line in lines if line.startswith("FAIL")]
        assert len(failed) == 1 and "insecure-dev-keys" in failed[0]
        assert "fix: unset allow_insecure_dev_keys" in result.stdout
        # Warned: the database (none yet: made at the first start), routes, compat, headers.
        assert lines[-1] == f"6 passed, 4 warned, 1 failed ({config})"
        assert_one_line_error(
            result, "1 of 11 production checks failed: insecure-dev-keys", stdout=True
        )

    def test_json_output_and_exit_0_when_nothing_fails(self, isolated: Path) -> None:
        """A good config with nothing published yet: WARN items only, exit 0, JSON per item."""
        settings = good_settings(isolated / "m")
        (isolated / "empty").mkdir()
        with OriginHttpServer(isolated / "empty", port=0) as server:
            settings["origin_public_url"] = server.url
            config = write_toml(isolated / "config.toml", settings)
            result = run("doctor", "--config", str(config), "--output", "json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["ok"] is True
        assert {c["status"] for c in data["checks"]} == {"PASS", "WARN"}

    def test_a_config_file_that_does_not_exist_is_one_failed_item(self, isolated: Path) -> None:
        """--config naming no file: the config item fails, naming the path."""
        result = run("doctor", "--config", "nope.toml")
        assert "FAIL  config" in result.stdout
        assert "nope.toml" in result.stdout
        assert_one_line_error(result, "1 of 1 production checks failed: config", stdout=True)
