"""Turns committed state into signed index files: releases.json and remote-index.json.

Every signed index is a pure function of the committed state, the keys and the
time, so it can always be rebuilt.

The bytes are exactly those of `releasecontrol.index.sign(...).to_bytes()`
(RFC 8785, JCS), but built without re-encoding what did not change.
Canonical JSON of an object is "{", its members sorted by the UTF-16 code
units of their names, each encoded as JCS(name) ":" JCS(value) and joined by
",", then "}"; a member's encoding does not depend on its neighbours. So
`FeatureEntries` keeps every feature's member of remote-index.json's
`features` object already encoded, and a change re-encodes one entry and joins
the rest. The envelope `{"signatures": [...], "signed": {...}}` is assembled
the same way around the signed bytes, instead of encoding the body again.
"""

from __future__ import annotations

import base64
import bisect
import functools
import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    SCHEMA_VERSION,
    TYPE_RELEASES,
    CanarySoak,
    FeatureEntry,
    ReleasesIndex,
    RemoteIndex,
    VersionEntry,
    canonical_json,
    format_time,
    releases_path,
)
from releasecontrol.manifest import sha256_hex
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.releases import FeatureState
from releasecontrol_server.store import SignedFile

# Members per block of the encoded `features` object: a change re-joins one
# block, and the file is the join of the blocks.
_BLOCK_SIZE = 128

# JCS integers are those an IEEE double holds exactly (rfc8785's bounds).
_INT_LIMIT = 2**53 - 1


def jcs(value: Any) -> bytes:
    """The RFC 8785 (JCS) bytes of `value`: `canonical_json`, ~20 times faster for index bodies.

    For dicts with ASCII string keys, lists, tuples, strings, bools, None and
    integers within ±(2**53 - 1), JCS is exactly `json.dumps` with sorted keys,
    no whitespace and no ASCII escaping: both escape `"`, `\\` and the control
    characters alike (`\\n`, `\\u001f`…) and leave everything else as UTF-8,
    and ASCII keys sort the same by UTF-16 code units as by code points.
    Anything else (floats, non-ASCII keys, other mappings, a lone surrogate)
    goes through `canonical_json`, which also raises ValueError where JCS has
    no form.
    """
    if _json_is_jcs(value):
        try:
            return json.dumps(
                value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: canonical_json says why it has no JCS form
    return canonical_json(value)


def _json_is_jcs(value: Any) -> bool:
    """Whether json.dumps of `value` (as `jcs` calls it) is its JCS form."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return bool(-_INT_LIMIT <= value <= _INT_LIMIT)
    if kind is dict:
        return all(type(k) is str and k.isascii() and _json_is_jcs(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(_json_is_jcs(item) for item in value)
    return False


class Signer:
    """Signs index files with every configured key; indices expire after `expiry_seconds`."""

    def __init__(self, keys: Sequence[SigningKey], expiry_seconds: int) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = tuple(keys)
        # sign() signs once per distinct key, in the order given.
        self._distinct = tuple({k.keyid: k for k in self._keys}.values())
        self._expiry = timedelta(seconds=expiry_seconds)

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(k.keyid for k in self._keys)

    def own_trust(self) -> TrustStore:
        """The signing keys as a trust store: what "signed by this control plane" means."""
        return TrustStore.for_keys([k.trusted_key() for k in self._keys], threshold=1)

    def releases_index(self, state: FeatureState, now: datetime) -> ReleasesIndex:
        """The releases.json model of `state`, issued at `now`."""
        canary = state.canary
        return ReleasesIndex(
            feature_id=state.feature_id,
            sequence=state.sequence,
            stable=state.stable,
            canary=canary.version if canary else None,
            canary_soak=(
                CanarySoak(started_at=canary.soak_started_at, duration_seconds=canary.soak_seconds)
                if canary
                else None
            ),
            versions=tuple(
                VersionEntry(v.version, v.manifest_sha256, v.published_at) for v in state.versions
            ),
            issued_at=now,
            expires_at=self.expires_at(now),
        )

    def releases_body(self, state: FeatureState, now: datetime) -> bytes:
        """The JCS bytes of releases.json's signed body: `jcs(releases_index(state, now)
        .to_dict())`, built without the model on every change.

        Each `versions` entry is encoded through its model once and kept (a
        feature's versions rarely change); the other members are a small dict.
        "versions" sorts after every other member, so it is spliced in last.
        A state the model would refuse goes through the model, which raises.
        """
        canary = state.canary
        versions = state.versions
        names = {v.version for v in versions}
        expires_at = self.expires_at(now)
        if (
            not state.feature_id
            or state.sequence < 0
            or len(names) != len(versions)
            or (state.stable is not None and state.stable not in names)
            or (canary is not None and canary.version not in names)
            or now.utcoffset() is None
            or _whole_utc(expires_at) <= _whole_utc(now)
        ):
            return jcs(self.releases_index(state, now).to_dict())  # raises what it refuses
        soak: dict[str, Any] | None = None
        if canary is not None:
            try:
                soak = _soak_dict(canary.soak_started_at, canary.soak_seconds)
            except (ValueError, OverflowError):
                return jcs(self.releases_index(state, now).to_dict())
        head = jcs(
            {
                "active_version": state.stable,
                "canary_soak": soak,
                "channels": {"canary": canary.version if canary else None, "stable": state.stable},
                "expires_at": _time_text(expires_at),
                "feature_id": state.feature_id,
                "issued_at": _time_text(now),
                "schema_version": SCHEMA_VERSION,
                "sequence": state.sequence,
                "type": TYPE_RELEASES,
            }
        )
        entries = b",".join(
            _version_json(v.version, v.manifest_sha256, v.published_at) for v in versions
        )
        return head[:-1] + b',"versions":[' + entries + b"]}"

    def releases_file(self, state: FeatureState, now: datetime) -> SignedFile:
        """The signed bytes of the feature's releases.json."""
        content = self._envelope(self.releases_body(state, now))
        return SignedFile(
            path=releases_path(state.feature_id),
            content=content,
            sha256=sha256_hex(content),
            sequence=state.sequence,
        )

    def expires_at(self, now: datetime) -> datetime:
        """When an index issued at `now` expires."""
        return now + self._expiry

    def remote_index_file(
        self,
        sequence: int,
        features: Mapping[str, FeatureEntry],
        now: datetime,
        expires_at: datetime | None = None,
    ) -> SignedFile:
        """The signed bytes of remote-index.json naming every feature's releases.json.

        With `FeatureEntries` (or a `FeatureEntries.replacing` view), only the
        entries not encoded before are encoded. `expires_at` defaults to
        `expires_at(now)`. The same arguments and keys give the same bytes
        (Ed25519 signatures are deterministic), which is how a remote index
        the store recorded but the origin never got is rebuilt.
        """
        if not isinstance(features, FeatureEntries | EntriesView):
            features = FeatureEntries(features)
        # The model checks the top-level fields; `features` is spliced in encoded.
        body = RemoteIndex(
            sequence=sequence,
            features={},
            issued_at=now,
            expires_at=self.expires_at(now) if expires_at is None else expires_at,
        ).to_dict()
        members = []
        for name in sorted(body, key=jcs_sort_key):
            value = features.encoded() if name == "features" else jcs(body[name])
            members.append(jcs(name) + b":" + value)
        content = self._envelope(b"{" + b",".join(members) + b"}")
        return SignedFile(
            path=REMOTE_INDEX_PATH, content=content, sha256=sha256_hex(content), sequence=sequence
        )

    def _envelope(self, signed: bytes) -> bytes:
        """The JCS bytes of {"signatures": [...], "signed": <signed>}; "signatures" sorts first."""
        signatures = [
            {"keyid": key.keyid, "sig": base64.b64encode(key.sign(signed)).decode("ascii")}
            for key in self._distinct
        ]
        return b'{"signatures":' + jcs(signatures) + b',"signed":' + signed + b"}"


def _whole_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


# The same few instants (issue times within a second, every version's publish
# time) are formatted on every change.
_time_text = functools.lru_cache(maxsize=4096)(format_time)


@functools.lru_cache(maxsize=1 << 16)
def _version_json(version: str, manifest_sha256: str, published_at: datetime) -> bytes:
    """One `versions` entry of releases.json, JCS, through the model (so its checks apply)."""
    return jcs(VersionEntry(version, manifest_sha256, published_at).to_dict())


@functools.lru_cache(maxsize=4096)
def _soak_dict(started_at: datetime, duration_seconds: int) -> dict[str, Any]:
    """releases.json's `canary_soak`, through the model; callers only read it."""
    return CanarySoak(started_at=started_at, duration_seconds=duration_seconds).to_dict()


def feature_entry(file: SignedFile) -> FeatureEntry:
    """How remote-index.json names one feature's releases.json (relative to the index)."""
    return FeatureEntry(url=file.path, sha256=file.sha256, sequence=file.sequence)


def jcs_sort_key(name: str) -> bytes:
    """The order RFC 8785 sorts object members in: by the UTF-16 code units of the name.

    Big-endian UTF-16 bytes compare as the code units do. Raises
    UnicodeEncodeError for a lone surrogate, which has no JCS form either.
    """
    return name.encode("utf-16-be")


def _member(feature_id: str, entry: FeatureEntry) -> bytes:
    return jcs(feature_id) + b":" + jcs(entry.to_dict())


class _Block:
    """A run of consecutive members (in JCS order) and their joined encoding."""

    __slots__ = ("_joined", "ids", "keys")

    def __init__(self, ids: list[str], keys: list[bytes]) -> None:
        self.ids = ids
        self.keys = keys
        self._joined: bytes | None = None

    def joined(self, members: Mapping[str, bytes]) -> bytes:
        if self._joined is None:
            self._joined = b",".join([members[i] for i in self.ids])
        return self._joined

    def invalidate(self) -> None:
        self._joined = None


class FeatureEntries(Mapping[str, FeatureEntry]):
    """Every feature's remote-index.json entry, each kept with its JCS encoding.

    `encoded()` is the JCS bytes of the `features` object, rebuilt from the
    kept encodings: only entries set since the last call are encoded, and only
    their block of members is joined again. `with_entries({id: entry, ...})`
    (or `replacing(id, entry)`) is a view with entries changed or added, for
    signing changes before they commit.
    """

    def __init__(self, entries: Mapping[str, FeatureEntry] | None = None) -> None:
        self._entries: dict[str, FeatureEntry] = {}
        self._members: dict[str, bytes] = {}
        self._blocks: list[_Block] = []
        items = sorted((entries or {}).items(), key=lambda item: jcs_sort_key(item[0]))
        for feature_id, _ in items:
            self._check(feature_id)
        for start in range(0, len(items), _BLOCK_SIZE):
            chunk = items[start : start + _BLOCK_SIZE]
            self._blocks.append(
                _Block([fid for fid, _ in chunk], [jcs_sort_key(fid) for fid, _ in chunk])
            )
        for feature_id, entry in items:
            self._entries[feature_id] = entry
            self._members[feature_id] = _member(feature_id, entry)

    @staticmethod
    def _check(feature_id: str) -> None:
        if not feature_id:
            raise ValueError("a feature id must not be empty")

    # -- Mapping --------------------------------------------------------------

    def __getitem__(self, feature_id: str) -> FeatureEntry:
        return self._entries[feature_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    # -- changes --------------------------------------------------------------

    def set(self, feature_id: str, entry: FeatureEntry, member: bytes | None = None) -> None:
        """Add or replace the entry of `feature_id` (`member`: its encoding, if known)."""
        self._check(feature_id)
        if member is None:
            member = _member(feature_id, entry)
        if feature_id not in self._entries:
            key = jcs_sort_key(feature_id)
            block = self._block_for(key)
            at = bisect.bisect_left(block.keys, key)
            block.keys.insert(at, key)
            block.ids.insert(at, feature_id)
            if len(block.ids) > 2 * _BLOCK_SIZE:
                self._split(block)
        self._entries[feature_id] = entry
        self._members[feature_id] = member
        self._block_for(jcs_sort_key(feature_id)).invalidate()

    def apply(self, view: EntriesView) -> None:
        """Set every entry `view` (from `with_entries`) changes, reusing its encodings."""
        if view._base is not self:
            raise ValueError("the view was made from other entries")
        members = view.members()
        for feature_id, entry in view._changed.items():
            self.set(feature_id, entry, members[feature_id])

    def replacing(self, feature_id: str, entry: FeatureEntry) -> EntriesView:
        """A read-only view of these entries with `feature_id`'s set to `entry`."""
        return self.with_entries({feature_id: entry})

    def with_entries(self, changed: Mapping[str, FeatureEntry]) -> EntriesView:
        """A read-only view of these entries with each of `changed` set (added or replaced)."""
        for feature_id in changed:
            self._check(feature_id)
        return EntriesView(self, dict(changed))

    def _block_for(self, key: bytes) -> _Block:
        if not self._blocks:
            self._blocks.append(_Block([], []))
        # The last block whose first key is <= key, else the first block.
        firsts = [b.keys[0] if b.keys else b"" for b in self._blocks]
        at = max(bisect.bisect_right(firsts, key) - 1, 0)
        return self._blocks[at]

    def _split(self, block: _Block) -> None:
        at = self._blocks.index(block)
        half = len(block.ids) // 2
        self._blocks[at : at + 1] = [
            _Block(block.ids[:half], block.keys[:half]),
            _Block(block.ids[half:], block.keys[half:]),
        ]

    # -- encoding ---------------------------------------------------------------

    def encoded(self) -> bytes:
        """The JCS bytes of the `features` object: {"<id>": {...}, ...}."""
        return self._encoded({})

    def _encoded(self, changed: Mapping[str, bytes]) -> bytes:
        """The `features` object with the encoded members `changed` set (added or replaced)."""
        members = self._members
        by_block: dict[int, dict[str, bytes]] = {}
        for feature_id, member in changed.items():
            block = self._block_for(jcs_sort_key(feature_id))
            by_block.setdefault(id(block), {})[feature_id] = member
        parts: list[bytes] = []
        for block in self._blocks:
            overrides = by_block.get(id(block))
            if overrides:
                parts.append(self._joined_with(block, overrides))
            elif block.ids:
                parts.append(block.joined(members))
        return b"{" + b",".join(parts) + b"}"

    def _joined_with(self, block: _Block, changed: Mapping[str, bytes]) -> bytes:
        ids, keys = list(block.ids), list(block.keys)
        for feature_id in changed:
            if feature_id not in self._entries:
                key = jcs_sort_key(feature_id)
                at = bisect.bisect_left(keys, key)
                keys.insert(at, key)
                ids.insert(at, feature_id)
        return b",".join([changed[fid] if fid in changed else self._members[fid] for fid in ids])


class EntriesView(Mapping[str, FeatureEntry]):
    """FeatureEntries with some entries replaced or added; see FeatureEntries.with_entries."""

    def __init__(self, base: FeatureEntries, changed: dict[str, FeatureEntry]) -> None:
        self._base = base
        self._changed = changed
        self._members: dict[str, bytes] | None = None

    def members(self) -> dict[str, bytes]:
        """The encoded member of each changed entry (encoded once, kept for `apply`)."""
        if self._members is None:
            self._members = {fid: _member(fid, entry) for fid, entry in self._changed.items()}
        return self._members

    def __getitem__(self, feature_id: str) -> FeatureEntry:
        if feature_id in self._changed:
            return self._changed[feature_id]
        return self._base[feature_id]

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from (fid for fid in self._changed if fid not in self._base)

    def __len__(self) -> int:
        return len(self._base) + sum(fid not in self._base for fid in self._changed)

    def encoded(self) -> bytes:
        return self._base._encoded(self.members())

    def __repr__(self) -> str:
        return f"<FeatureEntries with {sorted(self._changed)!r} changed>"
