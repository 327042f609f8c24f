"""Four eyes (approvals.py): which changes wait, who may approve, and how requests are kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from releasecontrol.errors import (
    ApprovalRequired,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    error_details,
    from_grpc_code,
)
from releasecontrol_server.approvals import (
    ApprovalPolicy,
    ApprovalRequest,
    check_approver,
    command_from_json,
    command_json,
    required,
)
from releasecontrol_server.releases import (
    AdvanceStep,
    Canary,
    ChangeMeta,
    Channel,
    DeployCanary,
    FeatureState,
    Promote,
    Publish,
    Rollback,
    SetChannel,
    SetWeight,
)
from releasecontrol_server.store import open_store

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
POLICY = ApprovalPolicy(("feature-pay*", "checkout"), ttl_seconds=3600)
ALICE = ChangeMeta(actor="alice", reason="fix", ticket="INC-1", principal="alice")


def ramp_at(weight: int) -> FeatureState:
    canary = Canary(
        "1.1.0",
        NOW,
        1800,
        weight=weight,
        steps=(500, 10_000),
        step_seconds=900,
        step_started_at=NOW,
    )
    return FeatureState("feature-pay", 3, stable="1.0.0", canary=canary)


class TestPolicy:
    @pytest.mark.parametrize(
        ("command", "what"),
        [
            (Promote("1.1.0"), "promoting 1.1.0 to stable"),
            (Promote("1.1.0", skip_soak=True), "promoting 1.1.0 to stable before its soak is over"),
            (Publish("1.1.0", "a" * 64), "publishing 1.1.0 straight to stable"),
            (
                SetChannel("1.0.0", Channel.STABLE),
                "setting stable to 1.0.0 by operator fallback",
            ),
        ],
    )
    def test_promotions_to_stable_of_a_protected_feature_wait(
        self, command: Promote | Publish | SetChannel, what: str
    ) -> None:
        assert POLICY.gate("feature-payments", command, None) == what
        assert POLICY.gate("checkout", command, None) == what

    @pytest.mark.parametrize(
        "command",
        [
            Publish("1.1.0", "a" * 64, channel=Channel.CANARY, soak_seconds=60),
            DeployCanary("1.1.0", 60),
            SetWeight(2500),
            Rollback("1.0.0"),
            SetChannel("1.1.0", Channel.CANARY, soak_seconds=60),
        ],
    )
    def test_other_changes_do_not_wait(self, command: object) -> None:
        """A rollback must never wait for a second person: it is what an emergency needs."""
        assert POLICY.gate("feature-payments", command, None) == ""  # type: ignore[arg-type]

    def test_unmatched_features_never_wait(self) -> None:
        assert POLICY.gate("checkout-v2", Promote("1.1.0"), None) == ""
        assert ApprovalPolicy().gate("feature-payments", Promote("1.1.0"), None) == ""

    def test_a_step_plan_waits_only_at_its_last_step(self) -> None:
        assert POLICY.gate("feature-pay", AdvanceStep(), ramp_at(500)) == ""
        assert POLICY.gate("feature-pay", AdvanceStep(), ramp_at(10_000)) == (
            "promoting 1.1.0 to stable at the end of its step plan"
        )


def request(**changes: object) -> ApprovalRequest:
    base: dict[str, object] = {
        "id": 7,
        "feature_id": "feature-pay",
        "rpc": "Promote",
        "command": Promote("1.1.0"),
        "meta": ALICE,
        "what": "promoting 1.1.0 to stable",
        "requested_at": NOW,
        "expires_at": NOW + timedelta(hours=1),
    }
    return ApprovalRequest(**{**base, **changes})  # type: ignore[arg-type]


class TestApprover:
    def test_another_principal_may_approve_a_waiting_request(self) -> None:
        assert check_approver(request(), 7, "bob", NOW) == request()

    def test_the_requester_may_not(self) -> None:
        with pytest.raises(PermissionDenied, match="alice asked for request 7"):
            check_approver(request(), 7, "alice", NOW)

    def test_an_expired_or_approved_request_is_refused(self) -> None:
        with pytest.raises(FailedPrecondition, match="expired at 2026-12-07T13:00:00Z"):
            check_approver(request(), 7, "bob", NOW + timedelta(hours=1))
        with pytest.raises(FailedPrecondition, match="already approved by carol"):
            check_approver(request(approved_by="carol", approved_at=NOW), 7, "bob", NOW)

    def test_an_unknown_id_is_not_found(self) -> None:
        with pytest.raises(NotFound, match="no approval request 9"):
            check_approver(None, 9, "bob", NOW)

    def test_the_requester_is_told_the_id_and_the_command(self) -> None:
        error = required(request(), NOW)
        assert error.approval_id == 7
        assert "needs a second approver" in error.message
        assert "`releasectl release approve --id 7`" in error.message

    def test_approval_required_crosses_the_wire_with_its_id(self) -> None:
        reason, metadata = error_details(required(request(), NOW))
        again = from_grpc_code("FAILED_PRECONDITION", "m", reason, metadata)
        assert isinstance(again, ApprovalRequired) and again.approval_id == 7


@pytest.mark.parametrize(
    "command",
    [
        Promote("1.1.0"),
        Promote("1.1.0", skip_soak=True),
        Publish("2.0.0", "b" * 64, channel=Channel.STABLE),
        SetChannel("1.0.0", Channel.STABLE),
    ],
)
def test_commands_round_trip_through_the_stores_json(command: object) -> None:
    assert command_from_json(command_json(command)) == command  # type: ignore[arg-type]


class TestStore:
    def test_requests_are_kept_deduplicated_and_marked(self, tmp_path: Path) -> None:
        """The same change asked again while it waits is the same request; another principal's,
        or one asked after the first expired, is a new one; marking records who and which
        transition."""
        with open_store(tmp_path / "db.sqlite") as store:

            def ask(meta: ChangeMeta = ALICE, at: datetime = NOW) -> ApprovalRequest:
                return store.add_approval(
                    "feature-pay",
                    "Promote",
                    Promote("1.1.0"),
                    meta,
                    "promoting 1.1.0 to stable",
                    manifest=None,
                    now=at,
                    expires_at=at + timedelta(hours=1),
                )

            first = ask()
            assert ask().id == first.id
            pinned = ask(ChangeMeta(actor="alice", principal="alice", expected_sequence=4))
            assert pinned.id != first.id  # another change: it names the sequence it was for
            other = ask(ChangeMeta(actor="carol", principal="carol"))
            assert other.id != first.id
            later = ask(at=NOW + timedelta(hours=2))
            assert later.id not in (first.id, other.id)
            assert first.meta == ALICE and first.command == Promote("1.1.0")

            done = store.mark_approved(first.id, "bob", NOW + timedelta(minutes=5), 42)
            assert (done.approved_by, done.transition_id) == ("bob", 42)
            assert done.state(NOW) == "approved"
            assert [r.id for r in store.list_approvals("feature-pay")] == [
                later.id,
                other.id,
                pinned.id,
                first.id,
            ]
            assert store.list_approvals("checkout") == []
