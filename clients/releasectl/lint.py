"""`releasectl lint routes` and `releasectl validate compat`: checks over the live manifests.

Both read the same manifests: a folder of `<id>/manifest.json` with `--dir`,
otherwise what is published, read like a host reads it (see
`releasecontrol.published`) from the remote index at `--index-url`, else
FEATURE_REMOTE_INDEX_URL, else the running dev server's origin
(`$RELEASECONTROL_HOME/run/endpoints.json`). Signatures are checked when a
trust file is at hand (FEATURE_TRUST_PUBLIC_KEYS_*, else the state directory's
dev trust file).

Findings go to stdout (`--output json` for scripts); when the check fails, one
line on stderr says so and the exit code is 1.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from releasecontrol import compat, routes
from releasecontrol.errors import ConfigError, InvalidArgument
from releasecontrol.index import REMOTE_INDEX_PATH
from releasecontrol.published import read_published_at
from releasecontrol.trust import DEV_TRUST_FILE, ENV_ALLOW_DEV_KEYS, TrustStore
from releasectl._common import OneLineError, echo_json, output_option, state_dir
from releasectl.doctor import config_option, tool_config

ENV_REMOTE_INDEX_URL = "FEATURE_REMOTE_INDEX_URL"

dir_option = click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    metavar="DIR",
    help="Check the <id>/manifest.json files in DIR (e.g. ./features) instead of what is "
    "published.",
)
index_url_option = click.option(
    "--index-url",
    default=None,
    metavar="URL",
    help="Check what is published at this remote-index.json; default: "
    f"{ENV_REMOTE_INDEX_URL}, else the running dev server's origin.",
)


@dataclass(frozen=True)
class Manifests:
    """The manifests to check and where they came from."""

    source: str
    manifests: list[Mapping[str, Any]]
    published: bool = True
    """False when the origin has nothing published yet."""
    details: Mapping[str, Any] | None = None
    """What `--output json` adds about the source (the published read's summary)."""


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def _index_url(home: Path) -> str:
    from_env = os.environ.get(ENV_REMOTE_INDEX_URL, "").strip()
    if from_env:
        return from_env
    endpoints = home / "run" / "endpoints.json"
    try:
        origin_url = json.loads(endpoints.read_bytes())["origin_url"]
    except FileNotFoundError:
        raise ConfigError(
            f"nothing to check: pass --dir DIR or --index-url URL, set {ENV_REMOTE_INDEX_URL}, "
            f"or start `releasectl dev` (no running server recorded in {endpoints})"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{endpoints} names no origin_url ({exc!r}); restart `releasectl dev`, or pass "
            "--index-url"
        ) from None
    if not isinstance(origin_url, str):
        raise ConfigError(f"{endpoints} names no origin_url; restart `releasectl dev`")
    return origin_url + REMOTE_INDEX_PATH


def _trust(home: Path) -> tuple[TrustStore | None, bool]:
    """(the trust store to verify with, whether dev keys count)."""
    allow_dev = _truthy(os.environ.get(ENV_ALLOW_DEV_KEYS, ""))
    configured = TrustStore.from_environment(os.environ)
    if configured is not None:
        return configured, allow_dev
    local = home / "keys" / DEV_TRUST_FILE
    if local.is_file():
        # The state directory's trust file is the local dev server's own dev key.
        return TrustStore.from_file(local), True
    return None, allow_dev


def load_checked_manifests(
    ctx: click.Context, folder: Path | None, index_url: str | None
) -> Manifests:
    """The manifests `--dir` or the published origin holds; raises ReleaseControlError."""
    if folder is not None and index_url is not None:
        raise click.UsageError("pass --dir or --index-url, not both", ctx)
    if folder is not None:
        return Manifests(str(folder), list(compat.load_manifests(folder)))
    home = state_dir(ctx)
    url = index_url or _index_url(home)
    trust, allow_dev = _trust(home)
    published = read_published_at(url, trust=trust, allow_dev_keys=allow_dev)
    for note in published.notes:
        click.echo(f"note: {note}", err=True)
    if not published.found:
        click.echo(f"note: nothing is published at {url} yet", err=True)
    return Manifests(
        url,
        published.manifest_dicts(),
        published=published.found,
        details=published.to_dict(),
    )


def _report(
    command: str,
    checked: Manifests,
    findings: Sequence[routes.Finding],
    *,
    strict: bool,
    output: str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    errors = sum(1 for f in findings if f.severity == "error")
    warnings = len(findings) - errors
    failed = routes.failed(findings, strict)
    if output == "json":
        echo_json(
            {
                "source": checked.source,
                "published": checked.published,
                **({"origin": dict(checked.details)} if checked.details is not None else {}),
                "manifests": [
                    {"feature_id": m.get("id"), "version": m.get("version")}
                    for m in checked.manifests
                ],
                **(extra or {}),
                "findings": routes.findings_json(findings),
                "errors": errors,
                "warnings": warnings,
                "ok": not failed,
            }
        )
    else:
        click.echo(f"checked {len(checked.manifests)} manifest(s) from {checked.source}")
        click.echo(routes.format_findings(findings))
    if failed:
        counted = f"{errors} error(s)" + (
            f" and {warnings} warning(s) (--strict)" if strict else ""
        )
        raise OneLineError(f"{command} failed: {counted} in {checked.source}")


@click.group("lint")
def lint() -> None:
    """Lint what features declare: their routes.

    \b
    Example:
      releasectl lint routes --dir ./features
    """


@lint.command("routes")
@dir_option
@index_url_option
@click.option(
    "--reserved",
    multiple=True,
    metavar="PREFIX",
    help="Another reserved route prefix no feature may claim (e.g. /api); repeat for several. "
    "Added to the config's reserved_routes (always /_admin).",
)
@config_option
@output_option
@click.pass_context
def lint_routes(
    ctx: click.Context,
    folder: Path | None,
    index_url: str | None,
    reserved: tuple[str, ...],
    config_path: Path | None,
    output: str,
) -> None:
    """Check route patterns: valid, no two features claiming one route, reserved ones free.

    Each finding names both features and both patterns. Exits 1 on any error;
    warnings (overlaps within one feature, a parameter that also captures a
    reserved path) are shown but do not fail.

    \b
    Example:
      releasectl lint routes --dir ./features --reserved /api
    """
    prefixes = tuple(dict.fromkeys([*tool_config(ctx, config_path).reserved_routes, *reserved]))
    checked = load_checked_manifests(ctx, folder, index_url)
    try:
        findings = routes.lint_routes(
            routes.routes_by_feature(checked.manifests), reserved=prefixes
        )
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, ctx, param_hint="'--reserved'") from None
    _report(
        "lint routes",
        checked,
        findings,
        strict=False,
        output=output,
        extra={"reserved": list(prefixes)},
    )


@click.group("validate")
def validate() -> None:
    """Validate what features declare: their compat ranges.

    \b
    Example:
      releasectl validate compat --strict --host-version 2.4.0
    """


@validate.command("compat")
@click.option(
    "--strict", is_flag=True, help="Fail on warnings too (e.g. a range with no upper bound)."
)
@click.option(
    "--host-version",
    default=None,
    metavar="VERSION",
    help="The host application's version; default: the config's host_version.",
)
@dir_option
@index_url_option
@config_option
@output_option
@click.pass_context
def validate_compat(
    ctx: click.Context,
    strict: bool,
    host_version: str | None,
    folder: Path | None,
    index_url: str | None,
    config_path: Path | None,
    output: str,
) -> None:
    """Check every manifest's compat ranges against the host and each other.

    compat.host must contain the host version; the compat.shared ranges of
    features that run together must have a version in common. Exits 1 on any
    error, and with --strict on warnings too.

    \b
    Example:
      releasectl validate compat --strict --host-version 2.4.0 --dir ./features
    """
    version = host_version or tool_config(ctx, config_path).host_version
    if version is None:
        raise OneLineError(
            "no host version to check against: pass --host-version, or set host_version in "
            "the config (RELEASECONTROL_HOST_VERSION)"
        )
    checked = load_checked_manifests(ctx, folder, index_url)
    try:
        findings = compat.check_compat(checked.manifests, host_version=version)
    except InvalidArgument as exc:
        raise OneLineError(f"{exc.message} (--host-version or host_version)") from None
    _report(
        "validate compat",
        checked,
        findings,
        strict=strict,
        output=output,
        extra={"host_version": version, "strict": strict},
    )
