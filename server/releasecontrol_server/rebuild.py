"""An origin rebuilt from what the control plane keeps (`releasectl origin rebuild`).

A lost, emptied or new CDN origin gets back everything hosts read, in an order
that never shows a host a pin to a file that is not there yet: every artifact
(streamed from the artifact store), every manifest (from the database), then
the index: the roots, each releases.json, the shards, remote-index.json last.
By default a file the origin holds already is left alone (an artifact present
by name, a manifest or index file with the same bytes); `force` writes all.

Before that, `ReleaseController.rebuild_origin` reconciles: where the origin
serves higher sequences than the store (a database restored from an older
backup), the features and the top level are signed again above them
(`writer.Writer.reconcile`), since hosts refuse to go back.

An artifact that neither the artifact store nor the origin holds (published
before the control plane kept artifacts, then lost from the origin) cannot be
rebuilt: it is reported, by hash and path, and the rebuild says so. One the
store lacks but the origin still serves is taken into the store on the way, its
hash checked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from releasecontrol.errors import FailedPrecondition
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.manifest import artifact_path, manifest_path
from releasecontrol_server.artifacts import ArtifactStore
from releasecontrol_server.origin import Origin
from releasecontrol_server.releases import FeatureState
from releasecontrol_server.store import SignedFile, Store
from releasecontrol_server.writer import Writer

__all__ = ["Progress", "Rebuild"]

log = logging.getLogger(__name__)

_REPORT_SECONDS = 0.1
"""Progress is reported at most this often (and at the end of each stage)."""
_PIECE = 1024 * 1024


@dataclass(frozen=True)
class Progress:
    """Where a rebuild is: the stage, files handled and written, the last path."""

    stage: str
    done: int = 0
    total: int = 0
    written: int = 0
    bytes_written: int = 0
    path: str = ""
    reconciled: tuple[str, ...] = ()
    """Features signed again above the origin's sequences."""
    missing: tuple[str, ...] = ()
    """Artifacts neither kept nor on the origin: "<sha256> <asset path>"."""


@dataclass(frozen=True)
class _Artifact:
    sha256: str
    path: str
    """Its path in the manifest (the origin path takes its extension)."""
    size: int


class Rebuild:
    """One rebuild: `plan`, then `artifacts_and_manifests` (on a thread of its own: reads
    the store through `store`, a read-only connection), then `index` (on the write thread).
    `report` is called with each `Progress`, from those threads."""

    def __init__(
        self,
        *,
        origin: Origin,
        artifacts: ArtifactStore,
        store: Store,
        report: Callable[[Progress], None],
        force: bool = False,
    ) -> None:
        self._origin = origin
        self._artifacts = artifacts
        self._store = store
        self._report = report
        self._force = force
        self._manifests: list[tuple[str, bytes]] = []
        self._files: list[_Artifact] = []
        self._index_count = 0
        self.progress = Progress("plan")
        self._reported = 0.0

    def plan(self, states: Sequence[FeatureState], index_count: int) -> None:
        """What to write: every version's manifest and the artifacts it lists (each once);
        `index_count` index files after them."""
        seen: set[str] = set()
        for state in states:
            for version in state.versions:
                content = self._store.get_manifest(state.feature_id, version.version)
                if content is None:
                    raise FailedPrecondition(
                        f"the manifest of {state.feature_id} {version.version} is missing "
                        "from the store; restore the database from a backup"
                    )
                self._manifests.append((manifest_path(state.feature_id, version.version), content))
                for asset in json.loads(content).get("assets", []):
                    where = artifact_path(asset["sha256"], asset["path"])
                    if where not in seen:
                        seen.add(where)
                        self._files.append(
                            _Artifact(asset["sha256"], asset["path"], int(asset["size"]))
                        )
        self._index_count = index_count
        total = len(self._files) + len(self._manifests) + index_count
        self._tell(replace(self.progress, stage="artifacts", total=total), final=True)

    def artifacts_and_manifests(self) -> None:
        """Every planned artifact, then every manifest, onto the origin. Raises OSError when
        the origin or the artifact store fails."""
        missing: list[str] = []
        for artifact in self._files:
            path = artifact_path(artifact.sha256, artifact.path)
            written = self._artifact(artifact, path)
            if written is None:
                missing.append(f"{artifact.sha256} {artifact.path}")
                log.warning("origin rebuild: artifact %s is neither kept nor on the origin", path)
            self._step(path, written or 0, missing=tuple(missing))
        self._tell(replace(self.progress, stage="manifests"), final=True)
        for path, content in self._manifests:
            written = self._force or self._origin.read(path) != content
            if written:
                self._origin.write(path, content)
            self._step(path, len(content) if written else 0)
        self._tell(replace(self.progress, stage="index"), final=True)

    def _artifact(self, artifact: _Artifact, path: str) -> int | None:
        """Put one artifact on the origin unless there (or `force`); the bytes written, 0 when
        none were, None when nobody holds it."""
        if not self._artifacts.has(artifact.sha256):
            self._keep_from_origin(artifact, path)
        if not self._force and self._origin.exists(path):
            return 0
        source = self._artifacts.open(artifact.sha256)
        if source is None:
            return None
        with source:
            self._origin.write_file(path, source)
        return artifact.size

    def _keep_from_origin(self, artifact: _Artifact, path: str) -> None:
        """An artifact the store lacks but the origin serves with the right hash: kept."""
        source = self._origin.open(path)
        if source is None:
            return
        with source, tempfile.SpooledTemporaryFile(_PIECE) as copy:
            digest = hashlib.sha256()
            while piece := source.read(_PIECE):
                digest.update(piece)
                copy.write(piece)
            if digest.hexdigest() != artifact.sha256:
                log.warning("origin rebuild: the origin's %s does not match its hash", path)
                return
            self._artifacts.keep(artifact.sha256, copy)
            log.info("origin rebuild: kept %s from the origin in the artifact store", path)

    def index(self, writer: Writer) -> None:
        """On the write thread: the outbox written, then every index file where the origin
        differs (or all, with `force`): roots, each releases.json, the shards, the top level
        last. Raises OSError when the origin fails."""
        if not writer.flush():
            raise OSError("the origin refused the pending writes; see the server log")
        files: list[SignedFile] = list(writer.roots)
        for feature_id in sorted(writer.states):
            file = writer.store.signed_file(releases_path(feature_id))
            if file is not None:
                files.append(file)
        files += writer.index.shard_files()
        if writer.index.top is not None:
            files.append(writer.index.top)
        self.progress = replace(self.progress, total=self.progress.total - self._index_count)
        self.progress = replace(self.progress, total=self.progress.total + len(files))
        for file in files:
            assert file.path != REMOTE_INDEX_PATH or file is files[-1]
            written = self._force or self._origin.read(file.path) != file.content
            if written:
                self._origin.write(file.path, file.content)
            self._step(file.path, len(file.content) if written else 0)
        self._tell(replace(self.progress, stage="done"), final=True)

    def _step(self, path: str, written: int, **more: object) -> None:
        self._tell(
            replace(
                self.progress,
                done=self.progress.done + 1,
                written=self.progress.written + (1 if written else 0),
                bytes_written=self.progress.bytes_written + written,
                path=path,
                **more,  # type: ignore[arg-type]
            )
        )

    def _tell(self, progress: Progress, *, final: bool = False) -> None:
        self.progress = progress
        now = time.monotonic()
        if final or now - self._reported >= _REPORT_SECONDS:
            self._reported = now
            self._report(progress)
