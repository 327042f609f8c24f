"""What an origin has published, read back for `lint routes`, `validate compat` and `doctor`.

The manifests that hosts can load are found the way a host finds them (host
protocol v2, docs/host-protocol.md), by the same checks (`releasecontrol.verifier`):

    remote-index.json                        signed: every shard, pinned
    └── index/<bits>/<bin>.json              signed: the features of one hash bin, pinned
        └── features/<id>/releases.json      signed: versions and channels
            └── features/<id>/<version>/manifest.json
                                             the stable and the canary version, each
                                             pinned by SHA-256 in releases.json

Every file's bytes are checked against what its parent pins, so what is linted
is exactly what hosts would load. With a trust file the signed files are also
checked for enough trusted signatures, the roots followed from it (dev keys
count only with `allow_dev_keys`); without one, only their content and pins.
Expiry is not checked: a lint is about content, and an expired index is the
host's and `release status`'s business.

Reading is separated from where the files are: a `Reader` maps an origin path
(`features/checkout/releases.json`) to its bytes, or None when there is no such
file. `http_reader` reads a CDN or origin over HTTP(S); `folder_reader` reads a
filesystem origin directly. Every failure is a VerificationError (a
`FetchError` for HTTP) with one sentence naming the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.fetch import Fetcher, FetchError
from releasecontrol.index import REMOTE_INDEX_PATH, ReleasesIndex
from releasecontrol.manifest import manifest_path
from releasecontrol.root import root_path
from releasecontrol.shards import shard_path
from releasecontrol.trust import TrustStore
from releasecontrol.verifier import Refusal, Verifier, check_manifest

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
    """The origin paths of the index files read: remote-index.json, each shard, then each
    releases.json."""
    signatures_checked: bool = False
    """True when every signed file was verified against a trust file."""
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
    """Read every feature's stable and canary manifest, each checked as a host checks it.

    `source` names the origin in messages and in the result. Without
    remote-index.json the result has `found=False` and no manifests. Raises
    VerificationError (a `Refusal` with the protocol's code for a check that
    failed) naming the file when one is missing, does not parse, is not what its
    parent pins, or (with `trust`) lacks enough trusted signatures; ConfigError
    when `trust` holds only dev keys and `allow_dev_keys` is off.
    """
    notes: tuple[str, ...] = ()
    if trust is None:
        verifier = Verifier.unsigned()
        notes = ("signatures were not checked: no trust file was available",)
    else:
        _check_usable(trust, allow_dev_keys)
        verifier = Verifier(trust, allow_dev_keys=allow_dev_keys)
    data = read(index_path)
    if data is None:
        return Published(source=source, found=False, notes=notes)

    def fetch_root(version: int) -> bytes:
        path = root_path(version)
        found = read(path)
        if found is None:
            raise Refusal("fetch", path, f"{path} is missing on the origin")
        return found

    top = verifier.top(data, None, fetch_root).model
    manifests: list[PublishedManifest] = []
    index_paths = [index_path]
    releases_paths: list[str] = []
    for name in sorted(top.shards):
        path = shard_path(top.bits, name)
        index_paths.append(path)
        shard = verifier.shard(
            top, name, _required(read, path, f"{index_path} pins it"), None
        ).model
        for feature_id, pin in sorted(shard.features.items()):
            rpath = f"features/{feature_id}/releases.json"
            releases_paths.append(rpath)
            releases_bytes = _required(read, rpath, f"{path} lists it for {feature_id!r}")
            releases = verifier.releases(feature_id, pin, releases_bytes, None).model
            manifests.extend(_live_manifests(read, rpath, releases))
    # Shards come in hash order; the result is by feature id (a stable sort keeps each
    # feature's stable manifest before its canary).
    manifests.sort(key=lambda m: m.feature_id)
    return Published(
        source=source,
        found=True,
        manifests=tuple(manifests),
        index_paths=tuple(index_paths + releases_paths),
        signatures_checked=trust is not None,
        remote_sequence=top.sequence,
        notes=notes,
    )


def _live_manifests(
    read: Reader, releases_path: str, releases: ReleasesIndex
) -> list[PublishedManifest]:
    channels: dict[str, list[str]] = {}
    for channel, version in (("stable", releases.stable), ("canary", releases.canary)):
        if version is not None:
            channels.setdefault(version, []).append(channel)
    out: list[PublishedManifest] = []
    fid = releases.feature_id
    for version, names in channels.items():
        entry = next(v for v in releases.versions if v.version == version)
        path = manifest_path(fid, version)
        data = _required(read, path, f"{releases_path} lists {version} as {' and '.join(names)}")
        manifest = check_manifest(fid, entry, data, max_bytes=MAX_MANIFEST_BYTES)
        out.append(PublishedManifest(fid, version, tuple(names), entry.manifest_sha256, manifest))
    return out


def _check_usable(trust: TrustStore, allow_dev_keys: bool) -> None:
    if allow_dev_keys:
        return
    try:
        trust.without_dev_keys()
    except ValueError as exc:
        raise ConfigError(
            f"the trust file's keys are dev keys, which are not counted here ({exc}); "
            "set FEATURE_ALLOW_INSECURE_DEV_KEYS=1 for a development origin, or trust "
            "production keys"
        ) from None


def _required(read: Reader, path: str, why: str) -> bytes:
    data = read(path)
    if data is None:
        raise Refusal("fetch", path, f"{path} is missing on the origin, but {why}")
    return data
