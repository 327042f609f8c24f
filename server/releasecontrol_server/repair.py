"""What the CDN origin serves, compared with what the control plane signed, and restored.

Hosts refuse a file that is missing, truncated, garbled or older than what its
parent pins, and keep their last good state; the origin must not stay that
way. `OriginCheck` reads the files hosts read (the roots, remote-index.json,
the shards, each feature's releases.json and its manifests) and compares each
with the bytes committed: from memory by SHA-256 (the writer's index pins) for
the index files, by the recorded hash for manifests. With `repair`, it writes
back each one that differs and logs it. Who calls it and when (at start, on a
hot refresh, periodically) is `control.ReleaseController`'s and
`audit.OriginAuditor`'s business; a check that repairs runs on the write
thread only, a check that only looks may run anywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from releasecontrol.errors import Unavailable
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.manifest import manifest_path, sha256_hex
from releasecontrol.shards import bin_of, shard_path
from releasecontrol_server.releases import FeatureState, PublishedVersion
from releasecontrol_server.store import Store
from releasecontrol_server.writer import Writer, signed_sequence

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManifestCheck:
    """One published version's manifest as found on the origin."""

    feature_id: str
    version: str
    restored: bool
    detail: str
    matches: bool = True
    """The origin held the recorded manifest."""


@dataclass(frozen=True)
class IndexCheck:
    """One index file hosts read, as found on the origin."""

    path: str
    restored: bool
    detail: str
    matches: bool = True
    """The origin held what was signed (or its newest write is pending)."""


@dataclass(frozen=True)
class Refreshed:
    """What a check found: manifests, index files, and how many watchers were told."""

    manifests: list[ManifestCheck]
    index: list[IndexCheck]
    notified: int = 0


class OriginCheck:
    """Compares the origin with what `writer` committed, reading recorded bytes from `store`
    (the writer's own store on the write thread; a read-only connection elsewhere)."""

    def __init__(self, writer: Writer, store: Store) -> None:
        self._writer = writer
        self._store = store

    def features(
        self, states: Sequence[FeatureState], *, live_only: bool, repair: bool
    ) -> Refreshed:
        """The manifests (with `live_only`, of stable and canary versions only) and the index
        files of `states` on the origin, each compared with what was recorded and, with
        `repair` (on the write thread only), written back where it differs.

        Raises Unavailable when the origin cannot be read or written.
        """
        checks: list[ManifestCheck] = []
        try:
            for state in states:
                live = {state.stable, state.canary.version if state.canary else None}
                for version in state.versions:
                    if not live_only or version.version in live:
                        checks.append(self._manifest(state.feature_id, version, repair))
            ids = [s.feature_id for s in states]
            index = [self._index_file(path, repair) for path in self._index_paths(ids)]
        except OSError as exc:
            raise Unavailable(
                f"the CDN origin could not be read or written while checking it ({exc}); "
                "retry when it is reachable"
            ) from exc
        return Refreshed(checks, index)

    def shared_index_files(self) -> list[str]:
        """On the write thread: the roots, every shard and the top level on the origin,
        repaired where they differ; returns the paths restored (none when the origin cannot
        be reached: the auditor tries again)."""
        index = self._writer.index
        if index.top is None:
            return []
        paths = [
            *(r.path for r in self._writer.roots),
            *(f.path for f in index.shard_files()),
            REMOTE_INDEX_PATH,
        ]
        try:
            return [c.path for c in (self._index_file(p, True) for p in paths) if c.restored]
        except OSError as exc:
            log.warning("origin not checked at start: %s", exc)
            return []

    def _index_paths(self, feature_ids: Sequence[str]) -> list[str]:
        """What a host needing `feature_ids` reads of the index, in the order pins point."""
        index = self._writer.index
        if index.top is None:
            return []
        shards = sorted({shard_path(index.bits, bin_of(f, index.bits)) for f in feature_ids})
        return [
            *(r.path for r in self._writer.roots),
            *(releases_path(f) for f in feature_ids),
            *shards,
            REMOTE_INDEX_PATH,
        ]

    def _index_file(self, path: str, repair: bool) -> IndexCheck:
        # What was signed is known by its SHA-256 in memory (the index's pins), so an origin
        # that holds it costs one read and one hash; the bytes come from the store only when
        # it differs.
        writer = self._writer
        roots = {r.path: r for r in writer.roots}
        expected = writer.index.sha256_of(path) or getattr(roots.get(path), "sha256", None)
        on_origin = writer.origin.read(path)
        if expected is not None and on_origin is not None and sha256_hex(on_origin) == expected:
            return IndexCheck(path, False, "the origin holds what was signed")
        committed = (
            roots.get(path)
            or (writer.index.top if path == REMOTE_INDEX_PATH else None)
            or self._store.signed_file(path)
        )
        if committed is None:
            return IndexCheck(path, False, "not signed yet")
        if on_origin == committed.content:
            return IndexCheck(path, False, "the origin holds what was signed")
        found = "missing" if on_origin is None else f"sha256 {sha256_hex(on_origin)[:12]}…"
        if writer.unmarked.get(path) == committed.sha256:
            return IndexCheck(path, False, f"origin copy is {found}; the newest write is pending")
        if on_origin is not None:
            ahead = signed_sequence(on_origin, writer.signer, path)
            if ahead is not None and ahead >= committed.sequence:
                # Never back: hosts that read it refuse anything older. A restored database
                # is signed again above it by `releasectl origin rebuild`.
                log.warning(
                    "origin file %s (sequence %d) is ahead of the store (sequence %d); not "
                    "replaced: another writer, or a restored database (run `releasectl origin "
                    "rebuild`)",
                    path,
                    ahead,
                    committed.sequence,
                )
                return IndexCheck(
                    path,
                    False,
                    f"origin copy is ahead (sequence {ahead}, the store's {committed.sequence}): "
                    "a restored database? `releasectl origin rebuild` signs the store's state "
                    "above it",
                    matches=False,
                )
        if not repair:
            return IndexCheck(path, False, f"origin copy is {found}", matches=False)
        writer.origin.write(path, committed.content)
        log.warning("origin repaired: restored index file path=%s found=%s", path, found)
        return IndexCheck(path, True, f"origin copy was {found}; restored the signed file")

    def _manifest(self, feature_id: str, version: PublishedVersion, repair: bool) -> ManifestCheck:
        path = manifest_path(feature_id, version.version)
        on_origin = self._writer.origin.read(path)
        if on_origin is not None and sha256_hex(on_origin) == version.manifest_sha256:
            return ManifestCheck(feature_id, version.version, False, "matches the recorded hash")
        found = "missing" if on_origin is None else f"sha256 {sha256_hex(on_origin)[:12]}…"
        if not repair:
            return ManifestCheck(
                feature_id, version.version, False, f"origin copy is {found}", matches=False
            )
        recorded = self._store.get_manifest(feature_id, version.version)
        if recorded is None or sha256_hex(recorded) != version.manifest_sha256:
            raise Unavailable(
                f"the recorded manifest of {feature_id} {version.version} is missing from the "
                "store; restore the database from a backup"
            )
        self._writer.origin.write(path, recorded)
        log.warning("origin repaired: restored manifest path=%s found=%s", path, found)
        return ManifestCheck(
            feature_id,
            version.version,
            True,
            f"origin copy was {found}; restored the recorded manifest",
        )
