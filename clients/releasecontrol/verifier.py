"""Every check a host makes on what a CDN serves, in order: the one place they live.

`Verifier` is what a host trusts and has seen (as python-tuf's trusted metadata
set is): the trust file, the trusted root, and the high-water marks of
`remote-index.json` and of each `releases.json`. It does no I/O: the caller
fetches a file, hands its bytes over, and gets the verified model back or a
`Refusal` carrying one of the protocol's codes, the origin path of the file and
a sentence saying what was wrong and what to do (docs/host-protocol.md, 6.1).

    verifier = Verifier(trust, allow_dev_keys=False)
    top = verifier.top(data, now, fetch_root)        # the root chain on the way
    shard = verifier.shard(top.model, bin_name, shard_bytes, now)
    releases = verifier.releases(feature_id, pin, releases_bytes, now)
    manifest = check_manifest(feature_id, version, releases_entry.manifest_sha256, bytes)
    check_asset(path, asset, bytes)

The Python host (`releasecontrol.host`), `release status --index-url`,
`verify remote-cdn`, `lint routes`, `doctor` and the admin UI's hot refresh all
go through here; the JavaScript host implements the same page and runs the same
vectors (tests/vectors/).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from releasecontrol.canonical import NotCanonical, parse_canonical
from releasecontrol.errors import VerificationError
from releasecontrol.fields import describe, format_time
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    SCHEMA_VERSION,
    TYPE_RELEASES,
    Envelope,
    ReleasesIndex,
    VersionEntry,
    check_signatures,
    releases_path,
)
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol.root import ROLE_INDEX, ROLE_ROOT, TYPE_ROOT, Root, root_path
from releasecontrol.shards import TYPE_REMOTE_INDEX, TYPE_SHARD, Pin, RemoteIndex, Shard, bin_of
from releasecontrol.trust import SigningKey, TrustStore, short_keyid

__all__ = [
    "CODES",
    "MAX_ROOT_STEPS",
    "Mark",
    "Refusal",
    "Signed",
    "Verifier",
    "check_asset",
    "check_manifest",
    "check_pin",
    "read_signed",
]

T = TypeVar("T")

CODES = frozenset(
    {
        "fetch",
        "timeout",
        "too-large",
        "length",
        "hash",
        "malformed",
        "not-canonical",
        "schema-version",
        "signature",
        "mismatch",
        "expired",
        "rollback",
        "root",
        "stale-root",
        "not-found",
    }
)
"""The refusal codes of docs/host-protocol.md 6.1: the contract between the two hosts."""

MAX_ROOT_STEPS = 32
"""The most root versions a host follows in one refresh."""

_STATE_FORMAT = 2
_SIGNED_MEMBER = b',"signed":'
_SIGNATURES_OPEN = b'{"signatures":'


class Refusal(VerificationError):
    """A file failed a check: the protocol's `code`, the origin path `file`, and why."""

    def __init__(self, code: str, file: str, message: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown refusal code {code!r}")
        super().__init__(message)
        self.code = code
        self.file = file

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "file": self.file, "message": self.message}


@dataclass(frozen=True)
class Mark:
    """The highest sequence seen of a file, and the SHA-256 of its signed body at it.

    `body_sha256` None: carried over from a host state that kept only sequences;
    any body at that sequence is accepted once.
    """

    sequence: int
    body_sha256: str | None


@dataclass(frozen=True)
class Signed(Generic[T]):
    """A signed file that passed every check: its bytes, its model and what it proves."""

    path: str
    content: bytes
    model: T
    body_sha256: str
    keyids: frozenset[str]
    """The keys whose signatures counted."""

    @property
    def mark(self) -> Mark:
        return Mark(getattr(self.model, "sequence", 0), self.body_sha256)


# --- reading one file -------------------------------------------------------------------------


def read_signed(path: str, data: bytes) -> tuple[Envelope, bytes]:
    """Steps 1 to 4 of reading a signed file: UTF-8 JSON, canonical, an envelope, schema 2.

    Returns the envelope and the JCS bytes of its `signed` (a slice of `data`).
    Raises Refusal (`malformed`, `not-canonical`, `schema-version`).
    """
    try:
        document = parse_canonical(data)
    except NotCanonical as exc:
        raise Refusal(
            "malformed" if exc.malformed else "not-canonical", path, f"{path}: {exc}"
        ) from None
    try:
        envelope = Envelope.from_dict(document)
    except VerificationError as exc:
        raise Refusal("malformed", path, f"{path}: {exc.message}") from None
    found = envelope.signed.get("schema_version")
    if found != SCHEMA_VERSION or type(found) is not int:
        raise Refusal(
            "schema-version",
            path,
            f"{path} has schema_version {describe(found)}; this host speaks {SCHEMA_VERSION}: "
            "upgrade the control plane that publishes it, or use a host that speaks "
            f"{describe(found)}",
        )
    # Canonical, so "signatures" comes first and the rest of the file after the first
    # `,"signed":` (which cannot occur inside a JSON string) is the JCS of the body.
    at = data.index(_SIGNED_MEMBER, len(_SIGNATURES_OPEN))
    return envelope, data[at + len(_SIGNED_MEMBER) : -1]


def check_pin(path: str, data: bytes, pin: Pin, parent: str) -> None:
    """The length and SHA-256 `parent` pins for `path`; raises Refusal (`length`, `hash`)."""
    if len(data) != pin.length:
        raise Refusal(
            "length",
            path,
            f"{path} is {len(data)} bytes, not the {pin.length} {parent} pins: the origin "
            "serves another file than the one signed (a stale CDN cache or tampering)",
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != pin.sha256:
        raise Refusal(
            "hash",
            path,
            f"{path} has SHA-256 {short_keyid(digest)}, not the {short_keyid(pin.sha256)} "
            f"{parent} pins: the origin serves another file than the one signed (a stale CDN "
            "cache or tampering)",
        )


def _check_role(
    path: str,
    envelope: Envelope,
    signed_bytes: bytes,
    role: TrustStore,
    role_name: str,
    allow_dev_keys: bool,
) -> frozenset[str]:
    result = check_signatures(
        envelope, role, allow_dev_keys=allow_dev_keys, signed_bytes=signed_bytes
    )
    if not result.verified:
        raise Refusal(
            "signature",
            path,
            f"{path} is not signed by the {role_name} keys: {result.message}",
        )
    return result.valid


def _mismatch(path: str, what: str, found: Any, expected: Any) -> Refusal:
    return Refusal(
        "mismatch",
        path,
        f"{path}: {what} is {describe(found)}, not {describe(expected)}: a signed file served "
        "in another one's place (mix and match)",
    )


def _model(path: str, parse: Callable[[Mapping[str, Any]], T], body: Mapping[str, Any]) -> T:
    try:
        return parse(body)
    except VerificationError as exc:
        raise Refusal("malformed", path, f"{path}: {exc.message}") from None


def _check_fresh(path: str, expires_at: datetime, now: datetime | None) -> None:
    # now None: a tool reading content (lint), for which expiry is the host's business.
    if now is not None and now >= expires_at:
        raise Refusal(
            "expired",
            path,
            f"{path} expired at {format_time(expires_at)} and it is now {format_time(now)}: "
            "refusing a frozen index (the control plane re-signs well before expiry; check "
            "that it runs and reaches the origin)",
        )


def _integer_field(path: str, body: Mapping[str, Any], name: str, minimum: int) -> int:
    value = body.get(name)
    if type(value) is not int or value < minimum:
        raise Refusal(
            "malformed",
            path,
            f'{path}: field "{name}" must be an integer of at least {minimum}, not '
            f"{describe(value)}",
        )
    return value


# --- what a host trusts -------------------------------------------------------------------------


class Verifier:
    """The trust file, the trusted root and the high-water marks, and the checks that use them.

    Thread-safe: the marks are changed under a lock, so features may be
    verified in parallel.
    """

    def __init__(self, trust: TrustStore, *, allow_dev_keys: bool = False) -> None:
        self._trust = trust
        self._allow_dev_keys = allow_dev_keys
        self._signatures = True
        self._lock = threading.Lock()
        self._root: Signed[Root] | None = None
        self._top_mark: Mark | None = None
        self._marks: dict[str, Mark] = {}

    @classmethod
    def unsigned(cls) -> Verifier:
        """A verifier that checks everything but signatures and roots: for a tool reading an
        origin it has no trust file for (`lint routes` without one). Never for a host."""
        placeholder = TrustStore.for_keys([SigningKey.generate().trusted_key()])
        verifier = cls(placeholder)
        verifier._signatures = False
        return verifier

    # -- state --------------------------------------------------------------------------------

    @property
    def trust(self) -> TrustStore:
        return self._trust

    @property
    def allow_dev_keys(self) -> bool:
        return self._allow_dev_keys

    @property
    def root(self) -> Root | None:
        """The trusted root, None before the first one verified."""
        return None if self._root is None else self._root.model

    @property
    def top_mark(self) -> Mark | None:
        return self._top_mark

    def mark(self, feature_id: str) -> Mark | None:
        with self._lock:
            return self._marks.get(feature_id)

    def state(self) -> dict[str, Any]:
        """What a host keeps between runs, as JSON values (see `load_state`)."""
        with self._lock:
            return {
                "format": _STATE_FORMAT,
                "trust_fingerprint": self._trust.fingerprint,
                "root": None
                if self._root is None
                else base64.b64encode(self._root.content).decode("ascii"),
                "remote_index": _mark_dict(self._top_mark),
                "features": {fid: _mark_dict(m) for fid, m in sorted(self._marks.items())},
            }

    def load_state(self, document: Any) -> None:
        """Take back what `state()` returned (or a host state of format 1, whose sequences
        are kept without their hashes).

        The stored root is used only when the trust file is still the one it was
        verified from; otherwise the host starts over from the trust file (the
        marks are kept). Raises ValueError when the document is not a host state.
        """
        if not isinstance(document, dict) or document.get("format") not in (1, _STATE_FORMAT):
            raise ValueError(f"format {describe(_get(document, 'format'))} is not 1 or 2")
        features = document["features"]
        if not isinstance(features, dict):
            raise ValueError('"features" is not an object')
        if document["format"] == 1:
            # Host protocol v1 kept the hash of the file bytes, which v2 re-signs at the
            # same sequence: the sequences still hold, the hashes cannot.
            top = _read_mark(document["remote_index"], legacy=True)
            marks = {fid: _read_mark(m, legacy=True) for fid, m in features.items()}
            root = None
        else:
            top = _read_mark(document["remote_index"])
            marks = {fid: _read_mark(m) for fid, m in features.items()}
            root = None
            encoded = document["root"]
            if encoded is not None and document.get("trust_fingerprint") == self._trust.fingerprint:
                try:
                    content = base64.b64decode(encoded, validate=True)
                    envelope, _ = read_signed("root", content)
                    model = Root.from_dict(envelope.signed)
                except VerificationError as exc:
                    raise ValueError(f"its root cannot be read: {exc.message}") from None
                root = Signed(root_path(model.version), content, model, "", frozenset())
        with self._lock:
            self._top_mark = top
            self._marks = {fid: m for fid, m in marks.items() if m is not None}
            self._root = root

    def forget(self, feature_ids: set[str]) -> None:
        """Drop the marks of features no longer published (a later feature of the same id
        starts a new history: the top level's sequence still guards it)."""
        with self._lock:
            for feature_id in feature_ids:
                self._marks.pop(feature_id, None)

    # -- roots ----------------------------------------------------------------------------------

    def _update_root(
        self, named: int, now: datetime | None, fetch_root: Callable[[int], bytes]
    ) -> None:
        """Follow the chain of roots to version `named` (4.2); raises Refusal."""
        current = self._root.model.version if self._root is not None else None
        first = self._trust.root_version
        if current is None:
            if named < first:
                raise Refusal(
                    "stale-root",
                    REMOTE_INDEX_PATH,
                    f"{REMOTE_INDEX_PATH} is signed under root {named}, older than root {first} "
                    "this host's trust file names: refusing an index of a root it left behind",
                )
            start = first
        else:
            if named < current:
                raise Refusal(
                    "stale-root",
                    REMOTE_INDEX_PATH,
                    f"{REMOTE_INDEX_PATH} is signed under root {named}, older than root "
                    f"{current} this host trusts: refusing an index of a root it left behind",
                )
            start = current + 1
        if named - (start - 1) > MAX_ROOT_STEPS:
            raise Refusal(
                "root",
                REMOTE_INDEX_PATH,
                f"{REMOTE_INDEX_PATH} names root {named}, more than {MAX_ROOT_STEPS} versions "
                f"ahead of root {start - 1}: update the host's trust file to newer root keys",
            )
        for version in range(start, named + 1):
            path = root_path(version)
            try:
                data = fetch_root(version)
            except Refusal as exc:
                raise Refusal(
                    "root", path, f"cannot follow the chain of roots: {exc.message}"
                ) from None
            self._accept_root(version, path, data)
        if self._root is None:
            raise Refusal("root", root_path(first), "no root is trusted yet")
        root = self._root.model
        if now is not None and root.is_expired(now):
            path = root_path(root.version)
            raise Refusal(
                "expired",
                path,
                f"{path} (the trusted root) expired at {format_time(root.expires_at)} and it "
                f"is now {format_time(now)}: the root keys must sign a new root version",
            )

    def _accept_root(self, version: int, path: str, data: bytes) -> None:
        def refused(reason: str) -> Refusal:
            return Refusal("root", path, f"cannot follow the chain of roots: {path} {reason}")

        try:
            envelope, signed_bytes = read_signed(path, data)
        except Refusal as exc:
            raise refused(f"cannot be read ({exc.code}: {exc.message})") from None
        previous = self._root.model if self._root is not None else None
        signer = previous.role(ROLE_ROOT) if previous is not None else self._trust
        by = f"root {previous.version}'s root keys" if previous else "the trust file's keys"
        result = check_signatures(
            envelope, signer, allow_dev_keys=self._allow_dev_keys, signed_bytes=signed_bytes
        )
        if not result.verified:
            raise refused(f"is not signed by {by}: {result.message}")
        if envelope.signed.get("type") != TYPE_ROOT:
            raise refused(f'has type {describe(envelope.signed.get("type"))}, not "root"')
        try:
            root = Root.from_dict(envelope.signed)
        except VerificationError as exc:
            raise refused(f"is malformed: {exc.message}") from None
        if root.version != version:
            raise refused(f"has version {root.version}, not {version}")
        if previous is not None:
            own = check_signatures(
                envelope,
                root.role(ROLE_ROOT),
                allow_dev_keys=self._allow_dev_keys,
                signed_bytes=signed_bytes,
            )
            if not own.verified:
                raise refused(f"is not signed by its own root keys: {own.message}")
        with self._lock:
            if previous is not None and not set(previous.roles[ROLE_INDEX].keyids) <= set(
                root.roles[ROLE_INDEX].keyids
            ):
                # An index key was revoked: everything seen was signed by keys no longer
                # trusted, so forgetting the marks lets hosts recover from a key that
                # signed a huge sequence (docs/host-protocol.md 4.2).
                self._top_mark = None
                self._marks = {}
            self._root = Signed(path, data, root, "", result.valid)

    def follow_roots(self, roots: list[bytes]) -> Root:
        """Trust each root of `roots` in turn: the first is the trust file's `root_version`
        (or the one after the trusted root), each next one the version after. Returns the
        newest; raises Refusal (`root`) naming the first that fails. Expiry is the caller's
        to check. What a server checks its own roots with."""
        for data in roots:
            version = (
                self._trust.root_version if self._root is None else self._root.model.version + 1
            )
            self._accept_root(version, root_path(version), data)
        if self._root is None:
            raise Refusal("root", root_path(self._trust.root_version), "no root was given")
        return self._root.model

    # -- remote-index.json ----------------------------------------------------------------------

    def top(
        self, data: bytes, now: datetime | None, fetch_root: Callable[[int], bytes]
    ) -> Signed[RemoteIndex]:
        """Verify `remote-index.json` (6, step 1), following the root chain on the way, and
        raise its high-water mark. `fetch_root(version)` returns the bytes of that root or
        raises Refusal. Raises Refusal."""
        path = REMOTE_INDEX_PATH
        envelope, signed_bytes = read_signed(path, data)
        named = _integer_field(path, envelope.signed, "root_version", 1)
        if self._signatures:
            self._update_root(named, now, fetch_root)
            assert self._root is not None
            index_role = self._root.model.role(ROLE_INDEX)
            keyids = _check_role(
                path, envelope, signed_bytes, index_role, "index", self._allow_dev_keys
            )
        else:
            keyids = frozenset()  # unsigned(): no trust file to follow roots from
        if envelope.signed.get("type") != TYPE_REMOTE_INDEX:
            raise _mismatch(path, '"type"', envelope.signed.get("type"), TYPE_REMOTE_INDEX)
        model = _model(path, RemoteIndex.from_dict, envelope.signed)
        _check_fresh(path, model.expires_at, now)
        body_sha256 = hashlib.sha256(signed_bytes).hexdigest()
        with self._lock:
            self._check_rollback(path, self._top_mark, model.sequence, body_sha256)
            self._top_mark = Mark(model.sequence, body_sha256)
        return Signed(path, data, model, body_sha256, keyids)

    def _check_rollback(
        self, path: str, seen: Mark | None, sequence: int, body_sha256: str
    ) -> None:
        if seen is None:
            return
        if sequence < seen.sequence:
            raise Refusal(
                "rollback",
                path,
                f"{path} has sequence {sequence}, lower than {seen.sequence}, the highest this "
                "host has seen: refusing a rollback",
            )
        if sequence == seen.sequence and seen.body_sha256 not in (None, body_sha256):
            raise Refusal(
                "rollback",
                path,
                f"{path} has sequence {sequence} with a different signed body than this host "
                "saw at that sequence: a changed index must have a higher sequence",
            )

    # -- shards -----------------------------------------------------------------------------

    def shard(
        self, top: RemoteIndex, name: str, data: bytes, now: datetime | None
    ) -> Signed[Shard]:
        """Verify the shard of bin `name` that `top` pins (6, step 2). Raises Refusal."""
        pin = top.shards[name]
        path = f"index/{top.bits}/{name}.json"
        check_pin(path, data, pin, REMOTE_INDEX_PATH)
        envelope, signed_bytes = read_signed(path, data)
        keyids = self._index_signatures(path, envelope, signed_bytes)
        body = envelope.signed
        if body.get("type") != TYPE_SHARD:
            raise _mismatch(path, '"type"', body.get("type"), TYPE_SHARD)
        model = _model(path, lambda d: Shard.from_dict(d, check_bins=False), body)
        if model.bits != top.bits:
            raise _mismatch(path, '"bits"', model.bits, top.bits)
        if model.bin != name:
            raise _mismatch(path, '"bin"', model.bin, name)
        if model.sequence != pin.sequence:
            raise _mismatch(path, '"sequence"', model.sequence, pin.sequence)
        for feature_id in model.features:
            if bin_of(feature_id, model.bits) != name:
                raise Refusal(
                    "mismatch",
                    path,
                    f"{path} lists feature {feature_id!r}, which belongs to bin "
                    f"{bin_of(feature_id, model.bits)}, not {name}: a shard cannot speak for "
                    "another bin (mix and match)",
                )
        _check_fresh(path, model.expires_at, now)
        return Signed(path, data, model, hashlib.sha256(signed_bytes).hexdigest(), keyids)

    def _index_signatures(
        self, path: str, envelope: Envelope, signed_bytes: bytes
    ) -> frozenset[str]:
        if not self._signatures:
            return frozenset()
        if self._root is None:
            raise Refusal("root", path, f"{path}: no root is trusted yet; verify the top first")
        role = self._root.model.role(ROLE_INDEX)
        return _check_role(path, envelope, signed_bytes, role, "index", self._allow_dev_keys)

    # -- releases.json ----------------------------------------------------------------------

    def releases(
        self, feature_id: str, pin: Pin, data: bytes, now: datetime | None
    ) -> Signed[ReleasesIndex]:
        """Verify `feature_id`'s releases.json against the `pin` of its shard (6, step 3) and
        raise its high-water mark. Raises Refusal."""
        path = releases_path(feature_id)
        check_pin(path, data, pin, "its shard")
        envelope, signed_bytes = read_signed(path, data)
        keyids = self._index_signatures(path, envelope, signed_bytes)
        body = envelope.signed
        if body.get("type") != TYPE_RELEASES:
            raise _mismatch(path, '"type"', body.get("type"), TYPE_RELEASES)
        model = _model(path, ReleasesIndex.from_dict, body)
        if model.feature_id != feature_id:
            raise _mismatch(path, '"feature_id"', model.feature_id, feature_id)
        if model.sequence != pin.sequence:
            raise _mismatch(path, '"sequence"', model.sequence, pin.sequence)
        _check_fresh(path, model.expires_at, now)
        body_sha256 = hashlib.sha256(signed_bytes).hexdigest()
        with self._lock:
            self._check_rollback(path, self._marks.get(feature_id), model.sequence, body_sha256)
            self._marks[feature_id] = Mark(model.sequence, body_sha256)
        return Signed(path, data, model, body_sha256, keyids)


def select_version(releases: ReleasesIndex, channel: str) -> VersionEntry:
    """The version `channel` serves (6, step 4); raises Refusal (`not-found`) when none."""
    version = releases.canary if channel == "canary" and releases.canary else releases.stable
    path = releases_path(releases.feature_id)
    if version is None:
        raise Refusal(
            "not-found",
            path,
            f"{releases.feature_id} has no {channel} version to load yet: publish one or "
            "promote a canary",
        )
    return next(v for v in releases.versions if v.version == version)


# --- manifests and assets ---------------------------------------------------------------------


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def check_manifest(
    feature_id: str, version: VersionEntry, data: bytes, *, max_bytes: int
) -> dict[str, Any]:
    """The manifest of `version` of `feature_id`, checked as section 6 step 5 says.

    Raises Refusal (`too-large`, `hash`, `malformed`, `mismatch`).
    """
    path = manifest_path(feature_id, version.version)
    if len(data) > max_bytes:
        raise Refusal("too-large", path, f"{path} is more than the {max_bytes} bytes allowed")
    digest = hashlib.sha256(data).hexdigest()
    if digest != version.manifest_sha256:
        raise Refusal(
            "hash",
            path,
            f"{path} has SHA-256 {short_keyid(digest)}, not the "
            f"{short_keyid(version.manifest_sha256)} releases.json lists: the origin serves "
            "another manifest than the one signed",
        )

    def malformed(reason: str) -> Refusal:
        return Refusal("malformed", path, f"{path}: {reason}")

    try:
        manifest = json.loads(data.decode("utf-8"), parse_constant=_not_json)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise malformed(f"not UTF-8 JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise malformed("not a JSON object")
    if manifest.get("id") != feature_id:
        raise _mismatch(path, '"id"', manifest.get("id"), feature_id)
    if manifest.get("version") != version.version:
        raise _mismatch(path, '"version"', manifest.get("version"), version.version)
    assets = manifest.get("assets")
    if not isinstance(assets, list) or not assets:
        raise malformed('"assets" must be a non-empty array')
    seen: set[str] = set()
    for i, asset in enumerate(assets):
        where = f"assets[{i}]"
        if not isinstance(asset, dict):
            raise malformed(f"{where} must be an object with path, size and sha256")
        asset_path = asset.get("path")
        if not _relative_path(asset_path):
            raise malformed(f"{where}.path {describe(asset_path)} is not a relative path")
        if asset_path in seen:
            raise malformed(f"{where}.path {describe(asset_path)} is listed twice")
        seen.add(str(asset_path))
        size = asset.get("size")
        if type(size) is not int or size < 0:
            raise malformed(f"{where}.size must be a whole number of bytes")
        sha = asset.get("sha256")
        if (
            not isinstance(sha, str)
            or len(sha) != 64
            or not all(c in "0123456789abcdef" for c in sha)
        ):
            raise malformed(f"{where}.sha256 must be 64 lowercase hex characters")
    if manifest.get("entry") not in seen:
        raise malformed(f'"entry" {describe(manifest.get("entry"))} is not one of the asset paths')
    return manifest


def _relative_path(value: Any) -> bool:
    return (
        isinstance(value, str)
        and bool(value)
        and not value.startswith("/")
        and "\\" not in value
        and all(part not in ("", ".", "..") for part in value.split("/"))
    )


def check_asset(feature_id: str, asset: Mapping[str, Any], data: bytes) -> None:
    """The bytes of one manifest asset: exactly its size, its SHA-256 (6, step 6).

    Raises Refusal (`length`, `hash`) naming the artifact's origin path.
    """
    path = artifact_path(asset["sha256"], asset["path"])
    what = f"{path} (asset {asset['path']!r} of {feature_id})"
    if len(data) != asset["size"]:
        raise Refusal(
            "length",
            path,
            f"{what} is {len(data)} bytes, not the {asset['size']} its manifest lists",
        )
    digest = hashlib.sha256(data).hexdigest()
    if digest != asset["sha256"]:
        raise Refusal(
            "hash",
            path,
            f"{what} has SHA-256 {short_keyid(digest)}, not the one its manifest lists: the "
            "origin serves other bytes than the ones signed",
        )


# --- state helpers ------------------------------------------------------------------------------


def _get(document: Any, key: str) -> Any:
    return document.get(key) if isinstance(document, dict) else None


def _mark_dict(mark: Mark | None) -> dict[str, Any] | None:
    if mark is None:
        return None
    return {"sequence": mark.sequence, "body_sha256": mark.body_sha256}


def _read_mark(value: Any, *, legacy: bool = False) -> Mark | None:
    if value is None:
        return None
    sequence = value["sequence"]
    if type(sequence) is not int:
        raise ValueError(f"bad mark {value!r}")
    if legacy:
        return Mark(sequence, None)
    digest = value["body_sha256"]
    if digest is not None and not isinstance(digest, str):
        raise ValueError(f"bad mark {value!r}")
    return Mark(sequence, digest)
