"""`releasectl publish`: stream a built feature folder to the control plane."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from releasecontrol.cli._common import (
    Change,
    OneLineError,
    change_options,
    describe_transition,
    echo_json,
    feature_json,
    feature_option,
    open_client,
    output_option,
    soak_option,
    transition_json,
)
from releasecontrol.client import ChannelName, ReleaseControlClient
from releasecontrol.manifest import SourceFeature, load_feature_folder
from releasecontrol.v1 import release_control_pb2 as pb


@click.command()
@feature_option
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The built feature folder holding manifest.json; default: ./features/FEATURE.",
)
@click.option(
    "--channel",
    type=click.Choice(["stable", "canary"]),
    default="stable",
    show_default=True,
    help="Where the new version goes.",
)
@soak_option
@change_options
@output_option
@click.pass_context
def publish(
    ctx: click.Context,
    feature: str,
    folder: Path | None,
    channel: str,
    soak: int | None,
    output: str,
    change: Change,
) -> None:
    """Publish the version in a feature's manifest.json.

    Streams the manifest and the built files to the control plane, which signs
    and publishes them to the CDN origin.

    Sizes and SHA-256 hashes missing from the manifest are filled in from the
    files; one that is listed but does not match its file is refused.

    \b
    Example:
      releasectl publish --feature checkout --channel canary --soak 30m
    """
    if soak is not None and channel != "canary":
        raise click.UsageError("--soak applies to --channel canary only", ctx)
    folder = Path("features") / feature if folder is None else folder
    try:
        source = load_feature_folder(folder, feature_id=feature)
    except OSError as exc:
        raise OneLineError(f"cannot read {exc.filename or folder}: {exc.strerror or exc}") from None

    with open_client(ctx) as client:
        response = _send(client, source, channel, soak, change)

    if output == "json":
        echo_json(
            {
                "feature_id": source.feature_id,
                "version": source.version,
                "already_published": response.already_published,
                "manifest_sha256": response.manifest_sha256,
                "transition": (
                    transition_json(response.transition)
                    if response.HasField("transition")
                    else None
                ),
                "feature": feature_json(response.feature, datetime.now(UTC)),
            }
        )
    elif response.already_published:
        click.echo(
            f"already published {source.feature_id} {source.version} "
            f"(manifest sha256 {response.manifest_sha256[:12]}…): nothing changed "
            f"(sequence {response.feature.sequence})"
        )
    else:
        click.echo(describe_transition(response.transition, response.feature))


def _send(
    client: ReleaseControlClient,
    source: SourceFeature,
    channel: str,
    soak: int | None,
    change: Change,
) -> pb.PublishVersionResponse:
    target: ChannelName = "canary" if channel == "canary" else "stable"
    if not sys.stderr.isatty():
        return client.publish(source, channel=target, soak_seconds=soak, **change.kwargs())
    label = f"uploading {source.feature_id} {source.version}"
    with click.progressbar(length=source.total_bytes, label=label, file=sys.stderr) as bar:
        shown = 0

        def progress(sent: int, total: int) -> None:
            nonlocal shown
            bar.update(sent - shown)
            shown = sent

        return client.publish(
            source, channel=target, soak_seconds=soak, on_progress=progress, **change.kwargs()
        )
