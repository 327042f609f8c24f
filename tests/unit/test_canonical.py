"""RFC 8785 (JCS) encoding, and reading files that must be canonical (releasecontrol.canonical).

Every signed file of host protocol v2 is exactly the JCS encoding of what it
parses to (docs/host-protocol.md, 3.1 step 2). `parse_canonical` gives the
verdict a JavaScript verifier gives with `JSON.parse` and `canonicalize`: these
tables pin it, byte by byte.
"""

from __future__ import annotations

from typing import Any

import pytest

from releasecontrol.canonical import (
    MAX_SAFE_INTEGER,
    NotCanonical,
    canonical_json,
    jcs,
    parse_canonical,
)


class TestJcs:
    def test_sorted_keys_no_whitespace_utf8(self) -> None:
        """JCS sorts members, drops whitespace and writes non-ASCII as UTF-8, not escapes."""
        value = {"b": [1, {"y": None, "x": True}], "a": "café ✓"}
        assert jcs(value) == '{"a":"café ✓","b":[1,{"x":true,"y":null}]}'.encode()

    def test_members_sort_by_utf16_code_units(self) -> None:
        """A member name beyond the BMP sorts by its surrogates, before U+FFFF (RFC 8785 3.2.3)."""
        assert jcs({"\uffff": 2, "\U0001f600": 1}) == '{"\U0001f600":1,"\uffff":2}'.encode()

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param({"s": "line\nbreak"}, b'{"s":"line\\nbreak"}', id="newline-escaped"),
            pytest.param({"s": "\x1f"}, b'{"s":"\\u001f"}', id="control-as-u-escape"),
            pytest.param({"s": "\x7f"}, b'{"s":"\x7f"}', id="del-kept-raw"),
            pytest.param({"s": 'q"b\\'}, b'{"s":"q\\"b\\\\"}', id="quote-and-backslash"),
            pytest.param({"s": "a/b"}, b'{"s":"a/b"}', id="slash-not-escaped"),
            pytest.param({"n": 1.5}, b'{"n":1.5}', id="float"),
            pytest.param({"n": 1e21}, b'{"n":1e+21}', id="float-exponent"),
            pytest.param({"n": -0.0}, b'{"n":0}', id="minus-zero"),
            pytest.param({"n": MAX_SAFE_INTEGER}, b'{"n":9007199254740991}', id="max-safe-int"),
            pytest.param({"t": (1, 2)}, b'{"t":[1,2]}', id="tuple-as-array"),
        ],
    )
    def test_writes_what_rfc8785_writes(self, value: Any, expected: bytes) -> None:
        """Escapes and number forms are exactly RFC 8785's, on the fast path and the slow one."""
        assert jcs(value) == expected
        assert canonical_json(value) == expected

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param({"n": float("nan")}, id="nan"),
            pytest.param({"n": float("inf")}, id="infinity"),
            pytest.param({"n": 2**60}, id="int-beyond-2**53"),
            pytest.param({1: "x"}, id="non-string-key"),
            pytest.param({"s": "\ud800"}, id="lone-surrogate"),
            pytest.param({"o": object()}, id="not-json"),
        ],
    )
    def test_refuses_what_has_no_jcs_form(self, value: Any) -> None:
        """A value with no JCS form is a ValueError from both encoders, never some other bytes."""
        with pytest.raises(ValueError):
            jcs(value)
        with pytest.raises(ValueError):
            canonical_json(value)


class TestParseCanonical:
    @pytest.mark.parametrize(
        ("data", "value"),
        [
            pytest.param(b'{"a":1}', {"a": 1}, id="object"),
            pytest.param(b"[1,2]", [1, 2], id="array"),
            pytest.param(b'"x"', "x", id="string"),
            pytest.param('{"a":"café"}'.encode(), {"a": "café"}, id="utf8-text"),
            pytest.param(b'{"a":"\\u001f"}', {"a": "\x1f"}, id="control-escape"),
            pytest.param(b'{"a":0.5}', {"a": 0.5}, id="fraction"),
            pytest.param('{"z":2,"é":1}'.encode(), {"z": 2, "é": 1}, id="non-ascii-name-last"),
            pytest.param(b'{"n":9007199254740992}', {"n": 2.0**53}, id="2**53-read-as-double"),
        ],
    )
    def test_accepts_its_own_encoding(self, data: bytes, value: Any) -> None:
        """Bytes that are exactly the JCS of their value parse to that value."""
        assert parse_canonical(data) == value
        assert jcs(parse_canonical(data)) == data

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b'{ "a":1}', id="whitespace"),
            pytest.param(b'{"a":1}\n', id="trailing-newline"),
            pytest.param(b'{"b":1,"a":2}', id="member-order"),
            pytest.param(b'{"a":1,"a":1}', id="repeated-member-same-value"),
            pytest.param(b'{"a":1,"a":2}', id="repeated-member-other-value"),
            pytest.param(b'{"a":"\\u0041"}', id="needless-escape"),
            pytest.param(b'{"a":"\\/"}', id="escaped-slash"),
            pytest.param(b'{"a":"caf\\u00e9"}', id="escaped-non-ascii"),
            pytest.param(b'{"a":"\\u007f"}', id="escaped-del"),
            pytest.param(b'{"a":1.0}', id="integer-with-fraction"),
            pytest.param(b'{"a":1e2}', id="exponent"),
            pytest.param(b'{"a":1E2}', id="capital-exponent"),
            pytest.param(b'{"a":-0}', id="minus-zero"),
            pytest.param(b'{"a":1.5e300}', id="exponent-without-plus"),
            pytest.param(b'{"a":9007199254740993}', id="integer-beyond-a-double"),
            pytest.param(b'{"a":"\\ud800"}', id="lone-surrogate"),
            pytest.param('{"é":1,"z":2}'.encode(), id="non-ascii-name-first"),
        ],
    )
    def test_json_that_is_not_canonical_is_not_malformed(self, data: bytes) -> None:
        """JSON that is not its own JCS encoding is refused as not canonical (not `malformed`)."""
        with pytest.raises(NotCanonical) as caught:
            parse_canonical(data)
        assert caught.value.malformed is False
        assert "not the RFC 8785 (JCS) encoding" in str(caught.value)

    @pytest.mark.parametrize(
        ("data", "fragment"),
        [
            pytest.param(b"\xff", "it is not UTF-8", id="not-utf8"),
            pytest.param(b"", "it is not JSON", id="empty"),
            pytest.param(b'{"a":', "it is not JSON", id="cut-short"),
            pytest.param(b'{"a":NaN}', "NaN is not JSON", id="nan"),
            pytest.param(b'{"a":Infinity}', "Infinity is not JSON", id="infinity"),
            pytest.param(b'{"a":"\x1f"}', "it is not JSON", id="raw-control-character"),
            pytest.param(b'\xef\xbb\xbf{"a":1}', "it is not JSON", id="byte-order-mark"),
            pytest.param(b"[" * 100_000 + b"]" * 100_000, "it is not JSON", id="deep-nesting"),
        ],
    )
    def test_what_is_not_json_is_malformed(self, data: bytes, fragment: str) -> None:
        """Bytes that are not UTF-8 JSON are refused as malformed, saying which."""
        with pytest.raises(NotCanonical) as caught:
            parse_canonical(data)
        assert caught.value.malformed is True
        assert fragment in str(caught.value)

    def test_not_canonical_is_a_value_error(self) -> None:
        """Callers that catch ValueError also catch a refusal to parse."""
        with pytest.raises(ValueError):
            parse_canonical(b"{ }")
