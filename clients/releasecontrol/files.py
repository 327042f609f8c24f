"""Writing files so a reader, a crash or a power cut sees the old bytes or the new, never a mix.

Used for everything ReleaseControl keeps on disk: keys, trust files, token
stores, session keys, the host's cache and state, the filesystem origin.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_create", "atomic_write", "file_stamp", "fsync_dir", "fsync_path"]


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace `path` with `data` atomically, the file ending with permission `mode`.

    Writes a temporary file in the same directory (created 0600, so a secret is
    never readable by others, even briefly), renames it over `path`, and with
    `durable` fsyncs the file and the directory so the new bytes survive a power
    cut. Raises OSError when the write fails; the temporary file is removed.
    """
    tmp = _write_temp(path, data, mode, durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_create(path: Path, data: bytes, *, mode: int = 0o644) -> bool:
    """Create `path` with `data` atomically unless it exists; False when it already did.

    Like atomic_write, but a hard link instead of a rename, so a file another
    process created first is never overwritten.
    """
    tmp = _write_temp(path, data, mode, True)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        _unlink_quietly(tmp)
    fsync_dir(path.parent)
    return True


def fsync_dir(directory: Path) -> None:
    """Make renames and new entries in `directory` durable (a no-op where it cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """Make a file's bytes durable, or a folder's entries (`fsync_dir`: a rename into it).
    Raises OSError when a file cannot be synced."""
    if path.is_dir():
        fsync_dir(path)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes, mode: int, durable: bool) -> Path:
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
    except BaseException:
        _unlink_quietly(Path(name))
        raise
    return Path(name)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is edited or replaced (inode, mtime, size); None when absent.

    Files that are reloaded on change (token stores, allow-lists, keys) compare stamps.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)
