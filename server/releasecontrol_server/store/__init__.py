"""Persistence of the control plane: features, audit trail, signed files, outbox.

`SqliteStore` (store.sqlite) is the embedded default; a server database engine
can come later behind the same methods.
"""

from __future__ import annotations

from releasecontrol_server.store.sqlite import (
    SCHEMA_VERSION,
    Answered,
    Change,
    Event,
    FileDigest,
    SignedFile,
    SqliteStore,
    StoredTransition,
)

__all__ = [
    "SCHEMA_VERSION",
    "Answered",
    "Change",
    "Event",
    "FileDigest",
    "SignedFile",
    "SqliteStore",
    "StoredTransition",
]
