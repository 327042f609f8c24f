"""`releasectl backup PATH` / `releasectl restore PATH`: the database, copied safely.

`backup` uses SQLite's online backup API, so it runs while the server serves and
the copy is one consistent moment (a plain file copy of a WAL database can mix
moments). The copy is checked (`PRAGMA integrity_check`) before it is put in
place, and never overwrites a file unless asked.

`restore` puts a backup in place of the database: only while no server uses it,
only a file that is a ReleaseControl database and passes the integrity check,
and the database it replaces is kept beside it. A restored database is usually
older than what the origin serves; the server sees that at start and refuses
changes that would publish a lower sequence until it is reconciled.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from releasecontrol.files import fsync_dir
from releasectl._common import OneLineError, echo_json, output_option, state_dir

__all__ = ["backup", "restore"]

DATABASE_FILE = "releasecontrol.db"
_SQLITE_MAGIC = b"SQLite format 3\x00"


def _read_only(path: Path) -> str:
    # Imported here: only backup and restore open a database.
    from releasecontrol_server.store.sqlite import read_only_uri

    return read_only_uri(path)


def _database_option(command: Any) -> Any:
    return click.option(
        "--database",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="The database file; default: $RELEASECONTROL_HOME/releasecontrol.db (set "
        "this when database_path is configured elsewhere).",
    )(command)


def _database(ctx: click.Context, given: Path | None) -> Path:
    if given is not None:
        return given
    if os.environ.get("RELEASECONTROL_DATABASE_URL"):
        raise OneLineError(
            "the database is PostgreSQL (RELEASECONTROL_DATABASE_URL is set), which backup and "
            "restore do not copy: use pg_dump / pg_restore or your provider's snapshots, then "
            "`releasectl origin rebuild` after a restore; --database FILE copies a SQLite file"
        )
    return state_dir(ctx) / DATABASE_FILE


def _describe(path: Path) -> dict[str, Any]:
    """What a database file holds, checked: its schema version and global sequence.

    Raises OneLineError when it is not a sound ReleaseControl database.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise OneLineError(f"cannot read {path} ({exc.strerror or exc})") from None
    if head != _SQLITE_MAGIC:
        raise OneLineError(f"{path} is not a SQLite database (it starts with {head[:8]!r})")
    connection = sqlite3.connect(_read_only(path), uri=True)
    try:
        problems = [str(row[0]) for row in connection.execute("PRAGMA integrity_check(3)")]
        if problems != ["ok"]:
            raise OneLineError(f"{path} is damaged: {' '.join('; '.join(problems).split())}")
        try:
            meta = dict(connection.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError:
            meta = {}
    except sqlite3.DatabaseError as exc:
        raise OneLineError(f"{path} cannot be read as a database: {exc}") from None
    finally:
        connection.close()
    if "schema_version" not in meta:
        raise OneLineError(f"{path} is a SQLite file but not a ReleaseControl database")
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "schema_version": int(meta["schema_version"]),
        "global_sequence": int(meta.get("global_sequence", 0)),
    }


def _server_running(database: Path) -> int | None:
    """The pid of a server that recorded its endpoints beside `database` and still runs."""
    endpoints = database.parent / "run" / "endpoints.json"
    try:
        pid = int(json.loads(endpoints.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid


@click.command("backup")
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False))
@_database_option
@click.option("--force", is_flag=True, help="Replace TARGET if it exists.")
@output_option
@click.pass_context
def backup(
    ctx: click.Context, target: Path, database: Path | None, force: bool, output: str
) -> None:
    """Copy the database to TARGET while the server runs (SQLite's online backup).

    The copy is one consistent moment, checked before it is put in place.

    \b
    Example:
      releasectl backup /var/backups/releasecontrol-$(date +%F).db
    """
    source = _database(ctx, database)
    if not source.is_file():
        raise OneLineError(f"no database at {source}: pass --database, or set RELEASECONTROL_HOME")
    if target.exists() and not force:
        raise OneLineError(f"{target} exists; pass --force to replace it")
    _describe(source)
    temp = target.with_name(f".{target.name}.partial")
    temp.unlink(missing_ok=True)
    src = sqlite3.connect(_read_only(source), uri=True)
    dst = sqlite3.connect(temp)
    try:
        with click.progressbar(length=100, label="backing up", file=sys.stderr) as bar:
            done = [0]

            def progress(status: int, remaining: int, total: int) -> None:
                percent = int(100 * (total - remaining) / total) if total else 100
                bar.update(percent - done[0])
                done[0] = percent

            src.backup(dst, pages=1024, progress=progress)
    except sqlite3.Error as exc:
        temp.unlink(missing_ok=True)
        raise OneLineError(f"backing up {source} failed: {exc}") from None
    finally:
        src.close()
        dst.close()
    try:
        described = _describe(temp)
    except OneLineError:
        temp.unlink(missing_ok=True)
        raise
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temp, target)
    fsync_dir(target.parent)
    described["path"] = str(target)
    if output == "json":
        echo_json(described)
    else:
        click.echo(
            f"backed up {source} to {target} ({described['bytes']:,} bytes, schema "
            f"{described['schema_version']}, global sequence {described['global_sequence']})"
        )


@click.command("restore")
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_database_option
@output_option
@click.pass_context
def restore(ctx: click.Context, source: Path, database: Path | None, output: str) -> None:
    """Put the backup SOURCE in place of the database; the server must be stopped.

    The database it replaces is kept beside it (releasecontrol.db.replaced-<time>).
    At its next start the server compares the restored state with what the origin
    serves and refuses changes that would publish a lower sequence.

    \b
    Example:
      releasectl restore /var/backups/releasecontrol-2026-12-01.db
    """
    target = _database(ctx, database)
    pid = _server_running(target)
    if pid is not None:
        raise OneLineError(f"a server (pid {pid}) is using {target}: stop it first, then restore")
    described = _describe(source)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept: Path | None = None
    temp = target.with_name(f".{target.name}.restoring")
    target.parent.mkdir(parents=True, exist_ok=True)
    temp.write_bytes(source.read_bytes())
    with open(temp, "rb") as handle:
        os.fsync(handle.fileno())
    if target.exists():
        kept = target.with_name(f"{target.name}.replaced-{stamp}")
        os.replace(target, kept)
    for suffix in ("-wal", "-shm"):
        # The replaced database's log belongs to it, never to the restored file.
        side = target.with_name(target.name + suffix)
        if side.exists() and kept is not None:
            os.replace(side, kept.with_name(kept.name + suffix))
        with contextlib.suppress(FileNotFoundError):
            side.unlink()
    os.replace(temp, target)
    fsync_dir(target.parent)
    result = {**described, "path": str(target), "replaced": str(kept) if kept else None}
    if output == "json":
        echo_json(result)
    else:
        click.echo(
            f"restored {source} to {target} (global sequence {described['global_sequence']})"
            + (f"; the database it replaced is {kept}" if kept else "")
        )
