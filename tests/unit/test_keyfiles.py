"""Key and root files on disk: the dev setup, rotation and offline root signing
(releasecontrol.keyfiles; docs/host-protocol.md section 4).

Each test checks what an operator (or a host) would: which files exist, what
trust.json pins, whether the roots in the folder verify from it as a host's
chain would, and the one-line error when something is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from host_repository import KEY_A, KEY_B, NOW, ROOT_A, ROOT_B, ROOT_C

from releasecontrol.errors import ConfigError
from releasecontrol.index import Envelope
from releasecontrol.keyfiles import (
    DevKeys,
    add_signatures,
    install_root,
    load_or_create_dev_keys,
    load_signing_key,
    propose_rotation,
    read_roots,
    root_status,
    verify_roots,
)
from releasecontrol.root import ROLE_INDEX, ROLE_ROOT, Root
from releasecontrol.trust import SigningKey, TrustStore


def dev_chain(keys_dir: Path, *, allow_dev_keys: bool = True) -> Root:
    """The newest root in keys_dir/roots, checked from keys_dir/trust.json as a host would."""
    trust = TrustStore.from_file(keys_dir / "trust.json")
    roots = read_roots(keys_dir / "roots")
    return verify_roots(trust, roots, allow_dev_keys=allow_dev_keys, source="roots")


class TestDevKeys:
    def test_the_first_run_makes_both_keys_root_1_and_the_trust_file(self, tmp_path: Path) -> None:
        """Root key, signing key (0600), roots/1.json and a trust.json pinning the root key."""
        keys_dir = tmp_path / "home" / "keys"
        made = load_or_create_dev_keys(keys_dir, now=NOW)
        assert sorted(os.listdir(keys_dir)) == [
            "root-key.pem",
            "roots",
            "signing-key.pem",
            "trust.json",
        ]
        assert os.listdir(keys_dir / "roots") == ["1.json"]
        for pem in ("root-key.pem", "signing-key.pem"):
            assert stat.S_IMODE((keys_dir / pem).stat().st_mode) == 0o600
        trust = TrustStore.from_file(keys_dir / "trust.json")
        assert list(trust.keys) == [made.root_key.keyid]
        assert trust.dev_keyids == {made.root_key.keyid}
        assert (trust.threshold, trust.root_version) == (1, 1)
        root = dev_chain(keys_dir)
        assert root == made.root
        assert root.roles[ROLE_INDEX].keyids == (made.signing_key.keyid,)
        assert root.keys[made.signing_key.keyid].dev
        assert root.expires_at == NOW + timedelta(days=365)

    def test_dev_roots_verify_only_where_dev_keys_are_allowed(self, tmp_path: Path) -> None:
        """The dev root key is a dev key: a host not allowing dev keys refuses root 1."""
        load_or_create_dev_keys(tmp_path, now=NOW)
        with pytest.raises(ConfigError, match="not accepted: FEATURE_ALLOW_INSECURE_DEV_KEYS"):
            dev_chain(tmp_path, allow_dev_keys=False)

    def test_a_rerun_reuses_everything(self, tmp_path: Path) -> None:
        """A second run returns the same keys and root and rewrites neither root nor trust file."""
        first = load_or_create_dev_keys(tmp_path, now=NOW)
        trust = tmp_path / "trust.json"
        # Reformatted by hand but still naming the root key: a rewrite would show as new text.
        trust.write_text(json.dumps(json.loads(trust.read_text())))
        before = trust.read_text(), (tmp_path / "roots" / "1.json").read_bytes()
        second = load_or_create_dev_keys(tmp_path, now=NOW + timedelta(days=10))
        assert (second.root_key.keyid, second.signing_key.keyid) == (
            first.root_key.keyid,
            first.signing_key.keyid,
        )
        assert second.root == first.root
        assert (trust.read_text(), (tmp_path / "roots" / "1.json").read_bytes()) == before
        assert os.listdir(tmp_path / "roots") == ["1.json"]

    def test_a_replaced_signing_key_gets_a_new_root(self, tmp_path: Path) -> None:
        """A new signing-key.pem is put in root 2, which hosts reach from the same trust file."""
        first = load_or_create_dev_keys(tmp_path, now=NOW)
        KEY_B.save(tmp_path / "signing-key.pem")
        again = load_or_create_dev_keys(tmp_path, now=NOW)
        assert again.root.version == 2
        assert again.root.roles[ROLE_INDEX].keyids == (KEY_B.keyid,)
        assert again.root.roles[ROLE_ROOT].keyids == (first.root_key.keyid,)
        assert dev_chain(tmp_path) == again.root

    @pytest.mark.parametrize(
        ("days", "renewed"),
        [
            pytest.param(334, False, id="31-days-left"),
            pytest.param(336, True, id="29-days-left"),
        ],
    )
    def test_a_root_near_its_expiry_is_renewed(
        self, tmp_path: Path, days: int, renewed: bool
    ) -> None:
        """Within 30 days of its expiry the dev root is followed by a fresh one."""
        load_or_create_dev_keys(tmp_path, now=NOW)
        later = NOW + timedelta(days=days)
        made = load_or_create_dev_keys(tmp_path, now=later)
        assert made.root.version == (2 if renewed else 1)
        assert dev_chain(tmp_path).version == made.root.version
        if renewed:
            assert made.root.expires_at == later + timedelta(days=365)

    def test_a_v1_trust_file_naming_the_signing_key_is_rewritten(self, tmp_path: Path) -> None:
        """A v1 dev setup pinned the signing key itself; it now pins the new root key."""
        KEY_A.save(tmp_path / "signing-key.pem")
        v1_trust = TrustStore.for_keys([KEY_A.trusted_key(dev=True)])
        (tmp_path / "trust.json").write_text(v1_trust.to_json())
        made = load_or_create_dev_keys(tmp_path, now=NOW)
        assert made.signing_key.keyid == KEY_A.keyid
        trust = TrustStore.from_file(tmp_path / "trust.json")
        assert list(trust.keys) == [made.root_key.keyid] != [KEY_A.keyid]
        assert dev_chain(tmp_path).roles[ROLE_INDEX].keyids == (KEY_A.keyid,)

    @pytest.mark.parametrize(
        "trust_text",
        [
            pytest.param("{broken", id="malformed"),
            pytest.param(TrustStore.for_keys([ROOT_B.trusted_key()]).to_json(), id="other-key"),
        ],
    )
    def test_a_trust_file_not_naming_the_root_key_is_rewritten(
        self, tmp_path: Path, trust_text: str
    ) -> None:
        """trust.json always ends up pinning the dev root key, whatever it held."""
        made = load_or_create_dev_keys(tmp_path, now=NOW)
        (tmp_path / "trust.json").write_text(trust_text)
        load_or_create_dev_keys(tmp_path, now=NOW)
        assert list(TrustStore.from_file(tmp_path / "trust.json").keys) == [made.root_key.keyid]

    def test_roots_of_another_dev_setup_are_replaced(self, tmp_path: Path) -> None:
        """A roots folder copied from another machine does not verify: a new root 1 is signed."""
        load_or_create_dev_keys(tmp_path / "theirs", now=NOW)
        load_or_create_dev_keys(tmp_path / "theirs", now=NOW + timedelta(days=336))  # root 2
        mine = tmp_path / "mine"
        mine.mkdir()
        shutil.copytree(tmp_path / "theirs" / "roots", mine / "roots")
        made = load_or_create_dev_keys(mine, now=NOW)
        assert made.root.version == 1
        assert os.listdir(mine / "roots") == ["1.json"]
        assert dev_chain(mine) == made.root

    @pytest.mark.parametrize("name", ["root-key.pem", "signing-key.pem"])
    def test_a_broken_key_file_is_an_error_not_replaced(self, tmp_path: Path, name: str) -> None:
        """A corrupt key file is reported by name, never silently replaced by a new key."""
        (tmp_path / name).write_bytes(b"corrupt")
        with pytest.raises(ConfigError, match=name.replace(".", r"\.")):
            load_or_create_dev_keys(tmp_path, now=NOW)
        assert (tmp_path / name).read_bytes() == b"corrupt"

    def test_concurrent_first_runs_end_with_one_key_each(self, tmp_path: Path) -> None:
        """Processes starting at once agree on one root key, one signing key and one root."""
        results: list[DevKeys] = []
        errors: list[BaseException] = []
        start = threading.Barrier(8)

        def run() -> None:
            try:
                start.wait()
                results.append(load_or_create_dev_keys(tmp_path, now=NOW))
            except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len({(r.root_key.keyid, r.signing_key.keyid) for r in results}) == 1
        assert os.listdir(tmp_path / "roots") == ["1.json"]
        assert SigningKey.load(tmp_path / "signing-key.pem").keyid == results[0].signing_key.keyid
        assert dev_chain(tmp_path) == results[0].root


@pytest.fixture
def two_of_two(tmp_path: Path) -> tuple[Root, Path, TrustStore]:
    """Root 1 in tmp_path/roots: root keys ROOT_A and ROOT_B (both needed), online key KEY_A."""
    root = Root.create(
        version=1,
        root_keys=[ROOT_A.trusted_key(), ROOT_B.trusted_key()],
        index_keys=[KEY_A.trusted_key()],
        issued_at=NOW,
        expires_at=NOW + timedelta(days=365),
        root_threshold=2,
    )
    root_dir = tmp_path / "roots"
    root_dir.mkdir()
    (root_dir / "1.json").write_bytes(root.sign([ROOT_A, ROOT_B]).to_bytes())
    trust = TrustStore.for_keys([ROOT_A.trusted_key(), ROOT_B.trusted_key()], threshold=2)
    return root, root_dir, trust


def unsigned(root: Root) -> bytes:
    """A proposed root file with no signature yet, as `releasectl keys rotate` writes it."""
    return Envelope(signed=root.to_dict(), signatures=()).to_bytes()


class TestRotation:
    def test_propose_rotation_replaces_the_online_key(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """Root N+1 names the new key in the index role and keeps the root keys and thresholds."""
        current, _, _ = two_of_two
        proposed = propose_rotation(current, KEY_B, now=NOW + timedelta(days=1))
        assert proposed.version == 2
        assert proposed.roles[ROLE_INDEX].keyids == (KEY_B.keyid,)
        assert proposed.roles[ROLE_ROOT] == current.roles[ROLE_ROOT]
        assert proposed.expires_at == NOW + timedelta(days=366)
        assert KEY_A.keyid not in proposed.keys

    def test_keep_leaves_the_old_key_beside_the_new(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """With keep, the old online key stays in the index role beside the new one."""
        current, _, _ = two_of_two
        proposed = propose_rotation(current, KEY_B, keep=[KEY_A.keyid], now=NOW)
        assert proposed.roles[ROLE_INDEX].keyids == (KEY_A.keyid, KEY_B.keyid)

    def test_an_index_threshold_the_new_keys_cannot_meet_is_lowered(self) -> None:
        """Two online keys needing both, rotated to one: the threshold becomes 1."""
        current = Root.create(
            version=4,
            root_keys=[ROOT_A.trusted_key()],
            index_keys=[KEY_A.trusted_key(), KEY_B.trusted_key()],
            issued_at=NOW,
            expires_at=NOW + timedelta(days=365),
            index_threshold=2,
        )
        proposed = propose_rotation(current, SigningKey.generate(), now=NOW, dev=True)
        assert proposed.version == 5
        assert proposed.roles[ROLE_INDEX].threshold == 1
        assert all(k.dev for k in proposed.keys.values() if k.keyid not in (ROOT_A.keyid,))

    def test_the_offline_flow_installs_a_root_once_both_holders_signed(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """Each root key holder adds a signature; install succeeds only at the threshold."""
        current, root_dir, trust = two_of_two
        data = unsigned(propose_rotation(current, KEY_B, now=NOW))
        status = root_status(data, current)
        assert not status.complete
        assert status.by_previous == (
            "signed by 0 of 2 required trusted keys; it carries no signatures"
        )
        with pytest.raises(ConfigError, match="root 2 is not signed enough to install"):
            install_root(root_dir, data, current, allow_dev_keys=False)
        data = add_signatures(data, [ROOT_A])
        assert root_status(data, current).by_previous == "signed by 1 of 2 required trusted keys"
        with pytest.raises(ConfigError) as caught:
            install_root(root_dir, data, current, allow_dev_keys=False)
        assert "by root 1's root keys, signed by 1 of 2 required trusted keys" in (
            caught.value.message
        )
        assert "releasectl keys sign-root" in caught.value.message
        assert not (root_dir / "2.json").exists()
        data = add_signatures(data, [ROOT_B])
        assert root_status(data, current).complete
        installed = install_root(root_dir, data, current, allow_dev_keys=False)
        assert installed.version == 2
        assert (root_dir / "2.json").read_bytes() == data
        newest = verify_roots(trust, read_roots(root_dir), allow_dev_keys=False, source="roots")
        assert newest.roles[ROLE_INDEX].keyids == (KEY_B.keyid,)

    def test_add_signatures_keeps_one_signature_per_key(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """Signing twice with the same key, or with a key already there, adds nothing."""
        current, _, _ = two_of_two
        data = add_signatures(unsigned(propose_rotation(current, KEY_B, now=NOW)), [ROOT_A])
        again = add_signatures(data, [ROOT_A, ROOT_B, ROOT_A])
        keyids = [s["keyid"] for s in json.loads(again)["signatures"]]
        assert keyids == [ROOT_A.keyid, ROOT_B.keyid]

    def test_new_root_keys_must_sign_their_own_root(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """A root naming new root keys is incomplete until they sign it too."""
        current, root_dir, _ = two_of_two
        proposed = Root.create(
            version=2,
            root_keys=[ROOT_C.trusted_key()],
            index_keys=[KEY_B.trusted_key()],
            issued_at=NOW,
            expires_at=NOW + timedelta(days=365),
        )
        data = add_signatures(unsigned(proposed), [ROOT_A, ROOT_B])
        status = root_status(data, current)
        assert status.by_previous == "signed by 2 of 2 required trusted keys"
        assert status.by_itself.startswith("signed by 0 of 1 required trusted key")
        with pytest.raises(ConfigError, match="by its own root keys, signed by 0 of 1"):
            install_root(root_dir, data, current, allow_dev_keys=False)
        install_root(root_dir, add_signatures(data, [ROOT_C]), current, allow_dev_keys=False)
        assert (root_dir / "2.json").is_file()

    def test_a_root_of_another_version_is_refused(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """Installing root 3 after root 1 is refused, saying which version comes next."""
        current, root_dir, _ = two_of_two
        proposed = propose_rotation(propose_rotation(current, KEY_B, now=NOW), KEY_A, now=NOW)
        data = add_signatures(unsigned(proposed), [ROOT_A, ROOT_B])
        with pytest.raises(ConfigError, match="this is root 3; the next root after 1 is 2"):
            install_root(root_dir, data, current, allow_dev_keys=False)
        assert sorted(os.listdir(root_dir)) == ["1.json"]

    def test_an_installed_version_is_never_replaced(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """A second root 2 is refused once one is installed: hosts may have trusted the first."""
        current, root_dir, _ = two_of_two
        first = add_signatures(
            unsigned(propose_rotation(current, KEY_B, now=NOW)), [ROOT_A, ROOT_B]
        )
        install_root(root_dir, first, current, allow_dev_keys=False)
        other = add_signatures(
            unsigned(propose_rotation(current, KEY_A, now=NOW)), [ROOT_A, ROOT_B]
        )
        with pytest.raises(ConfigError, match="exists already; root versions are never replaced"):
            install_root(root_dir, other, current, allow_dev_keys=False)
        assert (root_dir / "2.json").read_bytes() == first

    def test_dev_root_keys_count_for_install_only_when_allowed(self, tmp_path: Path) -> None:
        """A dev setup's root, signed by its dev root key, installs only with dev keys allowed."""
        made = load_or_create_dev_keys(tmp_path, now=NOW)
        proposed = propose_rotation(made.root, KEY_B, now=NOW, dev=True)
        data = proposed.sign([made.root_key]).to_bytes()
        with pytest.raises(ConfigError, match="not signed enough to install"):
            install_root(tmp_path / "roots", data, made.root, allow_dev_keys=False)
        install_root(tmp_path / "roots", data, made.root, allow_dev_keys=True)
        assert dev_chain(tmp_path).roles[ROLE_INDEX].keyids == (KEY_B.keyid,)

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b"not json", id="not-json"),
            pytest.param(b'{"signatures":[],"signed":{"type":"releases"}}', id="not-a-root"),
        ],
    )
    def test_a_file_that_is_not_a_root_is_refused(self, data: bytes) -> None:
        """Signing or checking something that is not a root file is a ConfigError saying so."""
        with pytest.raises(ConfigError, match="not a root file"):
            add_signatures(data, [ROOT_A])
        with pytest.raises(ConfigError, match="not a root file"):
            root_status(data, None)


class TestRootFolder:
    def test_roots_are_read_by_version(self, two_of_two: tuple[Root, Path, TrustStore]) -> None:
        """<N>.json files are the roots; other names in the folder are not."""
        _, root_dir, _ = two_of_two
        for name in ("0.json", "01.json", "2.json.tmp", "notes.txt"):
            (root_dir / name).write_text("x")
        assert list(read_roots(root_dir)) == [1]

    def test_a_missing_folder_holds_no_roots(self, tmp_path: Path) -> None:
        """A folder that does not exist yet is no roots, not an error."""
        assert read_roots(tmp_path / "nowhere") == {}

    def test_a_gap_in_the_versions_is_refused(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """Roots 1 and 3 without 2 are refused, naming the missing version and the folder."""
        _, root_dir, _ = two_of_two
        (root_dir / "3.json").write_bytes((root_dir / "1.json").read_bytes())
        with pytest.raises(ConfigError) as caught:
            read_roots(root_dir)
        assert caught.value.message.startswith(f"root folder {root_dir} lacks root version(s) [2]")

    def test_verify_roots_needs_the_trust_files_root(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """A trust file pinning root 2 cannot verify a folder holding only root 1."""
        _, root_dir, trust = two_of_two
        pinned_2 = TrustStore(threshold=2, keys=trust.keys, root_version=2)
        with pytest.raises(ConfigError, match="roots has no root 2, the root version"):
            verify_roots(pinned_2, read_roots(root_dir), allow_dev_keys=False, source="roots")

    def test_verify_roots_names_the_root_that_breaks_the_chain(
        self, two_of_two: tuple[Root, Path, TrustStore]
    ) -> None:
        """A root 2 signed by one of two root keys breaks the chain, and the error says where."""
        current, root_dir, trust = two_of_two
        half = add_signatures(unsigned(propose_rotation(current, KEY_B, now=NOW)), [ROOT_A])
        (root_dir / "2.json").write_bytes(half)
        with pytest.raises(ConfigError) as caught:
            verify_roots(trust, read_roots(root_dir), allow_dev_keys=False, source="my roots")
        assert caught.value.message.startswith("my roots: cannot follow the chain of roots")
        assert "roots/2.json is not signed by root 1's root keys" in caught.value.message

    def test_a_missing_signing_key_says_how_to_make_one(self, tmp_path: Path) -> None:
        """load_signing_key of a missing file names it and `releasectl dev`."""
        with pytest.raises(ConfigError, match=r"signing-key\.pem does not exist: run `releasectl"):
            load_signing_key(tmp_path / "signing-key.pem")
        KEY_A.save(tmp_path / "signing-key.pem")
        assert load_signing_key(tmp_path / "signing-key.pem").keyid == KEY_A.keyid
