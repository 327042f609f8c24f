"""FeatureHost fetches changed features several at a time, and decides as if one at a time.

24 features spread over the 128 hash bins of host protocol v2: each changed
feature's releases.json, manifest and assets are fetched in parallel, and what
is served, refused and saved is what one-at-a-time fetching gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from host_repository import KEY_B, NOW, HostRepository, OriginFront

from releasecontrol.errors import ConfigError
from releasecontrol.fetch import Fetcher
from releasecontrol.host import FeatureHost
from releasecontrol.index import REMOTE_INDEX_PATH
from releasecontrol.manifest import manifest_path
from releasecontrol_server.origin.http import OriginHttpServer

FEATURES = [f"feature-{i:02d}" for i in range(24)]


@pytest.fixture
def repo(tmp_path: Path) -> HostRepository:
    """24 features, one signed by an untrusted key and one whose manifest was replaced."""
    repo = HostRepository(tmp_path / "origin")
    for feature_id in FEATURES:
        repo.add_version(feature_id, "1.0.0")
    repo.publish()
    repo.publish_releases("feature-05", keys=[KEY_B])  # KEY_B is not in the index role
    repo.write(manifest_path("feature-11", "1.0.0"), b'{"not": "the manifest"}')
    repo.publish()
    return repo


@pytest.fixture
def index_url(repo: HostRepository) -> Iterator[str]:
    with OriginHttpServer(repo.root, port=0) as server, OriginFront(server.url) as front:
        yield front.url + REMOTE_INDEX_PATH


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(timeout_seconds=2.0) as fetcher:
        yield fetcher


@pytest.fixture
def host(
    repo: HostRepository, index_url: str, fetcher: Fetcher
) -> Callable[[Path, int], FeatureHost]:
    def make(state_dir: Path, parallel_fetches: int) -> FeatureHost:
        return FeatureHost(
            index_url,
            repo.trust(),
            state_dir=state_dir,
            clock=lambda: NOW + timedelta(hours=1),
            fetcher=fetcher,
            parallel_fetches=parallel_fetches,
        )

    return make


class TestParallelFetches:
    def test_parallel_and_one_at_a_time_give_the_same_result(
        self, host: Callable[[Path, int], FeatureHost], tmp_path: Path
    ) -> None:
        """Reports, served features, refusals and the state kept on disk are the same."""
        results = []
        for parallel in (1, 8):
            state = tmp_path / f"host-{parallel}"
            feature_host = host(state, parallel)
            report = feature_host.refresh()
            results.append(
                (
                    report.ok,
                    report.fetched,
                    dict(report.loaded),
                    dict(report.refused),
                    feature_host.snapshot(),
                    json.loads((state / "state.json").read_text()),
                )
            )
        assert results[0] == results[1]
        ok, fetched, loaded, refused, _, _ = results[1]
        assert not ok
        assert fetched == tuple(FEATURES)  # in feature id order, as fetched one at a time
        assert set(refused) == {"feature-05", "feature-11"}
        assert "is not signed by the index keys: signed by 0 of 1" in refused["feature-05"]
        assert "features/feature-11/1.0.0/manifest.json has SHA-256" in refused["feature-11"]
        assert set(loaded) == set(FEATURES) - set(refused)

    def test_a_refresh_after_changes_fetches_only_those(
        self, repo: HostRepository, host: Callable[[Path, int], FeatureHost], tmp_path: Path
    ) -> None:
        """Changed features are fetched (in parallel) and the rest are kept as they were."""
        feature_host = host(tmp_path / "host", 8)
        feature_host.refresh()
        for feature_id in ("feature-01", "feature-07", "feature-20"):
            repo.add_version(feature_id, "1.1.0")
        repo.publish()
        report = feature_host.refresh()
        # The refused two are tried again on every refresh.
        assert report.fetched == (
            "feature-01",
            "feature-05",
            "feature-07",
            "feature-11",
            "feature-20",
        )
        assert report.loaded["feature-07"] == "1.1.0"
        assert report.loaded["feature-02"] == "1.0.0"

    @pytest.mark.parametrize("value", [0, -1, True, 1.5], ids=["zero", "negative", "bool", "float"])
    def test_parallel_fetches_below_one_is_refused(
        self, host: Callable[[Path, int], FeatureHost], tmp_path: Path, value: object
    ) -> None:
        """A parallel_fetches that is not a whole number of at least 1 is a ConfigError."""
        with pytest.raises(ConfigError, match="parallel_fetches must be 1 or more"):
            host(tmp_path / "host", value)  # type: ignore[arg-type]
