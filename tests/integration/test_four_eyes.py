"""Four eyes against the real server in rpc-token mode (issue 14, item 5): on a feature under
`require_approval`, a lone releaser or approver cannot put a version on stable; a second
approver can, once, and the record names both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import RunningServer, folder_read, host_view, make_feature, start_server

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient, resolve_connection
from releasecontrol.manifest import load_feature_folder
from releasecontrol_server.auth.tokens import create_token

pytestmark = pytest.mark.integration

PAY = "feature-payments"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    home = tmp_path / "home"
    create_token(home / "auth" / "tokens.json", "bootstrap", ["viewer"])
    running = start_server(
        home,
        RELEASECONTROL_AUTH_MODE="rpc-token",
        RELEASECONTROL_REQUIRE_APPROVAL="feature-pay*",
        RELEASECONTROL_APPROVAL_TTL_SECONDS="3600",
    )
    yield running
    running.stop()


def as_(server: RunningServer, principal: str, *roles: str) -> ReleaseControlClient:
    token = create_token(server.home / "auth" / "tokens.json", principal, roles)
    settings = resolve_connection(server=server.grpc, home=server.home, environ={})
    return ReleaseControlClient(dataclasses.replace(settings, token=token))


def publish(client: ReleaseControlClient, tmp_path: Path, feature: str, version: str, **kw):  # type: ignore[no-untyped-def]
    folder = make_feature(tmp_path / f"{feature}-{version}", feature, version)
    return client.publish(load_feature_folder(folder, feature_id=feature), **kw)


def stable_on_origin(server: RunningServer, feature: str) -> str | None:
    return host_view(folder_read(server.origin_dir), server.trust_path, feature).releases.stable


def test_a_lone_principal_cannot_promote_and_a_second_approver_can(
    server: RunningServer, tmp_path: Path
) -> None:
    ci = as_(server, "ci-bot", "releaser")
    alice = as_(server, "alice", "approver")
    bob = as_(server, "bob", "approver")

    # The first version of a protected feature is a publish straight to stable: it waits too.
    with pytest.raises(errors.ApprovalRequired) as first:
        publish(ci, tmp_path, PAY, "1.0.0")
    assert "publishing 1.0.0 straight to stable" in first.value.message
    assert f"releasectl release approve --id {first.value.approval_id}" in first.value.message
    assert alice.get_status().features == []  # nothing applied
    done = alice.approve(first.value.approval_id)
    assert done.approval.state == "approved" and done.approval.approved_by == "alice"
    assert done.transition.actor == "ci-bot" and done.transition.detail.endswith(
        "approved by alice"
    )
    assert stable_on_origin(server, PAY) == "1.0.0"

    publish(ci, tmp_path, PAY, "1.1.0", channel="canary")  # a canary needs no approval
    with pytest.raises(errors.ApprovalRequired) as asked:
        alice.promote(PAY, "1.1.0", skip_soak=True, reason="fix for INC-7", ticket="INC-7")
    approval_id = asked.value.approval_id
    assert "promoting 1.1.0 to stable before its soak is over" in asked.value.message

    # Asking again is the same request, not a second one.
    with pytest.raises(errors.ApprovalRequired) as again:
        alice.promote(PAY, "1.1.0", skip_soak=True, reason="fix for INC-7", ticket="INC-7")
    assert again.value.approval_id == approval_id
    (waiting,) = bob.list_approvals().approvals
    assert (waiting.id, waiting.feature_id, waiting.requested_by, waiting.state) == (
        approval_id,
        PAY,
        "alice",
        "pending",
    )

    # The requester cannot approve; a releaser has no approver role; nothing changes.
    with pytest.raises(errors.PermissionDenied, match="cannot approve it too"):
        alice.approve(approval_id)
    with pytest.raises(errors.PermissionDenied):
        ci.approve(approval_id)
    assert stable_on_origin(server, PAY) == "1.0.0"

    done = bob.approve(approval_id)
    assert stable_on_origin(server, PAY) == "1.1.0"
    assert (done.transition.actor, done.transition.reason, done.transition.ticket) == (
        "alice",
        "fix for INC-7",
        "INC-7",
    )
    assert done.transition.detail.endswith("; approved by bob")
    with pytest.raises(errors.FailedPrecondition, match="already approved by bob"):
        bob.approve(approval_id)
    assert bob.list_approvals().approvals == []

    # The operator fallback cannot put a version on stable alone either.
    with pytest.raises(errors.ApprovalRequired, match=r"setting stable to 1\.0\.0 by operator"):
        alice.set_channel(PAY, "1.0.0", "stable", reason="back")
    assert stable_on_origin(server, PAY) == "1.1.0"
    bob.approve(bob.list_approvals().approvals[0].id)
    assert stable_on_origin(server, PAY) == "1.0.0"
    assert [a.state for a in bob.list_approvals(include_done=True).approvals] == [
        "approved",
        "approved",
        "approved",
    ]


def test_unprotected_features_and_bad_ids(server: RunningServer, tmp_path: Path) -> None:
    """Features outside the patterns promote as before; an unknown id is NOT_FOUND and a
    zero id INVALID_ARGUMENT naming approval_id."""
    alice = as_(server, "alice", "approver", "releaser")
    publish(alice, tmp_path, "checkout", "1.0.0")
    publish(alice, tmp_path, "checkout", "1.1.0", channel="canary")
    alice.promote("checkout", "1.1.0", skip_soak=True, reason="fine")
    assert stable_on_origin(server, "checkout") == "1.1.0"
    with pytest.raises(errors.NotFound, match="no approval request 42"):
        alice.approve(42)
    with pytest.raises(errors.InvalidArgument) as caught:
        alice.approve(0)
    assert caught.value.field == "approval_id"
