"""The host library: FeatureHost loads only what it verified (releasecontrol.host).

Every test runs a real HTTP origin on loopback: `OriginHttpServer` on port 0
serving the folder `HostRepository` signs into, behind `OriginFront`, which
records requests and injects faults. The clock is passed in; nothing sleeps for
expiry. The attack table follows python-tuf's updater tests: after a good
load, the origin serves one attack, and the host must refuse it, keep serving
the last good version, and say why.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import pytest
from host_repository import (
    ENDLESS,
    EXPIRY,
    HANG,
    KEY_A,
    KEY_B,
    KEY_C,
    KEY_DEV,
    NOW,
    TRICKLE,
    HostRepository,
    OriginFront,
    default_files,
    sha256,
    trust_for,
)

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.fetch import Fetcher
from releasecontrol.host import FeatureHost, Limits, LoadedFeature
from releasecontrol.index import REMOTE_INDEX_PATH, FeatureEntry, VersionEntry, canonical_json
from releasecontrol.manifest import artifact_path, canonical_bytes, manifest_path
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.origin.http import OriginHttpServer

FETCH_TIMEOUT = 0.5
RELEASES = "features/checkout/releases.json"


def short(key: SigningKey) -> str:
    return key.keyid[:8] + "…"


class Clock:
    """A clock the test sets; one reading per refresh is what the host may take."""

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
    """checkout 1.0.0 published as stable: releases.json and remote-index.json at sequence 1."""
    repo = HostRepository(tmp_path / "origin")
    repo.add_version("checkout", "1.0.0")
    repo.publish()
    return repo


@pytest.fixture
def origin(repo: HostRepository) -> Iterator[Origin]:
    with OriginHttpServer(repo.root, port=0) as server, OriginFront(server.url) as front:
        yield Origin(repo, front, Clock(NOW + timedelta(hours=1)))


@pytest.fixture
def make_host(origin: Origin, tmp_path: Path) -> MakeHost:
    def make(*, trust: TrustStore | None = None, state: str = "host", **kwargs: Any) -> FeatureHost:
        return FeatureHost(
            origin.index_url,
            trust if trust is not None else trust_for(KEY_A),
            state_dir=tmp_path / state,
            clock=origin.clock,
            fetcher=Fetcher(timeout_seconds=FETCH_TIMEOUT),
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


def asset_paths(repo: HostRepository, feature_id: str, version: str) -> list[str]:
    files = default_files(feature_id, version)
    return [artifact_path(sha256(data), name) for name, data in files.items()]


# --- the attack table ---------------------------------------------------------------------------


Attack = Callable[[Origin], None]


def next_version(o: Origin, **releases_hooks: Any) -> None:
    """checkout 1.1.0 published; releases.json signed with `releases_hooks`, not yet pinned."""
    o.repo.add_version("checkout", "1.1.0")
    o.repo.publish_releases("checkout", **releases_hooks)


def remote_signed(**remote_hooks: Any) -> Attack:
    def attack(o: Origin) -> None:
        next_version(o)
        o.repo.publish_remote(**remote_hooks)

    return attack


def releases_signed(**releases_hooks: Any) -> Attack:
    def attack(o: Origin) -> None:
        next_version(o, **releases_hooks)
        o.repo.publish_remote()

    return attack


def remote_same_sequence(o: Origin) -> None:
    next_version(o)
    o.repo.publish_remote(sequence=o.repo.remote_sequence)


def releases_same_sequence(o: Origin) -> None:
    o.repo.add_version("checkout", "1.1.0")
    o.repo.put_releases("checkout", o.repo.releases_bytes("checkout"))  # still sequence 1
    o.repo.publish_remote()


def remote_frozen(o: Origin) -> None:
    # Nothing new is published; time passes the expiry of the copy the host holds.
    o.clock.now = NOW + EXPIRY


def releases_frozen(o: Origin) -> None:
    # The remote index is re-signed and fresh, but pins the same, now expired, releases.json.
    o.repo.now = NOW + EXPIRY
    o.repo.publish_remote()
    o.clock.now = NOW + EXPIRY + timedelta(hours=1)


def releases_swapped(o: Origin) -> None:
    next_version(o)
    o.repo.publish_remote()
    other = o.repo.releases_bytes("checkout", issued_at="2026-11-26T10:00:01Z")
    o.repo.put_releases("checkout", other, pin=False)


def manifest_replaced(o: Origin) -> None:
    next_version(o)
    o.repo.publish_remote()
    manifest = json.loads(o.repo.read(manifest_path("checkout", "1.1.0")))
    manifest["routes"].append("/everything")
    o.repo.write(manifest_path("checkout", "1.1.0"), canonical_bytes(manifest))


def artifact_replaced(change: Callable[[bytes], bytes]) -> Attack:
    def attack(o: Origin) -> None:
        next_version(o)
        o.repo.publish_remote()
        path = asset_paths(o.repo, "checkout", "1.1.0")[0]
        o.repo.write(path, change(o.repo.read(path)))

    return attack


def manifest_changed(**changes: Any) -> Attack:
    def attack(o: Origin) -> None:
        o.repo.add_version("checkout", "1.1.0", manifest_changes=changes)
        o.repo.publish()

    return attack


def manifest_bytes(data: bytes) -> Attack:
    """A signed index that pins `data` as 1.1.0's manifest, hash and all."""

    def attack(o: Origin) -> None:
        o.repo.add_version("checkout", "1.1.0")
        o.repo.write(manifest_path("checkout", "1.1.0"), data)
        o.repo.features["checkout"].versions["1.1.0"] = VersionEntry("1.1.0", sha256(data), NOW)
        o.repo.publish()

    return attack


def remote_garbage(o: Origin) -> None:
    o.repo.write(REMOTE_INDEX_PATH, b'{"signed": {"sequence": 2,')


def releases_garbage(o: Origin) -> None:
    o.repo.add_version("checkout", "1.1.0")
    o.repo.put_releases("checkout", b"<html>502 Bad Gateway</html>", sequence=2)
    o.repo.publish_remote()


def releases_off_origin(o: Origin) -> None:
    next_version(o)
    entry = o.repo.entries["checkout"]
    evil = "http://cdn.evil.example/features/checkout/releases.json"
    o.repo.entries["checkout"] = FeatureEntry(evil, entry.sha256, entry.sequence)
    o.repo.publish_remote()


def fault(path: str, kind: str | int, publish: bool = True) -> Attack:
    def attack(o: Origin) -> None:
        if publish:
            next_version(o)
            o.repo.publish_remote()
        o.front.faults[path] = kind

    return attack


def artifact_fault(kind: str) -> Attack:
    def attack(o: Origin) -> None:
        next_version(o)
        o.repo.publish_remote()
        o.front.faults[asset_paths(o.repo, "checkout", "1.1.0")[0]] = kind

    return attack


ATTACKS = [
    # signatures
    pytest.param(
        remote_signed(keys=[]), REMOTE_INDEX_PATH, "it carries no signatures", id="remote-unsigned"
    ),
    pytest.param(
        releases_signed(keys=[]), "checkout", "it carries no signatures", id="releases-unsigned"
    ),
    pytest.param(
        remote_signed(tamper=lambda body: body.update(sequence=99)),
        REMOTE_INDEX_PATH,
        f"bad signature from {short(KEY_A)}",
        id="remote-signature-invalid",
    ),
    pytest.param(
        releases_signed(tamper=lambda body: body["channels"].update(stable="1.0.0")),
        "checkout",
        f"bad signature from {short(KEY_A)}",
        id="releases-signature-invalid",
    ),
    pytest.param(
        remote_signed(keys=[KEY_C]),
        REMOTE_INDEX_PATH,
        f"signed by 0 of 1 required trusted key; unknown key {short(KEY_C)}",
        id="remote-untrusted-key",
    ),
    pytest.param(
        releases_signed(keys=[KEY_C]),
        "checkout",
        f"signed by 0 of 1 required trusted key; unknown key {short(KEY_C)}",
        id="releases-untrusted-key",
    ),
    # type and identity
    pytest.param(
        remote_signed(type="releases"),
        REMOTE_INDEX_PATH,
        'field "type" must be "remote-index"',
        id="remote-wrong-type",
    ),
    pytest.param(
        releases_signed(feature_id="search"),
        "checkout",
        "is the index of feature 'search', not 'checkout'",
        id="releases-for-another-feature",
    ),
    # rollback: the same sequence with other content
    pytest.param(
        remote_same_sequence,
        REMOTE_INDEX_PATH,
        "has sequence 1 with different content than this host saw at that sequence",
        id="remote-same-sequence-other-content",
    ),
    pytest.param(
        releases_same_sequence,
        "checkout",
        "has sequence 1 with different content than this host saw at that sequence",
        id="releases-same-sequence-other-content",
    ),
    # freeze
    pytest.param(
        remote_signed(expires_at="2026-11-26T10:30:00Z"),
        REMOTE_INDEX_PATH,
        "expired at 2026-11-26T10:30:00Z and it is now 2026-11-26T11:00:00Z",
        id="remote-expired",
    ),
    pytest.param(
        remote_frozen,
        REMOTE_INDEX_PATH,
        "expired at 2026-12-03T10:00:00Z and it is now 2026-12-03T10:00:00Z",
        id="remote-unchanged-and-expired",
    ),
    pytest.param(
        releases_signed(expires_at="2026-11-26T10:30:00Z"),
        "checkout",
        f"{RELEASES} expired at 2026-11-26T10:30:00Z",
        id="releases-expired",
    ),
    pytest.param(
        releases_frozen,
        "checkout",
        f"{RELEASES} expired at 2026-12-03T10:00:00Z and it is now 2026-12-03T11:00:00Z",
        id="releases-unchanged-and-expired",
    ),
    # mix-and-match
    pytest.param(
        releases_swapped,
        "checkout",
        f"{RELEASES} has SHA-256 ",
        id="releases-hash-not-the-pinned-one",
    ),
    pytest.param(
        releases_signed(pinned_sequence=3),
        "checkout",
        f"{RELEASES} has sequence 2, not the 3 remote-index.json pins",
        id="releases-sequence-not-the-pinned-one",
    ),
    pytest.param(
        releases_off_origin,
        "checkout",
        "remote-index.json points to http://cdn.evil.example/features/checkout/releases.json, "
        "outside its origin http://127.0.0.1:",
        id="releases-on-another-origin",
    ),
    # manifest and artifacts
    pytest.param(
        manifest_replaced,
        "checkout",
        f"{manifest_path('checkout', '1.1.0')} has SHA-256 ",
        id="manifest-hash-not-the-indexed-one",
    ),
    pytest.param(
        manifest_changed(id="search"),
        "checkout",
        "is the manifest of feature 'search', not 'checkout'",
        id="manifest-for-another-feature",
    ),
    pytest.param(
        manifest_changed(version="1.0.0"),
        "checkout",
        "is the manifest of version '1.0.0', not '1.1.0'",
        id="manifest-for-another-version",
    ),
    pytest.param(
        manifest_changed(entry="missing.js"),
        "checkout",
        "must be the path of one of the listed assets",
        id="manifest-invalid",
    ),
    pytest.param(
        artifact_replaced(lambda data: data.upper()),
        "checkout",
        "has SHA-256 ",
        id="artifact-wrong-hash",
    ),
    pytest.param(
        artifact_replaced(lambda data: data[:-3]),
        "checkout",
        "bytes, not the ",
        id="artifact-too-short",
    ),
    pytest.param(
        artifact_replaced(lambda data: data + b"alert(1);"),
        "checkout",
        "-byte limit",
        id="artifact-too-long",
    ),
    # malformed files
    pytest.param(
        remote_garbage, REMOTE_INDEX_PATH, "is not valid UTF-8 JSON", id="remote-malformed-json"
    ),
    pytest.param(
        releases_garbage, "checkout", "is not valid UTF-8 JSON", id="releases-malformed-json"
    ),
    pytest.param(
        manifest_bytes(b'{"id": "checkout", '),
        "checkout",
        "manifest.json is not valid UTF-8 JSON",
        id="manifest-malformed-json",
    ),
    # a misbehaving origin: endless data, slow and hung, errors
    pytest.param(
        fault(REMOTE_INDEX_PATH, ENDLESS, publish=False),
        REMOTE_INDEX_PATH,
        "remote-index.json is larger than the 33554432-byte limit",
        id="remote-endless-data",
    ),
    pytest.param(
        fault(RELEASES, ENDLESS),
        "checkout",
        "releases.json is larger than the 33554432-byte limit",
        id="releases-endless-data",
    ),
    pytest.param(
        artifact_fault(ENDLESS),
        "checkout",
        "-byte limit",
        id="artifact-endless-data",
    ),
    pytest.param(
        fault(REMOTE_INDEX_PATH, TRICKLE, publish=False),
        REMOTE_INDEX_PATH,
        f"remote-index.json timed out after {FETCH_TIMEOUT:g} s",
        id="remote-slow-origin",
    ),
    pytest.param(
        fault(RELEASES, HANG),
        "checkout",
        f"releases.json timed out after {FETCH_TIMEOUT:g} s",
        id="releases-hung-origin",
    ),
    pytest.param(
        artifact_fault(HANG),
        "checkout",
        f"timed out after {FETCH_TIMEOUT:g} s",
        id="artifact-hung-origin",
    ),
    pytest.param(
        fault(REMOTE_INDEX_PATH, 503, publish=False),
        REMOTE_INDEX_PATH,
        "answered HTTP 503",
        id="remote-unavailable",
    ),
    pytest.param(
        fault(manifest_path("checkout", "1.1.0"), 404),
        "checkout",
        "answered HTTP 404",
        id="manifest-missing",
    ),
]


class TestAttacks:
    @pytest.mark.parametrize(("attack", "refused_item", "fragment"), ATTACKS)
    def test_refuses_keeps_serving_and_says_why(
        self,
        origin: Origin,
        make_host: MakeHost,
        attack: Attack,
        refused_item: str,
        fragment: str,
    ) -> None:
        """The host refuses the attack, keeps serving 1.0.0, and the reason names the problem."""
        host = loaded_host(make_host, origin)
        attack(origin)
        report = host.refresh()
        assert not report.ok
        assert list(report.refused) == [refused_item]
        assert fragment in report.refused[refused_item]
        assert "\n" not in report.refused[refused_item]
        assert host.refused == report.refused
        assert report.loaded == {"checkout": "1.0.0"}
        served = host.features["checkout"]
        assert served.version == "1.0.0"
        assert served.artifact_bytes("index.js") == default_files("checkout", "1.0.0")["index.js"]

    def test_a_refused_feature_does_not_hold_back_the_others(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """One feature's bad update is refused while another feature's update loads."""
        origin.repo.add_version("search", "2.0.0")
        origin.repo.publish()
        host = loaded_host(make_host, origin)
        origin.repo.add_version("search", "2.1.0")
        origin.repo.publish()
        releases_signed(keys=[KEY_C])(origin)
        report = host.refresh()
        assert list(report.refused) == ["checkout"]
        assert report.loaded == {"checkout": "1.0.0", "search": "2.1.0"}

    def test_a_refused_feature_is_retried_and_loads_once_fixed(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A feature refused for a passing fault is fetched again and loads when the fault ends."""
        host = loaded_host(make_host, origin)
        artifact_fault(HANG)(origin)
        assert list(host.refresh().refused) == ["checkout"]
        origin.front.faults.clear()
        report = host.refresh()
        assert report.ok
        assert report.loaded == {"checkout": "1.1.0"}
        assert report.fetched == ("checkout",)


class TestThreshold:
    @pytest.fixture
    def two_key_repo(self, origin: Origin) -> HostRepository:
        origin.repo.keys = [KEY_A, KEY_B]
        origin.repo.publish_releases("checkout")
        origin.repo.publish_remote()
        return origin.repo

    @pytest.mark.parametrize(
        ("signers", "duplicate", "fragment"),
        [
            pytest.param([KEY_A], False, "signed by 1 of 2 required trusted keys", id="one-key"),
            pytest.param(
                [KEY_A], True, "signed by 1 of 2 required trusted keys", id="same-key-twice"
            ),
            pytest.param(
                [KEY_A, KEY_C],
                False,
                f"signed by 1 of 2 required trusted keys; unknown key {short(KEY_C)}",
                id="one-trusted-one-unknown",
            ),
        ],
    )
    def test_under_the_threshold_is_refused(
        self,
        origin: Origin,
        make_host: MakeHost,
        two_key_repo: HostRepository,
        signers: list[SigningKey],
        duplicate: bool,
        fragment: str,
    ) -> None:
        """With threshold 2 one distinct trusted key is not enough, however often it signs."""
        host = loaded_host(make_host, origin, trust=trust_for(KEY_A, KEY_B, threshold=2))
        two_key_repo.add_version("checkout", "1.1.0")
        two_key_repo.features["checkout"].sequence += 1
        data = two_key_repo.releases_bytes("checkout", keys=signers)
        if duplicate:
            document = json.loads(data)
            document["signatures"] *= 2
            data = canonical_json(document)
        two_key_repo.put_releases("checkout", data)
        two_key_repo.publish_remote()
        report = host.refresh()
        assert report.refused["checkout"] == f"{RELEASES}: {fragment}"
        assert host.features["checkout"].version == "1.0.0"

    def test_two_distinct_keys_meet_it(
        self, origin: Origin, make_host: MakeHost, two_key_repo: HostRepository
    ) -> None:
        """Two distinct trusted keys meet a threshold of 2, on both index files."""
        host = loaded_host(make_host, origin, trust=trust_for(KEY_A, KEY_B, threshold=2))
        assert host.features["checkout"].releases_sequence == 2


class TestDevKeys:
    TRUST = trust_for(KEY_A, KEY_DEV, dev=[KEY_DEV])

    @pytest.mark.parametrize(
        "refused_file",
        [pytest.param(RELEASES, id="releases"), pytest.param(REMOTE_INDEX_PATH, id="remote")],
    )
    def test_a_dev_key_does_not_count_while_dev_keys_are_off(
        self, origin: Origin, make_host: MakeHost, refused_file: str
    ) -> None:
        """A dev key's signature is not counted, and the reason says the setting is off."""
        host = loaded_host(make_host, origin, trust=self.TRUST)
        if refused_file == RELEASES:
            releases_signed(keys=[KEY_DEV])(origin)
        else:
            remote_signed(keys=[KEY_DEV])(origin)
        report = host.refresh()
        item = "checkout" if refused_file == RELEASES else REMOTE_INDEX_PATH
        assert report.refused[item] == (
            f"{refused_file}: signed by 0 of 1 required trusted key; dev key {short(KEY_DEV)} "
            "not accepted: FEATURE_ALLOW_INSECURE_DEV_KEYS is off"
        )
        assert host.features["checkout"].version == "1.0.0"

    def test_a_dev_key_counts_when_dev_keys_are_allowed(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """With insecure dev keys allowed, files signed only by a trusted dev key load."""
        host = loaded_host(make_host, origin, trust=self.TRUST, allow_insecure_dev_keys=True)
        origin.repo.keys = [KEY_DEV]
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        report = host.refresh()
        assert report.ok, report.refused
        assert report.loaded == {"checkout": "1.1.0"}

    def test_a_real_key_beside_a_dev_key_is_enough(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A dev signature beside a real one is ignored, not an error, while dev keys are off."""
        host = loaded_host(make_host, origin, trust=self.TRUST)
        origin.repo.keys = [KEY_A, KEY_DEV]
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        assert host.refresh().loaded == {"checkout": "1.1.0"}


class TestRollback:
    @pytest.fixture
    def old_files(self, origin: Origin) -> dict[str, bytes]:
        """The sequence-1 files, saved before sequence 2 (checkout 1.1.0) is published."""
        return {path: origin.repo.read(path) for path in (REMOTE_INDEX_PATH, RELEASES)}

    def publish_v2(self, origin: Origin) -> None:
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()

    @pytest.mark.parametrize(
        "restart", [pytest.param(False, id="same-host"), pytest.param(True, id="after-restart")]
    )
    def test_an_older_remote_index_is_refused(
        self, origin: Origin, make_host: MakeHost, old_files: dict[str, bytes], restart: bool
    ) -> None:
        """A replayed remote-index.json with a lower sequence is refused, also after a restart."""
        host = make_host()
        self.publish_v2(origin)
        assert host.refresh().loaded == {"checkout": "1.1.0"}
        for path, data in old_files.items():
            origin.repo.write(path, data)
        if restart:
            host = make_host()
        report = host.refresh()
        assert report.refused[REMOTE_INDEX_PATH].startswith(
            "remote-index.json has sequence 1, lower than 2, the highest this host has seen"
        )
        assert report.refused[REMOTE_INDEX_PATH].endswith("refusing a rollback")
        assert report.loaded == ({} if restart else {"checkout": "1.1.0"})

    @pytest.mark.parametrize(
        "restart", [pytest.param(False, id="same-host"), pytest.param(True, id="after-restart")]
    )
    def test_an_older_releases_file_under_a_newer_remote_index_is_refused(
        self, origin: Origin, make_host: MakeHost, old_files: dict[str, bytes], restart: bool
    ) -> None:
        """A new remote index pinning an older releases.json is refused for that feature."""
        host = make_host()
        self.publish_v2(origin)
        assert host.refresh().loaded == {"checkout": "1.1.0"}
        origin.repo.put_releases("checkout", old_files[RELEASES])
        origin.repo.publish_remote()
        if restart:
            host = make_host()
        report = host.refresh()
        assert list(report.refused) == ["checkout"]
        assert report.refused["checkout"].startswith(
            f"{RELEASES} has sequence 1, lower than 2, the highest this host has seen"
        )
        assert report.loaded == ({} if restart else {"checkout": "1.1.0"})

    def test_a_restart_accepts_the_same_files_again(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """What a host saw before a restart is not mistaken for a replay after it."""
        make_host().refresh()
        report = make_host().refresh()
        assert report.ok and report.loaded == {"checkout": "1.0.0"}

    def test_a_rollback_by_the_control_plane_is_followed(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """An operator's rollback lowers the version but raises the sequence: the host follows."""
        host = make_host()
        self.publish_v2(origin)
        host.refresh()
        origin.repo.set_channels("checkout", stable="1.0.0", canary=None)
        origin.repo.publish()
        report = host.refresh()
        assert report.ok and report.loaded == {"checkout": "1.0.0"}
        assert host.features["checkout"].releases_sequence == 3

    def test_the_highest_sequences_are_kept_on_disk(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """state.json records the highest remote and per-feature sequences and file hashes."""
        make_host().refresh()
        state = json.loads((tmp_path / "host" / "state.json").read_text())
        assert state == {
            "format": 1,
            "remote_index": {
                "sequence": 1,
                "sha256": sha256(origin.repo.read(REMOTE_INDEX_PATH)),
            },
            "features": {"checkout": {"sequence": 1, "sha256": sha256(origin.repo.read(RELEASES))}},
        }

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param("{broken", id="not-json"),
            pytest.param('{"format": 99}', id="other-format"),
            pytest.param('{"format": 1, "remote_index": null, "features": []}', id="bad-shape"),
        ],
    )
    def test_an_unusable_state_file_stops_the_host_instead_of_being_forgotten(
        self, make_host: MakeHost, tmp_path: Path, content: str
    ) -> None:
        """A corrupt state.json is a ConfigError naming it; it is never silently reset."""
        (tmp_path / "host").mkdir()
        (tmp_path / "host" / "state.json").write_text(content)
        with pytest.raises(ConfigError, match=r"host state file .*state\.json cannot be used"):
            make_host()


class TestGoodPaths:
    def test_a_cold_load_fetches_and_verifies_everything(
        self, origin: Origin, make_host: MakeHost, tmp_path: Path
    ) -> None:
        """The first refresh fetches the index, releases.json, the manifest and every asset."""
        host = make_host()
        report = host.refresh()
        assert report.ok and report.refused == {}
        assert report.remote_sequence == 1
        assert report.fetched == ("checkout",)
        assert report.loaded == {"checkout": "1.0.0"}
        assert origin.clock.readings == 1
        assert origin.front.paths() == [
            REMOTE_INDEX_PATH,
            RELEASES,
            manifest_path("checkout", "1.0.0"),
            *asset_paths(origin.repo, "checkout", "1.0.0"),
        ]
        feature = host.features["checkout"]
        assert isinstance(feature, LoadedFeature)
        assert (feature.feature_id, feature.version, feature.channel) == (
            "checkout",
            "1.0.0",
            "stable",
        )
        assert feature.releases_sequence == 1
        manifest_bytes = origin.repo.read(manifest_path("checkout", "1.0.0"))
        assert feature.manifest_sha256 == sha256(manifest_bytes)
        assert dict(feature.manifest) == json.loads(manifest_bytes)
        for path, data in default_files("checkout", "1.0.0").items():
            assert feature.artifact_bytes(path) == data
            assert feature.artifacts[path] == tmp_path / "host" / "artifacts" / sha256(data)

    def test_an_unchanged_remote_index_is_a_304_and_nothing_else(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """Polling an unchanged origin costs one conditional request answered 304."""
        host = loaded_host(make_host, origin)
        report = host.refresh()
        assert report.ok and report.fetched == ()
        assert report.loaded == {"checkout": "1.0.0"}
        [request] = origin.front.requests
        assert request.path == REMOTE_INDEX_PATH
        assert request.status == 304
        assert request.if_none_match == f'"{sha256(origin.repo.read(REMOTE_INDEX_PATH))}"'

    def test_refresh_fetches_only_the_releases_that_changed(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """When one of two features changes, only its releases.json and new files are fetched."""
        origin.repo.add_version("search", "2.0.0")
        origin.repo.publish()
        host = loaded_host(make_host, origin)
        origin.repo.add_version("search", "2.1.0")
        origin.repo.publish()
        report = host.refresh()
        assert report.ok and report.fetched == ("search",)
        assert report.loaded == {"checkout": "1.0.0", "search": "2.1.0"}
        assert origin.front.paths() == [
            REMOTE_INDEX_PATH,
            "features/search/releases.json",
            manifest_path("search", "2.1.0"),
            *asset_paths(origin.repo, "search", "2.1.0"),
        ]

    def test_assets_already_in_the_cache_are_not_fetched_again(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A new version sharing an asset with the old one fetches only the changed asset."""
        host = loaded_host(make_host, origin)
        files = dict(default_files("checkout", "1.0.0"), **{"index.js": b"export default 2;\n"})
        origin.repo.add_version("checkout", "1.1.0", files)
        origin.repo.publish()
        assert host.refresh().loaded == {"checkout": "1.1.0"}
        assert origin.front.paths()[-1] == artifact_path(sha256(b"export default 2;\n"), "index.js")
        css = artifact_path(sha256(files["styles/main.css"]), "styles/main.css")
        assert css not in origin.front.paths()

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
        """A stable host serves the active version; a canary host serves the running canary."""
        origin.repo.add_version("checkout", "1.1.0", channel="canary")
        origin.repo.publish()
        host = make_host(channel=channel)
        assert host.refresh().loaded == {"checkout": version}
        assert host.features["checkout"].channel == channel

    def test_a_canary_host_serves_stable_when_no_canary_runs(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """Following canary means the canary while one runs, and stable otherwise."""
        host = make_host(channel="canary")
        assert host.refresh().loaded == {"checkout": "1.0.0"}
        assert host.features["checkout"].channel == "stable"

    def test_a_canary_deploy_does_not_refetch_a_stable_hosts_files(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A new releases.json that keeps the stable version costs a stable host no manifest."""
        host = loaded_host(make_host, origin)
        origin.repo.add_version("checkout", "1.1.0", channel="canary")
        origin.repo.publish()
        report = host.refresh()
        assert report.ok and report.loaded == {"checkout": "1.0.0"}
        assert host.features["checkout"].releases_sequence == 2
        assert [p for p in origin.front.paths() if "manifest" in p] == []

    def test_a_feature_gone_from_the_remote_index_is_dropped(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """A feature the remote index no longer lists is no longer served."""
        origin.repo.add_version("search", "2.0.0")
        origin.repo.publish()
        host = loaded_host(make_host, origin)
        origin.repo.remove_feature("search")
        origin.repo.publish_remote()
        report = host.refresh()
        assert report.ok and report.loaded == {"checkout": "1.0.0"}
        assert list(host.features) == ["checkout"]

    def test_snapshot_is_plain_json(self, origin: Origin, make_host: MakeHost) -> None:
        """snapshot() says what is served and refused, as JSON values."""
        host = loaded_host(make_host, origin)
        releases_signed(keys=[KEY_C])(origin)
        host.refresh()
        snapshot = json.loads(json.dumps(host.snapshot()))
        manifest = json.loads(origin.repo.read(manifest_path("checkout", "1.0.0")))
        assert snapshot == {
            "index_url": origin.index_url,
            "channel": "stable",
            "remote_sequence": 2,
            "last_refresh_at": "2026-11-26T11:00:00Z",
            "loaded": {
                "checkout": {
                    "version": "1.0.0",
                    "channel": "stable",
                    "sequence": 1,
                    "manifest_sha256": sha256(canonical_bytes(manifest)),
                    "artifacts": {a["path"]: a["sha256"] for a in manifest["assets"]},
                }
            },
            "refused": {"checkout": host.refused["checkout"]},
        }

    def test_an_index_url_ending_in_a_slash_means_the_index_inside(
        self, origin: Origin, tmp_path: Path
    ) -> None:
        """An origin URL without the file name reads its remote-index.json."""
        host = FeatureHost(
            origin.front.url, trust_for(KEY_A), state_dir=tmp_path / "h", clock=origin.clock
        )
        assert host.index_url == origin.index_url
        assert host.refresh().loaded == {"checkout": "1.0.0"}

    def test_a_naive_clock_is_a_programming_error(self, origin: Origin, tmp_path: Path) -> None:
        """A clock without a zone cannot be compared with expiry times, so refresh raises."""
        host = FeatureHost(
            origin.index_url,
            trust_for(KEY_A),
            state_dir=tmp_path / "h",
            clock=lambda: datetime(2026, 11, 26, 11, 0, 0),
        )
        with pytest.raises(ValueError, match="aware"):
            host.refresh()

    def test_a_changed_cache_file_is_caught_on_read(
        self, origin: Origin, make_host: MakeHost
    ) -> None:
        """artifact_bytes checks the hash again, so a cache edited on disk is not served."""
        feature = loaded_host(make_host, origin).features["checkout"]
        feature.artifacts["index.js"].write_bytes(b"alert('owned');")
        with pytest.raises(VerificationError, match="the cache was changed on disk"):
            feature.artifact_bytes("index.js")
        with pytest.raises(KeyError, match=r"no asset 'nope\.js'"):
            feature.artifact_bytes("nope.js")

    def test_limits_are_configurable(self, origin: Origin, make_host: MakeHost) -> None:
        """A releases.json over a small configured limit is refused, naming the limit."""
        report = make_host(limits=Limits(max_index_bytes=4096, max_manifest_bytes=64)).refresh()
        assert "larger than the 64-byte limit" in report.refused["checkout"]
        with pytest.raises(ValueError, match="max_artifact_bytes must be a positive"):
            Limits(max_artifact_bytes=0)


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
        trust_file.write_text(trust_for(KEY_A).to_json())
        return {
            "FEATURE_REMOTE_INDEX_URL": origin.index_url,
            "FEATURE_TRUST_PUBLIC_KEYS_PATH": str(trust_file),
            "RELEASECONTROL_HOME": str(tmp_path / "home"),
        }

    def test_builds_a_host_that_loads(
        self, env: dict[str, str], origin: Origin, tmp_path: Path
    ) -> None:
        """The contract's variables make a working host with its state under RELEASECONTROL_HOME."""
        host = FeatureHost.from_environment(env, clock=origin.clock)
        assert host.index_url == origin.index_url
        assert host.refresh().loaded == {"checkout": "1.0.0"}
        assert (tmp_path / "home" / "host" / "state.json").is_file()

    def test_state_defaults_to_the_current_directory(
        self, env: dict[str, str], origin: Origin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without RELEASECONTROL_HOME the state lives in ./.releasecontrol/host."""
        monkeypatch.chdir(tmp_path)
        del env["RELEASECONTROL_HOME"]
        FeatureHost.from_environment(env, clock=origin.clock).refresh()
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
                f"FEATURE_TRUST_PUBLIC_KEYS_PATH trusts dev key {short(KEY_DEV)}, but "
                "RELEASECONTROL_ENV=production refuses",
                id="dev-key-trusted",
            ),
        ],
    )
    def test_production_refuses_dev_keys(
        self,
        env: dict[str, str],
        tmp_path: Path,
        changes: dict[str, str],
        dev_trusted: bool,
        fragment: str,
    ) -> None:
        """In production, allowing dev keys or trusting one is refused, naming the setting."""
        env.update(changes)
        if dev_trusted:
            trust = trust_for(KEY_A, KEY_DEV, dev=[KEY_DEV])
            Path(env["FEATURE_TRUST_PUBLIC_KEYS_PATH"]).write_text(trust.to_json())
        with pytest.raises(ConfigError, match=fragment):
            FeatureHost.from_environment(env)

    def test_development_allows_dev_keys(self, env: dict[str, str], origin: Origin) -> None:
        """Outside production the flag is honoured; RELEASECONTROL_ENV wins over NODE_ENV."""
        env.update(
            {
                "RELEASECONTROL_ENV": "development",
                "NODE_ENV": "production",
                "FEATURE_ALLOW_INSECURE_DEV_KEYS": "on",
                "FEATURE_TRUST_PUBLIC_KEYS_JSON": trust_for(KEY_DEV, dev=[KEY_DEV]).to_json(),
            }
        )
        origin.repo.keys = [KEY_DEV]
        origin.repo.add_version("checkout", "1.1.0")
        origin.repo.publish()
        host = FeatureHost.from_environment(env, clock=origin.clock)
        assert host.refresh().loaded == {"checkout": "1.1.0"}

    def test_keyword_arguments_reach_the_host(self, env: dict[str, str], origin: Origin) -> None:
        """Constructor options (here the channel) pass through from_environment."""
        origin.repo.add_version("checkout", "1.1.0", channel="canary")
        origin.repo.publish()
        host = FeatureHost.from_environment(env, clock=origin.clock, channel="canary")
        assert host.refresh().loaded == {"checkout": "1.1.0"}

    def test_an_unknown_channel_is_refused(self, env: dict[str, str]) -> None:
        """A channel other than stable or canary is a ConfigError naming it."""
        with pytest.raises(ConfigError, match="channel 'beta' is not one of stable, canary"):
            FeatureHost.from_environment(env, channel="beta")
