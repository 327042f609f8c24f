"""Route patterns and `lint routes` (releasecontrol.routes), rule by rule.

Every lint rule has a row in `LINT_CASES`: the features in, the one finding
expected out, and that finding's message names every feature and pattern involved.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pytest

from releasecontrol.errors import InvalidArgument
from releasecontrol.routes import (
    DEFAULT_RESERVED,
    Finding,
    Route,
    failed,
    findings_json,
    format_findings,
    lint_routes,
    overlap_example,
    parse_route,
    routes_by_feature,
)


class TestParseRoute:
    @pytest.mark.parametrize(
        ("pattern", "segments", "wildcard"),
        [
            pytest.param("/", (), False, id="root"),
            pytest.param("/checkout", ("checkout",), False, id="literal"),
            pytest.param("/checkout/:step", ("checkout", ":step"), False, id="param"),
            pytest.param("/pay/*", ("pay",), True, id="wildcard"),
            pytest.param("/*", (), True, id="catch-all"),
            pytest.param("/a/:orderId/b/*", ("a", ":orderId", "b"), True, id="mixed"),
            pytest.param("/v1.2/my_page-2", ("v1.2", "my_page-2"), False, id="literal-charset"),
            pytest.param("/:_x", (":_x",), False, id="param-underscore"),
        ],
    )
    def test_a_valid_pattern_parses_into_segments(
        self, pattern: str, segments: tuple[str, ...], wildcard: bool
    ) -> None:
        """A valid pattern keeps its text and splits into literal/':param' segments and the '*'."""
        route = parse_route(pattern)
        assert route == Route(pattern=pattern, segments=segments, wildcard=wildcard)

    @pytest.mark.parametrize(
        ("pattern", "words"),
        [
            pytest.param("", "must start with '/'", id="empty"),
            pytest.param("checkout", "must start with '/'", id="relative"),
            pytest.param("/checkout/", "empty segment", id="trailing-slash"),
            pytest.param("/a//b", "empty segment", id="double-slash"),
            pytest.param("/pay/*/x", "'*' may only be the whole last segment", id="star-mid"),
            pytest.param("/pay*", "'*' may only be the whole last segment", id="star-in-seg"),
            pytest.param("/*/*", "'*' may only be the whole last segment", id="two-stars"),
            pytest.param("/a/:", "without a valid name", id="param-no-name"),
            pytest.param("/a/:1x", "without a valid name", id="param-digit-first"),
            pytest.param("/a/:x-y", "without a valid name", id="param-dash"),
            pytest.param("/a/:id/:id", "uses parameter ':id' twice", id="param-twice"),
            pytest.param("/Checkout", "lowercase", id="uppercase"),
            pytest.param("/a b", "segment 'a b'", id="space"),
            pytest.param("/a?x=1", "segment 'a?x=1'", id="query"),
            pytest.param("/a#top", "segment 'a#top'", id="fragment"),
            pytest.param("/caf%C3%A9", "segment 'caf%C3%A9'", id="percent"),
            pytest.param("/a/../b", "'..' segment", id="dot-dot"),
            pytest.param("/./a", "'.' segment", id="dot"),
        ],
    )
    def test_an_invalid_pattern_is_refused_naming_it_and_the_fault(
        self, pattern: str, words: str
    ) -> None:
        """InvalidArgument quotes the pattern and says what is wrong with it."""
        with pytest.raises(InvalidArgument) as info:
            parse_route(pattern)
        assert repr(pattern) in info.value.message
        assert words in info.value.message
        assert info.value.field == "route"

    def test_a_non_string_pattern_is_refused(self) -> None:
        """A pattern that is not a string (from a hand-written manifest) is InvalidArgument."""
        with pytest.raises(InvalidArgument, match="not a string"):
            parse_route(42)  # type: ignore[arg-type]

    def test_params_and_shape_erase_parameter_names(self) -> None:
        """`params` lists names without ':'; `shape` is equal when only parameter names differ."""
        a, b = parse_route("/a/:x/c/*"), parse_route("/a/:y/c/*")
        assert a.params == ("x",)
        assert a.shape == b.shape == (("a", ":", "c"), True)


class TestRouteMatches:
    @pytest.mark.parametrize(
        ("pattern", "path", "expected"),
        [
            pytest.param("/", "/", True, id="root"),
            pytest.param("/", "/a", False, id="root-not-deeper"),
            pytest.param("/checkout", "/checkout", True, id="literal"),
            pytest.param("/checkout", "/checkout/", True, id="trailing-slash-ignored"),
            pytest.param("/checkout", "/checkout/x", False, id="literal-not-deeper"),
            pytest.param("/checkout", "/checkou", False, id="whole-segment"),
            pytest.param("/a/:x", "/a/b", True, id="param"),
            pytest.param("/a/:x", "/a", False, id="param-needs-segment"),
            pytest.param("/a/:x", "/a//", False, id="param-not-empty"),
            pytest.param("/pay/*", "/pay", True, id="star-zero"),
            pytest.param("/pay/*", "/pay/card/visa", True, id="star-many"),
            pytest.param("/pay/*", "/payment", False, id="star-whole-segment"),
            pytest.param("/*", "/", True, id="catch-all-root"),
            pytest.param("/checkout", "checkout", False, id="relative-path"),
        ],
    )
    def test_matching_is_by_whole_segments(self, pattern: str, path: str, expected: bool) -> None:
        """A literal matches itself, ':p' one non-empty segment, '*' zero or more segments."""
        assert parse_route(pattern).matches(path) is expected


class TestOverlap:
    @pytest.mark.parametrize(
        ("a", "b", "example"),
        [
            pytest.param("/pay/*", "/pay/card", "/pay/card", id="star-vs-literal"),
            pytest.param("/pay/*", "/pay", "/pay", id="star-vs-its-prefix"),
            pytest.param("/a/:x", "/a/b", "/a/b", id="param-vs-literal"),
            pytest.param("/a/:x", "/a/:y", "/a/x", id="param-vs-param"),
            pytest.param("/*", "/checkout/:step", "/checkout/step", id="catch-all"),
            pytest.param("/:a/x/*", "/b/:c/d", "/b/x/d", id="mixed"),
            pytest.param("/a/*", "/:x/b/*", "/a/b", id="two-stars"),
            pytest.param("/pay/*", "/payment", None, id="prefix-is-not-segment"),
            pytest.param("/a/:x", "/a", None, id="param-needs-segment"),
            pytest.param("/a/:x", "/a/b/c", None, id="too-long-without-star"),
            pytest.param("/a/b", "/a/c", None, id="different-literals"),
            pytest.param("/", "/a", None, id="root-vs-literal"),
        ],
    )
    def test_overlap_example_is_a_path_both_match(
        self, a: str, b: str, example: str | None
    ) -> None:
        """Overlapping patterns give a path both match, in either order; disjoint ones give None."""
        ra, rb = parse_route(a), parse_route(b)
        assert overlap_example(ra, rb) == example
        swapped = overlap_example(rb, ra)
        assert (swapped is None) is (example is None)
        for found in (overlap_example(ra, rb), swapped):
            if found is not None:
                assert ra.matches(found)
                assert rb.matches(found)

    def test_overlap_agrees_with_matching_every_short_path(self) -> None:
        """For all pairs of small patterns, an overlap is found exactly when a path matches both."""
        segments = ["a", "b", ":p"]
        patterns = ["/", "/*"] + [
            "/" + "/".join(s + str(i) if s == ":p" else s for i, s in enumerate(combo)) + tail
            for n in (1, 2)
            for combo in itertools.product(segments, repeat=n)
            for tail in ("", "/*")
        ]
        paths = ["/"] + [
            "/" + "/".join(combo)
            for n in (1, 2, 3, 4)
            for combo in itertools.product(["a", "b", "c"], repeat=n)
        ]
        routes = [parse_route(p) for p in patterns]
        for ra, rb in itertools.product(routes, repeat=2):
            brute = any(ra.matches(p) and rb.matches(p) for p in paths)
            assert (overlap_example(ra, rb) is not None) is brute, (ra.pattern, rb.pattern)


def only(findings: Sequence[Finding]) -> Finding:
    assert len(findings) == 1, format_findings(findings)
    return findings[0]


# (features, severity, rule, feature_ids, patterns): each row yields exactly that one finding.
LINT_CASES = [
    pytest.param(
        {"checkout": ["/checkout"], "payments": ["/checkout"]},
        "error",
        "route-duplicate",
        ("checkout", "payments"),
        ("/checkout", "/checkout"),
        id="same-route-two-features",
    ),
    pytest.param(
        {"orders": ["/orders/:id"], "returns": ["/orders/:orderId"]},
        "error",
        "route-duplicate",
        ("orders", "returns"),
        ("/orders/:id", "/orders/:orderId"),
        id="same-route-renamed-param",
    ),
    pytest.param(
        {"checkout": ["/pay/*"], "payments": ["/pay/card"]},
        "error",
        "route-overlap",
        ("checkout", "payments"),
        ("/pay/*", "/pay/card"),
        id="overlap-star-literal",
    ),
    pytest.param(
        {"a": ["/a/:x"], "b": ["/a/b"]},
        "error",
        "route-overlap",
        ("a", "b"),
        ("/a/:x", "/a/b"),
        id="overlap-param-literal",
    ),
    pytest.param(
        {"shell": ["/checkout/*"], "checkout": ["/checkout/:step"]},
        "error",
        "route-overlap",
        ("shell", "checkout"),
        ("/checkout/*", "/checkout/:step"),
        id="overlap-star-param",
    ),
    pytest.param(
        {"checkout": ["/checkout", "Checkout"]},
        "error",
        "route-invalid",
        ("checkout",),
        ("Checkout",),
        id="invalid-pattern",
    ),
    pytest.param(
        {"checkout": "/checkout"},
        "error",
        "route-invalid",
        ("checkout",),
        ("/checkout",),
        id="routes-not-a-list",
    ),
    pytest.param(
        {"admin": ["/_admin"]},
        "error",
        "route-reserved",
        ("admin",),
        ("/_admin", "/_admin"),
        id="reserved-exact",
    ),
    pytest.param(
        {"admin": ["/_admin/users/:id"]},
        "error",
        "route-reserved",
        ("admin",),
        ("/_admin/users/:id", "/_admin"),
        id="reserved-under",
    ),
    pytest.param(
        {"pages": ["/:page"]},
        "warning",
        "route-reserved-capture",
        ("pages",),
        ("/:page", "/_admin"),
        id="reserved-captured-by-param",
    ),
    pytest.param(
        {"shell": ["/*"]},
        "warning",
        "route-reserved-capture",
        ("shell",),
        ("/*", "/_admin"),
        id="reserved-captured-by-star",
    ),
    pytest.param(
        {"orders": ["/orders/:id", "/orders/new"]},
        "warning",
        "route-overlap-within-feature",
        ("orders",),
        ("/orders/:id", "/orders/new"),
        id="overlap-within-feature",
    ),
    pytest.param(
        {"orders": ["/orders", "/orders"]},
        "warning",
        "route-listed-twice",
        ("orders",),
        ("/orders", "/orders"),
        id="listed-twice",
    ),
]


class TestLintRoutes:
    @pytest.mark.parametrize(
        ("features", "severity", "rule", "feature_ids", "patterns"), LINT_CASES
    )
    def test_each_rule_reports_one_finding_naming_features_and_patterns(
        self,
        features: Mapping[str, Sequence[str]],
        severity: str,
        rule: str,
        feature_ids: tuple[str, ...],
        patterns: tuple[str, ...],
    ) -> None:
        """Each broken rule gives one finding whose message names every feature and pattern."""
        finding = only(lint_routes(features))
        assert (finding.severity, finding.rule) == (severity, rule)
        assert finding.feature_ids == feature_ids
        assert finding.patterns == patterns
        for name in (*feature_ids, *patterns):
            assert repr(name) in finding.message, finding.message

    def test_the_overlap_message_gives_a_path_both_match(self) -> None:
        """An overlap says which URL both features would serve, so the fix is obvious."""
        finding = only(lint_routes({"checkout": ["/pay/*"], "payments": ["/pay/card"]}))
        assert "both match '/pay/card'" in finding.message

    def test_distinct_routes_give_no_findings(self) -> None:
        """The README's kind of set-up (separate prefixes, params under literals) is clean."""
        features = {
            "checkout": ["/checkout", "/checkout/:step"],
            "payments": ["/pay/*"],
            "orders": ["/orders/:id/items", "/account/orders"],
            "home": ["/"],
        }
        assert lint_routes(features) == []

    def test_reserved_prefixes_are_configurable(self) -> None:
        """A configured reserved prefix replaces the default; matching stays by whole segments."""
        features = {"checkout": ["/_admin", "/internal/metrics", "/internalx"]}
        finding = only(lint_routes(features, reserved=("/internal",)))
        assert (finding.rule, finding.patterns) == (
            "route-reserved",
            ("/internal/metrics", "/internal"),
        )
        assert DEFAULT_RESERVED == ("/_admin",)
        assert lint_routes({"a": ["/_admin"]}, reserved=()) == []

    @pytest.mark.parametrize(
        "prefix",
        [
            pytest.param("_admin", id="relative"),
            pytest.param("/_admin/*", id="wildcard"),
            pytest.param("/:x", id="param"),
            pytest.param("/", id="root"),
        ],
    )
    def test_a_reserved_prefix_must_be_a_literal_path(self, prefix: str) -> None:
        """A bad reserved prefix is a configuration error (InvalidArgument on 'reserved')."""
        with pytest.raises(InvalidArgument) as info:
            lint_routes({"a": ["/a"]}, reserved=(prefix,))
        assert info.value.field == "reserved"
        assert repr(prefix) in info.value.message

    def test_an_invalid_pattern_does_not_hide_other_findings(self) -> None:
        """Invalid patterns are reported and skipped; the valid ones are still compared."""
        findings = lint_routes({"a": ["/x/", "/x"], "b": ["/x"]})
        assert [f.rule for f in findings] == ["route-invalid", "route-duplicate"]

    def test_a_pattern_listed_twice_is_compared_once(self) -> None:
        """A repeated pattern warns once and does not double the cross-feature error."""
        findings = lint_routes({"a": ["/x", "/x"], "b": ["/x"]})
        assert [f.rule for f in findings] == ["route-listed-twice", "route-duplicate"]

    def test_findings_come_in_a_stable_order(self) -> None:
        """Invalid and within-feature findings by feature first, then pairs in input order."""
        features = {
            "a": ["/p/*", "/bad/"],
            "b": ["/p/x", "/_admin/x"],
            "c": ["/p/:y"],
        }
        findings = lint_routes(features)
        assert [(f.rule, f.feature_ids) for f in findings] == [
            ("route-invalid", ("a",)),
            ("route-reserved", ("b",)),
            ("route-overlap", ("a", "b")),
            ("route-overlap", ("a", "c")),
            ("route-overlap", ("b", "c")),
        ]
        assert lint_routes(features) == findings


class TestRoutesByFeature:
    def test_versions_of_one_feature_pool_their_routes(self) -> None:
        """Stable and canary manifests of one feature give its routes once each, in order."""
        manifests = [
            {"id": "checkout", "version": "1.2.0", "routes": ["/checkout"]},
            {"id": "checkout", "version": "1.3.0", "routes": ["/checkout", "/checkout/:step"]},
            {"id": "pay", "version": "2.0.0", "routes": ["/pay/*"]},
        ]
        assert routes_by_feature(manifests) == {
            "checkout": ["/checkout", "/checkout/:step"],
            "pay": ["/pay/*"],
        }


ERROR = Finding("error", ("a", "b"), ("/x", "/x"), "features 'a' and 'b' both claim '/x'", "r1")
WARNING = Finding("warning", ("a",), ("/x", "/x"), "feature 'a' lists '/x' twice", "r2")


class TestFindingsOutput:
    @pytest.mark.parametrize(
        ("findings", "strict", "expected"),
        [
            pytest.param([], False, False, id="none"),
            pytest.param([], True, False, id="none-strict"),
            pytest.param([WARNING], False, False, id="warning"),
            pytest.param([WARNING], True, True, id="warning-strict"),
            pytest.param([ERROR], False, True, id="error"),
            pytest.param([WARNING, ERROR], False, True, id="both"),
        ],
    )
    def test_failed_is_any_error_or_any_warning_when_strict(
        self, findings: list[Finding], strict: bool, expected: bool
    ) -> None:
        """Errors always fail; warnings fail only with strict."""
        assert failed(findings, strict) is expected

    def test_format_findings_is_one_line_each_and_a_count(self) -> None:
        """People get 'severity: message' per finding and a count line."""
        assert format_findings([ERROR, WARNING]) == (
            "error: features 'a' and 'b' both claim '/x'\n"
            "warning: feature 'a' lists '/x' twice\n"
            "1 error, 1 warning"
        )
        assert format_findings([ERROR, ERROR]).endswith("2 errors, 0 warnings")
        assert format_findings([]) == "no findings"

    def test_findings_json_carries_every_field(self) -> None:
        """Scripts get severity, rule, both features, both patterns and the message."""
        assert findings_json([ERROR]) == [
            {
                "severity": "error",
                "rule": "r1",
                "feature_ids": ["a", "b"],
                "patterns": ["/x", "/x"],
                "message": "features 'a' and 'b' both claim '/x'",
            }
        ]
