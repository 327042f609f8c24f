"""`releasectl release status --watch`: the status table, kept current from the watch feed.

WatchReleases sends a SNAPSHOT per feature, SYNCED, then every committed CHANGE
(with the feature's state after it). The table is drawn at SYNCED and again
after every change. On a terminal the screen is cleared and redrawn (every
second too while a canary soaks, so SOAK LEFT counts down), with the latest
changes under the table; into a pipe or file each drawing is appended (the
change line, then the table, then a blank line); with `--output json`, one JSON
object a line. RESYNC_REQUIRED (this watcher fell behind) starts the watch
anew; Ctrl-C ends it (exit 0).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

import click

from releasecontrol.client import WatchStream
from releasecontrol.errors import Unavailable
from releasecontrol.v1 import release_control_pb2 as pb
from releasectl._common import (
    STATUS_HEADERS,
    describe_transition,
    feature_json,
    open_client,
    printable,
    render_table,
    status_row,
    transition_json,
)

_SHOWN_CHANGES = 5
_TICK_SECONDS = 1.0


def _read(stream: WatchStream, events: queue.Queue[Any]) -> None:
    """The reader thread: every event of `stream` into `events`, then its end or error."""
    try:
        for event in stream:
            events.put(event)
        events.put(None)
    except Exception as exc:  # handed to the main thread, which raises it
        events.put(exc)


class _View:
    """What the watch shows: every feature's state and the latest changes."""

    def __init__(self, output: str, live: bool) -> None:
        self.output = output
        self.live = live
        self.features: dict[str, pb.Feature] = {}
        self.global_sequence = 0
        self.changes: deque[str] = deque(maxlen=_SHOWN_CHANGES)
        self.synced = False

    def soaking(self) -> bool:
        return any(f.HasField("canary") and f.canary.version for f in self.features.values())

    def draw(self, change: pb.Transition | None = None, line: str = "") -> None:
        now = datetime.now(UTC)
        features = [self.features[fid] for fid in sorted(self.features)]
        if self.output == "json":
            record = {
                "global_sequence": self.global_sequence,
                "change": transition_json(change) if change is not None else None,
                "features": [feature_json(f, now) for f in features],
            }
            click.echo(json.dumps(record, separators=(",", ":")))
            return
        table = (
            render_table(STATUS_HEADERS, [status_row(f, now) for f in features])
            if features
            else "no features yet: publish one with `releasectl publish --feature F`"
        )
        if not self.live:
            if line:
                click.echo(line)
            click.echo(table + "\n")
            return
        click.clear()
        click.echo(
            f"release status, global sequence {self.global_sequence}, at "
            f"{now.strftime('%H:%M:%S')} UTC (watching; Ctrl-C to stop)\n"
        )
        click.echo(table)
        if self.changes:
            click.echo("\nlatest changes:")
            for shown in reversed(self.changes):
                click.echo(f"  {shown}")


def watch_status(ctx: click.Context, only: tuple[str, ...], output: str) -> None:
    """Follow the watch feed of `only` (every feature when empty) until Ctrl-C."""
    view = _View(output, live=output == "table" and sys.stdout.isatty())
    with open_client(ctx) as client:
        while True:
            stream = client.watch(only)
            events: queue.Queue[Any] = queue.Queue()
            reader = threading.Thread(
                target=_read, args=(stream, events), name="watch-releases", daemon=True
            )
            reader.start()
            try:
                again = _follow(view, events)
            except KeyboardInterrupt:
                return
            finally:
                stream.cancel()
            if not again:
                return


def _follow(view: _View, events: queue.Queue[Any]) -> bool:
    """Draw from `events` until the feed ends; True when it must be watched anew
    (RESYNC_REQUIRED). Raises the feed's error, or Unavailable when it ends."""
    view.features.clear()
    view.synced = False
    while True:
        try:
            event = events.get(timeout=_TICK_SECONDS)
        except queue.Empty:
            if view.live and view.synced and view.soaking():
                view.draw()  # SOAK LEFT counts down
            continue
        if isinstance(event, Exception):
            raise event
        if event is None:
            raise Unavailable("the server ended the watch feed: run the command again")
        view.global_sequence = max(view.global_sequence, event.global_sequence)
        if event.type == pb.WATCH_EVENT_TYPE_SNAPSHOT:
            view.features[event.feature.feature_id] = event.feature
        elif event.type == pb.WATCH_EVENT_TYPE_SYNCED:
            view.synced = True
            view.draw()
        elif event.type == pb.WATCH_EVENT_TYPE_CHANGE:
            view.features[event.feature.feature_id] = event.feature
            at = event.transition.at.ToDatetime(tzinfo=UTC).strftime("%H:%M:%S")
            line = printable(f"{at} {describe_transition(event.transition, event.feature)}")
            view.changes.append(line)
            if view.synced:
                view.draw(event.transition, line)
        elif event.type == pb.WATCH_EVENT_TYPE_REFRESH:
            line = printable(
                "hosts told to re-read the CDN: "
                + (", ".join(event.feature_ids) or "every feature")
            )
            view.changes.append(line)
            if view.synced and view.output != "json":
                view.draw(line=line)
        elif event.type == pb.WATCH_EVENT_TYPE_RESYNC_REQUIRED:
            click.echo(
                printable(
                    f"note: the watch fell behind ({event.message}); reading every state again"
                ),
                err=True,
            )
            return True
