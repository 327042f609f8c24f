"""Manifest rules shared by the CLI, the server and hosts: names, durations, structure, folders."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from releasecontrol.errors import InvalidArgument
from releasecontrol.manifest import (
    artifact_path,
    format_duration,
    load_feature_folder,
    parse_duration,
    parse_manifest,
    validate_feature_id,
    validate_manifest,
)

SHA = "0" * 64


def manifest(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "checkout",
        "version": "1.0.0",
        "entry": "index.js",
        "routes": ["/checkout"],
        "compat": {"host": "^2.0.0", "shared": {"react": "^18.0.0"}},
        "assets": [{"path": "index.js", "size": 3, "sha256": SHA}],
    }
    base.update(changes)
    return base


class TestNames:
    @pytest.mark.parametrize("good", ["checkout", "a", "feature-pay-2", "a" * 63])
    def test_dns_labels_are_feature_ids(self, good: str) -> None:
        """Lowercase DNS labels up to 63 characters are accepted unchanged."""
        assert validate_feature_id(good) == good

    @pytest.mark.parametrize(
        "bad", ["Checkout", "a/b", "..", "", "a" * 64, "-a", "a-", "a_b", "checkout\n"]
    )
    def test_anything_else_is_refused_naming_the_field(self, bad: str) -> None:
        """Other ids are InvalidArgument naming feature_id and what is allowed."""
        with pytest.raises(InvalidArgument, match="lowercase letters") as caught:
            validate_feature_id(bad)
        assert caught.value.field == "feature_id"


class TestDurations:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("2d", 172800), ("45", 45), (" 1h ", 3600)],
    )
    def test_durations_parse_to_seconds(self, text: str, seconds: int) -> None:
        """Durations in s/m/h/d, combined or bare seconds, become whole seconds."""
        assert parse_duration(text) == seconds

    @pytest.mark.parametrize("bad", ["", "soon", "10x", "1h-5m", "m30"])
    def test_bad_durations_say_what_is_understood(self, bad: str) -> None:
        """An unreadable duration is refused with examples of good ones."""
        with pytest.raises(InvalidArgument, match="30m"):
            parse_duration(bad)

    @pytest.mark.parametrize(
        ("seconds", "text"),
        [(0, "0s"), (45, "45s"), (1800, "30m"), (3725, "1h 2m"), (90061, "1d 1h")],
    )
    def test_durations_format_with_two_units(self, seconds: int, text: str) -> None:
        """Durations print with their two largest units."""
        assert format_duration(seconds) == text


class TestManifest:
    @pytest.mark.parametrize(
        ("changes", "field"),
        [
            pytest.param({"id": "Bad"}, "manifest.id", id="bad-id"),
            pytest.param({"version": "v1"}, "manifest.version", id="bad-version"),
            pytest.param({"routes": ["checkout"]}, "manifest.routes", id="route-without-slash"),
            pytest.param({"compat": {}}, "manifest.compat", id="no-host-range"),
            pytest.param({"assets": []}, "manifest.assets", id="no-assets"),
            pytest.param({"entry": "main.js"}, "manifest.entry", id="entry-not-an-asset"),
            pytest.param(
                {"assets": [{"path": "../x.js", "size": 1, "sha256": SHA}]},
                "manifest.assets[0].path",
                id="asset-outside-folder",
            ),
            pytest.param(
                {"assets": [{"path": "index.js", "size": 1, "sha256": SHA + "\n"}]},
                "manifest.assets[0]",
                id="sha-with-newline",
            ),
        ],
    )
    def test_each_broken_field_is_named(self, changes: dict[str, Any], field: str) -> None:
        """A manifest with one broken field is refused naming exactly that field."""
        with pytest.raises(InvalidArgument) as caught:
            parse_manifest(json.dumps(manifest(**changes)).encode())
        assert caught.value.field == field

    @pytest.mark.parametrize(
        ("extra", "words"),
        [
            pytest.param({"n": float("nan")}, "NaN is not a JSON number", id="nan"),
            pytest.param({"n": float("inf")}, "Infinity is not a JSON number", id="infinity"),
            pytest.param({"n": 2**60}, "beyond 2\\^53-1", id="beyond-2-53"),
        ],
    )
    def test_numbers_jcs_cannot_encode_are_refused_before_upload(
        self, extra: dict[str, Any], words: str
    ) -> None:
        """NaN or a huge integer is INVALID_ARGUMENT at parse time, not a crash after upload."""
        with pytest.raises(InvalidArgument, match=words) as caught:
            parse_manifest(json.dumps(manifest(**extra)).encode())
        assert caught.value.field == "manifest"

    def test_size_limit(self) -> None:
        """A manifest over the byte limit is refused with the limit named."""
        with pytest.raises(InvalidArgument, match="limit is 10 bytes"):
            parse_manifest(b"{}" * 10, max_bytes=10)


class TestFolder:
    def test_sizes_and_hashes_are_filled_in_from_the_files(self, tmp_path: Path) -> None:
        """Assets listed without size and sha256 get them from the built files."""
        (tmp_path / "index.js").write_bytes(b"abc")
        source = manifest(assets=[{"path": "index.js"}])
        (tmp_path / "manifest.json").write_text(json.dumps(source))
        feature = load_feature_folder(tmp_path, feature_id="checkout")
        (asset,) = feature.manifest["assets"]
        assert asset == {
            "path": "index.js",
            "size": 3,
            "sha256": hashlib.sha256(b"abc").hexdigest(),
        }
        assert feature.files["index.js"] == (tmp_path / "index.js").resolve()

    def test_a_listed_hash_that_differs_from_the_file_names_the_file(self, tmp_path: Path) -> None:
        """A stale sha256 in the source manifest is refused, naming the asset."""
        (tmp_path / "index.js").write_bytes(b"abc")
        (tmp_path / "manifest.json").write_text(json.dumps(manifest()))
        with pytest.raises(InvalidArgument, match=r"'index\.js'.*sha256"):
            load_feature_folder(tmp_path)


@pytest.mark.parametrize(
    ("asset_path", "suffix"),
    [
        ("index.js", ".js"),
        ("styles/main.css", ".css"),
        ("lib/Module.MJS", ".mjs"),
        ("app.wasm", ".wasm"),
        ("LICENSE", ""),
        (".hidden", ""),
        ("notes.tar-gz", ""),
        ("data.averyveryverylongext", ""),
    ],
)
def test_an_artifact_keeps_its_asset_extension_so_cdns_serve_its_type(
    asset_path: str, suffix: str
) -> None:
    """Content-addressed by SHA-256, with the asset's (lowercased, plain) extension."""
    assert artifact_path(SHA, asset_path) == f"artifacts/{SHA}{suffix}"


def test_a_missing_entry_is_named_missing_with_an_example() -> None:
    """No `'entry' (None)`: a missing entry says it is missing and suggests a listed path."""
    without = manifest(assets=[{"path": "main.js"}, {"path": "style.css"}])
    del without["entry"]
    with pytest.raises(InvalidArgument) as caught:
        validate_manifest(without, require_hashes=False)
    assert caught.value.field == "manifest.entry"
    assert "'entry' is missing" in caught.value.message
    assert '"entry": "main.js"' in caught.value.message
    assert "None" not in caught.value.message
