"""The control plane as the event loop sees it: changes queued, answered, and read.

One way a change flows, and the event loop never waits on disk, the origin or S3:

    RPC or admin form ── change() ──> (a publish: its artifacts kept, then on
        the origin, on the artifact thread) ──> queue ──> the drain task (one at a time)
        ──> write thread: Writer.write_batch (writer.py): request ids, state
            machine, signing, ONE store commit, origin writes
        ──> event loop: the in-memory snapshot updated, each caller answered,
            watchers told

Everything that waits runs on a thread of its own:

- the **artifact thread**: a publish's artifacts streamed from the upload's
  spool into the artifact store (`artifacts.ArtifactStore`), then onto the
  origin; content-addressed, so before the change commits is safe, and a
  committed version's artifacts are always kept;
- the **write thread** (one): every change (`Writer.write_batch`), key
  installs, the outbox retried, repairs of the origin. Whoever holds
  `_writing` (an asyncio lock) has it, so the loop applies a result to the
  snapshot before the next piece of work starts;
- the **audit thread**: reading the origin to compare it with what was signed
  (`repair.OriginCheck`, for `audit.OriginAuditor`), through a read-only store
  connection; only what differs is checked again, and repaired, on the write
  thread;
- the **read thread**: the store reads the snapshot does not hold (history, a
  releases.json not used lately), through another read-only connection, which
  WAL lets read while the writer commits;
- the **sync thread** (`writer.Writer`): the fsyncs of files the write thread
  renamed into place on the origin, and of their folders; what it synced is
  marked written with the next commit;
- the **upload threads** (`upload.py`): a publish's chunks hashed and spooled
  as they arrive.

Reads of state answer from the snapshot: every feature's state, the global
sequence they reflect, and the signed files used lately. Only the drain task
changes it, on the loop, after the commit, so a read never sees a change that
did not commit, and the states and the sequence always match.

Several replicas on one PostgreSQL: every piece of write-thread work holds the
database's lease (one replica at a time signs and writes the origin) and first
follows what other replicas committed (`Writer.follow`), putting their changes
into the snapshot and to watchers before its own; the **follower** task does the
same whenever another replica commits (LISTEN/NOTIFY) and at least every
second, and keeps `leading` (the one-per-cluster jobs, leader.py) and
`database_ok` (gRPC health) up to date.

Changes that arrive while the write thread is busy are taken together (group
commit): each is applied in arrival order with its own sequence, audit record
and answer, but they share one transaction, one shard per touched bin and one
remote-index.json. A change is acknowledged once the origin serves it (durable
there moments later: until then the store's outbox still lists it, so a power
cut is healed at the next start); one that committed but whose origin write
failed is answered with exactly that, and the write is retried in the
background and at the next start.
"""

from __future__ import annotations

import asyncio
import bisect
import functools
import logging
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Generic, NoReturn, ParamSpec, TypeVar

from releasecontrol.errors import (
    FailedPrecondition,
    NotFound,
    OriginPending,
    ReleaseControlError,
    Unavailable,
)
from releasecontrol.index import REMOTE_INDEX_PATH
from releasecontrol.manifest import artifact_path
from releasecontrol_server.approvals import (
    ApprovalPolicy,
    ApprovalRequest,
    check_approver,
)
from releasecontrol_server.approvals import expires as approval_expiry
from releasecontrol_server.approvals import required as approval_required
from releasecontrol_server.artifacts import ArtifactStore
from releasecontrol_server.beacons import Counts
from releasecontrol_server.origin import Origin
from releasecontrol_server.rebuild import Progress, Rebuild
from releasecontrol_server.releases import AdvanceStep, ChangeMeta, Command, FeatureState, Promote
from releasecontrol_server.repair import OriginCheck, Refreshed
from releasecontrol_server.signer import Signer
from releasecontrol_server.store import Event, SignedFile, Store, StoredTransition
from releasecontrol_server.upload import ReceivedAsset
from releasecontrol_server.watch import ChangeEvent, RefreshEvent, WatchHub
from releasecontrol_server.writer import (
    Applied,
    Batch,
    Followed,
    Request,
    WriteObserver,
    Writer,
    utc_now,
)

__all__ = ["Applied", "ReleaseController", "Status", "utc_now"]

NO_APPROVALS = ApprovalPolicy()

log = logging.getLogger(__name__)

R = TypeVar("R")
P = ParamSpec("P")

_RETRY_SECONDS = 5.0
"""How often a failed origin write is tried again."""
FOLLOW_SECONDS = 1.0
"""How often the follower looks for other replicas' commits without being woken."""
_CACHED_FILES = 16_384
"""Signed files (releases.json) kept in memory for reads, the most recently used."""


@dataclass(frozen=True)
class Status:
    features: list[FeatureState]
    global_sequence: int
    pending_origin_writes: int
    server_time: datetime


@dataclass
class _Waiting:
    """A queued change and its caller's future (only the loop touches the future)."""

    request: Request
    answer: asyncio.Future[Applied]


class ReleaseController:
    """Applies release changes durably and serves the committed state."""

    def __init__(
        self,
        *,
        store: Store,
        origin: Origin,
        artifacts: ArtifactStore,
        signer: Signer,
        hub: WatchHub,
        default_soak_seconds: int,
        clock: Callable[[], datetime] = utc_now,
        roots: Sequence[SignedFile] = (),
        root_version: int = 1,
        approvals: ApprovalPolicy = NO_APPROVALS,
        write_observer: WriteObserver | None = None,
    ) -> None:
        """`roots`: the signed roots to publish (roots/1.json …); `root_version`: the one every
        remote-index.json is signed under (see `install_keys`); `approvals`: which changes wait
        for a second principal (approvals.py)."""
        self.approvals = approvals
        self.count_canary_loads: Callable[[str, str, datetime], Awaitable[int]] = self._beacon_loads
        """Where a soak by exposure gets the canary's loads (the analysis' source, set by
        main; the beacons by default)."""
        self.leading = store.lead()
        """Whether this replica runs the one-per-cluster jobs (canary steps, analysis, webhooks,
        re-signing, the origin check): always on SQLite; on PostgreSQL, the one replica holding
        the leader lock, asked again every second by the follower."""
        self.database_ok = True
        """Whether the database answered the follower's last look (health: NOT_SERVING when
        not, so the replica gets no traffic, until it answers again)."""
        self.health_listeners: list[Callable[[bool], None]] = []
        """Called on the loop with `database_ok` each time it changes."""
        self.event_listeners: list[Callable[[], None]] = []
        """Called on the loop whenever an event for the webhooks was kept (a change, an
        approval request or approval, a verdict)."""
        self._store = store
        self._origin = origin
        self._artifacts = artifacts
        self._writer = Writer(
            store=store, origin=origin, signer=signer, roots=roots, root_version=root_version
        )
        self._writer.observer = write_observer  # how committed files reach the origin
        self._hub = hub
        self._default_soak = default_soak_seconds
        self._clock = clock
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-write")
        self._artifact_thread = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-artifact")
        self._writing = asyncio.Lock()
        self._read_thread = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-read")
        self._reader: Store | None = None  # opened at start, used on the read thread
        self._audit_thread = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-audit")
        self._audit_store: Store | None = None  # opened by the audit thread
        self._queue: list[_Waiting] = []
        self._drain: asyncio.Task[None] | None = None
        self._retry_task: asyncio.Task[None] | None = None
        self._stopping = False  # set by stop(): no retry is scheduled after it
        self._follower: asyncio.Task[None] | None = None
        self._rebuilding = False
        # The snapshot reads answer from; only the loop changes it, after each commit.
        self._states: dict[str, FeatureState] = {}
        self._feature_ids: list[str] = []  # every committed feature, in id order
        self._global_sequence = 0
        self._top: SignedFile | None = None  # remote-index.json as last committed
        self._files: _Recent[str, SignedFile] = _Recent(_CACHED_FILES)

    @property
    def default_soak_seconds(self) -> int:
        return self._default_soak

    async def _on_write_thread(self, fn: Callable[P, R], *args: P.args, **kw: P.kwargs) -> R:
        """`fn` run on the write thread, holding the database's lease (one replica at a time
        signs and writes the origin), after following what other replicas committed (into
        the snapshot first: their changes come before `fn`'s); the caller holds `_writing`."""
        assert self._writing.locked()

        def leased() -> tuple[Followed, Callable[[], R]]:
            with self._store.exclusive():
                followed = self._writer.follow()
                try:
                    result = fn(*args, **kw)
                except Exception as exc:  # raised on the loop, once what was followed is in
                    return followed, functools.partial(_reraise, exc)
                return followed, lambda: result

        followed, outcome = await asyncio.get_running_loop().run_in_executor(
            self._write_thread, leased
        )
        # The writer's memory has moved on: the snapshot must too, whatever `fn` did.
        self._apply_followed(followed)
        return outcome()

    def _apply_followed(self, followed: Followed) -> None:
        """On the loop: what other replicas committed into the snapshot, and told to watchers,
        in commit order."""
        self._remember(followed.files)
        for transition, state in followed.changes:
            if state.feature_id not in self._states:
                bisect.insort(self._feature_ids, state.feature_id)
            self._states[state.feature_id] = state
            self._global_sequence = transition.global_sequence
            self._hub.publish(ChangeEvent(transition.global_sequence, state, transition))
        if followed.changes:
            self._events_kept()  # their events, for this replica's webhooks if it leads
        if self.pending_count():
            # Owed as the store says: a replica that died mid-publish left it so, or one that
            # is alive will mark it written; the retry writes it or sees it marked.
            self._schedule_retry()

    async def _follow(self) -> None:
        """The follower: whenever another replica commits (LISTEN/NOTIFY on PostgreSQL; at
        least every FOLLOW_SECONDS), its changes into the snapshot and to watchers; and, each
        time, whether this replica leads and whether the database answers."""
        loop = asyncio.get_running_loop()
        listener = self._store.listener()
        listening = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-listen")

        def look() -> tuple[Followed, bool]:
            return self._writer.follow(), self._store.lead()

        try:
            while True:
                await loop.run_in_executor(listening, listener.wait, FOLLOW_SECONDS)
                async with self._writing:
                    try:
                        followed, leading = await loop.run_in_executor(self._write_thread, look)
                    except Unavailable as exc:
                        self._database_answers(False, exc.message)
                        continue
                    except Exception:  # a bug: loud, and the follower goes on
                        log.exception("following the other replicas' commits failed")
                        continue
                    self._database_answers(True)
                    self._lead(leading)
                    self._apply_followed(followed)
        finally:
            listener.close()
            listening.shutdown(wait=False)

    def _database_answers(self, answers: bool, reason: str = "") -> None:
        if answers == self.database_ok:
            return
        self.database_ok = answers
        if answers:
            log.info("the database answers again")
        else:
            log.warning("the database does not answer: %s", reason)
            self._lead(False)
        for listener in self.health_listeners:
            listener(answers)

    def _lead(self, leading: bool) -> None:
        if leading != self.leading:
            log.info("this replica %s", "leads" if leading else "no longer leads")
            self.leading = leading

    async def start(self) -> None:
        """Load every feature's state and the index, publish the roots, sign the index again if
        the keys or the root changed (or the origin is of host protocol v1), repair the index
        files every host reads, and finish origin writes a crash left pending."""
        async with self._writing:
            leftovers = await self._on_write_thread(self._writer.load)
            leftovers += [
                f"{self._artifacts.where}/{path}"
                for path in await self._on_write_thread(self._artifacts.remove_leftovers)
            ]
            if leftovers:
                log.warning(
                    "removed %d temporary files a killed process left on the origin or in the "
                    "artifact store: %s",
                    len(leftovers),
                    ", ".join(leftovers[:5]) + (" …" if len(leftovers) > 5 else ""),
                )
            self._states = dict(self._writer.states)
            self._feature_ids = sorted(self._states)
            self._global_sequence = self._writer.global_sequence
            self._top = self._writer.index.top
            self._reader = self._store.reader()
            self._remember(await self._on_write_thread(self._writer.ensure_index, self._clock()))
            # The files every host reads (roots, remote-index.json, the shards): checked and
            # repaired before serving; each feature's own files by the OriginAuditor after.
            check = OriginCheck(self._writer, self._store)
            repaired = await self._on_write_thread(check.shared_index_files)
            if repaired:
                log.warning("origin repaired at start: %s", ", ".join(repaired))
            pending = self.pending_count()
            if pending:
                log.info("finishing %d origin writes left by the previous run", pending)
            if not await self._on_write_thread(self._writer.flush):
                self._schedule_retry()
        if self._store.shared:  # replicas: another process may commit
            self._follower = asyncio.get_running_loop().create_task(self._follow())

    async def stop(self) -> None:
        """Stop retrying origin writes; wait for the changes the write thread took."""
        self._stopping = True
        for task in (self._retry_task, self._follower):
            if task is not None:
                task.cancel()
        await self.idle()
        pools = (self._write_thread, self._artifact_thread, self._read_thread, self._audit_thread)
        for pool in pools:
            pool.shutdown(wait=True)
        self._writer.close()
        for reader in (self._reader, self._audit_store):
            if reader is not None:
                reader.close()

    async def install_keys(
        self, signer: Signer, roots: Sequence[SignedFile], root_version: int
    ) -> None:
        """Sign with `signer` under root `root_version` from now on: publish the new roots,
        sign every releases.json and shard again and a new top level (a key rotation)."""
        async with self._writing:
            files = await self._on_write_thread(
                self._writer.install_keys, signer, roots, root_version, self._clock()
            )
            self._remember(files)
            if not await self._on_write_thread(self._writer.flush):
                self._schedule_retry()

    def _remember(self, files: Iterable[SignedFile]) -> None:
        """Committed files into the snapshot's file cache."""
        for file in files:
            if file.path == REMOTE_INDEX_PATH:
                self._top = file
            self._files.put(file.path, file)

    # -- writes ------------------------------------------------------------

    async def change(
        self,
        feature_id: str,
        command: Command,
        meta: ChangeMeta,
        *,
        rpc: str,
        request_id: str,
        manifest: bytes | None = None,
        artifacts: Mapping[str, ReceivedAsset] | None = None,
    ) -> Applied:
        """Apply `command` to the feature once, durably; what it did (the RPC encodes it).

        A `request_id` seen before returns what the first request did again,
        without applying anything. Raises the state machine's errors (nothing
        changed), or OriginPending when the change committed but the origin write
        failed (it is retried in the background).

        Changes that arrive while the writer is busy are applied together, in
        arrival order, as one store transaction and one origin write of
        remote-index.json (group commit); each is still its own audit record
        and global sequence, and each caller gets its own answer or error.
        """
        loop = asyncio.get_running_loop()
        if artifacts:
            await self._keep_artifacts(feature_id, artifacts)
        state = self._states.get(feature_id)
        if not meta.approved_by:
            what = self.approvals.gate(feature_id, command, state)
            if what:  # kept, with its artifacts, until another principal approves it
                raise await self._ask_approval(feature_id, command, meta, what, rpc, manifest)
        canary_loads = await self.canary_loads_for(state, command)
        request = Request(
            feature_id=feature_id,
            command=command,
            meta=meta,
            rpc=rpc,
            request_id=request_id,
            manifest=manifest,
            canary_loads=canary_loads,
        )
        waiting = _Waiting(request, loop.create_future())
        self._queue.append(waiting)
        if self._drain is None or self._drain.done():
            self._drain = loop.create_task(self._write_queued())
        # Cancelling the caller cancels only this wait: a change still queued is
        # then dropped, one already on the write thread completes.
        return await waiting.answer

    async def _ask_approval(
        self,
        feature_id: str,
        command: Command,
        meta: ChangeMeta,
        what: str,
        rpc: str,
        manifest: bytes | None,
    ) -> FailedPrecondition:
        """The error that tells the caller its change waits for approval, the request kept."""
        if isinstance(command, AdvanceStep):  # a step plan holds at its last step instead
            return FailedPrecondition(f"{what} of feature {feature_id!r} needs approval")
        now = self._clock()
        async with self._writing:
            request = await self._on_write_thread(
                self._store.add_approval,  # and its event, for the webhooks
                feature_id,
                rpc,
                command,
                meta,
                what,
                manifest=manifest,
                now=now,
                expires_at=approval_expiry(now, self.approvals),
            )
        log.info(
            "approval asked id=%d feature=%s by=%s what=%r",
            request.id,
            feature_id,
            meta.principal,
            what,
        )
        self._events_kept()
        return approval_required(request, now)

    async def approve(self, approval_id: int, approver: str) -> tuple[ApprovalRequest, Applied]:
        """Apply the change of approval request `approval_id` as its requester asked it, with
        `approver` named in its record. Raises NotFound, PermissionDenied (the requester),
        FailedPrecondition (approved already, expired) or the change's own error (then the
        request still waits)."""
        request = check_approver(
            await self._read(lambda store: store.approval(approval_id)),
            approval_id,
            approver,
            self._clock(),
        )
        applied = await self.change(
            request.feature_id,
            request.command,
            replace(request.meta, approved_by=approver),
            rpc=request.rpc,
            request_id=f"approval-{request.id}",  # approving twice applies it once
            manifest=request.manifest,
        )
        transition = applied.transition
        async with self._writing:
            done = await self._on_write_thread(
                self._store.mark_approved,
                request.id,
                approver,
                self._clock(),
                None if transition is None else transition.id,
            )
        self._events_kept()
        return done, applied

    async def beacon_counts(self, feature_id: str, since: datetime) -> defaultdict[str, Counts]:
        """What hosts reported of each version of `feature_id` since `since` (a version
        without reports: zero counts)."""
        kept = await self._read(lambda store: store.beacon_counts(feature_id, since))
        out: defaultdict[str, Counts] = defaultdict(Counts)
        for version, (loads, entry_errors, load_failures, refusals, batches) in kept.items():
            out[version] = Counts(loads, entry_errors, load_failures, refusals, batches)
        return out

    async def add_beacon_counts(self, rows: Mapping[tuple[str, str, datetime], Counts]) -> None:
        """Keep what the beacon tally summed (one transaction, on the write thread)."""
        kept = [
            (
                feature,
                version,
                minute,
                (c.loads, c.entry_errors, c.load_failures, c.refusals, c.batches),
            )
            for (feature, version, minute), c in rows.items()
        ]
        async with self._writing:
            await self._on_write_thread(self._store.add_beacon_counts, kept)

    async def canary_loads_for(self, state: FeatureState | None, command: Command) -> int:
        """The canary loads `command` is judged with (a soak by exposure): only a promote or a
        step of a canary with `min_loads` counts them, from the analysis' source; else 0.
        The admin UI's previews ask this too, so they decide as the change will."""
        canary = state.canary if state is not None else None
        if state is None or canary is None or not canary.min_loads:
            return 0
        if not isinstance(command, Promote | AdvanceStep):
            return 0
        return await self.count_canary_loads(
            state.feature_id, canary.version, canary.soak_started_at
        )

    async def _beacon_loads(self, feature_id: str, version: str, since: datetime) -> int:
        return (await self.beacon_counts(feature_id, since))[version].loads

    def _events_kept(self) -> None:
        for listener in self.event_listeners:
            listener()

    async def add_event(self, kind: str, feature_id: str, body: dict[str, Any]) -> None:
        """Keep an event for the webhooks (an analysis verdict)."""
        async with self._writing:
            await self._on_write_thread(
                self._store.add_event, kind, self._clock(), feature_id, body
            )
        self._events_kept()

    async def events_after(self, after: int) -> list[Event]:
        return await self._read(lambda store: store.events_after(after))

    async def last_event_id(self) -> int:
        return await self._read(lambda store: store.last_event_id())

    async def webhook_cursor(self, name: str) -> int | None:
        return await self._read(lambda store: store.webhook_cursor(name))

    async def set_webhook_cursor(self, name: str, delivered: int) -> None:
        async with self._writing:
            await self._on_write_thread(self._store.set_webhook_cursor, name, delivered)

    async def approval_requests(self, feature_id: str = "") -> list[ApprovalRequest]:
        return await self._read(lambda store: store.list_approvals(feature_id))

    async def approval_request(self, approval_id: int) -> ApprovalRequest | None:
        return await self._read(lambda store: store.approval(approval_id))

    def now(self) -> datetime:
        """The controller's clock (what approvals expire by)."""
        return self._clock()

    async def _keep_artifacts(
        self, feature_id: str, artifacts: Mapping[str, ReceivedAsset]
    ) -> None:
        """On the artifact thread: each artifact streamed into the artifact store, then onto
        the origin, unless there already (content-addressed: the same bytes). Raises
        Unavailable, with nothing committed, when either cannot be written."""
        store, origin = self._artifacts, self._origin

        def keep() -> None:
            for asset in artifacts.values():
                try:
                    store.keep(asset.sha256, asset.file)
                except OSError as exc:
                    where = f"the artifact store {store.where}"
                    raise _nothing_committed(feature_id, where, exc) from exc
                path = artifact_path(asset.sha256, asset.path)
                try:
                    if not origin.exists(path):
                        asset.file.seek(0)
                        origin.write_file(path, asset.file)
                except OSError as exc:
                    raise _nothing_committed(feature_id, "the CDN origin", exc) from exc

        await asyncio.get_running_loop().run_in_executor(self._artifact_thread, keep)

    async def _write_queued(self) -> None:
        """The drain task: hand what is queued to the write thread, a batch at a time."""
        while self._queue:
            async with self._writing:
                # Taken with the writer held: whatever queued meanwhile joins this batch.
                batch = [w for w in self._queue if not w.answer.done()]
                self._queue = []
                if not batch:
                    continue
                try:
                    result = await self._on_write_thread(
                        self._writer.write_batch, [w.request for w in batch], self._clock()
                    )
                except ReleaseControlError as exc:  # the database is away, say: no traceback
                    log.warning("a batch of %d changes failed: %s", len(batch), exc.message)
                    for waiting in batch:
                        _fail(waiting.answer, exc)
                    continue
                except Exception as exc:  # a bug: answer with it rather than hang
                    log.exception("applying a batch of %d changes failed", len(batch))
                    for waiting in batch:
                        _fail(waiting.answer, exc)
                    continue
                except BaseException:  # shutting down
                    for waiting in batch:
                        _fail(waiting.answer, Unavailable("the server is shutting down; retry"))
                    raise
                self._settle(batch, result)

    def _settle(self, batch: list[_Waiting], result: Batch) -> None:
        """On the loop: the batch's commits into the snapshot, then every caller answered,
        then watchers told."""
        self._remember(result.files)
        for item in result.committed.values():
            state = item.change.state
            if state.feature_id not in self._states:  # a new feature
                bisect.insort(self._feature_ids, state.feature_id)
            self._states[state.feature_id] = state
            self._global_sequence = item.change.global_sequence
            log.debug(  # the change's log line is logs.log_change's, from the watch hub
                "committed feature=%s action=%s version=%s sequence=%d global_sequence=%d actor=%r",
                state.feature_id,
                item.change.record.action,
                item.change.record.version,
                state.sequence,
                item.change.global_sequence,
                item.request.meta.actor,
            )
        if not result.flushed or self.pending_count():
            self._schedule_retry()
        for at, waiting in enumerate(batch):
            first = result.like.get(at, at)  # a repeated request_id: as its first request
            committed = result.committed.get(first)
            if committed is not None and not result.flushed:
                state = committed.change.state
                _fail(
                    waiting.answer,
                    OriginPending(
                        f"the change to {state.feature_id!r} committed as sequence "
                        f"{state.sequence}, but writing it to the CDN origin failed; the server "
                        "keeps retrying, and `releasectl release status` shows the pending writes"
                    ),
                )
            elif first in result.errors:
                _fail(waiting.answer, result.errors[first])
            elif not waiting.answer.done():
                waiting.answer.set_result(result.answers[first])
        # Watchers after the callers: with many of them, the fan-out would otherwise
        # hold every caller's acknowledgement back until each watcher was served.
        for item in result.committed.values():
            change = item.change
            self._hub.publish(ChangeEvent(change.global_sequence, change.state, item.transition))
        if result.committed:
            self._events_kept()

    async def idle(self) -> None:
        """Return once every queued change was answered, its files on the origin synced and
        marked written in the store (whose outbox then lists exactly what the origin lacks)."""
        while self._drain is not None and not self._drain.done():
            await asyncio.wait([self._drain])
        async with self._writing:
            await self._on_write_thread(self._writer.settle)

    def pending_count(self) -> int:
        """How many committed files the origin may lack: the store's outbox, from memory."""
        return self._writer.pending_count()

    def _schedule_retry(self) -> None:
        if self._stopping:  # what is owed stays in the store's outbox for the next start
            return
        if self._retry_task is None or self._retry_task.done():
            self._retry_task = asyncio.get_running_loop().create_task(self._retry())

    async def _retry(self) -> None:
        """Write what the origin is owed every _RETRY_SECONDS until it has it all. Whatever a
        try raises (the database away, say), the next one comes: a retry that ended with it
        would leave the origin owed until something else scheduled another."""
        while True:
            await asyncio.sleep(_RETRY_SECONDS)
            try:
                async with self._writing:
                    if not self.pending_count():  # written meanwhile (by a change's flush)
                        return
                    if await self._on_write_thread(self._writer.flush):
                        log.info("pending origin writes finished")
                        return
            except ReleaseControlError as exc:
                log.warning("writing the pending origin writes failed, retried: %s", exc.message)
            except Exception:  # a bug: loud, and still retried
                log.exception("writing the pending origin writes failed, retried")

    # -- the origin checked ------------------------------------------------

    async def refresh_manifests(self, feature_ids: Sequence[str] = ()) -> Refreshed:
        """Re-read every published manifest and the index files hosts read for these features
        (the roots, remote-index.json, their shards and releases.json) on the origin, restore
        any that is missing or differs from what was recorded and signed, then tell watchers
        (hosts) to refresh now.

        Raises NotFound for an unknown feature, Unavailable when the origin cannot be read
        or written.
        """
        states = self._all_features(feature_ids)
        missing = sorted(set(feature_ids) - {s.feature_id for s in states})
        if missing:
            raise _no_such_feature(missing[0])
        check = OriginCheck(self._writer, self._store)
        async with self._writing:
            refreshed = await self._on_write_thread(
                check.features, states, live_only=False, repair=True
            )
        ids = tuple(s.feature_id for s in states)
        notified = self._hub.subscriber_count
        self._hub.publish(RefreshEvent(ids, self._global_sequence))
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

        The origin is read on the audit thread (changes go on meanwhile); only the features
        where something differs are checked again, and repaired, on the write thread, one at
        a time.
        """
        loop = asyncio.get_running_loop()
        states = self._all_features(feature_ids)

        def look() -> Refreshed:
            if self._audit_store is None:
                self._audit_store = self._store.reader()
            check = OriginCheck(self._writer, self._audit_store)
            return check.features(states, live_only=True, repair=False)

        looked = await loop.run_in_executor(self._audit_thread, look)
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
        check = OriginCheck(self._writer, self._store)
        for feature_id in sorted(suspect):
            # One feature per hold of the writer: a repair writes (and syncs) a few files.
            # With the writer held, the snapshot is what the write thread committed.
            async with self._writing:
                repaired = await self._on_write_thread(
                    check.features, [self._states[feature_id]], live_only=True, repair=True
                )
            manifests += repaired.manifests
            index += [c for c in repaired.index if c.restored or not c.matches]
        return Refreshed(manifests, index)

    async def rebuild_origin(
        self, report: Callable[[Progress], None], *, force: bool, actor: str
    ) -> Progress:
        """Put everything hosts read back on the origin (`rebuild.Rebuild`), after signing
        the features the origin is ahead on above its sequences (a restored database).
        `report` is called on the loop with each `Progress`; returns the last one. Raises
        FailedPrecondition while another rebuild runs, Unavailable when the origin or the
        artifact store fails."""
        if self._rebuilding:
            raise FailedPrecondition("an origin rebuild is running already; wait for it to end")
        self._rebuilding = True
        loop = asyncio.get_running_loop()
        reader = self._store.reader()
        # A thread of its own: a long rebuild never holds up a publish's artifacts.
        rebuilding = ThreadPoolExecutor(1, thread_name_prefix="releasecontrol-rebuild")
        try:
            async with self._writing:
                meta = ChangeMeta(actor=actor, reason="origin rebuild", principal=actor)
                batch = await self._on_write_thread(self._writer.reconcile, meta, self._clock())
                self._settle([], batch)
            reconciled = tuple(c.change.state.feature_id for c in batch.committed.values())
            report(Progress("reconcile", reconciled=reconciled))

            def tell(progress: Progress) -> None:  # from the rebuild's threads
                loop.call_soon_threadsafe(report, progress)

            rebuild = Rebuild(
                origin=self._origin,
                artifacts=self._artifacts,
                store=reader,
                report=tell,
                force=force,
            )
            states = self._all_features()
            index_count = len(self._writer.roots) + len(states) + 1 + 2**self._writer.index.bits
            await loop.run_in_executor(rebuilding, rebuild.plan, states, index_count)
            await loop.run_in_executor(rebuilding, rebuild.artifacts_and_manifests)
            async with self._writing:
                await self._on_write_thread(rebuild.index, self._writer)
        except OSError as exc:
            raise Unavailable(
                f"the origin rebuild stopped: {exc}; fix the origin or the artifact store and "
                "run it again (what was written stays; it is picked up where it differs)"
            ) from exc
        finally:
            self._rebuilding = False
            await loop.run_in_executor(rebuilding, reader.close)
            rebuilding.shutdown(wait=False)
        done = replace(rebuild.progress, reconciled=reconciled)
        log.info(
            "origin rebuilt files=%d written=%d bytes=%d reconciled=%d missing_artifacts=%d",
            done.done,
            done.written,
            done.bytes_written,
            len(done.reconciled),
            len(done.missing),
        )
        return done

    # -- reads: from the snapshot, else on the read thread -------------------

    @property
    def feature_ids(self) -> list[str]:
        """Every committed feature, in id order."""
        return list(self._feature_ids)

    @property
    def hub(self) -> WatchHub:
        return self._hub

    def state_of(self, feature_id: str) -> FeatureState | None:
        """The committed state of `feature_id`, None when it was never published."""
        return self._states.get(feature_id)

    def feature(self, feature_id: str) -> FeatureState:
        state = self._states.get(feature_id)
        if state is None:
            raise _no_such_feature(feature_id)
        return state

    def require_feature(self, feature_id: str) -> None:
        """Raise NotFound unless `feature_id` was ever committed."""
        self.feature(feature_id)

    def features(self, *, after: str, limit: int) -> list[FeatureState]:
        """Up to `limit` features in id order, strictly after `after`."""
        return self._all_features(after=after, limit=limit)

    def status(
        self, only: Sequence[str] = (), *, after: str = "", limit: int | None = None
    ) -> Status:
        """The named features' state (every feature's when none are named) in id order, with
        the global sequence it reflects; with `after`/`limit`, only every feature's page
        after that id."""
        if only and (after or limit is not None):
            raise ValueError("a status of named features is not paged here")
        return Status(
            features=self._all_features(only, after=after, limit=limit),
            global_sequence=self._global_sequence,
            pending_origin_writes=self.pending_count(),
            server_time=self._clock(),
        )

    def snapshot(self, feature_ids: Iterable[str]) -> tuple[list[FeatureState], int]:
        """Every (or the named) features' state and the global sequence they reflect.

        Synchronous on purpose: no commit can interleave on the event loop, so
        the states and the sequence match.
        """
        return self._all_features(list(feature_ids)), self._global_sequence

    def _all_features(
        self, only: Sequence[str] = (), *, after: str = "", limit: int | None = None
    ) -> list[FeatureState]:
        if only:  # as the store lists them: by id, once each, unknown ids skipped
            found = (self._states.get(feature_id) for feature_id in sorted(set(only)))
            return [state for state in found if state is not None]
        start = bisect.bisect_right(self._feature_ids, after) if after else 0
        end = None if limit is None else start + limit
        return [self._states[feature_id] for feature_id in self._feature_ids[start:end]]

    async def signed_file(self, path: str) -> SignedFile:
        """The last committed bytes of `path` (remote-index.json or a releases.json)."""
        if path == REMOTE_INDEX_PATH and self._top is not None:
            return self._top
        file = self._files.get(path)
        if file is None:
            file = await self._read(lambda reader: reader.signed_file(path))
            if file is None:
                raise NotFound(f"{path} has not been signed yet: publish a version first")
            # Not cached over a newer commit the loop applied while this read was away.
            if self._files.get(path) is None:
                self._files.put(path, file)
        return file

    async def transitions(
        self, *, feature_id: str, before_id: int, limit: int
    ) -> list[StoredTransition]:
        """The audit trail, newest first (of one feature, or all), before id `before_id`."""
        return await self._read(
            lambda reader: reader.list_transitions(
                feature_id=feature_id, before_id=before_id, limit=limit
            )
        )

    async def _read(self, fn: Callable[[Store], R]) -> R:
        """`fn` of the read-only store connection, on the read thread."""
        reader = self._reader
        if reader is None:
            raise Unavailable("the server is starting; retry")
        return await asyncio.get_running_loop().run_in_executor(
            self._read_thread, lambda: fn(reader)
        )


K = TypeVar("K")
V = TypeVar("V")


def _no_such_feature(feature_id: str) -> NotFound:
    return NotFound(
        f"feature {feature_id!r} does not exist; `releasectl release status` lists "
        "the features, and `releasectl publish` creates one"
    )


def _nothing_committed(feature_id: str, where: str, exc: OSError) -> Unavailable:
    return Unavailable(
        f"writing the artifacts of {feature_id!r} to {where} failed ({exc}); nothing was "
        "committed: retry when it is reachable"
    )


def _reraise(error: Exception) -> NoReturn:
    raise error


def _fail(answer: asyncio.Future[Applied], error: BaseException) -> None:
    """Answer with `error`, unless the caller is gone (then nobody will read it)."""
    if not answer.done():
        answer.set_exception(error)


class _Recent(Generic[K, V]):
    """The `size` most recently used values, by key: the read cache of committed files.

    Only the drain task puts committed values here as it settles a batch, so a cached
    value is always the committed one.
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
