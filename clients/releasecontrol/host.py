"""FeatureHost: what a host application embeds to load only features it has verified.

The CDN is not trusted; only the keys in the trust store are. One `refresh()`
reads the clock once and then, in this order:

1. `remote-index.json`, conditionally (If-None-Match with the ETag of the last
   verified copy): its signatures against the trust store (a threshold of
   distinct keys; a dev key counts only when insecure dev keys are allowed),
   its type, its expiry (freeze attack), and its sequence against the highest
   this host has seen (rollback attack; the same sequence with other bytes is
   refused too). A failure here refuses the whole refresh.
2. For each feature whose entry changed since the feature's last good state
   (the rest are not fetched: incremental refresh), its `releases.json` from
   the URL the entry names on the same origin: the SHA-256 and sequence the
   remote index pins (mix-and-match), signatures, type, feature id, expiry,
   and sequence against the highest seen for that feature.
3. The version the host's channel selects (`stable`: the active version;
   `canary`: the canary while one runs): its `manifest.json`, whose SHA-256
   must be the one `releases.json` lists, whose id and version must be this
   feature's and version, and which must be a valid manifest; then every asset
   from `artifacts/<sha256><ext>` (unless already in the content-addressed cache),
   checked for size and SHA-256.
4. Only then is that feature's `LoadedFeature` replaced. A failure refuses that
   feature alone; the others still load. A feature gone from the remote index
   is dropped.

A refresh never raises for what the origin served or failed to serve: the host
keeps serving its last good state and `RefreshReport.refused` says why, one
sentence per refused file. The highest sequences seen are kept in
`<state_dir>/state.json` (written atomically once a verification passed), so a
restart does not forget them; verified assets are kept in
`<state_dir>/artifacts/`.

`FeatureHost.from_environment` reads the contract's settings:
`FEATURE_REMOTE_INDEX_URL`, `FEATURE_TRUST_PUBLIC_KEYS_JSON` /
`FEATURE_TRUST_PUBLIC_KEYS_PATH` and `FEATURE_ALLOW_INSECURE_DEV_KEYS`, and
refuses dev keys in production.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

from releasecontrol.errors import ConfigError, InvalidArgument, VerificationError
from releasecontrol.fetch import Fetched, Fetcher, FetchError
from releasecontrol.files import atomic_write
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    Envelope,
    FeatureEntry,
    ReleasesIndex,
    RemoteIndex,
    check_signatures,
    format_time,
)
from releasecontrol.manifest import (
    artifact_path,
    manifest_path,
    validate_feature_id,
    validate_manifest,
    validate_version,
)
from releasecontrol.trust import (
    ENV_ALLOW_DEV_KEYS,
    ENV_TRUST_JSON,
    ENV_TRUST_PATH,
    TrustStore,
    short_keyid,
)

__all__ = [
    "CHANNELS",
    "ENV_REMOTE_INDEX_URL",
    "FeatureHost",
    "Limits",
    "LoadedFeature",
    "RefreshReport",
]

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

CHANNELS = ("stable", "canary")
ENV_REMOTE_INDEX_URL = "FEATURE_REMOTE_INDEX_URL"
STATE_FILE = "state.json"
ARTIFACTS_DIR = "artifacts"
_STATE_FORMAT = 1
# Fetching is mostly waiting on the origin; a few features at once hide that.
DEFAULT_PARALLEL_FETCHES = 8
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True)
class Limits:
    """The most a host downloads per file: what an endless-data attack can cost it."""

    max_index_bytes: int = 32 << 20
    """Largest `remote-index.json` or `releases.json` accepted. 32 MiB: the remote index
    names every feature (~150 bytes each), so this fits about 200,000 features; it
    bounds what an endless or padded index costs, not how many features there are."""

    max_manifest_bytes: int = 1 << 20
    """Largest `manifest.json` accepted."""

    max_artifact_bytes: int = 64 << 20
    """Largest single asset accepted; each asset is also cut off at the size its manifest lists."""

    def __post_init__(self) -> None:
        for name in ("max_index_bytes", "max_manifest_bytes", "max_artifact_bytes"):
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
    """"stable", or "canary" when the host follows canary and one runs."""
    releases_sequence: int
    """The sequence of the releases.json it was selected from."""
    manifest: Mapping[str, Any]
    manifest_sha256: str
    artifacts: Mapping[str, Path]
    """Manifest asset path -> the verified file in the host's content-addressed cache."""

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
    refused: Mapping[str, str]
    """feature_id, or "remote-index.json", -> one sentence saying why."""


class _Refused(Exception):
    """A file failed a check: the one-sentence reason for RefreshReport.refused."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _Seen:
    sequence: int
    sha256: str


@dataclass
class _SeenState:
    """The highest sequences seen, and the file bytes seen at them; kept in state.json."""

    remote: _Seen | None = None
    features: dict[str, _Seen] = field(default_factory=dict)


@dataclass(frozen=True)
class _TrustedRemote:
    index: RemoteIndex
    etag: str | None


@dataclass(frozen=True)
class _Source:
    """Where a loaded feature came from: the entry it was pinned by, and its releases.json."""

    entry: FeatureEntry
    releases: ReleasesIndex


@dataclass
class _FeatureOutcome:
    """What refreshing one feature found; the refreshing thread applies it, in id order."""

    fetched: bool = False
    """Its releases.json was fetched."""
    seen: _Seen | None = None
    """Its releases.json verified: the sequence and file hash to remember."""
    source: _Source | None = None
    loaded: LoadedFeature | None = None
    refused: str | None = None


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
        limits: Limits = DEFAULT_LIMITS,
        clock: Callable[[], datetime] = _utc_now,
        fetcher: Fetcher | None = None,
        parallel_fetches: int = DEFAULT_PARALLEL_FETCHES,
    ) -> None:
        """Raises ConfigError for an index URL that is not http(s), an unknown channel,
        a `parallel_fetches` below 1, or a state directory that cannot be used (naming it
        and the fix).

        `parallel_fetches`: how many changed features are fetched and verified at
        once (each feature's own files in order); what is served is decided as if
        one at a time, in feature id order.
        """
        self._index_url = _normalize_index_url(index_url)
        if channel not in CHANNELS:
            raise ConfigError(f"channel {channel!r} is not one of {', '.join(CHANNELS)}")
        if isinstance(parallel_fetches, bool) or not (
            isinstance(parallel_fetches, int) and parallel_fetches >= 1
        ):
            raise ConfigError(f"parallel_fetches must be 1 or more, not {parallel_fetches!r}")
        self._parallel_fetches = parallel_fetches
        self._trust = trust
        self._allow_dev_keys = allow_insecure_dev_keys
        self._channel = channel
        self._limits = limits
        self._clock = clock
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
        self._seen = self._load_seen()
        self._saved_state = self._state_bytes() if self._state_file.exists() else None
        self._lock = threading.Lock()
        self._features: Mapping[str, LoadedFeature] = MappingProxyType({})
        self._sources: dict[str, _Source] = {}
        self._remote: _TrustedRemote | None = None
        self._refused: Mapping[str, str] = MappingProxyType({})
        self._last_refresh_at: datetime | None = None
        self._base = _Base(self._index_url)

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
        (1/true/yes/on) lets dev keys count. `state_dir` defaults to
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
        allow_dev_keys = bool(
            kwargs.pop("allow_insecure_dev_keys", _env_flag(env, ENV_ALLOW_DEV_KEYS))
        )
        production_setting = _production_setting(env)
        if production_setting is not None:
            if allow_dev_keys:
                raise ConfigError(
                    f"{ENV_ALLOW_DEV_KEYS} is on, but {production_setting}=production refuses "
                    "insecure dev keys; unset it and trust only real signing keys"
                )
            if trust.dev_keyids:
                source = ENV_TRUST_JSON if env.get(ENV_TRUST_JSON, "").strip() else ENV_TRUST_PATH
                raise ConfigError(
                    f"{source} trusts dev key {_keyid_list(trust.dev_keyids)}, but "
                    f"{production_setting}=production refuses insecure dev keys; "
                    "remove it from the trust file"
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
    def features(self) -> Mapping[str, LoadedFeature]:
        """The last good state: every feature served, by id (read-only)."""
        return self._features

    @property
    def refused(self) -> Mapping[str, str]:
        """What the last refresh refused: feature id or "remote-index.json" -> why."""
        return self._refused

    def snapshot(self) -> dict[str, Any]:
        """The host's state as plain JSON values, for a status endpoint."""
        features, remote = self._features, self._remote
        return {
            "index_url": self._index_url,
            "channel": self._channel,
            "remote_sequence": remote.index.sequence if remote else None,
            "last_refresh_at": (
                format_time(self._last_refresh_at) if self._last_refresh_at else None
            ),
            "loaded": {
                fid: {
                    "version": f.version,
                    "channel": f.channel,
                    "sequence": f.releases_sequence,
                    "manifest_sha256": f.manifest_sha256,
                    "artifacts": {a["path"]: a["sha256"] for a in f.manifest["assets"]},
                }
                for fid, f in features.items()
            },
            "refused": dict(self._refused),
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
            refused: dict[str, str] = {}
            fetched: list[str] = []
            try:
                remote = self._refresh_remote(now)
            except _Refused as exc:
                refused[REMOTE_INDEX_PATH] = exc.reason
            else:
                self._refresh_features(remote, now, refused, fetched)
            return self._finish(now, refused, fetched)

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

    def _finish(self, now: datetime, refused: dict[str, str], fetched: list[str]) -> RefreshReport:
        self._refused = MappingProxyType(refused)
        self._last_refresh_at = now
        features = self._features
        report = RefreshReport(
            ok=not refused,
            remote_sequence=self._remote.index.sequence if self._remote else None,
            fetched=tuple(fetched),
            loaded=MappingProxyType({fid: f.version for fid, f in features.items()}),
            refused=self._refused,
        )
        for item, reason in refused.items():
            logger.warning("host refused item=%s reason=%s", item, reason)
        logger.info(
            "host refresh ok=%s remote_sequence=%s fetched=%s loaded=%s refused=%s",
            report.ok,
            report.remote_sequence,
            ",".join(report.fetched) or "-",
            ",".join(f"{fid}@{v}" for fid, v in report.loaded.items()) or "-",
            ",".join(refused) or "-",
        )
        return report

    def _refresh_remote(self, now: datetime) -> RemoteIndex:
        label = REMOTE_INDEX_PATH
        cached = self._remote
        fetched = self._get(
            self._index_url, self._limits.max_index_bytes, etag=cached.etag if cached else None
        )
        if fetched.not_modified:
            if cached is None:
                raise _Refused(f"{label}: the origin answered 304 Not Modified to a fresh request")
            # Unchanged, but time moved on: a copy verified earlier can expire too.
            _check_expiry(label, cached.index.expires_at, now)
            return cached.index
        digest = _sha256(fetched.body)
        signed = self._verified_body(label, fetched.body)
        index = _parse(label, RemoteIndex.from_dict, signed)
        _check_expiry(label, index.expires_at, now)
        self._check_sequence(label, self._seen.remote, index.sequence, digest)
        # Remembered on disk (once per refresh, in _refresh_features) before anything it
        # lists is served.
        self._seen.remote = _Seen(index.sequence, digest)
        self._remote = _TrustedRemote(index, fetched.etag)
        return index

    def _refresh_features(
        self, remote: RemoteIndex, now: datetime, refused: dict[str, str], fetched: list[str]
    ) -> None:
        # The base every relative path of this index resolves against, checked once.
        self._base = _Base(self._index_url)
        features = {fid: f for fid, f in self._features.items() if fid in remote.features}
        for gone in set(self._sources) - set(remote.features):
            del self._sources[gone]
        outcomes: dict[str, _FeatureOutcome] = {}
        changed: list[tuple[str, FeatureEntry]] = []
        for feature_id, entry in sorted(remote.features.items()):
            source = self._sources.get(feature_id)
            if source is not None and source.entry == entry:
                # Nothing new to fetch; an index verified earlier can still expire meanwhile.
                outcome = outcomes[feature_id] = _FeatureOutcome()
                try:
                    _check_expiry(entry.url, source.releases.expires_at, now)
                except _Refused as exc:
                    outcome.refused = exc.reason
            else:
                changed.append((feature_id, entry))
        outcomes.update(
            zip((fid for fid, _ in changed), self._refresh_changed(changed, now), strict=True)
        )
        for feature_id, outcome in sorted(outcomes.items()):
            if outcome.fetched:
                fetched.append(feature_id)
            if outcome.seen is not None:
                self._seen.features[feature_id] = outcome.seen
            if outcome.source is not None:
                self._sources[feature_id] = outcome.source
            if outcome.refused is not None:
                refused[feature_id] = outcome.refused
            elif outcome.loaded is not None:
                features[feature_id] = outcome.loaded
        # One write of the state file per refresh, and before the new state is served:
        # a restart never forgets a sequence this host acted on.
        self._save_seen()
        self._features = MappingProxyType(features)

    def _refresh_changed(
        self, changed: list[tuple[str, FeatureEntry]], now: datetime
    ) -> list[_FeatureOutcome]:
        """`_refresh_feature` of each, `parallel_fetches` at a time; outcomes in the same order."""
        workers = min(self._parallel_fetches, len(changed))
        if workers <= 1:
            return [self._refresh_feature(fid, entry, now) for fid, entry in changed]
        with ThreadPoolExecutor(workers, thread_name_prefix="feature-host") as pool:
            return list(
                pool.map(lambda item: self._refresh_feature(item[0], item[1], now), changed)
            )

    def _refresh_feature(
        self, feature_id: str, entry: FeatureEntry, now: datetime
    ) -> _FeatureOutcome:
        """Fetch and verify a feature whose entry changed. Changes nothing on the host:
        safe to run for several features at once."""
        outcome = _FeatureOutcome()
        try:
            outcome.loaded = self._fetch_feature(feature_id, entry, now, outcome)
        except _Refused as exc:
            outcome.refused = exc.reason
        return outcome

    def _fetch_feature(
        self, feature_id: str, entry: FeatureEntry, now: datetime, outcome: _FeatureOutcome
    ) -> LoadedFeature:
        label = entry.url
        try:
            validate_feature_id(feature_id)
        except InvalidArgument:
            raise _Refused(
                f"{REMOTE_INDEX_PATH} lists {feature_id!r}, which is not a valid feature id"
            ) from None
        file = self._get(self._resolve(entry.url), self._limits.max_index_bytes)
        outcome.fetched = True
        digest = _sha256(file.body)
        if digest != entry.sha256:
            raise _Refused(
                f"{label} has SHA-256 {short_keyid(digest)}, not the {short_keyid(entry.sha256)} "
                f"{REMOTE_INDEX_PATH} pins: refusing to mix files of different moments"
            )
        signed = self._verified_body(label, file.body)
        releases = _parse(label, ReleasesIndex.from_dict, signed)
        if releases.sequence != entry.sequence:
            raise _Refused(
                f"{label} has sequence {releases.sequence}, not the {entry.sequence} "
                f"{REMOTE_INDEX_PATH} pins: refusing to mix files of different moments"
            )
        if releases.feature_id != feature_id:
            raise _Refused(
                f"{label} is the index of feature {releases.feature_id!r}, not {feature_id!r}"
            )
        _check_expiry(label, releases.expires_at, now)
        self._check_sequence(label, self._seen.features.get(feature_id), releases.sequence, digest)
        outcome.seen = _Seen(releases.sequence, digest)

        version, channel = self._select(label, releases)
        manifest_sha256 = next(v.manifest_sha256 for v in releases.versions if v.version == version)
        current = self._features.get(feature_id)
        if (
            current is not None
            and current.version == version
            and current.manifest_sha256 == manifest_sha256
        ):
            loaded = replace(current, channel=channel, releases_sequence=releases.sequence)
        else:
            loaded = self._load_version(
                feature_id, version, channel, manifest_sha256, releases.sequence, label
            )
        outcome.source = _Source(entry, releases)
        return loaded

    def _select(self, label: str, releases: ReleasesIndex) -> tuple[str, str]:
        if self._channel == "canary" and releases.canary is not None:
            return releases.canary, "canary"
        if releases.stable is None:
            raise _Refused(f"{label} has no stable version to serve")
        return releases.stable, "stable"

    def _load_version(
        self,
        feature_id: str,
        version: str,
        channel: str,
        manifest_sha256: str,
        sequence: int,
        releases_label: str,
    ) -> LoadedFeature:
        try:
            validate_version(version)
        except InvalidArgument:
            raise _Refused(
                f"{releases_label} selects {version!r}, which is not a SemVer version"
            ) from None
        label = manifest_path(feature_id, version)
        file = self._get(self._resolve(quote(label)), self._limits.max_manifest_bytes)
        digest = _sha256(file.body)
        if digest != manifest_sha256:
            raise _Refused(
                f"{label} has SHA-256 {short_keyid(digest)}, not the "
                f"{short_keyid(manifest_sha256)} {releases_label} lists for {version}"
            )
        try:
            manifest = validate_manifest(_strict_json(file.body))
        except ValueError as exc:
            raise _Refused(f"{label} is not valid UTF-8 JSON ({exc})") from None
        except InvalidArgument as exc:
            raise _Refused(f"{label}: {exc.message}") from None
        if manifest["id"] != feature_id:
            raise _Refused(
                f"{label} is the manifest of feature {manifest['id']!r}, not {feature_id!r}"
            )
        if manifest["version"] != version:
            raise _Refused(
                f"{label} is the manifest of version {manifest['version']!r}, not {version!r}"
            )
        artifacts = {asset["path"]: self._load_artifact(asset) for asset in manifest["assets"]}
        return LoadedFeature(
            feature_id=feature_id,
            version=version,
            channel=channel,
            releases_sequence=sequence,
            manifest=MappingProxyType(manifest),
            manifest_sha256=manifest_sha256,
            artifacts=MappingProxyType(artifacts),
        )

    def _load_artifact(self, asset: Mapping[str, Any]) -> Path:
        path: str = asset["path"]
        size: int = asset["size"]
        expected: str = asset["sha256"]
        what = f"asset {path!r} ({artifact_path(short_keyid(expected), path)})"
        if size > self._limits.max_artifact_bytes:
            raise _Refused(
                f"{what} is {size} bytes, over the {self._limits.max_artifact_bytes}-byte limit"
            )
        cached = self._cache_dir / expected
        if _file_sha256(cached) == expected:
            return cached
        # Cut off one byte past the size the manifest lists: endless data stops there.
        try:
            file = self._fetcher.get(self._resolve(artifact_path(expected, path)), max_bytes=size)
        except FetchError as exc:
            raise _Refused(f"{what}: {exc.message}") from None
        if len(file.body) != size:
            raise _Refused(f"{what} is {len(file.body)} bytes, not the {size} its manifest lists")
        digest = _sha256(file.body)
        if digest != expected:
            raise _Refused(
                f"{what} has SHA-256 {short_keyid(digest)}, not the one its manifest lists"
            )
        try:
            _store_artifact(cached, file.body)
        except OSError as exc:
            raise _Refused(
                f"{what} verified but cannot be stored in {self._cache_dir} ({exc.strerror or exc})"
            ) from None
        return cached

    # -- checks --------------------------------------------------------------------------------

    def _get(self, url: str, max_bytes: int, *, etag: str | None = None) -> Fetched:
        try:
            return self._fetcher.get(url, max_bytes=max_bytes, etag=etag)
        except FetchError as exc:
            raise _Refused(exc.message) from None

    def _resolve(self, relative: str) -> str:
        """`relative` against the index URL; refused when it leaves the index's origin."""
        plain = self._base.plain(relative)
        if plain is not None:
            return plain
        url = urljoin(self._index_url, relative)
        if _origin(url) != _origin(self._index_url):
            scheme, host, port = _origin(self._index_url)
            raise _Refused(
                f"{REMOTE_INDEX_PATH} points to {url}, outside its origin {scheme}://{host}:{port}"
            )
        return url

    def _verified_body(self, label: str, body: bytes) -> Mapping[str, Any]:
        """The `signed` object of a signed file once enough trusted keys signed it; else _Refused.

        Parsed once and verified once where the file is what the signer writes, JCS
        `{"signatures":[...],"signed":{...}}` (see `_signed_as_written`); any other
        file goes the general way, which also says exactly what is wrong.
        """
        signed = self._signed_as_written(body)
        if signed is not None:
            return signed
        envelope = self._parse_envelope(label, body)
        self._check_signatures(label, envelope)
        return envelope.signed

    def _signed_as_written(self, body: bytes) -> dict[str, Any] | None:
        """The signed object when the bytes after `"signed":` carry enough trusted signatures.

        The signatures cover the JCS bytes of `signed`; in a file the signer wrote
        those are the bytes between `,"signed":` and the final `}`. Checking the
        signatures over those bytes and parsing the object from exactly those bytes
        accepts only what the trusted keys signed, without re-encoding it (RFC 8785
        in Python cost more than the rest of the verification). None when the file
        is not in that form or the check does not pass: the caller then takes the
        general way, which refuses with the reason, or accepts a file signed over
        the JCS of a differently written body.
        """
        if len(body) > self._limits.max_index_bytes or not (
            body.startswith(_SIGNATURES_OPEN) and body.endswith(b"}")
        ):
            return None
        split = body.find(_SIGNED_KEY)
        if split < 0:
            return None
        data = body[split + len(_SIGNED_KEY) : -1]
        try:
            signatures = json.loads(body[len(_SIGNATURES_OPEN) : split])
        except (ValueError, RecursionError):
            return None
        if not isinstance(signatures, list):
            return None
        valid: set[str] = set()
        for entry in signatures:
            if not isinstance(entry, dict):
                return None
            keyid, sig = entry.get("keyid"), entry.get("sig")
            if not isinstance(keyid, str) or not isinstance(sig, str) or keyid in valid:
                continue
            key = self._trust.keys.get(keyid)
            if key is None or (key.dev and not self._allow_dev_keys):
                continue
            try:
                raw = base64.b64decode(sig, validate=True)
            except (binascii.Error, ValueError):
                continue
            if key.verify(raw, data):
                valid.add(keyid)
        if len(valid) < self._trust.threshold:
            return None
        try:
            signed = _strict_json(data)
        except ValueError:
            return None
        return signed if isinstance(signed, dict) else None

    def _parse_envelope(self, label: str, body: bytes) -> Envelope:
        try:
            return Envelope.from_bytes(body, max_bytes=self._limits.max_index_bytes)
        except VerificationError as exc:
            raise _Refused(f"{label}: {exc.message}") from None

    def _check_signatures(self, label: str, envelope: Envelope) -> None:
        result = check_signatures(envelope, self._trust)
        rejected: frozenset[str] = frozenset()
        if not self._allow_dev_keys:
            rejected = result.valid & self._trust.dev_keyids
        counted = len(result.valid) - len(rejected)
        if counted >= result.threshold:
            return
        message = result.message
        if rejected:
            # result.message opens "signed by <valid> of <threshold>"; the dev keys
            # did not count here, so the number is corrected and the reason added.
            message = message.replace(
                f"signed by {len(result.valid)} of", f"signed by {counted} of", 1
            )
            noun = "dev key" if len(rejected) == 1 else "dev keys"
            message += f"; {noun} {_keyid_list(rejected)} not accepted: {ENV_ALLOW_DEV_KEYS} is off"
        raise _Refused(f"{label}: {message}")

    def _check_sequence(self, label: str, seen: _Seen | None, sequence: int, digest: str) -> None:
        if seen is None:
            return
        if sequence < seen.sequence:
            raise _Refused(
                f"{label} has sequence {sequence}, lower than {seen.sequence}, the highest this "
                f"host has seen (kept in {self._state_file}): refusing a rollback"
            )
        if sequence == seen.sequence and digest != seen.sha256:
            raise _Refused(
                f"{label} has sequence {sequence} with different content than this host saw "
                f"at that sequence (SHA-256 {short_keyid(digest)}, was "
                f"{short_keyid(seen.sha256)}): a changed index must have a higher sequence"
            )

    # -- the state on disk ---------------------------------------------------------------------

    def _load_seen(self) -> _SeenState:
        try:
            text = self._state_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return _SeenState()
        except OSError as exc:
            raise self._bad_state(exc.strerror or str(exc)) from None
        try:
            document = json.loads(text)
            if document.get("format") != _STATE_FORMAT:
                raise ValueError(f"format {document.get('format')!r} is not {_STATE_FORMAT}")
            remote = document["remote_index"]
            return _SeenState(
                remote=None if remote is None else _read_seen(remote),
                features={fid: _read_seen(s) for fid, s in document["features"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise self._bad_state(f"not a host state file: {exc}") from None

    def _bad_state(self, problem: str) -> ConfigError:
        # Refusing to start is safer than forgetting which sequences were seen.
        return ConfigError(
            f"host state file {self._state_file} cannot be used ({problem}); restore it, or "
            "delete it to start over (the host then accepts any sequence once)"
        )

    def _state_bytes(self) -> bytes:
        seen = self._seen
        document = {
            "format": _STATE_FORMAT,
            "remote_index": None if seen.remote is None else _write_seen(seen.remote),
            "features": {fid: _write_seen(s) for fid, s in sorted(seen.features.items())},
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")

    def _save_seen(self) -> None:
        """Write the state file (atomically, durably) when it changed since the last write."""
        data = self._state_bytes()
        if data == self._saved_state:
            return
        try:
            atomic_write(self._state_file, data)
            self._saved_state = data
        except OSError as exc:
            # The check itself passed; failing to record it only narrows what a restart knows.
            logger.error(
                "host state not saved path=%s error=%s", self._state_file, exc.strerror or exc
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


def _parse(label: str, parse: Callable[[Mapping[str, Any]], _T], signed: Mapping[str, Any]) -> _T:
    try:
        return parse(signed)
    except VerificationError as exc:
        raise _Refused(f"{label}: {exc.message}") from None


_SIGNATURES_OPEN = b'{"signatures":'
_SIGNED_KEY = b',"signed":'


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


def _check_expiry(label: str, expires_at: datetime, now: datetime) -> None:
    # Expired from the expiry second on, as ReleasesIndex.is_expired has it.
    if now >= expires_at:
        raise _Refused(
            f"{label} expired at {format_time(expires_at)} and it is now {format_time(now)}: "
            "refusing a frozen index"
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


def _strict_json(data: bytes) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise ValueError(f"duplicate key {key!r}")
            result[key] = value
        return result

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(data.decode("utf-8"), object_pairs_hook=pairs, parse_constant=constant)
    except (UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(str(exc)) from None


def _keyid_list(keyids: Iterable[str]) -> str:
    return ", ".join(short_keyid(k) for k in sorted(keyids))


def _read_seen(value: Any) -> _Seen:
    sequence, digest = value["sequence"], value["sha256"]
    if isinstance(sequence, bool) or not isinstance(sequence, int) or not isinstance(digest, str):
        raise ValueError(f"bad entry {value!r}")
    return _Seen(sequence, digest)


def _write_seen(seen: _Seen) -> dict[str, Any]:
    return {"sequence": seen.sequence, "sha256": seen.sha256}


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


def _production_setting(env: Mapping[str, str]) -> str | None:
    """The variable that says production ("RELEASECONTROL_ENV" or "NODE_ENV"), or None."""
    raw = env.get("RELEASECONTROL_ENV", "")
    word = raw.strip().lower()
    if word:
        if word not in ("development", "production"):
            raise ConfigError(
                f"RELEASECONTROL_ENV={raw!r} is not understood; set it to 'development' "
                "or 'production'"
            )
        return "RELEASECONTROL_ENV" if word == "production" else None
    if env.get("NODE_ENV", "").strip().lower() == "production":
        return "NODE_ENV"
    return None
