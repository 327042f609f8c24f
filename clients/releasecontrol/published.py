"""What an origin has published, read back for `lint routes`, `validate compat` and `doctor`.

The manifests that hosts can load are found the way a host finds them:

    remote-index.json                        the signed list of features
    └── features/<id>/releases.json          pinned by SHA-256 and sequence in the index
        └── features/<id>/<version>/manifest.json
                                             the stable and the canary version, each
                                             pinned by SHA-256 in releases.json

Every file's bytes are checked against the hash its parent names, so what is
linted is exactly what hosts would load. With a trust store the two signed
indices are also checked for enough trusted signatures (dev keys count only
with `allow_dev_keys`). Expiry is not checked: a lint is about content, and an
expired index is the host's and `release status`'s business.

Reading is separated from where the files are: a `Reader` maps an origin path
(`features/checkout/releases.json`) to its bytes, or None when there is no such
file. `http_reader` reads a CDN or origin over HTTP(S); `folder_reader` reads a
filesystem origin directly. Every failure is a VerificationError (a
`FetchError` for HTTP) with one sentence naming the file.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.fetch import Fetcher, FetchError
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    Envelope,
    ReleasesIndex,
    RemoteIndex,
    check_signatures,
)
from releasecontrol.manifest import manifest_path, sha256_hex
from releasecontrol.trust import TrustStore

__all__ = [
    "MAX_INDEX_BYTES",
    "MAX_MANIFEST_BYTES",
    "Published",
    "PublishedManifest",
    "Reader",
    "folder_reader",
    "http_reader",
    "read_published",
    "read_published_at",
    "split_index_url",
]

MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024

Reader = Callable[[str], bytes | None]
"""Origin path (relative, `/`-separated) -> the file's bytes, or None when it does not exist."""


@dataclass(frozen=True)
class PublishedManifest:
    """One live version's manifest as hosts load it, and where it is live."""

    feature_id: str
    version: str
    channels: tuple[str, ...]
    """'stable', 'canary', or both (a canary that is also the stable version)."""
    sha256: str
    """The SHA-256 of the manifest's bytes, as releases.json pins it."""
    manifest: Mapping[str, Any]
    """The parsed manifest.json."""


@dataclass(frozen=True)
class Published:
    """Everything live on one origin: the manifests and the index files they came from."""

    source: str
    """Where it was read: the index URL, or the origin folder's remote-index.json."""
    found: bool
    """False when the origin has no remote-index.json: nothing is published yet."""
    manifests: tuple[PublishedManifest, ...] = ()
    """The stable and canary manifests of every feature, by feature id then version."""
    index_paths: tuple[str, ...] = ()
    """The origin paths of the index files read: remote-index.json, then each releases.json."""
    signatures_checked: bool = False
    """True when both index levels were verified against a trust store."""
    remote_sequence: int | None = None
    """The remote index's sequence, when one was found."""
    notes: tuple[str, ...] = field(default=())
    """Sentences about what was not checked (e.g. no trust store to verify signatures)."""

    def manifest_dicts(self) -> list[Mapping[str, Any]]:
        """The manifests alone, in order: what `lint_routes` and `check_compat` take."""
        return [m.manifest for m in self.manifests]

    def to_dict(self) -> dict[str, Any]:
        """What `--output json` shows of the source."""
        return {
            "source": self.source,
            "published": self.found,
            "remote_sequence": self.remote_sequence,
            "signatures_checked": self.signatures_checked,
            "manifests": [
                {
                    "feature_id": m.feature_id,
                    "version": m.version,
                    "channels": list(m.channels),
                    "manifest_sha256": m.sha256,
                }
                for m in self.manifests
            ],
        }


# -- readers -------------------------------------------------------------------------------------


def split_index_url(index_url: str) -> tuple[str, str]:
    """(the origin's base URL ending in '/', the index's file name) of a remote index URL.

    'https://cdn.example.com/f/remote-index.json' -> ('https://cdn.example.com/f/',
    'remote-index.json'); a URL ending in '/' names the folder, and the index is
    remote-index.json in it. Raises ConfigError for a URL that is not http(s).
    """
    parts = urlsplit(index_url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ConfigError(
            f"{index_url!r} is not an http(s) URL of remote-index.json; pass e.g. "
            "--index-url https://cdn.example.com/remote-index.json"
        )
    base, _, name = index_url.rpartition("/")
    return base + "/", name or REMOTE_INDEX_PATH


def http_reader(base_url: str, *, fetcher: Fetcher | None = None) -> Reader:
    """A Reader of the origin at `base_url` (ending in '/') over HTTP(S); 404 means no file."""
    fetch = fetcher or Fetcher(timeout_seconds=10.0, user_agent="releasectl")
    base = base_url if base_url.endswith("/") else base_url + "/"

    def read(path: str) -> bytes | None:
        limit = MAX_MANIFEST_BYTES if path.endswith("/manifest.json") else MAX_INDEX_BYTES
        try:
            return fetch.get(urljoin(base, path), max_bytes=limit).body
        except FetchError as exc:
            if exc.status == 404:
                return None
            raise

    return read


def folder_reader(origin_dir: Path) -> Reader:
    """A Reader of a filesystem origin: the files under `origin_dir`, read directly."""

    def read(path: str) -> bytes | None:
        file = origin_dir.joinpath(*_checked_path(path).split("/"))
        try:
            return file.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise VerificationError(
                f"{file} cannot be read ({exc.strerror or exc}); check the origin folder's "
                "permissions"
            ) from None

    return read


def _checked_path(path: str) -> str:
    """`path` when it is a plain relative origin path; VerificationError otherwise."""
    segments = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(s in ("", ".", "..") for s in segments)
        or not path.isprintable()
    ):
        raise VerificationError(f"the origin path {path!r} is not a plain relative path")
    return path


# -- reading -------------------------------------------------------------------------------------


def read_published_at(
    index_url: str,
    *,
    trust: TrustStore | None = None,
    allow_dev_keys: bool = False,
    fetcher: Fetcher | None = None,
) -> Published:
    """`read_published` over HTTP(S) from the remote index at `index_url`."""
    base, name = split_index_url(index_url)
    return read_published(
        http_reader(base, fetcher=fetcher),
        source=index_url,
        index_path=name,
        trust=trust,
        allow_dev_keys=allow_dev_keys,
    )


def read_published(
    read: Reader,
    *,
    source: str,
    index_path: str = REMOTE_INDEX_PATH,
    trust: TrustStore | None = None,
    allow_dev_keys: bool = False,
) -> Published:
    """Read every feature's stable and canary manifest, each checked against its parent.

    `source` names the origin in messages and in the result. Without
    remote-index.json the result has `found=False` and no manifests. Raises
    VerificationError naming the file when one is missing, does not parse, has
    another hash or sequence than its parent names, or (with `trust`) lacks
    enough trusted signatures; ConfigError when `trust` holds only dev keys and
    `allow_dev_keys` is off.
    """
    verify_with = _usable_trust(trust, allow_dev_keys)
    notes: tuple[str, ...] = ()
    if verify_with is None:
        notes = ("signatures were not checked: no trust file was available",)
    data = read(index_path)
    if data is None:
        return Published(source=source, found=False, notes=notes)
    remote = RemoteIndex.from_dict(_envelope(index_path, data, verify_with).signed)

    manifests: list[PublishedManifest] = []
    index_paths = [index_path]
    for feature_id in sorted(remote.features):
        entry = remote.features[feature_id]
        path = _resolve(index_path, entry.url)
        index_paths.append(path)
        releases_bytes = _required(read, path, f"{index_path} lists it for {feature_id!r}")
        if sha256_hex(releases_bytes) != entry.sha256:
            raise VerificationError(
                f"{path} has sha256 {sha256_hex(releases_bytes)[:12]}…, but {index_path} pins "
                f"{entry.sha256[:12]}…: the origin serves files of different moments"
            )
        releases = ReleasesIndex.from_dict(_envelope(path, releases_bytes, verify_with).signed)
        if releases.feature_id != feature_id:
            raise VerificationError(
                f"{path} is the index of feature {releases.feature_id!r}, not {feature_id!r}"
            )
        if releases.sequence != entry.sequence:
            raise VerificationError(
                f"{path} has sequence {releases.sequence}, but {index_path} says {entry.sequence}"
            )
        manifests.extend(_live_manifests(read, path, releases))
    return Published(
        source=source,
        found=True,
        manifests=tuple(manifests),
        index_paths=tuple(index_paths),
        signatures_checked=verify_with is not None,
        remote_sequence=remote.sequence,
        notes=notes,
    )


def _live_manifests(
    read: Reader, releases_path: str, releases: ReleasesIndex
) -> list[PublishedManifest]:
    listed = {v.version: v.manifest_sha256 for v in releases.versions}
    channels: dict[str, list[str]] = {}
    for channel, version in (("stable", releases.stable), ("canary", releases.canary)):
        if version is not None:
            channels.setdefault(version, []).append(channel)
    out: list[PublishedManifest] = []
    fid = releases.feature_id
    for version, names in channels.items():
        path = manifest_path(fid, version)
        data = _required(read, path, f"{releases_path} lists {version} as {' and '.join(names)}")
        if sha256_hex(data) != listed[version]:
            raise VerificationError(
                f"{path} has sha256 {sha256_hex(data)[:12]}…, but {releases_path} names "
                f"{listed[version][:12]}…"
            )
        manifest = _manifest(path, data)
        if manifest.get("id") != fid or manifest.get("version") != version:
            raise VerificationError(
                f"{path} is the manifest of {manifest.get('id')!r} {manifest.get('version')!r}, "
                f"not {fid!r} {version}"
            )
        out.append(PublishedManifest(fid, version, tuple(names), listed[version], manifest))
    return out


def _usable_trust(trust: TrustStore | None, allow_dev_keys: bool) -> TrustStore | None:
    if trust is None or allow_dev_keys:
        return trust
    try:
        return trust.without_dev_keys()
    except ValueError as exc:
        raise ConfigError(
            f"the trust file's keys are dev keys, which are not counted here ({exc}); "
            "set FEATURE_ALLOW_INSECURE_DEV_KEYS=1 for a development origin, or trust "
            "production keys"
        ) from None


def _envelope(path: str, data: bytes, trust: TrustStore | None) -> Envelope:
    try:
        envelope = Envelope.from_bytes(data)
    except VerificationError as exc:
        raise VerificationError(f"{path}: {exc.message}") from None
    if trust is not None:
        result = check_signatures(envelope, trust)
        if not result.verified:
            raise VerificationError(f"{path} is not trusted: {result.message}")
    return envelope


def _manifest(path: str, data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VerificationError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise VerificationError(f"{path} does not hold a JSON object")
    return value


def _required(read: Reader, path: str, why: str) -> bytes:
    data = read(path)
    if data is None:
        raise VerificationError(f"{path} is missing on the origin, but {why}")
    return data


def _resolve(index_path: str, url: str) -> str:
    """The origin path of a URL the index names relative to itself."""
    if "://" in url or url.startswith("/"):
        raise VerificationError(
            f"{index_path} names {url!r}; only paths relative to the index are read"
        )
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(index_path), url))
    return _checked_path(joined)
