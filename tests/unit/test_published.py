"""Reading what an origin publishes: the live manifests, every file checked as a host checks it.

Host protocol v2: remote-index.json -> its shards -> each releases.json -> the
manifests, with the roots followed from the trust file (the root keys).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from host_repository import KEY_A, KEY_B, KEY_DEV, ROOT_A, ROOT_B, HostRepository, trust_for

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.fetch import FetchError
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.manifest import manifest_path
from releasecontrol.published import (
    folder_reader,
    http_reader,
    read_published,
    read_published_at,
    split_index_url,
)
from releasecontrol.root import root_path
from releasecontrol.shards import Pin
from releasecontrol.verifier import Refusal
from releasecontrol_server.origin.http import OriginHttpServer


@pytest.fixture
def repo(tmp_path: Path) -> HostRepository:
    repo = HostRepository(tmp_path / "origin", keys=[KEY_A], root_keys=[ROOT_A])
    repo.add_version("pay", "1.0.0")
    repo.add_version("pay", "1.1.0", channel="canary")
    repo.add_version("pay", "0.9.0", channel=None)  # listed, on no channel: not live
    repo.add_version("cart", "2.0.0")
    repo.publish()
    return repo


@pytest.fixture
def served(repo: HostRepository) -> Iterator[str]:
    with OriginHttpServer(repo.root, port=0) as origin:
        yield origin.url


def live(repo: HostRepository, **kwargs: Any) -> list[tuple[str, str, tuple[str, ...]]]:
    published = read_published(folder_reader(repo.root), source="test", **kwargs)
    return [(m.feature_id, m.version, m.channels) for m in published.manifests]


def refusal(repo: HostRepository, **kwargs: Any) -> Refusal:
    """The Refusal reading `repo` raises (trusting its root keys unless told otherwise)."""
    kwargs.setdefault("trust", repo.trust())
    with pytest.raises(Refusal) as caught:
        live(repo, **kwargs)
    return caught.value


class TestReadPublished:
    def test_the_stable_and_canary_manifests_of_every_feature_are_read(
        self, repo: HostRepository
    ) -> None:
        """Each feature's stable and canary manifest, in feature order; other versions are not.
        The index files read are the top level, the shards of both bins and both releases.json."""
        published = read_published(folder_reader(repo.root), source="origin", trust=repo.trust())
        assert published.found and published.signatures_checked
        assert published.remote_sequence == 1
        assert [(m.feature_id, m.version, m.channels) for m in published.manifests] == [
            ("cart", "2.0.0", ("stable",)),
            ("pay", "1.0.0", ("stable",)),
            ("pay", "1.1.0", ("canary",)),
        ]
        assert published.manifests[1].manifest["routes"] == ["/pay"]
        assert published.index_paths[0] == REMOTE_INDEX_PATH
        assert sorted(published.index_paths[1:]) == sorted(
            [
                repo.shard_path_of("cart"),
                repo.shard_path_of("pay"),
                releases_path("cart"),
                releases_path("pay"),
            ]
        )

    def test_manifests_are_in_feature_order_whatever_their_bins(self, tmp_path: Path) -> None:
        """'a' hashes to a later bin than 'b' (0x65 > 0x1f under 7 bits): still listed first."""
        repo = HostRepository(tmp_path / "origin")
        repo.add_version("b", "1.0.0")
        repo.add_version("a", "1.0.0")
        repo.publish()
        assert repo.bin("a") > repo.bin("b")
        assert [f for f, _, _ in live(repo, trust=repo.trust())] == ["a", "b"]

    def test_a_version_on_both_channels_is_read_once(self, repo: HostRepository) -> None:
        """A canary that is also stable is one manifest, live on both channels."""
        repo.set_channels("pay", stable="1.1.0", canary="1.1.0")
        repo.publish()
        assert ("pay", "1.1.0", ("stable", "canary")) in live(repo)
        assert [v for f, v, _ in live(repo) if f == "pay"] == ["1.1.0"]

    def test_the_roots_are_followed_to_a_rotated_online_key(self, repo: HostRepository) -> None:
        """Root 2 swaps KEY_A for KEY_B: a reader pinning root 1's keys follows it, and the
        revoked key's signature no longer counts."""
        repo.rotate([KEY_B])
        assert repo.root_version == 2
        assert live(repo, trust=repo.trust()) == live(repo)
        repo.publish_remote(keys=[KEY_A])
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("signature", REMOTE_INDEX_PATH)

    def test_an_empty_origin_is_nothing_published(self, tmp_path: Path) -> None:
        """Without remote-index.json the result says so and holds no manifest."""
        published = read_published(folder_reader(tmp_path), source="empty")
        assert not published.found and published.manifests == ()

    def test_without_a_trust_store_it_says_signatures_were_not_checked(
        self, repo: HostRepository
    ) -> None:
        """No trust: an unsigned top level is read (pins and content still checked), with a
        note; with the trust file the same origin is refused."""
        repo.publish_remote(keys=[])
        repo.delete(root_path(1))
        published = read_published(folder_reader(repo.root), source="origin")
        assert not published.signatures_checked
        assert published.notes == ("signatures were not checked: no trust file was available",)
        assert len(published.manifests) == 3
        assert refusal(repo).code == "root"  # the root is gone: nothing to trust the index by

    def test_without_a_trust_store_the_pins_are_still_checked(self, repo: HostRepository) -> None:
        """No trust is no signatures, not no checks: a changed releases.json is refused."""
        repo.publish_releases("pay", pin=False)
        refused = refusal(repo, trust=None)
        assert (refused.code, refused.file) == ("hash", releases_path("pay"))


class TestRefusals:
    def test_a_releases_file_with_another_hash_than_pinned_is_refused(
        self, repo: HostRepository
    ) -> None:
        """releases.json replaced after its shard pinned it: refused naming it and its pin."""
        repo.publish_releases("pay", pin=False)  # sequence 2 on the origin, the shard pins 1
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("hash", releases_path("pay"))
        assert "its shard pins" in refused.message

    def test_a_shard_with_another_hash_than_pinned_is_refused(self, repo: HostRepository) -> None:
        """The same shard signed again at another sequence, not pinned: `hash`, on the shard."""
        shard = repo.shard_path_of("pay")
        repo.publish_shard(repo.bin("pay"), sequence=5, pin=False)
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("hash", shard)
        assert "remote-index.json pins" in refused.message

    def test_a_shard_of_another_length_than_pinned_is_refused(self, repo: HostRepository) -> None:
        """One byte appended to a shard: `length`, before its content is even parsed."""
        shard = repo.shard_path_of("cart")
        repo.write(shard, repo.read(shard) + b"\n")
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("length", shard)

    def test_a_sequence_other_than_pinned_is_refused(self, repo: HostRepository) -> None:
        """The shard pins the file's hash but says another sequence: mix-and-match, refused."""
        repo.publish_releases("pay", pinned_sequence=7)
        repo.publish()
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("mismatch", releases_path("pay"))
        assert '"sequence" is 2, not 7' in refused.message

    def test_one_features_releases_served_for_another_is_refused(
        self, repo: HostRepository
    ) -> None:
        """pay's releases.json put (and pinned) in cart's place: its feature id gives it away."""
        repo.put_releases("cart", repo.read(releases_path("pay")))
        repo.publish()
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("mismatch", releases_path("cart"))
        assert '"feature_id" is "pay", not "cart"' in refused.message

    def test_a_shard_cannot_speak_for_a_feature_of_another_bin(self, repo: HostRepository) -> None:
        """pay's shard also listing cart (another bin): the shard is refused."""
        features = {fid: repo.pins[fid] for fid in ("cart", "pay")}
        repo.publish_shard(repo.bin("pay"), features=features)
        repo.publish_remote()
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("mismatch", repo.shard_path_of("pay"))
        assert "'cart'" in refused.message and "another bin" in refused.message

    def test_a_feature_id_that_is_not_a_plain_name_is_refused(self, repo: HostRepository) -> None:
        """A shard listing '../x' (a path out of features/): refused as malformed, nothing read
        from the path it names."""
        repo.publish_shard(repo.bin("pay"), features={"../x": Pin.of(b"x", 1)})
        repo.publish_remote()
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("malformed", repo.shard_path_of("pay"))

    def test_a_changed_manifest_is_refused(self, repo: HostRepository) -> None:
        """A manifest whose bytes no longer hash to what releases.json names is refused."""
        path = manifest_path("cart", "2.0.0")
        document = json.loads(repo.read(path))
        document["routes"] = ["/everything/*"]
        repo.write(path, json.dumps(document).encode())
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("hash", path)
        assert "releases.json lists" in refused.message

    def test_a_missing_manifest_names_who_lists_it(self, repo: HostRepository) -> None:
        """A live version whose manifest is gone: the error says which index lists it."""
        path = manifest_path("pay", "1.1.0")
        repo.delete(path)
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("fetch", path)
        assert f"missing on the origin, but {releases_path('pay')} lists 1.1.0 as canary" in str(
            refused
        )

    def test_a_missing_shard_names_who_pins_it(self, repo: HostRepository) -> None:
        """A shard the top level pins is gone: `fetch`, saying remote-index.json pins it."""
        shard = repo.shard_path_of("cart")
        repo.delete(shard)
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("fetch", shard)
        assert "remote-index.json pins it" in refused.message

    def test_a_v1_index_says_which_schema_it_found(self, repo: HostRepository) -> None:
        """A top level of schema_version 1 (a v1 control plane): refused, saying both versions."""
        repo.publish_remote(schema_version=1)
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("schema-version", REMOTE_INDEX_PATH)
        assert "schema_version 1; this host speaks 2" in refused.message

    def test_roots_signed_by_other_root_keys_are_refused(self, repo: HostRepository) -> None:
        """Trusting ROOT_B while ROOT_A signed root 1: the chain of roots cannot start."""
        refused = refusal(repo, trust=trust_for(ROOT_B))
        assert (refused.code, refused.file) == ("root", root_path(1))
        assert "not signed by the trust file's keys" in refused.message

    def test_a_v1_trust_file_naming_the_online_key_is_refused(self, repo: HostRepository) -> None:
        """Pinning the online key KEY_A (v1) instead of the root keys: root 1 is not trusted."""
        refused = refusal(repo, trust=trust_for(KEY_A))
        assert (refused.code, refused.file) == ("root", root_path(1))

    def test_a_missing_root_is_refused(self, repo: HostRepository) -> None:
        """roots/1.json gone: the chain cannot be followed, and the message names the file."""
        repo.delete(root_path(1))
        refused = refusal(repo)
        assert refused.code == "root" and "roots/1.json is missing" in refused.message

    def test_an_index_signed_by_a_key_the_root_does_not_list_is_refused(
        self, repo: HostRepository
    ) -> None:
        """remote-index.json signed by KEY_B, root 1 lists KEY_A: `signature` on the top level."""
        repo.publish_remote(keys=[KEY_B])
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("signature", REMOTE_INDEX_PATH)
        assert "not signed by the index keys" in refused.message

    def test_a_shard_signed_by_an_untrusted_key_is_refused(self, repo: HostRepository) -> None:
        """pay's shard re-signed by KEY_B fails on its own path."""
        repo.publish_shard(repo.bin("pay"), keys=[KEY_B])
        repo.publish_remote()
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("signature", repo.shard_path_of("pay"))

    def test_a_releases_file_signed_by_an_untrusted_key_is_refused(
        self, repo: HostRepository
    ) -> None:
        """The feature's releases.json re-signed by another key fails on its own name."""
        repo.publish_releases("pay", keys=[KEY_B])
        repo.publish()
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("signature", releases_path("pay"))

    def test_dev_root_keys_count_only_when_allowed(self, tmp_path: Path) -> None:
        """A trust file of dev root keys is a configuration error unless dev keys are allowed."""
        repo = HostRepository(tmp_path / "origin", keys=[KEY_DEV], dev_keys=[ROOT_A, KEY_DEV])
        repo.add_version("pay", "1.0.0")
        repo.publish()
        with pytest.raises(ConfigError, match="dev keys"):
            live(repo, trust=repo.trust())
        assert live(repo, trust=repo.trust(), allow_dev_keys=True) == [
            ("pay", "1.0.0", ("stable",))
        ]

    def test_a_dev_online_key_counts_only_when_allowed(self, tmp_path: Path) -> None:
        """Real root keys, a dev online key: the index is refused, saying a dev key did not
        count, unless dev keys are allowed."""
        repo = HostRepository(tmp_path / "origin", keys=[KEY_DEV], dev_keys=[KEY_DEV])
        repo.add_version("pay", "1.0.0")
        repo.publish()
        refused = refusal(repo)
        assert (refused.code, refused.file) == ("signature", REMOTE_INDEX_PATH)
        assert "dev" in refused.message
        assert live(repo, trust=repo.trust(), allow_dev_keys=True) == [
            ("pay", "1.0.0", ("stable",))
        ]


class TestReaders:
    def test_over_http_the_same_manifests_are_read(self, repo: HostRepository, served: str) -> None:
        """read_published_at reads the served origin exactly as the folder reader does."""
        published = read_published_at(served + "remote-index.json", trust=repo.trust())
        assert published.signatures_checked
        assert [(m.feature_id, m.version) for m in published.manifests] == [
            ("cart", "2.0.0"),
            ("pay", "1.0.0"),
            ("pay", "1.1.0"),
        ]
        assert published.source == served + "remote-index.json"

    def test_a_404_is_no_file_and_other_failures_raise(self, tmp_path: Path) -> None:
        """A missing file reads as None; an unreachable origin raises a FetchError naming it."""
        with OriginHttpServer(tmp_path, port=0) as origin:
            assert http_reader(origin.url)("remote-index.json") is None
            url = origin.url
        with pytest.raises(FetchError, match=re.escape(url + "remote-index.json")):
            http_reader(url)("remote-index.json")

    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            (
                "https://cdn.example.com/f/remote-index.json",
                ("https://cdn.example.com/f/", "remote-index.json"),
            ),
            ("http://127.0.0.1:4100/", ("http://127.0.0.1:4100/", "remote-index.json")),
            ("http://cdn/idx.json", ("http://cdn/", "idx.json")),
        ],
    )
    def test_split_index_url(self, url: str, expected: tuple[str, str]) -> None:
        """An index URL splits into the origin's base and the index's name."""
        assert split_index_url(url) == expected

    @pytest.mark.parametrize("url", ["ftp://cdn/remote-index.json", "cdn/remote-index.json"])
    def test_a_url_that_is_not_http_is_a_config_error(self, url: str) -> None:
        """Only http(s) URLs are read; the error shows the expected form."""
        with pytest.raises(ConfigError, match="--index-url https://"):
            split_index_url(url)

    @pytest.mark.parametrize("path", ["../secret", "/etc/passwd", "a//b", "a/./b", ""])
    def test_the_folder_reader_stays_inside_the_origin(self, tmp_path: Path, path: str) -> None:
        """A path that could leave the origin folder is refused, not read."""
        with pytest.raises(VerificationError, match="not a plain relative path"):
            folder_reader(tmp_path)(path)
