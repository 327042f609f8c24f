"""The servicer's reads answer with bytes encoded once per change: they must parse
to exactly the message built the plain way, follow every change, and page GetStatus
by feature count and by size.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from controller_kit import NOW, change, digest, new_controller, stop

from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol_server import service
from releasecontrol_server.auth.authorize import acting_as
from releasecontrol_server.auth.principal import Principal, Role
from releasecontrol_server.control import Applied, ReleaseController
from releasecontrol_server.releases import Publish, Rollback
from releasecontrol_server.service import ReleaseControlServicer, feature_to_proto

FEATURES = [f"feature-{i}" for i in range(6)]
EVERYONE = Principal("ops", frozenset({Role.VIEWER}))


class Aborted(Exception):
    pass


class Context:
    """The part of a grpc.aio ServicerContext the servicer uses for a unary call."""

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        raise Aborted(code, details)


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[ReleaseController]:
    control = new_controller(tmp_path)
    await control.start()
    for feature_id in FEATURES:
        for version in ("1.0.0", "1.1.0"):
            await change(control, feature_id, Publish(version, digest(feature_id + version)))
    yield control
    await stop(control)


def servicer(controller: ReleaseController) -> ReleaseControlServicer:
    return ReleaseControlServicer(
        controller,
        max_manifest_bytes=1 << 20,
        max_publish_bytes=1 << 20,
        origin_public_url="http://cdn.test/",
    )


async def status_page(
    svc: ReleaseControlServicer,
    principal: Principal = EVERYONE,
    **fields: Any,
) -> pb.GetStatusResponse:
    with acting_as(principal, "/releasecontrol.v1.ReleaseControl/GetStatus"):
        data = await svc.GetStatus(pb.GetStatusRequest(**fields), Context())
    assert isinstance(data, bytes)
    return pb.GetStatusResponse.FromString(service.serialize(data))


async def all_pages(
    svc: ReleaseControlServicer, principal: Principal = EVERYONE, **fields: Any
) -> list[pb.GetStatusResponse]:
    pages = [await status_page(svc, principal, **fields)]
    while pages[-1].next_page_token:
        token = pages[-1].next_page_token
        pages.append(await status_page(svc, principal, page_token=token, **fields))
    return pages


async def test_status_bytes_parse_to_the_plainly_built_message(
    controller: ReleaseController,
) -> None:
    svc = servicer(controller)
    got = await status_page(svc)
    status = controller.status()
    want = pb.GetStatusResponse(
        features=[feature_to_proto(s) for s in status.features],
        global_sequence=status.global_sequence,
        pending_origin_writes=0,
        origin_public_url="http://cdn.test/",
    )
    want.server_time.FromDatetime(NOW)
    assert got == want
    assert [f.feature_id for f in got.features] == FEATURES
    assert got.next_page_token == ""


async def test_status_follows_each_change(controller: ReleaseController) -> None:
    svc = servicer(controller)
    before = await status_page(svc, feature_ids=["feature-2"])
    assert before.features[0].stable_version == "1.1.0"
    await change(controller, "feature-2", Rollback("1.0.0"))
    after = await status_page(svc, feature_ids=["feature-2"])
    assert after.features[0].stable_version == "1.0.0"
    assert after.global_sequence == before.global_sequence + 1
    assert after.features[0].sequence == before.features[0].sequence + 1


async def test_status_pages_by_count_cover_every_feature_once(
    controller: ReleaseController,
) -> None:
    pages = await all_pages(servicer(controller), page_size=4)
    assert [len(p.features) for p in pages] == [4, 2]
    assert [f.feature_id for p in pages for f in p.features] == FEATURES
    assert pages[-1].next_page_token == ""
    named = await all_pages(
        servicer(controller), feature_ids=["feature-5", "feature-1", "feature-3"], page_size=2
    )
    assert [[f.feature_id for f in p.features] for p in named] == [
        ["feature-1", "feature-3"],
        ["feature-5"],
    ]


async def test_status_pages_stop_before_the_byte_budget_but_hold_one_feature(
    controller: ReleaseController, monkeypatch: pytest.MonkeyPatch
) -> None:
    one = len(feature_to_proto(controller.feature("feature-0")).SerializeToString())
    monkeypatch.setattr(service, "STATUS_PAGE_BYTES", 2 * one + 10)  # two entries fit, not three
    pages = await all_pages(servicer(controller))
    assert [len(p.features) for p in pages] == [2, 2, 2]
    assert [f.feature_id for p in pages for f in p.features] == FEATURES
    monkeypatch.setattr(service, "STATUS_PAGE_BYTES", 1)  # not even one fits: one a page
    pages = await all_pages(servicer(controller))
    assert [len(p.features) for p in pages] == [1] * len(FEATURES)


async def test_status_pages_of_a_scoped_caller_hold_only_its_features(
    controller: ReleaseController,
) -> None:
    scoped = Principal("team", frozenset({Role.VIEWER}), scopes=("feature-1", "feature-3"))
    pages = await all_pages(servicer(controller), scoped, page_size=2)
    assert [f.feature_id for p in pages for f in p.features] == ["feature-1", "feature-3"]
    assert len(pages) == 3  # the pages follow every feature's order, whoever reads them


async def test_a_bad_page_token_is_refused_naming_the_field(controller: ReleaseController) -> None:
    with pytest.raises(Aborted, match="page_token"):
        await status_page(servicer(controller), page_token="@@not-a-token@@")
    with pytest.raises(Aborted, match="nope"):
        await status_page(servicer(controller), feature_ids=["nope"])


async def test_release_index_bytes_are_the_signed_file_and_follow_changes(
    controller: ReleaseController, tmp_path: Path
) -> None:
    svc = servicer(controller)

    async def index(feature_id: str) -> pb.GetReleaseIndexResponse:
        request = pb.GetReleaseIndexRequest(feature_id=feature_id)
        with acting_as(EVERYONE, "/releasecontrol.v1.ReleaseControl/GetReleaseIndex"):
            data = await svc.GetReleaseIndex(request, Context())
        return pb.GetReleaseIndexResponse.FromString(service.serialize(data))

    first = await index("feature-4")
    origin = tmp_path / "origin"
    assert first.content == (origin / first.path).read_bytes()
    assert first.sha256 == hashlib.sha256(first.content).hexdigest()
    await change(controller, "feature-4", Rollback("1.0.0"))
    second = await index("feature-4")
    assert second.sequence == first.sequence + 1
    assert second.content == (origin / second.path).read_bytes() != first.content
    with pytest.raises(Aborted, match="feature 'feature-9' does not exist"):
        await index("feature-9")
    remote = await index("")
    assert remote.path == "remote-index.json"
    assert remote.content == (origin / "remote-index.json").read_bytes()


def test_embedded_fields_parse_whatever_their_length() -> None:
    for size in (0, 1, 127, 128, 300, 70_000):
        feature = pb.Feature(feature_id="f", updated_by="x" * size)
        data = service._embedded(
            pb.GetStatusResponse.FEATURES_FIELD_NUMBER, feature.SerializeToString()
        )
        parsed = pb.GetStatusResponse.FromString(
            data * 2 + pb.GetStatusResponse(global_sequence=7).SerializeToString()
        )
        assert list(parsed.features) == [feature, feature]
        assert parsed.global_sequence == 7


def _plain_feature(state: Any) -> pb.Feature:
    """feature_to_proto as it was: every time through Timestamp.FromDatetime."""
    out = pb.Feature(
        feature_id=state.feature_id,
        sequence=state.sequence,
        stable_version=state.stable or "",
        updated_by=state.updated_by,
    )
    if state.updated_at is not None:
        out.updated_at.FromDatetime(state.updated_at)
    if state.canary is not None:
        out.canary.version = state.canary.version
        out.canary.soak_seconds = state.canary.soak_seconds
        out.canary.soak_started_at.FromDatetime(state.canary.soak_started_at)
        out.canary.soak_ends_at.FromDatetime(state.canary.soak_ends_at)
    for v in state.versions:
        info = out.versions.add(
            version=v.version, manifest_sha256=v.manifest_sha256, was_stable=v.was_stable
        )
        info.published_at.FromDatetime(v.published_at)
    return out


def test_change_answers_are_the_plain_encoding() -> None:
    """A channel change's answer is response(feature, transition) serialized, for each RPC,
    with times in other zones, naive and with microseconds converted as FromDatetime does."""
    from datetime import timedelta, timezone

    from releasecontrol_server.releases import (
        Action,
        AuditRecord,
        Canary,
        FeatureState,
        PublishedVersion,
    )
    from releasecontrol_server.store import StoredTransition

    east = timezone(timedelta(hours=5, minutes=30))
    versions = (
        PublishedVersion("1.0.0", "a" * 64, NOW.astimezone(east), was_stable=True),
        PublishedVersion("1.1.0", "b" * 64, NOW.replace(microsecond=123456)),
        PublishedVersion("1.2.0", "c" * 64, datetime(2026, 1, 2, 3, 4, 5, 999999)),
    )
    states = [
        FeatureState("f", 0),
        FeatureState("f", 3, "1.0.0", None, versions, NOW, "ops"),
        FeatureState("f", 4, "1.0.0", Canary("1.1.0", NOW.astimezone(east), 60), versions, NOW),
    ]
    record = AuditRecord(
        feature_id="f",
        sequence=4,
        action=Action.DEPLOY_CANARY,
        version="1.1.0",
        from_stable="1.0.0",
        to_stable="1.0.0",
        from_canary=None,
        to_canary="1.1.0",
        actor="ops",
        reason="why",
        ticket="T-1",
        detail="",
        at=NOW.replace(microsecond=5).astimezone(east),
    )
    transition = StoredTransition(id=7, record=record, global_sequence=7, request_id="r")
    for response in (
        pb.DeployCanaryResponse,
        pb.PromoteResponse,
        pb.RollbackResponse,
        pb.SetChannelResponse,
    ):
        for state in states:
            for stored in (None, transition):
                expected = response()
                expected.feature.CopyFrom(_plain_feature(state))
                if stored is not None:
                    plain = service.transition_to_proto(stored)
                    plain.at.FromDatetime(record.at)
                    expected.transition.CopyFrom(plain)
                answer = service.change_answer(response, Applied(state, stored))
                assert answer == expected.SerializeToString()
                assert feature_to_proto(state) == _plain_feature(state)
