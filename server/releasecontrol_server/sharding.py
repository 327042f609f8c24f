"""The committed sharded index: what the origin's index files are, and their next version.

`ShardedIndex` keeps, in memory, every feature's releases.json pin by hash bin,
every shard's signed file and the top level's. A batch of changes gives it the
new releases.json pins; `next_files` signs the shards of the bins they touch and
a top level pinning them (host protocol v2: three small files per change,
whatever the feature count); once committed, `apply` makes them the index.
`rebuild` signs every shard and the top level again: after a key rotation, a
new root, or the upgrade from a v1 origin.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from releasecontrol.index import REMOTE_INDEX_PATH
from releasecontrol.shards import DEFAULT_BITS, Pin, bin_of, shard_path
from releasecontrol_server.signer import PinMembers, Signer, pin_of
from releasecontrol_server.store import SignedFile

__all__ = ["ShardedIndex"]


class ShardedIndex:
    """Every feature's releases.json pin by bin, and the signed shards and top level.

    Not thread-safe: the controller's one writer changes it, between commits.
    """

    def __init__(
        self,
        pins: Mapping[str, Pin],
        files: Mapping[str, SignedFile],
        *,
        bits: int = DEFAULT_BITS,
    ) -> None:
        """`pins`: feature id -> its committed releases.json pin; `files`: the committed index
        files by path (shards of this `bits` and remote-index.json; others are ignored)."""
        self.bits = bits
        self._bins: dict[str, dict[str, Pin]] = {}
        for feature_id, pin in pins.items():
            self._bins.setdefault(bin_of(feature_id, bits), {})[feature_id] = pin
        self._shards: dict[str, SignedFile] = {}
        for name in self._bins:
            file = files.get(shard_path(bits, name))
            if file is not None:
                self._shards[name] = file
        # Kept encoded beside: every change pins them all again.
        self._shard_pins = PinMembers(
            bits, {name: pin_of(file) for name, file in self._shards.items()}
        )
        self.top: SignedFile | None = files.get(REMOTE_INDEX_PATH)

    @property
    def sequence(self) -> int:
        """The committed top level's sequence (0: none yet)."""
        return 0 if self.top is None else self.top.sequence

    @property
    def complete(self) -> bool:
        """Whether every non-empty bin has a committed shard and there is a top level."""
        return self.top is not None and set(self._shards) == set(self._bins)

    def sha256_of(self, path: str) -> str | None:
        """The SHA-256 of the committed index file or releases.json at origin `path`, from
        memory; None for another path (or one not committed)."""
        if path == REMOTE_INDEX_PATH:
            return None if self.top is None else self.top.sha256
        parts = path.split("/")
        if len(parts) == 3 and parts[0] == "features" and parts[2] == "releases.json":
            pin = self._bins.get(bin_of(parts[1], self.bits), {}).get(parts[1])
            return None if pin is None else pin.sha256
        if len(parts) == 3 and parts[0] == "index" and parts[1] == str(self.bits):
            shard = self._shards.get(parts[2].removesuffix(".json"))
            return None if shard is None else shard.sha256
        return None

    def shard(self, path: str) -> SignedFile | None:
        """The committed shard at origin `path`, if any."""
        parts = path.split("/")
        if len(parts) != 3 or parts[0] != "index" or parts[1] != str(self.bits):
            return None
        return self._shards.get(parts[2].removesuffix(".json"))

    def shard_files(self) -> list[SignedFile]:
        return [self._shards[name] for name in sorted(self._shards)]

    def next_files(
        self,
        changed: Mapping[str, Pin],
        *,
        signer: Signer,
        root_version: int,
        now: datetime,
        sequence: int | None = None,
    ) -> list[SignedFile]:
        """The shards of the bins `changed` (feature id -> new releases.json pin) touches, and a
        top level pinning them, signed at `sequence` (default: the committed one + 1)."""
        sequence = self.sequence + 1 if sequence is None else sequence
        touched: dict[str, dict[str, Pin]] = {}
        for feature_id, pin in changed.items():
            name = bin_of(feature_id, self.bits)
            if name not in touched:
                touched[name] = dict(self._bins.get(name, {}))
            touched[name][feature_id] = pin
        shards = {
            name: signer.shard_file(self.bits, name, features, sequence, now)
            for name, features in sorted(touched.items())
        }
        pins = self._shard_pins.with_changes({name: pin_of(file) for name, file in shards.items()})
        top = signer.top_file(sequence, root_version, self.bits, pins, now)
        return [*shards.values(), top]

    def rebuild(
        self,
        *,
        signer: Signer,
        root_version: int,
        now: datetime,
        pins: Mapping[str, Pin] | None = None,
        sequence: int | None = None,
    ) -> list[SignedFile]:
        """Every shard and the top level signed again (with `pins` replacing the committed ones
        where given), at `sequence` (default: the committed one + 1)."""
        everything = {fid: pin for features in self._bins.values() for fid, pin in features.items()}
        everything.update(pins or {})
        sequence = self.sequence + 1 if sequence is None else sequence
        fresh = ShardedIndex({}, {}, bits=self.bits)
        return fresh.next_files(
            everything, signer=signer, root_version=root_version, now=now, sequence=sequence
        )

    def apply(self, changed: Mapping[str, Pin], files: list[SignedFile]) -> None:
        """Make the committed `changed` pins and index `files` (from `next_files` or `rebuild`)
        the index."""
        for feature_id, pin in changed.items():
            self._bins.setdefault(bin_of(feature_id, self.bits), {})[feature_id] = pin
        shard_pins = {}
        for file in files:
            if file.path == REMOTE_INDEX_PATH:
                self.top = file
            else:
                name = file.path.rsplit("/", 1)[1].removesuffix(".json")
                self._shards[name] = file
                shard_pins[name] = pin_of(file)
        self._shard_pins = self._shard_pins.with_changes(shard_pins)
