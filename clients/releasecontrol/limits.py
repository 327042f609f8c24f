"""Input limits: every bound on what a caller may send, in one place.

The server refuses anything past these with INVALID_ARGUMENT, a one-line
message naming the field and the fix, and no change of state; the CLI applies
the same rules before it sends. Each limit is here and nowhere else.

=============================  =========================================================
What                           Limit
=============================  =========================================================
manifest.json, whole           1 MiB (`DEFAULT_MAX_MANIFEST_BYTES`; the server's
                               `max_manifest_bytes` setting may change it), UTF-8
                               (a leading byte order mark is ignored)
JSON nesting                   32 arrays/objects deep (`MAX_JSON_DEPTH`)
JSON number                    32 characters as written (`MAX_NUMBER_CHARS`);
                               integers from -(2^53-1) to 2^53-1; no NaN or Infinity
JSON string (keys too)         8,192 characters (`MAX_STRING_CHARS`), no lone surrogates
JSON object                    1,000 keys (`MAX_OBJECT_KEYS`), each key once
manifest assets                10,000 (`MAX_ASSETS`)
asset path                     1,024 characters (`MAX_ASSET_PATH_CHARS`), the allowed
                               set below
version                        128 characters (`MAX_VERSION_CHARS`), SemVer 2.0
ChangeContext.actor            256 characters, one line (`TEXT_LIMITS`)
ChangeContext.reason           1,000 characters, one line
ChangeContext.ticket           200 characters, one line
ChangeContext.request_id       empty (no idempotency) or 1-128 printable ASCII characters,
                               U+0021-U+007E, no spaces (`MAX_REQUEST_ID_CHARS`);
                               a UUID fits
=============================  =========================================================

Asset paths. A path is relative to the feature folder: segments joined by `/`,
none empty, `.` or `..`, no leading `/`. Its characters are Unicode letters,
marks, numbers, punctuation and symbols (general categories L, M, N, P, S) and
the ASCII space, except the backslash `\\` and the colon `:`. So refused: NUL
and every other control character (Cc), format characters (Cf, which holds the
bidirectional overrides U+202A-U+202E and isolates U+2066-U+2069, U+200E/F and
zero-width characters), surrogates, private-use and unassigned code points,
line and paragraph separators and spaces other than U+0020; the backslash (a
Windows separator) and the colon (a drive letter such as `C:/`, an NTFS stream,
or a URL scheme when the path is resolved as a relative URL).

One-line text (`actor`, `reason`, `ticket`). Any Unicode text except the C0 and
C1 control characters (U+0000-U+001F, U+007F-U+009F, so no tab or newline),
the bidirectional controls (U+061C, U+200E, U+200F, U+202A-U+202E,
U+2066-U+2069), the line and paragraph separators (U+2028, U+2029), U+FEFF and
lone surrogates: what would break or disguise a line of `release history`.

A value a refusal quotes back is cut to 100 characters and escaped (`shown`).
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from itertools import accumulate
from typing import Any

from releasecontrol.errors import InvalidArgument

__all__ = [
    "DEFAULT_MAX_MANIFEST_BYTES",
    "MAX_ASSETS",
    "MAX_ASSET_PATH_CHARS",
    "MAX_JSON_DEPTH",
    "MAX_NUMBER_CHARS",
    "MAX_OBJECT_KEYS",
    "MAX_REQUEST_ID_CHARS",
    "MAX_SAFE_INTEGER",
    "MAX_STRING_CHARS",
    "MAX_VERSION_CHARS",
    "TEXT_LIMITS",
    "check_asset_path",
    "check_change_context",
    "check_request_id",
    "check_text",
    "load_json",
    "shown",
]

DEFAULT_MAX_MANIFEST_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
MAX_NUMBER_CHARS = 32
MAX_SAFE_INTEGER = 2**53 - 1
MAX_STRING_CHARS = 8192
MAX_OBJECT_KEYS = 1000
MAX_ASSETS = 10_000
MAX_ASSET_PATH_CHARS = 1024
MAX_VERSION_CHARS = 128
MAX_REQUEST_ID_CHARS = 128
TEXT_LIMITS: Mapping[str, int] = {"actor": 256, "reason": 1000, "ticket": 200}
"""The longest `actor`, `reason` and `ticket` of a change, in characters (an actor as long
as the longest principal name: the actor defaults to it)."""

_SHOWN_CHARS = 100


def shown(value: object, limit: int = _SHOWN_CHARS) -> str:
    """`value` as a refusal quotes it: repr (control and format characters escaped), and for
    a long string its first `limit` characters and its length."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit] + "..."


# -- JSON ------------------------------------------------------------------------------------

# A JSON string, its closing quote optional: one linear pass, whatever the input (an
# unterminated string runs to the end instead of being tried again from every quote).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}
# Outside strings, a run of number characters longer than a number may be.
_LONG_NUMBER = re.compile(rf"[-+0-9.eE]{{{MAX_NUMBER_CHARS + 1},}}")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_depth(outside_strings: str) -> int:
    """The deepest nesting of `[`/`{` in JSON text with its strings removed (no recursion)."""
    brackets = _NOT_BRACKET.sub("", outside_strings)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def _refuse_constant(name: str) -> Any:
    raise _NotJson(f"{name} is not a JSON number; use a finite number or a string")


class _NotJson(ValueError):
    """A refusal from inside json.loads (a hook), with our own words."""


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    if len(pairs) > MAX_OBJECT_KEYS:
        raise _NotJson(
            f"an object has {len(pairs)} keys; the limit is {MAX_OBJECT_KEYS} keys per object"
        )
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _NotJson(f"the key {shown(key)} appears twice in one object; keep one")
        out[key] = value
    return out


def _check_values(value: Any) -> None:
    """Raise _NotJson for a string, integer or float past the limits, anywhere in `value`."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if len(item) > MAX_STRING_CHARS:
                raise _NotJson(
                    f"a string of {len(item)} characters ({shown(item, 20)}); the limit is "
                    f"{MAX_STRING_CHARS}"
                )
            if _SURROGATE.search(item):
                raise _NotJson(f"the string {shown(item)} holds a lone surrogate (\\ud800-\\udfff)")
        elif kind is int:
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise _NotJson(
                    f"the integer {item} is beyond 2^53-1, which JSON canonicalization "
                    "(RFC 8785) cannot encode; use a string for large numbers"
                )
        elif kind is float:
            if not math.isfinite(item):
                raise _NotJson("a number is too large for a double; use a string")
        elif kind is dict:
            stack.extend(item.keys())
            stack.extend(item.values())
        elif kind is list:
            stack.extend(item)


def load_json(data: bytes, *, what: str, field: str, max_bytes: int) -> Any:
    """The JSON value of `data`, within every limit of this module's table.

    Bounded before anything is built: the size, then the nesting depth and the
    length of numbers by one linear scan (so json never recurses past
    MAX_JSON_DEPTH, nor reads a 5,000-digit integer); then duplicate keys and
    key counts as objects are built, then strings and number ranges. Raises
    InvalidArgument naming `field`, its message starting with `what` (e.g.
    "manifest.json"), in our words, never an exception's text.
    """
    if len(data) > max_bytes:
        raise InvalidArgument(
            f"{what} is {len(data)} bytes; the limit is {max_bytes} bytes", field=field
        )
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")  # a BOM, as Windows editors write
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"{what} is not valid JSON: byte {exc.start} is not UTF-8; save it as UTF-8",
            field=field,
        ) from None
    outside = _JSON_STRING.sub('""', text)
    depth = _json_depth(outside)
    if depth > MAX_JSON_DEPTH:
        raise InvalidArgument(
            f"{what} nests arrays and objects {depth} deep; the limit is {MAX_JSON_DEPTH}",
            field=field,
        )
    if _LONG_NUMBER.search(outside):
        raise InvalidArgument(
            f"{what} holds a number longer than {MAX_NUMBER_CHARS} characters; "
            "use integers up to 2^53-1, or a string",
            field=field,
        )
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_refuse_constant)
        _check_values(value)
    except _NotJson as exc:
        raise InvalidArgument(f"{what} is refused: {exc}", field=field) from None
    except json.JSONDecodeError as exc:
        raise InvalidArgument(
            f"{what} is not valid JSON: {exc.msg.lower()} (line {exc.lineno}, column {exc.colno})",
            field=field,
        ) from None
    except (ValueError, RecursionError):  # pragma: no cover - the scan above prevents these
        raise InvalidArgument(f"{what} is not valid JSON", field=field) from None
    return value


# -- asset paths -----------------------------------------------------------------------------

_PATH_HELP = (
    "use a path relative to the feature folder with '/' between names, e.g. 'js/app.js': "
    f"at most {MAX_ASSET_PATH_CHARS} characters, no leading '/', no '.' or '..' segment, "
    "no '\\\\' or ':', no control or bidirectional characters"
)
_ASCII_PATH_OK = re.compile(r"[ !-9;-\[\]-~]*\Z")  # printable ASCII but '\' and ':'
_PATH_CATEGORIES = frozenset("LMNPS")


def _path_fault(value: str) -> str | None:
    if len(value) > MAX_ASSET_PATH_CHARS:
        return f"is {len(value)} characters long"
    if re.match(r"[A-Za-z]:", value):
        return "starts with a drive letter"
    if value.startswith("/"):
        return "starts with '/'"
    if not _ASCII_PATH_OK.match(value):
        for ch in value:
            if ch == "\\":
                return "holds a backslash"
            if ch == ":":
                return "holds ':'"
            if ch != " " and unicodedata.category(ch)[0] not in _PATH_CATEGORIES:
                return f"holds the character U+{ord(ch):04X}"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "has an empty, '.' or '..' segment"
    return None


def check_asset_path(value: Any, field: str) -> str:
    """Return `value` if it is an allowed asset path (see the module docstring); raise
    InvalidArgument naming `field` and what is wrong."""
    if not isinstance(value, str) or not value:
        raise InvalidArgument(f"{field} must be a non-empty string; {_PATH_HELP}", field=field)
    fault = _path_fault(value)
    if fault is not None:
        raise InvalidArgument(f"{field} {shown(value)} {fault}; {_PATH_HELP}", field=field)
    return value


# -- change context --------------------------------------------------------------------------

_NOT_ONE_LINE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff"
    "\ud800-\udfff]"
)
_REQUEST_ID = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID_CHARS}}}\Z")


def check_text(value: str, field: str, max_chars: int) -> str:
    """Return `value` if it is one line of at most `max_chars` characters without control or
    bidirectional characters; raise InvalidArgument naming `field`."""
    if len(value) > max_chars:
        raise InvalidArgument(
            f"{field} is {len(value)} characters long; keep it to at most {max_chars}",
            field=field,
        )
    bad = _NOT_ONE_LINE.search(value)
    if bad is not None:
        raise InvalidArgument(
            f"{field} holds U+{ord(bad.group()):04X} (a control or direction character) at "
            f"position {bad.start()}; use one line of plain text without tabs, newlines or "
            "direction marks",
            field=field,
        )
    return value


def check_request_id(value: str, field: str = "request_id") -> str:
    """Return `value` if it is empty or 1-128 printable ASCII characters; raise
    InvalidArgument naming `field`."""
    if value and not _REQUEST_ID.match(value):
        raise InvalidArgument(
            f"{field} must be 1-{MAX_REQUEST_ID_CHARS} printable ASCII characters without "
            f"spaces (e.g. a UUID), not {shown(value)}; leave it empty for no retry check",
            field=field,
        )
    return value


def check_change_context(
    *, actor: str, reason: str, ticket: str, request_id: str, prefix: str = ""
) -> None:
    """Check who, why, the ticket and the request id of a change (see the module docstring);
    raise InvalidArgument naming the field as `prefix` + its name (e.g. "context.actor")."""
    for name, value in (("actor", actor), ("reason", reason), ("ticket", ticket)):
        check_text(value, prefix + name, TEXT_LIMITS[name])
    check_request_id(request_id, prefix + "request_id")
