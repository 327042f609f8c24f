"""FeatureHost: what a host application embeds to load only features it has verified.

The CDN is not trusted; only the root keys of the trust file are. The host
follows host protocol v2 (docs/host-protocol.md); every check lives in
`releasecontrol.verifier`, and this module does the fetching, the caching and
the bookkeeping around it. One `refresh()` reads the clock once and then:

1. `remote-index.json`, conditionally (If-None-Match with the ETag of the last
   verified copy), verified with the root chain brought up to date on the way:
   a failure here refuses the whole refresh.
2. The shard of every bin holding a feature the host needs, when its pin changed
   since the shard last verified: a failure refuses that bin's features.
3. For each needed feature whose pin changed, its `releases.json`; then the
   version its channel selects: the manifest, then every asset (unless already
   in the content-addressed cache), checked for size and SHA-256.
4. Only then is that feature's `LoadedFeature` replaced. A failure refuses that
   feature alone; the others still load. A feature no longer listed is dropped.

While a canary runs, its signed `canary_weight` says which share of users get it
(docs/host-protocol.md, section 11). A host on the "canary" channel serves the
canary whatever the weight; a host on "stable" puts a bucketing key in one of
10,000 buckets of each feature (`releasecontrol.bucketing`) and serves the canary
iff that bucket is below the weight. `features` is what this host's own key gets
(the `bucketing_key` given, else a random key kept in `<state_dir>/bucketing-key`
from the first canary on). A server serving many users asks per user:
`version_for(feature_id, user_key)`. For that, a host made with `both_sides=True`
(the default) verifies and keeps every version some key can get, the stable and
the canary version while 0 < weight < 10,000, and replaces a feature only once
all of them verified: whatever a user is handed is complete on disk.

A refresh never raises for what the origin served or failed to serve: the host
keeps serving its last good state, and `RefreshReport.refusals` says why, with
the protocol's refusal code and the file. What the host trusts and has seen (the
trusted root and the high-water marks) is kept in `<state_dir>/state.json`,
written atomically once per refresh, so a restart does not forget it; verified
assets are kept in `<state_dir>/artifacts/`.

With a beacon URL and key (`beacon_url`, `beacon_key`), the host reports per
feature version how many loads began and how many failed to the control plane,
which judges a canary by them: the application calls `report_load` and
`report_failure` (an entry that threw, a load that failed), and the host counts
the files it could not download or refused for a version it was loading. Counts
only, batched, sent off the caller's thread; `close()` sends the last batch.
`releasecontrol.beacon` says what is sent and what each answer does.

`FeatureHost.from_environment` reads the contract's settings:
`FEATURE_REMOTE_INDEX_URL`, `FEATURE_TRUST_PUBLIC_KEYS_JSON` /
`FEATURE_TRUST_PUBLIC_KEYS_PATH`, `FEATURE_ALLOW_INSECURE_DEV_KEYS`,
`FEATURE_BEACON_URL` and `FEATURE_BEACON_KEY`, and refuses dev keys in production.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from releasecontrol.beacon import (
    DEFAULT_INTERVAL_SECONDS,
    ENV_BEACON_KEY,
    ENV_BEACON_URL,
    Beacons,
    FailureKind,
    check_report,
)
from releasecontrol.bucketing import WEIGHT_SCALE, bucket, check_bucketing_key, new_bucketing_key
from releasecontrol.errors import ConfigError, InvalidArgument, NotFound, VerificationError
from releasecontrol.fetch import Fetched, Fetcher, FetchError
from releasecontrol.files import atomic_create, atomic_write
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    ReleasesIndex,
    VersionEntry,
    format_time,
    releases_path,
)
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol.root import root_path
from releasecontrol.shards import Pin, RemoteIndex, Shard, bin_of, shard_path
from releasecontrol.trust import (
    ENV_ALLOW_DEV_KEYS,
    ENV_TRUST_JSON,
    ENV_TRUST_PATH,
    TrustStore,
    short_keyid,
)
from releasecontrol.verifier import (
    Refusal,
    Signed,
    Verifier,
    check_asset,
    check_manifest,
    select_version,
)

__all__ = [
    "CHANNELS",
    "ENV_REMOTE_INDEX_URL",
    "FeatureHost",
    "Limits",
    "LoadedFeature",
    "RefreshReport",
    "Refusal",
    "production_setting",
]

logger = logging.getLogger(__name__)

CHANNELS = ("stable", "canary")
ENV_REMOTE_INDEX_URL = "FEATURE_REMOTE_INDEX_URL"
STATE_FILE = "state.json"
KEY_FILE = "bucketing-key"
ARTIFACTS_DIR = "artifacts"
# Fetching is mostly waiting on the origin; a few features at once hide that.
DEFAULT_PARALLEL_FETCHES = 8
# Refusal codes of a file that did not arrive (a failed load), not one that arrived wrong.
_DOWNLOAD_CODES = frozenset({"fetch", "timeout"})
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Limits:
    """The most a host downloads per file: what an endless-data attack can cost it
    (docs/host-protocol.md, section 7). Each request also has a deadline: the
    fetcher's `timeout_seconds`."""

    max_index_bytes: int = 2 << 20
    """Largest `remote-index.json` accepted: it names at most 65,536 shards (~120 bytes each)."""

    max_root_bytes: int = 1 << 20
    """Largest root accepted."""

    max_pinned_bytes: int = 16 << 20
    """The most a pin's `length` may say (shards, `releases.json`); each such file is also
    cut off at its pinned length."""

    max_manifest_bytes: int = 1 << 20
    """Largest `manifest.json` accepted."""

    max_artifact_bytes: int = 64 << 20
    """Largest single asset accepted; each asset is also cut off at the size its manifest lists."""

    def __post_init__(self) -> None:
        for name in (
            "max_index_bytes",
            "max_root_bytes",
            "max_pinned_bytes",
            "max_manifest_bytes",
            "max_artifact_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive number of bytes, not {value!r}")


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class LoadedFeature:
    """One feature version the host verified and serves."""

    feature_id: str
    version: str
    channel: str
    """The side this version was chosen from: "canary" when the host follows the canary
    channel and one runs, or the key's bucket is below the canary's weight; else "stable"."""
    releases_sequence: int
    """The sequence of the releases.json it was selected from."""
    manifest: Mapping[str, Any]
    manifest_sha256: str
    artifacts: Mapping[str, Path]
    """Manifest asset path -> the verified file in the host's content-addressed cache."""
    keyids: frozenset[str] = frozenset()
    """The online keys whose signatures counted on its releases.json."""
    canary_weight: int | None = None
    """While a canary runs: the share of bucketed users it serves, out of 10,000 (0 when its
    releases.json names no weight); None when no canary runs."""
    bucket: int | None = None
    """The bucket (0 to 9,999) of the key the side was chosen for (this host's own key in
    `FeatureHost.features`, the user's in `version_for`) when it was chosen by key: a canary
    runs and the host follows the stable channel. None otherwise."""

    def artifact_bytes(self, path: str) -> bytes:
        """The bytes of asset `path`, checked again against the manifest's SHA-256.

        Raises KeyError for a path the manifest does not list, and
        VerificationError when the cached file changed on disk since it was verified.
        """
        if path not in self.artifacts:
            raise KeyError(f"{self.feature_id} {self.version} has no asset {path!r}")
        file = self.artifacts[path]
        expected = next(a["sha256"] for a in self.manifest["assets"] if a["path"] == path)
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise VerificationError(
                f"cached asset {path!r} of {self.feature_id} {self.version} at {file} "
                f"cannot be read ({exc.strerror or exc}); refresh to fetch it again"
            ) from None
        if _sha256(data) != expected:
            raise VerificationError(
                f"cached asset {path!r} of {self.feature_id} {self.version} at {file} no longer "
                f"has SHA-256 {short_keyid(expected)}: the cache was changed on disk"
            )
        return data


@dataclass(frozen=True)
class RefreshReport:
    """What one refresh did: what it fetched, what is served now, and what it refused."""

    ok: bool
    """True when nothing was refused."""
    remote_sequence: int | None
    """The sequence of the remote index now trusted; None before the first good one."""
    fetched: tuple[str, ...]
    """The features whose releases.json was fetched this time."""
    loaded: Mapping[str, str]
    """feature_id -> the version served now (the last good one where an update was refused)."""
    refusals: Mapping[str, Refusal]
    """What was refused, by "remote-index.json" (the top level or a root), a shard's path,
    or a feature id: the protocol's code, the file and why."""
    root_version: int | None = None
    """The version of the trusted root."""

    @property
    def refused(self) -> Mapping[str, str]:
        """Each refusal's sentence, by the same keys as `refusals`."""
        return {key: refusal.message for key, refusal in self.refusals.items()}


@dataclass(frozen=True)
class _Source:
    """Where a loaded feature came from: the pin it was verified under, and its releases.json."""

    pin: Pin
    releases: Signed[ReleasesIndex]


@dataclass(frozen=True)
class _Sides:
    """Every version of one feature the host verified from one releases.json, by side."""

    weight: int | None
    """The canary's weight (0 when the file names none); None when no canary runs."""
    stable: LoadedFeature | None
    canary: LoadedFeature | None
    """Each None when that side has no version, or this host does not load it."""

    def get(self, side: str) -> LoadedFeature | None:
        return self.canary if side == "canary" else self.stable


@dataclass
class _FeatureOutcome:
    """What refreshing one feature found; the refreshing thread applies it, in id order."""

    fetched: bool = False
    """Its releases.json was fetched."""
    source: _Source | None = None
    loaded: LoadedFeature | None = None
    """The side of this host's own key."""
    sides: _Sides | None = None
    refused: Refusal | None = None


class _HostKey:
    """This host's own bucketing key: the one given, else a random one kept in a file from its
    first need on, so a restart keeps the host's users on their side."""

    def __init__(self, given: str | None, file: Path) -> None:
        """Raises ConfigError for a key file that exists but cannot be read or holds no key."""
        self._file = file
        self._lock = threading.Lock()
        self._key = given if given is not None else self._read()

    def _read(self) -> str | None:
        try:
            text = self._file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise self._bad(str(getattr(exc, "strerror", None) or exc)) from None
        try:
            return check_bucketing_key(text.removesuffix("\n"))
        except InvalidArgument as exc:
            raise self._bad(exc.message) from None

    def _bad(self, problem: str) -> ConfigError:
        # A new key would move this host to a random side: say so rather than do it quietly.
        return ConfigError(
            f"bucketing key file {self._file} cannot be used ({problem}); restore it, or delete "
            "it to draw a new key (this host may then change sides of running canaries once)"
        )

    def get(self) -> str:
        """The key; a random one is drawn and stored the first time one is needed."""
        with self._lock:
            if self._key is None:
                key = new_bucketing_key()
                try:
                    if not atomic_create(self._file, (key + "\n").encode("ascii")):
                        key = self._read() or key  # another host on this state directory won
                except (OSError, ConfigError) as exc:
                    # Serving on with a key kept in memory only beats refusing every canary.
                    logger.error("bucketing key not saved path=%s error=%s", self._file, exc)
                self._key = key
            return self._key


def _utc_now() -> datetime:
    return datetime.now(UTC)


class FeatureHost:
    """Loads features from a CDN after verifying everything; see the module docstring.

    Thread-safe: refreshes are serialized, and `features` is replaced, never
    changed in place, so a reader always sees one consistent state.
    """

    def __init__(
        self,
        index_url: str,
        trust: TrustStore,
        *,
        state_dir: Path,
        allow_insecure_dev_keys: bool = False,
        channel: str = "stable",
        features: Sequence[str] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], datetime] = _utc_now,
        fetcher: Fetcher | None = None,
        parallel_fetches: int = DEFAULT_PARALLEL_FETCHES,
        bucketing_key: str | None = None,
        both_sides: bool = True,
        beacon_url: str | None = None,
        beacon_key: str | None = None,
        beacon_interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        """Raises ConfigError for an index URL that is not http(s), an unknown channel,
        a `parallel_fetches` below 1, a bucketing key that is not one, or a state directory
        or bucketing key file that cannot be used (naming it and the fix).

        `trust`: the trust file (the root keys, their threshold and root version).
        `features`: the feature ids this host needs; None for every published one.
        `parallel_fetches`: how many changed features are fetched and verified at
        once (each feature's own files in order); what is served is decided as if
        one at a time, in feature id order.
        `bucketing_key`: whose side of a percentage canary `features` serves (1 to 256
        bytes of UTF-8, e.g. a user or device id); None for a random key kept in
        `<state_dir>/bucketing-key`.
        `both_sides`: also verify and keep the version on the other side of a running
        canary (when some key gets it), so `version_for` can hand every user theirs; False
        for a host serving one user, which then downloads only its own side.
        `beacon_url`, `beacon_key`: the control plane's beacon listener and the site's
        publishable key, both or neither; with them the host sends its counts of loads and
        failures (`report_load`, `report_failure`) every `beacon_interval_seconds` while it
        has any, and at `close()`. A URL that is not http(s), or a key that cannot be one,
        is a ConfigError.
        """
        self._index_url = _normalize_index_url(index_url)
        if channel not in CHANNELS:
            raise ConfigError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
        if isinstance(parallel_fetches, bool) or not (
            isinstance(parallel_fetches, int) and parallel_fetches >= 1
        ):
            raise ConfigError(f"parallel_fetches must be 1 or more, not {parallel_fetches!r}")
        self._parallel_fetches = parallel_fetches
        if bucketing_key is not None:
            try:
                check_bucketing_key(bucketing_key)
            except InvalidArgument as exc:
                raise ConfigError(exc.message) from None
        self._both_sides = bool(both_sides)
        if (beacon_url is None) != (beacon_key is None):
            missing = "beacon_key" if beacon_key is None else "beacon_url"
            raise ConfigError(
                f"{missing} is missing: beacons need both the beacon URL and the site's "
                "publishable key (or neither, to send none)"
            )
        self._needed = None if features is None else tuple(sorted(set(features)))
        self._verifier = Verifier(trust, allow_dev_keys=allow_insecure_dev_keys)
        self._channel = channel
        self._limits = limits
        self._clock = clock
        self._own_fetcher = fetcher is None
        self._fetcher = fetcher if fetcher is not None else Fetcher()
        self._state_dir = Path(state_dir)
        self._state_file = self._state_dir / STATE_FILE
        self._cache_dir = self._state_dir / ARTIFACTS_DIR
        try:
            self._cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"host state directory {self._state_dir} cannot be created "
                f"({exc.strerror or exc}); point state_dir at a writable directory"
            ) from None
        self._load_state()
        self._saved_state = self._state_bytes() if self._state_file.exists() else None
        self._key = _HostKey(bucketing_key, self._state_dir / KEY_FILE)
        self._lock = threading.Lock()
        self._features: Mapping[str, LoadedFeature] = MappingProxyType({})
        self._sides: Mapping[str, _Sides] = MappingProxyType({})
        self._sources: dict[str, _Source] = {}
        self._shards: dict[str, Signed[Shard]] = {}
        self._top: Signed[RemoteIndex] | None = None
        self._top_etag: str | None = None
        self._refusals: Mapping[str, Refusal] = MappingProxyType({})
        self._last_refresh_at: datetime | None = None
        self._base = _Base(self._index_url)
        # Last: a Beacons registers its last flush at exit.
        self._beacons = (
            None
            if beacon_url is None or beacon_key is None
            else Beacons(beacon_url, beacon_key, interval_seconds=beacon_interval_seconds)
        )

    @classmethod
    def from_environment(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        state_dir: Path | None = None,
        **kwargs: Any,
    ) -> FeatureHost:
        """A host configured by the contract's environment variables (`os.environ` by default).

        `FEATURE_REMOTE_INDEX_URL` and a trust file (`FEATURE_TRUST_PUBLIC_KEYS_JSON`
        or `FEATURE_TRUST_PUBLIC_KEYS_PATH`) are required; `FEATURE_ALLOW_INSECURE_DEV_KEYS`
        (1/true/yes/on) lets dev keys count; `FEATURE_BEACON_URL` and `FEATURE_BEACON_KEY`
        (both or neither) turn beacons on. `state_dir` defaults to
        `$RELEASECONTROL_HOME/host`, else `./.releasecontrol/host`. Other keyword
        arguments go to the constructor. Raises ConfigError naming the setting when
        one is missing or malformed, and when `RELEASECONTROL_ENV=production` (or
        `NODE_ENV=production`) while dev keys are allowed or a trusted key is a dev key.
        """
        env: Mapping[str, str] = os.environ if environ is None else environ
        index_url = env.get(ENV_REMOTE_INDEX_URL, "").strip()
        if not index_url:
            raise ConfigError(
                f"{ENV_REMOTE_INDEX_URL} is not set; set it to the URL of remote-index.json "
                "on your CDN, e.g. http://127.0.0.1:4100/remote-index.json"
            )
        trust = TrustStore.from_environment(env)
        if trust is None:
            raise ConfigError(
                f"no trusted keys: set {ENV_TRUST_JSON} to the trust file's JSON or "
                f"{ENV_TRUST_PATH} to its path"
            )
        given = kwargs.pop("allow_insecure_dev_keys", None)
        allow_dev_keys = _env_flag(env, ENV_ALLOW_DEV_KEYS) if given is None else bool(given)
        said = production_setting(env)
        if said is not None:
            if allow_dev_keys:
                raise ConfigError(
                    f"{ENV_ALLOW_DEV_KEYS} is on, but {said}=production refuses "
                    "insecure dev keys; unset it and trust only real signing keys"
                )
            if trust.dev_keyids:
                source = ENV_TRUST_JSON if env.get(ENV_TRUST_JSON, "").strip() else ENV_TRUST_PATH
                raise ConfigError(
                    f"{source} trusts dev key {_keyid_list(trust.dev_keyids)}, but "
                    f"{said}=production refuses insecure dev keys; "
                    "remove it from the trust file"
                )
        for name, setting in (("beacon_url", ENV_BEACON_URL), ("beacon_key", ENV_BEACON_KEY)):
            value = env.get(setting, "").strip()
            if name not in kwargs and value:
                kwargs[name] = value
        if ("beacon_url" in kwargs) != ("beacon_key" in kwargs):
            missing = ENV_BEACON_KEY if "beacon_key" not in kwargs else ENV_BEACON_URL
            raise ConfigError(
                f"{missing} is not set: beacons need both {ENV_BEACON_URL} (the control "
                f"plane's beacon listener) and {ENV_BEACON_KEY} (the site's publishable key), "
                "or neither"
            )
        if state_dir is None:
            home = env.get("RELEASECONTROL_HOME", "").strip()
            state_dir = (Path(home) if home else Path.cwd() / ".releasecontrol") / "host"
        return cls(
            index_url, trust, state_dir=state_dir, allow_insecure_dev_keys=allow_dev_keys, **kwargs
        )

    # -- what a host application reads ---------------------------------------------------------

    @property
    def index_url(self) -> str:
        return self._index_url

    @property
    def trust(self) -> TrustStore:
        """The trust file this host pins: the root keys and the root version they sign."""
        return self._verifier.trust

    @property
    def allow_dev_keys(self) -> bool:
        return self._verifier.allow_dev_keys

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def both_sides(self) -> bool:
        """Whether the host keeps both sides of a running canary for `version_for`."""
        return self._both_sides

    @property
    def features(self) -> Mapping[str, LoadedFeature]:
        """The last good state: every feature served, by id (read-only), each the version
        this host's own bucketing key gets."""
        return self._features

    def version_for(self, feature_id: str, bucketing_key: str) -> LoadedFeature:
        """The version user `bucketing_key` gets of `feature_id`, from the last good state:
        the canary iff one runs and the host follows the canary channel or the key's bucket
        is below the weight (`channel` and `bucket` of the result say which and why).

        Raises InvalidArgument (field "bucketing_key") for a key that is not 1 to 256 bytes
        of well-formed UTF-8, and NotFound when the host serves that user no version: the
        feature is not loaded, that side has no version, or the host was made with
        `both_sides=False` and the user's side is not its own.
        """
        check_bucketing_key(bucketing_key)
        sides = self._sides.get(feature_id)
        if sides is None:
            refusal = self._refusals.get(feature_id)
            raise NotFound(
                f"{feature_id} is not served by this host"
                + (
                    f" (refused: {refusal.code}: {refusal.message})"
                    if refusal
                    else "; refresh first, and check the feature id"
                )
            )
        side, chosen_by = self._side_for(feature_id, sides.weight, bucketing_key)
        loaded = sides.get(side)
        if loaded is None:
            raise NotFound(
                f"{feature_id}: this user gets the {side} side, which this host does not keep "
                "(both_sides=False); make it with both_sides=True to serve many users"
                if not self._both_sides
                else f"{feature_id} has no {side} version for this user yet: publish one"
            )
        return replace(loaded, bucket=chosen_by)

    def _side_for(
        self, feature_id: str, weight: int | None, key: str | None
    ) -> tuple[str, int | None]:
        """The side `key` (None: this host's own) gets at `weight` (None: no canary runs), and
        the key's bucket when the bucket chose it."""
        if weight is None:
            return "stable", None
        if self._channel == "canary":
            return "canary", None
        chosen_by = bucket(feature_id, self._key.get() if key is None else key)
        return ("canary" if chosen_by < weight else "stable"), chosen_by

    # -- beacons --------------------------------------------------------------------------------

    @property
    def beacons(self) -> Beacons | None:
        """The beacon reporter, None when the host has no beacon URL and key."""
        return self._beacons

    def report_load(self, feature_id: str, version: str) -> None:
        """Count one load (begun) of `version` of `feature_id` for the control plane; nothing
        without beacons. Never waits on the network.

        Raises InvalidArgument for a feature id or version that cannot be one.
        """
        check_report(feature_id, version)
        if self._beacons is not None:
            self._beacons.report_load(feature_id, version)

    def report_failure(self, feature_id: str, version: str, kind: FailureKind) -> None:
        """Count one failed load of `version` of `feature_id`: `kind` "entry_error" (its
        entry threw), "load_failure" (it could not be loaded) or "refusal" (a check refused
        it). Report the load too (`report_load`): the control plane divides failures by
        loads. Nothing without beacons; never waits on the network.

        Raises InvalidArgument (field "kind", "feature_id" or "version") for a kind not among
        those, or a feature id or version that cannot be one.
        """
        check_report(feature_id, version, kind)
        if self._beacons is not None:
            self._beacons.report_failure(feature_id, version, kind)

    def close(self) -> None:
        """Send the last batch of beacons and release the host's own connections. The host
        still serves what it verified; refreshing again reopens connections."""
        if self._beacons is not None:
            self._beacons.close()
        if self._own_fetcher:
            self._fetcher.close()

    def __enter__(self) -> FeatureHost:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _count_refused(self, feature_id: str, version: str, refusal: Refusal) -> None:
        """A version the host was loading and refused: one load begun that failed, as a
        `load_failure` when a file could not be downloaded, else a `refusal`."""
        if self._beacons is None:
            return
        kind: FailureKind = "load_failure" if refusal.code in _DOWNLOAD_CODES else "refusal"
        self._beacons.report_load(feature_id, version)
        self._beacons.report_failure(feature_id, version, kind)

    @property
    def refusals(self) -> Mapping[str, Refusal]:
        """What the last refresh refused, by "remote-index.json", shard path or feature id."""
        return self._refusals

    @property
    def refused(self) -> Mapping[str, str]:
        """The sentences of `refusals`, by the same keys."""
        return {key: refusal.message for key, refusal in self._refusals.items()}

    @property
    def root_version(self) -> int | None:
        """The version of the trusted root, None before the first one verified."""
        root = self._verifier.root
        return None if root is None else root.version

    def snapshot(self) -> dict[str, Any]:
        """The host's state as plain JSON values, for a status endpoint."""
        features, sides, top = self._features, self._sides, self._top
        return {
            "index_url": self._index_url,
            "channel": self._channel,
            "remote_sequence": top.model.sequence if top else None,
            "root_version": self.root_version,
            "last_refresh_at": (
                format_time(self._last_refresh_at) if self._last_refresh_at else None
            ),
            "loaded": {
                fid: {
                    "version": f.version,
                    "channel": f.channel,
                    "canary_weight": f.canary_weight,
                    "bucket": f.bucket,
                    "sides": {
                        side: loaded.version
                        for side in ("stable", "canary")
                        if fid in sides and (loaded := sides[fid].get(side)) is not None
                    },
                    "sequence": f.releases_sequence,
                    "manifest_sha256": f.manifest_sha256,
                    "keyids": sorted(f.keyids),
                    "artifacts": {a["path"]: a["sha256"] for a in f.manifest["assets"]},
                }
                for fid, f in features.items()
            },
            "refused": {key: r.as_dict() for key, r in self._refusals.items()},
        }

    # -- refreshing ----------------------------------------------------------------------------

    def refresh(self) -> RefreshReport:
        """Fetch and verify what changed on the origin; serve it only once all of it verified.

        Never raises for what the origin served or failed to serve: the last good
        state stays and the report says why. Raises ValueError when the clock
        returns a naive datetime.
        """
        with self._lock:
            now = self._clock()
            if now.utcoffset() is None:
                raise ValueError(f"the host's clock must return an aware datetime, not {now!r}")
            refusals: dict[str, Refusal] = {}
            fetched: list[str] = []
            try:
                top = self._refresh_top(now)
            except Refusal as exc:
                refusals[REMOTE_INDEX_PATH] = exc
            else:
                self._refresh_features(top, now, refusals, fetched)
            # One write of the state file per refresh, and before the new state is served:
            # a restart never forgets a root or a sequence this host acted on.
            self._save_state()
            return self._finish(now, refusals, fetched)

    def watch(self, events: Iterable[Any], stop: threading.Event | None = None) -> None:
        """Refresh once per event until `events` ends or `stop` is set.

        For `ReleaseControlClient.watch()`: each WatchReleases response only says
        "something changed"; what the host serves still comes from the CDN,
        verified. An event's contents are never used. `stop` is checked as each
        event arrives; to stop a stream that is waiting, also cancel it. Errors
        raised by `events` itself (a broken stream) propagate.
        """
        for _event in events:
            if stop is not None and stop.is_set():
                return
            self.refresh()

    def _finish(
        self, now: datetime, refusals: dict[str, Refusal], fetched: list[str]
    ) -> RefreshReport:
        self._refusals = MappingProxyType(refusals)
        self._last_refresh_at = now
        features = self._features
        report = RefreshReport(
            ok=not refusals,
            remote_sequence=self._top.model.sequence if self._top else None,
            fetched=tuple(fetched),
            loaded=MappingProxyType({fid: f.version for fid, f in features.items()}),
            refusals=self._refusals,
            root_version=self.root_version,
        )
        for key, refusal in refusals.items():
            logger.warning(
                "host refused item=%s code=%s file=%s reason=%s",
                key,
                refusal.code,
                refusal.file,
                refusal.message,
            )
        logger.info(
            "host refresh ok=%s remote_sequence=%s fetched=%s loaded=%s refused=%s",
            report.ok,
            report.remote_sequence,
            ",".join(report.fetched) or "-",
            ",".join(f"{fid}@{v}" for fid, v in report.loaded.items()) or "-",
            ",".join(refusals) or "-",
        )
        return report

    def _refresh_top(self, now: datetime) -> RemoteIndex:
        path = REMOTE_INDEX_PATH
        cached = self._top
        fetched = self._get(
            path,
            self._index_url,
            self._limits.max_index_bytes,
            etag=self._top_etag if cached else None,
        )
        if fetched.not_modified:
            if cached is None:
                raise Refusal(
                    "fetch",
                    path,
                    f"{path}: the origin answered 304 Not Modified to a fresh request",
                )
            # Unchanged, but time moved on: a copy verified earlier (or its root) can expire.
            self._verifier.top(cached.content, now, self._fetch_root)
            return cached.model
        top = self._verifier.top(fetched.body, now, self._fetch_root)
        self._top, self._top_etag = top, fetched.etag
        return top.model

    def _fetch_root(self, version: int) -> bytes:
        path = root_path(version)
        return self._get(path, self._resolve(path), self._limits.max_root_bytes).body

    def _needed_bins(self, top: RemoteIndex) -> dict[str, list[str] | None]:
        """Each bin to read -> the needed features in it (None: every one it lists)."""
        if self._needed is None:
            return {name: None for name in top.shards}
        bins: dict[str, list[str] | None] = {}
        for feature_id in self._needed:
            listed = bins.setdefault(bin_of(feature_id, top.bits), [])
            assert listed is not None
            listed.append(feature_id)
        return bins

    def _refresh_features(
        self, top: RemoteIndex, now: datetime, refusals: dict[str, Refusal], fetched: list[str]
    ) -> None:
        # The base every relative path of this index resolves against, checked once.
        self._base = _Base(self._index_url)
        listed: dict[str, Pin] = {}  # every needed feature the verified shards list
        kept_bins: set[str] = set()  # bins whose shard was refused: their features stay
        for name, wanted in sorted(self._needed_bins(top).items()):
            if name not in top.shards:
                for feature_id in wanted or ():
                    refusals[feature_id] = _not_found(feature_id, REMOTE_INDEX_PATH)
                continue
            try:
                shard = self._refresh_shard(top, name, now)
            except Refusal as exc:
                refusals[exc.file] = exc
                kept_bins.add(name)
                continue
            for feature_id in wanted if wanted is not None else sorted(shard.features):
                pin = shard.features.get(feature_id)
                if pin is None:
                    refusals[feature_id] = _not_found(feature_id, shard.path)
                else:
                    listed[feature_id] = pin
        features = {
            fid: f
            for fid, f in self._features.items()
            if fid in listed or bin_of(fid, top.bits) in kept_bins
        }
        sides = {fid: s for fid, s in self._sides.items() if fid in features}
        gone = set(self._sources) - set(features) - set(listed)
        for feature_id in gone:
            del self._sources[feature_id]
        self._verifier.forget(gone)
        outcomes: dict[str, _FeatureOutcome] = {}
        changed: list[tuple[str, Pin]] = []
        for feature_id, pin in sorted(listed.items()):
            source = self._sources.get(feature_id)
            if source is not None and _same_pin(source.pin, pin) and feature_id in features:
                # Nothing new to fetch; a releases.json verified earlier can still expire.
                outcome = outcomes[feature_id] = _FeatureOutcome()
                expires_at = source.releases.model.expires_at
                if now >= expires_at:
                    outcome.refused = Refusal(
                        "expired",
                        source.releases.path,
                        f"{source.releases.path} expired at {format_time(expires_at)} and it is "
                        f"now {format_time(now)}: refusing a frozen index",
                    )
            else:
                changed.append((feature_id, pin))
        outcomes.update(
            zip((fid for fid, _ in changed), self._refresh_changed(changed, now), strict=True)
        )
        for feature_id, outcome in sorted(outcomes.items()):
            if outcome.fetched:
                fetched.append(feature_id)
            if outcome.source is not None and outcome.refused is None:
                # Only a feature that loaded is up to date with its pin: one refused after
                # its releases.json verified (a manifest or an asset failed) is fetched again.
                self._sources[feature_id] = outcome.source
            if outcome.refused is not None:
                refusals[feature_id] = outcome.refused
            elif outcome.loaded is not None and outcome.sides is not None:
                features[feature_id] = outcome.loaded
                sides[feature_id] = outcome.sides
        self._sides = MappingProxyType(sides)
        self._features = MappingProxyType(features)

    def _refresh_shard(self, top: RemoteIndex, name: str, now: datetime) -> Shard:
        pin = top.shards[name]
        cached = self._shards.get(name)
        if (
            cached is not None
            and cached.model.bits == top.bits
            and _same_pin(Pin.of(cached.content, cached.model.sequence), pin)
        ):
            if now >= cached.model.expires_at:
                raise Refusal(
                    "expired",
                    cached.path,
                    f"{cached.path} expired at {format_time(cached.model.expires_at)} and it is "
                    f"now {format_time(now)}: refusing a frozen index",
                )
            return cached.model
        path = shard_path(top.bits, name)
        data = self._get_pinned(path, pin)
        shard = self._verifier.shard(top, name, data, now)
        self._shards[name] = shard
        return shard.model

    def _refresh_changed(
        self, changed: list[tuple[str, Pin]], now: datetime
    ) -> list[_FeatureOutcome]:
        """`_refresh_feature` of each, `parallel_fetches` at a time; outcomes in the same order."""
        workers = min(self._parallel_fetches, len(changed))
        if workers <= 1:
            return [self._refresh_feature(fid, pin, now) for fid, pin in changed]
        with ThreadPoolExecutor(workers, thread_name_prefix="feature-host") as pool:
            return list(
                pool.map(lambda item: self._refresh_feature(item[0], item[1], now), changed)
            )

    def _refresh_feature(self, feature_id: str, pin: Pin, now: datetime) -> _FeatureOutcome:
        """Fetch and verify a feature whose pin changed. Changes nothing served on the host:
        safe to run for several features at once."""
        outcome = _FeatureOutcome()
        try:
            outcome.loaded = self._fetch_feature(feature_id, pin, now, outcome)
        except Refusal as exc:
            outcome.refused = exc
        return outcome

    def _fetch_feature(
        self, feature_id: str, pin: Pin, now: datetime, outcome: _FeatureOutcome
    ) -> LoadedFeature:
        path = releases_path(feature_id)
        data = self._get_pinned(path, pin)
        outcome.fetched = True
        releases = self._verifier.releases(feature_id, pin, data, now)
        outcome.source = _Source(pin, releases)
        model = releases.model
        weight = None if model.canary is None else (model.canary_weight or 0)
        own, own_bucket = self._side_for(feature_id, weight, None)
        wanted = [own]
        if self._both_sides and weight is not None and self._channel == "stable":
            # Every side some key gets: a user must never be handed a version not on disk.
            other = "canary" if own == "stable" else "stable"
            if (0 < weight < WEIGHT_SCALE) and (
                model.canary if other == "canary" else model.stable
            ):
                wanted.append(other)
        current = self._sides.get(feature_id)
        have = [f for f in (current.stable, current.canary) if f] if current else []
        loaded: dict[str, LoadedFeature] = {}
        for side in wanted:  # the host's own side first: its refusal is the one reported
            entry = select_version(model, side)
            try:
                loaded[side] = self._load_version(feature_id, entry, side, releases, weight, have)
            except Refusal as refused:
                self._count_refused(feature_id, entry.version, refused)
                raise
            have.append(loaded[side])
        outcome.sides = _Sides(weight, loaded.get("stable"), loaded.get("canary"))
        return replace(loaded[own], bucket=own_bucket)

    def _load_version(
        self,
        feature_id: str,
        entry: VersionEntry,
        side: str,
        releases: Signed[ReleasesIndex],
        weight: int | None,
        have: Iterable[LoadedFeature],
    ) -> LoadedFeature:
        """`entry`'s manifest and assets, verified; reused from `have` when it holds them."""
        for current in have:
            if (
                current.version == entry.version
                and current.manifest_sha256 == entry.manifest_sha256
            ):
                return replace(
                    current,
                    channel=side,
                    releases_sequence=releases.model.sequence,
                    keyids=releases.keyids,
                    canary_weight=weight,
                    bucket=None,
                )
        mpath = manifest_path(feature_id, entry.version)
        body = self._get(mpath, self._resolve(quote(mpath)), self._limits.max_manifest_bytes).body
        manifest = check_manifest(
            feature_id, entry, body, max_bytes=self._limits.max_manifest_bytes
        )
        artifacts = {
            asset["path"]: self._load_artifact(feature_id, asset) for asset in manifest["assets"]
        }
        return LoadedFeature(
            feature_id=feature_id,
            version=entry.version,
            channel=side,
            releases_sequence=releases.model.sequence,
            manifest=MappingProxyType(manifest),
            manifest_sha256=entry.manifest_sha256,
            artifacts=MappingProxyType(artifacts),
            keyids=releases.keyids,
            canary_weight=weight,
        )

    def _load_artifact(self, feature_id: str, asset: Mapping[str, Any]) -> Path:
        expected: str = asset["sha256"]
        size: int = asset["size"]
        path = artifact_path(expected, asset["path"])
        if size > self._limits.max_artifact_bytes:
            raise Refusal(
                "too-large",
                path,
                f"{path} (asset {asset['path']!r} of {feature_id}) is {size} bytes, over the "
                f"{self._limits.max_artifact_bytes}-byte limit",
            )
        cached = self._cache_dir / expected
        if _file_sha256(cached) == expected:
            return cached
        # Cut off one byte past the size the manifest lists: endless data stops there.
        data = self._get(path, self._resolve(path), size + 1, pinned=True).body
        check_asset(feature_id, asset, data)
        try:
            _store_artifact(cached, data)
        except OSError as exc:
            raise Refusal(
                "fetch",
                path,
                f"{path} verified but cannot be stored in {self._cache_dir} "
                f"({exc.strerror or exc}); free space or fix the host's state directory",
            ) from None
        return cached

    # -- fetching --------------------------------------------------------------------------------

    def _get(
        self,
        path: str,
        url: str,
        max_bytes: int,
        *,
        etag: str | None = None,
        pinned: bool = False,
    ) -> Fetched:
        """GET `url` (origin path `path`) with at most `max_bytes` of body; raises Refusal.

        `pinned`: `max_bytes` is one more than a length the level above pins, so a
        longer body is a wrong length (`length`), not a limit (`too-large`).
        """
        try:
            return self._fetcher.get(url, max_bytes=max_bytes, etag=etag)
        except FetchError as exc:
            code = "length" if pinned and exc.kind == "too-large" else exc.kind
            raise Refusal(code, path, exc.message) from None

    def _get_pinned(self, path: str, pin: Pin) -> bytes:
        """The bytes at `path`, reading at most one byte past its pinned length."""
        if pin.length > self._limits.max_pinned_bytes:
            raise Refusal(
                "too-large",
                path,
                f"{path} is pinned at {pin.length} bytes, over the "
                f"{self._limits.max_pinned_bytes}-byte limit",
            )
        return self._get(path, self._resolve(path), pin.length + 1, pinned=True).body

    def _resolve(self, relative: str) -> str:
        """`relative` against the index URL; refused when it leaves the index's origin."""
        plain = self._base.plain(relative)
        if plain is not None:
            return plain
        url = urljoin(self._index_url, relative)
        if _origin(url) != _origin(self._index_url):
            scheme, host, port = _origin(self._index_url)
            raise Refusal(
                "fetch",
                relative,
                f"{relative} resolves to {url}, outside the index's origin "
                f"{scheme}://{host}:{port}",
            )
        return url

    # -- the state on disk ---------------------------------------------------------------------

    def _load_state(self) -> None:
        try:
            text = self._state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._bad_state(exc.strerror or str(exc)) from None
        try:
            self._verifier.load_state(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._bad_state(f"not a host state file: {exc}") from None

    def _bad_state(self, problem: str) -> ConfigError:
        # Refusing to start is safer than forgetting which sequences were seen.
        return ConfigError(
            f"host state file {self._state_file} cannot be used ({problem}); restore it, or "
            "delete it to start over (the host then accepts any sequence once)"
        )

    def _state_bytes(self) -> bytes:
        return (json.dumps(self._verifier.state(), indent=2) + "\n").encode("utf-8")

    def _save_state(self) -> None:
        """Write the state file (atomically, durably) when it changed since the last write."""
        data = self._state_bytes()
        if data == self._saved_state:
            return
        try:
            atomic_write(self._state_file, data)
            self._saved_state = data
        except OSError as exc:
            # The checks themselves passed; failing to record them only narrows what a
            # restart knows.
            logger.error(
                "host state not saved path=%s error=%s", self._state_file, exc.strerror or exc
            )


def _same_pin(a: Pin, b: Pin) -> bool:
    return (a.sha256, a.length, a.sequence) == (b.sha256, b.length, b.sequence)


def _not_found(feature_id: str, file: str) -> Refusal:
    return Refusal(
        "not-found",
        file,
        f"{feature_id} is not published on this origin ({file} does not list it): publish it, "
        "or check the feature id",
    )


# --- helpers ------------------------------------------------------------------------------------


def _normalize_index_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"index URL {url!r} is not an http:// or https:// URL; set it to the URL of "
            "remote-index.json on your CDN, e.g. http://127.0.0.1:4100/remote-index.json"
        )
    # A bare origin or folder means the remote-index.json inside it.
    return url + REMOTE_INDEX_PATH if url.endswith("/") else url


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default_port
    except ValueError:
        port = -1
    return parts.scheme, (parts.hostname or "").lower(), port


class _Base:
    """Resolves the relative paths an index names against the index URL, like urljoin.

    A plain relative path (letters, digits, `-._~%+@`, `/`-separated, no `.` or `..`
    segment) is appended to the index URL's folder, which is what urljoin gives it;
    anything else goes through urljoin and the same-origin check.
    """

    def __init__(self, index_url: str) -> None:
        parts = urlsplit(index_url)
        folder = parts.path[: parts.path.rfind("/") + 1] or "/"
        self.folder = urlunsplit((parts.scheme, parts.netloc, folder, "", ""))

    def plain(self, relative: str) -> str | None:
        if (
            not relative
            or relative[0] == "/"
            or not _PLAIN_PATH_CHARS.issuperset(relative)
            or any(segment in ("", ".", "..") for segment in relative.split("/"))
        ):
            return None
        return self.folder + relative


_PLAIN_PATH_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~%+@/"
)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store_artifact(path: Path, data: bytes) -> None:
    """Write a verified asset into the content-addressed cache: in place, without sync.

    Neither a temporary file and a rename nor an fsync: a cached asset is hashed
    again before every use (here and in `LoadedFeature.artifact_bytes`), so one a
    crash or power cut left short or empty is fetched again, never served, and the
    file is only ever rewritten when it does not hold the bytes of its name. One
    file creation instead of a temporary file and a rename halves the metadata
    work per asset, most of a cold load's disk time.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _file_sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _keyid_list(keyids: Iterable[str]) -> str:
    return ", ".join(short_keyid(k) for k in sorted(keyids))


def _env_flag(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "")
    word = raw.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ConfigError(
        f"{name}={raw!r} is not a yes/no value; set it to 1 or 0 (true/false, yes/no and "
        "on/off work too)"
    )


def production_setting(env: Mapping[str, str]) -> str | None:
    """The variable that says production ("RELEASECONTROL_ENV" or "NODE_ENV"), or None.

    As the server reads them: RELEASECONTROL_ENV takes development or production,
    NODE_ENV production, development or test; any other value (`NODE_ENV=prod`, a
    typo) is refused rather than taken for development, and the two must agree.
    """
    said: dict[str, bool] = {}
    for name, accepted in (
        ("RELEASECONTROL_ENV", ("development", "production")),
        ("NODE_ENV", ("development", "production", "test")),
    ):
        raw = env.get(name, "")
        word = raw.strip().lower()
        if not word:
            continue
        if word not in accepted:
            raise ConfigError(
                f"{name}={raw!r} is not understood; set it to "
                + " or ".join(repr(w) for w in accepted)
            )
        said[name] = word == "production"
    if len(set(said.values())) > 1:
        raise ConfigError(
            "RELEASECONTROL_ENV and NODE_ENV disagree about production "
            f"(RELEASECONTROL_ENV={env['RELEASECONTROL_ENV']!r}, NODE_ENV={env['NODE_ENV']!r}); "
            "set them alike or unset one"
        )
    return next((name for name, production in said.items() if production), None)
