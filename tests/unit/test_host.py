"""The host library: FeatureHost's behaviour around the checks (releasecontrol.host).

The attack table (every check's verdict) is the shared vectors in tests/vectors,
run by test_vectors.py; the checks themselves are in test_verifier.py. These
tests pin what a host does around them: conditional and incremental fetching,
reading only the shards it needs, what it keeps across restarts and in its
artifact cache, its limits, its configuration, and how it follows rotations.

Every test runs a real HTTP origin on loopback: `OriginHttpServer` on port 0
serving the folder `HostRepository` signs into, behind `OriginFront`, which
records requests and injects faults. The clock is passed in; nothing sleeps.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from host_repository import (
    ENDLESS,
    EXPIRY,
    HANG,
    HUGE_LENGTH,
    KEY_A,
    KEY_B,
    KEY_DEV,
    NOW,
    ROOT_A,
    ROOT_B,
    TRICKLE,
    TRUNCATED,
    HostRepository,
    OriginFront,
    default_files,
    sha256,
)

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.fetch import Fetcher
from releasecontrol.host import FeatureHost, Limits
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol.trust import TrustStore
from releasecontrol_server.origin.http import OriginHttpServer

FETCH_TIMEOUT = 1.0  # what a hung origin costs a test; 0.3 s timed out healthy reads under load
CHECKOUT = releases_path("checkout")
SEARCH = releases_path("search")
CHECKOUT_SHARD = "index/7/63.json"  # bin_of("checkout", 7)
SEARCH_SHARD = "index/7/12.json"  # bin_of("search", 7)


class Clock:
    """A clock the test sets; counts its readings (one per refresh is what the host may take)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.readings = 0

    def __call__(self) -> datetime:
        self.readings += 1
        return self.now


class MakeHost(Protocol):
    def __call__(
        self, *, trust: TrustStore | None = None, state: str = "host", **kwargs: Any
    ) -> FeatureHost: ...


@dataclass
class Origin:
    repo: HostRepository
    front: OriginFront
    clock: Clock

    @property
    def index_url(self) -> str:
        return self.front.url + REMOTE_INDEX_PATH


@pytest.fixture
def repo(tmp_path: Path) -> HostRepository:
    """checkout 1.0.0 (bin 63) and search 2.0.0 (bin 12), stable, at top sequence 1."""
    repo = HostRepository(tmp_path / "origin")
    repo.add_version("checkout", "1.0.0")
    repo.add_version("search", "2.0.0")
    repo.publish()
    return repo


@pytest.fixture
def origin(repo: HostRepository) -> Iterator[Origin]:
    with OriginHttpServer(repo.root, port=0) as server, OriginFront(server.url) as front:
        yield Origin(repo, front, Clock(NOW + timedelta(hours=1)))


@pytest.fixture
def fetcher() -> Iterator[Fetcher]:
    with Fetcher(timeout_seconds=FETCH_TIMEOUT) as fetcher:
        yield fetcher


@pytest.fixture
def make_host(origin: Origin, fetcher: Fetcher, tmp_path: Path) -> MakeHost:
    """A host of the origin; the same `state` name is the same state directory (a restart)."""

    def make(*, trust: TrustStore | None = None, state: str = "host", **kwargs: Any) -> FeatureHost:
        kwargs.setdefault("clock", origin.clock)
        kwargs.setdefault("fetcher", fetcher)
        return FeatureHost(
            origin.index_url,
            trust if trust is not None else origin.repo.trust(),
            state_dir=tmp_path / state,
            **kwargs,
        )

    return make


def loaded_host(make_host: MakeHost, origin: Origin, **kwargs: Any) -> FeatureHost:
    """A host that has loaded the origin once, with its requests forgotten."""
    host = make_host(**kwargs)
    report = host.refresh()
    assert report.ok, report.refused
    origin.front.clear()
    return host


def codes(refusals: Any) -> dict[str, tuple[str, str]]:
    """Each refusal as (code, file), by its key."""
    return {key: (r.code, r.file) for key, r in refusals.items()}


def asset_paths(feature_id: str, version: str) -> list[str]:
    files = default_files(feature_id, version)
    return [artifact_path(sha256(data), name) for name, data in files.items()]


def state_of(tmp_path: Path, state: str = "host") -> dict[str, Any]:
    result: dict[str, Any] = json.loads((tmp_path / state / "state.json").read_text())
    return result


class TestConditionalRequests:
    def test_an_unchanged_origin_costs_one_304(self, origin: Origin, make_host: MakeHost) -> None:
        """The next refresh asks If-None-Match with the verified ETag, gets 304, fetches nothing."""
        host = loaded_host(make_host, origin)
        report = host.refresh()
        assert report.ok and report.fetched == ()
        assert report.loaded == {"checkout": "1.0.0", "search": "2.0.0"}
        [request] = origin.front.requests
        assert (request.path, request.status) == (REMOTE_INDEX_PATH, 304)
        assert request.if_none_match == '"' + sha256(origin.repo.read(REMOTE_INDEX_PATH)) + '"'

    def test_a_cached_top_still_expires(self, origin: Origin, make_host: MakeHost) -> None:
        """A 304 does not make a verified copy live for ever: it expires at its expires_at."""
        host = loaded_host(make_host, origin)
        origin.clock.now = NOW + EXPIRY
        report = host.refresh()
        assert [r.status for r in origin.front.requests] == [304]
        assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("expired", REMOTE_INDEX_PATH)}
        assert "expired at 2026-12-03T10:00:00Z" in report.refused[REMOTE_INDEX_PATH]
        assert report.loaded == {"checkout": "1.0.0", "search": "2.0.0"}

    def test_a_cached_releases_file_still_expires(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A re-signed top pinning the same, now expired, releases.json refuses that feature."""
        host = loaded_host(make_host, origin)
        origin.repo.now = NOW + EXPIRY
        origin.repo.shard_pins.clear()
        origin.repo.publish_shard(origin.repo.bin("checkout"))  # same pins, fresh shard
        origin.repo.publish_shard(origin.repo.bin("search"))
        origin.repo.publish_remote()
        origin.clock.now = NOW + EXPIRY + timedelta(hours=1)
        report = host.refresh()
        assert codes(report.refusals) == {
            "checkout": ("expired", CHECKOUT),
            "search": ("expired", SEARCH),
        }
        assert report.fetched == ()

    def test_a_changed_top_is_fetched_whole(self, origin: Origin, make_host: MakeHost) -> None:
        """When the top changed the origin answers 200 and the host follows it."""
        host = loaded_host(make_host, origin)
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        report = host.refresh()
        assert report.loaded["checkout"] == "1.1.0"
        assert origin.front.requests[0].status == 200

    def test_one_clock_reading_per_refresh(self, origin: Origin, make_host: MakeHost) -> None:
        """A refresh reads the clock once, so every check in it uses the same moment."""
        host = make_host()
        host.refresh()
        host.refresh()
        assert origin.clock.readings == 2


class TestIncrementalRefresh:
    def test_only_what_changed_is_fetched(self, origin: Origin, make_host: MakeHost) -> None:
        """One changed feature costs the top, its shard, its releases.json, manifest and assets."""
        host = loaded_host(make_host, origin)
        origin.repo.add_version("search", "2.1.0")
        origin.repo.publish()
        report = host.refresh()
        assert report.ok and report.fetched == ("search",)
        assert report.loaded == {"checkout": "1.0.0", "search": "2.1.0"}
        assert origin.front.paths() == [
            REMOTE_INDEX_PATH,
            SEARCH_SHARD,
            SEARCH,
            manifest_path("search", "2.1.0"),
            *asset_paths("search", "2.1.0"),
        ]

    def test_assets_already_in_the_cache_are_not_fetched_again(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A new version sharing an asset with the old one fetches only the changed asset."""
        host = loaded_host(make_host, origin)
        files = dict(default_files("checkout", "1.0.0"), **{"index.js": b"export default 2;\n"})
        origin.repo.add_version("checkout", "1.1.0", files)
        origin.repo.publish()
        assert host.refresh().loaded["checkout"] == "1.1.0"
        artifacts = [p for p in origin.front.paths() if p.startswith("artifacts/")]
        assert artifacts == [artifact_path(sha256(b"export default 2;\n"), "index.js")]

    def test_a_canary_deploy_costs_a_stable_host_no_manifest(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A new releases.json that keeps the stable version is read, and nothing else is."""
        host = loaded_host(make_host, origin)
        origin.repo.add_version("checkout", "1.1.0", channel="canary")
        origin.repo.publish()
        report = host.refresh()
        assert report.ok and report.loaded["checkout"] == "1.0.0"
        assert host.features["checkout"].releases_sequence == 2
        assert origin.front.paths() == [REMOTE_INDEX_PATH, CHECKOUT_SHARD, CHECKOUT]

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(manifest_path("checkout", "1.1.0"), id="manifest"),
            pytest.param(asset_paths("checkout", "1.1.0")[1], id="asset"),
        ],
    )
    def test_a_refused_feature_is_retried_and_loads_once_fixed(
        self, origin: Origin, make_host: MakeHost, path: str
    ) -> None:
        """A feature refused after its releases.json verified is fetched again once fixed."""
        host = loaded_host(make_host, origin)
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        origin.front.faults[path] = 503
        assert codes(host.refresh().refusals) == {"checkout": ("fetch", path)}
        origin.front.faults.clear()
        report = host.refresh()
        assert report.ok and report.fetched == ("checkout",)
        assert report.loaded["checkout"] == "1.1.0"


class TestFeatureSubset:
    def test_only_the_needed_shard_is_read(self, origin: Origin, make_host: MakeHost) -> None:
        """A host needing checkout reads checkout's shard and files, never search's."""
        host = make_host(features=["checkout"])
        report = host.refresh()
        assert report.ok and report.loaded == {"checkout": "1.0.0"}
        assert origin.front.paths() == [
            REMOTE_INDEX_PATH,
            "roots/1.json",
            CHECKOUT_SHARD,
            CHECKOUT,
            manifest_path("checkout", "1.0.0"),
            *asset_paths("checkout", "1.0.0"),
        ]

    def test_a_change_in_another_bin_costs_nothing_but_the_top(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A host needing checkout ignores search's update, whose shard it never reads."""
        host = loaded_host(make_host, origin, features=["checkout"])
        origin.repo.add_version("search", "2.1.0")
        origin.repo.publish()
        assert host.refresh().ok
        assert origin.front.paths() == [REMOTE_INDEX_PATH]

    @pytest.mark.parametrize(
        ("feature_id", "file"),
        [
            pytest.param("pay", REMOTE_INDEX_PATH, id="bin-without-a-shard"),
            pytest.param("pay-12", CHECKOUT_SHARD, id="shard-does-not-list-it"),
        ],
    )
    def test_a_needed_feature_that_is_not_published_is_not_found(
        self, origin: Origin, make_host: MakeHost, feature_id: str, file: str
    ) -> None:
        """A needed id nobody published is `not-found`, naming the file that does not list it."""
        report = make_host(features=["checkout", feature_id]).refresh()
        assert codes(report.refusals) == {feature_id: ("not-found", file)}
        assert f"{feature_id} is not published on this origin" in report.refused[feature_id]
        assert report.loaded == {"checkout": "1.0.0"}


class TestStatePersistence:
    @staticmethod
    def files(origin: Origin) -> dict[str, bytes]:
        """Every file on the origin now, by path."""
        root = origin.repo.root
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    @pytest.fixture
    def old_origin(self, origin: Origin) -> dict[str, bytes]:
        """Every file of the sequence-1 origin, saved before sequence 2 (checkout 1.1.0)."""
        saved = self.files(origin)
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        return saved

    @staticmethod
    def replay(origin: Origin, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            origin.repo.write(path, data)

    def test_a_restarted_host_refuses_a_rollback(
        self, origin: Origin, make_host: MakeHost, old_origin: dict[str, bytes]
    ) -> None:
        """A new FeatureHost on the same state directory still refuses the older origin."""
        loaded_host(make_host, origin)
        self.replay(origin, old_origin)
        report = make_host().refresh()
        assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("rollback", REMOTE_INDEX_PATH)}
        assert report.loaded == {}

    def test_a_fresh_state_accepts_it(
        self, origin: Origin, make_host: MakeHost, old_origin: dict[str, bytes]
    ) -> None:
        """The control case: a host with another (empty) state accepts that same origin."""
        loaded_host(make_host, origin)
        self.replay(origin, old_origin)
        assert make_host(state="other").refresh().loaded == {
            "checkout": "1.0.0",
            "search": "2.0.0",
        }

    def test_the_state_file_holds_the_root_and_the_marks(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """state.json is format 2 with the trusted root and each file's sequence and body hash."""
        loaded_host(make_host, origin)
        state = state_of(tmp_path)
        assert state["format"] == 2
        assert state["trust_fingerprint"] == origin.repo.trust().fingerprint
        assert state["root"] is not None
        assert state["remote_index"]["sequence"] == 1
        assert sorted(state["features"]) == ["checkout", "search"]
        assert state["features"]["checkout"]["sequence"] == 1

    def test_a_restarted_host_uses_its_stored_root(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """After a restart the trusted root comes from the state: no root is fetched again."""
        loaded_host(make_host, origin)
        host = make_host()
        assert host.root_version == 1
        assert host.refresh().ok
        assert not [p for p in origin.front.paths() if p.startswith("roots/")]

    @pytest.mark.parametrize(
        ("content", "fragment"),
        [
            pytest.param("{not json", "not a host state file: Expecting", id="not-json"),
            pytest.param('{"format": 3}', "format 3 is not 1 or 2", id="format-3"),
            pytest.param(
                '{"format": 2, "features": []}', '"features" is not an object', id="features-list"
            ),
            pytest.param(
                '{"format": 2, "features": {}, "remote_index": null}', "'root'", id="no-root"
            ),
            pytest.param(None, "Is a directory", id="a-directory"),
        ],
    )
    def test_a_state_file_that_cannot_be_read_refuses_to_start(
        self, make_host: MakeHost, tmp_path: Path, content: str | None, fragment: str
    ) -> None:
        """The host refuses to start rather than forget what it saw: one line naming the file."""
        state_file = tmp_path / "host" / "state.json"
        state_file.parent.mkdir()
        if content is None:
            state_file.mkdir()
        else:
            state_file.write_text(content)
        with pytest.raises(ConfigError) as caught:
            make_host()
        message = caught.value.message
        assert message.startswith(f"host state file {state_file} cannot be used (")
        assert fragment in message
        assert "delete it to start over" in message and "\n" not in message

    def test_a_state_directory_that_cannot_be_made_is_a_config_error(
        self, origin: Origin, tmp_path: Path
    ) -> None:
        """A state_dir under a regular file is refused at construction, naming it."""
        (tmp_path / "file").write_text("x")
        with pytest.raises(
            ConfigError, match=r"host state directory .*file/host cannot be created"
        ):
            FeatureHost(origin.index_url, origin.repo.trust(), state_dir=tmp_path / "file" / "host")

    @pytest.mark.parametrize(
        ("sequence", "accepted"),
        [
            pytest.param(1, True, id="same-sequence-accepted"),
            pytest.param(5, False, id="higher-sequence-refuses-a-rollback"),
        ],
    )
    def test_a_v1_state_file_keeps_its_sequences(
        self, make_host: MakeHost, tmp_path: Path, sequence: int, accepted: bool
    ) -> None:
        """A host upgraded from protocol v1 keeps the sequences its state file recorded."""
        state_file = tmp_path / "host" / "state.json"
        state_file.parent.mkdir()
        v1_mark = {"sequence": sequence, "sha256": "ab" * 32}
        state_file.write_text(
            json.dumps({"format": 1, "remote_index": v1_mark, "features": {"checkout": v1_mark}})
        )
        report = make_host().refresh()
        if accepted:
            assert report.ok
            state = state_of(tmp_path)
            assert state["format"] == 2 and state["remote_index"]["body_sha256"] is not None
        else:
            assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("rollback", REMOTE_INDEX_PATH)}
            assert state_of(tmp_path)["remote_index"]["sequence"] == 5

    def test_another_trust_file_restarts_from_it(self, origin: Origin, make_host: MakeHost) -> None:
        """A stored root is trusted only under the trust file it came from."""
        loaded_host(make_host, origin)
        stranger = TrustStore.for_keys([ROOT_B.trusted_key()])
        report = make_host(trust=stranger).refresh()
        assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("root", "roots/1.json")}
        assert "is not signed by the trust file's keys" in report.refused[REMOTE_INDEX_PATH]

    def test_a_new_trust_file_keeps_the_marks(self, origin: Origin, make_host: MakeHost) -> None:
        """Pinning root 2 instead of root 1 starts at roots/2.json and still refuses a rollback."""
        repo = origin.repo
        repo.rotate([KEY_B], root_keys=[ROOT_B])  # top sequence 2, under root 2
        under_root_2 = self.files(origin)
        repo.add_version("checkout", "1.1.0")
        repo.publish()  # sequence 3
        loaded_host(make_host, origin)
        pinned = repo.trust(root_version=2)
        host = make_host(trust=pinned)
        assert host.root_version is None  # the stored root came from another trust file
        report = host.refresh()
        assert report.ok and report.root_version == 2
        assert [p for p in origin.front.paths() if p.startswith("roots/")] == ["roots/2.json"]
        self.replay(origin, under_root_2)
        again = make_host(trust=pinned).refresh()
        assert codes(again.refusals) == {REMOTE_INDEX_PATH: ("rollback", REMOTE_INDEX_PATH)}


class TestArtifactCache:
    def test_a_restarted_host_serves_its_cached_assets(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A new host on the same state directory fetches no asset it verified before."""
        loaded_host(make_host, origin)
        host = make_host()
        assert host.refresh().ok
        assert not [p for p in origin.front.paths() if p.startswith("artifacts/")]
        expected = default_files("checkout", "1.0.0")["index.js"]
        assert host.features["checkout"].artifact_bytes("index.js") == expected

    def test_a_cache_file_changed_on_disk_is_caught(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """artifact_bytes hashes again, so an edited cache is not served; a restart refetches it."""
        feature = loaded_host(make_host, origin).features["checkout"]
        feature.artifacts["index.js"].write_bytes(b"alert('owned');")
        with pytest.raises(VerificationError, match="the cache was changed on disk"):
            feature.artifact_bytes("index.js")
        host = make_host()
        assert host.refresh().ok
        assert asset_paths("checkout", "1.0.0")[0] in origin.front.paths()
        expected = default_files("checkout", "1.0.0")["index.js"]
        assert host.features["checkout"].artifact_bytes("index.js") == expected

    def test_a_cache_file_deleted_or_unlisted_is_an_error(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A deleted cache file is a VerificationError; a path the manifest lacks is a KeyError."""
        feature = loaded_host(make_host, origin).features["checkout"]
        feature.artifacts["index.js"].unlink()
        with pytest.raises(VerificationError, match="cannot be read"):
            feature.artifact_bytes("index.js")
        with pytest.raises(KeyError, match=r"no asset 'nope\.js'"):
            feature.artifact_bytes("nope.js")


class TestLimits:
    @pytest.mark.parametrize(
        ("path", "fault", "key", "code"),
        [
            pytest.param(REMOTE_INDEX_PATH, ENDLESS, REMOTE_INDEX_PATH, "too-large", id="top-end"),
            pytest.param(
                REMOTE_INDEX_PATH, HUGE_LENGTH, REMOTE_INDEX_PATH, "too-large", id="top-huge-len"
            ),
            pytest.param(REMOTE_INDEX_PATH, TRICKLE, REMOTE_INDEX_PATH, "timeout", id="top-drip"),
            pytest.param(REMOTE_INDEX_PATH, HANG, REMOTE_INDEX_PATH, "timeout", id="top-hang"),
            pytest.param(REMOTE_INDEX_PATH, TRUNCATED, REMOTE_INDEX_PATH, "fetch", id="top-cut"),
            pytest.param(REMOTE_INDEX_PATH, 503, REMOTE_INDEX_PATH, "fetch", id="top-503"),
            pytest.param(CHECKOUT_SHARD, ENDLESS, CHECKOUT_SHARD, "length", id="shard-endless"),
            pytest.param(CHECKOUT, HANG, "checkout", "timeout", id="releases-hang"),
            pytest.param(CHECKOUT, ENDLESS, "checkout", "length", id="releases-endless"),
            pytest.param(
                manifest_path("checkout", "1.1.0"), ENDLESS, "checkout", "too-large", id="manifest"
            ),
            pytest.param(
                asset_paths("checkout", "1.1.0")[0], ENDLESS, "checkout", "length", id="asset"
            ),
        ],
    )
    def test_a_misbehaving_origin_is_cut_off_with_its_code(
        self,
        origin: Origin,
        make_host: MakeHost,
        path: str,
        fault: str | int,
        key: str,
        code: str,
    ) -> None:
        """Endless, huge, slow, hung or broken answers are refused; the last good state stays."""
        host = loaded_host(make_host, origin)
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        origin.front.faults[path] = fault
        report = host.refresh()
        assert codes(report.refusals) == {key: (code, path)}
        assert report.loaded == {"checkout": "1.0.0", "search": "2.0.0"}

    def test_a_root_that_does_not_arrive_refuses_the_refresh(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """An endless root is `root` (its chain cannot be followed), naming the root's file."""
        origin.front.faults["roots/1.json"] = ENDLESS
        report = make_host().refresh()
        assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("root", "roots/1.json")}
        assert "larger than the 1048576-byte limit" in report.refused[REMOTE_INDEX_PATH]

    @pytest.mark.parametrize(
        ("limits", "key", "code", "file"),
        [
            pytest.param(
                Limits(max_index_bytes=100), REMOTE_INDEX_PATH, "too-large", REMOTE_INDEX_PATH
            ),
            pytest.param(Limits(max_root_bytes=100), REMOTE_INDEX_PATH, "root", "roots/1.json"),
            pytest.param(Limits(max_pinned_bytes=100), CHECKOUT_SHARD, "too-large", CHECKOUT_SHARD),
            pytest.param(
                Limits(max_manifest_bytes=64),
                "checkout",
                "too-large",
                manifest_path("checkout", "1.0.0"),
            ),
            pytest.param(
                Limits(max_artifact_bytes=10),
                "checkout",
                "too-large",
                asset_paths("checkout", "1.0.0")[0],
            ),
        ],
        ids=["index", "root", "pinned", "manifest", "artifact"],
    )
    def test_configured_limits_apply(
        self, make_host: MakeHost, limits: Limits, key: str, code: str, file: str
    ) -> None:
        """Each configured limit refuses a file over it, with the code and file it names."""
        report = make_host(limits=limits, features=["checkout"]).refresh()
        assert codes(report.refusals) == {key: (code, file)}

    def test_a_limit_must_be_a_positive_number_of_bytes(self) -> None:
        """A zero or boolean limit is a ValueError naming the limit."""
        with pytest.raises(ValueError, match="max_artifact_bytes must be a positive"):
            Limits(max_artifact_bytes=0)
        with pytest.raises(ValueError, match="max_index_bytes must be a positive"):
            Limits(max_index_bytes=True)


class TestWhatIsServed:
    @pytest.mark.parametrize(
        ("channel", "version"),
        [
            pytest.param("stable", "1.0.0", id="stable-host"),
            pytest.param("canary", "1.1.0", id="canary-host"),
        ],
    )
    def test_the_host_channel_selects_the_version(
        self, origin: Origin, make_host: MakeHost, channel: str, version: str
    ) -> None:
        """A stable host serves the stable version; a canary host serves the running canary."""
        origin.repo.add_version("checkout", "1.1.0", channel="canary")
        origin.repo.publish()
        host = make_host(channel=channel)
        assert host.refresh().loaded["checkout"] == version
        assert host.features["checkout"].channel == channel

    def test_a_canary_host_serves_stable_when_no_canary_runs(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """Following canary means the canary while one runs, and stable otherwise."""
        host = make_host(channel="canary")
        assert host.refresh().loaded["checkout"] == "1.0.0"
        assert host.features["checkout"].channel == "stable"

    def test_a_feature_no_longer_listed_is_dropped(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """A feature its shard no longer lists is no longer served, and its mark is forgotten."""
        host = loaded_host(make_host, origin)
        origin.repo.remove_feature("search")
        origin.repo.publish()
        report = host.refresh()
        assert report.ok and report.loaded == {"checkout": "1.0.0"}
        assert list(host.features) == ["checkout"]
        assert list(state_of(tmp_path)["features"]) == ["checkout"]

    def test_a_refused_shard_keeps_its_bins_features_while_others_update(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A bad shard refuses its bin only: its features stay, other bins' features update."""
        host = loaded_host(make_host, origin)
        repo = origin.repo
        repo.add_version("checkout", "1.1.0")
        repo.add_version("search", "2.1.0")
        repo.publish_releases("checkout")
        repo.publish_releases("search")
        repo.publish_shard(repo.bin("checkout"), tamper=lambda body: body.update(note="x"))
        repo.publish()
        report = host.refresh()
        assert codes(report.refusals) == {CHECKOUT_SHARD: ("signature", CHECKOUT_SHARD)}
        assert report.loaded == {"checkout": "1.0.0", "search": "2.1.0"}
        repo.publish_shard(repo.bin("checkout"))
        repo.publish_remote()
        assert host.refresh().loaded == {"checkout": "1.1.0", "search": "2.1.0"}

    def test_a_refused_top_keeps_everything(self, origin: Origin, make_host: MakeHost) -> None:
        """A refused remote-index.json refuses the whole refresh: nothing changes."""
        host = loaded_host(make_host, origin)
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        origin.repo.publish_remote(keys=[KEY_B])
        report = host.refresh()
        assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("signature", REMOTE_INDEX_PATH)}
        assert report.loaded == {"checkout": "1.0.0", "search": "2.0.0"}
        assert report.remote_sequence == 1

    def test_snapshot_is_plain_json(self, origin: Origin, make_host: MakeHost) -> None:
        """snapshot() says what is served, from which root and sequence, and what was refused."""
        host = loaded_host(make_host, origin, features=["checkout"])
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish_releases("checkout", keys=[KEY_B])
        origin.repo.publish()
        host.refresh()
        snapshot = json.loads(json.dumps(host.snapshot()))
        manifest = json.loads(origin.repo.read(manifest_path("checkout", "1.0.0")))
        assert snapshot == {
            "index_url": origin.index_url,
            "channel": "stable",
            "remote_sequence": 2,
            "root_version": 1,
            "last_refresh_at": "2026-11-26T11:00:00Z",
            "loaded": {
                "checkout": {
                    "version": "1.0.0",
                    "channel": "stable",
                    "canary_weight": None,
                    "bucket": None,
                    "sides": {"stable": "1.0.0"},
                    "sequence": 1,
                    "manifest_sha256": origin.repo.features["checkout"]
                    .versions["1.0.0"]
                    .manifest_sha256,
                    "keyids": [KEY_A.keyid],
                    "artifacts": {a["path"]: a["sha256"] for a in manifest["assets"]},
                }
            },
            "refused": {
                "checkout": {
                    "code": "signature",
                    "file": CHECKOUT,
                    "message": host.refused["checkout"],
                }
            },
        }

    def test_an_index_url_ending_in_a_slash_means_the_index_inside(
        self, origin: Origin, make_host: MakeHost, fetcher: Fetcher, tmp_path: Path
    ) -> None:
        """An origin URL without the file name reads its remote-index.json."""
        host = FeatureHost(
            origin.front.url,
            origin.repo.trust(),
            state_dir=tmp_path / "h",
            clock=origin.clock,
            fetcher=fetcher,
        )
        assert host.index_url == origin.index_url
        assert host.refresh().ok

    def test_a_naive_clock_is_a_programming_error(self, make_host: MakeHost) -> None:
        """A clock without a zone cannot be compared with expiry times, so refresh raises."""
        host = make_host(clock=lambda: datetime(2026, 11, 26, 11, 0, 0))
        with pytest.raises(ValueError, match="aware"):
            host.refresh()


class TestRotation:
    def test_a_rotated_online_key_is_adopted(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """After a rotation the host follows root 2, reports it, and serves files KEY_B signed."""
        host = loaded_host(make_host, origin)
        origin.repo.rotate([KEY_B])
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        report = host.refresh()
        assert report.ok and report.root_version == 2 and host.root_version == 2
        assert [p for p in origin.front.paths() if p.startswith("roots/")] == ["roots/2.json"]
        assert host.features["checkout"].keyids == {KEY_B.keyid}
        assert host.snapshot()["root_version"] == 2
        assert make_host().root_version == 2  # kept in the state across a restart

    @pytest.mark.parametrize(
        ("index_keys", "accepted"),
        [
            pytest.param([KEY_B], True, id="key-revoked-marks-reset"),
            pytest.param([KEY_A, KEY_B], False, id="key-kept-marks-kept"),
        ],
    )
    def test_revoking_an_index_key_resets_the_high_water_marks(
        self, origin: Origin, make_host: MakeHost, index_keys: list[Any], accepted: bool
    ) -> None:
        """A key that signed a huge sequence is undone by revoking it, and only by that."""
        repo = origin.repo
        repo.publish_remote(sequence=1_000_000)  # KEY_A, stolen, fast-forwards the top level
        host = loaded_host(make_host, origin)
        repo.rotate(index_keys)  # the control plane's own next top level: sequence 2
        repo.add_version("checkout", "1.1.0")
        repo.publish()
        report = host.refresh()
        if accepted:
            assert report.ok and report.remote_sequence == 3
            assert report.loaded["checkout"] == "1.1.0"
            assert make_host().refresh().ok  # the reset marks were saved
        else:
            assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("rollback", REMOTE_INDEX_PATH)}
            assert report.loaded["checkout"] == "1.0.0"


class TestWatch:
    def test_refreshes_once_per_event(self, origin: Origin, make_host: MakeHost) -> None:
        """Each event triggers one refresh, and the host follows what the origin publishes."""
        host = make_host()

        def events() -> Iterator[str]:
            yield "SNAPSHOT checkout"
            assert host.features["checkout"].version == "1.0.0"
            origin.repo.add_version("checkout", "1.1.0")
            origin.repo.publish()
            yield "CHANGED checkout"

        host.watch(events())
        assert host.features["checkout"].version == "1.1.0"
        assert origin.front.paths().count(REMOTE_INDEX_PATH) == 2

    def test_an_events_contents_are_never_used(self, origin: Origin, make_host: MakeHost) -> None:
        """An event only triggers a refresh: what it says is not read, let alone trusted."""

        class Poison:
            def __getattr__(self, name: str) -> Any:
                raise AssertionError(f"the host read {name!r} of an event")

            def __eq__(self, other: object) -> bool:
                raise AssertionError("the host compared an event")

            __hash__ = None  # type: ignore[assignment]

        host = make_host()
        host.watch([Poison(), Poison()])
        assert host.features["checkout"].version == "1.0.0"
        assert origin.front.paths().count(REMOTE_INDEX_PATH) == 2

    def test_stops_when_the_stop_event_is_set(self, origin: Origin, make_host: MakeHost) -> None:
        """Once `stop` is set, no further event triggers a refresh."""
        host = make_host()
        stop = threading.Event()

        def events() -> Iterator[int]:
            yield 1
            yield 2
            stop.set()
            yield 3
            yield 4

        host.watch(events(), stop)
        assert origin.front.paths().count(REMOTE_INDEX_PATH) == 2


class TestFromEnvironment:
    @pytest.fixture
    def env(self, origin: Origin, tmp_path: Path) -> dict[str, str]:
        trust_file = tmp_path / "trust.json"
        trust_file.write_text(origin.repo.trust().to_json())
        return {
            "FEATURE_REMOTE_INDEX_URL": origin.index_url,
            "FEATURE_TRUST_PUBLIC_KEYS_PATH": str(trust_file),
            "RELEASECONTROL_HOME": str(tmp_path / "home"),
        }

    def test_builds_a_host_that_loads(
        self, env: dict[str, str], origin: Origin, fetcher: Fetcher, tmp_path: Path
    ) -> None:
        """The contract's variables make a working host with its state under RELEASECONTROL_HOME."""
        host = FeatureHost.from_environment(env, clock=origin.clock, fetcher=fetcher)
        assert host.index_url == origin.index_url
        assert host.refresh().loaded == {"checkout": "1.0.0", "search": "2.0.0"}
        assert (tmp_path / "home" / "host" / "state.json").is_file()

    def test_state_defaults_to_the_current_directory(
        self,
        env: dict[str, str],
        origin: Origin,
        fetcher: Fetcher,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Without RELEASECONTROL_HOME the state lives in ./.releasecontrol/host."""
        monkeypatch.chdir(tmp_path)
        del env["RELEASECONTROL_HOME"]
        FeatureHost.from_environment(env, clock=origin.clock, fetcher=fetcher).refresh()
        assert (tmp_path / ".releasecontrol" / "host" / "state.json").is_file()

    @pytest.mark.parametrize(
        ("changes", "fragment"),
        [
            pytest.param(
                {"FEATURE_REMOTE_INDEX_URL": None},
                "FEATURE_REMOTE_INDEX_URL is not set",
                id="no-index-url",
            ),
            pytest.param(
                {"FEATURE_REMOTE_INDEX_URL": "ftp://cdn.example/remote-index.json"},
                "is not an http:// or https:// URL",
                id="index-url-not-http",
            ),
            pytest.param(
                {"FEATURE_TRUST_PUBLIC_KEYS_PATH": None},
                "set FEATURE_TRUST_PUBLIC_KEYS_JSON to the trust file's JSON or "
                "FEATURE_TRUST_PUBLIC_KEYS_PATH to its path",
                id="no-trust",
            ),
            pytest.param(
                {"FEATURE_TRUST_PUBLIC_KEYS_JSON": "{"},
                "FEATURE_TRUST_PUBLIC_KEYS_JSON is not valid JSON",
                id="trust-malformed",
            ),
            pytest.param(
                {"FEATURE_TRUST_PUBLIC_KEYS_JSON": '{"keys": [], "root_version": 0}'},
                "FEATURE_TRUST_PUBLIC_KEYS_JSON: root_version must be an integer of at least 1",
                id="trust-root-version-0",
            ),
            pytest.param(
                {"FEATURE_ALLOW_INSECURE_DEV_KEYS": "maybe"},
                "FEATURE_ALLOW_INSECURE_DEV_KEYS='maybe' is not a yes/no value",
                id="dev-keys-not-a-flag",
            ),
            pytest.param(
                {"RELEASECONTROL_ENV": "staging"},
                "RELEASECONTROL_ENV='staging' is not understood",
                id="unknown-env",
            ),
        ],
    )
    def test_a_missing_or_bad_setting_is_named(
        self, env: dict[str, str], changes: dict[str, str | None], fragment: str
    ) -> None:
        """A missing or malformed setting is a one-line ConfigError naming it."""
        for name, value in changes.items():
            if value is None:
                env.pop(name)
            else:
                env[name] = value
        with pytest.raises(ConfigError) as caught:
            FeatureHost.from_environment(env)
        assert fragment in caught.value.message
        assert "\n" not in caught.value.message

    @pytest.mark.parametrize(
        ("changes", "dev_trusted", "fragment"),
        [
            pytest.param(
                {"RELEASECONTROL_ENV": "production", "FEATURE_ALLOW_INSECURE_DEV_KEYS": "1"},
                False,
                "FEATURE_ALLOW_INSECURE_DEV_KEYS is on, but RELEASECONTROL_ENV=production refuses",
                id="dev-keys-allowed",
            ),
            pytest.param(
                {"NODE_ENV": "production", "FEATURE_ALLOW_INSECURE_DEV_KEYS": "yes"},
                False,
                "FEATURE_ALLOW_INSECURE_DEV_KEYS is on, but NODE_ENV=production refuses",
                id="dev-keys-allowed-node-env",
            ),
            pytest.param(
                {"RELEASECONTROL_ENV": "Production"},
                True,
                f"FEATURE_TRUST_PUBLIC_KEYS_PATH trusts dev key {KEY_DEV.keyid[:8]}…, but "
                "RELEASECONTROL_ENV=production refuses",
                id="dev-key-trusted",
            ),
        ],
    )
    def test_production_refuses_dev_keys(
        self,
        env: dict[str, str],
        changes: dict[str, str],
        dev_trusted: bool,
        fragment: str,
    ) -> None:
        """In production, allowing dev keys or trusting one is refused, naming the setting."""
        env.update(changes)
        if dev_trusted:
            trust = TrustStore.for_keys([ROOT_A.trusted_key(), KEY_DEV.trusted_key(dev=True)])
            Path(env["FEATURE_TRUST_PUBLIC_KEYS_PATH"]).write_text(trust.to_json())
        with pytest.raises(ConfigError, match=fragment):
            FeatureHost.from_environment(env)

    @pytest.mark.parametrize(
        ("changes", "fragment"),
        [
            pytest.param({"NODE_ENV": "prod"}, "NODE_ENV='prod' is not understood", id="typo"),
            pytest.param(
                {"RELEASECONTROL_ENV": "staging"},
                "RELEASECONTROL_ENV='staging' is not understood",
                id="unknown",
            ),
            pytest.param(
                {"RELEASECONTROL_ENV": "development", "NODE_ENV": "production"},
                "RELEASECONTROL_ENV and NODE_ENV disagree about production",
                id="disagree",
            ),
        ],
    )
    def test_an_unclear_environment_is_refused(
        self, env: dict[str, str], changes: dict[str, str], fragment: str
    ) -> None:
        """A typo is not taken for development, nor one variable over the other: the host
        refuses to start, naming the value, as the server does."""
        env.update(changes)
        with pytest.raises(ConfigError, match=fragment):
            FeatureHost.from_environment(env)

    @pytest.mark.parametrize(
        ("flag", "ok"),
        [pytest.param("on", True, id="allowed"), pytest.param("0", False, id="not-allowed")],
    )
    def test_development_honours_the_dev_key_flag(
        self, env: dict[str, str], origin: Origin, fetcher: Fetcher, flag: str, ok: bool
    ) -> None:
        """Outside production a dev root key counts only with the flag on."""
        env.update(
            {
                "RELEASECONTROL_ENV": "development",
                "NODE_ENV": "test",
                "FEATURE_ALLOW_INSECURE_DEV_KEYS": flag,
                "FEATURE_TRUST_PUBLIC_KEYS_JSON": TrustStore.for_keys(
                    [ROOT_A.trusted_key(dev=True)]
                ).to_json(),
            }
        )
        host = FeatureHost.from_environment(env, clock=origin.clock, fetcher=fetcher)
        report = host.refresh()
        assert report.ok is ok
        if not ok:
            assert codes(report.refusals) == {REMOTE_INDEX_PATH: ("root", "roots/1.json")}
            assert "FEATURE_ALLOW_INSECURE_DEV_KEYS is off" in report.refused[REMOTE_INDEX_PATH]

    def test_keyword_arguments_reach_the_host(
        self, env: dict[str, str], origin: Origin, fetcher: Fetcher
    ) -> None:
        """Constructor options (here the channel and the features) pass through."""
        origin.repo.add_version("checkout", "1.1.0", channel="canary")
        origin.repo.publish()
        host = FeatureHost.from_environment(
            env, clock=origin.clock, fetcher=fetcher, channel="canary", features=["checkout"]
        )
        assert host.refresh().loaded == {"checkout": "1.1.0"}

    @pytest.mark.parametrize(
        ("kwargs", "fragment"),
        [
            pytest.param(
                {"channel": "beta"}, "channel 'beta' is not one of stable, canary", id="c"
            ),
            pytest.param({"parallel_fetches": 0}, "parallel_fetches must be 1 or more", id="p"),
        ],
    )
    def test_a_bad_option_is_refused(
        self, env: dict[str, str], kwargs: dict[str, Any], fragment: str
    ) -> None:
        """A channel other than stable or canary, or no parallel fetch, is a ConfigError."""
        with pytest.raises(ConfigError, match=fragment):
            FeatureHost.from_environment(env, **kwargs)
