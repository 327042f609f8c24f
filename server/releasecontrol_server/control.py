"""The control plane's use cases: apply a change, sign, commit, publish to the origin.

One writer (a task, under an asyncio lock) runs changes through the same steps:

    state machine  ->  sign releases.json, its shard, remote-index.json  ->  ONE store
    transaction (state, audit record, signed files, outbox, request id)  ->
    write the outbox to the origin  ->  answer  ->  tell watchers

Changes that arrive while the writer is busy are taken together (group
commit): each is applied in arrival order with its own sequence, audit record
and answer, but the batch shares the transaction, one shard per touched bin and
one remote-index.json (host protocol v2: `sharding.ShardedIndex`).
The disk work runs in a worker thread, so reads are served meanwhile; reads of
recent state come from memory, written through on every commit.

A process killed after the commit finishes the origin write on restart
(`start()` drains the outbox), so the origin never misses a committed change
and, since the outbox holds only the newest bytes of each file, never goes back.

A commit's disk work overlaps where order allows: while the store commits
(its fsync releases the GIL), other worker threads write each new file, fsynced,
to a hidden temporary file beside its place on the origin
(`FilesystemOrigin.stage`). Only once the commit returned are they renamed into
place, in the order pins point: releases.json, then shards, then remote-index.json.

At start, and when the keys change (`install_keys`), the roots are published
and, when the top level was signed under another root or by other keys (a
rotation) or is missing (an origin of host protocol v1), every shard and
releases.json is signed again and a new top level written (`_ensure_index`).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, Protocol, TypeVar, runtime_checkable

from releasecontrol.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    VerificationError,
)
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    SCHEMA_VERSION,
    Envelope,
    check_signatures,
    releases_path,
)
from releasecontrol.manifest import artifact_path, manifest_path, sha256_hex
from releasecontrol.shards import Pin, bin_of, shard_path
from releasecontrol_server import releases
from releasecontrol_server.origin import Origin
from releasecontrol_server.origin.filesystem import FilesystemOrigin, Staged
from releasecontrol_server.releases import ChangeMeta, Command, FeatureState
from releasecontrol_server.sharding import ShardedIndex
from releasecontrol_server.signer import Signer, pin_of
from releasecontrol_server.store import Change, SignedFile, SqliteStore, StoredTransition
from releasecontrol_server.upload import ReceivedAsset
from releasecontrol_server.watch import ChangeEvent, RefreshEvent, WatchHub

log = logging.getLogger(__name__)

R = TypeVar("R")

# Test-only fault injection: RELEASECONTROL_FAILPOINT=after-commit kills the
# process right after a change commits and before the origin write, which is
# how the crash-recovery test proves that nothing committed is lost.
FAILPOINT_AFTER_COMMIT = "after-commit"

_RETRY_SECONDS = 5.0
# Features whose state and releases.json are kept in memory for reads.
_CACHED_FEATURES = 16_384
# Threads writing new files beside their place on the origin while the store
# commits (two more: the commit, and the remote index's signature).
_STAGE_THREADS = 3


@runtime_checkable
class _Staging(Protocol):
    """An origin that can write a file's bytes first and put it in place later."""

    def stage(self, path: str, data: bytes) -> Staged: ...

    def publish(self, staged: Staged) -> None: ...

    def discard(self, staged: Staged) -> None: ...

    def unchanged_since_written(self, path: str) -> bool: ...


def utc_now() -> datetime:
    """Now, in UTC, to the second: index files carry whole seconds."""
    return datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Applied:
    """What a change request did: the feature afterwards and the audit record, if any."""

    state: FeatureState
    transition: StoredTransition | None
    why_unchanged: str = ""


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
    """One index file hosts read, as found on the origin during a hot refresh."""

    path: str
    restored: bool
    detail: str
    matches: bool = True
    """The origin held what was signed (or its newest write is pending)."""


@dataclass(frozen=True)
class Refreshed:
    """What a hot refresh found: manifests, index files, and how many watchers were told."""

    manifests: list[ManifestCheck]
    index: list[IndexCheck]
    notified: int


@dataclass(frozen=True)
class Status:
    features: list[FeatureState]
    global_sequence: int
    pending_origin_writes: int
    server_time: datetime


@dataclass
class _Request:
    """A change waiting for the writer; `answer` gets the encoded response or the error."""

    feature_id: str
    command: Command
    meta: ChangeMeta
    rpc: str
    request_id: str
    encode: Callable[[Applied], bytes]
    manifest: bytes | None
    artifacts: Mapping[str, ReceivedAsset]
    answer: asyncio.Future[bytes]


@dataclass(frozen=True)
class _Prepared:
    """A request's change, signed and ready to commit with the rest of its batch."""

    request: _Request
    change: Change
    transition: StoredTransition
    pin: Pin
    answer: bytes


def _fail(answer: asyncio.Future[bytes], error: BaseException) -> None:
    """Answer with `error`, unless the caller is gone (then nobody will read it)."""
    if not answer.done():
        answer.set_exception(error)


def _settle_like(answer: asyncio.Future[bytes], first: asyncio.Future[bytes]) -> None:
    """Answer a repeated request_id as its first request in the same batch was answered."""
    if answer.done():
        return
    if first.cancelled():
        answer.set_exception(
            Unavailable("the first request with this request_id was cancelled; retry it")
        )
    elif (error := first.exception()) is not None:
        answer.set_exception(error)
    else:
        answer.set_result(first.result())


def _request_key(request: _Request) -> str:
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


class ReleaseController:
    """Applies release changes durably and serves the committed state."""

    def __init__(
        self,
        *,
        store: SqliteStore,
        origin: Origin,
        signer: Signer,
        hub: WatchHub,
        default_soak_seconds: int,
        clock: Callable[[], datetime] = utc_now,
        failpoint: str = "",
        roots: Sequence[SignedFile] = (),
        root_version: int = 1,
    ) -> None:
        """`roots`: the signed roots to publish (roots/1.json …); `root_version`: the one every
        remote-index.json is signed under (see `install_keys`)."""
        self._store = store
        self._roots = tuple(roots)
        self._root_version = root_version
        self._origin = origin
        self._signer = signer
        self._hub = hub
        self._default_soak = default_soak_seconds
        self._clock = clock
        self._failpoint = failpoint
        self._lock = asyncio.Lock()
        self._index = ShardedIndex({}, {})
        self._retry_task: asyncio.Task[None] | None = None
        # The global sequence of the last commit whose states the caches hold:
        # reads pair them, so a snapshot never claims a change it does not show.
        self._global_sequence = 0
        self._feature_ids: list[str] = []  # every committed feature, in id order
        self._queue: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None
        # Reads (status, one feature, its releases.json) of recently used
        # features come from memory; a commit puts the new values here first.
        self._states: _Recent[str, FeatureState] = _Recent(_CACHED_FEATURES)
        self._files: _Recent[str, SignedFile] = _Recent(_CACHED_FEATURES)
        # What the origin may lack, as the store's outbox says it (the controller is its
        # only writer, so memory follows it): each committed file not yet marked written,
        # path -> sha256. Commits and marks run in worker threads, reads on the event loop:
        # under the lock.
        self._pending_lock = threading.Lock()
        self._unmarked: dict[str, str] = {}
        self._staging = origin if isinstance(origin, _Staging) else None
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="releasecontrol-write")
        self._audit_pool = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-audit")
        self._audit_store: SqliteStore | None = None  # opened by the audit thread
        self._stage_pool = ThreadPoolExecutor(
            _STAGE_THREADS, thread_name_prefix="releasecontrol-stage"
        )

    @property
    def default_soak_seconds(self) -> int:
        return self._default_soak

    async def start(self) -> None:
        """Load the index, publish the roots, sign the index again if the keys or the root
        changed (or the origin is of host protocol v1), and finish origin writes a crash left
        pending."""
        self._global_sequence = self._store.global_sequence()
        self._index = self._load_index()
        if isinstance(self._origin, FilesystemOrigin):
            leftovers = self._origin.remove_leftovers()
            if leftovers:
                log.warning(
                    "removed %d temporary files a killed process left on the origin: %s",
                    len(leftovers),
                    ", ".join(leftovers[:5]) + (" …" if len(leftovers) > 5 else ""),
                )
        with self._pending_lock:
            self._unmarked = {d.path: d.sha256 for d in self._store.pending_digests()}
        self._feature_ids = self._store.feature_ids()
        # Every feature's state in memory from the start (up to _CACHED_FEATURES): a change
        # or a read of a feature nobody touched since the start does not wait on SQLite.
        after = ""
        while len(self._states) < _CACHED_FEATURES:
            page = self._store.list_features(after=after, limit=1000)
            if not page:
                break
            for state in page:
                self._states.put(state.feature_id, state)
            after = page[-1].feature_id
        async with self._lock:
            await self._ensure_index()
            # The files every host reads (roots, remote-index.json, the shards): checked and
            # repaired before serving; each feature's own files by the OriginAuditor after.
            repaired = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._check_shared_index_files
            )
            if repaired:
                log.warning("origin repaired at start: %s", ", ".join(repaired))
            pending = self.pending_count()
            if pending:
                log.info("finishing %d origin writes left by the previous run", pending)
            self._flush_or_schedule()

    async def stop(self) -> None:
        """Stop retrying origin writes; wait for changes already taken by the writer."""
        if self._retry_task is not None:
            self._retry_task.cancel()
        if self._writer is not None and not self._writer.done():
            # Its disk work runs in a thread: let it finish before the store closes.
            await asyncio.wait([self._writer])
        self._pool.shutdown(wait=True)
        self._stage_pool.shutdown(wait=True)
        self._audit_pool.shutdown(wait=True)
        if self._audit_store is not None:
            self._audit_store.close()

    def _load_index(self) -> ShardedIndex:
        pins = {
            feature_id: Pin(d.sha256, d.length, d.sequence)
            for feature_id, d in self._store.releases_digests().items()
        }
        return ShardedIndex(pins, self._store.index_files())

    async def install_keys(
        self, signer: Signer, roots: Sequence[SignedFile], root_version: int
    ) -> None:
        """Sign with `signer` under root `root_version` from now on: publish the new roots,
        sign every releases.json and shard again and a new top level (a key rotation)."""
        async with self._lock:
            self._signer, self._roots, self._root_version = signer, tuple(roots), root_version
            await self._ensure_index()
            self._flush_or_schedule()

    async def _ensure_index(self) -> None:
        """Commit the roots the store lacks, and every index file again when the top level
        was not signed under the current root by the current keys; under the writer lock."""
        stored = self._store.index_files()
        files = [r for r in self._roots if getattr(stored.get(r.path), "sha256", None) != r.sha256]
        top = self._index.top
        stale = top is not None and not self._current(top)
        if stale or (top is None and self._feature_ids) or (top and not self._index.complete):
            releases, changed = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._resign_releases, self._clock()
            )
            index_files = self._index.rebuild(
                signer=self._signer,
                root_version=self._root_version,
                now=self._clock(),
                pins=changed,
                sequence=max(self._index.sequence, self._global_sequence) + 1,
            )
            files += [*releases, *index_files]
            log.info(
                "index signed again root_version=%d releases=%d shards=%d sequence=%d",
                self._root_version,
                len(releases),
                len(index_files) - 1,
                index_files[-1].sequence,
            )
        else:
            changed, index_files = {}, []
        if not files:
            return
        await asyncio.get_running_loop().run_in_executor(
            self._pool, lambda: self._store.commit_many([], index_files=files)
        )
        with self._pending_lock:
            for file in files:
                self._unmarked[file.path] = file.sha256
        for file in files:
            self._files.put(file.path, file)
        self._index.apply(changed, index_files)

    def _current(self, file: SignedFile) -> bool:
        """Whether a stored top level is signed by our keys under the current root."""
        try:
            body = Envelope.from_bytes(file.content).signed
        except VerificationError:
            return False
        return body.get("root_version") == self._root_version and self._signer.signed_by_us(
            file.content
        )

    def _resign_releases(self, now: datetime) -> tuple[list[SignedFile], dict[str, Pin]]:
        """In a worker thread: every releases.json not signed by our keys, signed again (the
        same body at the same sequence; a v1 one rebuilt as schema 2 at the same sequence)."""
        out: list[SignedFile] = []
        for feature_id in self._feature_ids:
            path = releases_path(feature_id)
            file = self._store.signed_file(path)
            state = self._load(feature_id)
            if file is None or state is None:
                continue
            try:
                schema = Envelope.from_bytes(file.content).signed.get("schema_version")
            except VerificationError:
                schema = None
            if schema != SCHEMA_VERSION:
                out.append(self._signer.releases_file(state, now))
            elif not self._signer.signed_by_us(file.content):
                out.append(self._signer.resign(file))
        return out, {f.path.split("/")[1]: pin_of(f) for f in out}

    # -- writes ------------------------------------------------------------

    async def change(
        self,
        feature_id: str,
        command: Command,
        meta: ChangeMeta,
        *,
        rpc: str,
        request_id: str,
        encode: Callable[[Applied], bytes],
        decode: Callable[[bytes], R],
        manifest: bytes | None = None,
        artifacts: Mapping[str, ReceivedAsset] | None = None,
    ) -> R:
        """Apply `command` to the feature once, durably, and answer with `encode`'s bytes.

        A `request_id` seen before returns the first answer again (`decode`d)
        without applying anything. Raises the state machine's errors (nothing
        changed), or Unavailable when the change committed but the origin write
        failed (it is retried in the background).

        Changes that arrive while the writer is busy are applied together, in
        arrival order, as one store transaction and one origin write of
        remote-index.json (group commit); each is still its own audit record
        and global sequence, and each caller gets its own answer or error.
        """
        loop = asyncio.get_running_loop()
        request = _Request(
            feature_id=feature_id,
            command=command,
            meta=meta,
            rpc=rpc,
            request_id=request_id,
            encode=encode,
            manifest=manifest,
            artifacts=artifacts or {},
            answer=loop.create_future(),
        )
        self._queue.append(request)
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_queued())
        # Cancelling the caller cancels only this wait: a change still queued is
        # then dropped, one already being written completes.
        return decode(await request.answer)

    async def _write_queued(self) -> None:
        """The one writer: apply what is queued, a batch at a time, until nothing is left."""
        while self._queue:
            async with self._lock:
                # Taken under the lock: whatever queued while it was held joins this batch.
                batch = [r for r in self._queue if not r.answer.done()]
                self._queue = []
                try:
                    await self._apply_batch(batch)
                except Exception as exc:  # a bug: answer with it rather than hang
                    log.exception("applying a batch of %d changes failed", len(batch))
                    for request in batch:
                        _fail(request.answer, exc)
                except BaseException:  # shutting down
                    for request in batch:
                        _fail(request.answer, Unavailable("the server is shutting down; retry"))
                    raise

    async def _apply_batch(self, batch: list[_Request]) -> None:
        now = self._clock()
        global_sequence = self._global_sequence
        prepared: list[_Prepared] = []
        states: dict[str, FeatureState] = {}
        entries: dict[str, Pin] = {}
        first_by_id: dict[str, _Request] = {}
        repeats: list[tuple[_Request, _Request]] = []
        origin_checked = False
        for request in batch:
            first = first_by_id.get(request.request_id) if request.request_id else None
            if first is not None:
                if _request_key(first) != _request_key(request):
                    _fail(
                        request.answer, _request_id_reused(request.request_id, _request_key(first))
                    )
                else:
                    repeats.append((request, first))  # answered as the first one is
                continue
            if request.request_id:
                first_by_id[request.request_id] = request
            try:
                item = self._prepare(
                    request, now, global_sequence + 1, states, check_remote=not origin_checked
                )
            except Exception as exc:
                _fail(request.answer, exc)
                continue
            origin_checked = origin_checked or item is not None
            if item is None:
                continue  # answered: a repeat of an earlier request, or nothing to change
            prepared.append(item)
            global_sequence += 1
            states[request.feature_id] = item.change.state
            entries[request.feature_id] = item.pin
        if prepared:
            await self._commit(prepared, entries, now)
        for request, first in repeats:
            _settle_like(request.answer, first.answer)

    def _prepare(
        self,
        request: _Request,
        now: datetime,
        global_sequence: int,
        states: Mapping[str, FeatureState],
        *,
        check_remote: bool,
    ) -> _Prepared | None:
        """The change `request` makes on top of `states` (the batch so far), signed; or None
        when it was answered already (a request_id seen before, or nothing changes)."""
        feature_id, request_id = request.feature_id, request.request_id
        rpc = _request_key(request)  # stored with the answer, checked on a retry
        if request_id:
            prior = self._store.request_response(request_id)
            if prior is not None:
                prior_key, prior_bytes = prior
                if prior_key != rpc:
                    raise _request_id_reused(request_id, prior_key)
                if self.pending_count() and not self._flush():
                    # The first answer said "committed but not on the CDN": a retry must not
                    # turn that into success while hosts still cannot see the change.
                    raise Unavailable(
                        f"request {request_id!r} committed earlier, but the CDN origin still "
                        "lacks it; the server keeps retrying, and `releasectl release status` "
                        "shows the pending writes"
                    )
                request.answer.set_result(prior_bytes)
                return None
        state = states.get(feature_id) or self._load(feature_id)
        outcome = releases.apply(state, feature_id, request.command, request.meta, now)
        if isinstance(outcome, releases.Unchanged):
            answer = request.encode(Applied(outcome.state, None, outcome.why))
            if request_id:
                self._store.remember_request(request_id, rpc, answer)
            request.answer.set_result(answer)
            return None

        if feature_id not in states:  # an earlier change in the batch checked it already
            try:
                self._refuse_if_origin_ahead(outcome.state.feature_id, remote_index=check_remote)
            except OSError as exc:
                raise Unavailable(
                    f"reading {feature_id!r}'s index files on the CDN origin failed ({exc}); "
                    "nothing was committed: retry when the origin is reachable"
                ) from exc
        try:
            self._write_artifacts(request.artifacts)
        except OSError as exc:
            raise Unavailable(
                f"writing the artifacts of {feature_id!r} to the CDN origin failed ({exc}); "
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
        releases_file = self._signer.releases_file(outcome.state, now)
        files.append(releases_file)
        transition = StoredTransition(
            id=global_sequence,
            record=outcome.record,
            global_sequence=global_sequence,
            request_id=request_id,
        )
        answer = request.encode(Applied(outcome.state, transition))
        change = Change(
            state=outcome.state,
            record=outcome.record,
            global_sequence=global_sequence,
            files=tuple(files),
            manifest=stored_manifest,
            request_id=request_id,
            rpc=rpc,
            response=answer,
        )
        return _Prepared(request, change, transition, pin_of(releases_file), answer)

    async def _commit(
        self, prepared: list[_Prepared], entries: Mapping[str, Pin], now: datetime
    ) -> None:
        """Commit the batch with its shards and top level, write the origin, answer.

        The disk work runs off the event loop, so reads (and the next batch's
        requests) are served meanwhile; see the module docstring for what overlaps.
        """
        last = prepared[-1].change
        changes = [p.change for p in prepared]
        held = [file for change in changes for file in change.files]
        # Started now, waited for by the commit's thread: one hand-off from the loop.
        staging = [self._stage_pool.submit(self._stage, file) for file in held]
        signing = self._pool.submit(
            self._index.next_files,
            entries,
            signer=self._signer,
            root_version=self._root_version,
            now=now,
        )
        try:
            index_files, flushed = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._commit_and_flush, changes, staging, signing
            )
        except Exception as exc:
            for item in prepared:
                _fail(item.request.answer, exc)
            return
        self._index.apply(entries, index_files)
        self._global_sequence = last.global_sequence
        for change in changes:
            feature_id = change.state.feature_id
            at = bisect.bisect_left(self._feature_ids, feature_id)
            if at == len(self._feature_ids) or self._feature_ids[at] != feature_id:
                self._feature_ids.insert(at, feature_id)  # a new feature
            self._states.put(feature_id, change.state)
            for file in change.files:
                self._files.put(file.path, file)
        for file in index_files:
            self._files.put(file.path, file)
        if not flushed:
            self._schedule_retry()
        for item in prepared:
            state, record = item.change.state, item.change.record
            log.info(
                "committed feature=%s action=%s version=%s sequence=%d global_sequence=%d actor=%r",
                state.feature_id,
                record.action,
                record.version,
                state.sequence,
                item.change.global_sequence,
                item.request.meta.actor,
            )
            if item.request.answer.done():
                continue  # its caller went away; the change stands
            if flushed:
                item.request.answer.set_result(item.answer)
            else:
                _fail(
                    item.request.answer,
                    Unavailable(
                        f"the change to {state.feature_id!r} committed as sequence "
                        f"{state.sequence}, but writing it to the CDN origin failed; the server "
                        "keeps retrying, and `releasectl release status` shows the pending writes"
                    ),
                )
        # Watchers after the callers: with many of them, the fan-out would otherwise
        # hold every caller's acknowledgement back until each watcher was served.
        for item in prepared:
            change = item.change
            self._hub.publish(ChangeEvent(change.global_sequence, change.state, item.transition))

    def _commit_and_flush(
        self,
        changes: list[Change],
        staging: list[Future[Staged | None]],
        signing: Future[list[SignedFile]],
    ) -> tuple[list[SignedFile], bool]:
        """In a worker thread: commit `changes` with the shards and top level `signing` makes,
        then put what `staging` wrote beside the origin (and the index files) in place, in
        order. Returns the index files and whether the origin has everything.

        Raises what the signing or the commit raises (after discarding what was staged).
        """
        held = [f for c in changes for f in c.files]
        try:
            index_files = signing.result()
            index_staging = [self._stage_pool.submit(self._stage, f) for f in index_files]
        except BaseException:
            self._discard_all(staging)
            raise
        try:
            self._store.commit_many(changes, index_files=index_files)
        except BaseException:
            self._discard_all([*staging, *index_staging])
            raise
        if self._failpoint == FAILPOINT_AFTER_COMMIT:
            os.kill(os.getpid(), signal.SIGKILL)
        with self._pending_lock:
            # As the commit changed the outbox: its files queued (a path once, with its
            # newest bytes).
            for file in [*held, *index_files]:
                self._unmarked[file.path] = file.sha256
        staged_files: dict[tuple[str, str], Staged] = {}
        for file, future in zip([*held, *index_files], [*staging, *index_staging], strict=True):
            staged = future.result()  # _stage does not raise for a failed write
            if staged is not None:
                staged_files[(file.path, file.sha256)] = staged
        return index_files, self._flush([*held, *index_files], staged_files)

    def _discard_all(self, staging: list[Future[Staged | None]]) -> None:
        for future in staging:
            staged = future.result()  # _stage does not raise for a failed write
            if staged is not None:
                self._discard(staged)

    def _stage(self, file: SignedFile) -> Staged | None:
        """In a worker thread: `file`'s bytes durable beside its place on the origin, if the
        origin can do that (else, or when it fails, the flush writes it whole)."""
        if self._staging is None:
            return None
        try:
            return self._staging.stage(file.path, file.content)
        except OSError as exc:
            log.warning("origin write of %s failed: %s", file.path, exc)
            return None

    def _discard(self, staged: Staged) -> None:
        if self._staging is not None:
            try:
                self._staging.discard(staged)
            except OSError as exc:
                log.warning("removing the temporary file %s failed: %s", staged.temp, exc)

    def _refuse_if_origin_ahead(self, feature_id: str, *, remote_index: bool = True) -> None:
        """Refuse to publish when the origin holds newer or different index files than the store.

        Another writer, or a database restored from an old backup, would
        otherwise make this server publish a lower sequence than hosts have seen.
        `remote_index=False` checks only the feature's releases.json (a batch
        checks remote-index.json once).
        """
        pending: set[str] | None = None
        paths = [releases_path(feature_id)] + ([REMOTE_INDEX_PATH] if remote_index else [])
        for path in paths:
            if self._staging is not None and self._staging.unchanged_since_written(path):
                continue  # it holds bytes this process wrote, all committed: never ahead
            remote = self._origin.read(path)
            if remote is None:
                continue
            ours = self._index.top if path == REMOTE_INDEX_PATH else self._stored_file(path)
            if ours is not None and ours.content == remote:
                continue  # the origin holds what this store committed last
            try:
                envelope = Envelope.from_bytes(remote)
                remote_sequence = int(envelope.signed["sequence"])
            except (VerificationError, KeyError, TypeError, ValueError):
                # Unreadable bytes cannot be ahead of anything; ours replace them.
                log.warning("origin file %s is not a signed index; it will be replaced", path)
                continue
            if not check_signatures(envelope, self._signer.own_trust()).verified:
                # Only this control plane's keys can make a file hosts accept; anything else
                # (a forged sequence, say) must not block changes, rollbacks included.
                log.warning("origin file %s is not signed by our keys; it will be replaced", path)
                continue
            our_sequence = ours.sequence if ours else 0
            if remote_sequence == our_sequence and pending is None:
                pending = {f.path for f in self._store.pending_digests()}
            if remote_sequence > our_sequence or (
                remote_sequence == our_sequence and path not in (pending or ())
            ):
                what = "is ahead of" if remote_sequence > our_sequence else "differs from"
                raise FailedPrecondition(
                    f"the origin's {path} (sequence {remote_sequence}) {what} this control "
                    f"plane's store (sequence {our_sequence}): another writer, or a database "
                    "restored from an older backup; nothing was changed. Stop the other writer "
                    "or restore the newest database, then retry"
                )

    def _write_artifacts(self, artifacts: Mapping[str, ReceivedAsset]) -> None:
        # Content-addressed: an artifact already on the origin is the same bytes.
        for asset in artifacts.values():
            path = artifact_path(asset.sha256, asset.path)
            if not self._origin.exists(path):
                self._origin.write(path, asset.read())

    def _flush(
        self,
        held: Sequence[SignedFile] = (),
        staged: Mapping[tuple[str, str], Staged] | None = None,
    ) -> bool:
        """Write the outbox to the origin in order; True when nothing is left pending.

        `held`: files just committed, whose bytes need not be read back from the
        store; `staged` (by path and sha256): those already written beside their
        place, to be renamed into it. What is staged but not published is removed.
        """
        known = {(f.path, f.sha256): f for f in held}
        unpublished = dict(staged or {})
        written: list[tuple[str, str]] = []
        try:
            for digest in self._store.pending_digests():
                key = (digest.path, digest.sha256)
                ready = unpublished.pop(key, None)
                if ready is not None and self._staging is not None:
                    self._staging.publish(ready)
                else:
                    file = known.get(key) or self._store.signed_file(digest.path)
                    if file is None:  # the outbox only names stored files
                        continue
                    self._origin.write(file.path, file.content)
                written.append(key)
        except OSError as exc:
            log.warning("origin write failed, retrying every %.0fs: %s", _RETRY_SECONDS, exc)
            return False
        finally:
            for ready in unpublished.values():
                self._discard(ready)
            self._mark_written(written)
        return True

    def _mark_written(self, written: Sequence[tuple[str, str]]) -> None:
        """Drop `written` (path, sha256) from the outbox, in the store and then in memory, as
        the store does: a file committed again since stays pending."""
        self._store.mark_all_written(written)
        with self._pending_lock:
            for path, sha256 in written:
                if self._unmarked.get(path) == sha256:
                    del self._unmarked[path]

    def pending_count(self) -> int:
        """How many committed files the origin may lack: `SqliteStore.pending_count`, from
        memory."""
        with self._pending_lock:
            return len(self._unmarked)

    def _flush_or_schedule(self) -> bool:
        """Flush the outbox; if that fails, keep retrying in the background."""
        if self._flush():
            return True
        self._schedule_retry()
        return False

    def _schedule_retry(self) -> None:
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        while True:
            await asyncio.sleep(_RETRY_SECONDS)
            async with self._lock:
                if self._flush():
                    log.info("pending origin writes finished")
                    return

    async def refresh_manifests(self, feature_ids: Sequence[str] = ()) -> Refreshed:
        """Re-read every published manifest and the index files hosts read for these features
        (the roots, remote-index.json, their shards and releases.json) on the origin, restore
        any that is missing or differs from what was recorded and signed, then tell watchers
        (hosts) to refresh now.

        Raises NotFound for an unknown feature, Unavailable when the origin cannot be read
        or written.
        """
        async with self._lock:
            states = self._all_features(feature_ids)
            missing = sorted(set(feature_ids) - {s.feature_id for s in states})
            if missing:
                self.feature(missing[0])  # raises NotFound naming it
            refreshed = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._check_origin, states, False, True
            )
            ids = tuple(s.feature_id for s in states)
            notified = self._hub.subscriber_count
            self._hub.publish(RefreshEvent(ids, self._store.global_sequence()))
            log.info(
                "manifests refreshed features=%d checked=%d restored=%d index_files=%d "
                "index_restored=%d watchers=%d",
                len(ids),
                len(refreshed.manifests),
                sum(c.restored for c in refreshed.manifests),
                len(refreshed.index),
                sum(c.restored for c in refreshed.index),
                notified,
            )
            return Refreshed(refreshed.manifests, refreshed.index, notified)

    async def audit_origin(self, feature_ids: Sequence[str]) -> Refreshed:
        """What `refresh_manifests` does for `feature_ids`, without telling watchers, and of
        their live (stable and canary) versions' manifests only: the periodic repair
        (`audit.OriginAuditor`). Raises Unavailable when the origin cannot be read or written.

        The origin is read without holding the writer (changes go on meanwhile); only the
        features where something differs are checked again, and repaired, under it.
        """
        loop = asyncio.get_running_loop()
        ids = list(feature_ids)

        def look() -> Refreshed:
            # In its own thread, the states too, through a read-only connection of its own:
            # the writer's pool, its connection and the event loop stay free.
            if self._audit_store is None:
                self._audit_store = SqliteStore.open_reader(self._store.path)
            states = self._audit_store.list_features(only=ids, limit=max(1, len(ids)))
            return self._check_origin(states, True, False)

        looked = await loop.run_in_executor(self._audit_pool, look)
        suspect = {c.feature_id for c in looked.manifests if not c.matches}
        suspect |= {
            fid
            for c in looked.index
            if not c.matches
            for fid in ([c.path.split("/")[1]] if c.path.startswith("features/") else feature_ids)
        }
        if not suspect:
            return looked
        manifests = [c for c in looked.manifests if c.feature_id not in suspect]
        index = [c for c in looked.index if c.matches]
        for feature_id in sorted(suspect):
            # One feature per hold of the writer: a repair writes (and syncs) a few files.
            async with self._lock:
                repaired = await loop.run_in_executor(self._pool, self._repair_feature, feature_id)
            manifests += repaired.manifests
            index += [c for c in repaired.index if c.restored or not c.matches]
        return Refreshed(manifests, index, 0)

    def _repair_feature(self, feature_id: str) -> Refreshed:
        """In a worker thread, under the writer lock: `_check_origin` of one feature, repairing."""
        return self._check_origin(self._store.list_features(only=[feature_id], limit=1), True, True)

    @property
    def feature_ids(self) -> list[str]:
        """Every committed feature, in id order."""
        return list(self._feature_ids)

    def _check_origin(
        self, states: Sequence[FeatureState], live_only: bool, repair: bool
    ) -> Refreshed:
        """In a worker thread: the manifests and index files of `states` on the origin, each
        compared with what was recorded and, with `repair` (under the writer lock only),
        written back where it differs."""
        checks: list[ManifestCheck] = []
        try:
            for state in states:
                live = {state.stable, state.canary.version if state.canary else None}
                for version in state.versions:
                    if not live_only or version.version in live:
                        checks.append(self._check_manifest(state.feature_id, version, repair))
            ids = [s.feature_id for s in states]
            index = [self._check_index_file(path, repair) for path in self._index_paths(ids)]
        except OSError as exc:
            raise Unavailable(
                f"the CDN origin could not be read or written while checking it ({exc}); "
                "retry when it is reachable"
            ) from exc
        return Refreshed(checks, index, 0)

    def _check_shared_index_files(self) -> list[str]:
        """In a worker thread, under the writer lock: the roots, every shard and the top level
        on the origin, repaired where they differ; returns the paths restored (none when the
        origin cannot be reached: the auditor tries again)."""
        if self._index.top is None:
            return []
        paths = [
            *(r.path for r in self._roots),
            *(f.path for f in self._index.shard_files()),
            REMOTE_INDEX_PATH,
        ]
        try:
            return [c.path for c in map(self._check_index_file, paths) if c.restored]
        except OSError as exc:
            log.warning("origin not checked at start: %s", exc)
            return []

    def _index_paths(self, feature_ids: Sequence[str]) -> list[str]:
        """What a host needing `feature_ids` reads of the index, in the order pins point."""
        if self._index.top is None:
            return []
        shards = sorted(
            {shard_path(self._index.bits, bin_of(f, self._index.bits)) for f in feature_ids}
        )
        return [
            *(r.path for r in self._roots),
            *(releases_path(f) for f in feature_ids),
            *shards,
            REMOTE_INDEX_PATH,
        ]

    def _check_index_file(self, path: str, repair: bool = True) -> IndexCheck:
        # In a worker thread: what was signed is known by its SHA-256 in memory (the index's
        # pins), so an origin that holds it costs one read and one hash; the bytes come from
        # the store (thread-safe, never the loop's read caches) only to repair.
        expected = self._index.sha256_of(path) or next(
            (r.sha256 for r in self._roots if r.path == path), None
        )
        on_origin = self._origin.read(path)
        if expected is not None and on_origin is not None and sha256_hex(on_origin) == expected:
            return IndexCheck(path, False, "the origin holds what was signed")
        roots = {r.path: r for r in self._roots}
        committed = (
            roots.get(path)
            or (self._index.top if path == REMOTE_INDEX_PATH else None)
            or self._store.signed_file(path)
        )
        if committed is None:
            return IndexCheck(path, False, "not signed yet")
        if on_origin == committed.content:
            return IndexCheck(path, False, "the origin holds what was signed")
        found = "missing" if on_origin is None else f"sha256 {sha256_hex(on_origin)[:12]}…"
        if self._unmarked.get(path) == committed.sha256:
            return IndexCheck(path, False, f"origin copy is {found}; the newest write is pending")
        if not repair:
            return IndexCheck(path, False, f"origin copy is {found}", matches=False)
        self._origin.write(path, committed.content)
        log.warning("origin repaired: restored index file path=%s found=%s", path, found)
        return IndexCheck(path, True, f"origin copy was {found}; restored the signed file")

    def _check_manifest(
        self, feature_id: str, version: releases.PublishedVersion, repair: bool = True
    ) -> ManifestCheck:
        path = manifest_path(feature_id, version.version)
        on_origin = self._origin.read(path)
        if on_origin is not None and sha256_hex(on_origin) == version.manifest_sha256:
            return ManifestCheck(feature_id, version.version, False, "matches the recorded hash")
        recorded = self._store.get_manifest(feature_id, version.version)
        found = "missing" if on_origin is None else f"sha256 {sha256_hex(on_origin)[:12]}…"
        if not repair:
            return ManifestCheck(
                feature_id, version.version, False, f"origin copy is {found}", matches=False
            )
        if recorded is None or sha256_hex(recorded) != version.manifest_sha256:
            raise Unavailable(
                f"the recorded manifest of {feature_id} {version.version} is missing from the "
                "store; restore the database from a backup"
            )
        self._origin.write(path, recorded)
        log.warning("origin repaired: restored manifest path=%s found=%s", path, found)
        return ManifestCheck(
            feature_id,
            version.version,
            True,
            f"origin copy was {found}; restored the recorded manifest",
        )

    # -- reads -------------------------------------------------------------

    def feature(self, feature_id: str) -> FeatureState:
        state = self._load(feature_id)
        if state is None:
            raise _no_such_feature(feature_id)
        return state

    def require_feature(self, feature_id: str) -> None:
        """Raise NotFound unless `feature_id` was ever committed, without loading its state
        (every feature's id is kept in memory: a read of another file need not load it)."""
        ids = self._feature_ids
        at = bisect.bisect_left(ids, feature_id)
        if at == len(ids) or ids[at] != feature_id:
            raise _no_such_feature(feature_id)

    def features(self, *, after: str, limit: int) -> list[FeatureState]:
        return self._store.list_features(after=after, limit=limit)

    def status(
        self, only: Sequence[str] = (), *, after: str = "", limit: int | None = None
    ) -> Status:
        """The named features' state (every feature's when none are named) in id order, with
        the global sequence it reflects; with `after`/`limit`, only every feature's page
        after that id (a page of 10,000 is not read whole to answer 1,000 of them)."""
        if only and (after or limit is not None):
            raise ValueError("a status of named features is not paged here")
        return Status(
            features=self._all_features(only, after=after, limit=limit),
            global_sequence=self._global_sequence,
            pending_origin_writes=self.pending_count(),
            server_time=self._clock(),
        )

    def _all_features(
        self, only: Sequence[str] = (), *, after: str = "", limit: int | None = None
    ) -> list[FeatureState]:
        if only:
            # As the store lists them: by id, once each, unknown ids skipped.
            found = (self._load(feature_id) for feature_id in sorted(set(only)))
            return [state for state in found if state is not None]
        if len(self._feature_ids) <= _CACHED_FEATURES:
            # Few enough to be kept: every one from memory, in id order as the store lists them.
            start = bisect.bisect_right(self._feature_ids, after) if after else 0
            end = None if limit is None else start + limit
            found = (self._load(feature_id) for feature_id in self._feature_ids[start:end])
            return [state for state in found if state is not None]
        out: list[FeatureState] = []
        while limit is None or len(out) < limit:
            size = 1000 if limit is None else min(1000, limit - len(out))
            page = self._store.list_features(after=after, limit=size)
            if not page:
                break
            out += page
            after = page[-1].feature_id
        return out

    def signed_file(self, path: str) -> SignedFile:
        if path == REMOTE_INDEX_PATH and self._index.top is not None:
            return self._index.top  # the last committed bytes
        file = self._stored_file(path)
        if file is None:
            raise NotFound(f"{path} has not been signed yet: publish a version first")
        return file

    def transitions(self, *, feature_id: str, before_id: int, limit: int) -> list[StoredTransition]:
        return self._store.list_transitions(feature_id=feature_id, before_id=before_id, limit=limit)

    def snapshot(self, feature_ids: Iterable[str]) -> tuple[list[FeatureState], int]:
        """Every (or the named) features' state and the global sequence they reflect.

        Synchronous on purpose: no commit can interleave on the event loop, so
        the states and the sequence match.
        """
        only = list(feature_ids)
        return self._all_features(only), self._global_sequence

    def _stored_file(self, path: str) -> SignedFile | None:
        """The last committed bytes of `path` (None if never), from the cache or the store."""
        file = self._files.get(path)
        if file is None:
            file = self._store.signed_file(path)
            if file is not None:
                self._files.put(path, file)
        return file

    def _load(self, feature_id: str) -> FeatureState | None:
        """The committed state of `feature_id` (None if unknown), from the cache or the store."""
        state = self._states.get(feature_id)
        if state is None:
            state = self._store.load_feature(feature_id)
            if state is not None:
                self._states.put(feature_id, state)
        return state

    @property
    def hub(self) -> WatchHub:
        return self._hub


K = TypeVar("K")
V = TypeVar("V")


def _no_such_feature(feature_id: str) -> NotFound:
    return NotFound(
        f"feature {feature_id!r} does not exist; `releasectl release status` lists "
        "the features, and `releasectl publish` creates one"
    )


class _Recent(Generic[K, V]):
    """The `size` most recently used values, by key: the read cache of committed state.

    Only the controller writes the store, and it puts every committed value
    here as it commits, so a cached value is always the committed one.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self._size:
            self._items.popitem(last=False)
