"""Reading the typed fields of a signed body, and the wire forms of times and digests.

Every model of a signed file (`index`, `root`, `shards`) reads its body through
`Fields`, so every error names the file's kind and the field's full path the
same way ("remote index: field "bins.bits" must be an integer from 0 to 16, not
"7""), and every model writes times and checks its values the same way.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from releasecontrol.canonical import MAX_SAFE_INTEGER
from releasecontrol.errors import VerificationError

__all__ = [
    "HEX64_RE",
    "SEMVER_RE",
    "TIME_FORMAT_EXAMPLE",
    "Fields",
    "check_extra",
    "check_period",
    "describe",
    "format_time",
    "frozen",
    "is_expired",
    "parse_time",
    "utc_seconds",
]

TIME_FORMAT_EXAMPLE = "2026-11-26T10:00:00Z"
_TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")
HEX64_RE = re.compile(r"[0-9a-f]{64}")
# SemVer 2.0 (semver.org's expression, ASCII digits only), as the JavaScript host has it.
_N = r"(?:0|[1-9][0-9]*)"
_PRE = r"(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
SEMVER_RE = re.compile(
    rf"{_N}\.{_N}\.{_N}(?:-{_PRE}(?:\.{_PRE})*)?(?:\+[0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*)?"
)


def format_time(moment: datetime) -> str:
    """`moment` as the wire writes it: RFC 3339 in UTC, whole seconds, "Z" (fraction dropped).

    Raises ValueError for a naive datetime, whose zone would be a guess.
    """
    m = utc_seconds(moment)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def parse_time(text: str) -> datetime:
    """The aware UTC datetime of a wire time like "2026-11-26T10:00:00Z".

    Only that exact form is accepted. Raises VerificationError naming the text.
    """
    match = _TIME_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise VerificationError(
            f"time {text!r} is not an RFC 3339 UTC time like {TIME_FORMAT_EXAMPLE}"
        )
    # Built from the fields directly: strptime cost ~30 us a call (more under threads,
    # behind its lock), and refused no more than datetime's own range checks do here
    # (month 1-12, the month's days, hour 0-23, minute and second 0-59, year 1-9999).
    year, month, day, hour, minute, second = map(int, match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        raise VerificationError(f"time {text!r} is not a valid date and time") from None


def utc_seconds(moment: datetime) -> datetime:
    """`moment` in UTC without its fraction of a second; ValueError for a naive datetime."""
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise ValueError(f"expected an aware datetime, got {moment!r}")
    return moment.astimezone(UTC).replace(microsecond=0)


def is_expired(expires_at: datetime, now: datetime) -> bool:
    """True from the `expires_at` second on. Raises ValueError for a naive `now`."""
    if now.utcoffset() is None:
        raise ValueError(f"now must be an aware datetime, got {now!r}")
    return now >= expires_at


def check_period(issued_at: datetime, expires_at: datetime) -> None:
    """Raise ValueError unless `expires_at` is after `issued_at`."""
    if expires_at <= issued_at:
        raise ValueError(
            f"expires_at {format_time(expires_at)} is not after issued_at {format_time(issued_at)}"
        )


def describe(value: Any) -> str:
    """A short JSON rendering of `value` for a message (at most 60 characters)."""
    text = json.dumps(value, ensure_ascii=True, default=repr)
    return text if len(text) <= 60 else text[:57] + "..."


def frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    """A read-only copy of `mapping`."""
    return MappingProxyType(dict(mapping))


def check_extra(extra: Mapping[str, Any], known: frozenset[str]) -> None:
    """Raise ValueError when carried unknown fields use a name the schema defines."""
    clash = sorted(set(extra) & known)
    if clash:
        raise ValueError(f"extra fields {clash} clash with the schema's own fields")


class Fields:
    """Typed access to one JSON object; every error names the field's full path.

    `what` names the file's kind in messages ("remote index"); `path` is where
    this object sits in the body ("bins.shards.2a"), empty for the body itself.
    Every reader raises VerificationError.
    """

    def __init__(self, what: str, obj: Any, path: str = "") -> None:
        if not isinstance(obj, Mapping):
            where = f'field "{path}"' if path else "the signed body"
            raise VerificationError(f"{what}: {where} must be an object, not {describe(obj)}")
        self.what, self.obj, self.path = what, obj, path

    def full(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def wrong(self, name: str, expected: str) -> VerificationError:
        return VerificationError(
            f'{self.what}: field "{self.full(name)}" must be {expected}, '
            f"not {describe(self.obj[name])}"
        )

    def get(self, name: str) -> Any:
        if name not in self.obj:
            raise VerificationError(f'{self.what} is missing field "{self.full(name)}"')
        return self.obj[name]

    def text(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str) or not value:
            raise self.wrong(name, "a non-empty string")
        return value

    def optional_text(self, name: str) -> str | None:
        value = self.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise self.wrong(name, "a non-empty string or null")
        return value

    def integer(self, name: str, minimum: int, maximum: int = MAX_SAFE_INTEGER) -> int:
        value = self.get(name)
        if type(value) is not int or not minimum <= value <= maximum:
            if maximum == MAX_SAFE_INTEGER:
                raise self.wrong(name, f"an integer of at least {minimum}")
            raise self.wrong(name, f"an integer from {minimum} to {maximum}")
        return value

    def sha256(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str) or not HEX64_RE.fullmatch(value):
            raise self.wrong(name, "a SHA-256 in 64 lowercase hex characters")
        return value

    def semver(self, name: str) -> str:
        value = self.get(name)
        if not isinstance(value, str) or not SEMVER_RE.fullmatch(value):
            raise self.wrong(name, "a SemVer 2.0 version such as 1.4.0")
        return value

    def time(self, name: str) -> datetime:
        value = self.get(name)
        try:
            return parse_time(value)
        except VerificationError:
            raise self.wrong(name, f"an RFC 3339 UTC time like {TIME_FORMAT_EXAMPLE}") from None

    def array(self, name: str) -> list[Any]:
        value = self.get(name)
        if not isinstance(value, list):
            raise self.wrong(name, "an array")
        return value

    def nested(self, name: str) -> Fields:
        return Fields(self.what, self.get(name), self.full(name))

    def item(self, name: str, index: int) -> Fields:
        return Fields(self.what, self.obj[name][index], f"{self.full(name)}[{index}]")

    def extra(self, known: frozenset[str]) -> dict[str, Any]:
        return {k: copy.deepcopy(v) for k, v in self.obj.items() if k not in known}

    def expect(self, name: str, expected: Any) -> None:
        """Raise VerificationError unless field `name` equals `expected`."""
        value = self.get(name)
        if value != expected or type(value) is not type(expected):
            raise VerificationError(
                f'{self.what}: field "{self.full(name)}" must be {describe(expected)}, '
                f"not {describe(value)}"
            )
