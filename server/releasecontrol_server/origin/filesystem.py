"""An origin in a local folder, written atomically and durably.

`write` puts the bytes in a temporary file beside the target, fsyncs it, renames
it over the target and fsyncs the directory: a reader (or the HTTP server in
`origin.http`) sees the old file or the new one, never half of one, and after a
crash the file is the old one or the new one. Temporary files are hidden
(`.name.*.tmp`); the HTTP server never serves hidden files.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from releasecontrol.files import atomic_write, fsync_dir
from releasecontrol_server.origin import validate_origin_path

__all__ = ["FilesystemOrigin"]

# World-readable: a web server running as another user must be able to serve them.
FILE_MODE = 0o644


class FilesystemOrigin:
    """The origin as a folder: `root/<path>` for every published path."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _file(self, path: str) -> Path:
        return self.root.joinpath(*validate_origin_path(path).split("/"))

    def write(self, path: str, data: bytes) -> None:
        """Replace `path` with `data` atomically, creating parent folders.

        Returns once the new bytes and the rename are on disk. Raises ValueError
        for an invalid path and OSError when the disk refuses.
        """
        target = self._file(path)
        _make_dirs(target.parent)
        atomic_write(target, data, mode=FILE_MODE)

    def read(self, path: str) -> bytes | None:
        """The bytes at `path`, or None when no file is there. Raises ValueError for a bad path."""
        try:
            return self._file(path).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def exists(self, path: str) -> bool:
        """Whether a file (not a folder) is at `path`. Raises ValueError for a bad path."""
        return self._file(path).is_file()

    def __repr__(self) -> str:
        return f"FilesystemOrigin({str(self.root)!r})"


def _make_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents, fsyncing each parent so the new entries persist."""
    missing: list[Path] = []
    current = folder
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for new in reversed(missing):
        with contextlib.suppress(FileExistsError):
            new.mkdir(mode=0o755)
        fsync_dir(new.parent)
