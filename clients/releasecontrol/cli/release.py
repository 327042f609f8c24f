"""`releasectl release`: canary, promote, rollback, and where every feature stands."""

from __future__ import annotations

import click

from releasecontrol.cli._common import (
    STATUS_HEADERS,
    Change,
    change_options,
    echo_json,
    feature_json,
    feature_option,
    open_client,
    output_option,
    print_transition,
    render_table,
    server_now,
    soak_option,
    status_row,
    validate_feature_option,
    version_option,
)


@click.group()
def release() -> None:
    """Canary, promote, rollback, and the status of every feature.

    \b
    Example:
      releasectl release status
    """


@release.command("canary")
@feature_option
@version_option
@soak_option
@change_options
@output_option
@click.pass_context
def canary(
    ctx: click.Context,
    feature: str,
    version: str,
    soak: int | None,
    output: str,
    change: Change,
) -> None:
    """Deploy a published version as canary and start its soak timer.

    \b
    Example:
      releasectl release canary --feature checkout --version 1.3.0 --soak 30m
    """
    with open_client(ctx) as client:
        response = client.deploy_canary(feature, version, soak_seconds=soak, **change.kwargs())
    print_transition(response.transition, response.feature, output)


@release.command("promote")
@feature_option
@version_option
@click.option(
    "--skip-soak",
    is_flag=True,
    help="Promote before the soak is over; needs --reason.",
)
@change_options
@output_option
@click.pass_context
def promote(
    ctx: click.Context,
    feature: str,
    version: str,
    skip_soak: bool,
    output: str,
    change: Change,
) -> None:
    """Promote the canary to stable once its soak is over.

    \b
    Example:
      releasectl release promote --feature checkout --version 1.3.0 --ticket CHG-42
    """
    if skip_soak and not change.reason.strip():
        raise click.UsageError(
            "--skip-soak needs --reason: say why the soak cannot be waited out, "
            'e.g. --reason "fix for INC-7"',
            ctx,
        )
    with open_client(ctx) as client:
        response = client.promote(feature, version, skip_soak=skip_soak, **change.kwargs())
    print_transition(response.transition, response.feature, output)


@release.command("rollback")
@feature_option
@version_option
@change_options
@output_option
@click.pass_context
def rollback(
    ctx: click.Context,
    feature: str,
    version: str,
    output: str,
    change: Change,
) -> None:
    """Roll stable back to a version that was stable before; clears the canary.

    \b
    Example:
      releasectl release rollback --feature checkout --version 1.2.0 --reason "INC-7"
    """
    with open_client(ctx) as client:
        response = client.rollback(feature, version, **change.kwargs())
    print_transition(response.transition, response.feature, output)


@release.command("status")
@click.option(
    "--feature",
    "-f",
    "features",
    multiple=True,
    metavar="FEATURE",
    callback=validate_feature_option,
    help="Only this feature (repeatable); default: every feature.",
)
@output_option
@click.pass_context
def status(ctx: click.Context, features: tuple[str, ...], output: str) -> None:
    """Show the stable and canary version of every feature, from the control plane.

    \b
    Example:
      releasectl release status --feature checkout --output json
    """
    with open_client(ctx) as client:
        response = client.get_status(features)
    now = server_now(response)
    if output == "json":
        echo_json([feature_json(f, now) for f in response.features])
    elif not response.features:
        click.echo("no features yet: publish one with `releasectl publish --feature F`")
    else:
        click.echo(render_table(STATUS_HEADERS, [status_row(f, now) for f in response.features]))
