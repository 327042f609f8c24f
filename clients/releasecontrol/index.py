"""The signed release index: the model, its JCS encoding, signing and verification.

Two documents live on the CDN origin, both in the same signed envelope:

    {"signed": {...}, "signatures": [{"keyid": "<hex>", "sig": "<base64>"}]}

- `features/<feature-id>/releases.json`: one feature's versions and channels
  (`ReleasesIndex`);
- `remote-index.json`: every feature, the URL, SHA-256 and sequence of its
  `releases.json` (`RemoteIndex`), so files of different moments cannot be mixed.

Each signature is Ed25519 over the RFC 8785 (JCS) bytes of `signed`, and the
file itself is the JCS encoding of the whole envelope. Verification comes as a
pair: `check_signatures` reports (a `VerificationResult`), `verify_signatures`
raises VerificationError with the result's sentence. Parsing (`from_bytes`,
`from_dict`) raises VerificationError naming the field; constructing a model
with inconsistent values raises ValueError. Unknown fields of a newer schema are
kept in `extra` and written back by `to_dict`, so nothing is dropped.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import rfc8785

from releasecontrol.errors import VerificationError
from releasecontrol.trust import SigningKey, TrustStore, short_keyid

SCHEMA_VERSION = 1
TYPE_RELEASES = "releases"
TYPE_REMOTE_INDEX = "remote-index"
REMOTE_INDEX_PATH = "remote-index.json"
MAX_ENVELOPE_BYTES = 16 * 1024 * 1024

_TIME_FORMAT_EXAMPLE = "2026-11-26T10:00:00Z"
_TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}")
_MESSAGE_KEYIDS = 5  # keyids listed by name in a message; the rest are counted


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 (JCS) bytes of `value`; any Mapping counts as an object.

    Raises ValueError when `value` has no JCS form (a non-string key, an integer
    beyond ±2**53, NaN, a lone surrogate, a type that is not JSON).
    """
    return bytes(rfc8785.dumps(_plain(value)))


def _plain(value: Any) -> Any:
    # rfc8785 accepts only dict and list, and the model holds read-only mappings
    # and tuples; this is also the deep copy an envelope keeps of its body.
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def format_time(moment: datetime) -> str:
    """`moment` as the wire writes it: RFC 3339 in UTC, whole seconds, "Z" (fraction dropped).

    Raises ValueError for a naive datetime, whose zone would be a guess.
    """
    m = _utc_seconds(moment)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def parse_time(text: str) -> datetime:
    """The aware UTC datetime of a wire time like "2026-11-26T10:00:00Z".

    Only that exact form is accepted. Raises VerificationError naming the text.
    """
    match = _TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise VerificationError(
            f"time {text!r} is not an RFC 3339 UTC time like {_TIME_FORMAT_EXAMPLE}"
        )
    # Built from the fields directly: strptime cost ~30 us a call (more under threads,
    # behind its lock), and refused no more than datetime's own range checks do here
    # (month 1-12, the month's days, hour 0-23, minute and second 0-59, year 1-9999).
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise VerificationError(f"time {text!r} is not a valid date and time") from None


def _utc_seconds(moment: datetime) -> datetime:
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got {moment!r}")
    return moment.astimezone(UTC).replace(microsecond=0)


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
        if not isinstance(self.keyid, str) or not _HEX64_RE.fullmatch(self.keyid):
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
        object.__setattr__(self, "signed", _plain(self.signed))
        object.__setattr__(self, "signatures", tuple(self.signatures))
        self.signed_bytes()  # fail now, not later in a verifier that must not raise

    def signed_bytes(self) -> bytes:
        """The JCS bytes of `signed`: exactly what each signature covers."""
        return canonical_json(self.signed)

    def to_dict(self) -> dict[str, Any]:
        """The envelope as plain JSON values (a fresh copy)."""
        return {
            "signed": copy.deepcopy(dict(self.signed)),
            "signatures": [{"keyid": s.keyid, "sig": s.sig} for s in self.signatures],
        }

    def to_bytes(self) -> bytes:
        """The file as written to the origin: the JCS encoding of the whole envelope."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_ENVELOPE_BYTES) -> Envelope:
        """Parse a signed file (UTF-8 JSON). Does not check signatures.

        Raises VerificationError when the file is larger than `max_bytes`, is not
        JSON (duplicate keys and NaN count as not JSON), or is not an envelope.
        """
        if len(data) > max_bytes:
            raise VerificationError(
                f"signed file is {len(data)} bytes, more than the {max_bytes} allowed"
            )
        try:
            document = json.loads(
                data.decode("utf-8"),
                object_pairs_hook=_refuse_duplicate_keys,
                parse_constant=_refuse_constant,
            )
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise VerificationError(f"signed file is not valid UTF-8 JSON ({exc})") from None
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, d: Any) -> Envelope:
        """The envelope in a parsed JSON value; raises VerificationError saying what is wrong."""
        what = "signed envelope"
        if not isinstance(d, Mapping):
            raise VerificationError(f"{what} must be a JSON object, not {_describe(d)}")
        for name in ("signed", "signatures"):
            if name not in d:
                raise VerificationError(f'{what} is missing field "{name}"')
        if not isinstance(d["signed"], Mapping):
            raise VerificationError(
                f'{what}: field "signed" must be an object, not {_describe(d["signed"])}'
            )
        if not isinstance(d["signatures"], list):
            raise VerificationError(
                f'{what}: field "signatures" must be an array, not {_describe(d["signatures"])}'
            )
        signatures = []
        for i, entry in enumerate(d["signatures"]):
            where = f"signatures[{i}]"
            if not isinstance(entry, Mapping) or "keyid" not in entry or "sig" not in entry:
                raise VerificationError(
                    f'{what}: field "{where}" must be an object with "keyid" and "sig"'
                )
            try:
                signatures.append(Signature(keyid=entry["keyid"], sig=entry["sig"]))
            except ValueError as exc:
                raise VerificationError(f'{what}: field "{where}": {exc}') from None
        try:
            return cls(signed=d["signed"], signatures=tuple(signatures))
        except (ValueError, RecursionError) as exc:
            raise VerificationError(f'{what}: field "signed" has no JCS form ({exc})') from None


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers could keep different copies of a repeated key; refuse the ambiguity.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def sign(signed: Mapping[str, Any], keys: Sequence[SigningKey]) -> Envelope:
    """An envelope of `signed` with one signature per distinct key, in the order given.

    Raises ValueError when no key is given or `signed` has no JCS form.
    """
    if not keys:
        raise ValueError("sign needs at least one signing key")
    data = canonical_json(signed)
    signatures: dict[str, Signature] = {}
    for key in keys:
        if key.keyid not in signatures:
            sig = base64.b64encode(key.sign(data)).decode("ascii")
            signatures[key.keyid] = Signature(keyid=key.keyid, sig=sig)
    return Envelope(signed=signed, signatures=tuple(signatures.values()))


# --- verification -------------------------------------------------------------------------


@dataclass(frozen=True)
class VerificationResult:
    """Which keys signed validly, which did not, which are unknown, against a threshold.

    `valid`: trusted keys with a good signature; `invalid`: trusted keys whose
    every signature is bad; `untrusted`: keyids the trust store does not hold.
    """

    threshold: int
    valid: frozenset[str]
    invalid: frozenset[str]
    untrusted: frozenset[str]

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
        if not (self.valid or self.invalid or self.untrusted):
            parts.append("it carries no signatures")
        return "; ".join(parts)


def _list_keyids(keyids: frozenset[str]) -> str:
    shown = [short_keyid(k) for k in sorted(keyids)[:_MESSAGE_KEYIDS]]
    more = len(keyids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def check_signatures(envelope: Envelope, trust: TrustStore) -> VerificationResult:
    """Check every signature of `envelope` against `trust` and report; never raises."""
    try:
        data = envelope.signed_bytes()
    except (ValueError, RecursionError):
        data = None  # the body was changed in place into something unsignable: nothing verifies
    valid: set[str] = set()
    tried: set[str] = set()
    untrusted: set[str] = set()
    for signature in envelope.signatures:
        key = trust.keys.get(signature.keyid)
        if key is None:
            untrusted.add(signature.keyid)
            continue
        tried.add(signature.keyid)
        raw = _decode_sig(signature.sig)
        if data is not None and raw is not None and key.verify(raw, data):
            valid.add(signature.keyid)
    return VerificationResult(
        threshold=trust.threshold,
        valid=frozenset(valid),
        invalid=frozenset(tried - valid),
        untrusted=frozenset(untrusted),
    )


def verify_signatures(envelope: Envelope, trust: TrustStore) -> VerificationResult:
    """The result of check_signatures; raises VerificationError with its message unless verified."""
    result = check_signatures(envelope, trust)
    if not result.verified:
        raise VerificationError(result.message)
    return result


def _decode_sig(sig: str) -> bytes | None:
    try:
        return base64.b64decode(sig, validate=True)
    except (binascii.Error, ValueError):
        return None


# --- reading typed fields -----------------------------------------------------------------


class _Fields:
    """Typed access to one JSON object; every error names the field's full path."""

    def __init__(self, what: str, obj: Any, path: str = "") -> None:
        if not isinstance(obj, Mapping):
            where = f'field "{path}"' if path else "the signed body"
            raise VerificationError(f"{what}: {where} must be an object, not {_describe(obj)}")
        self.what, self.obj, self.path = what, obj, path

    def _full(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _wrong(self, name: str, expected: str) -> VerificationError:
        return VerificationError(
            f'{self.what}: field "{self._full(name)}" must be {expected}, '
            f"not {_describe(self.obj[name])}"
        )

    def get(self, name: str) -> Any:
        if name not in self.obj:
            raise VerificationError(f'{self.what} is missing field "{self._full(name)}"')
        return self.obj[name]

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str) or not value:
            raise self._wrong(name, "a non-empty string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise self._wrong(name, "a non-empty string or null")
        return value

    def integer(self, name: str, minimum: int) -> int:
        value = self.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._wrong(name, f"an integer of at least {minimum}")
        return value

    def sha256(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str) or not _HEX64_RE.fullmatch(value):
            raise self._wrong(name, "a SHA-256 in 64 lowercase hex characters")
        return value

    def time(self, name: str) -> datetime:
        value = self.get(name)
        try:
            return parse_time(value)
        except VerificationError:
            raise self._wrong(name, f"an RFC 3339 UTC time like {_TIME_FORMAT_EXAMPLE}") from None

    def array(self, name: str) -> list[Any]:
        value = self.get(name)
        if not isinstance(value, list):
            raise self._wrong(name, "an array")
        return value

    def nested(self, name: str) -> _Fields:
        return _Fields(self.what, self.get(name), self._full(name))

    def item(self, name: str, index: int) -> _Fields:
        return _Fields(self.what, self.obj[name][index], f"{self._full(name)}[{index}]")

    def extra(self, known: frozenset[str]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.obj.items() if k not in known}


def _describe(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


def _check_extra(extra: Mapping[str, Any], known: frozenset[str]) -> None:
    clash = sorted(set(extra) & known)
    if clash:
        raise ValueError(f"extra fields {clash} clash with the schema's own fields")


def _check_version_fields(schema_version: int, sequence: int) -> None:
    if schema_version < 1:
        raise ValueError(f"schema_version must be at least 1, not {schema_version}")
    if sequence < 0:
        raise ValueError(f"sequence must not be negative, not {sequence}")


def _check_period(issued_at: datetime, expires_at: datetime) -> None:
    if expires_at <= issued_at:
        raise ValueError(
            f"expires_at {format_time(expires_at)} is not after issued_at {format_time(issued_at)}"
        )


def _is_expired(expires_at: datetime, now: datetime) -> bool:
    if now.utcoffset() is None:
        raise ValueError(f"now must be an aware datetime, got {now!r}")
    # Expired at the expiry second itself: the index is valid strictly before it.
    return now >= expires_at


def _read_type(f: _Fields, expected: str) -> None:
    value = f.get("type")
    if value != expected:
        raise VerificationError(
            f'{f.what}: field "type" must be "{expected}", not {_describe(value)}'
        )


# --- releases.json ------------------------------------------------------------------------

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
        if not _HEX64_RE.fullmatch(self.manifest_sha256):
            raise ValueError(f"manifest_sha256 of {self.version!r} is not 64 lowercase hex")
        object.__setattr__(self, "published_at", _utc_seconds(self.published_at))
        object.__setattr__(self, "extra", _frozen(self.extra))
        _check_extra(self.extra, _VERSION_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        return {
            **_plain(self.extra),
            "version": self.version,
            "manifest_sha256": self.manifest_sha256,
            "published_at": format_time(self.published_at),
        }

    @classmethod
    def _read(cls, f: _Fields) -> VersionEntry:
        return cls(
            version=f.text("version"),
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
        object.__setattr__(self, "started_at", _utc_seconds(self.started_at))
        try:
            self.ends_at  # noqa: B018 - a soak must end within the calendar
        except OverflowError:
            raise ValueError(f"a soak of {self.duration_seconds} seconds never ends") from None
        object.__setattr__(self, "extra", _frozen(self.extra))
        _check_extra(self.extra, _SOAK_FIELDS)

    @property
    def ends_at(self) -> datetime:
        return self.started_at + timedelta(seconds=self.duration_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {
            **_plain(self.extra),
            "started_at": format_time(self.started_at),
            "duration_seconds": self.duration_seconds,
            "ends_at": format_time(self.ends_at),
        }

    @classmethod
    def _read(cls, f: _Fields) -> CanarySoak:
        soak = cls(
            started_at=f.time("started_at"),
            duration_seconds=f.integer("duration_seconds", 0),
            extra=f.extra(_SOAK_FIELDS),
        )
        # ends_at is redundant on the wire; a host may read either, so they must agree.
        if f.time("ends_at") != soak.ends_at:
            raise VerificationError(
                f'{f.what}: field "{f.path}.ends_at" must be started_at + duration_seconds '
                f"({format_time(soak.ends_at)}), not {_describe(f.get('ends_at'))}"
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
        object.__setattr__(self, "issued_at", _utc_seconds(self.issued_at))
        object.__setattr__(self, "expires_at", _utc_seconds(self.expires_at))
        _check_period(self.issued_at, self.expires_at)
        object.__setattr__(self, "extra", _frozen(self.extra))
        object.__setattr__(self, "channels_extra", _frozen(self.channels_extra))
        _check_extra(self.extra, _RELEASES_FIELDS)
        _check_extra(self.channels_extra, _CHANNEL_FIELDS)

    @property
    def active_version(self) -> str | None:
        """The version a host serves by default: the stable channel."""
        return self.stable

    def is_expired(self, now: datetime) -> bool:
        """True from `expires_at` on. Raises ValueError for a naive `now`."""
        return _is_expired(self.expires_at, now)

    def to_dict(self) -> dict[str, Any]:
        """The `signed` body in the contract's format, unknown fields included."""
        return {
            **_plain(self.extra),
            "schema_version": self.schema_version,
            "type": TYPE_RELEASES,
            "feature_id": self.feature_id,
            "sequence": self.sequence,
            "active_version": self.stable,
            "channels": {
                **_plain(self.channels_extra),
                "stable": self.stable,
                "canary": self.canary,
            },
            "canary_soak": None if self.canary_soak is None else self.canary_soak.to_dict(),
            "versions": [v.to_dict() for v in self.versions],
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReleasesIndex:
        """The index in a `signed` body; raises VerificationError naming the bad field."""
        f = _Fields("releases index", d)
        _read_type(f, TYPE_RELEASES)
        schema_version = f.integer("schema_version", 1)
        channels = f.nested("channels")
        stable = channels.optional_text("stable")
        if f.optional_text("active_version") != stable:
            raise VerificationError(
                f'{f.what}: field "active_version" is {_describe(f.get("active_version"))} '
                f'but "channels.stable" is {_describe(stable)}; they must be equal'
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
                versions=versions,
                issued_at=f.time("issued_at"),
                expires_at=f.time("expires_at"),
                schema_version=schema_version,
                extra=f.extra(_RELEASES_FIELDS),
                channels_extra=channels.extra(_CHANNEL_FIELDS),
            )
        except ValueError as exc:
            raise VerificationError(f"{f.what}: {exc}") from None


# --- remote-index.json --------------------------------------------------------------------

_FEATURE_FIELDS = frozenset({"url", "sha256", "sequence"})
_REMOTE_FIELDS = frozenset(
    {"schema_version", "type", "sequence", "features", "issued_at", "expires_at"}
)


@dataclass(frozen=True)
class FeatureEntry:
    """Where a feature's releases.json is, the SHA-256 of its file bytes and its sequence."""

    url: str
    sha256: str
    sequence: int
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("a feature's url must not be empty")
        if not _HEX64_RE.fullmatch(self.sha256):
            raise ValueError(f"sha256 of {self.url!r} is not 64 lowercase hex")
        if self.sequence < 0:
            raise ValueError(f"sequence of {self.url!r} must not be negative")
        object.__setattr__(self, "extra", _frozen(self.extra))
        _check_extra(self.extra, _FEATURE_FIELDS)

    def to_dict(self) -> dict[str, Any]:
        return {
            **_plain(self.extra),
            "url": self.url,
            "sha256": self.sha256,
            "sequence": self.sequence,
        }

    @classmethod
    def _read(cls, f: _Fields) -> FeatureEntry:
        return cls(
            url=f.text("url"),
            sha256=f.sha256("sha256"),
            sequence=f.integer("sequence", 0),
            extra=f.extra(_FEATURE_FIELDS),
        )


@dataclass(frozen=True)
class RemoteIndex:
    """The signed body of remote-index.json: every feature's releases.json, pinned by hash.

    Raises ValueError when expiry is not after issue or a datetime is naive.
    """

    sequence: int
    features: Mapping[str, FeatureEntry]
    issued_at: datetime
    expires_at: datetime
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_version_fields(self.schema_version, self.sequence)
        if "" in self.features:
            raise ValueError("a feature id must not be empty")
        object.__setattr__(self, "features", _frozen(self.features))
        object.__setattr__(self, "issued_at", _utc_seconds(self.issued_at))
        object.__setattr__(self, "expires_at", _utc_seconds(self.expires_at))
        _check_period(self.issued_at, self.expires_at)
        object.__setattr__(self, "extra", _frozen(self.extra))
        _check_extra(self.extra, _REMOTE_FIELDS)

    def is_expired(self, now: datetime) -> bool:
        """True from `expires_at` on. Raises ValueError for a naive `now`."""
        return _is_expired(self.expires_at, now)

    def to_dict(self) -> dict[str, Any]:
        """The `signed` body in the contract's format, unknown fields included."""
        return {
            **_plain(self.extra),
            "schema_version": self.schema_version,
            "type": TYPE_REMOTE_INDEX,
            "sequence": self.sequence,
            "features": {fid: entry.to_dict() for fid, entry in self.features.items()},
            "issued_at": format_time(self.issued_at),
            "expires_at": format_time(self.expires_at),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RemoteIndex:
        """The index in a `signed` body; raises VerificationError naming the bad field."""
        f = _Fields("remote index", d)
        _read_type(f, TYPE_REMOTE_INDEX)
        schema_version = f.integer("schema_version", 1)
        listed = f.nested("features")
        try:
            return cls(
                sequence=f.integer("sequence", 0),
                features={fid: FeatureEntry._read(listed.nested(fid)) for fid in listed.obj},
                issued_at=f.time("issued_at"),
                expires_at=f.time("expires_at"),
                schema_version=schema_version,
                extra=f.extra(_REMOTE_FIELDS),
            )
        except ValueError as exc:
            raise VerificationError(f"{f.what}: {exc}") from None
