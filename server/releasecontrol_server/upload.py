"""Receiving a published version's artifacts: spooled, hashed, checked against the manifest.

Nothing reaches the origin until every asset has arrived with the size and
SHA-256 its manifest states, so a dropped stream leaves nothing half-published.
Each chunk is hashed and spooled on a thread of this module's (`receive`), never
on the event loop: a large upload does not hold up other calls.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, Any

from releasecontrol.errors import InvalidArgument

# Files up to this size stay in memory; larger ones spill to a temporary file.
_SPOOL_BYTES = 4 * 1024 * 1024
# The threads that hash and spool chunks, for every upload (hashing releases the GIL).
_RECEIVERS = ThreadPoolExecutor(2, thread_name_prefix="releasecontrol-upload")


@dataclass
class _Incoming:
    expected_size: int
    expected_sha256: str
    file: IO[bytes]
    digest: Any
    size: int = 0


@dataclass(frozen=True)
class ReceivedAsset:
    path: str
    sha256: str
    size: int
    file: IO[bytes]


class Upload:
    """The artifacts of one PublishVersion stream, checked as they arrive."""

    def __init__(self, manifest: Mapping[str, Any], *, max_total_bytes: int) -> None:
        self._max_total = max_total_bytes
        self._total = 0
        self._assets: dict[str, _Incoming] = {}
        for asset in manifest["assets"]:
            self._assets[asset["path"]] = _Incoming(
                expected_size=int(asset["size"]),
                expected_sha256=str(asset["sha256"]),
                # Closed by Upload.close(), which the servicer calls in a finally block.
                file=tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES),  # noqa: SIM115
                digest=hashlib.sha256(),
            )

    async def receive(self, path: str, data: bytes) -> None:
        """`add`, on a receiving thread (one chunk at a time per upload: awaited in order)."""
        await asyncio.get_running_loop().run_in_executor(_RECEIVERS, self.add, path, data)

    def add(self, path: str, data: bytes) -> None:
        """Append a chunk to asset `path`; InvalidArgument for an unlisted or oversized one."""
        incoming = self._assets.get(path)
        if incoming is None:
            raise InvalidArgument(
                f"artifact chunk for {path!r}, which the manifest does not list; "
                "send only the files named in manifest.assets",
                field="chunk.path",
            )
        incoming.size += len(data)
        self._total += len(data)
        if incoming.size > incoming.expected_size:
            raise InvalidArgument(
                f"asset {path!r} is larger than the {incoming.expected_size} bytes its manifest "
                "states; rebuild the manifest from the files",
                field="chunk.data",
            )
        if self._total > self._max_total:
            raise InvalidArgument(
                f"the upload exceeds the server's limit of {self._max_total} bytes per version",
                field="chunk.data",
            )
        incoming.digest.update(data)
        incoming.file.write(data)

    def finish(self) -> dict[str, ReceivedAsset]:
        """Every asset, complete and matching its manifest entry, by path.

        Raises InvalidArgument naming the first asset that is missing, short or
        whose hash differs.
        """
        received: dict[str, ReceivedAsset] = {}
        for path, incoming in self._assets.items():
            if incoming.size != incoming.expected_size:
                raise InvalidArgument(
                    f"asset {path!r} arrived with {incoming.size} of {incoming.expected_size} "
                    "bytes; the stream was cut short or the file changed: publish again",
                    field="chunk.data",
                )
            digest = incoming.digest.hexdigest()
            if digest != incoming.expected_sha256:
                raise InvalidArgument(
                    f"asset {path!r} has sha256 {digest}, but the manifest says "
                    f"{incoming.expected_sha256}; rebuild the manifest from the files",
                    field="chunk.data",
                )
            received[path] = ReceivedAsset(path, digest, incoming.size, incoming.file)
        return received

    def close(self) -> None:
        for incoming in self._assets.values():
            incoming.file.close()
