"""`releasectl origin rebuild`: put a lost, emptied or new CDN origin back together.

The server writes every artifact (from its artifact store), every manifest and
every index file (the top level last) where the origin lacks or differs, after
signing the features again above any sequence the origin served that the
database is behind on (a database restored from an older backup). Progress
streams from the server (`RebuildOrigin`) and shows as a bar on stderr.
"""

from __future__ import annotations

import sys

import click

from releasecontrol.v1 import release_control_pb2 as pb
from releasectl._common import OneLineError, echo_json, open_client, output_option, plural

__all__ = ["origin"]


@click.group()
def origin() -> None:
    """The CDN origin: rebuild it from what the control plane keeps.

    \b
    Example:
      releasectl origin rebuild
    """


@origin.command("rebuild")
@click.option(
    "--force",
    is_flag=True,
    help="Write every file, even those the origin already holds (default: only what is "
    "missing or differs).",
)
@output_option
@click.pass_context
def rebuild(ctx: click.Context, force: bool, output: str) -> None:
    """Republish everything hosts read to the origin: artifacts, manifests, index files.

    Needs the admin role. Safe to run again: what was written stays, and a second run
    writes only what still differs. Afterwards, `releasectl verify remote-cdn` checks the
    origin as a host sees it.

    \b
    Example:
      releasectl origin rebuild
      releasectl origin rebuild --force --output json
    """
    last = pb.RebuildOriginResponse()
    with open_client(ctx) as client:
        shown = 0
        with click.progressbar(
            length=1, label="rebuilding the origin", file=sys.stderr, show_pos=True
        ) as bar:
            for progress in client.rebuild_origin(force=force):
                last = progress
                if progress.files_total:
                    bar.length = int(progress.files_total)
                bar.update(int(progress.files_done) - shown)
                shown = int(progress.files_done)
    summary = {
        "files": last.files_done,
        "written": last.files_written,
        "bytes_written": last.bytes_written,
        "reconciled": list(last.reconciled),
        "missing_artifacts": list(last.missing_artifacts),
    }
    if output == "json":
        echo_json(summary)
    else:
        click.echo(
            f"origin rebuilt: {plural(last.files_done, 'file')} checked, "
            f"{last.files_written} written ({plural(last.bytes_written, 'byte')})"
        )
        if last.reconciled:
            click.echo(
                f"signed again above the origin's sequences (restored database): "
                f"{', '.join(last.reconciled)}"
            )
    if last.missing_artifacts:
        missing = list(last.missing_artifacts)
        first = ", ".join(missing[:3]) + ("…" if len(missing) > 3 else "")
        one = len(missing) == 1
        raise OneLineError(
            f"{plural(len(missing), 'artifact')} {'is' if one else 'are'} neither in the "
            f"artifact store nor on the origin ({first}): publish "
            f"{'that version' if one else 'those versions'} again from the build output"
        )
