"""Version compatibility of manifests, behind `releasectl validate compat [--strict]`.

A manifest's `compat.host` is an npm-style range of host versions the feature
runs on; `compat.shared` maps each shared library (one copy per page, e.g.
'react') to the range the feature accepts. Ranges are parsed and tested by
node-semver (`nodesemver`, the Python port of npm's semver), with npm's
defaults: strict parsing, and a prerelease version satisfies a range only when
one of its comparators names a prerelease of the same MAJOR.MINOR.PATCH.

Intersection. node-semver's Python port has no `intersects`, so intersection
is decided by a witness: a version that every range accepts, confirmed by
node-semver itself (so a "yes" is never wrong). Each range is a union of
comparator sets; what one choice of set per range accepts is an interval of
versions, plus prereleases of tuples that every chosen set names. The least
version in such an interval is derived from its lower bound, which is one of
the comparators: the bound itself, its release (1.2.3 for 1.2.3-rc.1), the next
patch (for '>1.2.3'), the next prerelease ('1.2.3-rc.1.0' for '>1.2.3-rc.1'),
or the tuple's first prerelease ('1.2.3-0'); with no lower bound, '0.0.0'.
Every range's comparators yield these candidates, so if any version satisfies
all the ranges, one candidate does (a "no" is never wrong either).

Which features run together: every manifest checked is loaded on the same host
(the host serves every feature), except two versions of one feature (stable and
canary), which a visitor never gets together.
"""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nodesemver

from releasecontrol.errors import InvalidArgument
from releasecontrol.manifest import DEFAULT_MAX_MANIFEST_BYTES, validate_manifest, validate_version
from releasecontrol.routes import Finding, failed, findings_json, format_findings

__all__ = [
    "Finding",
    "check_compat",
    "common_version",
    "failed",
    "findings_json",
    "format_findings",
    "has_upper_bound",
    "is_valid_range",
    "load_manifests",
]

# Bounds the three-or-more-features check when several features have two live
# versions (one combination per choice of version); pairs are always all checked.
MAX_COMBINATIONS = 1024

_UPPER_OPERATORS = ("<", "<=", "", "=")


def _range(text: str) -> Any:
    """node-semver's parsed range (strict, npm defaults); raises ValueError when invalid."""
    if not isinstance(text, str):
        raise ValueError(f"not a string: {text!r}")
    return nodesemver.make_range(text, False)


def is_valid_range(text: str) -> bool:
    """Whether `text` is an npm-style range node-semver accepts ('^2.0.0', '>=1.2 <2', '*')."""
    try:
        _range(text)
    except ValueError:
        return False
    return True


def has_upper_bound(text: str) -> bool:
    """Whether every alternative of a valid range stops below some version.

    '>=1.0.0', '*', 'x' and '^1.0.0 || >=3' have none: a future major version
    would be accepted untested. Raises ValueError for an invalid range.
    """
    return all(
        any(c.semver is not nodesemver.ANY and c.operator in _UPPER_OPERATORS for c in comps)
        for comps in _range(text).set
    )


def _caret_suggestion(text: str) -> str:
    """'^4.0.0' for '>=4': a caret on the lower bound of the first unbounded alternative."""
    for comps in _range(text).set:
        bounds = [c for c in comps if c.semver is not nodesemver.ANY]
        if any(c.operator in _UPPER_OPERATORS for c in bounds):
            continue
        if bounds:
            # An unbounded alternative holds only '>'/'>=': the highest is its lower bound.
            highest = max((c.semver for c in bounds), key=functools.cmp_to_key(_compare))
            return f"^{highest.version}"
    return "^1.0.0"


def _candidates(ranges: Iterable[Any]) -> list[str]:
    """Versions, in order, among which the least common version of `ranges` is (see above)."""
    out = {"0.0.0"}
    for parsed in ranges:
        for comps in parsed.set:
            for c in comps:
                v = c.semver
                if v is nodesemver.ANY:
                    continue
                release = f"{v.major}.{v.minor}.{v.patch}"
                out.update((v.version, release, f"{v.major}.{v.minor}.{v.patch + 1}"))
                if v.prerelease:
                    out.update((f"{v.version}.0", f"{release}-0"))
    versions = [nodesemver.make_semver(c, False) for c in out]
    return [v.version for v in sorted(versions, key=functools.cmp_to_key(_compare))]


def _compare(a: Any, b: Any) -> int:
    return int(a.compare(b))


def common_version(ranges: Sequence[str]) -> str | None:
    """The least version every range in `ranges` accepts, or None when there is none.

    Sound both ways (see the module docstring). Raises ValueError for an
    invalid range.
    """
    parsed = [_range(r) for r in ranges]
    for candidate in _candidates(parsed):
        if all(p.test(candidate) for p in parsed):
            return candidate
    return None


def _label(manifest: Mapping[str, Any]) -> str:
    version = manifest.get("version")
    fid = _fid(manifest)
    return f"{fid!r} {version}" if isinstance(version, str) else repr(fid)


def _fid(manifest: Mapping[str, Any]) -> str:
    return str(manifest.get("id", "?"))


def _range_findings(manifest: Mapping[str, Any], what: str, text: Any) -> list[Finding]:
    """Invalid, empty (matches no version) and unbounded-range findings for one range."""
    fid, label = _fid(manifest), _label(manifest)
    if not is_valid_range(text):
        return [
            Finding(
                "error",
                (fid,),
                (str(text),),
                f"feature {label}: {what} {text!r} is not a valid npm-style range: "
                "use e.g. '^2.0.0', '~2.3.0' or '>=2.1.0 <3.0.0'",
                rule="compat-invalid-range",
            )
        ]
    if common_version([text]) is None:
        return [
            Finding(
                "error",
                (fid,),
                (text,),
                f"feature {label}: {what} {text!r} matches no version at all: "
                "check the bounds' order",
                rule="compat-empty-range",
            )
        ]
    if not has_upper_bound(text):
        return [
            Finding(
                "warning",
                (fid,),
                (text,),
                f"feature {label}: {what} {text!r} has no upper bound, so a future major "
                f"version would be accepted untested: use a caret range such as "
                f"{_caret_suggestion(text)!r}",
                rule="compat-unbounded",
            )
        ]
    return []


def check_compat(manifests: Sequence[Mapping[str, Any]], *, host_version: str) -> list[Finding]:
    """Check every manifest's `compat` against the host and each other; return the findings.

    Errors: `compat.host` missing, invalid, matching no version, or not
    containing `host_version` (naming the feature, its range and the host
    version); a `compat.shared` range invalid or matching no version; two
    features (different ids) whose ranges for one shared library have no
    version in common (naming both features, the library and both ranges);
    three or more features whose ranges for a library intersect pairwise but
    have no version all of them accept. Warnings: any range with no upper
    bound. Raises InvalidArgument when `host_version` is not a SemVer version.
    """
    validate_version(host_version, field="host_version")
    findings: list[Finding] = []
    # library -> feature id -> [(manifest, range)], only ranges that can match something
    shared: dict[str, dict[str, list[tuple[Mapping[str, Any], str]]]] = {}
    for manifest in manifests:
        fid, label = _fid(manifest), _label(manifest)
        compat = manifest.get("compat")
        host = compat.get("host") if isinstance(compat, dict) else None
        if host is None:
            findings.append(
                Finding(
                    "error",
                    (fid,),
                    (),
                    f"feature {label}: compat.host is missing: set the range of host "
                    "versions the feature runs on, e.g. '^2.0.0'",
                    rule="compat-missing",
                )
            )
        else:
            problems = _range_findings(manifest, "compat.host range", host)
            findings.extend(problems)
            if all(p.severity == "warning" for p in problems) and not _range(host).test(
                host_version
            ):
                findings.append(
                    Finding(
                        "error",
                        (fid,),
                        (host, host_version),
                        f"feature {label}: compat.host range {host!r} does not include the host "
                        f"version {host_version}: widen the range or upgrade the host",
                        rule="compat-host",
                    )
                )
        libraries = compat.get("shared") if isinstance(compat, dict) else None
        if not isinstance(libraries, dict):
            if libraries is not None:
                findings.append(
                    Finding(
                        "error",
                        (fid,),
                        (),
                        f"feature {label}: compat.shared must map library names to ranges, "
                        f"e.g. {{'react': '^18.2.0'}}",
                        rule="compat-invalid-range",
                    )
                )
            libraries = {}
        for library, text in libraries.items():
            problems = _range_findings(manifest, f"shared library {library!r} range", text)
            findings.extend(problems)
            if all(p.severity == "warning" for p in problems):
                shared.setdefault(library, {}).setdefault(fid, []).append((manifest, text))

    for library, by_feature in shared.items():
        findings.extend(_shared_findings(library, by_feature))
    return findings


def _shared_findings(
    library: str, by_feature: Mapping[str, Sequence[tuple[Mapping[str, Any], str]]]
) -> list[Finding]:
    findings: list[Finding] = []
    groups = list(by_feature.values())
    for i, group_a in enumerate(groups):
        for group_b in groups[i + 1 :]:
            for (ma, ra), (mb, rb) in itertools.product(group_a, group_b):
                if common_version([ra, rb]) is None:
                    findings.append(
                        Finding(
                            "error",
                            (_fid(ma), _fid(mb)),
                            (ra, rb),
                            f"shared library {library!r}: feature {_label(ma)} needs {ra!r} "
                            f"and feature {_label(mb)} needs {rb!r}, and no version satisfies "
                            "both: align the ranges so one copy serves both features",
                            rule="compat-shared-conflict",
                        )
                    )
    if findings or len(groups) < 3:
        return findings
    # Pairwise overlap does not imply a common version when ranges have '||'.
    for combo in itertools.islice(itertools.product(*groups), MAX_COMBINATIONS):
        if common_version([r for _, r in combo]) is None:
            named = ", ".join(f"feature {_label(m)} needs {r!r}" for m, r in combo)
            findings.append(
                Finding(
                    "error",
                    tuple(_fid(m) for m, _ in combo),
                    tuple(r for _, r in combo),
                    f"shared library {library!r}: no version satisfies every feature "
                    f"({named}), though each two agree: align the ranges",
                    rule="compat-shared-no-common-version",
                )
            )
            break
    return findings


def load_manifests(folder: Path) -> list[dict[str, Any]]:
    """Every `<id>/manifest.json` directly under `folder` (e.g. ./features), by folder name.

    Each is checked as a source manifest (sizes and hashes may be missing) and
    its `id` must equal its folder's name. Raises InvalidArgument with one line
    naming the bad file, or the folder when it holds no manifest.
    """
    if not folder.is_dir():
        raise InvalidArgument(
            f"{folder} is not a folder: pass the folder holding <id>/manifest.json"
        )
    files = sorted(p for p in folder.glob("*/manifest.json") if not p.parent.name.startswith("."))
    if not files:
        hint = (
            f" ({folder}/manifest.json is one feature: pass its parent folder)"
            if (folder / "manifest.json").is_file()
            else ""
        )
        raise InvalidArgument(f"no <id>/manifest.json under {folder}{hint}", field="manifest")
    return [_load_manifest(file) for file in files]


def _load_manifest(file: Path) -> dict[str, Any]:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{file}: cannot be read: {exc.strerror}", field="manifest") from exc
    if len(raw) > DEFAULT_MAX_MANIFEST_BYTES:
        raise InvalidArgument(
            f"{file} is {len(raw)} bytes; the limit is {DEFAULT_MAX_MANIFEST_BYTES} bytes",
            field="manifest",
        )
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"{file} is not valid JSON: {exc}", field="manifest") from exc
    try:
        manifest = validate_manifest(value, feature_id=file.parent.name, require_hashes=False)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{file}: {exc.message}", field=exc.field) from exc
    return manifest
