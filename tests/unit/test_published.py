"""Reading what an origin publishes: the live manifests, every file checked against its parent."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from host_repository import KEY_A, KEY_B, KEY_DEV, HostRepository, trust_for

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.fetch import FetchError
from releasecontrol.index import releases_path
from releasecontrol.manifest import manifest_path
from releasecontrol.published import (
    folder_reader,
    http_reader,
    read_published,
    read_published_at,
    split_index_url,
)
from releasecontrol_server.origin.http import OriginHttpServer


@pytest.fixture
def repo(tmp_path: Path) -> HostRepository:
    repo = HostRepository(tmp_path / "origin", keys=[KEY_A])
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


def live(repo: HostRepository, **kwargs: object) -> list[tuple[str, str, tuple[str, ...]]]:
    published = read_published(folder_reader(repo.root), source="test", **kwargs)
    return [(m.feature_id, m.version, m.channels) for m in published.manifests]


class TestReadPublished:
    def test_the_stable_and_canary_manifests_of_every_feature_are_read(
        self, repo: HostRepository
    ) -> None:
        """Each feature's stable and canary manifest, in feature order; other versions are not."""
        published = read_published(
            folder_reader(repo.root), source="origin", trust=trust_for(KEY_A)
        )
        assert published.found and published.signatures_checked
        assert published.remote_sequence == 1
        assert [(m.feature_id, m.version, m.channels) for m in published.manifests] == [
            ("cart", "2.0.0", ("stable",)),
            ("pay", "1.0.0", ("stable",)),
            ("pay", "1.1.0", ("canary",)),
        ]
        assert published.manifests[1].manifest["routes"] == ["/pay"]
        assert published.index_paths == (
            "remote-index.json",
            "features/cart/releases.json",
            "features/pay/releases.json",
        )

    def test_a_version_on_both_channels_is_read_once(self, repo: HostRepository) -> None:
        """A canary that is also stable is one manifest, live on both channels."""
        repo.set_channels("pay", stable="1.1.0", canary="1.1.0")
        repo.publish()
        assert ("pay", "1.1.0", ("stable", "canary")) in live(repo)
        assert [v for f, v, _ in live(repo) if f == "pay"] == ["1.1.0"]

    def test_an_empty_origin_is_nothing_published(self, tmp_path: Path) -> None:
        """Without remote-index.json the result says so and holds no manifest."""
        published = read_published(folder_reader(tmp_path), source="empty")
        assert not published.found and published.manifests == ()

    def test_without_a_trust_store_it_says_signatures_were_not_checked(
        self, repo: HostRepository
    ) -> None:
        """No trust: the hash chain is still followed, and a note says what was skipped."""
        published = read_published(folder_reader(repo.root), source="origin")
        assert not published.signatures_checked
        assert published.notes == ("signatures were not checked: no trust file was available",)
        assert len(published.manifests) == 3


class TestRefusals:
    def test_a_releases_file_with_another_hash_than_pinned_is_refused(
        self, repo: HostRepository
    ) -> None:
        """releases.json replaced after the index pinned it: the error names it and both hashes."""
        repo.publish_releases("pay", pin=False)  # sequence 2 on the origin, index pins 1
        with pytest.raises(
            VerificationError, match=r"features/pay/releases.json has sha256 .* pins"
        ):
            live(repo)

    def test_a_sequence_other_than_pinned_is_refused(self, repo: HostRepository) -> None:
        """The index pins the file's hash but says another sequence: mix-and-match, refused."""
        repo.publish_releases("pay", pinned_sequence=7)
        repo.publish_remote()
        with pytest.raises(
            VerificationError, match=re.escape("has sequence 2, but remote-index.json says 7")
        ):
            live(repo)

    def test_a_changed_manifest_is_refused(self, repo: HostRepository) -> None:
        """A manifest whose bytes no longer hash to what releases.json names is refused."""
        path = manifest_path("cart", "2.0.0")
        document = json.loads(repo.read(path))
        document["routes"] = ["/everything/*"]
        repo.write(path, json.dumps(document).encode())
        with pytest.raises(
            VerificationError, match=f"{path} has sha256 .* but {releases_path('cart')}"
        ):
            live(repo)

    def test_a_missing_manifest_names_who_lists_it(self, repo: HostRepository) -> None:
        """A live version whose manifest is gone: the error says which index lists it."""
        (repo.root / manifest_path("pay", "1.1.0")).unlink()
        with pytest.raises(
            VerificationError, match=r"missing on the origin, but .* lists 1\.1\.0 as canary"
        ):
            live(repo)

    def test_an_index_signed_by_an_untrusted_key_is_refused(self, repo: HostRepository) -> None:
        """Signed by KEY_A, trusting only KEY_B: remote-index.json is not trusted."""
        with pytest.raises(VerificationError, match=re.escape("remote-index.json is not trusted")):
            live(repo, trust=trust_for(KEY_B))

    def test_a_releases_file_signed_by_an_untrusted_key_is_refused(
        self, repo: HostRepository
    ) -> None:
        """The feature's releases.json re-signed by another key fails on its own name."""
        repo.publish_releases("pay", keys=[KEY_B])
        repo.publish_remote()
        with pytest.raises(
            VerificationError, match=re.escape("features/pay/releases.json is not trusted")
        ):
            live(repo, trust=trust_for(KEY_A))

    def test_dev_keys_count_only_when_allowed(self, tmp_path: Path) -> None:
        """An origin signed by a dev key: refused by default, read with allow_dev_keys."""
        repo = HostRepository(tmp_path / "origin", keys=[KEY_DEV])
        repo.add_version("pay", "1.0.0")
        repo.publish()
        trust = trust_for(KEY_DEV, dev=[KEY_DEV])
        with pytest.raises(ConfigError, match="dev keys"):
            live(repo, trust=trust)
        assert live(repo, trust=trust, allow_dev_keys=True) == [("pay", "1.0.0", ("stable",))]

    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("https://elsewhere.example/releases.json", "only paths relative to the index"),
            ("/features/pay/releases.json", "only paths relative to the index"),
            ("../x", "'../x' is not a plain relative path"),
        ],
    )
    def test_an_index_entry_outside_the_origin_is_refused(
        self, repo: HostRepository, url: str, message: str
    ) -> None:
        """remote-index.json may only name files under the origin, relative to itself."""
        body = repo.remote_body()
        body["features"]["pay"]["url"] = url
        repo.write("remote-index.json", repo.signed(body))
        with pytest.raises(VerificationError, match=re.escape(message)):
            live(repo)


class TestReaders:
    def test_over_http_the_same_manifests_are_read(self, repo: HostRepository, served: str) -> None:
        """read_published_at reads the served origin exactly as the folder reader does."""
        published = read_published_at(served + "remote-index.json", trust=trust_for(KEY_A))
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
