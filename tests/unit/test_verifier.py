"""Every check a host makes, in memory: Verifier and the manifest and asset checks
(releasecontrol.verifier; docs/host-protocol.md sections 3, 4 and 6).

The files are what `HostRepository` signs into a folder; the verifier gets their
bytes directly, with a fixed clock, and no HTTP in between. The shared vectors
(tests/vectors, run by test_vectors.py) pin each attack's verdict through a whole
host; these tests pin the verifier's own behaviour: the chain of roots, the
high-water marks and what it keeps, and each check's code, file and sentence.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from host_repository import (
    KEY_A,
    KEY_B,
    KEY_C,
    KEY_DEV,
    NOW,
    ROOT_A,
    ROOT_B,
    HostRepository,
    sha256,
)

from releasecontrol.canonical import jcs
from releasecontrol.index import REMOTE_INDEX_PATH, ReleasesIndex, VersionEntry, releases_path
from releasecontrol.manifest import canonical_bytes
from releasecontrol.root import root_path
from releasecontrol.shards import Pin, RemoteIndex, shard_path
from releasecontrol.trust import TrustStore
from releasecontrol.verifier import (
    CODES,
    MAX_ROOT_STEPS,
    Mark,
    Refusal,
    Verifier,
    check_asset,
    check_manifest,
    read_signed,
    select_version,
)

LATER = NOW + timedelta(hours=1)
CHECKOUT = releases_path("checkout")


class Origin:
    """Hands a verifier the repository's bytes, recording which roots it asked for."""

    def __init__(self, repo: HostRepository) -> None:
        self.repo = repo
        self.roots_fetched: list[int] = []

    def fetch_root(self, version: int) -> bytes:
        self.roots_fetched.append(version)
        path = root_path(version)
        try:
            return self.repo.read(path)
        except FileNotFoundError:
            raise Refusal("fetch", path, f"{path}: the origin answered HTTP 404") from None

    def top(self, verifier: Verifier, now: Any = LATER) -> RemoteIndex:
        return verifier.top(self.repo.read(REMOTE_INDEX_PATH), now, self.fetch_root).model

    def load(self, verifier: Verifier, now: Any = LATER) -> dict[str, int]:
        """Verify the top level, every shard and every releases.json; feature -> sequence."""
        top = self.top(verifier, now)
        sequences = {}
        for name in sorted(top.shards):
            shard = verifier.shard(top, name, self.repo.read(shard_path(top.bits, name)), now)
            for feature_id, pin in sorted(shard.model.features.items()):
                data = self.repo.read(releases_path(feature_id))
                sequences[feature_id] = verifier.releases(feature_id, pin, data, now).model.sequence
        return sequences


def refused(call: Callable[[], object]) -> Refusal:
    """The Refusal `call` raises; fails the test when it raises none."""
    with pytest.raises(Refusal) as caught:
        call()
    assert "\n" not in caught.value.message
    return caught.value


@pytest.fixture
def repo(tmp_path: Path) -> HostRepository:
    """checkout 1.0.0 (bin 63) and search 2.0.0 (bin 12), stable, at top sequence 1."""
    repo = HostRepository(tmp_path / "origin")
    repo.add_version("checkout", "1.0.0")
    repo.add_version("search", "2.0.0")
    repo.publish()
    return repo


@pytest.fixture
def origin(repo: HostRepository) -> Origin:
    return Origin(repo)


def verifier_for(repo: HostRepository, **kwargs: Any) -> Verifier:
    return Verifier(repo.trust(), **kwargs)


class TestRefusal:
    def test_carries_a_protocol_code_the_file_and_a_sentence(self) -> None:
        """A refusal's as_dict is its code, file and message: what hosts report."""
        refusal = Refusal("hash", "index/7/63.json", "index/7/63.json has SHA-256 …")
        assert refusal.as_dict() == {
            "code": "hash",
            "file": "index/7/63.json",
            "message": "index/7/63.json has SHA-256 …",
        }

    def test_only_the_pages_codes_exist(self) -> None:
        """The codes are section 6.1's fifteen; any other is a programming error."""
        assert len(CODES) == 15 and "stale-root" in CODES
        with pytest.raises(ValueError, match="unknown refusal code 'bad-signature'"):
            Refusal("bad-signature", REMOTE_INDEX_PATH, "x")


class TestReadSigned:
    @pytest.mark.parametrize(
        ("data", "code", "fragment"),
        [
            pytest.param(b'{"signed":', "malformed", "it is not JSON", id="cut-short"),
            pytest.param(b"[]", "malformed", "must be a JSON object", id="not-an-object"),
            pytest.param(
                b'{"signatures": [], "signed": {}}',
                "not-canonical",
                "not the RFC 8785 (JCS) encoding",
                id="whitespace",
            ),
            pytest.param(
                b'{"signatures":[],"signed":{"schema_version":1}}',
                "schema-version",
                "remote-index.json has schema_version 1; this host speaks 2",
                id="schema-1",
            ),
            pytest.param(
                b'{"signatures":[],"signed":{"schema_version":"2"}}',
                "schema-version",
                'remote-index.json has schema_version "2"; this host speaks 2',
                id="schema-string",
            ),
            pytest.param(
                b'{"signatures":[],"signed":{}}',
                "schema-version",
                "remote-index.json has schema_version null; this host speaks 2",
                id="no-schema",
            ),
        ],
    )
    def test_steps_1_to_4_refuse_with_their_code(
        self, data: bytes, code: str, fragment: str
    ) -> None:
        """Not JSON, not canonical, not an envelope or not schema 2: each has its own code."""
        refusal = refused(lambda: read_signed(REMOTE_INDEX_PATH, data))
        assert (refusal.code, refusal.file) == (code, REMOTE_INDEX_PATH)
        assert fragment in refusal.message

    def test_the_signed_bytes_are_the_slice_of_the_file(self, repo: HostRepository) -> None:
        """The bytes signatures are checked over are the file's own `signed` member, as JCS."""
        data = repo.read(REMOTE_INDEX_PATH)
        envelope, signed_bytes = read_signed(REMOTE_INDEX_PATH, data)
        assert signed_bytes == jcs(dict(envelope.signed))
        assert data.endswith(b',"signed":' + signed_bytes + b"}")


def root_2_signed_by(signers: list[Any]) -> Callable[[HostRepository], None]:
    """Root 2 (root key ROOT_B) signed by `signers` only, and a top level naming it."""

    def change(repo: HostRepository) -> None:
        root = repo.model_root(2, [ROOT_B], [KEY_A])
        repo.publish_root(root, root_keys=[ROOT_B], signers=signers)
        repo.publish_remote()

    return change


def root_file_at_2(data: Callable[[HostRepository], bytes]) -> Callable[[HostRepository], None]:
    """`data` served as roots/2.json, and a top level naming root 2."""

    def change(repo: HostRepository) -> None:
        repo.write(root_path(2), data(repo))
        repo.publish_remote(root_version=2)

    return change


class TestRootChain:
    def test_the_first_root_is_the_trust_files_root_version(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A fresh verifier fetches root 1, checks it with the trust file, and trusts it."""
        verifier = verifier_for(repo)
        assert verifier.root is None
        signed = verifier.top(repo.read(REMOTE_INDEX_PATH), LATER, origin.fetch_root)
        assert origin.roots_fetched == [1]
        assert verifier.root is not None and verifier.root.version == 1
        assert signed.keyids == {KEY_A.keyid}

    def test_a_rotated_key_is_followed_one_root_at_a_time(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """After a rotation the verifier fetches only the new root and accepts the new key."""
        verifier = verifier_for(repo)
        origin.load(verifier)
        repo.rotate([KEY_B])
        origin.roots_fetched.clear()
        signed = verifier.top(repo.read(REMOTE_INDEX_PATH), LATER, origin.fetch_root)
        assert origin.roots_fetched == [2]
        assert verifier.root is not None and verifier.root.version == 2
        assert signed.keyids == {KEY_B.keyid}

    def test_a_trust_file_pinning_a_later_root_starts_there(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A trust file naming root 3 never fetches roots 1 and 2 (their keys may be retired)."""
        repo.rotate([KEY_B])
        repo.rotate([KEY_C], root_keys=[ROOT_B])
        verifier = Verifier(repo.trust(root_version=3))
        origin.top(verifier)
        assert origin.roots_fetched == [3]

    def test_new_root_keys_are_followed_from_old_ones(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A host pinning root 1's keys reaches root 3, whose root keys it never pinned."""
        repo.rotate([KEY_B])
        repo.rotate([KEY_C], root_keys=[ROOT_B])
        verifier = verifier_for(repo)
        assert origin.load(verifier) == {"checkout": 1, "search": 1}
        assert origin.roots_fetched == [1, 2, 3]
        assert verifier.root is not None and verifier.root.roles["root"].keyids == (ROOT_B.keyid,)

    @pytest.mark.parametrize(
        ("change", "fragment"),
        [
            pytest.param(
                lambda repo: repo.publish_remote(root_version=2),
                "cannot follow the chain of roots: roots/2.json: the origin answered HTTP 404",
                id="root-missing",
            ),
            pytest.param(
                root_2_signed_by([ROOT_B]),
                "roots/2.json is not signed by root 1's root keys: signed by 0 of 1",
                id="not-signed-by-the-previous-root",
            ),
            pytest.param(
                root_2_signed_by([ROOT_A]),
                "roots/2.json is not signed by its own root keys: signed by 0 of 1",
                id="not-signed-by-its-own-root-keys",
            ),
            pytest.param(
                root_file_at_2(
                    lambda repo: repo.signed(
                        repo.model_root(3, [ROOT_A], [KEY_A]).to_dict(), keys=[ROOT_A]
                    )
                ),
                "roots/2.json has version 3, not 2",
                id="another-version",
            ),
            pytest.param(
                root_file_at_2(lambda repo: b"{}"),
                "roots/2.json cannot be read (malformed:",
                id="malformed",
            ),
            pytest.param(
                root_file_at_2(lambda repo: repo.signed(repo.remote_body(), keys=[ROOT_A])),
                'roots/2.json has type "remote-index", not "root"',
                id="not-a-root",
            ),
        ],
    )
    def test_a_root_that_does_not_follow_refuses_the_top_and_keeps_the_last(
        self,
        repo: HostRepository,
        origin: Origin,
        change: Callable[[HostRepository], object],
        fragment: str,
    ) -> None:
        """A bad next root is `root` naming it; the trusted root and the marks stay as they were."""
        verifier = verifier_for(repo)
        origin.load(verifier)
        change(repo)
        refusal = refused(lambda: origin.top(verifier))
        assert (refusal.code, refusal.file) == ("root", root_path(2))
        assert fragment in refusal.message
        assert verifier.root is not None and verifier.root.version == 1
        assert verifier.top_mark is not None and verifier.top_mark.sequence == 1

    def test_the_first_root_must_be_signed_by_the_trust_file(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """Root 1 is checked against the trust file's keys, not against its own."""
        verifier = Verifier(TrustStore.for_keys([ROOT_B.trusted_key()]))
        refusal = refused(lambda: origin.top(verifier))
        assert (refusal.code, refusal.file) == ("root", root_path(1))
        assert "roots/1.json is not signed by the trust file's keys" in refusal.message
        assert verifier.root is None

    def test_a_top_under_a_root_left_behind_is_stale(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """After root 2, a top level naming root 1 is `stale-root`, even if its key is valid."""
        verifier = verifier_for(repo)
        repo.rotate([KEY_A, KEY_B])
        origin.top(verifier)
        repo.publish_remote(root_version=1)
        refusal = refused(lambda: origin.top(verifier))
        assert (refusal.code, refusal.file) == ("stale-root", REMOTE_INDEX_PATH)
        assert "signed under root 1, older than root 2 this host trusts" in refusal.message

    def test_a_top_older_than_the_trust_files_root_is_stale(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A fresh verifier pinning root 2 refuses a top level naming root 1, fetching nothing."""
        repo.rotate([KEY_A])
        repo.publish_remote(root_version=1)
        refusal = refused(lambda: origin.top(Verifier(repo.trust(root_version=2))))
        assert refusal.code == "stale-root"
        assert origin.roots_fetched == []

    @pytest.mark.parametrize(
        ("roots_ahead", "accepted"),
        [
            pytest.param(MAX_ROOT_STEPS, True, id="32-ahead"),
            pytest.param(MAX_ROOT_STEPS + 1, False, id="33-ahead"),
        ],
    )
    def test_at_most_32_roots_are_followed_in_one_refresh(
        self, repo: HostRepository, origin: Origin, roots_ahead: int, accepted: bool
    ) -> None:
        """32 root versions ahead are followed; 33 are `root`, before any is fetched."""
        verifier = verifier_for(repo)
        origin.top(verifier)
        for _ in range(roots_ahead):
            repo.rotate([KEY_A], resign=False)
        repo.publish_remote()
        origin.roots_fetched.clear()
        if accepted:
            origin.top(verifier)
            assert verifier.root is not None and verifier.root.version == 1 + roots_ahead
            assert origin.roots_fetched == list(range(2, 2 + roots_ahead))
        else:
            refusal = refused(lambda: origin.top(verifier))
            assert (refusal.code, refusal.file) == ("root", REMOTE_INDEX_PATH)
            assert "more than 32 versions ahead of root 1" in refusal.message
            assert origin.roots_fetched == []

    def test_the_trusted_root_must_not_be_expired(self, tmp_path: Path) -> None:
        """An expired trusted root refuses the top level as `expired`, naming the root's file."""
        repo = HostRepository(tmp_path / "origin", root_expiry=timedelta(days=1))
        repo.publish()
        verifier = verifier_for(repo)
        refusal = refused(lambda: Origin(repo).top(verifier, NOW + timedelta(days=1)))
        assert (refusal.code, refusal.file) == ("expired", root_path(1))
        assert "(the trusted root) expired at 2026-11-27T10:00:00Z" in refusal.message

    def test_an_expired_root_on_the_way_is_only_a_step(self, tmp_path: Path) -> None:
        """Root 1 may have expired when root 2, the one trusted in the end, has not."""
        repo = HostRepository(tmp_path / "origin", root_expiry=timedelta(days=1))
        repo.now = NOW + timedelta(days=2)
        repo.root_expiry = timedelta(days=365)
        repo.rotate([KEY_B])
        verifier = verifier_for(repo)
        Origin(repo).top(verifier, NOW + timedelta(days=2))
        assert verifier.root is not None and verifier.root.version == 2

    def test_follow_roots_checks_a_servers_own_chain(self, repo: HostRepository) -> None:
        """follow_roots trusts each root in turn and names the first that does not follow."""
        repo.rotate([KEY_B])
        roots = [repo.read(root_path(1)), repo.read(root_path(2))]
        assert Verifier(repo.trust()).follow_roots(roots).version == 2
        refusal = refused(lambda: Verifier(repo.trust()).follow_roots([roots[1]]))
        assert (refusal.code, refusal.file) == ("root", root_path(1))
        assert "has version 2, not 1" in refusal.message
        assert refused(lambda: Verifier(repo.trust()).follow_roots([])).code == "root"


class TestDevKeys:
    @pytest.fixture
    def dev_repo(self, tmp_path: Path) -> HostRepository:
        """An origin whose root key and online key are both dev keys, as `releasectl dev` makes."""
        repo = HostRepository(
            tmp_path / "dev", keys=[KEY_DEV], root_keys=[ROOT_A], dev_keys=[KEY_DEV, ROOT_A]
        )
        repo.add_version("checkout", "1.0.0")
        repo.publish()
        return repo

    def test_a_dev_root_key_does_not_count_while_dev_keys_are_off(
        self, dev_repo: HostRepository
    ) -> None:
        """Root 1 signed by a dev key is `root`, and the message says a dev key did not count."""
        refusal = refused(lambda: Origin(dev_repo).top(verifier_for(dev_repo)))
        assert (refusal.code, refusal.file) == ("root", root_path(1))
        assert (
            f"dev key {ROOT_A.keyid[:8]}… not accepted: FEATURE_ALLOW_INSECURE_DEV_KEYS is off"
            in refusal.message
        )

    def test_dev_keys_count_when_allowed(self, dev_repo: HostRepository) -> None:
        """With dev keys allowed, the dev root and every file the dev online key signed verify."""
        verifier = verifier_for(dev_repo, allow_dev_keys=True)
        assert Origin(dev_repo).load(verifier) == {"checkout": 1}

    def test_a_dev_online_key_does_not_count_while_dev_keys_are_off(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A root listing a dev online key: files it alone signs are `signature` when off."""
        repo.dev_keyids.add(KEY_DEV.keyid)
        repo.rotate([KEY_A, KEY_DEV])
        repo.keys = [KEY_DEV]
        repo.publish_remote()
        refusal = refused(lambda: origin.top(verifier_for(repo)))
        assert (refusal.code, refusal.file) == ("signature", REMOTE_INDEX_PATH)
        assert "is not signed by the index keys" in refusal.message
        assert "not accepted: FEATURE_ALLOW_INSECURE_DEV_KEYS is off" in refusal.message


class TestRollback:
    def test_a_lower_top_sequence_is_refused(self, repo: HostRepository, origin: Origin) -> None:
        """remote-index.json older than the highest seen is `rollback`; the mark stays."""
        verifier = verifier_for(repo)
        old = repo.read(REMOTE_INDEX_PATH)
        repo.publish_remote()
        origin.top(verifier)
        refusal = refused(lambda: verifier.top(old, LATER, origin.fetch_root))
        assert (refusal.code, refusal.file) == ("rollback", REMOTE_INDEX_PATH)
        assert "has sequence 1, lower than 2, the highest this host has seen" in refusal.message
        assert verifier.top_mark is not None and verifier.top_mark.sequence == 2

    def test_the_same_sequence_with_another_body_is_refused(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A top level re-signed at the same sequence with another body is `rollback`."""
        verifier = verifier_for(repo)
        first = repo.read(REMOTE_INDEX_PATH)
        verifier.top(first, LATER, origin.fetch_root)
        other = repo.publish_remote(sequence=1, issued_at="2026-11-26T10:00:01Z")
        refusal = refused(lambda: verifier.top(other, LATER, origin.fetch_root))
        assert refusal.code == "rollback"
        assert "has sequence 1 with a different signed body" in refusal.message
        verifier.top(first, LATER, origin.fetch_root)  # the same file again is fine

    def test_the_same_body_with_other_signatures_is_not_a_rollback(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """Re-signing the same body (another key of the role) is the same file to a mark."""
        repo.rotate([KEY_A, KEY_B])
        verifier = verifier_for(repo)
        origin.top(verifier)
        body = json.loads(repo.read(REMOTE_INDEX_PATH))["signed"]
        again = repo.signed(body, keys=[KEY_B])
        assert again != repo.read(REMOTE_INDEX_PATH)
        verifier.top(again, LATER, origin.fetch_root)

    def test_a_releases_file_at_the_same_sequence_with_another_body_is_refused(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """releases.json has its own mark per feature: same sequence, other body, `rollback`."""
        verifier = verifier_for(repo)
        origin.load(verifier)
        repo.features["checkout"].sequence -= 1
        repo.publish_releases("checkout", issued_at="2026-11-26T10:00:01Z")
        repo.publish()
        top = origin.top(verifier)
        name = repo.bin("checkout")
        shard = verifier.shard(top, name, repo.read(shard_path(top.bits, name)), LATER).model
        refusal = refused(
            lambda: verifier.releases(
                "checkout", shard.features["checkout"], repo.read(CHECKOUT), LATER
            )
        )
        assert (refusal.code, refusal.file) == ("rollback", CHECKOUT)
        assert verifier.mark("checkout") is not None

    @pytest.mark.parametrize(
        ("new_keys", "accepted"),
        [
            pytest.param([KEY_B], True, id="key-revoked-marks-forgotten"),
            pytest.param([KEY_A, KEY_B], False, id="key-kept-marks-kept"),
        ],
    )
    def test_revoking_an_index_key_forgets_the_marks(
        self, repo: HostRepository, origin: Origin, new_keys: list[Any], accepted: bool
    ) -> None:
        """A root dropping an index key resets the marks: a fast-forwarded sequence is undone."""
        verifier = verifier_for(repo)
        repo.publish_remote(sequence=1_000_000)  # KEY_A, stolen, signs a huge sequence
        origin.load(verifier)
        assert verifier.mark("checkout") is not None
        repo.rotate(new_keys)  # the control plane's next top level: sequence 2
        if accepted:
            assert origin.top(verifier).sequence == 2
            assert verifier.top_mark is not None and verifier.top_mark.sequence == 2
            assert verifier.mark("checkout") is None
        else:
            refusal = refused(lambda: origin.top(verifier))
            assert refusal.code == "rollback"
            assert verifier.mark("checkout") is not None

    def test_forget_drops_a_features_mark_only(self, repo: HostRepository, origin: Origin) -> None:
        """forget() drops the marks of features no longer published, and no other."""
        verifier = verifier_for(repo)
        origin.load(verifier)
        verifier.forget({"search"})
        assert verifier.mark("search") is None
        assert verifier.mark("checkout") is not None


class TestState:
    def test_state_round_trips_through_json(self, repo: HostRepository, origin: Origin) -> None:
        """A verifier loading state() trusts the same root and keeps the same marks."""
        verifier = verifier_for(repo)
        origin.load(verifier)
        document = json.loads(json.dumps(verifier.state()))
        assert document["format"] == 2
        assert document["trust_fingerprint"] == repo.trust().fingerprint
        assert base64.b64decode(document["root"]) == repo.read(root_path(1))
        again = verifier_for(repo)
        again.load_state(document)
        assert again.root == verifier.root
        assert again.top_mark == verifier.top_mark
        assert again.mark("checkout") == verifier.mark("checkout")
        assert again.state() == verifier.state()

    def test_a_restored_verifier_refuses_a_rollback_and_fetches_no_root(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """After a restart the marks still hold, and the stored root is used as it is."""
        verifier = verifier_for(repo)
        old = repo.read(REMOTE_INDEX_PATH)
        repo.publish_remote()
        origin.top(verifier)
        again = verifier_for(repo)
        again.load_state(verifier.state())
        origin.roots_fetched.clear()
        assert refused(lambda: again.top(old, LATER, origin.fetch_root)).code == "rollback"
        origin.top(again)
        assert origin.roots_fetched == []

    def test_another_trust_file_starts_over_from_it_and_keeps_the_marks(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A state saved under another trust file keeps its marks, not its root."""
        verifier = verifier_for(repo)
        origin.load(verifier)
        other = Verifier(TrustStore.for_keys([ROOT_B.trusted_key()]))
        other.load_state(verifier.state())
        assert other.root is None
        assert other.top_mark == verifier.top_mark
        assert refused(lambda: origin.top(other)).code == "root"

    def test_a_v1_state_keeps_its_sequences(self, repo: HostRepository, origin: Origin) -> None:
        """Format 1 (host protocol v1) gives marks without hashes: any body at them, once."""
        verifier = verifier_for(repo)
        verifier.load_state(
            {
                "format": 1,
                "remote_index": {"sequence": 1, "sha256": "ab" * 32},
                "features": {"checkout": {"sequence": 1, "sha256": "cd" * 32}},
            }
        )
        assert verifier.top_mark == Mark(1, None)
        assert verifier.root is None
        origin.load(verifier)
        assert verifier.top_mark is not None and verifier.top_mark.body_sha256 is not None
        other = repo.publish_remote(sequence=1, issued_at="2026-11-26T10:00:01Z")
        assert refused(lambda: verifier.top(other, LATER, origin.fetch_root)).code == "rollback"

    def test_a_v1_state_refuses_a_lower_sequence(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A v1 host that saw sequence 7 refuses a v2 top level at sequence 1."""
        verifier = verifier_for(repo)
        verifier.load_state({"format": 1, "remote_index": {"sequence": 7}, "features": {}})
        assert refused(lambda: origin.top(verifier)).code == "rollback"

    @pytest.mark.parametrize(
        ("document", "fragment"),
        [
            pytest.param([], "format null is not 1 or 2", id="not-an-object"),
            pytest.param({"format": 3, "features": {}}, "format 3 is not 1 or 2", id="format-3"),
            pytest.param(
                {"format": 2, "remote_index": None, "features": [], "root": None},
                '"features" is not an object',
                id="features-list",
            ),
            pytest.param(
                {"format": 2, "remote_index": {"sequence": "1"}, "features": {}, "root": None},
                "bad mark",
                id="sequence-string",
            ),
        ],
    )
    def test_a_document_that_is_not_a_state_is_refused(
        self, repo: HostRepository, document: Any, fragment: str
    ) -> None:
        """load_state raises ValueError saying what is wrong, and changes nothing."""
        verifier = verifier_for(repo)
        with pytest.raises(ValueError, match=fragment):
            verifier.load_state(document)
        assert verifier.top_mark is None

    def test_a_stored_root_that_cannot_be_read_is_refused(self, repo: HostRepository) -> None:
        """A state whose root is not a root file is an error, not a silent restart."""
        document = {
            "format": 2,
            "trust_fingerprint": repo.trust().fingerprint,
            "root": base64.b64encode(b"{}").decode(),
            "remote_index": None,
            "features": {},
        }
        with pytest.raises(ValueError, match="its root cannot be read"):
            verifier_for(repo).load_state(document)


class TestShardAndReleases:
    @staticmethod
    def served_as_checkouts_shard(repo: HostRepository, data: bytes) -> RemoteIndex:
        """`data` written at checkout's shard path and pinned there by a new top level."""
        name = repo.bin("checkout")
        repo.write(shard_path(repo.bits, name), data)
        repo.shard_pins[name] = Pin.of(data, 2)
        repo.publish_remote()
        return RemoteIndex.from_dict(json.loads(repo.read(REMOTE_INDEX_PATH))["signed"])

    @pytest.mark.parametrize(
        ("body_change", "fragment"),
        [
            pytest.param({"bits": 8, "bin": "c7"}, '"bits" is 8, not 7', id="other-bits"),
            pytest.param({"bin": "12", "features": {}}, '"bin" is "12", not "63"', id="other-bin"),
            pytest.param({"type": "releases"}, '"type" is "releases", not "index-shard"', id="t"),
        ],
    )
    def test_a_shard_for_another_place_is_a_mismatch(
        self, repo: HostRepository, origin: Origin, body_change: dict[str, Any], fragment: str
    ) -> None:
        """A validly signed shard pinned here but made for other bits, bin or type: `mismatch`."""
        verifier = verifier_for(repo)
        origin.top(verifier)
        body = repo.shard_body(repo.bin("checkout"), sequence=2) | body_change
        top = self.served_as_checkouts_shard(repo, repo.signed(body))
        verifier.top(repo.read(REMOTE_INDEX_PATH), LATER, origin.fetch_root)
        path = shard_path(7, "63")
        refusal = refused(lambda: verifier.shard(top, "63", repo.read(path), LATER))
        assert (refusal.code, refusal.file) == ("mismatch", path)
        assert fragment in refusal.message

    def test_the_shards_signature_is_checked_before_its_fields(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A shard of the wrong type and signed by an unknown key is `signature` (3.1 step 5)."""
        verifier = verifier_for(repo)
        origin.top(verifier)
        body = repo.shard_body(repo.bin("checkout"), sequence=2) | {"type": "releases"}
        top = self.served_as_checkouts_shard(repo, repo.signed(body, keys=[KEY_C]))
        verifier.top(repo.read(REMOTE_INDEX_PATH), LATER, origin.fetch_root)
        refusal = refused(lambda: verifier.shard(top, "63", repo.read("index/7/63.json"), LATER))
        assert refusal.code == "signature"
        assert f"unknown key {KEY_C.keyid[:8]}…" in refusal.message

    def test_a_shard_before_any_root_is_refused(self, repo: HostRepository) -> None:
        """Checking a shard before any top level verified is `root`: there is no index role yet."""
        top = RemoteIndex.from_dict(json.loads(repo.read(REMOTE_INDEX_PATH))["signed"])
        refusal = refused(
            lambda: verifier_for(repo).shard(top, "63", repo.read("index/7/63.json"), LATER)
        )
        assert (refusal.code, refusal.file) == ("root", "index/7/63.json")

    def test_a_verified_shard_says_which_keys_counted(
        self, repo: HostRepository, origin: Origin
    ) -> None:
        """A verified file carries its bytes, its model, its body hash and the keys that counted."""
        verifier = verifier_for(repo)
        top = origin.top(verifier)
        data = repo.read("index/7/63.json")
        shard = verifier.shard(top, "63", data, LATER)
        assert shard.content == data and shard.path == "index/7/63.json"
        assert shard.keyids == {KEY_A.keyid}
        assert list(shard.model.features) == ["checkout"]
        assert shard.body_sha256 == hashlib.sha256(read_signed(shard.path, data)[1]).hexdigest()


class TestUnsigned:
    def test_reads_an_origin_without_checking_signatures(self, tmp_path: Path) -> None:
        """unsigned() accepts files signed by no key it knows (or none), and follows no root."""
        repo = HostRepository(tmp_path / "origin", keys=[KEY_C])
        repo.add_version("checkout", "1.0.0")
        repo.publish_releases("checkout", keys=[])
        repo.publish()
        verifier = Verifier.unsigned()
        origin = Origin(repo)
        assert origin.load(verifier) == {"checkout": 1}
        assert origin.roots_fetched == []
        assert verifier.root is None

    def test_still_checks_every_pin_and_mark(self, repo: HostRepository) -> None:
        """Without signatures the hash chain and the marks still hold."""
        verifier = Verifier.unsigned()
        origin = Origin(repo)
        old = repo.read(REMOTE_INDEX_PATH)
        origin.load(verifier)
        repo.publish_remote()
        origin.top(verifier)
        assert refused(lambda: verifier.top(old, LATER, origin.fetch_root)).code == "rollback"
        top = origin.top(verifier)
        refusal = refused(lambda: verifier.shard(top, "63", repo.read("index/7/12.json"), LATER))
        assert (refusal.code, refusal.file) == ("length", "index/7/63.json")


def manifest_for(**changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "id": "checkout",
        "version": "1.0.0",
        "entry": "index.js",
        "assets": [{"path": "index.js", "size": 3, "sha256": sha256(b"abc")}],
    }
    manifest.update(changes)
    return manifest


def entry_for(data: bytes, version: str = "1.0.0") -> VersionEntry:
    return VersionEntry(version, sha256(data), NOW)


def asset(path: str = "index.js", **changes: Any) -> dict[str, Any]:
    return {"path": path, "size": 3, "sha256": sha256(b"abc")} | changes


class TestCheckManifest:
    def test_a_manifest_that_is_what_releases_lists_is_returned(self) -> None:
        """The manifest whose bytes have the listed SHA-256 and the right id and version loads."""
        data = canonical_bytes(manifest_for(routes=["/checkout"]))
        manifest = check_manifest("checkout", entry_for(data), data, max_bytes=4096)
        assert manifest["routes"] == ["/checkout"]

    @pytest.mark.parametrize(
        ("manifest", "code", "fragment"),
        [
            pytest.param(manifest_for(id="search"), "mismatch", '"id" is "search"', id="id"),
            pytest.param(
                manifest_for(version="1.0.1"), "mismatch", '"version" is "1.0.1"', id="version"
            ),
            pytest.param([], "malformed", "not a JSON object", id="array"),
            pytest.param(manifest_for(assets=[]), "malformed", '"assets" must be a non', id="none"),
            pytest.param(manifest_for(assets=["x"]), "malformed", "assets[0] must be", id="str"),
            pytest.param(
                manifest_for(assets=[asset("/etc/passwd")]),
                "malformed",
                'assets[0].path "/etc/passwd" is not a relative path',
                id="absolute-path",
            ),
            pytest.param(
                manifest_for(assets=[asset("a/../index.js")]),
                "malformed",
                "is not a relative path",
                id="dot-dot",
            ),
            pytest.param(
                manifest_for(assets=[asset("a\\index.js")]),
                "malformed",
                "is not a relative path",
                id="backslash",
            ),
            pytest.param(
                manifest_for(assets=[asset("a//index.js")]),
                "malformed",
                "is not a relative path",
                id="empty-segment",
            ),
            pytest.param(
                manifest_for(assets=[asset(), asset()]),
                "malformed",
                'assets[1].path "index.js" is listed twice',
                id="listed-twice",
            ),
            pytest.param(
                manifest_for(assets=[asset(size=-1)]), "malformed", "size must be", id="size-neg"
            ),
            pytest.param(
                manifest_for(assets=[asset(size=True)]), "malformed", "size must be", id="size-bool"
            ),
            pytest.param(
                manifest_for(assets=[asset(sha256="AB" * 32)]),
                "malformed",
                "sha256 must be 64 lowercase hex",
                id="sha-uppercase",
            ),
            pytest.param(
                manifest_for(entry="main.js"),
                "malformed",
                '"entry" "main.js" is not one of the asset paths',
                id="entry-not-an-asset",
            ),
        ],
    )
    def test_a_manifest_that_breaks_step_5_is_refused(
        self, manifest: Any, code: str, fragment: str
    ) -> None:
        """Each rule of section 6 step 5 refuses with its code, naming the manifest's path."""
        data = json.dumps(manifest).encode()
        refusal = refused(lambda: check_manifest("checkout", entry_for(data), data, max_bytes=4096))
        assert (refusal.code, refusal.file) == (code, "features/checkout/1.0.0/manifest.json")
        assert fragment in refusal.message

    @pytest.mark.parametrize(
        ("data", "max_bytes", "listed", "code"),
        [
            pytest.param(b"{}" * 100, 64, b"{}" * 100, "too-large", id="over-the-limit"),
            pytest.param(b"{}", 64, b"{ }", "hash", id="other-bytes"),
            pytest.param(b"\xff{}", 64, b"\xff{}", "malformed", id="not-utf8"),
            pytest.param(b'{"id": NaN}', 64, b'{"id": NaN}', "malformed", id="nan"),
        ],
    )
    def test_size_hash_and_json_come_first(
        self, data: bytes, max_bytes: int, listed: bytes, code: str
    ) -> None:
        """A manifest over the limit, of other bytes, or not JSON is refused before its fields."""
        refusal = refused(
            lambda: check_manifest("checkout", entry_for(listed), data, max_bytes=max_bytes)
        )
        assert refusal.code == code


class TestCheckAsset:
    @pytest.mark.parametrize(
        ("data", "code", "fragment"),
        [
            pytest.param(b"abcd", "length", "is 4 bytes, not the 3 its manifest lists", id="long"),
            pytest.param(b"ab", "length", "is 2 bytes, not the 3", id="short"),
            pytest.param(b"abd", "hash", "has SHA-256", id="other-bytes"),
        ],
    )
    def test_an_asset_must_be_its_size_and_hash(
        self, data: bytes, code: str, fragment: str
    ) -> None:
        """An asset of another length or other bytes is refused, naming its origin path."""
        refusal = refused(lambda: check_asset("checkout", asset(), data))
        assert (refusal.code, refusal.file) == (code, f"artifacts/{sha256(b'abc')}.js")
        assert "(asset 'index.js' of checkout)" in refusal.message
        assert fragment in refusal.message

    def test_the_listed_bytes_pass(self) -> None:
        """Exactly the listed bytes pass the check."""
        check_asset("checkout", asset(), b"abc")


class TestSelectVersion:
    @pytest.mark.parametrize(
        ("stable", "canary", "channel", "expected"),
        [
            pytest.param("1.0.0", "1.1.0", "stable", "1.0.0", id="stable-host"),
            pytest.param("1.0.0", "1.1.0", "canary", "1.1.0", id="canary-host"),
            pytest.param("1.0.0", None, "canary", "1.0.0", id="canary-host-no-canary"),
            pytest.param(None, "1.1.0", "canary", "1.1.0", id="canary-only"),
        ],
    )
    def test_the_channel_selects(
        self,
        repo: HostRepository,
        stable: str | None,
        canary: str | None,
        channel: str,
        expected: str,
    ) -> None:
        """stable -> channels.stable; canary -> channels.canary when set, else stable (step 4)."""
        repo.add_version("checkout", "1.1.0", channel=None)
        repo.set_channels("checkout", stable=stable, canary=canary)
        releases = ReleasesIndex.from_dict(repo.releases_body("checkout"))
        assert select_version(releases, channel).version == expected

    def test_no_version_on_the_channel_is_not_found(self, repo: HostRepository) -> None:
        """A stable host of a feature with only a canary has nothing to load: `not-found`."""
        repo.add_version("checkout", "1.1.0", channel=None)
        repo.set_channels("checkout", stable=None, canary="1.1.0")
        releases = ReleasesIndex.from_dict(repo.releases_body("checkout"))
        refusal = refused(lambda: select_version(releases, "stable"))
        assert (refusal.code, refusal.file) == ("not-found", CHECKOUT)
        assert "checkout has no stable version to load yet" in refusal.message
