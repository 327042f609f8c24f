"""Test-only fault injection: kill the server process at a chosen point of the write path.

Loaded by Python at start from PYTHONPATH, only in a server process a test starts
with `tests/killpoints` on PYTHONPATH and `RELEASECONTROL_TEST_KILL=<point>:<n>` set:
the process SIGKILLs itself right after the n-th time (1-based) it passes <point>.

Points, in the order a change passes them:

- `artifact`: an artifact streamed onto the origin (kept in the artifact store before,
  nothing committed yet);
- `stage`: a new manifest or index file written beside its place on the origin (not
  committed);
- `commit`: the store transaction of a batch committed (nothing in place on the origin);
- `publish`: one staged manifest or index file renamed into place (the origin half
  written);
- `mark`: files synced in place marked written in the store's outbox (with a later
  batch's commit, or alone when the writer settles; after the answer).

(The artifact store is a FilesystemOrigin too, but its writes (`ab/<sha256>`) are counted by
no point: only the random kills land between an artifact kept in the store and on the origin.)

Nothing of this is in the production modules: it wraps their methods from outside.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

_lock = threading.Lock()
_passes = 0


def _install(point: str, nth: int) -> None:
    from releasecontrol_server.origin.filesystem import FilesystemOrigin
    from releasecontrol_server.store import Store

    def after(owner: Any, name: str, counts: Any = None) -> None:
        original = getattr(owner, name)

        def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            if counts is None or counts(args, kwargs):
                global _passes
                with _lock:
                    _passes += 1
                    if _passes >= nth:
                        os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, wrapped)

    def signed(path: str) -> bool:  # a manifest or an index file, not an artifact
        return path.endswith(".json")

    if point == "artifact":
        after(FilesystemOrigin, "write_file", lambda a, kw: str(a[0]).startswith("artifacts/"))
    elif point == "stage":
        after(FilesystemOrigin, "stage", lambda a, kw: signed(str(a[0])))
    elif point == "commit":
        after(Store, "commit_many", lambda a, kw: bool(a and a[0]))
    elif point == "publish":
        after(FilesystemOrigin, "publish", lambda a, kw: signed(a[0].path))
    elif point == "mark":
        # Synced at once, so that each change's files are marked (with the next commit), as
        # the rounds count on: production shares one sync among the changes of 50 ms.
        from releasecontrol_server import writer

        writer.SYNC_DELAY_SECONDS = 0.0
        after(Store, "mark_all_written", lambda a, kw: bool(a and a[0]))
        after(Store, "commit_many", lambda a, kw: bool(kw.get("written")))
    else:
        raise SystemExit(f"RELEASECONTROL_TEST_KILL: unknown point {point!r}")


_spec = os.environ.get("RELEASECONTROL_TEST_KILL", "")
if _spec:
    _point, _, _nth = _spec.partition(":")
    _install(_point, int(_nth or "1"))
