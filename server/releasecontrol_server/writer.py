"""The write path: how a change reaches the store and the origin, in the order it happens.

Everything here waits on disk, the origin or S3, so all of it runs in one thread
of its own (the write thread), one batch of changes at a time; the event loop
only queues changes, hands a batch over, and answers when it comes back
(`control.ReleaseController`). For each batch, `Writer.write_batch`:

1. prepares each change in arrival order: a request id seen before is answered
   again (never applied twice); the state machine (`releases.apply`) decides on
   top of the batch so far; the origin is checked not to be ahead of the store;
   its releases.json is signed (a published version's artifacts are in the
   artifact store and on the origin already: `control.ReleaseController.change`);
2. signs the shard of every bin the batch touched and one remote-index.json
   (`sharding.ShardedIndex`), and writes each new file beside its place on the
   origin (`FilesystemOrigin.stage`, not yet synced);
3. commits the states, audit records, signed files, the outbox, what each
   request id did, and the files the last syncs made durable (marked written)
   in ONE store transaction (group commit: one sync for the batch);
4. renames the files into place on the origin in the order pins point
   (releases.json, shards, remote-index.json last; `flush`; on Linux a swap of
   names that leaves the replaced file to remove, `FilesystemOrigin.publish`),
   then hands them to the sync thread, which removes the replaced files and
   fsyncs the new ones and their folders in the background, with what is renamed
   in the next SYNC_DELAY_SECONDS (one fsync per file and folder); what it synced
   is marked written with the next commit (or `settle`).

A change is acknowledged only once the origin serves it. If the origin write
fails, the change stands (it committed), the caller hears exactly that, and the
outbox is written again later; a process killed (or a machine that lost power)
after step 3 writes the outbox at its next start: the outbox keeps every file
until it was synced, so the origin never misses a committed change and never
goes back.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, runtime_checkable

from releasecontrol.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    OriginPending,
    Unavailable,
    VerificationError,
)
from releasecontrol.files import fsync_path
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    SCHEMA_VERSION,
    Envelope,
    check_signatures,
    releases_path,
)
from releasecontrol.manifest import manifest_path, sha256_hex
from releasecontrol.shards import Pin, bin_of, shard_path
from releasecontrol_server import releases
from releasecontrol_server.origin import Origin
from releasecontrol_server.origin.filesystem import FilesystemOrigin, Staged
from releasecontrol_server.releases import ChangeMeta, Command, FeatureState
from releasecontrol_server.sharding import ShardedIndex
from releasecontrol_server.signer import Signer, pin_of
from releasecontrol_server.store import (
    Change,
    FileDigest,
    SignedFile,
    Store,
    StoredTransition,
)

log = logging.getLogger(__name__)

# Threads writing new files beside their place on the origin while the store commits.
_STAGE_THREADS = 3
SYNC_DELAY_SECONDS = 0.05
"""How long files renamed into place wait before they are synced, so that the changes of that
while share one fsync per file and folder (remote-index.json and its folder are in every
change). Only marking them written waits: a change is durable in the store when it is
acknowledged, and its files are in place (served) at once."""
REQUEST_IDS_KEPT = timedelta(days=7)
"""How long a request_id is answered alike: far longer than any retry."""


_Renamed = tuple[tuple[str, str], Path, Path | None]
"""A file renamed into place, not yet synced: its (path, sha256), where it is, and the file
it displaced, still to be removed (None: none)."""


@runtime_checkable
class _Staging(Protocol):
    """An origin that can write a file's bytes first and put it in place later."""

    def stage(self, path: str, data: bytes, *, sync: bool = True) -> Staged: ...

    def publish(self, staged: Staged, *, sync: bool = True) -> Path | None: ...

    def remove_displaced(self, displaced: Path) -> None: ...

    def discard(self, staged: Staged) -> None: ...

    def unchanged_since_written(self, path: str) -> bool: ...


class WriteObserver(Protocol):
    """Told, on the write thread, how committed files reach the origin (the metrics)."""

    def origin_published(self, seconds: float) -> None:
        """A committed batch's files are all in place on the origin, `seconds` after the
        commit."""

    def origin_write_failed(self) -> None:
        """An attempt to write committed files to the origin failed (they stay owed)."""


@dataclass(frozen=True)
class Applied:
    """What a change request did: the feature afterwards and the audit record, if any."""

    state: FeatureState
    transition: StoredTransition | None
    why_unchanged: str = ""


@dataclass(frozen=True)
class Request:
    """A change as a caller asked it (the controller keeps who waits for its answer)."""

    feature_id: str
    command: Command
    meta: ChangeMeta
    rpc: str
    request_id: str
    manifest: bytes | None
    canary_loads: int = 0
    """The running canary's loads reported so far (a soak by exposure counts them); observed,
    not asked, so not part of what a request id is bound to."""


@dataclass(frozen=True)
class Committed:
    """A change of the batch that committed: what the loop puts in its snapshot and tells."""

    request: Request
    change: Change
    transition: StoredTransition


@dataclass
class Followed:
    """What other processes on the database (replicas) committed since this writer last
    looked (`Writer.follow`): for the loop's snapshot and watchers."""

    changes: list[tuple[StoredTransition, FeatureState]] = field(default_factory=list)
    """Each change, in commit order, with its feature's state afterwards."""
    files: list[SignedFile] = field(default_factory=list)
    """The committed files memory now holds for them (releases.json, shards, top level)."""


@dataclass
class Batch:
    """What `write_batch` did with a batch: an answer or an error per request, in order."""

    answers: dict[int, Applied] = field(default_factory=dict)
    """Index in the batch -> what it did (a repeat, nothing to change, or committed)."""
    errors: dict[int, BaseException] = field(default_factory=dict)
    like: dict[int, int] = field(default_factory=dict)
    """Index -> index of the earlier request with the same request_id: answered alike."""
    committed: dict[int, Committed] = field(default_factory=dict)
    """Index -> the change it committed, in arrival order."""
    files: list[SignedFile] = field(default_factory=list)
    """Every signed file the batch committed (releases.json, manifests, index files)."""
    flushed: bool = True
    """The origin has everything that committed."""


_RECONCILE = Request(
    feature_id="",
    command=releases.Reconcile(0),
    meta=ChangeMeta(actor=""),
    rpc="RebuildOrigin",
    request_id="",
    manifest=None,
)
"""What a reconcile's changes were asked by (nobody waits on their answers)."""


def request_key(request: Request) -> str:
    """What a request_id is bound to: the RPC and a digest of everything the request asks.

    A retry carries the same key; the same id on another request (another feature,
    version, reason…) is refused instead of being answered with the first one's result.
    """
    asked = repr(
        (
            request.feature_id,
            request.command,
            request.meta.actor,
            request.meta.reason,
            request.meta.ticket,
            request.meta.expected_sequence,
        )
    )
    return f"{request.rpc} {hashlib.sha256(asked.encode()).hexdigest()[:32]}"


def _request_id_reused(request_id: str, first_key: str) -> InvalidArgument:
    first_rpc = first_key.split(" ", 1)[0]
    return InvalidArgument(
        f"request_id {request_id!r} was already used for a different {first_rpc} request; "
        "use a new request_id for a different request (a retry must repeat the request exactly)",
        field="request_id",
    )


class Writer:
    """The write path (see the module docstring). Only the write thread calls it, one call at
    a time; `pending_count` may be read from anywhere."""

    def __init__(
        self,
        *,
        store: Store,
        origin: Origin,
        signer: Signer,
        roots: Sequence[SignedFile] = (),
        root_version: int = 1,
    ) -> None:
        self.store = store
        self.origin = origin
        self.signer = signer
        self.roots = tuple(roots)
        self.root_version = root_version
        self.index = ShardedIndex({}, {})
        # The committed state of every feature, and the global sequence of the last commit:
        # the write thread's own; the event loop keeps its copy of what was answered.
        self.states: dict[str, FeatureState] = {}
        self.global_sequence = 0
        # What the origin may lack, as the store's outbox says it (the writer is its only
        # writer, so memory follows it): each committed file not yet marked written, path ->
        # sha256. Written by the write thread, read by anyone (a dict read is atomic).
        self.unmarked: dict[str, str] = {}
        self.followed_root_version = 0
        """The root the top level another replica committed was signed under (`follow`): above
        this process's, its keyring is behind a rotation (`_keys_behind`)."""
        self.observer: WriteObserver | None = None
        """Told how committed files reach the origin; set before the first batch."""
        self._staging = origin if isinstance(origin, _Staging) else None
        # Renamed into place, not yet synced: (path, sha256), where it is, and the file it
        # displaced, to remove (`FilesystemOrigin.publish`); then the syncs running in the
        # background (each: the keys synced, the keys that failed); then the keys synced and
        # not yet marked written in the store (the next commit does).
        self._unsynced: list[_Renamed] = []
        self._syncing: list[Future[tuple[list[tuple[str, str]], list[tuple[str, str]]]]] = []
        # What the sync queued and not yet started takes (None: none is queued); `_sync_now`
        # cuts its wait short (`settle`, `close`).
        self._sync_next: list[_Renamed] | None = None
        self._sync_lock = threading.Lock()
        self._sync_now = threading.Event()
        self._marks: list[tuple[str, str]] = []
        self._forgot_at: datetime | None = None
        self._sync_thread = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-sync")
        self._stage_pool = ThreadPoolExecutor(
            _STAGE_THREADS, thread_name_prefix="releasecontrol-stage"
        )

    def close(self) -> None:
        self._sync_now.set()
        self._sync_thread.shutdown(wait=True)
        self._stage_pool.shutdown(wait=True)

    def pending_count(self) -> int:
        """How many committed files the origin may lack (the store's outbox, from memory)."""
        return len(self.unmarked)

    # -- start ---------------------------------------------------------------------------------

    def load(self) -> list[str]:
        """What the store holds: every feature's state, the index and the outbox, read while
        the store's integrity check runs, and then that check passed (ConfigError naming the
        damage if not; everything after writes). Returns the staging files a killed process
        left on the origin, which are removed."""
        try:
            self._load()
        except self.store.engine.errors:
            self.store.checked()  # a damaged file: the check's sentence, not the driver's
            raise
        self.store.checked()
        if isinstance(self.origin, FilesystemOrigin):
            return self.origin.remove_leftovers()
        return []

    def _load(self) -> None:
        self.global_sequence = self.store.global_sequence()
        self.states = {}
        after = ""
        while page := self.store.list_features(after=after, limit=1000):
            self.states.update((state.feature_id, state) for state in page)
            after = page[-1].feature_id
        pins = {
            feature_id: Pin(d.sha256, d.length, d.sequence)
            for feature_id, d in self.store.releases_digests().items()
        }
        self.index = ShardedIndex(pins, self.store.index_files())
        self.unmarked = {d.path: d.sha256 for d in self.store.pending_digests()}

    def follow(self) -> Followed:
        """Bring memory (states, index, outbox) up to what the database holds when another
        process committed since this writer last committed or looked: replicas on one
        PostgreSQL. Returns what they committed, in order. One query when nothing was.

        Called before every piece of write-thread work, holding the database's exclusive
        lease (nothing commits meanwhile), and by the loop's follower; it reads one moment
        of the database either way.
        """
        if not self.store.shared:
            return Followed()  # one server per SQLite file: nobody else commits
        if self.store.heads() == (self.global_sequence, self.index.sequence):
            return Followed()  # the common case: one query, no transaction
        with self.store.snapshot():
            global_sequence, top_sequence = self.store.heads()
            changes: list[tuple[StoredTransition, FeatureState | None]] = []
            while page := self.store.changes_after(
                changes[-1][0].id if changes else self.global_sequence
            ):
                changes += page
            latest = {t.record.feature_id: state for t, state in changes}
            unknown = [fid for fid, state in latest.items() if state is None]
            loaded = (
                {
                    s.feature_id: s
                    for s in self.store.list_features(only=unknown, limit=len(unknown))
                }
                if unknown
                else {}
            )
            releases = self.store.signed_files([releases_path(fid) for fid in latest])
            pins = {path.split("/")[1]: pin_of(file) for path, file in releases.items()}
            bits = self.index.bits
            shards = sorted({shard_path(bits, bin_of(fid, bits)) for fid in pins})
            index_files = list(self.store.signed_files([*shards, REMOTE_INDEX_PATH]).values())
            self.index.apply(pins, index_files)
            if self.index.sequence != top_sequence:  # index files signed again (keys, root)
                self.index = ShardedIndex(
                    {
                        fid: Pin(d.sha256, d.length, d.sequence)
                        for fid, d in self.store.releases_digests().items()
                    },
                    self.store.index_files(),
                )
                index_files = [*self.index.shard_files(), *filter(None, [self.index.top])]
            self.unmarked = {d.path: d.sha256 for d in self.store.pending_digests()}
        final = {fid: state or loaded[fid] for fid, state in latest.items()}
        top = self.index.top
        if top is not None:  # what another replica signed under; its own never exceed this
            self.followed_root_version = _root_version_of(top.content)
        self.states.update(final)
        self.global_sequence = global_sequence
        if changes:
            log.info(
                "followed %d changes other replicas committed (global_sequence %d)",
                len(changes),
                global_sequence,
            )
        return Followed(
            [(t, state or final[t.record.feature_id]) for t, state in changes],
            [*releases.values(), *index_files],
        )

    def install_keys(
        self, signer: Signer, roots: Sequence[SignedFile], root_version: int, now: datetime
    ) -> list[SignedFile]:
        """Sign with `signer` under root `root_version` from now on (a key rotation): the new
        roots committed, every index file signed again (`ensure_index`)."""
        self.signer, self.roots, self.root_version = signer, tuple(roots), root_version
        return self.ensure_index(now)

    def ensure_index(self, now: datetime) -> list[SignedFile]:
        """Commit the roots the store lacks, and every index file again when the top level
        was not signed under the current root by the current keys (a rotation, or an origin
        of host protocol v1). Returns the files committed."""
        stored = self.store.index_files()
        self._refuse_foreign_roots(stored)
        files = [r for r in self.roots if getattr(stored.get(r.path), "sha256", None) != r.sha256]
        top = self.index.top
        stale = top is not None and not self._current(top)
        changed: dict[str, Pin] = {}
        index_files: list[SignedFile] = []
        if stale or (top is None and self.states) or (top and not self.index.complete):
            releases_files = self._resign_releases(now)
            changed = {f.path.split("/")[1]: pin_of(f) for f in releases_files}
            index_files = self.index.rebuild(
                signer=self.signer,
                root_version=self.root_version,
                now=now,
                pins=changed,
                sequence=max(self.index.sequence, self.global_sequence) + 1,
            )
            files += [*releases_files, *index_files]
            log.info(
                "index signed again root_version=%d releases=%d shards=%d sequence=%d",
                self.root_version,
                len(releases_files),
                len(index_files) - 1,
                index_files[-1].sequence,
            )
        if not files:
            return []
        self.store.commit_many([], index_files=files)
        for file in files:
            self.unmarked[file.path] = file.sha256
        self.index.apply(changed, index_files)
        return files

    def _refuse_foreign_roots(self, stored: Mapping[str, SignedFile]) -> None:
        """Refuse a database whose roots are not ours: another cluster's signing keys (two
        clusters on one database), or a newer root than this process was given (a replica
        started with a keyring from before a rotation)."""
        ours = {root.path: root for root in self.roots}
        for path, file in stored.items():
            if not path.startswith("roots/"):
                continue
            mine = ours.get(path)
            if mine is None:
                raise ConfigError(
                    f"the database {self.store.where} holds {path}, a root newer than this "
                    f"server's (root {self.root_version}): its keys were rotated; give this "
                    "server the current keyring (signing keys and root_dir) and start it again"
                )
            if mine.sha256 != file.sha256:
                raise ConfigError(
                    f"the database {self.store.where} belongs to a control plane with other "
                    f"signing keys ({path} differs from this server's): two clusters must not "
                    "share a database; point database_url at this cluster's own, or give this "
                    "server that cluster's keyring"
                )

    def _keys_behind(self) -> FailedPrecondition | None:
        """Why this process must not sign, when the committed top level is signed under a newer
        root than its keyring's: another replica's keys were rotated and this one's keyring
        not yet (hosts that saw the newer root may refuse what this one signs). The key
        watcher installs the new keyring when its files change (`install_keys`)."""
        cluster = self.followed_root_version
        if cluster <= self.root_version:
            return None
        return FailedPrecondition(
            f"this replica signs under root {self.root_version}, but the cluster signs under "
            f"root {cluster} (its keys were rotated): give this replica the current keyring "
            "(signing keys and root_dir; it is picked up without a restart), then retry"
        )

    def _current(self, file: SignedFile) -> bool:
        """Whether a stored top level is signed by our keys under the current root."""
        try:
            body = Envelope.from_bytes(file.content).signed
        except VerificationError:
            return False
        return body.get("root_version") == self.root_version and self.signer.signed_by_us(
            file.content
        )

    def _resign_releases(self, now: datetime) -> list[SignedFile]:
        """Every releases.json not signed by our keys, signed again (the same body at the same
        sequence; a v1 one rebuilt as schema 2 at the same sequence)."""
        out: list[SignedFile] = []
        for feature_id, state in sorted(self.states.items()):
            file = self.store.signed_file(releases_path(feature_id))
            if file is None:
                continue
            try:
                schema = Envelope.from_bytes(file.content).signed.get("schema_version")
            except VerificationError:
                schema = None
            if schema != SCHEMA_VERSION:
                out.append(self.signer.releases_file(state, now))
            elif not self.signer.signed_by_us(file.content):
                out.append(self.signer.resign(file))
        return out

    # -- a batch of changes -------------------------------------------------------------------

    def write_batch(self, batch: Sequence[Request], now: datetime) -> Batch:
        """Apply `batch` in arrival order on top of the committed states: steps 1 to 4 of the
        module docstring. Never raises for one request: its error is in the result."""
        behind = self._keys_behind()
        if behind is not None:
            return Batch(errors=dict.fromkeys(range(len(batch)), behind))
        self._forget_old_requests(now)
        result = Batch()
        prepared: list[tuple[int, Committed]] = []
        batch_states: dict[str, FeatureState] = {}
        pins: dict[str, Pin] = {}
        first_by_id: dict[str, int] = {}
        # "Nothing to do" answers worked out on top of this batch's uncommitted changes:
        # kept for their request ids only once those changes committed.
        on_batch: list[tuple[int, str, str, Applied]] = []
        global_sequence = self.global_sequence
        origin_checked = False
        for at, request in enumerate(batch):
            first = first_by_id.get(request.request_id) if request.request_id else None
            if first is not None:
                if request_key(batch[first]) != request_key(request):
                    result.errors[at] = _request_id_reused(
                        request.request_id, request_key(batch[first])
                    )
                else:
                    result.like[at] = first
                continue
            if request.request_id:
                first_by_id[request.request_id] = at
            first_of_feature = request.feature_id not in batch_states
            try:
                item = self._prepare(
                    request,
                    now,
                    global_sequence + 1,
                    batch_states.get(request.feature_id) or self.states.get(request.feature_id),
                    check_origin=first_of_feature,
                    remote_index=not origin_checked,
                    remember=None
                    if first_of_feature
                    else functools.partial(_remember_later, on_batch, at),
                )
            except Exception as exc:
                result.errors[at] = exc
                continue
            if isinstance(item, Applied):
                result.answers[at] = item  # a repeat of an earlier request, or nothing to do
                continue
            origin_checked = True
            prepared.append((at, item))
            global_sequence += 1
            batch_states[request.feature_id] = item.change.state
            pins[request.feature_id] = pin_of(item.change.files[-1])
        if not prepared:
            return result
        try:
            result.files, result.flushed = self._commit([item for _, item in prepared], pins, now)
        except Exception as exc:  # nothing committed
            for at, _ in prepared:
                result.errors[at] = exc
            for at, *_ in on_batch:
                del result.answers[at]
                result.errors[at] = exc
            return result
        for _, request_id, rpc, applied in on_batch:
            self.store.remember_request(request_id, rpc, applied.state, applied.why_unchanged, now)
        for at, item in prepared:
            result.answers[at] = Applied(item.change.state, item.transition)
        result.committed = dict(prepared)
        return result

    def _forget_old_requests(self, now: datetime) -> None:
        """At most once an hour, the request ids answered over REQUEST_IDS_KEPT ago forgotten
        (the table would otherwise grow with every change for ever)."""
        if self._forgot_at is not None and now - self._forgot_at < timedelta(hours=1):
            return
        self._forgot_at = now
        forgotten = self.store.forget_requests(now - REQUEST_IDS_KEPT)
        if forgotten:
            log.info("forgot request ids answered over %s ago: %d", REQUEST_IDS_KEPT, forgotten)

    def _prepare(
        self,
        request: Request,
        now: datetime,
        global_sequence: int,
        state: FeatureState | None,
        *,
        check_origin: bool,
        remote_index: bool,
        remember: Callable[[str, str, Applied], None] | None = None,
    ) -> Committed | Applied:
        """The change `request` makes on top of `state`, signed; or what it did when it was
        answered already (a request_id seen before) or changes nothing."""
        feature_id, request_id = request.feature_id, request.request_id
        rpc = request_key(request)  # stored with the answer, checked on a retry
        if request_id:
            prior = self.store.answered(request_id)
            if prior is not None:
                if prior.rpc != rpc:
                    raise _request_id_reused(request_id, prior.rpc)
                if self.pending_count() and not self.flush():
                    # The first answer said "committed but not on the CDN": a retry must not
                    # turn that into success while hosts still cannot see the change.
                    raise OriginPending(
                        f"request {request_id!r} committed earlier, but the CDN origin still "
                        "lacks it; the server keeps retrying, and `releasectl release status` "
                        "shows the pending writes"
                    )
                # Kept before schema 5: the feature as it is stands in for the one answered.
                then = prior.state or state or FeatureState(feature_id)
                return Applied(then, prior.transition, prior.why_unchanged)
        outcome = releases.apply(
            state, feature_id, request.command, request.meta, now, canary_loads=request.canary_loads
        )
        if isinstance(outcome, releases.Unchanged):
            applied = Applied(outcome.state, None, outcome.why)
            if request_id and remember is not None:  # worked out on uncommitted changes
                remember(request_id, rpc, applied)
            elif request_id:
                self.store.remember_request(request_id, rpc, outcome.state, outcome.why, now)
            return applied
        if check_origin:  # False: an earlier change of the feature in the batch was checked
            try:
                self._refuse_if_origin_ahead(feature_id, remote_index=remote_index)
            except OSError as exc:
                raise Unavailable(
                    f"reading {feature_id!r}'s index files on the CDN origin failed ({exc}); "
                    "nothing was committed: retry when the origin is reachable"
                ) from exc
        files: list[SignedFile] = []
        stored_manifest: tuple[str, bytes] | None = None
        if request.manifest is not None:
            version = request.command.version
            stored_manifest = (version, request.manifest)
            files.append(
                SignedFile(
                    path=manifest_path(feature_id, version),
                    content=request.manifest,
                    sha256=sha256_hex(request.manifest),
                    sequence=outcome.state.sequence,
                )
            )
        files.append(self.signer.releases_file(outcome.state, now))  # last: see pins above
        transition = StoredTransition(
            id=global_sequence,
            record=outcome.record,
            global_sequence=global_sequence,
            request_id=request_id,
        )
        change = Change(
            state=outcome.state,
            record=outcome.record,
            global_sequence=global_sequence,
            files=tuple(files),
            manifest=stored_manifest,
            request_id=request_id,
            rpc=rpc,
        )
        return Committed(request, change, transition)

    def _refuse_if_origin_ahead(self, feature_id: str, *, remote_index: bool = True) -> None:
        """Refuse to publish when the origin holds newer or different index files than the store.

        Another writer, or a database restored from an old backup, would
        otherwise make this server publish a lower sequence than hosts have seen.
        `remote_index=False` checks only the feature's releases.json (a batch
        checks remote-index.json once).
        """
        paths = [releases_path(feature_id)] + ([REMOTE_INDEX_PATH] if remote_index else [])
        for path in paths:
            if self._staging is not None and self._staging.unchanged_since_written(path):
                continue  # it holds bytes this process wrote, all committed: never ahead
            ours = self.index.top if path == REMOTE_INDEX_PATH else self.store.signed_file(path)
            remote_sequence = self._origin_sequence(path, ours)
            if remote_sequence is None:
                continue
            our_sequence = ours.sequence if ours else 0
            # Other bytes at our sequence are another writer's, unless ours are still owed
            # to the origin (the outbox as memory has it: renamed files are not owed).
            if remote_sequence > our_sequence or (
                remote_sequence == our_sequence and path not in self.unmarked
            ):
                what = "is ahead of" if remote_sequence > our_sequence else "differs from"
                raise FailedPrecondition(
                    f"the origin's {path} (sequence {remote_sequence}) {what} this control "
                    f"plane's store (sequence {our_sequence}): another writer, or a database "
                    "restored from an older backup; nothing was changed. Stop the other writer; "
                    "for a restored database, run `releasectl origin rebuild` to sign this "
                    "store's state above the origin's sequences; then retry"
                )

    def _origin_sequence(self, path: str, ours: SignedFile | None) -> int | None:
        """The sequence of the index file at `path` on the origin when it matters: it holds
        other bytes than `ours`, signed by our keys (`signed_sequence`); else None. Raises
        OSError when the origin cannot be read."""
        remote = self.origin.read(path)
        if remote is None or (ours is not None and ours.content == remote):
            return None
        return signed_sequence(remote, self.signer, path)

    # -- a restored database -------------------------------------------------------------------

    def reconcile(self, meta: ChangeMeta, now: datetime) -> Batch:
        """Sign every feature whose releases.json on the origin has a sequence at or above
        the store's (with other bytes) again above it, and the shards and top level above the
        origin's: what a database restored from an older backup needs before it can publish,
        since hosts refuse a lower sequence. Nothing else changes. Returns the batch committed
        (empty when the origin is not ahead). Raises OSError when the origin cannot be read."""
        above: dict[str, int] = {}
        for feature_id, state in sorted(self.states.items()):
            path = releases_path(feature_id)
            remote = self._origin_sequence(path, self.store.signed_file(path))
            if remote is not None and remote >= state.sequence:
                above[feature_id] = remote
        index_paths = [*(f.path for f in self.index.shard_files()), REMOTE_INDEX_PATH]
        index_above = 0
        for path in index_paths:
            ours = self.index.top if path == REMOTE_INDEX_PATH else self.index.shard(path)
            remote = self._origin_sequence(path, ours)
            if remote is not None and remote >= (ours.sequence if ours else 0):
                index_above = max(index_above, remote)
        if not above and not index_above:
            return Batch()
        result = Batch()
        prepared: list[Committed] = []
        pins: dict[str, Pin] = {}
        global_sequence = self.global_sequence
        for feature_id, sequence in above.items():
            outcome = releases.apply(
                self.states[feature_id], feature_id, releases.Reconcile(sequence), meta, now
            )
            assert isinstance(outcome, releases.Transition)
            global_sequence += 1
            file = self.signer.releases_file(outcome.state, now)
            transition = StoredTransition(
                id=global_sequence,
                record=outcome.record,
                global_sequence=global_sequence,
                request_id="",
            )
            change = Change(
                state=outcome.state,
                record=outcome.record,
                global_sequence=global_sequence,
                files=(file,),
            )
            prepared.append(Committed(_RECONCILE, change, transition))
            pins[feature_id] = pin_of(file)
        sequence = max(self.index.sequence, index_above) + 1
        result.files, result.flushed = self._commit(prepared, pins, now, index_sequence=sequence)
        result.committed = dict(enumerate(prepared))
        log.warning(
            "reconciled with an origin ahead of the store: features=%d (%s) top_sequence=%d",
            len(prepared),
            ", ".join(list(above)[:5]) + (" …" if len(above) > 5 else ""),
            sequence,
        )
        return result

    def _commit(
        self,
        prepared: list[Committed],
        pins: Mapping[str, Pin],
        now: datetime,
        *,
        index_sequence: int | None = None,
    ) -> tuple[list[SignedFile], bool]:
        """Sign the batch's shards and top level, commit it with them, put every file in place
        in order. Returns the files committed and whether the origin has them all.

        Raises what the signing or the commit raises, having discarded what was staged:
        then nothing committed.
        """
        changes = [item.change for item in prepared]
        held = [f for c in changes for f in c.files]
        staged: dict[tuple[str, str], Staged] = {}
        try:
            index_files = self.index.next_files(
                pins,
                signer=self.signer,
                root_version=self.root_version,
                now=now,
                sequence=index_sequence,
            )
            files = [*held, *index_files]
            # Each file's bytes beside its place (not synced: `sync` makes them durable once
            # they are in place): a few write calls, so done here rather than handed off.
            for file in files:
                ready = self._stage(file)
                if ready is not None:
                    staged[(file.path, file.sha256)] = ready
            self._collect_syncs(wait=False)
            self.store.commit_many(changes, index_files=index_files, written=self._marks)
        except BaseException:
            for ready in staged.values():
                self._discard(ready)
            raise
        committed_at = time.monotonic()
        self._marks = []
        # Committed: memory follows the store before anything else can fail.
        for file in files:  # the outbox queues a path once, with its newest bytes
            self.unmarked[file.path] = file.sha256
        self.index.apply(pins, index_files)
        self.states.update((c.state.feature_id, c.state) for c in changes)
        if changes:  # a reconcile may sign only shards and the top level above the origin's
            self.global_sequence = changes[-1].global_sequence
        try:
            flushed = self.flush(files, staged)
        except Exception:  # the change stands; the outbox is written again later
            log.exception("writing a committed batch to the origin failed")
            if self.observer is not None:
                self.observer.origin_write_failed()
            return files, False
        if flushed and self.observer is not None:
            self.observer.origin_published(time.monotonic() - committed_at)
        return files, flushed

    def _stage(self, file: SignedFile) -> Staged | None:
        """`file`'s bytes beside its place on the origin, if the origin can do that (else, or
        when it fails, the flush writes it whole)."""
        if self._staging is None:
            return None
        try:
            return self._staging.stage(file.path, file.content, sync=False)
        except OSError as exc:
            log.warning("origin write of %s failed: %s", file.path, exc)
            return None

    def _discard(self, staged: Staged) -> None:
        if self._staging is not None:
            try:
                self._staging.discard(staged)
            except OSError as exc:
                log.warning("removing the temporary file %s failed: %s", staged.temp, exc)

    # -- the outbox ----------------------------------------------------------------------------

    def flush(
        self,
        held: Sequence[SignedFile] = (),
        staged: Mapping[tuple[str, str], Staged] | None = None,
    ) -> bool:
        """Write the outbox to the origin in order; True when the origin has all of it.

        `held`: files just committed, whose bytes need not be read back from the
        store; `staged` (by path and sha256): those already written beside their
        place, to be renamed into it (in place at once for readers, durable once
        `sync` ran). What is staged but not published is removed.
        """
        if not self.store.holds_exclusive():
            # The lease was lost with its session (the database restarted): another replica
            # may be writing newer files; what is owed stays in the outbox for the holder.
            log.warning("not writing the origin: this replica no longer holds the lease")
            for leftover in (staged or {}).values():
                self._discard(leftover)
            return False
        known = {(f.path, f.sha256): f for f in held}
        unpublished = dict(staged or {})
        written: list[tuple[str, str]] = []
        try:
            # The outbox, from memory when it holds only what was just committed (the
            # common case), else from the store, in the order pins point; without what
            # memory knows is in place already (renamed, its sync running or not yet
            # marked in the store).
            if held and self._only(held):
                pending = [FileDigest(f.path, f.sha256, f.sequence) for f in held]
            else:
                listed = self.store.pending_digests()
                # What another replica marked written since this one followed is not owed.
                keys = {(d.path, d.sha256) for d in listed}
                for gone in [k for k in self.unmarked.items() if k not in keys]:
                    self._drop_unmarked(gone)
                pending = [d for d in listed if self.unmarked.get(d.path) == d.sha256]
            behind = 0
            for digest in pending:
                key = (digest.path, digest.sha256)
                ready = unpublished.pop(key, None)
                if ready is not None and self._staging is not None:
                    # Renamed one after another, in the order pins point: a host sees
                    # each file as soon as it is renamed.
                    displaced = self._staging.publish(ready, sync=False)
                    self._unsynced.append((key, ready.target, displaced))
                    self._drop_unmarked(key)
                    continue
                file = known.get(key) or self.store.signed_file(digest.path)
                if file is None:  # the outbox only names stored files
                    continue
                if key not in known:
                    remote = self.origin.read(file.path)
                    if remote == file.content:
                        # Put there already (by another replica, or by this process before a
                        # crash): made durable rather than written again.
                        self._sync_in_place(file.path)
                        written.append(key)
                        continue
                    if self._origin_ahead_of(file, remote):
                        behind += 1
                        continue
                self.origin.write(file.path, file.content)  # durable when it returns
                written.append(key)
        except OSError as exc:
            log.warning("origin write failed, retried in the background: %s", exc)
            if self.observer is not None:
                self.observer.origin_write_failed()
            return False
        finally:
            for ready in unpublished.values():
                self._discard(ready)
            self._mark_written(written)
            if self._unsynced:
                done, self._unsynced = self._unsynced, []
                self._queue_sync(done)
        return behind == 0

    def _sync_in_place(self, path: str) -> None:
        """Make the file at origin `path` durable where it is (a filesystem origin: fsync it
        and its folder; an object store's PUT was durable already)."""
        if isinstance(self.origin, FilesystemOrigin):
            target = self.origin.root.joinpath(*path.split("/"))
            fsync_path(target)
            fsync_path(target.parent)

    def _origin_ahead_of(self, file: SignedFile, remote: bytes | None) -> bool:
        """Whether the origin holds (as `remote`) `file`'s index file at a higher sequence,
        signed by our keys: an outbox older than the origin (a database restored from a backup
        taken while files were owed) must not put hosts back. Such a file stays owed, and
        changes are refused, until `releasectl origin rebuild` signs the store's state above
        it."""
        if not _is_index_file(file.path):
            return False
        if remote is None or remote == file.content:
            return False
        remote_sequence = signed_sequence(remote, self.signer, file.path)
        if remote_sequence is None or remote_sequence <= file.sequence:
            return False
        log.warning(
            "not writing %s (sequence %d) over the origin's newer one (sequence %d): the "
            "store is behind the origin; run `releasectl origin rebuild`",
            file.path,
            file.sequence,
            remote_sequence,
        )
        return True

    def _queue_sync(self, renamed: list[_Renamed]) -> None:
        """`renamed` synced in the background (and the files they displaced removed), with
        whatever else is renamed within SYNC_DELAY_SECONDS: the sync queued and not started
        yet takes it, else a new one."""
        with self._sync_lock:
            if self._sync_next is not None:
                self._sync_next.extend(renamed)
                return
            self._sync_next = list(renamed)
        self._syncing.append(self._sync_thread.submit(self._sync_queued))

    def _sync_queued(self) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """On the sync thread: after SYNC_DELAY_SECONDS (or less: `_sync_now`), what was queued
        meanwhile synced at once."""
        self._sync_now.wait(SYNC_DELAY_SECONDS)
        with self._sync_lock:
            done, self._sync_next = self._sync_next or [], None
        return self._sync(done)

    def _sync(self, done: list[_Renamed]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """On the sync thread: the files renamed into place displaced removed (off the write
        thread: freeing their blocks is most of a rename's time), then the files and their
        folders synced (all at once, on the stage threads). Returns the keys synced and those
        that failed."""
        if self._staging is not None:
            displaced = [old for *_, old in done if old is not None]
            try:
                list(self._stage_pool.map(self._staging.remove_displaced, displaced))
            except OSError as exc:  # housekeeping only: the next start removes what is left
                log.warning("removing a file the origin no longer serves failed: %s", exc)
        paths = {target for _, target, _ in done} | {target.parent for _, target, _ in done}
        keys = [key for key, *_ in done]
        try:
            list(self._stage_pool.map(fsync_path, paths))  # raises what a sync raised
        except OSError as exc:
            log.warning("syncing the origin failed; written again in full: %s", exc)
            return [], keys
        return keys, []

    def _collect_syncs(self, *, wait: bool) -> None:
        """The background syncs that ended (all of them, with `wait`): what they synced is to
        be marked written; what failed is pending again (the retry writes it in full)."""
        running = []
        for future in self._syncing:
            if not wait and not future.done():
                running.append(future)
                continue
            try:
                synced, failed = future.result()
            except Exception:  # a bug: its files stay in the store's outbox (the next start
                log.exception("a background sync of the origin failed")  # writes them)
                continue
            self._marks += synced
            for path, sha256 in failed:
                self.unmarked.setdefault(path, sha256)
        self._syncing = running

    def settle(self) -> None:
        """Wait for the background syncs and mark what they synced written in the store: the
        outbox then says exactly what the origin may lack (before a stop, say)."""
        self._sync_now.set()  # the queued sync starts now
        try:
            self._collect_syncs(wait=True)
        finally:
            self._sync_now.clear()
        if self._marks:
            self.store.mark_all_written(self._marks)
            self._marks = []

    def _only(self, held: Sequence[SignedFile]) -> bool:
        """Whether the outbox holds exactly `held` (each path once, in order), as memory says."""
        return len(self.unmarked) == len(held) and all(
            self.unmarked.get(f.path) == f.sha256 for f in held
        )

    def _drop_unmarked(self, key: tuple[str, str]) -> None:
        path, sha256 = key
        if self.unmarked.get(path) == sha256:  # not committed again since
            del self.unmarked[path]

    def _mark_written(self, written: Sequence[tuple[str, str]]) -> None:
        """Drop `written` (path, sha256) from the outbox, in the store and then in memory, as
        the store does: a file committed again since stays pending."""
        self.store.mark_all_written(written)
        for key in written:
            self._drop_unmarked(key)


def _root_version_of(content: bytes) -> int:
    """The root a top level was signed under (0 when unreadable)."""
    try:
        return int(Envelope.from_bytes(content).signed.get("root_version", 0))
    except (VerificationError, TypeError, ValueError):
        return 0


def _remember_later(
    into: list[tuple[int, str, str, Applied]], at: int, request_id: str, rpc: str, applied: Applied
) -> None:
    into.append((at, request_id, rpc, applied))


def _is_index_file(path: str) -> bool:
    """Whether `path` is an index file hosts check the sequence of (not a manifest or root)."""
    return path == REMOTE_INDEX_PATH or path.startswith("index/") or path.endswith("/releases.json")


def signed_sequence(data: bytes, signer: Signer, path: str) -> int | None:
    """The sequence of the index file `data` (found at origin `path`) if our keys signed it;
    None for anything else: unreadable bytes, or a signature our keys did not make, cannot
    outrank what we sign (a forged sequence must not block changes, rollbacks included)."""
    try:
        envelope = Envelope.from_bytes(data)
        sequence = int(envelope.signed["sequence"])
    except (VerificationError, KeyError, TypeError, ValueError):
        log.warning("origin file %s is not a signed index; it will be replaced", path)
        return None
    if not check_signatures(envelope, signer.own_trust()).verified:
        log.warning("origin file %s is not signed by our keys; it will be replaced", path)
        return None
    return sequence


def utc_now() -> datetime:
    """Now, in UTC, to the second: index files carry whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)
