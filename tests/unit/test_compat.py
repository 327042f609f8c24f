"""Compatibility ranges and `validate compat` (releasecontrol.compat), rule by rule.

Every rule has a row in `COMPAT_CASES`: manifests in, the one finding expected
out, and that finding's message names every feature and range involved. The
intersection method is checked against brute force over a grid of versions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import nodesemver
import pytest

from releasecontrol.compat import (
    check_compat,
    common_version,
    failed,
    has_upper_bound,
    is_valid_range,
    load_manifests,
)
from releasecontrol.errors import InvalidArgument
from releasecontrol.routes import Finding, format_findings

HOST = "2.4.0"


def manifest(
    fid: str, host: Any = "^2.0.0", version: str = "1.0.0", **shared: str
) -> dict[str, Any]:
    """A manifest with only what compat reads: id, version and compat."""
    return {"id": fid, "version": version, "compat": {"host": host, "shared": shared}}


def only(findings: list[Finding]) -> Finding:
    assert len(findings) == 1, format_findings(findings)
    return findings[0]


class TestRanges:
    @pytest.mark.parametrize(
        ("text", "valid"),
        [
            pytest.param("^2.0.0", True, id="caret"),
            pytest.param("~2.3", True, id="tilde-partial"),
            pytest.param(">=2.1.0 <3.0.0", True, id="and"),
            pytest.param("1.x || >=3.0.0", True, id="or"),
            pytest.param("1.2.3 - 2", True, id="hyphen"),
            pytest.param("*", True, id="star"),
            pytest.param("", True, id="empty-is-any"),
            pytest.param("latest", False, id="dist-tag"),
            pytest.param("^2.x.y", False, id="bad-part"),
            pytest.param(">=1.0.0 <", False, id="dangling-operator"),
            pytest.param("1.2.3.4", False, id="four-parts"),
            pytest.param("file:../x", False, id="file-spec"),
        ],
    )
    def test_ranges_are_npm_style(self, text: str, valid: bool) -> None:
        """Whatever node-semver parses strictly is a range; tags and specs are not."""
        assert is_valid_range(text) is valid

    @pytest.mark.parametrize(
        ("text", "bounded"),
        [
            pytest.param("^18.2.0", True, id="caret"),
            pytest.param("~1.2.3", True, id="tilde"),
            pytest.param("1.2.3", True, id="exact"),
            pytest.param("=1.2.3", True, id="exact-eq"),
            pytest.param("<=2", True, id="upper-only"),
            pytest.param("^1.0.0 || ^2.0.0", True, id="or-bounded"),
            pytest.param(">=1.0.0", False, id="lower-only"),
            pytest.param(">1.2", False, id="greater"),
            pytest.param("*", False, id="star"),
            pytest.param("x", False, id="x"),
            pytest.param("", False, id="empty"),
            pytest.param("^1.0.0 || >=3", False, id="or-one-unbounded"),
        ],
    )
    def test_upper_bound_is_required_in_every_alternative(self, text: str, bounded: bool) -> None:
        """A range is bounded when each '||' alternative stops below some version."""
        assert has_upper_bound(text) is bounded

    @pytest.mark.parametrize(
        ("ranges", "witness"),
        [
            pytest.param(["^18.2.0", "^18.0.0"], "18.2.0", id="caret-overlap"),
            pytest.param(["^18.2.0", "^17.0.0"], None, id="caret-disjoint"),
            pytest.param([">=1.2.3", "<1.2.3"], None, id="touching-exclusive"),
            pytest.param([">=1.2.3", "<=1.2.3"], "1.2.3", id="touching-inclusive"),
            pytest.param([">1.2.3", "<1.2.4"], None, id="no-patch-between"),
            pytest.param([">1.2.3", "<1.2.4-0"], None, id="below-first-prerelease"),
            pytest.param(["^1.0.0 || ^3.0.0", "^2.0.0 || ^3.1.0"], "3.1.0", id="or"),
            pytest.param([">=2.0.0 <1.0.0"], None, id="empty-range"),
            pytest.param(["*", "~4.1"], "4.1.0", id="star"),
            pytest.param([">=1.0.0-beta.2 <1.0.0", ">1.0.0-beta.2"], "1.0.0-beta.2.0", id="pre"),
            pytest.param(["1.0.0-rc.1", "^1.0.0"], None, id="prerelease-below-caret"),
            pytest.param(
                [">=1.0.0-rc.1 <1.0.0", ">=0.9.0 <1.0.0"], None, id="pre-not-named-by-both"
            ),
            pytest.param(["^1.0.0-rc.1", "1.0.0-rc.2"], "1.0.0-rc.2", id="pre-named-by-both"),
            pytest.param(["^1.0.0-rc.1", "^1.0.0-rc.2"], "1.0.0-rc.2", id="least-is-prerelease"),
            pytest.param(["1.x", "2.x", "3.x"], None, id="three-disjoint"),
        ],
    )
    def test_common_version_is_a_witness_or_none(
        self, ranges: list[str], witness: str | None
    ) -> None:
        """The least version every range accepts (npm's prerelease rule), or None."""
        assert common_version(ranges) == witness

    def test_common_version_agrees_with_brute_force(self) -> None:
        """On random ranges, a version on the grid satisfies all exactly when a witness is found."""
        rng = random.Random(20251126)
        pres = ["", "-0", "-alpha", "-alpha.0", "-alpha.1", "-beta", "-1"]
        grid = [
            nodesemver.make_semver(f"{a}.{b}.{c}{p}", False)
            for a in range(4)
            for b in range(3)
            for c in range(3)
            for p in pres
        ]

        def version() -> str:
            a, b, c = rng.randrange(4), rng.randrange(3), rng.randrange(3)
            return rng.choice([f"{a}", f"{a}.{b}", f"{a}.{b}.{c}{rng.choice(pres)}"])

        def alternative() -> str:
            ops = [">", ">=", "<", "<=", "=", "^", "~", ""]
            return " ".join(rng.choice(ops) + version() for _ in range(rng.randint(1, 2)))

        for _ in range(600):
            ranges = [
                " || ".join(alternative() for _ in range(rng.randint(1, 2)))
                for _ in range(rng.randint(1, 3))
            ]
            parsed = [nodesemver.make_range(r, False) for r in ranges]
            found = common_version(ranges)
            on_grid = any(all(p.test(v) for p in parsed) for v in grid)
            if found is not None:
                assert all(p.test(found) for p in parsed), ranges
            else:
                assert not on_grid, ranges

    def test_an_invalid_range_raises_value_error(self) -> None:
        """common_version and has_upper_bound refuse what is not a range."""
        with pytest.raises(ValueError):
            common_version(["latest"])
        with pytest.raises(ValueError):
            has_upper_bound("latest")


# (manifests, severity, rule, feature_ids, patterns): each row yields exactly that one finding.
COMPAT_CASES = [
    pytest.param(
        [manifest("checkout", host="^3.0.0")],
        "error",
        "compat-host",
        ("checkout",),
        ("^3.0.0", HOST),
        id="host-outside-range",
    ),
    pytest.param(
        [manifest("checkout", host="^2.x.y")],
        "error",
        "compat-invalid-range",
        ("checkout",),
        ("^2.x.y",),
        id="host-range-invalid",
    ),
    pytest.param(
        [manifest("checkout", host="latest")],
        "error",
        "compat-invalid-range",
        ("checkout",),
        ("latest",),
        id="host-range-dist-tag",
    ),
    pytest.param(
        [manifest("checkout", host=">=3.0.0 <2.0.0")],
        "error",
        "compat-empty-range",
        ("checkout",),
        (">=3.0.0 <2.0.0",),
        id="host-range-matches-nothing",
    ),
    pytest.param(
        [{"id": "checkout", "version": "1.0.0", "compat": {}}],
        "error",
        "compat-missing",
        ("checkout",),
        (),
        id="host-missing",
    ),
    pytest.param(
        [manifest("checkout", host=">=2.0.0")],
        "warning",
        "compat-unbounded",
        ("checkout",),
        (">=2.0.0",),
        id="host-unbounded",
    ),
    pytest.param(
        [manifest("checkout", react="*")],
        "warning",
        "compat-unbounded",
        ("checkout",),
        ("*",),
        id="shared-star",
    ),
    pytest.param(
        [manifest("checkout", react="x")],
        "warning",
        "compat-unbounded",
        ("checkout",),
        ("x",),
        id="shared-x",
    ),
    pytest.param(
        [manifest("checkout", react="^18 || nope")],
        "error",
        "compat-invalid-range",
        ("checkout",),
        ("^18 || nope",),
        id="shared-invalid",
    ),
    pytest.param(
        [manifest("checkout", react=">=19.0.0 <18.0.0")],
        "error",
        "compat-empty-range",
        ("checkout",),
        (">=19.0.0 <18.0.0",),
        id="shared-matches-nothing",
    ),
    pytest.param(
        [manifest("checkout", react="^18.2.0"), manifest("profile", react="^17.0.2")],
        "error",
        "compat-shared-conflict",
        ("checkout", "profile"),
        ("^18.2.0", "^17.0.2"),
        id="shared-conflict",
    ),
    pytest.param(
        [
            manifest("a", react="1.x || 2.x"),
            manifest("b", react="2.x || 3.x"),
            manifest("c", react="1.x || 3.x"),
        ],
        "error",
        "compat-shared-no-common-version",
        ("a", "b", "c"),
        ("1.x || 2.x", "2.x || 3.x", "1.x || 3.x"),
        id="shared-three-no-common",
    ),
]


class TestCheckCompat:
    @pytest.mark.parametrize(
        ("manifests", "severity", "rule", "feature_ids", "patterns"), COMPAT_CASES
    )
    def test_each_rule_reports_one_finding_naming_features_and_ranges(
        self,
        manifests: list[dict[str, Any]],
        severity: str,
        rule: str,
        feature_ids: tuple[str, ...],
        patterns: tuple[str, ...],
    ) -> None:
        """Each broken rule gives one finding whose message names every feature and range."""
        finding = only(check_compat(manifests, host_version=HOST))
        assert (finding.severity, finding.rule) == (severity, rule)
        assert finding.feature_ids == feature_ids
        assert finding.patterns == patterns
        for fid in feature_ids:
            assert f"feature {fid!r}" in finding.message, finding.message
        for text in patterns:
            assert text in finding.message, finding.message

    def test_the_host_finding_names_the_host_version(self) -> None:
        """A host outside the range is reported with the range and the host version."""
        finding = only(check_compat([manifest("checkout", host="^3.0.0")], host_version=HOST))
        assert "'^3.0.0' does not include the host version 2.4.0" in finding.message

    def test_the_shared_conflict_names_the_library_and_both_ranges(self) -> None:
        """A shared conflict names the library, both features (with versions) and both ranges."""
        manifests = [manifest("checkout", react="^18.2.0"), manifest("profile", react="^17.0.2")]
        message = only(check_compat(manifests, host_version=HOST)).message
        assert "shared library 'react'" in message
        assert "'checkout' 1.0.0 needs '^18.2.0'" in message
        assert "'profile' 1.0.0 needs '^17.0.2'" in message

    def test_the_unbounded_warning_suggests_a_caret_range(self) -> None:
        """A range with only a lower bound is told the caret range on that bound."""
        finding = only(check_compat([manifest("checkout", lodash=">=4.17")], host_version=HOST))
        assert "'^4.17.0'" in finding.message
        assert "shared library 'lodash'" in finding.message

    def test_compatible_manifests_give_no_findings(self) -> None:
        """The README's manifest with a neighbour agreeing on react is clean."""
        manifests = [
            manifest("checkout", react="^18.2.0"),
            manifest("profile", host="~2.4.0", react="18.x", lodash="^4.17.0"),
        ]
        assert check_compat(manifests, host_version=HOST) == []

    def test_two_versions_of_one_feature_are_not_compared(self) -> None:
        """Stable and canary of one feature never run together, so their ranges may differ."""
        manifests = [
            manifest("checkout", version="1.2.0", react="^17.0.0"),
            manifest("checkout", version="1.3.0", react="^18.2.0"),
        ]
        assert check_compat(manifests, host_version=HOST) == []

    def test_each_version_of_a_feature_is_compared_with_the_others(self) -> None:
        """A canary that moved to a new major conflicts with the features still on the old one."""
        manifests = [
            manifest("checkout", version="1.2.0", react="^17.0.0"),
            manifest("checkout", version="1.3.0", react="^18.2.0"),
            manifest("profile", react="^17.0.2"),
        ]
        finding = only(check_compat(manifests, host_version=HOST))
        assert finding.patterns == ("^18.2.0", "^17.0.2")
        assert "'checkout' 1.3.0" in finding.message

    @pytest.mark.parametrize(
        ("host", "range_", "ok"),
        [
            pytest.param("2.0.0-rc.1", "^2.0.0", False, id="prerelease-host-not-in-release-range"),
            pytest.param("2.0.0-rc.1", "^2.0.0-rc.0", True, id="prerelease-host-named"),
            pytest.param("3.0.0", "2.x || 3.x", True, id="or-range"),
            pytest.param("3.0.0", "<3.0.0", False, id="exclusive-upper"),
        ],
    )
    def test_host_containment_follows_npm(self, host: str, range_: str, ok: bool) -> None:
        """The host version is tested as npm would, including its prerelease rule."""
        findings = check_compat([manifest("checkout", host=range_)], host_version=host)
        assert [f.rule for f in findings] == ([] if ok else ["compat-host"])

    @pytest.mark.parametrize(
        "host",
        [
            pytest.param("2.4", id="partial"),
            pytest.param("v2.4.0", id="v-prefix"),
            pytest.param("", id="empty"),
        ],
    )
    def test_a_bad_host_version_is_refused(self, host: str) -> None:
        """The configured host version must be a SemVer version: InvalidArgument names it."""
        with pytest.raises(InvalidArgument) as info:
            check_compat([manifest("checkout")], host_version=host)
        assert info.value.field == "host_version"

    def test_warnings_fail_only_with_strict(self) -> None:
        """An unbounded range passes `validate compat` and fails `validate compat --strict`."""
        findings = check_compat([manifest("checkout", react=">=18")], host_version=HOST)
        assert [f.severity for f in findings] == ["warning"]
        assert not failed(findings, strict=False)
        assert failed(findings, strict=True)

    def test_a_malformed_shared_field_is_an_error_not_a_crash(self) -> None:
        """A hand-written manifest with `shared` as a list gets a finding naming the feature."""
        bad = {"id": "checkout", "version": "1.0.0", "compat": {"host": "^2.0.0", "shared": []}}
        finding = only(check_compat([bad], host_version=HOST))
        assert (finding.rule, finding.feature_ids) == ("compat-invalid-range", ("checkout",))


def write_feature(folder: Path, fid: str, body: Any) -> Path:
    (folder / fid).mkdir(parents=True, exist_ok=True)
    path = folder / fid / "manifest.json"
    path.write_text(body if isinstance(body, str) else json.dumps(body))
    return path


def source_manifest(fid: str) -> dict[str, Any]:
    """A source manifest as a build writes it: no sizes or hashes yet."""
    return {
        "id": fid,
        "version": "1.0.0",
        "entry": "index.js",
        "routes": [f"/{fid}"],
        "compat": {"host": "^2.0.0", "shared": {"react": "^18.2.0"}},
        "assets": [{"path": "index.js"}],
    }


class TestLoadManifests:
    def test_every_feature_folder_is_read_in_name_order(self, tmp_path: Path) -> None:
        """`features/<id>/manifest.json` files come back validated, sorted by folder name."""
        write_feature(tmp_path, "profile", source_manifest("profile"))
        write_feature(tmp_path, "checkout", source_manifest("checkout"))
        (tmp_path / ".cache").mkdir()
        (tmp_path / ".cache" / "manifest.json").write_text("not json")
        (tmp_path / "README.md").write_text("notes")
        assert [m["id"] for m in load_manifests(tmp_path)] == ["checkout", "profile"]

    @pytest.mark.parametrize(
        ("body", "words"),
        [
            pytest.param("{not json", "is not valid JSON", id="bad-json"),
            pytest.param([], "must hold a JSON object", id="not-object"),
            pytest.param({**source_manifest("checkout"), "routes": "/x"}, "routes", id="bad-field"),
            pytest.param(source_manifest("profile"), "does not match", id="id-not-folder-name"),
        ],
    )
    def test_a_bad_file_is_one_line_naming_it(self, tmp_path: Path, body: Any, words: str) -> None:
        """A bad manifest raises InvalidArgument with one line naming the file and the fault."""
        write_feature(tmp_path, "a-ok", source_manifest("a-ok"))
        path = write_feature(tmp_path, "checkout", body)
        with pytest.raises(InvalidArgument) as info:
            load_manifests(tmp_path)
        assert str(path) in info.value.message
        assert words in info.value.message
        assert "\n" not in info.value.message

    def test_a_missing_folder_is_refused(self, tmp_path: Path) -> None:
        """A folder that does not exist is named in the error."""
        with pytest.raises(InvalidArgument, match="is not a folder"):
            load_manifests(tmp_path / "nope")

    def test_a_folder_without_manifests_is_refused(self, tmp_path: Path) -> None:
        """An empty folder is an error, not a silent pass of the lint."""
        with pytest.raises(InvalidArgument, match=r"no <id>/manifest.json under"):
            load_manifests(tmp_path)

    def test_a_single_feature_folder_gets_a_hint(self, tmp_path: Path) -> None:
        """Pointing at one feature's folder says to pass its parent instead."""
        folder = write_feature(tmp_path, "checkout", source_manifest("checkout")).parent
        with pytest.raises(InvalidArgument, match="pass its parent folder"):
            load_manifests(folder)
