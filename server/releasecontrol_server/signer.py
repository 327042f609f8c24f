"""Turns committed state into signed index files: releases.json and remote-index.json.

Every signed index is a pure function of the committed state, the keys and the
time, so it can always be rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    CanarySoak,
    FeatureEntry,
    ReleasesIndex,
    RemoteIndex,
    VersionEntry,
    releases_path,
    sign,
)
from releasecontrol.manifest import sha256_hex
from releasecontrol.trust import SigningKey
from releasecontrol_server.releases import FeatureState
from releasecontrol_server.store import SignedFile


class Signer:
    """Signs index files with every configured key; indices expire after `expiry_seconds`."""

    def __init__(self, keys: Sequence[SigningKey], expiry_seconds: int) -> None:
        if not keys:
            raise ValueError("at least one signing key is needed")
        self._keys = tuple(keys)
        self._expiry = timedelta(seconds=expiry_seconds)

    @property
    def keyids(self) -> tuple[str, ...]:
        return tuple(k.keyid for k in self._keys)

    def releases_index(self, state: FeatureState, now: datetime) -> ReleasesIndex:
        """The releases.json model of `state`, issued at `now`."""
        canary = state.canary
        return ReleasesIndex(
            feature_id=state.feature_id,
            sequence=state.sequence,
            stable=state.stable,
            canary=canary.version if canary else None,
            canary_soak=(
                CanarySoak(started_at=canary.soak_started_at, duration_seconds=canary.soak_seconds)
                if canary
                else None
            ),
            versions=tuple(
                VersionEntry(v.version, v.manifest_sha256, v.published_at) for v in state.versions
            ),
            issued_at=now,
            expires_at=now + self._expiry,
        )

    def releases_file(self, state: FeatureState, now: datetime) -> SignedFile:
        """The signed bytes of the feature's releases.json."""
        content = sign(self.releases_index(state, now).to_dict(), self._keys).to_bytes()
        return SignedFile(
            path=releases_path(state.feature_id),
            content=content,
            sha256=sha256_hex(content),
            sequence=state.sequence,
        )

    def remote_index_file(
        self, sequence: int, features: Mapping[str, FeatureEntry], now: datetime
    ) -> SignedFile:
        """The signed bytes of remote-index.json naming every feature's releases.json."""
        index = RemoteIndex(
            sequence=sequence,
            features=dict(features),
            issued_at=now,
            expires_at=now + self._expiry,
        )
        content = sign(index.to_dict(), self._keys).to_bytes()
        return SignedFile(
            path=REMOTE_INDEX_PATH, content=content, sha256=sha256_hex(content), sequence=sequence
        )


def feature_entry(file: SignedFile) -> FeatureEntry:
    """How remote-index.json names one feature's releases.json (relative to the index)."""
    return FeatureEntry(url=file.path, sha256=file.sha256, sequence=file.sequence)
