"""Bad input is refused in our words, naming the field (issue 13, items 1-5).

The limits live in `releasecontrol.limits`; these tests go through what uses
them (`parse_manifest`, `load_feature_folder`, the admin form's
`ChangeRequest.from_form`), so they hold for every caller.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from releasecontrol.errors import InvalidArgument
from releasecontrol.manifest import (
    load_feature_folder,
    parse_manifest,
    validate_feature_id,
    validate_version,
)
from releasecontrol_server.admin.actions import ChangeRequest

SHA = "0" * 64

# The documented limits (README "Input limits", releasecontrol/limits.py), pinned here.
MAX_JSON_DEPTH = 32
MAX_STRING_CHARS = 8192
MAX_OBJECT_KEYS = 1000
MAX_ASSET_PATH_CHARS = 1024
TEXT_LIMITS = {"actor": 256, "reason": 1000, "ticket": 200}

# What a refusal must never carry: the text of an exception from inside.
LEAKS = ("Traceback", "Exceeds the limit", "maximum recursion", "int_max_str_digits", "Error(")


def manifest_text(**extra: Any) -> str:
    base = {
        "id": "checkout",
        "version": "1.0.0",
        "entry": "index.js",
        "routes": ["/checkout"],
        "compat": {"host": "^2.0.0"},
        "assets": [{"path": "index.js", "size": 3, "sha256": SHA}],
        **extra,
    }
    return json.dumps(base)


def refusal(data: bytes | str) -> InvalidArgument:
    """The InvalidArgument parse_manifest raises for `data`, checked to be one clean line."""
    raw = data.encode() if isinstance(data, str) else data
    with pytest.raises(InvalidArgument) as caught:
        parse_manifest(raw)
    error = caught.value
    assert "\n" not in error.message
    assert len(error.message) < 400, error.message
    assert not any(leak in error.message for leak in LEAKS), error.message
    return error


def nested(depth: int, open_: str = "[", close: str = "]") -> str:
    """A JSON value `depth` arrays (or objects) deep."""
    if open_ == "{":
        return '{"a":' * depth + "1" + "}" * depth
    return open_ * depth + close * depth


class TestManifestLimits:
    """Item 1: huge numbers and deep nesting are INVALID_ARGUMENT, the limit named."""

    @pytest.mark.parametrize("sign", ["", "-"])
    def test_a_5000_digit_integer_is_refused_in_our_words(self, sign: str) -> None:
        """Python's json would raise ValueError (over 4,300 digits): we say what is wrong."""
        error = refusal(manifest_text()[:-1] + f', "n": {sign}{"7" * 5000}}}')
        assert error.field == "manifest"
        assert "number longer than 32 characters" in error.message

    @pytest.mark.parametrize("kind", ["[", "{"])
    def test_json_nested_100000_deep_is_refused_naming_the_depth(self, kind: str) -> None:
        """json would raise RecursionError: the depth is measured first, without recursion."""
        text = manifest_text()[:-1] + f', "deep": {nested(100_000, kind, "]")}}}'
        error = refusal(text)
        assert error.field == "manifest"
        assert f"100001 deep; the limit is {MAX_JSON_DEPTH}" in error.message

    def test_the_depth_limit_is_exact(self) -> None:
        """The manifest object is level 1: 31 more levels pass, 32 more are refused."""
        parse_manifest(manifest_text(deep=json.loads(nested(MAX_JSON_DEPTH - 1))).encode())
        error = refusal(manifest_text(deep=json.loads(nested(MAX_JSON_DEPTH))))
        assert f"the limit is {MAX_JSON_DEPTH}" in error.message

    def test_brackets_inside_strings_do_not_count(self) -> None:
        """Only structure counts toward the depth, not text that looks like it."""
        parse_manifest(manifest_text(note="[" * 5000 + '\\"{' * 100).encode())

    def test_strings_are_bounded(self) -> None:
        """A string (value or key) over 8,192 characters is refused; 8,192 pass."""
        parse_manifest(manifest_text(note="x" * MAX_STRING_CHARS).encode())
        error = refusal(manifest_text(note="x" * (MAX_STRING_CHARS + 1)))
        assert f"the limit is {MAX_STRING_CHARS}" in error.message
        error = refusal(manifest_text(extra={"k" * (MAX_STRING_CHARS + 1): 1}))
        assert f"the limit is {MAX_STRING_CHARS}" in error.message

    def test_keys_per_object_are_bounded(self) -> None:
        """An object with more than 1,000 keys is refused; 1,000 pass."""
        parse_manifest(manifest_text(extra={f"k{i}": i for i in range(MAX_OBJECT_KEYS)}).encode())
        error = refusal(manifest_text(extra={f"k{i}": i for i in range(MAX_OBJECT_KEYS + 1)}))
        assert f"limit is {MAX_OBJECT_KEYS} keys per object" in error.message

    @pytest.mark.parametrize(
        ("literal", "words"),
        [
            pytest.param("1e400", "too large for a double", id="float-overflow"),
            pytest.param("-Infinity", "-Infinity is not a JSON number", id="minus-infinity"),
            pytest.param("9007199254740992", "beyond 2\\^53-1", id="2-53"),
            pytest.param('"\\udc00"', "lone surrogate", id="lone-surrogate"),
        ],
    )
    def test_values_canonical_json_cannot_encode_are_refused(
        self, literal: str, words: str
    ) -> None:
        """What RFC 8785 cannot encode is refused before the upload, naming what it is."""
        error = refusal(manifest_text()[:-1] + f', "n": {literal}}}')
        assert re.search(words, error.message), error.message

    @pytest.mark.parametrize(
        ("data", "words"),
        [
            pytest.param(b"{not json", "not valid JSON: expecting property name", id="syntax"),
            pytest.param(b'\xff{"a": 1}', "byte 0 is not UTF-8", id="not-utf8"),
            pytest.param(b'"\\', "not valid JSON", id="cut-escape"),
        ],
    )
    def test_malformed_json_is_described_not_dumped(self, data: bytes, words: str) -> None:
        """Malformed JSON names the fault and where, in a line of our own."""
        assert words in refusal(data).message

    def test_a_byte_order_mark_is_ignored(self) -> None:
        """Windows editors start UTF-8 files with a BOM; json.loads of bytes skipped it too."""
        assert parse_manifest(b"\xef\xbb\xbf" + manifest_text().encode())["id"] == "checkout"

    def test_the_source_folder_is_held_to_the_same_limits(self, tmp_path: Path) -> None:
        """The CLI's load_feature_folder refuses the same input, naming the file."""
        (tmp_path / "index.js").write_bytes(b"abc")
        (tmp_path / "manifest.json").write_text(manifest_text()[:-1] + f', "n": {"9" * 5000}}}')
        with pytest.raises(InvalidArgument, match="number longer than") as caught:
            load_feature_folder(tmp_path)
        assert str(tmp_path / "manifest.json") in caught.value.message

    def test_echoed_values_are_cut_short(self) -> None:
        """A refused 1 MiB id or version is quoted in 100 characters, not echoed whole."""
        for check in (validate_feature_id, validate_version):
            with pytest.raises(InvalidArgument) as caught:
                check("Q" * (1 << 20))
            assert len(caught.value.message) < 400
            assert "(1048576 characters)" in caught.value.message

    def test_a_version_is_at_most_128_characters(self) -> None:
        """SemVer sets no length; a version is a path segment and a table cell, so we do."""
        validate_version("1.0.0-" + "a" * 122)
        with pytest.raises(InvalidArgument, match="at most 128 characters"):
            validate_version("1.0.0-" + "a" * 123)


class TestDuplicateKeys:
    """Item 2: a key twice in one object is refused, naming the key."""

    def test_a_top_level_key_twice(self) -> None:
        error = refusal(manifest_text()[:-1] + ', "version": "9.9.9"}')
        assert error.field == "manifest"
        assert "the key 'version' appears twice" in error.message

    def test_a_key_twice_inside_an_asset(self) -> None:
        text = manifest_text().replace('"size": 3', '"size": 3, "size": 4')
        assert "the key 'size' appears twice" in refusal(text).message

    def test_the_same_key_in_two_objects_is_fine(self) -> None:
        parse_manifest(manifest_text(a={"k": 1}, b={"k": 2}).encode())


BAD_PATHS = [
    pytest.param("a\x00b.js", "U+0000", id="nul"),
    pytest.param("a\x1b[31m.js", "U+001B", id="escape"),
    pytest.param("a\nb.js", "U+000A", id="newline"),
    pytest.param("a\x7f.js", "U+007F", id="del"),
    pytest.param("a\u202eb.js", "U+202E", id="bidi-override"),
    pytest.param("a\u2067b.js", "U+2067", id="bidi-isolate"),
    pytest.param("a\u200bb.js", "U+200B", id="zero-width-space"),
    pytest.param("a\u00a0b.js", "U+00A0", id="no-break-space"),
    pytest.param("js\\app.js", "backslash", id="backslash"),
    pytest.param("C:/app.js", "drive letter", id="drive-letter"),
    pytest.param("c:app.js", "drive letter", id="drive-relative"),
    pytest.param("js/a:b.js", "':'", id="colon"),
    pytest.param("../app.js", "'..' segment", id="dotdot"),
    pytest.param("js/../../app.js", "'..' segment", id="dotdot-inside"),
    pytest.param("./app.js", "'.' or '..' segment", id="dot"),
    pytest.param("js//app.js", "empty", id="empty-segment"),
    pytest.param("js/", "empty", id="trailing-slash"),
    pytest.param("/etc/passwd", "starts with '/'", id="absolute"),
    pytest.param("a" * (MAX_ASSET_PATH_CHARS + 1), "1025 characters long", id="too-long"),
]


class TestAssetPaths:
    """Item 3: asset paths are relative, '/'-separated, of printable characters."""

    @pytest.mark.parametrize(("path", "words"), BAD_PATHS)
    def test_a_bad_path_is_refused_naming_the_asset_and_the_fault(
        self, path: str, words: str
    ) -> None:
        text = json.dumps(
            {
                **json.loads(manifest_text()),
                "assets": [
                    {"path": "index.js", "size": 3, "sha256": SHA},
                    {"path": path, "size": 1, "sha256": SHA},
                ],
            }
        )
        error = refusal(text)
        assert error.field == "manifest.assets[1].path"
        assert words in error.message
        assert "relative to the feature folder" in error.message

    @pytest.mark.parametrize(
        "path",
        [
            "index.js",
            "js/app.min.js",
            "a..b/c.js",
            ".well-known/x",
            "my file (1).js",
            "straße/ü.css",
            "日本語/スクリプト.js",
            "emoji-🚀.svg",
            "a" * MAX_ASSET_PATH_CHARS,
        ],
    )
    def test_ordinary_paths_pass(self, path: str) -> None:
        text = manifest_text(entry=path, assets=[{"path": path, "size": 3, "sha256": SHA}])
        assert parse_manifest(text.encode())["entry"] == path


def form(**fields: str) -> dict[str, str]:
    return {"action": "rollback", "version": "1.0.0", **fields}


def from_form(**fields: str) -> ChangeRequest:
    return ChangeRequest.from_form(
        "checkout", form(**fields), principal_name="alice", default_soak_seconds=60
    )


class TestChangeContext:
    """Items 4 and 5: who, why, ticket and request id, as the admin form sends them (the API
    checks the same, naming `context.<field>`: tests/integration/test_bad_input.py)."""

    @pytest.mark.parametrize("name", ["actor", "reason", "ticket"])
    @pytest.mark.parametrize(
        "bad", ["a\x1b[2Jb", "a\x00b", "a\rb", "a\tb", "a\x85b", "a\u202eb", "a\u2028b"]
    )
    def test_control_characters_are_refused_naming_the_field(self, name: str, bad: str) -> None:
        with pytest.raises(InvalidArgument, match="control or direction character") as caught:
            from_form(**{name: bad})
        assert caught.value.field == name
        assert f"{name} holds U+" in caught.value.message

    @pytest.mark.parametrize("name", ["actor", "reason", "ticket"])
    def test_lengths_are_bounded(self, name: str) -> None:
        most = TEXT_LIMITS[name]
        assert getattr(from_form(**{name: "x" * most}), name) == "x" * most
        with pytest.raises(InvalidArgument, match=f"at most {most}") as caught:
            from_form(**{name: "x" * (most + 1)})
        assert caught.value.field == name

    def test_ordinary_text_passes(self) -> None:
        request = from_form(actor="Zoë O'Brien", reason="hotfix: ¿qué? 👩‍💻 #1", ticket="INC-42")
        assert (request.actor, request.ticket) == ("Zoë O'Brien", "INC-42")

    @pytest.mark.parametrize(
        "bad",
        ["x" * 129, "has space", "tab\tid", "naïve", "x" * (1 << 20)],
        ids=lambda s: f"{len(s)}-chars",
    )
    def test_a_request_id_is_1_to_128_printable_ascii_characters(self, bad: str) -> None:
        with pytest.raises(InvalidArgument, match="1-128 printable ASCII") as caught:
            from_form(request_id=bad)
        assert caught.value.field == "request_id"
        assert len(caught.value.message) < 300

    @pytest.mark.parametrize("good", ["", "x", "~" * 128, "4f1c8a5e-0b1d-4c9e-9d7e-0a1b2c3d4e5f"])
    def test_good_request_ids_pass(self, good: str) -> None:
        assert from_form(request_id=good).request_id == good


# -- property: whatever the bytes, a refusal is ours -----------------------------------------

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)
_PIECES = st.sampled_from(
    ["{", "}", "[", "]", '"', "\\", ",", ":", "1", "-", "e", "9" * 40, "NaN", "true", " ", "\x00"]
)


@settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.one_of(
        st.binary(max_size=200),
        _JSONISH.map(lambda v: json.dumps(v).encode()),
        st.lists(_PIECES, max_size=60).map(lambda parts: "".join(parts).encode()),
    )
)
def test_any_bytes_give_a_value_or_our_refusal(data: bytes) -> None:
    """load_json returns a value or raises InvalidArgument in one clean line: nothing else."""
    from releasecontrol.limits import load_json

    try:
        load_json(data, what="manifest.json", field="manifest", max_bytes=1 << 20)
    except InvalidArgument as error:
        assert error.field == "manifest"
        assert "\n" not in error.message
        assert not any(leak in error.message for leak in LEAKS)
