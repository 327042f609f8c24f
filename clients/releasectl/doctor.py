"""`releasectl doctor`: the production checklist, each item PASS/WARN/FAIL with the fix.

The checks live in `releasecontrol_server.doctor`; this module only prints them.
It also holds `tool_config`, the config the operator commands (`doctor`,
`token`, `lint routes`, `validate compat`) read their defaults from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from releasectl._common import CliState, OneLineError, echo_json, output_option

if TYPE_CHECKING:
    from releasecontrol_server.config import Config
    from releasecontrol_server.doctor import DoctorReport

config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    metavar="PATH",
    help="The server's TOML config file; default: RELEASECONTROL_CONFIG, else "
    "$RELEASECONTROL_HOME/config.toml when it exists.",
)


def tool_environ(ctx: click.Context) -> dict[str, str]:
    """The process environment with the global --home applied as RELEASECONTROL_HOME."""
    environ = dict(os.environ)
    state = ctx.find_object(CliState) or CliState()
    if state.home is not None:
        environ["RELEASECONTROL_HOME"] = str(state.home)
    return environ


def tool_config(ctx: click.Context, config_path: Path | None) -> Config:
    """The server config as an operator tool reads it: like the server, but a production
    config's refusals are left to `doctor` instead of stopping the command.

    Raises ConfigError (one line on stderr) when the config does not load at all.
    """
    from releasecontrol_server.doctor import load_config_for_doctor

    return load_config_for_doctor(tool_environ(ctx), config_path)


_STATUS_WIDTH = 4


def format_report(report: DoctorReport) -> str:
    """One line per item (status, name, reason) and a `fix:` line under each that is not PASS."""
    width = max(len(r.name) for r in report.results)
    indent = " " * (_STATUS_WIDTH + 2 + width + 2)
    lines: list[str] = []
    for result in report.results:
        lines.append(f"{result.status:<{_STATUS_WIDTH}}  {result.name:<{width}}  {result.reason}")
        if result.status != "PASS" and result.fix:
            lines.append(f"{indent}fix: {result.fix}")
    counts = {
        status: sum(1 for r in report.results if r.status == status)
        for status in ("PASS", "WARN", "FAIL")
    }
    checked = f" ({report.config_file})" if report.config_file else " (no config file)"
    lines.append(
        f"{counts['PASS']} passed, {counts['WARN']} warned, {counts['FAIL']} failed{checked}"
    )
    return "\n".join(lines)


@click.command("doctor")
@config_option
@output_option
@click.pass_context
def doctor(ctx: click.Context, config_path: Path | None, output: str) -> None:
    """Check that a deployment is safe to call production.

    Items: production mode, trusted keys, insecure dev keys off, unauthenticated
    admin off, the auth mode and its material, TLS certificates (matching keys,
    not expiring within 30 days), signing keys trusted, `lint routes` and
    `validate compat --strict` over the published manifests, and the origin's
    revalidation headers on index files. Exits 1 when any item fails.

    \b
    Example:
      releasectl doctor --config /etc/releasecontrol/config.toml
    """
    from releasecontrol_server.doctor import run_doctor

    report = run_doctor(tool_environ(ctx), config_path)
    if output == "json":
        echo_json(report.to_dict())
    else:
        click.echo(format_report(report))
    if report.failed:
        names = ", ".join(r.name for r in report.failed)
        raise OneLineError(
            f"{len(report.failed)} of {len(report.results)} production checks failed: {names}"
        )
