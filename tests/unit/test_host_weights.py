"""Percentage canaries in the Python host: which side each key gets, and what is kept on disk.

A stable host serves the canary of a feature iff its bucketing key's bucket
(releasecontrol.bucketing, the table in tests/vectors/bucketing.json) is below
the signed `canary_weight`; a canary host serves it whatever the weight. These
tests run the real FeatureHost against a real HTTP origin signed by
`HostRepository`, as test_host.py does; the clock is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from host_repository import NOW, HostRepository, OriginFront, default_files, sha256

from releasecontrol.bucketing import bucket
from releasecontrol.devhost import render_page
from releasecontrol.errors import ConfigError, InvalidArgument, NotFound
from releasecontrol.fetch import Fetcher
from releasecontrol.host import KEY_FILE, FeatureHost
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol_server.origin.http import OriginHttpServer

# Buckets of "checkout" (tests/vectors/bucketing.json): below and above a 25 % canary.
LOW_KEY, LOW_BUCKET = "user-4", 234
MID_KEY, MID_BUCKET = "user-42", 4570
HIGH_KEY, HIGH_BUCKET = "user-420", 7723
STABLE, CANARY = "1.0.0", "1.1.0"


@dataclass
class Origin:
    repo: HostRepository
    front: OriginFront

    @property
    def index_url(self) -> str:
        return self.front.url + REMOTE_INDEX_PATH

    def set_weight(self, weight: int | None) -> None:
        """Sign checkout's next releases.json with `canary_weight` (None: the field absent)."""
        changes = {} if weight is None else {"canary_weight": weight}
        self.repo.publish_releases("checkout", **changes)
        self.repo.publish()


class MakeHost(Protocol):
    def __call__(self, *, state: str = "host", **kwargs: Any) -> FeatureHost: ...


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[Origin]:
    """checkout: stable 1.0.0 and canary 1.1.0 (no weight yet); search: stable 2.0.0."""
    repo = HostRepository(tmp_path / "origin")
    repo.add_version("checkout", STABLE)
    repo.add_version("checkout", CANARY, channel="canary")
    repo.add_version("search", "2.0.0")
    repo.publish()
    with OriginHttpServer(repo.root, port=0) as server, OriginFront(server.url) as front:
        yield Origin(repo, front)


@pytest.fixture
def make_host(origin: Origin, tmp_path: Path) -> Iterator[MakeHost]:
    """A host of the origin; the same `state` name is the same state directory (a restart)."""
    with Fetcher(timeout_seconds=1) as fetcher:

        def make(*, state: str = "host", **kwargs: Any) -> FeatureHost:
            kwargs.setdefault("clock", lambda: NOW + timedelta(hours=1))
            kwargs.setdefault("fetcher", fetcher)
            kwargs.setdefault("features", ["checkout"])
            return FeatureHost(
                origin.index_url, origin.repo.trust(), state_dir=tmp_path / state, **kwargs
            )

        yield make


def refreshed(host: FeatureHost) -> FeatureHost:
    report = host.refresh()
    assert report.ok, report.refused
    return host


def side(host: FeatureHost) -> tuple[str, str, int | None, int | None]:
    """What the host serves itself of checkout: version, side, weight and bucket."""
    f = host.features["checkout"]
    return f.version, f.channel, f.canary_weight, f.bucket


def canary_paths() -> list[str]:
    files = default_files("checkout", CANARY)
    return [manifest_path("checkout", CANARY)] + [
        artifact_path(sha256(data), name) for name, data in files.items()
    ]


def test_the_keys_buckets_are_the_tables() -> None:
    """The keys below sit where the shared table says, so the sides asserted follow."""
    assert bucket("checkout", LOW_KEY) == LOW_BUCKET
    assert bucket("checkout", MID_KEY) == MID_BUCKET
    assert bucket("checkout", HIGH_KEY) == HIGH_BUCKET


class TestOwnSide:
    @pytest.mark.parametrize(
        ("key", "expected"),
        [
            pytest.param(LOW_KEY, (CANARY, "canary", 2500, LOW_BUCKET), id="below-the-weight"),
            pytest.param(MID_KEY, (STABLE, "stable", 2500, MID_BUCKET), id="above-the-weight"),
        ],
    )
    def test_a_stable_host_gets_the_canary_iff_its_bucket_is_below_the_weight(
        self, origin: Origin, make_host: MakeHost, key: str, expected: tuple[Any, ...]
    ) -> None:
        """At 25 %, the key in bucket 234 gets the canary and the key in bucket 4570 stable."""
        origin.set_weight(2500)
        assert side(refreshed(make_host(bucketing_key=key))) == expected

    @pytest.mark.parametrize(
        ("weight", "expected"),
        [
            pytest.param(None, (STABLE, "stable", 0, LOW_BUCKET), id="no-weight"),
            pytest.param(0, (STABLE, "stable", 0, LOW_BUCKET), id="zero"),
            pytest.param(LOW_BUCKET, (STABLE, "stable", LOW_BUCKET, LOW_BUCKET), id="at-bucket"),
            pytest.param(
                LOW_BUCKET + 1, (CANARY, "canary", LOW_BUCKET + 1, LOW_BUCKET), id="bucket+1"
            ),
            pytest.param(10_000, (CANARY, "canary", 10_000, LOW_BUCKET), id="everyone"),
        ],
    )
    def test_the_edges_of_the_weight(
        self, origin: Origin, make_host: MakeHost, weight: int | None, expected: tuple[Any, ...]
    ) -> None:
        """A bucket equal to the weight is stable, one below it canary; a file signed before
        weights (no field) is a weight of 0: stable hosts keep stable."""
        origin.set_weight(weight)
        assert side(refreshed(make_host(bucketing_key=LOW_KEY))) == expected

    @pytest.mark.parametrize("weight", [None, 0, 2500])
    def test_a_canary_host_gets_the_canary_whatever_the_weight(
        self, origin: Origin, make_host: MakeHost, weight: int | None
    ) -> None:
        """Opting into the canary channel means every canary, as before weights existed."""
        origin.set_weight(weight)
        host = refreshed(make_host(channel="canary", bucketing_key=MID_KEY))
        assert side(host) == (CANARY, "canary", weight or 0, None)

    def test_without_a_canary_nothing_is_bucketed(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """No canary runs: stable for everyone, no weight, no bucket, and no key drawn."""
        origin.repo.set_channels("checkout", stable=STABLE, canary=None)
        origin.repo.publish()
        host = refreshed(make_host())
        assert side(host) == (STABLE, "stable", None, None)
        assert not (tmp_path / "host" / KEY_FILE).exists()

    def test_a_user_never_leaves_the_canary_while_the_weight_grows(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """Sticky: three hosts follow a 5 -> 25 -> 50 -> 100 % ramp; each joins the canary at
        the first step above its bucket and stays on it, across restarts too."""
        keys = {LOW_KEY: LOW_BUCKET, MID_KEY: MID_BUCKET, HIGH_KEY: HIGH_BUCKET}
        for weight in (500, 2500, 5000, 10_000):
            origin.set_weight(weight)
            for key, at in keys.items():
                # A new host object each step: the side comes from the key, not from memory.
                host = refreshed(make_host(state=key, bucketing_key=key))
                assert host.features["checkout"].channel == (
                    "canary" if at < weight else "stable"
                ), (key, weight)


class TestMalformedWeights:
    @pytest.mark.parametrize(
        ("weight", "canary", "words"),
        [
            pytest.param(10_001, CANARY, "an integer from 0 to 10000", id="above-the-scale"),
            pytest.param(-1, CANARY, "an integer from 0 to 10000", id="negative"),
            pytest.param(25.5, CANARY, "an integer from 0 to 10000", id="fraction"),
            pytest.param(True, CANARY, "an integer from 0 to 10000", id="bool"),
            pytest.param(500, None, "canary_weight is set but no canary runs", id="no-canary"),
        ],
    )
    def test_a_bad_weight_refuses_the_releases_file_and_keeps_the_last_good_state(
        self, origin: Origin, make_host: MakeHost, weight: Any, canary: str | None, words: str
    ) -> None:
        """A weight off the 0-10,000 scale, or one without a canary, is malformed: the file
        is refused and the host keeps serving what it had."""
        host = refreshed(make_host(bucketing_key=LOW_KEY))
        origin.repo.set_channels("checkout", stable=STABLE, canary=canary)
        origin.repo.publish_releases("checkout", canary_weight=weight)
        origin.repo.publish()
        report = host.refresh()
        refusal = report.refusals["checkout"]
        assert (refusal.code, refusal.file) == ("malformed", releases_path("checkout"))
        assert words in refusal.message
        assert side(host) == (STABLE, "stable", 0, LOW_BUCKET)


class TestTheRandomKey:
    def test_it_is_drawn_at_the_first_canary_and_kept_across_restarts(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """A host given no key draws 128 random bits once a canary runs, keeps them in its
        state directory, and a restarted host lands in the same bucket."""
        origin.set_weight(5000)
        first = refreshed(make_host())
        key = (tmp_path / "host" / KEY_FILE).read_text("utf-8")
        assert re.fullmatch(r"[0-9a-f]{32}\n", key)
        expected_side = "canary" if bucket("checkout", key[:-1]) < 5000 else "stable"
        assert first.features["checkout"].bucket == bucket("checkout", key[:-1])
        assert first.features["checkout"].channel == expected_side
        again = refreshed(make_host())
        assert side(again) == side(first)
        assert (tmp_path / "host" / KEY_FILE).read_text("utf-8") == key

    def test_a_key_given_is_used_and_no_file_is_written(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """An explicit bucketing_key wins over the file, which is then never created."""
        origin.set_weight(2500)
        assert side(refreshed(make_host(bucketing_key=LOW_KEY)))[3] == LOW_BUCKET
        assert not (tmp_path / "host" / KEY_FILE).exists()

    def test_a_key_file_written_by_hand_is_used(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """The file holds the key as text (one trailing newline ignored): an operator may set it."""
        (tmp_path / "host").mkdir()
        (tmp_path / "host" / KEY_FILE).write_text(LOW_KEY + "\n", "utf-8")
        origin.set_weight(2500)
        assert side(refreshed(make_host())) == (CANARY, "canary", 2500, LOW_BUCKET)

    @pytest.mark.parametrize(
        ("content", "words"),
        [
            pytest.param(b"", "not empty", id="empty"),
            pytest.param(b"k" * 300, "not 300 bytes", id="too-long"),
            pytest.param(b"\xff\xfe", "decode", id="not-utf8"),
        ],
    )
    def test_a_damaged_key_file_refuses_to_start(
        self, make_host: MakeHost, tmp_path: Path, content: bytes, words: str
    ) -> None:
        """Drawing a new key would quietly move the host to a random side: it refuses to start,
        naming the file and the way out."""
        (tmp_path / "host").mkdir()
        (tmp_path / "host" / KEY_FILE).write_bytes(content)
        with pytest.raises(ConfigError) as caught:
            make_host()
        message = caught.value.message
        assert f"bucketing key file {tmp_path / 'host' / KEY_FILE} cannot be used" in message
        assert words in message and "delete it to draw a new key" in message

    @pytest.mark.parametrize(
        ("key", "words"),
        [
            pytest.param("", "must be 1 to 256 bytes long in UTF-8, not empty", id="empty"),
            pytest.param(
                "k" * 257, "must be 1 to 256 bytes long in UTF-8, not 257 bytes", id="257"
            ),
            pytest.param("\ud800", "must be well-formed Unicode", id="lone-surrogate"),
            pytest.param(42, "must be a string of 1 to 256 bytes in UTF-8, not int", id="int"),
        ],
    )
    def test_a_bad_key_option_is_a_config_error(
        self, make_host: MakeHost, key: Any, words: str
    ) -> None:
        """The option is checked when the host is made, and the error names bucketing_key."""
        with pytest.raises(ConfigError, match="^bucketing_key " + re.escape(words)):
            make_host(bucketing_key=key)


class TestPerUser:
    def test_version_for_hands_each_user_their_side(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """One server-side host, many users: each gets the version of their bucket, with its
        verified bytes on disk; the host's own view is unchanged."""
        origin.set_weight(2500)
        host = refreshed(make_host(bucketing_key=MID_KEY))
        low = host.version_for("checkout", LOW_KEY)
        mid = host.version_for("checkout", MID_KEY)
        assert (low.version, low.channel, low.canary_weight, low.bucket) == (
            CANARY,
            "canary",
            2500,
            LOW_BUCKET,
        )
        assert (mid.version, mid.channel, mid.bucket) == (STABLE, "stable", MID_BUCKET)
        assert low.artifact_bytes("index.js") == default_files("checkout", CANARY)["index.js"]
        assert mid.artifact_bytes("index.js") == default_files("checkout", STABLE)["index.js"]
        assert host.features["checkout"] == mid
        assert host.snapshot()["loaded"]["checkout"]["sides"] == {
            "stable": STABLE,
            "canary": CANARY,
        }

    def test_a_fleet_ramps_stickily_and_in_proportion(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """2,000 users through 5 -> 25 -> 100 %: about the weight's share is on the canary at
        each step, and nobody on it ever goes back."""
        host = make_host()
        users = [f"user-{n}" for n in range(2_000)]
        before: set[str] = set()
        for weight in (500, 2500, 10_000):
            origin.set_weight(weight)
            refreshed(host)
            on = {u for u in users if host.version_for("checkout", u).version == CANARY}
            assert before <= on, sorted(before - on)[:5]
            assert abs(len(on) / len(users) - weight / 10_000) < 0.04, (weight, len(on))
            before = on
        assert before == set(users)

    def test_both_versions_are_loaded_only_while_both_are_reachable(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """At 0 % no user gets the canary, so its files are not fetched; between 0 and 100 %
        both versions are verified and kept; at 100 % only the canary is kept."""
        host = refreshed(make_host(bucketing_key=MID_KEY))
        assert not set(canary_paths()) & set(origin.front.paths())
        origin.set_weight(2500)
        origin.front.clear()
        refreshed(host)
        assert set(canary_paths()) <= set(origin.front.paths())
        origin.set_weight(10_000)
        refreshed(host)
        assert host.snapshot()["loaded"]["checkout"]["sides"] == {"canary": CANARY}
        assert host.version_for("checkout", HIGH_KEY).version == CANARY

    def test_a_broken_canary_keeps_the_whole_last_good_state(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A canary asset that fails its hash refuses the feature for a host that keeps both
        sides: every user stays on what the last good releases.json gave them (stable, 0 %),
        never on a version whose files are not all verified."""
        host = refreshed(make_host(bucketing_key=MID_KEY))
        asset = canary_paths()[1]
        data = origin.repo.read(asset)
        origin.repo.write(asset, bytes([data[0] ^ 1]) + data[1:])
        origin.set_weight(2500)
        report = host.refresh()
        assert {k: (r.code, r.file) for k, r in report.refusals.items()} == {
            "checkout": ("hash", asset)
        }
        assert side(host) == (STABLE, "stable", 0, MID_BUCKET)
        assert host.version_for("checkout", LOW_KEY).version == STABLE

    def test_a_one_user_host_downloads_only_its_side(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """With both_sides=False a host on stable fetches no canary file (so a broken canary
        does not touch it), and version_for says it cannot serve the other side."""
        asset = canary_paths()[1]
        origin.repo.write(asset, b"not the published bytes")
        origin.set_weight(2500)
        host = refreshed(make_host(bucketing_key=MID_KEY, both_sides=False))
        assert side(host) == (STABLE, "stable", 2500, MID_BUCKET)
        assert not set(canary_paths()) & set(origin.front.paths())
        assert host.version_for("checkout", HIGH_KEY).version == STABLE
        with pytest.raises(NotFound, match=r"both_sides=False\); make it with both_sides=True"):
            host.version_for("checkout", LOW_KEY)

    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("", id="empty"),
            pytest.param("k" * 257, id="257-bytes"),
            pytest.param("\udc00", id="lone-surrogate"),
        ],
    )
    def test_a_bad_user_key_is_refused_naming_the_field(
        self, origin: Origin, make_host: MakeHost, key: str
    ) -> None:
        """A user key off the rules is the caller's error, named as the parameter."""
        host = refreshed(make_host())
        with pytest.raises(InvalidArgument, match=r"^bucketing_key must be ") as caught:
            host.version_for("checkout", key)
        assert caught.value.field == "bucketing_key"

    def test_a_feature_not_served_is_not_found(self, origin: Origin, make_host: MakeHost) -> None:
        """Asking for a feature the host does not serve says so, and why when it was refused."""
        host = refreshed(make_host())
        with pytest.raises(NotFound, match=r"^search is not served by this host; refresh first"):
            host.version_for("search", LOW_KEY)
        origin.repo.publish_releases("checkout", keys=[])
        origin.repo.publish()
        new = make_host(state="fresh")
        new.refresh()
        with pytest.raises(NotFound, match=r"^checkout is not served .*\(refused: signature: "):
            new.version_for("checkout", LOW_KEY)


class TestWhatIsShown:
    @pytest.mark.parametrize(
        ("options", "shown"),
        [
            pytest.param(
                {"bucketing_key": MID_KEY}, "stable (canary at 25%, bucket 4570)", id="key"
            ),
            pytest.param({"channel": "canary"}, "canary (opted in; canary at 25%)", id="opted-in"),
        ],
    )
    def test_the_dev_host_page_shows_the_weight_and_the_bucket(
        self, origin: Origin, make_host: MakeHost, options: dict[str, Any], shown: str
    ) -> None:
        """`releasectl dev-host`'s page says the canary's weight and which side this host's
        key is on, and status.json (the snapshot) carries both as numbers."""
        origin.set_weight(2500)
        host = refreshed(make_host(**options))
        page = render_page(
            host, index_url="x", channel=host.channel, interval_seconds=5, last_refresh="now"
        )
        assert f"<td>{shown}</td>" in page
        loaded = host.snapshot()["loaded"]["checkout"]
        assert (loaded["canary_weight"], loaded["bucket"]) == (
            2500,
            MID_BUCKET if "bucketing_key" in options else None,
        )
