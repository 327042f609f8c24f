"""Route patterns the features serve, and the lint behind `releasectl lint routes`.

A pattern is a path starting with '/' made of segments:

- a literal: lowercase letters, digits, '-', '_' and '.' (not '.' or '..' alone),
- a parameter `:name`, matching any one non-empty segment,
- an optional final `*`, matching zero or more further segments, so '/pay/*'
  matches '/pay', '/pay/card' and '/pay/card/visa' (the front-end routers'
  reading of a splat).

'/' alone is the root. Matching is by whole segments: the reserved prefix
'/_admin' covers '/_admin' and '/_admin/users', not '/_administrator'.

This module also holds the `Finding` both lints report (`releasecontrol.compat`
reuses it) and the helpers the CLI prints them with: `format_findings`,
`findings_json` and the exit rule `failed`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from releasecontrol.errors import InvalidArgument

__all__ = [
    "DEFAULT_RESERVED",
    "Finding",
    "Route",
    "Severity",
    "failed",
    "findings_json",
    "format_findings",
    "lint_routes",
    "overlap_example",
    "parse_route",
    "routes_by_feature",
]

Severity = Literal["error", "warning"]

DEFAULT_RESERVED: tuple[str, ...] = ("/_admin",)

_LITERAL = re.compile(r"[a-z0-9._-]+")
_PARAM = re.compile(r":[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Finding:
    """One problem a lint found, in words for people and in fields for scripts."""

    severity: Severity
    """'error' always fails the check; 'warning' fails it only when strict."""
    feature_ids: tuple[str, ...]
    """Every feature involved: both, when two features conflict."""
    patterns: tuple[str, ...]
    """What conflicts: route patterns (with the reserved prefix), or version ranges."""
    message: str
    """One line naming the features, the patterns or ranges, and the fix."""
    rule: str = ""
    """A stable name of the rule broken (e.g. 'route-overlap'), for scripts and tests."""

    def to_dict(self) -> dict[str, Any]:
        """The finding as JSON-ready data (what `--output json` prints)."""
        return {
            "severity": self.severity,
            "rule": self.rule,
            "feature_ids": list(self.feature_ids),
            "patterns": list(self.patterns),
            "message": self.message,
        }


def failed(findings: Iterable[Finding], strict: bool) -> bool:
    """True when the check fails: any error, or any warning when `strict`."""
    return any(f.severity == "error" or strict for f in findings)


def findings_json(findings: Iterable[Finding]) -> list[dict[str, Any]]:
    """Every finding as a dict (see `Finding.to_dict`), in order."""
    return [f.to_dict() for f in findings]


def format_findings(findings: Sequence[Finding]) -> str:
    """One line per finding ('error: …' / 'warning: …') and a count line; 'no findings' if none."""
    if not findings:
        return "no findings"
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    lines = [f"{f.severity}: {f.message}" for f in findings]
    lines.append(f"{_count(errors, 'error')}, {_count(warnings, 'warning')}")
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass(frozen=True)
class Route:
    """A parsed route pattern: its segments (literal text or ':name') and the final '*'."""

    pattern: str
    segments: tuple[str, ...]
    wildcard: bool

    @property
    def params(self) -> tuple[str, ...]:
        """The parameter names, in order, without the ':'."""
        return tuple(s[1:] for s in self.segments if _is_param(s))

    @property
    def shape(self) -> tuple[tuple[str, ...], bool]:
        """The pattern with parameter names erased: equal shapes match exactly the same paths."""
        return tuple(":" if _is_param(s) else s for s in self.segments), self.wildcard

    def matches(self, path: str) -> bool:
        """Whether a concrete URL path (no query string) is served by this pattern.

        One trailing '/' is ignored, as routers do.
        """
        if not path.startswith("/"):
            return False
        parts = path[1:].split("/") if path != "/" else []
        if len(parts) > 1 and parts[-1] == "":
            parts.pop()
        if "" in parts:
            return False
        if len(parts) < len(self.segments) or (
            len(parts) > len(self.segments) and not self.wildcard
        ):
            return False
        return all(_is_param(s) or s == p for s, p in zip(self.segments, parts, strict=False))


def _is_param(segment: str) -> bool:
    return segment.startswith(":")


def parse_route(pattern: str) -> Route:
    """Parse a route pattern; raise InvalidArgument naming the pattern, the fault and the fix."""
    if not isinstance(pattern, str):
        raise InvalidArgument(
            f"route pattern {pattern!r} is not a string: write it as e.g. '/checkout'",
            field="route",
        )
    if not pattern.startswith("/"):
        raise InvalidArgument(
            f"route pattern {pattern!r} must start with '/' (e.g. '/checkout')", field="route"
        )
    if pattern == "/":
        return Route(pattern=pattern, segments=(), wildcard=False)
    parts = pattern[1:].split("/")
    wildcard = parts[-1] == "*"
    if wildcard:
        parts.pop()
    seen_params: set[str] = set()
    for part in parts:
        _check_segment(pattern, part, seen_params)
    return Route(pattern=pattern, segments=tuple(parts), wildcard=wildcard)


def _check_segment(pattern: str, part: str, seen_params: set[str]) -> None:
    def bad(what: str) -> InvalidArgument:
        return InvalidArgument(f"route pattern {pattern!r} {what}", field="route")

    if part == "":
        raise bad("has an empty segment: remove the trailing '/' or the doubled '//'")
    if "*" in part:
        raise bad("uses '*' before the end: '*' may only be the whole last segment (e.g. '/pay/*')")
    if part.startswith(":"):
        if not _PARAM.fullmatch(part):
            raise bad(
                f"has parameter {part!r} without a valid name: use ':name' with letters, "
                "digits and '_', starting with a letter or '_' (e.g. ':step')"
            )
        if part in seen_params:
            raise bad(f"uses parameter {part!r} twice: give each parameter its own name")
        seen_params.add(part)
        return
    if part in (".", ".."):
        raise bad(f"has a {part!r} segment, which browsers resolve away: remove it")
    if not _LITERAL.fullmatch(part):
        raise bad(
            f"has segment {part!r} with characters other than lowercase letters, digits, "
            "'-', '_' and '.': use lowercase and no spaces, '?', '#' or '%'"
        )


def overlap_example(a: Route, b: Route) -> str | None:
    """A URL path both patterns match, or None when no path matches both.

    Segments are compared pairwise: two literals must be equal, a parameter
    matches anything. Past the shorter pattern, the longer one's extra segments
    are reachable only through the shorter one's '*'. The example fills a
    parameter with the other pattern's literal, or with its own name.
    """
    out: list[str] = []
    for sa, sb in zip(a.segments, b.segments, strict=False):
        if _is_param(sa) and _is_param(sb):
            out.append(sa[1:])
        elif _is_param(sa):
            out.append(sb)
        elif _is_param(sb) or sa == sb:
            out.append(sa)
        else:
            return None
    la, lb = len(a.segments), len(b.segments)
    if la < lb:
        if not a.wildcard:
            return None
        out.extend(s[1:] if _is_param(s) else s for s in b.segments[la:])
    elif lb < la:
        if not b.wildcard:
            return None
        out.extend(s[1:] if _is_param(s) else s for s in a.segments[lb:])
    return "/" + "/".join(out)


def routes_by_feature(manifests: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Feature id -> its route patterns, from manifests, for `lint_routes`.

    Several versions of one feature (stable and canary are live at once) pool
    their routes, each pattern once, in first-seen order.
    """
    out: dict[str, list[str]] = {}
    for manifest in manifests:
        routes = out.setdefault(str(manifest.get("id", "?")), [])
        listed = manifest.get("routes")
        patterns: list[Any] = listed if isinstance(listed, list) else [listed]
        for pattern in patterns:
            if pattern not in routes:
                routes.append(pattern)
    return out


def lint_routes(
    features: Mapping[str, Sequence[str]], *, reserved: Sequence[str] = DEFAULT_RESERVED
) -> list[Finding]:
    """Check every feature's route patterns; return the findings in a stable order.

    Errors: an invalid pattern; two features claiming the same route (equal
    patterns, or patterns differing only in parameter names); two features'
    patterns overlapping (some URL path matches both); a pattern under a
    reserved prefix. Warnings: a pattern listed twice or two overlapping
    patterns within one feature; a parameter or '*' that would also capture a
    reserved path (e.g. '/:page' matches '/_admin': it depends on the host's
    router whether the reserved route wins). Every finding names the
    feature(s) and both patterns. Raises InvalidArgument for a reserved prefix
    that is not a literal path such as '/_admin'.
    """
    reserved_routes = [_reserved_route(r) for r in reserved]
    findings: list[Finding] = []
    parsed: list[tuple[str, list[Route]]] = []
    for fid, patterns in features.items():
        parsed.append((fid, _parse_feature(fid, patterns, findings)))

    for fid, routes in parsed:
        for route in routes:
            findings.extend(_reserved_findings(fid, route, reserved_routes))
        for i, a in enumerate(routes):
            for b in routes[i + 1 :]:
                example = overlap_example(a, b)
                if example is not None:
                    findings.append(
                        Finding(
                            "warning",
                            (fid,),
                            (a.pattern, b.pattern),
                            f"feature {fid!r} routes {a.pattern!r} and {b.pattern!r} overlap "
                            f"(both match {example!r}); within one feature its own router "
                            "decides which wins: drop one if it is redundant",
                            rule="route-overlap-within-feature",
                        )
                    )

    for i, (fa, routes_a) in enumerate(parsed):
        for fb, routes_b in parsed[i + 1 :]:
            for a in routes_a:
                for b in routes_b:
                    finding = _cross_feature(fa, a, fb, b)
                    if finding is not None:
                        findings.append(finding)
    return findings


def _parse_feature(fid: str, patterns: Sequence[str], findings: list[Finding]) -> list[Route]:
    """The feature's valid, distinct routes; invalid and repeated patterns become findings."""
    if isinstance(patterns, str) or not isinstance(patterns, Sequence):
        findings.append(
            Finding(
                "error",
                (fid,),
                (str(patterns),),
                f"feature {fid!r} routes must be a list of patterns, got {patterns!r}",
                rule="route-invalid",
            )
        )
        return []
    routes: list[Route] = []
    seen: set[str] = set()
    for pattern in patterns:
        if isinstance(pattern, str) and pattern in seen:
            findings.append(
                Finding(
                    "warning",
                    (fid,),
                    (pattern, pattern),
                    f"feature {fid!r} lists route {pattern!r} twice: list it once",
                    rule="route-listed-twice",
                )
            )
            continue
        try:
            route = parse_route(pattern)
        except InvalidArgument as exc:
            findings.append(
                Finding(
                    "error",
                    (fid,),
                    (str(pattern),),
                    f"feature {fid!r}: {exc.message}",
                    rule="route-invalid",
                )
            )
            continue
        seen.add(pattern)
        routes.append(route)
    return routes


def _reserved_route(prefix: str) -> Route:
    try:
        route = parse_route(prefix)
    except InvalidArgument as exc:
        raise InvalidArgument(f"reserved prefix: {exc.message}", field="reserved") from exc
    if route.wildcard or route.params or not route.segments:
        raise InvalidArgument(
            f"reserved prefix {prefix!r} must be a literal path such as '/_admin', "
            "without parameters, '*' or the bare root",
            field="reserved",
        )
    # The prefix covers itself and everything under it.
    return Route(pattern=prefix, segments=route.segments, wildcard=True)


def _reserved_findings(fid: str, route: Route, reserved: Sequence[Route]) -> Iterable[Finding]:
    for prefix in reserved:
        n = len(prefix.segments)
        if route.segments[:n] == prefix.segments:
            yield Finding(
                "error",
                (fid,),
                (route.pattern, prefix.pattern),
                f"feature {fid!r} route {route.pattern!r} is under the reserved prefix "
                f"{prefix.pattern!r}: move it elsewhere",
                rule="route-reserved",
            )
            continue
        example = overlap_example(route, prefix)
        if example is not None:
            yield Finding(
                "warning",
                (fid,),
                (route.pattern, prefix.pattern),
                f"feature {fid!r} route {route.pattern!r} also matches {example!r} under the "
                f"reserved prefix {prefix.pattern!r}: make sure the host routes "
                f"{prefix.pattern!r} first, or start the route with a literal segment",
                rule="route-reserved-capture",
            )


def _cross_feature(fa: str, a: Route, fb: str, b: Route) -> Finding | None:
    example = overlap_example(a, b)
    if example is None:
        return None
    if a.shape == b.shape:
        same = (
            f"both claim route {a.pattern!r}"
            if a.pattern == b.pattern
            else f"claim the same route: {a.pattern!r} and {b.pattern!r} match the same paths"
        )
        return Finding(
            "error",
            (fa, fb),
            (a.pattern, b.pattern),
            f"features {fa!r} and {fb!r} {same}; a route belongs to one feature: "
            "remove it from one manifest",
            rule="route-duplicate",
        )
    return Finding(
        "error",
        (fa, fb),
        (a.pattern, b.pattern),
        f"feature {fa!r} route {a.pattern!r} and feature {fb!r} route {b.pattern!r} overlap "
        f"(both match {example!r}): give each feature routes the other does not match",
        rule="route-overlap",
    )
