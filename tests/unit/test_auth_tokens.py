"""rpc-token auth: the hashed token store, Bearer metadata, reload without restart."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest

from releasecontrol.errors import ConfigError, Unauthenticated, Unavailable
from releasecontrol_server.auth.principal import Role
from releasecontrol_server.auth.tokens import (
    TOKEN_PREFIX,
    TokenAuthenticator,
    TokenStore,
    bearer_token,
    create_token,
    revoke_tokens,
    token_sha256,
)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "auth" / "tokens.json"


class TestCreateToken:
    def test_a_new_token_authenticates_as_its_principal(self, store_path: Path):
        """create_token returns a token that the store maps to its principal, roles and scopes."""
        token = create_token(store_path, "ci-bot", ["releaser"], ["feature-pay*"])
        principal = TokenStore.load(store_path).authenticate(token)
        assert principal.name == "ci-bot"
        assert principal.roles == {Role.RELEASER}
        assert principal.scopes == ("feature-pay*",)

    def test_the_token_is_prefixed_random_and_never_stored(self, store_path: Path):
        """Tokens are rc_-prefixed, distinct, and only their SHA-256 is written."""
        first = create_token(store_path, "a", ["viewer"])
        second = create_token(store_path, "b", ["viewer"])
        assert first.startswith(TOKEN_PREFIX) and second.startswith(TOKEN_PREFIX)
        assert first != second
        assert len(first) >= len(TOKEN_PREFIX) + 43  # 32 random bytes, base64
        text = store_path.read_text()
        assert first not in text and second not in text
        assert token_sha256(first) in text

    def test_the_store_file_is_private_and_well_formed(self, store_path: Path):
        """The store is written with mode 0600, as version 1 with the documented entry fields."""
        create_token(store_path, "ci-bot", [Role.ADMIN])
        assert stat.S_IMODE(store_path.stat().st_mode) == 0o600
        data = json.loads(store_path.read_text())
        assert data["version"] == 1
        [entry] = data["tokens"]
        assert set(entry) == {"principal", "roles", "scopes", "token_sha256", "created_at"}
        assert entry["roles"] == ["admin"] and entry["scopes"] == ["*"]
        assert entry["created_at"].endswith("Z")

    def test_no_temporary_files_are_left_behind(self, store_path: Path):
        """The atomic write leaves only the store and its lock file."""
        create_token(store_path, "ci-bot", ["viewer"])
        assert sorted(p.name for p in store_path.parent.iterdir()) == [
            "tokens.json",
            "tokens.json.lock",
        ]

    def test_concurrent_creations_keep_every_token(self, store_path: Path):
        """Tokens created at the same time are all kept (the file is locked while rewritten)."""
        tokens: list[str] = []
        threads = [
            threading.Thread(
                target=lambda i=i: tokens.append(create_token(store_path, f"p{i}", ["viewer"]))
            )
            for i in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store = TokenStore.load(store_path)
        assert {store.authenticate(t).name for t in tokens} == {f"p{i}" for i in range(8)}

    @pytest.mark.parametrize(
        ("principal", "roles", "scopes"),
        [
            ("", ["viewer"], None),
            ("two words", ["viewer"], None),
            ("ci", ["superuser"], None),
            ("ci", [], None),
            ("ci", ["viewer"], ["Checkout"]),
        ],
        ids=["empty-principal", "space-in-principal", "unknown-role", "no-role", "bad-scope"],
    )
    def test_bad_input_writes_nothing(
        self, store_path: Path, principal: str, roles: list[str], scopes: list[str] | None
    ):
        """A bad principal, role or scope raises ValueError and creates no store."""
        with pytest.raises(ValueError):
            create_token(store_path, principal, roles, scopes)
        assert not store_path.exists()


class TestRevoke:
    def test_revoked_tokens_stop_working_and_others_keep_working(self, store_path: Path):
        """revoke_tokens removes every token of one principal and no other."""
        a1 = create_token(store_path, "alice", ["viewer"])
        a2 = create_token(store_path, "alice", ["admin"])
        b = create_token(store_path, "bob", ["viewer"])
        assert revoke_tokens(store_path, "alice") == 2
        store = TokenStore.load(store_path)
        for token in (a1, a2):
            with pytest.raises(Unauthenticated):
                store.authenticate(token)
        assert store.authenticate(b).name == "bob"
        assert revoke_tokens(store_path, "nobody") == 0


class TestLoad:
    def test_a_missing_store_names_the_setting_and_the_command(self, store_path: Path):
        """Loading a missing store says how to make one."""
        with pytest.raises(ConfigError, match="releasectl token create"):
            TokenStore.load(store_path)

    def test_a_store_writable_by_others_is_refused(self, store_path: Path):
        """A store anyone may write could gain tokens, so it is refused with the chmod fix."""
        create_token(store_path, "ci", ["viewer"])
        os.chmod(store_path, 0o666)
        with pytest.raises(ConfigError, match="chmod 600"):
            TokenStore.load(store_path)

    @pytest.mark.parametrize(
        ("content", "error"),
        [
            ("not json", "not valid"),
            ("[]", "JSON object"),
            ('{"version": 2, "tokens": []}', "version 1"),
            ('{"version": 1}', "'tokens' must be a list"),
            ('{"version": 1, "tokens": [], "extra": 1}', "unknown top-level keys"),
            ('{"version": 1, "tokens": [{"principal": "a"}]}', r"tokens\[0\] must have"),
            (
                '{"version": 1, "tokens": [{"principal": "a", "roles": ["viewer"], '
                '"scopes": ["*"], "token_sha256": "abc", "created_at": "x"}]}',
                "64 lowercase hex",
            ),
            (
                '{"version": 1, "tokens": [{"principal": "a", "roles": ["root"], '
                f'"scopes": ["*"], "token_sha256": "{"a" * 64}", "created_at": "x"}}]}}',
                r"tokens\[0\]: unknown role 'root'",
            ),
        ],
        ids=[
            "not-json",
            "not-an-object",
            "newer-version",
            "no-tokens",
            "unknown-key",
            "entry-missing-fields",
            "bad-hash",
            "unknown-role",
        ],
    )
    def test_a_malformed_store_is_refused_with_the_reason(
        self, store_path: Path, content: str, error: str
    ):
        """A malformed store raises ConfigError naming the file and what is wrong."""
        store_path.parent.mkdir(parents=True)
        store_path.write_text(content)
        os.chmod(store_path, 0o600)
        with pytest.raises(ConfigError, match=error) as info:
            TokenStore.load(store_path)
        assert str(store_path) in info.value.message


class TestBearer:
    @pytest.mark.parametrize(
        ("metadata", "error"),
        [
            ((), "no credentials"),
            ((("x-other", "v"),), "no credentials"),
            ((("authorization", "Basic dXNlcjpwdw=="),), "not 'Bearer <token>'"),
            ((("authorization", "Bearer"),), "not 'Bearer <token>'"),
            ((("authorization", "Bearer   "),), "not 'Bearer <token>'"),
            ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "exactly one"),
        ],
        ids=["none", "other-metadata", "basic-scheme", "no-token", "blank-token", "two-headers"],
    )
    def test_missing_or_malformed_credentials_are_refused(
        self, metadata: tuple[tuple[str, str], ...], error: str
    ):
        """Only one well-formed Bearer credential is accepted."""
        with pytest.raises(Unauthenticated, match=error):
            bearer_token(metadata, how_to_get_one="ask")

    def test_the_scheme_is_case_insensitive_and_bytes_are_accepted(self):
        """`bearer` in any case and byte values both work."""
        assert bearer_token((("authorization", "bearer tok"),), how_to_get_one="") == "tok"
        assert bearer_token((("authorization", b"Bearer tok"),), how_to_get_one="") == "tok"


class TestTokenAuthenticator:
    def test_a_good_token_authenticates(self, store_path: Path):
        """A known token in Bearer metadata yields its principal."""
        token = create_token(store_path, "ci-bot", ["releaser"])
        auth = TokenAuthenticator(store_path)
        assert auth.authenticate(bearer(token), {}).name == "ci-bot"

    @pytest.mark.parametrize(
        "presented",
        ["rc_" + "A" * 43, "not-even-prefixed", "rc_"],
        ids=["unknown-token", "unprefixed", "prefix-only"],
    )
    def test_an_unknown_token_is_refused_without_echoing_it(self, store_path: Path, presented: str):
        """An unknown token is Unauthenticated, and the message does not contain it."""
        create_token(store_path, "ci-bot", ["releaser"])
        auth = TokenAuthenticator(store_path)
        with pytest.raises(Unauthenticated, match="not known") as info:
            auth.authenticate(bearer(presented), {})
        assert presented not in info.value.message

    def test_a_new_token_works_without_restart(self, store_path: Path):
        """A token created after the server loaded the store is accepted on its next call."""
        create_token(store_path, "first", ["viewer"])
        auth = TokenAuthenticator(store_path)
        later = create_token(store_path, "later", ["viewer"])
        assert auth.authenticate(bearer(later), {}).name == "later"

    def test_a_revoked_token_stops_without_restart(self, store_path: Path):
        """A token revoked after the server loaded the store is refused on its next call."""
        token = create_token(store_path, "gone", ["viewer"])
        create_token(store_path, "stays", ["viewer"])
        auth = TokenAuthenticator(store_path)
        assert auth.authenticate(bearer(token), {}).name == "gone"
        revoke_tokens(store_path, "gone")
        with pytest.raises(Unauthenticated):
            auth.authenticate(bearer(token), {})

    def test_a_broken_store_fails_closed_until_fixed(
        self, store_path: Path, caplog: pytest.LogCaptureFixture
    ):
        """A store that turns invalid refuses every token (UNAVAILABLE) and logs why until fixed."""
        token = create_token(store_path, "ci", ["viewer"])
        good = store_path.read_bytes()
        auth = TokenAuthenticator(store_path)
        store_path.write_text("{ half written")
        with pytest.raises(Unavailable), caplog.at_level(logging.ERROR):
            auth.authenticate(bearer(token), {})
        assert "token store unusable" in caplog.text
        store_path.unlink()
        with pytest.raises(Unavailable):
            auth.authenticate(bearer(token), {})
        store_path.write_bytes(good)
        os.chmod(store_path, 0o600)
        assert auth.authenticate(bearer(token), {}).name == "ci"

    def test_a_missing_store_stops_the_server_at_start(self, store_path: Path):
        """Constructing the authenticator without a store raises ConfigError."""
        with pytest.raises(ConfigError):
            TokenAuthenticator(store_path)
