"""The gRPC servicer: proto in, domain call, proto out; and the one error-to-status mapping.

Nothing here decides a release rule: `releases.py` does, `control.py` runs it.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import functools
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar, cast

import grpc
import httpx
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from releasecontrol.errors import (
    InvalidArgument,
    NotFound,
    ReleaseControlError,
)
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.limits import check_change_context
from releasecontrol.manifest import canonical_bytes, parse_manifest, sha256_hex, validate_feature_id
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc
from releasecontrol_server import releases, webhooks
from releasecontrol_server.analyzer import CanaryAnalyzer
from releasecontrol_server.approvals import ApprovalRequest, pending_first
from releasecontrol_server.auth.authorize import RPC_ACTIONS, permits, require, require_each
from releasecontrol_server.auth.authorize import Action as AuthAction
from releasecontrol_server.control import Applied, ReleaseController
from releasecontrol_server.rebuild import Progress
from releasecontrol_server.releases import Action, ChangeMeta, Channel, FeatureState
from releasecontrol_server.status import abort_unexpected, abort_with
from releasecontrol_server.store import SignedFile, StoredTransition
from releasecontrol_server.upload import Upload
from releasecontrol_server.watch import ChangeEvent, Lagged, RefreshEvent

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_ACTIONS = {
    Action.PUBLISH: pb.TRANSITION_ACTION_PUBLISH,
    Action.DEPLOY_CANARY: pb.TRANSITION_ACTION_DEPLOY_CANARY,
    Action.PROMOTE: pb.TRANSITION_ACTION_PROMOTE,
    Action.ROLLBACK: pb.TRANSITION_ACTION_ROLLBACK,
    Action.SET_CHANNEL: pb.TRANSITION_ACTION_SET_CHANNEL,
    Action.SET_WEIGHT: pb.TRANSITION_ACTION_SET_WEIGHT,
    Action.ADVANCE_STEP: pb.TRANSITION_ACTION_ADVANCE_STEP,
    Action.RESIGN: pb.TRANSITION_ACTION_RESIGN,
    Action.RECONCILE: pb.TRANSITION_ACTION_RECONCILE,
}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
K = TypeVar("K")

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["ReleaseControl"].full_name


_RUNNING: set[asyncio.Future[Progress]] = set()
"""Rebuilds whose caller may have left: they run to their end."""


def _progress_to_proto(progress: Progress) -> pb.RebuildOriginResponse:
    return pb.RebuildOriginResponse(
        stage=progress.stage,
        files_done=progress.done,
        files_total=max(progress.total, progress.done),
        files_written=progress.written,
        bytes_written=progress.bytes_written,
        path=progress.path,
        reconciled=progress.reconciled,
        missing_artifacts=progress.missing,
    )


def maps_errors(method: F) -> F:
    """Decorate a unary-response RPC so a ReleaseControlError ends it with its status, and
    any other exception (a bug) as INTERNAL without its text (`status.abort_unexpected`)."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await method(self, request, context)
        except ReleaseControlError as error:
            await abort_with(error, context)
        except aio.AbortError:
            raise
        except Exception:
            await abort_unexpected(method.__name__, context)

    return cast(F, wrapper)


# -- proto <-> domain ----------------------------------------------------------


@functools.lru_cache(maxsize=1 << 16)
def _timestamp(moment: datetime) -> tuple[int, int]:
    """(seconds, nanos) of `moment` as Timestamp.FromDatetime sets them (and refuses).

    The same instants (every version's publish time) are converted on every change.
    """
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp.seconds, stamp.nanos


def _set_time(field: Timestamp, moment: datetime) -> None:
    field.seconds, field.nanos = _timestamp(moment)


def feature_to_proto(state: FeatureState) -> pb.Feature:
    out = pb.Feature(
        feature_id=state.feature_id,
        sequence=state.sequence,
        stable_version=state.stable or "",
        updated_by=state.updated_by,
        updated_by_principal=state.updated_by_principal,
    )
    if state.updated_at is not None:
        _set_time(out.updated_at, state.updated_at)
    canary = state.canary
    if canary is not None:
        out.canary.version = canary.version
        out.canary.soak_seconds = canary.soak_seconds
        _set_time(out.canary.soak_started_at, canary.soak_started_at)
        _set_time(out.canary.soak_ends_at, canary.soak_ends_at)
        out.canary.weight = canary.weight
        out.canary.steps.extend(canary.steps)
        out.canary.step_seconds = canary.step_seconds
        if canary.step_started_at is not None:
            _set_time(out.canary.step_started_at, canary.step_started_at)
        due = canary.step_due_at()
        if due is not None:
            _set_time(out.canary.next_step_at, due)
        out.canary.min_loads = canary.min_loads
    for v in state.versions:
        info = out.versions.add(
            version=v.version, manifest_sha256=v.manifest_sha256, was_stable=v.was_stable
        )
        _set_time(info.published_at, v.published_at)
    return out


def approval_to_proto(request: ApprovalRequest, now: datetime) -> pb.Approval:
    out = pb.Approval(
        id=request.id,
        feature_id=request.feature_id,
        what=request.what,
        version=request.command.version,
        requested_by=request.meta.principal,
        actor=request.meta.actor,
        reason=request.meta.reason,
        ticket=request.meta.ticket,
        state=request.state(now),
        approved_by=request.approved_by,
        transition_id=request.transition_id or 0,
    )
    _set_time(out.requested_at, request.requested_at)
    _set_time(out.expires_at, request.expires_at)
    if request.approved_at is not None:
        _set_time(out.approved_at, request.approved_at)
    return out


def transition_to_proto(stored: StoredTransition) -> pb.Transition:
    r = stored.record
    out = pb.Transition(
        id=stored.id,
        feature_id=r.feature_id,
        sequence=r.sequence,
        action=_ACTIONS[r.action],
        version=r.version,
        from_stable=r.from_stable or "",
        to_stable=r.to_stable or "",
        from_canary=r.from_canary or "",
        to_canary=r.to_canary or "",
        actor=r.actor,
        reason=r.reason,
        ticket=r.ticket,
        detail=r.detail,
        request_id=stored.request_id,
        global_sequence=stored.global_sequence,
        principal=r.principal,
    )
    _set_time(out.at, r.at)
    return out


def _meta(ctx: pb.ChangeContext, principal_name: str) -> ChangeMeta:
    """The domain's who and why of a change; InvalidArgument names a bad `context.` field."""
    check_change_context(
        actor=ctx.actor,
        reason=ctx.reason,
        ticket=ctx.ticket,
        request_id=ctx.request_id,
        prefix="context.",
    )
    return ChangeMeta(
        actor=ctx.actor or principal_name,
        reason=ctx.reason,
        ticket=ctx.ticket,
        expected_sequence=ctx.expected_sequence if ctx.HasField("expected_sequence") else None,
        principal=principal_name,
    )


class _Encoded(Generic[K]):
    """Bytes encoded once per object, for the last `kept` objects.

    The objects are never mutated after they are handed out (the controller
    hands out the same FeatureState, SignedFile or ChangeEvent until it
    changes), so what is encoded from one stays right. Keyed by id(); each
    entry holds its object, so the id is not reused while it is kept.
    """

    def __init__(self, kept: int, encode: Callable[[K], bytes]) -> None:
        self._kept = kept
        self._encode = encode
        self._entries: OrderedDict[int, tuple[K, bytes]] = OrderedDict()

    def __call__(self, obj: K) -> bytes:
        entry = self._entries.get(id(obj))
        if entry is not None and entry[0] is obj:
            self._entries.move_to_end(id(obj))
            return entry[1]
        data = self._encode(obj)
        self._entries[id(obj)] = (obj, data)
        if len(self._entries) > self._kept:
            self._entries.popitem(last=False)
        return data


def serialize(response: Message | bytes) -> bytes:
    """The response serializer of every ReleaseControl method: encoded bytes pass through."""
    return response if isinstance(response, bytes) else response.SerializeToString()


def add_to_server(servicer: ReleaseControlServicer, server: aio.Server) -> None:
    """Register `servicer` as the generated add_ReleaseControlServicer_to_server
    does, with `serialize` as every method's response serializer, so reads can
    answer with bytes encoded once per change (reads and propagation benchmarks).
    """
    service = pb.DESCRIPTOR.services_by_name["ReleaseControl"]
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in service.methods:
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler,
            (True, True): grpc.stream_stream_rpc_method_handler,
        }[(method.client_streaming, method.server_streaming)]
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=getattr(pb, method.input_type.name).FromString,
            response_serializer=serialize,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


# One WatchReleases CHANGE message per committed change, encoded once and sent
# as the same bytes to every watcher: with 1,000 watchers, converting and
# encoding the change once rather than 1,000 times is a large part of the
# fan-out (propagation benchmark).
_change_bytes = _Encoded[ChangeEvent](
    256,
    lambda event: pb.WatchReleasesResponse(
        type=pb.WATCH_EVENT_TYPE_CHANGE,
        feature=feature_to_proto(event.state),
        transition=transition_to_proto(event.transition),
        global_sequence=event.global_sequence,
    ).SerializeToString(),
)

# A feature's state as a Feature message, encoded once per change: a GetStatus
# answer is these joined (each as an entry of `features`), then the fields that
# change on every call (reads benchmark); a watcher's SNAPSHOT embeds them too.
_feature_bytes = _Encoded[FeatureState](
    4096, lambda state: feature_to_proto(state).SerializeToString()
)


def _embedded(field_number: int, data: bytes) -> bytes:
    """`data` encoded as a length-delimited field (a message field or one entry of a
    repeated one): joined with a message's other encoded fields, it parses as that field.
    """
    out = bytearray()
    for value in ((field_number << 3) | 2, len(data)):  # wire type 2: length-delimited
        while value > 0x7F:
            out.append((value & 0x7F) | 0x80)
            value >>= 7
        out.append(value)
    return bytes(out) + data


_WATCH_FEATURE_FIELD = pb.WatchReleasesResponse.FEATURE_FIELD_NUMBER
_status_entry = _Encoded[FeatureState](
    4096,
    lambda state: _embedded(pb.GetStatusResponse.FEATURES_FIELD_NUMBER, _feature_bytes(state)),
)

# The answer of GetReleaseIndex, encoded once per signed file.
_release_index_bytes = _Encoded[SignedFile](
    4096,
    lambda file: pb.GetReleaseIndexResponse(
        content=file.content, path=file.path, sequence=file.sequence, sha256=file.sha256
    ).SerializeToString(),
)


def change_answer(response: Callable[[], Any], applied: Applied) -> bytes:
    """A channel change's answer (`response` with its feature and transition), encoded.

    The bytes of `response(feature=..., transition=...).SerializeToString()`,
    with the feature's encoding the one GetStatus and watchers reuse
    (`_feature_bytes`) rather than a second conversion of the same state.
    """
    message = response()
    data = _embedded(message.FEATURE_FIELD_NUMBER, _feature_bytes(applied.state))
    if applied.transition is not None:
        encoded = transition_to_proto(applied.transition).SerializeToString()
        data += _embedded(message.TRANSITION_FIELD_NUMBER, encoded)
    return data


# A page of GetStatus holds at most this many features, and stops before this
# many bytes of them, so that it fits gRPC's default 4 MB receive limit.
STATUS_PAGE_SIZE = 1000
STATUS_PAGE_BYTES = 2 << 20


def _feature_id(state: FeatureState) -> str:
    return state.feature_id


def _page_size(requested: int, default: int = DEFAULT_PAGE_SIZE, most: int = MAX_PAGE_SIZE) -> int:
    return default if requested == 0 else min(requested, most)


def _encode_token(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode()


# A page token holds a feature id (at most 63 characters) or a transition id.
_MAX_PAGE_TOKEN_CHARS = 128
_MAX_TRANSITION_ID = 2**63 - 1  # SQLite's INTEGER


def _foreign_token() -> InvalidArgument:
    return InvalidArgument(
        "page_token is not one this server issued; pass next_page_token from the "
        "previous response, or none for the first page",
        field="page_token",
    )


def _decode_token(token: str) -> str:
    if len(token) > _MAX_PAGE_TOKEN_CHARS:
        raise _foreign_token()
    try:
        return base64.urlsafe_b64decode(token.encode()).decode() if token else ""
    except (ValueError, UnicodeDecodeError):
        raise _foreign_token() from None


def _transition_token(token: str) -> int:
    """The transition id a ListTransitions page token holds (0: from the newest)."""
    text = _decode_token(token)
    if text and not (text.isascii() and text.isdigit() and int(text) <= _MAX_TRANSITION_ID):
        raise _foreign_token()
    return int(text or 0)


def _feature_ids(ids: Sequence[str]) -> list[str]:
    return [validate_feature_id(i, field="feature_ids") for i in ids]


class ReleaseControlServicer(pb_grpc.ReleaseControlServicer):
    """releasecontrol.v1.ReleaseControl over the ReleaseController."""

    def __init__(
        self,
        controller: ReleaseController,
        *,
        max_manifest_bytes: int,
        max_publish_bytes: int,
        origin_public_url: str,
        analyzer: CanaryAnalyzer | None = None,
        webhooks: Sequence[webhooks.Sender] = (),
    ) -> None:
        self._controller = controller
        self._analyzer = analyzer or CanaryAnalyzer(controller, enabled=False)
        self._webhooks = list(webhooks)
        self._origin_public_url = origin_public_url
        self._max_manifest_bytes = max_manifest_bytes
        self._max_publish_bytes = max_publish_bytes

    # -- reads ---------------------------------------------------------------

    @maps_errors
    async def ListFeatures(
        self, request: pb.ListFeaturesRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListFeaturesResponse:
        caller = require(AuthAction.READ)
        size = _page_size(request.page_size)
        page = self._controller.features(after=_decode_token(request.page_token), limit=size + 1)
        more = len(page) > size
        page = page[:size]
        # The page token follows the unfiltered order, so paging stays stable.
        token = _encode_token(page[-1].feature_id) if more else ""
        page = [s for s in page if permits(caller, AuthAction.READ, s.feature_id)]
        return pb.ListFeaturesResponse(
            features=[feature_to_proto(s) for s in page],
            next_page_token=token,
        )

    @maps_errors
    async def GetFeature(
        self, request: pb.GetFeatureRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetFeatureResponse:
        validate_feature_id(request.feature_id)
        require(AuthAction.READ, request.feature_id)
        return pb.GetFeatureResponse(
            feature=feature_to_proto(self._controller.feature(request.feature_id))
        )

    @maps_errors
    async def GetReleaseIndex(  # type: ignore[override]  # answers with encoded bytes
        self, request: pb.GetReleaseIndexRequest, context: aio.ServicerContext[Any, Any]
    ) -> bytes:
        if request.feature_id:
            validate_feature_id(request.feature_id)
            require(AuthAction.READ, request.feature_id)
            self._controller.require_feature(request.feature_id)  # NotFound names it
            path = releases_path(request.feature_id)
        else:
            require(AuthAction.READ)
            path = REMOTE_INDEX_PATH
        return _release_index_bytes(await self._controller.signed_file(path))

    @maps_errors
    async def GetStatus(  # type: ignore[override]  # answers with encoded bytes
        self, request: pb.GetStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> bytes:
        only = _feature_ids(request.feature_ids)
        caller = require_each(AuthAction.READ, only)
        size = _page_size(request.page_size, STATUS_PAGE_SIZE, STATUS_PAGE_SIZE)
        after = _decode_token(request.page_token)
        if only:  # named ones: all read (each must exist), then the page picked out
            status = self._controller.status(only)
            missing = sorted(set(only) - {s.feature_id for s in status.features})
            if missing:
                self._controller.feature(missing[0])  # raises NotFound naming it
            states = status.features
            start = bisect.bisect_right(states, after, key=_feature_id) if after else 0
        else:  # every feature: only this page (and one more, to know if another follows)
            status = self._controller.status(after=after, limit=size + 1)
            states, start = status.features, 0
        # Features come in id order; a page follows that order whatever the
        # caller may read, so the page token stays valid between calls.
        entries: list[bytes] = []
        taken = 0
        next_token = ""
        for index in range(start, len(states)):
            state = states[index]
            entry = (
                _status_entry(state) if permits(caller, AuthAction.READ, state.feature_id) else b""
            )
            if index > start and (index - start == size or taken + len(entry) > STATUS_PAGE_BYTES):
                next_token = _encode_token(states[index - 1].feature_id)
                break
            entries.append(entry)
            taken += len(entry)
        rest = pb.GetStatusResponse(
            global_sequence=status.global_sequence,
            pending_origin_writes=status.pending_origin_writes,
            origin_public_url=self._origin_public_url,
            next_page_token=next_token,
        )
        rest.server_time.FromDatetime(status.server_time)
        # Encoded fields joined parse as one message: the features, then the rest.
        return b"".join(entries) + rest.SerializeToString()

    @maps_errors
    async def ListTransitions(
        self, request: pb.ListTransitionsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListTransitionsResponse:
        if request.feature_id:
            validate_feature_id(request.feature_id)
            caller = require(AuthAction.READ, request.feature_id)
            self._controller.require_feature(request.feature_id)  # NotFound names it
        else:
            caller = require(AuthAction.READ)
        size = _page_size(request.page_size)
        before_id = _transition_token(request.page_token)
        page = await self._controller.transitions(
            feature_id=request.feature_id, before_id=before_id, limit=size + 1
        )
        more = len(page) > size
        page = page[:size]
        return pb.ListTransitionsResponse(
            transitions=[
                transition_to_proto(t)
                for t in page
                if permits(caller, AuthAction.READ, t.record.feature_id)
            ],
            next_page_token=_encode_token(str(page[-1].id)) if more else "",
        )

    @maps_errors
    async def ListApprovals(
        self, request: pb.ListApprovalsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ListApprovalsResponse:
        if request.feature_id:
            validate_feature_id(request.feature_id)
            caller = require(AuthAction.READ, request.feature_id)
        else:
            caller = require(AuthAction.READ)
        now = self._controller.now()
        kept = await self._controller.approval_requests(request.feature_id)
        return pb.ListApprovalsResponse(
            approvals=[
                approval_to_proto(a, now)
                for a in pending_first(kept, now)
                if (request.include_done or a.state(now) == "pending")
                and permits(caller, AuthAction.READ, a.feature_id)
            ]
        )

    @maps_errors
    async def GetAnalysis(
        self, request: pb.GetAnalysisRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetAnalysisResponse:
        validate_feature_id(request.feature_id)
        require(AuthAction.READ, request.feature_id)
        state = self._controller.feature(request.feature_id)  # NotFound names it
        analyzer = self._analyzer
        out = pb.GetAnalysisResponse(
            feature_id=state.feature_id,
            enabled=analyzer.enabled,
            stable_version=state.stable or "",
        )
        canary = state.canary
        if canary is not None:
            out.canary_version = canary.version
            out.min_loads = canary.min_loads
            judged = await analyzer.judge(state) if analyzer.enabled else None
            if judged is not None:
                verdict = judged.verdict
                out.verdict = verdict.kind.value
                out.reason = verdict.reason
                out.canary_loads = verdict.canary_loads
                out.canary_failures = verdict.canary_failures
                out.stable_loads = verdict.stable_loads
                out.stable_failures = verdict.stable_failures
                _set_time(out.judged_at, judged.at)
        if analyzer.enabled:
            for version, (share, batches) in sorted(
                (await analyzer.reach(state.feature_id)).items()
            ):
                out.reach.add(version=version, share=share, batches=batches)
        return out

    @maps_errors
    async def TestWebhooks(
        self, request: pb.TestWebhooksRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.TestWebhooksResponse:
        require(AuthAction.ADMIN)
        chosen = [s for s in self._webhooks if not request.name or s.hook.name == request.name]
        if request.name and not chosen:
            known = ", ".join(s.hook.name for s in self._webhooks) or "none is configured"
            raise NotFound(f"no webhook is named {request.name!r} (webhooks: {known})")
        out = pb.TestWebhooksResponse()
        for sender in chosen:
            result = out.results.add(name=sender.hook.name, url=sender.hook.url)
            try:
                result.status, result.seconds = await webhooks.send_test(sender)
            except httpx.HTTPError as exc:
                result.error = f"could not reach it: {exc!r}"
                continue
            if not 200 <= result.status < 300:
                result.error = webhooks.describe(result.status)
        return out

    @maps_errors
    async def Approve(
        self, request: pb.ApproveRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.ApproveResponse:
        caller = require(AuthAction.APPROVE)
        if request.approval_id < 1:
            raise InvalidArgument(
                "approval_id must be the id of a waiting request (1 or more); list them with "
                "`releasectl release approvals`",
                field="approval_id",
            )
        waiting = await self._controller.approval_request(request.approval_id)
        if waiting is not None:
            require(AuthAction.APPROVE, waiting.feature_id)
        done, applied = await self._controller.approve(request.approval_id, caller.name)
        response = pb.ApproveResponse(
            approval=approval_to_proto(done, self._controller.now()),
            feature=feature_to_proto(applied.state),
        )
        if applied.transition is not None:
            response.transition.CopyFrom(transition_to_proto(applied.transition))
        return response

    async def WatchReleases(  # type: ignore[override]  # some messages go as encoded bytes
        self, request: pb.WatchReleasesRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchReleasesResponse | bytes]:
        try:
            only = _feature_ids(request.feature_ids)
            caller = require_each(AuthAction.WATCH, only)
        except ReleaseControlError as error:
            await abort_with(error, context)
            return
        hub = self._controller.hub
        # Subscribe before reading the snapshot, synchronously, so no change
        # falls between the two; changes the snapshot already holds are skipped.
        async with hub.subscribe(only) as sub:
            states, seen = self._controller.snapshot(only)
            snapshot = pb.WatchReleasesResponse(
                type=pb.WATCH_EVENT_TYPE_SNAPSHOT, global_sequence=seen
            ).SerializeToString()
            for state in states:
                if not permits(caller, AuthAction.WATCH, state.feature_id):
                    continue
                yield _embedded(_WATCH_FEATURE_FIELD, _feature_bytes(state)) + snapshot
            yield pb.WatchReleasesResponse(type=pb.WATCH_EVENT_TYPE_SYNCED, global_sequence=seen)
            while True:
                try:
                    event = await sub.next()
                except Lagged:
                    yield pb.WatchReleasesResponse(
                        type=pb.WATCH_EVENT_TYPE_RESYNC_REQUIRED,
                        global_sequence=seen,
                        message=(
                            f"this watcher fell behind after global sequence {seen} and missed "
                            "changes; read the state again (GetStatus) and watch anew"
                        ),
                    )
                    return
                if isinstance(event, RefreshEvent):
                    wanted = [f for f in event.feature_ids if permits(caller, AuthAction.WATCH, f)]
                    if wanted:
                        yield pb.WatchReleasesResponse(
                            type=pb.WATCH_EVENT_TYPE_REFRESH,
                            global_sequence=event.global_sequence,
                            feature_ids=wanted,
                        )
                    continue
                if event.global_sequence <= seen:
                    continue
                seen = event.global_sequence
                if not permits(caller, AuthAction.WATCH, event.state.feature_id):
                    continue
                yield _change_bytes(event)

    @maps_errors
    async def RefreshManifests(
        self, request: pb.RefreshManifestsRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RefreshManifestsResponse:
        only = _feature_ids(request.feature_ids)
        caller = require_each(AuthAction.REFRESH_MANIFESTS, only)
        if not only:
            # "Every feature" means every feature the caller's scopes cover.
            only = [
                s.feature_id
                for s in self._controller.status().features
                if permits(caller, AuthAction.REFRESH_MANIFESTS, s.feature_id)
            ]
            if not only:
                return pb.RefreshManifestsResponse()
        refreshed = await self._controller.refresh_manifests(only)
        return pb.RefreshManifestsResponse(
            feature_ids=sorted({c.feature_id for c in refreshed.manifests}),
            checks=[
                pb.ManifestCheck(
                    feature_id=c.feature_id,
                    version=c.version,
                    status=pb.MANIFEST_STATUS_RESTORED if c.restored else pb.MANIFEST_STATUS_OK,
                    detail=c.detail,
                )
                for c in refreshed.manifests
            ],
            watchers_notified=refreshed.notified,
            index_checks=[
                pb.IndexFileCheck(
                    path=c.path,
                    status=pb.MANIFEST_STATUS_RESTORED if c.restored else pb.MANIFEST_STATUS_OK,
                    detail=c.detail,
                )
                for c in refreshed.index
            ],
        )

    async def RebuildOrigin(
        self, request: pb.RebuildOriginRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.RebuildOriginResponse]:
        """Progress as the rebuild goes; it runs to its end even if the caller leaves."""
        try:
            caller = require(AuthAction.ADMIN)
        except ReleaseControlError as error:
            await abort_with(error, context)
            return
        queue: asyncio.Queue[Progress] = asyncio.Queue()
        running = asyncio.ensure_future(
            self._controller.rebuild_origin(
                queue.put_nowait, force=request.force, actor=caller.name
            )
        )
        _RUNNING.add(running)  # held: the loop keeps only weak references to tasks
        running.add_done_callback(_RUNNING.discard)
        while not running.done() or not queue.empty():
            getter = asyncio.ensure_future(queue.get())
            try:
                await asyncio.wait({getter, running}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                yield _progress_to_proto(getter.result())
        try:
            last = running.result()
        except ReleaseControlError as error:
            await abort_with(error, context)
            return
        except Exception:
            await abort_unexpected("RebuildOrigin", context)
            return
        yield _progress_to_proto(last)

    # -- writes --------------------------------------------------------------

    @maps_errors
    async def PublishVersion(
        self,
        request_iterator: AsyncIterator[pb.PublishVersionRequest],
        context: aio.ServicerContext[Any, Any],
    ) -> pb.PublishVersionResponse:
        header: pb.PublishHeader | None = None
        upload: Upload | None = None
        manifest: dict[str, Any] = {}
        try:
            async for message in request_iterator:
                kind = message.WhichOneof("kind")
                if upload is None:
                    if kind != "header":
                        raise InvalidArgument(
                            "the first PublishVersion message must be the header with the "
                            "manifest; artifact chunks follow it",
                            field="header",
                        )
                    header = message.header
                    validate_feature_id(header.feature_id)
                    caller = require(AuthAction.PUBLISH, header.feature_id)
                    meta = _meta(header.context, caller.name)  # refused before any upload
                    manifest = parse_manifest(
                        header.manifest_json,
                        feature_id=header.feature_id,
                        max_bytes=self._max_manifest_bytes,
                    )
                    upload = Upload(manifest, max_total_bytes=self._max_publish_bytes)
                elif kind == "chunk":
                    await upload.receive(message.chunk.path, message.chunk.data)
                else:
                    raise InvalidArgument(
                        "a PublishVersion stream carries one header; send one stream per version",
                        field="header",
                    )
            if upload is None or header is None:
                raise InvalidArgument(
                    "the PublishVersion stream was empty; send the header first", field="header"
                )
            assets = upload.finish()
            canonical = canonical_bytes(manifest)
            digest = sha256_hex(canonical)
            canary = header.channel == pb.CHANNEL_CANARY
            soak = (
                header.soak_seconds
                if header.HasField("soak_seconds")
                else self._controller.default_soak_seconds
            )
            command = releases.Publish(
                version=manifest["version"],
                manifest_sha256=digest,
                channel=Channel.CANARY if canary else Channel.STABLE,
                soak_seconds=soak if canary else 0,
            )

            applied = await self._controller.change(
                header.feature_id,
                command,
                meta,
                rpc="PublishVersion",
                request_id=header.context.request_id,
                manifest=canonical,
                artifacts=assets,
            )
        finally:
            if upload is not None:
                upload.close()
        out = pb.PublishVersionResponse(
            feature=feature_to_proto(applied.state),
            already_published=applied.transition is None,
            manifest_sha256=digest,
            origin_public_url=self._origin_public_url,
        )
        if applied.transition is not None:
            out.transition.CopyFrom(transition_to_proto(applied.transition))
        return out

    async def _transition(
        self,
        feature_id: str,
        command: releases.Command,
        ctx: pb.ChangeContext,
        context: aio.ServicerContext[Any, Any],
        *,
        rpc: str,
        response: Callable[[], Any],
    ) -> Any:
        """Run a channel change; its answer encoded (`response`: the RPC's response class)."""
        validate_feature_id(feature_id)
        caller = require(RPC_ACTIONS[rpc], feature_id)

        applied = await self._controller.change(
            feature_id, command, _meta(ctx, caller.name), rpc=rpc, request_id=ctx.request_id
        )
        return change_answer(response, applied)  # encoded once; `serialize` passes it on

    def _soak(self, request: Any) -> int:
        if request.HasField("soak_seconds"):
            return int(request.soak_seconds)
        if getattr(request, "steps", None):
            return 0  # the soak of a step plan is the whole plan
        return self._controller.default_soak_seconds

    @maps_errors
    async def DeployCanary(
        self, request: pb.DeployCanaryRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.DeployCanaryResponse:
        command = releases.DeployCanary(
            request.version,
            self._soak(request),
            weight=request.weight,
            steps=tuple(request.steps),
            step_seconds=request.step_seconds,
            min_loads=request.min_loads,
        )
        return cast(
            pb.DeployCanaryResponse,
            await self._transition(
                request.feature_id,
                command,
                request.context,
                context,
                rpc="DeployCanary",
                response=pb.DeployCanaryResponse,
            ),
        )

    @maps_errors
    async def SetCanaryWeight(
        self, request: pb.SetCanaryWeightRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.SetCanaryWeightResponse:
        return cast(
            pb.SetCanaryWeightResponse,
            await self._transition(
                request.feature_id,
                releases.SetWeight(request.weight),
                request.context,
                context,
                rpc="SetCanaryWeight",
                response=pb.SetCanaryWeightResponse,
            ),
        )

    @maps_errors
    async def Promote(
        self, request: pb.PromoteRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.PromoteResponse:
        command = releases.Promote(request.version, skip_soak=request.skip_soak)
        return cast(
            pb.PromoteResponse,
            await self._transition(
                request.feature_id,
                command,
                request.context,
                context,
                rpc="Promote",
                response=pb.PromoteResponse,
            ),
        )

    @maps_errors
    async def Rollback(
        self, request: pb.RollbackRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.RollbackResponse:
        command = releases.Rollback(request.version)
        return cast(
            pb.RollbackResponse,
            await self._transition(
                request.feature_id,
                command,
                request.context,
                context,
                rpc="Rollback",
                response=pb.RollbackResponse,
            ),
        )

    @maps_errors
    async def SetChannel(
        self, request: pb.SetChannelRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.SetChannelResponse:
        if request.channel == pb.CHANNEL_STABLE:
            channel = Channel.STABLE
        elif request.channel == pb.CHANNEL_CANARY:
            channel = Channel.CANARY
        else:
            raise InvalidArgument(
                "channel must be CHANNEL_STABLE or CHANNEL_CANARY (--to stable|canary)",
                field="channel",
            )
        command = releases.SetChannel(
            request.version, channel, soak_seconds=self._controller.default_soak_seconds
        )
        return cast(
            pb.SetChannelResponse,
            await self._transition(
                request.feature_id,
                command,
                request.context,
                context,
                rpc="SetChannel",
                response=pb.SetChannelResponse,
            ),
        )
