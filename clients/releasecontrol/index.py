"""Signed files: the envelope, signing, checking signatures, and one feature's releases.json.

Every index file on the CDN origin (host protocol v2, docs/host-protocol.md) is
a signed envelope, and the file is exactly its RFC 8785 (JCS) encoding:

    {"signatures": [{"keyid": "<hex>", "sig": "<base64>"}], "signed": {...}}

Each signature is Ed25519 over the JCS bytes of `signed`. Verification comes as
a pair: `check_signatures` reports (a `VerificationResult`), `verify_signatures`
raises VerificationError with the result's sentence. Parsing (`from_bytes`,
`from_dict`) raises VerificationError naming the field; constructing a model
with inconsistent values raises ValueError. Unknown fields of a newer schema are
kept in `extra` and written back by `to_dict`, so nothing is dropped.

This module holds `features/<id>/releases.json` (`ReleasesIndex`); the top level
and its shards are in `releasecontrol.shards`, roots in `releasecontrol.root`, and
the checks a host makes, in order, in `releasecontrol.verifier`.
"""

from __future__ import annotations

import base64
import binascii
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from releasecontrol.canonical import NotCanonical, canonical_json, jcs, parse_canonical, plain
from releasecontrol.errors import VerificationError
from releasecontrol.fields import (
    HEX64_RE,
    Fields,
    check_extra,
    check_period,
    describe,
    format_time,
    frozen,
    is_expired,
    parse_time,
    utc_seconds,
)
from releasecontrol.trust import ENV_ALLOW_DEV_KEYS, SigningKey, TrustStore, short_keyid

__all__ = [
    "MAX_ENVELOPE_BYTES",
    "REMOTE_INDEX_PATH",
    "SCHEMA_VERSION",
    "TYPE_RELEASES",
    "WEIGHT_SCALE",
    "CanarySoak",
    "Envelope",
    "ReleasesIndex",
    "Signature",
    "VerificationResult",
    "VersionEntry",
    "canonical_json",
    "check_signatures",
    "format_time",
    "parse_time",
    "releases_path",
    "sign",
    "verify_signatures",
]

SCHEMA_VERSION = 2
"""The host protocol version every signed file carries as `schema_version`."""
TYPE_RELEASES = "releases"
REMOTE_INDEX_PATH = "remote-index.json"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024

_MESSAGE_KEYIDS = 5  # keyids listed by name in a message; the rest are counted


def releases_path(feature_id: str) -> str:
    """Where a feature's releases.json lives on the origin: "features/<id>/releases.json".

    Raises ValueError for an id that could step outside its folder.
    """
    if (
        not feature_id
        or feature_id in (".", "..")
        or any(c in feature_id for c in "/\\")
        or not feature_id.isprintable()
    ):
        raise ValueError(f"feature id {feature_id!r} cannot name a folder on the origin")
    return f"features/{feature_id}/releases.json"


# --- the envelope -------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """One signature: the signer's keyid (hex SHA-256 of its key) and the base64 signature."""

    keyid: str
    sig: str

    def __post_init__(self) -> None:
        if not isinstance(self.keyid, str) or not HEX64_RE.fullmatch(self.keyid):
            raise ValueError(f"keyid {self.keyid!r} is not 64 lowercase hex characters")
        if not isinstance(self.sig, str):
            raise ValueError(f"sig must be a base64 string, not {type(self.sig).__name__}")


@dataclass(frozen=True)
class Envelope:
    """A signed body and its signatures. Keeps its own deep copy of `signed`.

    Raises ValueError when `signed` has no JCS form.
    """

    signed: Mapping[str, Any]
    signatures: tuple[Signature, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "signed", _plain_dict(self.signed))
        object.__setattr__(self, "signatures", tuple(self.signatures))
        self.signed_bytes()  # fail now, not later in a verifier that must not raise

    def signed_bytes(self) -> bytes:
        """The JCS bytes of `signed`: exactly what each signature covers."""
        return jcs(self.signed)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as plain JSON values (a fresh copy)."""
        return {
            "signatures": [{"keyid": s.keyid, "sig": s.sig} for s in self.signatures],
            "signed": copy.deepcopy(dict(self.signed)),
        }

    def to_bytes(self) -> bytes:
        """The file as written to the origin: the JCS encoding of the whole envelope."""
        return jcs(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse a signed file, which must be exactly its RFC 8785 encoding. Does not check
        signatures.

        Raises VerificationError when the file is larger than `max_bytes`, is not
        UTF-8 JSON, is not canonical (`NotCanonicalEnvelope`), or is not an envelope.
        """
        if len(data) > max_bytes:
            raise VerificationError(
                f"signed file is {len(data)} bytes, more than the {max_bytes} allowed"
            )
        try:
            document = parse_canonical(data)
        except NotCanonical as exc:
            if exc.malformed:
                raise VerificationError(f"signed file: {exc}") from None
            raise NotCanonicalEnvelope(f"signed file: {exc}") from None
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, d: Any) -> Envelope:
        """The envelope in a parsed JSON value; raises VerificationError saying what is wrong.

        It must have exactly "signatures" and "signed", and each signature exactly
        "keyid" and "sig".
        """
        what = "signed envelope"
        if not isinstance(d, Mapping):
            raise VerificationError(f"{what} must be a JSON object, not {describe(d)}")
        for name in ("signed", "signatures"):
            if name not in d:
                raise VerificationError(f'{what} is missing field "{name}"')
        unknown = sorted(set(d) - {"signed", "signatures"})
        if unknown:
            raise VerificationError(
                f'{what} must have only "signatures" and "signed", not also {describe(unknown)}'
            )
        if not isinstance(d["signed"], Mapping):
            raise VerificationError(
                f'{what}: field "signed" must be an object, not {describe(d["signed"])}'
            )
        if not isinstance(d["signatures"], list):
            raise VerificationError(
                f'{what}: field "signatures" must be an array, not {describe(d["signatures"])}'
            )
        signatures = []
        for i, entry in enumerate(d["signatures"]):
            where = f"signatures[{i}]"
            if not isinstance(entry, Mapping) or set(entry) != {"keyid", "sig"}:
                raise VerificationError(
                    f'{what}: field "{where}" must be an object with exactly "keyid" and "sig"'
                )
            try:
                signatures.append(Signature(keyid=entry["keyid"], sig=entry["sig"]))
            except ValueError as exc:
                raise VerificationError(f'{what}: field "{where}": {exc}') from None
        try:
            return cls(signed=d["signed"], signatures=tuple(signatures))
        except (ValueError, RecursionError) as exc:
            raise VerificationError(f'{what}: field "signed" has no JCS form ({exc})') from None


class NotCanonicalEnvelope(VerificationError):
    """A signed file that is JSON but not exactly its RFC 8785 encoding."""


def _plain_dict(value: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"signed must be an object, not {type(value).__name__}")
    result: dict[str, Any] = plain(value)
    return result


def sign(signed: Mapping[str, Any], keys: Sequence[SigningKey]) -> Envelope:
    """An envelope of `signed` with one signature per distinct key, in the order given.

    Raises ValueError when no key is given or `signed` has no JCS form.
    """
    if not keys:
        raise ValueError("sign needs at least one signing key")
    data = jcs(_plain_dict(signed))
    signatures: dict[str, Signature] = {}
    for key in keys:
        if key.keyid not in signatures:
            sig = base64.b64encode(key.sign(data)).decode("ascii")
            signatures[key.keyid] = Signature(keyid=key.keyid, sig=sig)
    return Envelope(signed=signed, signatures=tuple(signatures.values()))


# --- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationResult:
    """Which keys of a role signed validly, which did not, which are unknown, against a
    threshold.

    `valid`: role keys with a good signature that count; `invalid`: role keys
    whose every signature is bad; `untrusted`: keyids the role does not hold;
    `dev_refused`: dev keys whose good signature did not count because dev keys
    are not allowed.
    """

    threshold: int
    valid: frozenset[str]
    invalid: frozenset[str]
    untrusted: frozenset[str]
    dev_refused: frozenset[str] = frozenset()

    @property
    def verified(self) -> bool:
        """True when enough distinct trusted keys signed; a key counts once."""
        return len(self.valid) >= self.threshold

    @property
    def message(self) -> str:
        """One sentence, e.g. "signed by 1 of 2 required trusted keys; bad signature from …"."""
        keys = "key" if self.threshold == 1 else "keys"
        parts = [f"signed by {len(self.valid)} of {self.threshold} required trusted {keys}"]
        if self.invalid:
            noun = "bad signature" if len(self.invalid) == 1 else "bad signatures"
            parts.append(f"{noun} from {_list_keyids(self.invalid)}")
        if self.untrusted:
            noun = "unknown key" if len(self.untrusted) == 1 else "unknown keys"
            parts.append(f"{noun} {_list_keyids(self.untrusted)}")
        if self.dev_refused:
            noun = "dev key" if len(self.dev_refused) == 1 else "dev keys"
            parts.append(
                f"{noun} {_list_keyids(self.dev_refused)} not accepted: {ENV_ALLOW_DEV_KEYS} is off"
            )
        if not (self.valid or self.invalid or self.untrusted or self.dev_refused):
            parts.append("it carries no signatures")
        return "; ".join(parts)


def _list_keyids(keyids: frozenset[str]) -> str:
    shown = [short_keyid(k) for k in sorted(keyids)[:_MESSAGE_KEYIDS]]
    more = len(keyids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def check_signatures(
    envelope: Envelope,
    trust: TrustStore,
    *,
    allow_dev_keys: bool = False,
    signed_bytes: bytes | None = None,
) -> VerificationResult:
    """Check every signature of `envelope` against the keys of `trust` (a role) and report;
    never raises.

    A dev key's good signature counts only with `allow_dev_keys`. `signed_bytes`:
    the JCS bytes of `envelope.signed` when the caller has them (the slice of a
    canonical file), so they are not encoded again.
    """
    data = signed_bytes
    if data is None:
        try:
            data = envelope.signed_bytes()
        except (ValueError, RecursionError):
            data = None  # changed in place into something unsignable: nothing verifies
    valid: set[str] = set()
    tried: set[str] = set()
    untrusted: set[str] = set()
    dev_refused: set[str] = set()
    for signature in envelope.signatures:
        key = trust.keys.get(signature.keyid)
        if key is None:
            untrusted.add(signature.keyid)
            continue
        tried.add(signature.keyid)
        if signature.keyid in valid or signature.keyid in dev_refused:
            continue
        raw = _decode_sig(signature.sig)
        if data is not None and raw is not None and key.verify(raw, data):
            (dev_refused if key.dev and not allow_dev_keys else valid).add(signature.keyid)
    return VerificationResult(
        threshold=trust.threshold,
        valid=frozenset(valid),
        invalid=frozenset(tried - valid - dev_refused),
        untrusted=frozenset(untrusted),
        dev_refused=frozenset(dev_refused),
    )


def verify_signatures(
    envelope: Envelope, trust: TrustStore, *, allow_dev_keys: bool = False
) -> VerificationResult:
    """The result of check_signatures; raises VerificationError with its message unless verified."""
    result = check_signatures(envelope, trust, allow_dev_keys=allow_dev_keys)
    if not result.verified:
        raise VerificationError(result.message)
    return result


def _decode_sig(sig: str) -> bytes | None:
    # Standard base64 with padding, nothing else: 64 bytes are exactly 88 characters.
    if len(sig) != 88:
        return None
    try:
        return base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_version_fields(schema_version: int, sequence: int) -> None:
    if schema_version < 1:
        raise ValueError(f"schema_version must be at least 1, not {schema_version}")
    if sequence < 0:
        raise ValueError(f"sequence must not be negative, not {sequence}")


def read_type(f: Fields, expected: str) -> None:
    """Raise VerificationError unless the body's "type" is `expected`."""
    value = f.get("type")
    if value != expected:
        raise VerificationError(
            f'{f.what}: field "type" must be "{expected}", not {describe(value)}'
        )


# --- releases.json ------------------------------------------------------------------------

WEIGHT_SCALE = 10_000
"""A canary's weight is out of this many buckets: 500 serves 5 % of bucketed users."""

_VERSION_FIELDS = frozenset({"version", "manifest_sha256", "published_at"})
_SOAK_FIELDS = frozenset({"started_at", "duration_seconds", "ends_at"})
_CHANNEL_FIELDS = frozenset({"stable", "canary"})
_RELEASES_FIELDS = frozenset(
    {
        "schema_version",
        "type",
        "feature_id",
        "sequence",
        "active_version",
        "channels",
        "canary_soak",
        "canary_weight",
        "versions",
        "issued_at",
        "expires_at",
    }
)


@dataclass(frozen=True)
class VersionEntry:
    """One published version: the SHA-256 of its manifest.json and when it was published."""

    version: str
    manifest_sha256: str
    published_at: datetime
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not HEX64_RE.fullmatch(self.manifest_sha256):
            raise ValueError(f"manifest_sha256 of {self.version!r} is not 64 lowercase hex")
        object.__setattr__(self, "published_at", utc_seconds(self.published_at))
        object.__setattr__(self, "extra", frozen(self.extra))
        check_extra(self.extra, _VERSION_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        return {
            **plain(self.extra),
            "version": self.version,
            "manifest_sha256": self.manifest_sha256,
            "published_at": format_time(self.published_at),
        }

    @classmethod
    def _read(cls, f: Fields) -> VersionEntry:
        return cls(
            # SemVer: a version is a path segment of its manifest's URL (never "..").
            version=f.semver("version"),
            manifest_sha256=f.sha256("manifest_sha256"),
            published_at=f.time("published_at"),
            extra=f.extra(_VERSION_FIELDS),
        )


@dataclass(frozen=True)
class CanarySoak:
    """When the running canary's soak started and how long it lasts."""

    started_at: datetime
    duration_seconds: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.duration_seconds < 0:
            raise ValueError(f"soak duration_seconds must not be negative: {self.duration_seconds}")
        object.__setattr__(self, "started_at", utc_seconds(self.started_at))
        try:
            self.ends_at  # noqa: B018 - a soak must end within the calendar
        except OverflowError:
            raise ValueError(f"a soak of {self.duration_seconds} seconds never ends") from None
        object.__setattr__(self, "extra", frozen(self.extra))
        check_extra(self.extra, _SOAK_FIELDS)

    @property
    def ends_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.duration_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            **plain(self.extra),
            "started_at": format_time(self.started_at),
            "duration_seconds": self.duration_seconds,
            "ends_at": format_time(self.ends_at),
        }

    @classmethod
    def _read(cls, f: Fields) -> CanarySoak:
        soak = cls(
            started_at=f.time("started_at"),
            duration_seconds=f.integer("duration_seconds", 0),
            extra=f.extra(_SOAK_FIELDS),
        )
        # ends_at is redundant on the wire; a host may read either, so they must agree.
        if f.time("ends_at") != soak.ends_at:
            raise VerificationError(
                f'{f.what}: field "{f.path}.ends_at" must be started_at + duration_seconds '
                f"({format_time(soak.ends_at)}), not {describe(f.get('ends_at'))}"
            )
        return soak


@dataclass(frozen=True)
class ReleasesIndex:
    """The signed body of one feature's releases.json.

    `stable` is written as both `channels.stable` and `active_version`. Raises
    ValueError when the values disagree (a channel names an unlisted version, a
    soak without a canary, expiry not after issue, a naive datetime).
    """

    feature_id: str
    sequence: int
    stable: str | None
    canary: str | None
    canary_soak: CanarySoak | None
    versions: tuple[VersionEntry, ...]
    issued_at: datetime
    expires_at: datetime
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    channels_extra: Mapping[str, Any] = field(default_factory=dict)
    canary_weight: int | None = None
    """While a canary runs: the share of bucketed users it serves, out of WEIGHT_SCALE
    (docs/host-protocol.md 3.6); None when no canary runs or in a file signed before weights
    (read as 0: only hosts that opt into the canary channel get it)."""

    def __post_init__(self) -> None:
        if not self.feature_id:
            raise ValueError("feature_id must not be empty")
        _check_version_fields(self.schema_version, self.sequence)
        object.__setattr__(self, "versions", tuple(self.versions))
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"versions lists a version twice: {names}")
        for channel, version in (("stable", self.stable), ("canary", self.canary)):
            if version is not None and version not in names:
                raise ValueError(f"channels.{channel} {version!r} is not in versions {names}")
        if self.canary_soak is not None and self.canary is None:
            raise ValueError("canary_soak is set but no canary runs")
        if self.canary_weight is not None:
            if self.canary is None:
                raise ValueError("canary_weight is set but no canary runs")
            if type(self.canary_weight) is not int or not (0 <= self.canary_weight <= WEIGHT_SCALE):
                raise ValueError(
                    f"canary_weight must be an integer from 0 to {WEIGHT_SCALE}, "
                    f"not {self.canary_weight!r}"
                )
        object.__setattr__(self, "issued_at", utc_seconds(self.issued_at))
        object.__setattr__(self, "expires_at", utc_seconds(self.expires_at))
        check_period(self.issued_at, self.expires_at)
        object.__setattr__(self, "extra", frozen(self.extra))
        object.__setattr__(self, "channels_extra", frozen(self.channels_extra))
        check_extra(self.extra, _RELEASES_FIELDS)
        check_extra(self.channels_extra, _CHANNEL_FIELDS)

    @property
    def active_version(self) -> str | None:
        """The version a host serves by default: the stable channel."""
        return self.stable

    def is_expired(self, now: datetime) -> bool:
        """True from `expires_at` on. Raises ValueError for a naive `now`."""
        return is_expired(self.expires_at, now)

    def to_dict(self) -> dict[str, Any]:
        """The `signed` body in the contract's format, unknown fields included."""
        return {
            **plain(self.extra),
            "schema_version": self.schema_version,
            "type": TYPE_RELEASES,
            "feature_id": self.feature_id,
            "sequence": self.sequence,
            "active_version": self.stable,
            "channels": {
                **plain(self.channels_extra),
                "stable": self.stable,
                "canary": self.canary,
            },
            "canary_soak": None if self.canary_soak is None else self.canary_soak.to_dict(),
            **({} if self.canary_weight is None else {"canary_weight": self.canary_weight}),
            "versions": [v.to_dict() for v in self.versions],
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReleasesIndex:
        """The index in a `signed` body; raises VerificationError naming the bad field."""
        f = Fields("releases index", d)
        read_type(f, TYPE_RELEASES)
        schema_version = f.integer("schema_version", 1)
        channels = f.nested("channels")
        stable = channels.optional_text("stable")
        if f.optional_text("active_version") != stable:
            raise VerificationError(
                f'{f.what}: field "active_version" is {describe(f.get("active_version"))} '
                f'but "channels.stable" is {describe(stable)}; they must be equal'
            )
        try:
            soak = None
            if f.get("canary_soak") is not None:
                soak = CanarySoak._read(f.nested("canary_soak"))
            versions = tuple(
                VersionEntry._read(f.item("versions", i)) for i in range(len(f.array("versions")))
            )
            return cls(
                feature_id=f.text("feature_id"),
                sequence=f.integer("sequence", 0),
                stable=stable,
                canary=channels.optional_text("canary"),
                canary_soak=soak,
                canary_weight=None
                if f.obj.get("canary_weight") is None  # optional: absent before weights
                else f.integer("canary_weight", 0, WEIGHT_SCALE),
                versions=versions,
                issued_at=f.time("issued_at"),
                expires_at=f.time("expires_at"),
                schema_version=schema_version,
                extra=f.extra(_RELEASES_FIELDS),
                channels_extra=channels.extra(_CHANNEL_FIELDS),
            )
        except ValueError as exc:
            raise VerificationError(f"{f.what}: {exc}") from None
