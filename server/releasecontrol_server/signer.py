"""Turns committed state into signed index files: releases.json, shards, remote-index.json.

Every signed index is a pure function of what it is built from, the keys and
the time, so it can always be rebuilt. The bytes are exactly those of
`releasecontrol.index.sign(...).to_bytes()` (RFC 8785, JCS); `releases_body`
builds a releases.json body without the model on every change (its versions
encoded once each and kept), and `_envelope` wraps signed bytes without
encoding them again. Files are laid out as host protocol v2 says
(docs/host-protocol.md): one shard per non-empty hash bin, and a top level
pinning each shard by SHA-256, length and sequence.
"""

from __future__ import annotations

import base64
import bisect
import functools
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from releasecontrol.canonical import jcs
from releasecontrol.errors import VerificationError
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    SCHEMA_VERSION,
    TYPE_RELEASES,
    WEIGHT_SCALE,
    CanarySoak,
    Envelope,
    ReleasesIndex,
    VersionEntry,
    format_time,
    releases_path,
)
from releasecontrol.manifest import sha256_hex
from releasecontrol.shards import (
    TYPE_REMOTE_INDEX,
    TYPE_SHARD,
    Pin,
    RemoteIndex,
    Shard,
    bin_name_valid,
    shard_path,
)
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.releases import FeatureState
from releasecontrol_server.store import SignedFile

__all__ = ["PinMembers", "Signer", "jcs", "pin_of"]


def pin_of(file: SignedFile) -> Pin:
    """How the level above pins `file`: its SHA-256, length and sequence."""
    return Pin(file.sha256, len(file.content), file.sequence)


class PinMembers:
    """The shard pins of a top level as it is written: each pin's JCS member, in name order.

    Each member is encoded once and kept; `with_changes` re-encodes only the pins a
    batch changed (a top level pins every shard: 1,024 at 10,000 features, and
    encoding them all again was most of a change's index signing). Immutable.
    """

    def __init__(self, bits: int, pins: Mapping[str, Pin]) -> None:
        self.bits = bits
        self.pins: Mapping[str, Pin] = dict(pins)
        # A name that is no bin of `bits` makes the top level go through the model, which raises.
        self.valid = all(bin_name_valid(name, bits) for name in self.pins)
        self._names = sorted(self.pins)
        self._members = [_pin_member(n, *_fields(self.pins[n])) for n in self._names]

    def with_changes(self, changed: Mapping[str, Pin]) -> PinMembers:
        """These pins with `changed` (name -> pin) replacing or joining them."""
        if not changed:
            return self
        new = object.__new__(PinMembers)
        new.bits = self.bits
        new.pins = {**self.pins, **changed}
        new.valid = self.valid and all(bin_name_valid(name, self.bits) for name in changed)
        new._names = list(self._names)
        new._members = list(self._members)
        for name, pin in changed.items():
            at = bisect.bisect_left(new._names, name)
            member = _pin_member(name, *_fields(pin))
            if at < len(new._names) and new._names[at] == name:
                new._members[at] = member
            else:
                new._names.insert(at, name)
                new._members.insert(at, member)
        return new

    def joined(self) -> bytes:
        """The members, comma-separated: the inside of the top level's `shards` object."""
        return b",".join(self._members)


def _fields(pin: Pin) -> tuple[str, int, int]:
    return pin.sha256, pin.length, pin.sequence


class Signer:
    """Signs index files with every configured online key; indices expire after
    `expiry_seconds`."""

    def __init__(self, keys: Sequence[SigningKey], expiry_seconds: int) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = tuple(keys)
        # Each distinct key signs once, in the order given.
        self._distinct = tuple({k.keyid: k for k in self._keys}.values())
        self._signing = tuple((k, k.keyid.encode("ascii")) for k in self._distinct)
        self._expiry = timedelta(seconds=expiry_seconds)

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(k.keyid for k in self._distinct)

    def own_trust(self) -> TrustStore:
        """The signing keys as a trust store: what "signed by this control plane" means."""
        return TrustStore.for_keys([k.trusted_key() for k in self._distinct], threshold=1)

    def expires_at(self, now: datetime) -> datetime:
        """When an index issued at `now` expires."""
        return now + self._expiry

    # -- releases.json ----------------------------------------------------------------------

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
            canary_weight=canary.weight if canary else None,
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
            or (canary is not None and not 0 <= canary.weight <= WEIGHT_SCALE)
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
                **({"canary_weight": canary.weight} if canary is not None else {}),
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
        return self._file(
            releases_path(state.feature_id), self.releases_body(state, now), state.sequence
        )

    # -- the sharded index ------------------------------------------------------------------

    def shard_file(
        self, bits: int, name: str, features: Mapping[str, Pin], sequence: int, now: datetime
    ) -> SignedFile:
        """The signed shard of bin `name`, pinning each of its features' releases.json.

        Built from each pin's JCS member, encoded once and kept (a shard changes one
        entry at a time): `jcs(Shard(...).to_dict())` cost 0.6 ms a change at 10,000
        features. Values the model would refuse go through the model, which raises.
        """
        if not _fast_ids(features) or not bin_name_valid(name, bits) or sequence < 0:
            model = Shard(
                bits=bits,
                bin=name,
                sequence=sequence,
                features=features,
                issued_at=now,
                expires_at=self.expires_at(now),
            )
            return self._file(shard_path(bits, name), jcs(model.to_dict()), sequence)
        head = jcs({"bin": name, "bits": bits, "expires_at": _time_text(self.expires_at(now))})
        tail = jcs(
            {
                "issued_at": _time_text(now),
                "schema_version": SCHEMA_VERSION,
                "sequence": sequence,
                "type": TYPE_SHARD,
            }
        )
        members = b",".join(
            _pin_member(fid, p.sha256, p.length, p.sequence) for fid, p in sorted(features.items())
        )
        body = head[:-1] + b',"features":{' + members + b"}," + tail[1:]
        return self._file(shard_path(bits, name), body, sequence)

    def top_file(
        self,
        sequence: int,
        root_version: int,
        bits: int,
        shards: Mapping[str, Pin] | PinMembers,
        now: datetime,
    ) -> SignedFile:
        """The signed remote-index.json pinning every shard, under root `root_version`.

        Built from each shard pin's JCS member, encoded once and kept (`PinMembers`: pass
        one to re-encode nothing).
        """
        pins = shards if isinstance(shards, PinMembers) else PinMembers(bits, shards)
        if not pins.valid or pins.bits != bits or sequence < 0 or root_version < 1:
            top = RemoteIndex(
                sequence=sequence,
                root_version=root_version,
                bits=bits,
                shards=pins.pins,
                issued_at=now,
                expires_at=self.expires_at(now),
            )
            return self._file(REMOTE_INDEX_PATH, jcs(top.to_dict()), sequence)
        members = pins.joined()
        rest = jcs(
            {
                "expires_at": _time_text(self.expires_at(now)),
                "issued_at": _time_text(now),
                "root_version": root_version,
                "schema_version": SCHEMA_VERSION,
                "sequence": sequence,
                "type": TYPE_REMOTE_INDEX,
            }
        )
        body = b'{"bins":{"bits":' + jcs(bits) + b',"shards":{' + members + b"}}," + rest[1:]
        return self._file(REMOTE_INDEX_PATH, body, sequence)

    def resign(self, file: SignedFile) -> SignedFile:
        """`file` with the same signed body signed by these keys instead: what a key rotation
        does to every file hosts may hold (same sequence, same body, new signatures)."""
        body = Envelope.from_bytes(file.content).signed_bytes()
        return self._file(file.path, body, file.sequence)

    def _file(self, path: str, body: bytes, sequence: int) -> SignedFile:
        content = self._envelope(body)
        return SignedFile(path=path, content=content, sha256=sha256_hex(content), sequence=sequence)

    def _envelope(self, signed: bytes) -> bytes:
        """The JCS bytes of {"signatures": [...], "signed": <signed>}; "signatures" sorts first.

        Each signature is {"keyid": <lowercase hex>, "sig": <base64>}: ASCII that JSON
        escapes nothing of, so its JCS form is written out rather than encoded.
        """
        signatures = b",".join(
            b'{"keyid":"' + keyid + b'","sig":"' + base64.b64encode(key.sign(signed)) + b'"}'
            for key, keyid in self._signing
        )
        return b'{"signatures":[' + signatures + b'],"signed":' + signed + b"}"

    def signed_by_us(self, content: bytes) -> bool:
        """Whether `content` carries a signature by every one of our keys (and no other)."""
        try:
            envelope = Envelope.from_bytes(content)
        except VerificationError:
            return False  # unreadable bytes are simply not ours
        return {s.keyid for s in envelope.signatures} == set(self.keyids)


def _whole_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(microsecond=0)


# The same few instants (issue times within a second, every version's publish
# time) are formatted on every change.
_time_text = functools.lru_cache(maxsize=4096)(format_time)


@functools.lru_cache(maxsize=1 << 16)
def _version_json(version: str, manifest_sha256: str, published_at: datetime) -> bytes:
    """One `versions` entry of releases.json, JCS, through the model (so its checks apply)."""
    return jcs(VersionEntry(version, manifest_sha256, published_at).to_dict())


_FEATURE_ID = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _fast_ids(features: Mapping[str, Pin]) -> bool:
    """Whether every key is a plain feature id (ASCII: sorted by str is JCS's order)."""
    return all(_FEATURE_ID.fullmatch(fid) for fid in features)


@functools.lru_cache(maxsize=1 << 16)
def _pin_member(name: str, sha256: str, length: int, sequence: int) -> bytes:
    """`"<name>":{"length":…,"sequence":…,"sha256":…}`, JCS, through the model's checks."""
    return jcs(name) + b":" + jcs(Pin(sha256, length, sequence).to_dict())


@functools.lru_cache(maxsize=4096)
def _soak_dict(started_at: datetime, duration_seconds: int) -> dict[str, Any]:
    """releases.json's `canary_soak`, through the model; callers only read it."""
    return CanarySoak(started_at=started_at, duration_seconds=duration_seconds).to_dict()
