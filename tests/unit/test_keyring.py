"""load_keyring in production: keys the dev setup made are refused by the keys themselves.

Issue 13 item 11: removing the `"dev"` marker from the trust file (and re-signing
the roots with the dev root key lying beside the signing key) must not turn a
dev key into a production one.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from releasecontrol.errors import ConfigError
from releasecontrol.keyfiles import (
    DEV_ROOT_KEY_FILE,
    DEV_SIGNING_KEY_FILE,
    DEV_TRUST_FILE,
    ROOTS_DIR,
    load_or_create_dev_keys,
)
from releasecontrol.root import Root
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.config import Config, load_config
from releasecontrol_server.keyring import DEV_KEY_MARKER, load_keyring

NOW = datetime.now(UTC).replace(microsecond=0)


def config(home: Path, *, env: str = "production") -> Config:
    return load_config(
        {
            "RELEASECONTROL_ENV": env,
            "RELEASECONTROL_HOME": str(home),
            "RELEASECONTROL_AUTH_MODE": "rpc-token",
            "FEATURE_TRUST_PUBLIC_KEYS_PATH": str(home / "keys" / DEV_TRUST_FILE),
        },
        cwd=home.parent,
    )


def sign_roots(
    keys_dir: Path,
    root_key: SigningKey,
    signing_key: SigningKey,
    *,
    versions: range = range(1, 2),
    trust_version: int = 1,
) -> None:
    """Roots `versions` listing the keys without any dev marker, and a trust file to match."""
    for version in versions:
        root = Root.create(
            version=version,
            root_keys=[root_key.trusted_key()],
            index_keys=[signing_key.trusted_key()],
            issued_at=NOW,
            expires_at=NOW + timedelta(days=365),
        )
        (keys_dir / ROOTS_DIR / f"{version}.json").write_bytes(root.sign([root_key]).to_bytes())
    trust = TrustStore(
        threshold=1, keys={root_key.keyid: root_key.trusted_key()}, root_version=trust_version
    )
    (keys_dir / DEV_TRUST_FILE).write_text(trust.to_json())


def dev_setup(home: Path) -> tuple[SigningKey, SigningKey]:
    """What `releasectl dev` makes: key files whose first line carries the marker."""
    keys_dir = home / "keys"
    made = load_or_create_dev_keys(keys_dir)
    for name in (DEV_SIGNING_KEY_FILE, DEV_ROOT_KEY_FILE):
        assert (keys_dir / name).read_bytes().startswith(b"# " + DEV_KEY_MARKER + b"\n")
    return made.root_key, made.signing_key


def refused(home: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_keyring(config(home))
    assert "\n" not in caught.value.message
    return caught.value.message


class TestDevKeysInProduction:
    def test_the_dev_setup_as_made_is_refused(self, tmp_path: Path) -> None:
        """Untouched, the trust file's own word refuses it (as before)."""
        dev_setup(tmp_path / "home")
        assert "dev key" in refused(tmp_path / "home")

    def test_markers_removed_and_roots_re_signed_the_layout_refuses(self, tmp_path: Path) -> None:
        """Trust file and roots say nothing of dev, the key file's marker stripped: the dev
        root key lying beside the signing key still gives the dev setup away."""
        home = tmp_path / "home"
        root_key, signing_key = dev_setup(home)
        keys_dir = home / "keys"
        signing_key.save(keys_dir / DEV_SIGNING_KEY_FILE)  # no marker line
        sign_roots(keys_dir, root_key, signing_key)
        message = refused(home)
        assert DEV_ROOT_KEY_FILE in message and "keeps root keys offline" in message
        assert "signing_key_paths" in message

    def test_markers_removed_and_the_root_key_moved_away_the_key_file_refuses(
        self, tmp_path: Path
    ) -> None:
        """The signing key's file itself says the dev setup made it, whatever else was edited."""
        home = tmp_path / "home"
        root_key, signing_key = dev_setup(home)
        keys_dir = home / "keys"
        os.replace(keys_dir / DEV_ROOT_KEY_FILE, tmp_path / "elsewhere.pem")
        sign_roots(keys_dir, root_key, signing_key)
        message = refused(home)
        assert DEV_KEY_MARKER.decode() in message and "releasectl dev" in message
        assert "releasectl keys rotate" in message

    def test_a_key_an_older_root_marked_dev_stays_refused(self, tmp_path: Path) -> None:
        """Root 1 (signed by the dev setup) marks the keys dev; a clean root 2 pinned by the
        trust file does not launder them."""
        home = tmp_path / "home"
        root_key, signing_key = dev_setup(home)
        keys_dir = home / "keys"
        signing_key.save(keys_dir / DEV_SIGNING_KEY_FILE)
        os.replace(keys_dir / DEV_ROOT_KEY_FILE, tmp_path / "elsewhere.pem")
        sign_roots(keys_dir, root_key, signing_key, versions=range(2, 3), trust_version=2)
        message = refused(home)
        assert "marked as a dev key in root 1" in message

    def test_development_still_uses_the_dev_keys(self, tmp_path: Path) -> None:
        """Outside production the same files load as always."""
        dev_setup(tmp_path / "home")
        keyring = load_keyring(config(tmp_path / "home", env="development"))
        assert keyring.root_version == 1


class TestRealKeysInProduction:
    def production_keys(self, home: Path) -> tuple[SigningKey, SigningKey]:
        keys_dir = home / "keys"
        (keys_dir / ROOTS_DIR).mkdir(parents=True)
        root_key, signing_key = SigningKey.generate(), SigningKey.generate()
        signing_key.save(keys_dir / DEV_SIGNING_KEY_FILE)
        sign_roots(keys_dir, root_key, signing_key)
        return root_key, signing_key

    def test_real_keys_at_the_default_paths_are_accepted(self, tmp_path: Path) -> None:
        """A real key where signing_key_paths points by default is fine: location alone is
        not held against it."""
        _, signing_key = self.production_keys(tmp_path / "home")
        keyring = load_keyring(config(tmp_path / "home"))
        assert [k.keyid for k in keyring.keys] == [signing_key.keyid]

    def test_an_unrelated_root_key_pem_beside_it_is_not_held_against_it(
        self, tmp_path: Path
    ) -> None:
        """Only a root key the trust file or a root names counts as the dev layout."""
        home = tmp_path / "home"
        self.production_keys(home)
        SigningKey.generate().save(home / "keys" / DEV_ROOT_KEY_FILE)
        assert load_keyring(config(home)).root_version == 1
