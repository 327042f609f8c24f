"""The sharded index (host protocol v2): `remote-index.json` and its hash-bin shards.

    remote-index.json              signed: sequence, root_version, bins.bits, and per
    │                              non-empty bin the pin (sha256, length, sequence) of:
    └── index/<bits>/<bin>.json    signed: every feature of one hash bin, each with the pin
        │                          (sha256, length, sequence) of:
        └── features/<id>/releases.json

A feature's bin is the first `bits` bits of the SHA-256 of its id (`bin_of`), so
a change rewrites one shard and the top level whatever the feature count, and a
host needing one feature reads the top level, one shard and one releases.json
(docs/host-protocol.md, sections 3.4, 3.5 and 3.7).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from releasecontrol.errors import VerificationError
from releasecontrol.fields import (
    Fields,
    check_extra,
    check_period,
    describe,
    format_time,
    frozen,
    is_expired,
    utc_seconds,
)
from releasecontrol.index import SCHEMA_VERSION, read_type

__all__ = [
    "DEFAULT_BITS",
    "MAX_BITS",
    "TYPE_REMOTE_INDEX",
    "TYPE_SHARD",
    "Pin",
    "RemoteIndex",
    "Shard",
    "bin_name_valid",
    "bin_of",
    "shard_path",
]

TYPE_REMOTE_INDEX = "remote-index"
TYPE_SHARD = "index-shard"
MAX_BITS = 16
DEFAULT_BITS = 7
"""128 bins: at 10,000 features the top level is ~15 KB and a shard ~10 KB, which
is about where their sum (what a host reads for one feature) is smallest."""

_FEATURE_ID_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PIN_FIELDS = frozenset({"sha256", "length", "sequence"})
_BINS_FIELDS = frozenset({"bits", "shards"})
_TOP_FIELDS = frozenset(
    {"schema_version", "type", "sequence", "root_version", "issued_at", "expires_at", "bins"}
)
_SHARD_FIELDS = frozenset(
    {"schema_version", "type", "bits", "bin", "sequence", "issued_at", "expires_at", "features"}
)


def _check_bits(bits: int) -> None:
    if type(bits) is not int or not 0 <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer from 0 to {MAX_BITS}, not {bits!r}")


def _digits(bits: int) -> int:
    return max(1, (bits + 3) // 4)


def bin_of(feature_id: str, bits: int) -> str:
    """The bin of `feature_id` under `bits`: the first `bits` bits of SHA-256(id), in hex.

    Zero-padded to max(1, ceil(bits / 4)) lowercase hex digits.
    """
    _check_bits(bits)
    head = int.from_bytes(hashlib.sha256(feature_id.encode("utf-8")).digest()[:4], "big")
    value = head >> (32 - bits) if bits else 0
    return format(value, f"0{_digits(bits)}x")


def bin_name_valid(name: str, bits: int) -> bool:
    """True when `name` is a bin under `bits`: lowercase hex of the right width, below 2**bits."""
    _check_bits(bits)
    return isinstance(name, str) and _hex_below(name, bits)


@functools.lru_cache(maxsize=4096)
def _hex_below(name: str, bits: int) -> bool:
    # Cached: a signer checks every shard's name on every change.
    return (
        len(name) == _digits(bits)
        and all(c in "0123456789abcdef" for c in name)
        and int(name, 16) < (1 << bits)
    )


def shard_path(bits: int, name: str) -> str:
    """Where the shard of bin `name` lives on the origin: "index/<bits>/<name>.json"."""
    if not bin_name_valid(name, bits):
        raise ValueError(f"{name!r} is not a bin under {bits} bits")
    return f"index/{bits}/{name}.json"


@dataclass(frozen=True)
class Pin:
    """What a level pins of a file below it: its SHA-256, length in bytes and sequence."""

    sha256: str
    length: int
    sequence: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.sha256, str) or not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"sha256 {self.sha256!r} is not 64 lowercase hex")
        if type(self.length) is not int or self.length < 1:
            raise ValueError(f"length must be an integer of at least 1, not {self.length!r}")
        if type(self.sequence) is not int or self.sequence < 0:
            raise ValueError(f"sequence must be a non-negative integer, not {self.sequence!r}")
        object.__setattr__(self, "extra", frozen(self.extra))
        check_extra(self.extra, _PIN_FIELDS)

    @classmethod
    def of(cls, content: bytes, sequence: int) -> Pin:
        """The pin of a file with these bytes at `sequence`."""
        return cls(hashlib.sha256(content).hexdigest(), len(content), sequence)

    def to_dict(self) -> dict[str, Any]:
        return {
            **dict(self.extra),
            "sha256": self.sha256,
            "length": self.length,
            "sequence": self.sequence,
        }

    @classmethod
    def _read(cls, f: Fields, min_sequence: int) -> Pin:
        return cls(
            sha256=f.sha256("sha256"),
            length=f.integer("length", 1),
            sequence=f.integer("sequence", min_sequence),
            extra=f.extra(_PIN_FIELDS),
        )


@dataclass(frozen=True)
class RemoteIndex:
    """The signed body of remote-index.json: the root it is signed under and every shard.

    Raises ValueError when a bin name does not fit `bits`, expiry is not after
    issue, or a datetime is naive.
    """

    sequence: int
    root_version: int
    bits: int
    shards: Mapping[str, Pin]
    issued_at: datetime
    expires_at: datetime
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    bins_extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if type(self.sequence) is not int or self.sequence < 0:
            raise ValueError(f"sequence must be a non-negative integer, not {self.sequence!r}")
        if type(self.root_version) is not int or self.root_version < 1:
            raise ValueError(f"root_version must be at least 1, not {self.root_version!r}")
        for name in self.shards:
            if not bin_name_valid(name, self.bits):
                raise ValueError(f"{name!r} is not a bin under {self.bits} bits")
        object.__setattr__(self, "shards", frozen(self.shards))
        object.__setattr__(self, "issued_at", utc_seconds(self.issued_at))
        object.__setattr__(self, "expires_at", utc_seconds(self.expires_at))
        check_period(self.issued_at, self.expires_at)
        object.__setattr__(self, "extra", frozen(self.extra))
        object.__setattr__(self, "bins_extra", frozen(self.bins_extra))
        check_extra(self.extra, _TOP_FIELDS)
        check_extra(self.bins_extra, _BINS_FIELDS)

    def is_expired(self, now: datetime) -> bool:
        """True from `expires_at` on. Raises ValueError for a naive `now`."""
        return is_expired(self.expires_at, now)

    def shard_of(self, feature_id: str) -> tuple[str, Pin | None]:
        """The bin of `feature_id` and the pin of its shard (None: the bin is empty)."""
        name = bin_of(feature_id, self.bits)
        return name, self.shards.get(name)

    def to_dict(self) -> dict[str, Any]:
        """The `signed` body in the protocol's format, unknown fields included."""
        return {
            **dict(self.extra),
            "schema_version": self.schema_version,
            "type": TYPE_REMOTE_INDEX,
            "sequence": self.sequence,
            "root_version": self.root_version,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "bins": {
                **dict(self.bins_extra),
                "bits": self.bits,
                "shards": {name: pin.to_dict() for name, pin in sorted(self.shards.items())},
            },
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteIndex:
        """The index in a `signed` body; raises VerificationError naming the bad field."""
        f = Fields("remote index", d)
        read_type(f, TYPE_REMOTE_INDEX)
        schema_version = f.integer("schema_version", 1)
        bins = f.nested("bins")
        bits = bins.integer("bits", 0, MAX_BITS)
        listed = bins.nested("shards")
        shards = {}
        for name in listed.obj:
            if not bin_name_valid(name, bits):
                raise VerificationError(
                    f'remote index: "bins.shards" names bin {describe(name)}, which is not '
                    f"{_digits(bits)} lowercase hex digit(s) below {1 << bits}"
                )
            shards[name] = Pin._read(listed.nested(name), 0)
        try:
            return cls(
                sequence=f.integer("sequence", 0),
                root_version=f.integer("root_version", 1),
                bits=bits,
                shards=shards,
                issued_at=f.time("issued_at"),
                expires_at=f.time("expires_at"),
                schema_version=schema_version,
                extra=f.extra(_TOP_FIELDS),
                bins_extra=bins.extra(_BINS_FIELDS),
            )
        except ValueError as exc:
            raise VerificationError(f"{f.what}: {exc}") from None


@dataclass(frozen=True)
class Shard:
    """The signed body of one shard: the releases.json pin of every feature of one bin.

    Raises ValueError when the bin does not fit `bits`, a feature id is invalid
    or belongs to another bin, or expiry is not after issue.
    """

    bits: int
    bin: str
    sequence: int
    features: Mapping[str, Pin]
    issued_at: datetime
    expires_at: datetime
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not bin_name_valid(self.bin, self.bits):
            raise ValueError(f"{self.bin!r} is not a bin under {self.bits} bits")
        if type(self.sequence) is not int or self.sequence < 0:
            raise ValueError(f"sequence must be a non-negative integer, not {self.sequence!r}")
        for feature_id in self.features:
            if not _FEATURE_ID_RE.fullmatch(feature_id):
                raise ValueError(f"{feature_id!r} is not a feature id")
            if bin_of(feature_id, self.bits) != self.bin:
                raise ValueError(f"feature {feature_id!r} is not in bin {self.bin}")
        object.__setattr__(self, "features", frozen(self.features))
        object.__setattr__(self, "issued_at", utc_seconds(self.issued_at))
        object.__setattr__(self, "expires_at", utc_seconds(self.expires_at))
        check_period(self.issued_at, self.expires_at)
        object.__setattr__(self, "extra", frozen(self.extra))
        check_extra(self.extra, _SHARD_FIELDS)

    @property
    def path(self) -> str:
        return shard_path(self.bits, self.bin)

    def is_expired(self, now: datetime) -> bool:
        """True from `expires_at` on. Raises ValueError for a naive `now`."""
        return is_expired(self.expires_at, now)

    def to_dict(self) -> dict[str, Any]:
        """The `signed` body in the protocol's format, unknown fields included."""
        return {
            **dict(self.extra),
            "schema_version": self.schema_version,
            "type": TYPE_SHARD,
            "bits": self.bits,
            "bin": self.bin,
            "sequence": self.sequence,
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
            "features": {fid: pin.to_dict() for fid, pin in sorted(self.features.items())},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, check_bins: bool = True) -> Shard:
        """The shard in a `signed` body; raises VerificationError naming the bad field.

        Feature ids must be valid; with `check_bins` (the default) each must also
        belong to the shard's bin. A verifier passes False and checks that itself,
        to tell a malformed shard from one speaking for another bin.
        """
        f = Fields("index shard", d)
        read_type(f, TYPE_SHARD)
        schema_version = f.integer("schema_version", 1)
        bits = f.integer("bits", 0, MAX_BITS)
        name = f.get("bin")
        if not isinstance(name, str) or not bin_name_valid(name, bits):
            raise f.wrong("bin", f"{_digits(bits)} lowercase hex digit(s) below {1 << bits}")
        listed = f.nested("features")
        features = {}
        for feature_id in listed.obj:
            if not _FEATURE_ID_RE.fullmatch(feature_id):
                raise VerificationError(
                    f'index shard: {describe(feature_id)} in "features" is not a feature id '
                    "(lowercase letters, digits and '-', at most 63)"
                )
            features[feature_id] = Pin._read(listed.nested(feature_id), 1)
        try:
            shard = cls(
                bits=bits,
                bin=name,
                sequence=f.integer("sequence", 0),
                features=features if check_bins else {},
                issued_at=f.time("issued_at"),
                expires_at=f.time("expires_at"),
                schema_version=schema_version,
                extra=f.extra(_SHARD_FIELDS),
            )
        except ValueError as exc:
            raise VerificationError(f"{f.what}: {exc}") from None
        if not check_bins:
            object.__setattr__(shard, "features", frozen(features))
        return shard
