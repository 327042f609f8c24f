"""A feature version's manifest: names, validation, canonical bytes, and the source folder.

The same rules serve the CLI (which reads a feature folder and fills in sizes and
hashes), the server (which refuses a bad manifest before anything is stored) and
hosts (which check the manifest they fetched).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import rfc8785

from releasecontrol.errors import InvalidArgument
from releasecontrol.limits import (
    DEFAULT_MAX_MANIFEST_BYTES,
    MAX_ASSETS,
    MAX_VERSION_CHARS,
    check_asset_path,
    load_json,
    shown,
)

# A lowercase DNS label: it becomes a path segment on the CDN, so nothing else.
_FEATURE_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_DURATION_PART = re.compile(r"(\d+)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

__all__ = [
    "DEFAULT_MAX_MANIFEST_BYTES",
    "MAX_ASSETS",
    "SourceFeature",
    "artifact_path",
    "canonical_bytes",
    "format_duration",
    "load_feature_folder",
    "manifest_path",
    "parse_duration",
    "parse_manifest",
    "sha256_hex",
    "validate_feature_id",
    "validate_manifest",
    "validate_version",
]


def validate_feature_id(value: str, field: str = "feature_id") -> str:
    """Return `value` if it is a lowercase DNS label; raise InvalidArgument naming `field`."""
    if not _FEATURE_ID.fullmatch(value or ""):
        raise InvalidArgument(
            f"{field} {shown(value)} is not a valid feature id: use 1-63 lowercase letters, digits "
            "and '-', starting and ending with a letter or digit (e.g. 'checkout')",
            field=field,
        )
    return value


def validate_version(value: str, field: str = "version") -> str:
    """Return `value` if it is a SemVer 2.0 version; raise InvalidArgument naming `field`."""
    import semver  # here, not at the top: most CLI commands never need it (start time)

    if not value or len(value) > MAX_VERSION_CHARS or not semver.Version.is_valid(value):
        raise InvalidArgument(
            f"{field} {shown(value)} is not a SemVer 2.0 version: use MAJOR.MINOR.PATCH "
            f"such as '1.4.0' or '2.0.0-rc.1', without a leading 'v', at most "
            f"{MAX_VERSION_CHARS} characters",
            field=field,
        )
    return value


def parse_duration(text: str) -> int:
    """Seconds in a duration such as '30m', '1h30m', '90s', '2d' or a bare number of seconds."""
    cleaned = text.strip().lower().replace(" ", "")
    if cleaned.isdigit():
        return int(cleaned)
    parts = _DURATION_PART.findall(cleaned)
    if not parts or "".join(n + u for n, u in parts) != cleaned:
        raise InvalidArgument(
            f"duration {shown(text)} is not understood: use e.g. 90s, 30m, 1h30m or 2d",
            field="duration",
        )
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in parts)


def format_duration(seconds: int) -> str:
    """'1h 5m', '30m', '45s', '0s': the largest two units, for people."""
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(out[:2])


# An asset path's extension kept on its artifact: what CDNs and browsers take its type from.
_EXTENSION = re.compile(r"\.[a-z0-9]{1,10}\Z")


def artifact_path(sha256: str, asset_path: str) -> str:
    """Where an asset's bytes live on the origin: `artifacts/<sha256><ext>`.

    Content-addressed and shared by every feature; `<ext>` is the extension of
    the asset's path in its manifest (`.js` for `index.js`, none for `LICENSE`),
    so a CDN serves it with its content type: a browser refuses a module
    script served as application/octet-stream.
    """
    suffix = PurePosixPath(asset_path).suffix.lower()
    return f"artifacts/{sha256}{suffix if _EXTENSION.match(suffix) else ''}"


def manifest_path(feature_id: str, version: str) -> str:
    """Where a version's manifest lives on the origin."""
    return f"features/{feature_id}/{version}/manifest.json"


def canonical_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The RFC 8785 bytes of a manifest: what is stored, served and hashed."""
    return bytes(rfc8785.dumps(manifest))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_manifest(
    manifest: Any, *, feature_id: str | None = None, require_hashes: bool = True
) -> dict[str, Any]:
    """Check a manifest's structure and return it as a plain dict.

    Requires `id` (a feature id, equal to `feature_id` when given), `version`
    (SemVer), `entry` (one of the asset paths), `routes` (paths starting with '/'),
    `compat` (`host`: a range string; `shared`: name -> range) and `assets`
    (unique relative paths, each with `size` and `sha256` when `require_hashes`).
    Unknown fields are kept. Raises InvalidArgument naming the field.
    """
    if not isinstance(manifest, dict):
        raise InvalidArgument("manifest.json must hold a JSON object", field="manifest")
    fid = manifest.get("id")
    if not isinstance(fid, str):
        raise InvalidArgument(
            "manifest field 'id' is missing: set it to the feature id", field="manifest.id"
        )
    validate_feature_id(fid, field="manifest.id")
    if feature_id is not None and fid != feature_id:
        raise InvalidArgument(
            f"manifest id {fid!r} does not match the feature {feature_id!r} being published; "
            "fix the manifest or pass the right --feature",
            field="manifest.id",
        )
    version = manifest.get("version")
    if not isinstance(version, str):
        raise InvalidArgument(
            "manifest field 'version' is missing: set a SemVer version", field="manifest.version"
        )
    validate_version(version, field="manifest.version")
    routes = manifest.get("routes")
    if not isinstance(routes, list) or not all(
        isinstance(r, str) and r.startswith("/") for r in routes
    ):
        raise InvalidArgument(
            "manifest field 'routes' must be a list of path patterns starting with '/'",
            field="manifest.routes",
        )
    compat = manifest.get("compat")
    if not isinstance(compat, dict) or not isinstance(compat.get("host"), str):
        raise InvalidArgument(
            "manifest field 'compat' must be an object with 'host' (a SemVer range such as "
            "'^2.0.0') and optionally 'shared' (library name -> range)",
            field="manifest.compat",
        )
    shared = compat.get("shared", {})
    if not isinstance(shared, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in shared.items()
    ):
        raise InvalidArgument(
            "manifest field 'compat.shared' must map names to range strings",
            field="manifest.compat.shared",
        )
    assets = manifest.get("assets")
    if not isinstance(assets, list) or not assets:
        raise InvalidArgument(
            "manifest field 'assets' must list at least one file", field="manifest.assets"
        )
    if len(assets) > MAX_ASSETS:
        raise InvalidArgument(
            f"manifest lists {len(assets)} assets; the limit is {MAX_ASSETS}",
            field="manifest.assets",
        )
    seen: dict[str, None] = {}  # the paths, in the order listed
    for i, asset in enumerate(assets):
        where = f"manifest.assets[{i}]"
        if not isinstance(asset, dict):
            raise InvalidArgument(
                f"{where} must be an object with path, size and sha256", field=where
            )
        path = check_asset_path(asset.get("path"), f"{where}.path")
        if path in seen:
            raise InvalidArgument(
                f"{where}.path {shown(path)} is listed twice; list each file once",
                field=f"{where}.path",
            )
        seen[path] = None
        size, digest = asset.get("size"), asset.get("sha256")
        bad_size = not isinstance(size, int) or isinstance(size, bool) or size < 0
        if (require_hashes or size is not None) and bad_size:
            raise InvalidArgument(f"{where}.size must be a whole number of bytes", field=where)
        bad_digest = not isinstance(digest, str) or not _SHA256.match(digest)
        if (require_hashes or digest is not None) and bad_digest:
            raise InvalidArgument(f"{where}.sha256 must be 64 lowercase hex digits", field=where)
    entry = manifest.get("entry")
    example = next(iter(seen), "index.js")
    if entry is None:
        raise InvalidArgument(
            "manifest field 'entry' is missing: name the asset hosts load first, one of the "
            f'listed asset paths (e.g. "entry": "{example}")',
            field="manifest.entry",
        )
    if not isinstance(entry, str) or entry not in seen:
        raise InvalidArgument(
            f"manifest field 'entry' ({shown(entry)}) must be the path of one of the listed "
            f'assets (e.g. "{example}")',
            field="manifest.entry",
        )
    return manifest


def parse_manifest(
    data: bytes, *, feature_id: str | None = None, max_bytes: int = DEFAULT_MAX_MANIFEST_BYTES
) -> dict[str, Any]:
    """Parse and validate manifest bytes (see validate_manifest); raises InvalidArgument."""
    value = load_json(data, what="manifest.json", field="manifest", max_bytes=max_bytes)
    manifest = validate_manifest(value, feature_id=feature_id)
    try:
        # The stored and signed form is RFC 8785: refuse what it cannot encode now,
        # not after the upload (NaN, Infinity, integers beyond 2^53).
        canonical_bytes(manifest)
    except rfc8785.CanonicalizationError:  # pragma: no cover - load_json refuses these first
        raise InvalidArgument(
            "manifest.json holds a value JSON canonicalization (RFC 8785) cannot encode; "
            "use integers up to 2^53-1, finite numbers and valid Unicode strings",
            field="manifest",
        ) from None
    return manifest


@dataclass(frozen=True)
class SourceFeature:
    """A feature folder ready to publish: the filled-in manifest and its files."""

    folder: Path
    manifest: dict[str, Any]
    files: dict[str, Path]

    @property
    def feature_id(self) -> str:
        return str(self.manifest["id"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def total_bytes(self) -> int:
        return sum(int(a["size"]) for a in self.manifest["assets"])


def load_feature_folder(
    folder: Path,
    *,
    feature_id: str | None = None,
    max_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
) -> SourceFeature:
    """Read `folder/manifest.json`, fill in each asset's size and sha256 from its file.

    A listed size or sha256 that does not match the file is refused, naming the
    file. Raises InvalidArgument (bad manifest, missing file) or NotFound-like
    InvalidArgument when the folder has no manifest.
    """
    manifest_file = folder / "manifest.json"
    if not manifest_file.is_file():
        raise InvalidArgument(
            f"no manifest.json in {folder}: build the feature first, or pass --dir",
            field="manifest",
        )
    manifest = load_json(
        manifest_file.read_bytes(), what=str(manifest_file), field="manifest", max_bytes=max_bytes
    )
    validate_manifest(manifest, feature_id=feature_id, require_hashes=False)
    files: dict[str, Path] = {}
    root = folder.resolve()
    for asset in manifest["assets"]:
        path = asset["path"]
        file = (folder / path).resolve()
        if not file.is_relative_to(root) or not file.is_file():
            raise InvalidArgument(
                f"asset {path!r} listed in {manifest_file} is not a file in {folder}",
                field="manifest.assets",
            )
        digest = hashlib.sha256()
        with file.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        size, hexdigest = file.stat().st_size, digest.hexdigest()
        if asset.get("sha256") not in (None, hexdigest):
            raise InvalidArgument(
                f"asset {path!r}: manifest says sha256 {asset['sha256']} but the file has "
                f"{hexdigest}; rebuild, or remove the sha256 so publish fills it in",
                field="manifest.assets",
            )
        if asset.get("size") not in (None, size):
            raise InvalidArgument(
                f"asset {path!r}: manifest says size {asset['size']} but the file has {size} "
                "bytes; rebuild, or remove the size so publish fills it in",
                field="manifest.assets",
            )
        asset["size"], asset["sha256"] = size, hexdigest
        files[path] = file
    validate_manifest(manifest, feature_id=feature_id)
    return SourceFeature(folder=folder, manifest=manifest, files=files)
