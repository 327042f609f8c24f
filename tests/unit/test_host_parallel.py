"""FeatureHost fetches changed features several at a time, and decides as if one at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from host_repository import KEY_A, KEY_B, NOW, HostRepository, OriginFront, trust_for

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
    repo.publish_releases("feature-05", keys=[KEY_B])
    repo.write(manifest_path("feature-11", "1.0.0"), b'{"not": "the manifest"}')
    repo.publish_remote()
    return repo


@pytest.fixture
def index_url(repo: HostRepository) -> Iterator[str]:
    with OriginHttpServer(repo.root, port=0) as server, OriginFront(server.url) as front:
        yield front.url + REMOTE_INDEX_PATH


def host(index_url: str, state_dir: Path, parallel_fetches: int) -> FeatureHost:
    return FeatureHost(
        index_url,
        trust_for(KEY_A),
        state_dir=state_dir,
        clock=lambda: NOW + timedelta(hours=1),
        fetcher=Fetcher(timeout_seconds=2.0),
        parallel_fetches=parallel_fetches,
    )


class TestParallelFetches:
    def test_parallel_and_one_at_a_time_give_the_same_result(
        self, repo: HostRepository, index_url: str, tmp_path: Path
    ) -> None:
        """Reports, served features, refusals and the state kept on disk are the same."""
        results = []
        for parallel in (1, 8):
            state = tmp_path / f"host-{parallel}"
            feature_host = host(index_url, state, parallel)
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
        assert "signed by 0 of 1" in refused["feature-05"]
        assert "SHA-256" in refused["feature-11"]
        assert set(loaded) == set(FEATURES) - set(refused)

    def test_a_refresh_after_changes_fetches_only_those(
        self, repo: HostRepository, index_url: str, tmp_path: Path
    ) -> None:
        """Changed features are fetched (in parallel) and the rest are kept as they were."""
        feature_host = host(index_url, tmp_path / "host", 8)
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
        self, index_url: str, tmp_path: Path, value: object
    ) -> None:
        """A parallel_fetches that is not a whole number of at least 1 is a ConfigError."""
        with pytest.raises(ConfigError, match="parallel_fetches must be 1 or more"):
            host(index_url, tmp_path / "host", value)  # type: ignore[arg-type]
