"""`releasectl interactive`: a menu for people, for the two things they do most: dev and publish.

Each choice runs the very command it names (`releasectl dev`,
`releasectl publish`), with the same checks and the same progress bar; the
menu only collects the arguments.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from releasecontrol.errors import ReleaseControlError
from releasectl._common import one_line, printable
from releasectl.dev import dev
from releasectl.publish import publish

START = "Start the local system (releasectl dev)"
PUBLISH = "Publish a feature"
QUIT = "Quit"
CHANNELS = ("stable", "canary")

NO_TERMINAL = (
    "interactive mode needs a terminal; run the commands instead: "
    "`releasectl dev` to start the local system, "
    "`releasectl publish --feature F [--channel canary]` to publish ./features/F"
)


@dataclass(frozen=True)
class FeatureFolder:
    """A folder under ./features/ that holds a manifest.json."""

    feature_id: str
    folder: Path
    version: str | None
    """The manifest's version, None when it cannot be read (publish then says why)."""

    @property
    def label(self) -> str:
        return f"{self.feature_id} ({self.version})" if self.version else self.feature_id


def feature_folders(root: Path) -> list[FeatureFolder]:
    """Every `root/<id>/manifest.json`, sorted by id; empty when `root` is not a folder."""
    if not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        manifest = folder / "manifest.json"
        if not manifest.is_file():
            continue
        version: str | None = None
        try:
            value = json.loads(manifest.read_bytes()).get("version")
            version = value if isinstance(value, str) else None
        except (OSError, ValueError, AttributeError):
            pass
        found.append(FeatureFolder(folder.name, folder, version))
    return found


def _ask(question: Any) -> Any:
    """The answer, or None when the person pressed Ctrl-C (questionary prints "Cancelled")."""
    return question.ask()


@click.command()
@click.pass_context
def interactive(ctx: click.Context) -> None:
    """Menu for people: start the local system, or publish a feature.

    Publishing asks for a folder under ./features/ and a channel, confirms,
    then runs exactly what `releasectl publish` runs. Without a terminal it
    names those commands and exits with code 2.

    \b
    Example:
      releasectl interactive
    """
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo(f"error: {NO_TERMINAL}", err=True)
        ctx.exit(2)

    import questionary

    while True:
        choice = _ask(questionary.select("What do you want to do?", choices=[START, PUBLISH, QUIT]))
        if choice in (None, QUIT):
            return
        if choice == START:
            # Runs in the foreground until Ctrl-C, like the command itself.
            ctx.invoke(dev, server_args=())
            return
        _publish_menu(ctx, questionary)


def _publish_menu(ctx: click.Context, questionary: Any) -> None:
    root = Path("features")
    folders = feature_folders(root)
    if not folders:
        click.echo(
            f"no feature folders with a manifest.json under {root.resolve()}: "
            "build one into ./features/<id>/ first"
        )
        return
    by_label = {f.label: f for f in folders}
    label = _ask(questionary.select("Which feature?", choices=list(by_label)))
    if label is None:
        return
    chosen = by_label[label]
    channel = _ask(questionary.select("To which channel?", choices=list(CHANNELS)))
    if channel is None:
        return
    what = f"{chosen.feature_id} {chosen.version}" if chosen.version else chosen.feature_id
    if not _ask(questionary.confirm(f"Publish {what} to {channel}?", default=True)):
        click.echo("not published")
        return
    try:
        ctx.invoke(publish, feature=chosen.feature_id, folder=chosen.folder, channel=channel)
    except click.ClickException as exc:
        exc.show()
    except ReleaseControlError as exc:
        click.echo(f"error: {printable(one_line(exc.message))}", err=True)
