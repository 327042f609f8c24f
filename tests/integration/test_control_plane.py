"""The real server over mTLS, driven through the client library: rules, signing, durability."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path, PurePosixPath

import grpc
import pytest
from conftest import (
    RunningServer,
    changed_paths,
    folder_read,
    host_view,
    killed_at,
    make_feature,
    online_keyids,
    origin_files,
    sha256,
    start_server,
)

from releasecontrol import errors
from releasecontrol.fetch import Fetcher
from releasecontrol.host import FeatureHost
from releasecontrol.index import Envelope, ReleasesIndex, sign
from releasecontrol.manifest import artifact_path, load_feature_folder
from releasecontrol.shards import bin_of
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol.v1 import release_control_pb2 as pb
from releasectl.launcher import LocalServerError

pytestmark = pytest.mark.integration


def publish(
    server: RunningServer,
    tmp_path: Path,
    version: str,
    feature_id: str = "checkout",
    **kwargs: object,
) -> pb.PublishVersionResponse:
    folder = make_feature(tmp_path / f"src-{feature_id}-{version}", feature_id, version)
    return server.client().publish(load_feature_folder(folder, feature_id=feature_id), **kwargs)


def origin_file(server: RunningServer, path: str) -> bytes:
    return (server.origin_dir / path).read_bytes()


def trust_path(server: RunningServer) -> Path:
    """The trust file hosts of the dev server pin: its dev root key."""
    return server.home / "keys" / "trust.json"


def releases_on_origin(server: RunningServer, feature_id: str = "checkout") -> ReleasesIndex:
    """checkout's releases.json as a host verifies it, from the trust file down."""
    return host_view(folder_read(server.origin_dir), trust_path(server), feature_id).releases


class TestPublish:
    def test_publish_signs_and_writes_everything_hosts_verify(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """A publish leaves the chain a host follows: root 1, remote-index.json naming it and
        pinning checkout's shard, the shard pinning releases.json, the manifest, the artifacts."""
        response = publish(server, tmp_path, "1.0.0")
        assert response.feature.stable_version == "1.0.0"
        assert response.transition.actor  # defaults to the mTLS principal

        # Hosts pin the root key; root 1 on the origin lists the online key that signs.
        trust = TrustStore.from_file(trust_path(server))
        signing_key = SigningKey.load(server.home / "keys" / "signing-key.pem")
        assert signing_key.keyid not in trust.keys
        assert online_keyids(server.origin_dir) == [signing_key.keyid]

        view = host_view(folder_read(server.origin_dir), trust_path(server))
        assert (view.top.sequence, view.top.root_version) == (1, 1)
        assert view.signed_by == {signing_key.keyid}
        name = bin_of("checkout", view.top.bits)
        assert view.shard_path == f"index/{view.top.bits}/{name}.json"
        assert set(view.top.shards) == {name}
        shard_bytes = origin_file(server, view.shard_path)
        pin = view.top.shards[name]
        assert (pin.sha256, pin.length) == (sha256(shard_bytes), len(shard_bytes))
        assert list(view.shard.features) == ["checkout"]
        releases_pin = view.shard.features["checkout"]
        assert (releases_pin.sha256, releases_pin.length, releases_pin.sequence) == (
            sha256(view.releases_bytes),
            len(view.releases_bytes),
            1,
        )

        index = view.releases
        assert (index.sequence, index.stable, index.canary) == (1, "1.0.0", None)
        assert index.expires_at > index.issued_at
        manifest_bytes = origin_file(server, "features/checkout/1.0.0/manifest.json")
        assert index.versions[0].manifest_sha256 == sha256(manifest_bytes)
        for asset in json.loads(manifest_bytes)["assets"]:
            path = artifact_path(asset["sha256"], asset["path"])  # artifacts/<sha256>.js, .css
            assert path.endswith(PurePosixPath(asset["path"]).suffix)
            assert sha256(origin_file(server, path)) == asset["sha256"]
            # The control plane keeps its own copy, by hash, beside the database.
            kept = server.home / "artifacts" / asset["sha256"][:2] / asset["sha256"]
            assert sha256(kept.read_bytes()) == asset["sha256"]

        # The HTTP origin serves the very same bytes, the root included.
        for path in ("remote-index.json", "roots/1.json", view.shard_path):
            with urllib.request.urlopen(server.origin_url + path) as reply:
                assert reply.read() == origin_file(server, path)

    def test_a_host_loads_it_over_http_with_the_trust_file(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """A FeatureHost pinning the dev trust file loads what was published, every asset
        verified, and follows the next change on its next refresh."""
        publish(server, tmp_path, "1.0.0")
        with Fetcher() as fetcher:
            host = FeatureHost(
                server.origin_url + "remote-index.json",
                TrustStore.from_file(trust_path(server)),
                state_dir=tmp_path / "host",
                allow_insecure_dev_keys=True,
                fetcher=fetcher,
            )
            report = host.refresh()
            assert report.ok, report.refused
            assert (report.loaded, report.root_version) == ({"checkout": "1.0.0"}, 1)
            built = (tmp_path / "src-checkout-1.0.0/features/checkout/index.js").read_bytes()
            assert host.features["checkout"].artifact_bytes("index.js") == built

            publish(server, tmp_path, "1.1.0")
            report = host.refresh()
            assert report.ok and report.loaded == {"checkout": "1.1.0"}
            assert report.remote_sequence == 2

    def test_a_change_rewrites_its_releases_json_one_shard_and_the_top_level(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """A promote of checkout writes exactly three files; the other feature's shard and
        releases.json are left alone. A publish adds only its manifest and artifacts."""
        assert bin_of("checkout", 7) != bin_of("search", 7)  # two shards
        publish(server, tmp_path, "1.0.0")
        publish(server, tmp_path, "2.0.0", feature_id="search")
        publish(server, tmp_path, "1.1.0", channel="canary", soak_seconds=0)
        before = origin_files(server.origin_dir)
        search_before = host_view(folder_read(server.origin_dir), trust_path(server), "search")

        server.client().promote("checkout", "1.1.0")
        after = origin_files(server.origin_dir)
        view = host_view(folder_read(server.origin_dir), trust_path(server))
        assert changed_paths(before, after) == {
            "features/checkout/releases.json",
            view.shard_path,
            "remote-index.json",
        }
        assert (view.top.sequence, view.releases.sequence, view.releases.stable) == (
            4,
            3,
            "1.1.0",
        )
        assert view.top.shards[bin_of("checkout", view.top.bits)].sequence == 4
        search_bin = bin_of("search", view.top.bits)
        assert view.top.shards[search_bin] == search_before.top.shards[search_bin]

        publish(server, tmp_path, "1.2.0", channel="canary", soak_seconds=60)
        again = origin_files(server.origin_dir)
        manifest = json.loads(again["features/checkout/1.2.0/manifest.json"])
        artifacts = {artifact_path(a["sha256"], a["path"]) for a in manifest["assets"]}
        assert changed_paths(after, again) == {
            "features/checkout/releases.json",
            view.shard_path,
            "remote-index.json",
            "features/checkout/1.2.0/manifest.json",
            *artifacts,
        }

    def test_same_manifest_again_is_a_no_op_and_different_one_is_refused(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """Identical content again changes nothing; other content under one version is refused."""
        publish(server, tmp_path, "1.0.0")
        again = publish(server, tmp_path, "1.0.0")
        assert again.already_published and again.feature.sequence == 1
        folder = make_feature(
            tmp_path / "changed", "checkout", "1.0.0", files={"index.js": b"changed\n"}
        )
        with pytest.raises(errors.AlreadyExists, match="bump the version"):
            server.client().publish(load_feature_folder(folder, feature_id="checkout"))
        assert releases_on_origin(server).sequence == 1

    def test_get_release_index_returns_the_exact_origin_bytes(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """GetReleaseIndex serves the same bytes that sit on the origin."""
        publish(server, tmp_path, "1.0.0")
        client = server.client()
        feature = client.get_release_index("checkout")
        assert feature.content == origin_file(server, "features/checkout/releases.json")
        assert feature.path == "features/checkout/releases.json"
        top = client.get_release_index("")
        assert top.content == origin_file(server, "remote-index.json")
        assert top.sha256 == sha256(top.content)


class TestTransitions:
    def test_canary_soak_promote_rollback_fallback(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """The whole release path over gRPC, each step reflected in the signed index."""
        client = server.client()
        publish(server, tmp_path, "1.0.0")
        publish(server, tmp_path, "1.1.0", channel="canary", soak_seconds=3600)
        index = releases_on_origin(server)
        assert (index.stable, index.canary) == ("1.0.0", "1.1.0")
        assert index.canary_soak is not None and index.canary_soak.duration_seconds == 3600

        with pytest.raises(errors.SoakNotOver, match=r"still soaking: (59m|1h)") as soaking:
            client.promote("checkout", "1.1.0")
        # The time left reaches programs too, not only the message (status details).
        assert 3500 < soaking.value.seconds_left <= 3600
        with pytest.raises(errors.InvalidArgument, match="reason") as no_reason:
            client.promote("checkout", "1.1.0", skip_soak=True)
        assert no_reason.value.field == "reason"
        promoted = client.promote(
            "checkout", "1.1.0", skip_soak=True, reason="hotfix", ticket="INC-7", actor="alice"
        )
        assert promoted.feature.stable_version == "1.1.0"
        assert promoted.transition.actor == "alice"
        assert promoted.transition.ticket == "INC-7"
        assert "soak skipped" in promoted.transition.detail

        rolled = client.rollback("checkout", "1.0.0", reason="bad metrics")
        assert rolled.feature.stable_version == "1.0.0"
        with pytest.raises(errors.FailedPrecondition, match="already stable"):
            client.rollback("checkout", "1.0.0")

        fallback = client.set_channel("checkout", "1.1.0", "canary", reason="retry canary")
        assert fallback.feature.canary.version == "1.1.0"
        index = releases_on_origin(server)
        assert (index.sequence, index.stable, index.canary) == (5, "1.0.0", "1.1.0")

        history = client.list_transitions(feature_id="checkout").transitions
        assert [t.action for t in history] == [
            pb.TRANSITION_ACTION_SET_CHANNEL,
            pb.TRANSITION_ACTION_ROLLBACK,
            pb.TRANSITION_ACTION_PROMOTE,
            pb.TRANSITION_ACTION_PUBLISH,
            pb.TRANSITION_ACTION_PUBLISH,
        ]
        assert history[1].reason == "bad metrics"

    def test_promote_after_the_soak_needs_no_skip(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """A canary with a zero soak is promotable at once."""
        publish(server, tmp_path, "1.0.0")
        publish(server, tmp_path, "1.1.0")  # stable now; make 1.2.0 the canary
        publish(server, tmp_path, "1.2.0", channel="canary", soak_seconds=0)
        response = server.client().promote("checkout", "1.2.0")
        assert response.feature.stable_version == "1.2.0"
        assert not response.feature.HasField("canary")

    def test_stale_expected_sequence_is_aborted_and_changes_nothing(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """A stale expected_sequence fails with ABORTED and leaves state and origin alone."""
        publish(server, tmp_path, "1.0.0")
        publish(server, tmp_path, "1.1.0", channel="canary", soak_seconds=0)
        before = origin_file(server, "features/checkout/releases.json")
        with pytest.raises(errors.StaleSequence, match="expected 1"):
            server.client().promote("checkout", "1.1.0", expected_sequence=1)
        assert origin_file(server, "features/checkout/releases.json") == before
        ok = server.client().promote("checkout", "1.1.0", expected_sequence=2)
        assert ok.feature.sequence == 3

    def test_retried_request_id_is_applied_once(
        self, server: RunningServer, tmp_path: Path
    ) -> None:
        """The same request_id twice answers the first response and records one change."""
        publish(server, tmp_path, "1.0.0")
        publish(server, tmp_path, "1.1.0")
        client = server.client()
        first = client.deploy_canary("checkout", "1.0.0", soak_seconds=60, request_id="req-1")
        second = client.deploy_canary("checkout", "1.0.0", soak_seconds=60, request_id="req-1")
        assert second == first
        history = client.list_transitions(feature_id="checkout").transitions
        assert len(history) == 3
        with pytest.raises(errors.InvalidArgument, match="request_id"):
            client.promote("checkout", "1.0.0", request_id="req-1")
        # The same id on the same RPC but another request is refused, not answered as the first.
        with pytest.raises(errors.InvalidArgument, match="different DeployCanary request"):
            client.deploy_canary("checkout", "1.1.0", soak_seconds=60, request_id="req-1")


BAD_INPUT = [
    pytest.param(
        "deploy_canary",
        ("Checkout", "1.0.0"),
        errors.InvalidArgument,
        "feature_id",
        id="uppercase-feature-id",
    ),
    pytest.param(
        "deploy_canary",
        ("../etc", "1.0.0"),
        errors.InvalidArgument,
        "feature_id",
        id="traversal-feature-id",
    ),
    pytest.param(
        "deploy_canary", ("checkout", "v1"), errors.InvalidArgument, "SemVer", id="not-semver"
    ),
    pytest.param(
        "deploy_canary", ("nosuch", "1.0.0"), errors.NotFound, "publish", id="unknown-feature"
    ),
    pytest.param(
        "deploy_canary",
        ("checkout", "9.9.9"),
        errors.NotFound,
        "published: 1.0.0",
        id="unknown-version",
    ),
    pytest.param(
        "rollback", ("checkout", "9.9.9"), errors.NotFound, "9.9.9", id="rollback-unknown-version"
    ),
    pytest.param("get_feature", ("nosuch",), errors.NotFound, "nosuch", id="get-unknown"),
    pytest.param("list_transitions", ("nosuch",), errors.NotFound, "nosuch", id="history-unknown"),
]


@pytest.mark.parametrize(("method", "args", "error", "text"), BAD_INPUT)
def test_bad_input_gets_the_contract_code_and_changes_nothing(
    server: RunningServer,
    tmp_path: Path,
    method: str,
    args: tuple[str, ...],
    error: type[errors.ReleaseControlError],
    text: str,
) -> None:
    """Bad input is refused with its status code and a message naming the field; no state moves."""
    publish(server, tmp_path, "1.0.0")
    client = server.client()
    before = client.get_status()
    with pytest.raises(error, match=text):
        getattr(client, method)(*args)
    after = client.get_status()
    assert after.global_sequence == before.global_sequence
    assert list(after.features) == list(before.features)


@pytest.mark.parametrize(
    ("manifest", "text"),
    [
        pytest.param(b"{not json", "not valid JSON", id="malformed"),
        pytest.param(b"[]", "JSON object", id="not-an-object"),
        pytest.param(b" " * (1024 * 1024 + 1), "limit", id="oversized"),
        pytest.param(
            json.dumps({"id": "other", "version": "1.0.0"}).encode(),
            "does not match",
            id="other-feature",
        ),
    ],
)
def test_bad_manifest_is_refused_over_the_stream(
    server: RunningServer, manifest: bytes, text: str
) -> None:
    """A malformed or oversized manifest is INVALID_ARGUMENT and nothing is recorded."""
    stub_channel = server.client()
    with pytest.raises(errors.InvalidArgument, match=text):
        stub_channel.publish_raw("checkout", manifest, {})
    assert stub_channel.get_status().global_sequence == 0
    assert not (server.origin_dir / "remote-index.json").exists()


def test_features_status_and_transitions_paginate(server: RunningServer, tmp_path: Path) -> None:
    """Pages cover every feature exactly once, in order; history pages are newest first."""
    client = server.client()
    ids = [f"feature-{i:02d}" for i in range(5)]
    for fid in ids:
        folder = make_feature(tmp_path / fid, fid, "1.0.0")
        client.publish(load_feature_folder(folder, feature_id=fid))
    seen, token = [], ""
    while True:
        page = client.list_features(page_size=2, page_token=token)
        assert len(page.features) <= 2
        seen += [f.feature_id for f in page.features]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    first_status = client.get_status_page(page_size=2)
    assert [f.feature_id for f in first_status.features] == ids[:2]
    assert first_status.next_page_token
    paged = client.get_status(page_size=2)  # three pages, read as one answer
    assert [f.feature_id for f in paged.features] == ids
    assert paged.next_page_token == ""
    assert list(paged.features) == list(client.get_status().features)
    first = client.list_transitions(page_size=3)
    rest = client.list_transitions(page_size=3, page_token=first.next_page_token)
    ids_in_history = [t.feature_id for t in [*first.transitions, *rest.transitions]]
    assert ids_in_history == list(reversed(ids))
    assert rest.next_page_token == ""
    with pytest.raises(errors.InvalidArgument, match="page_token"):
        client.list_features(page_token="@@not-a-token@@")
    with pytest.raises(errors.InvalidArgument, match="page_token"):
        client.get_status_page(page_token="@@not-a-token@@")


def test_watch_sends_snapshot_then_changes_in_order(server: RunningServer, tmp_path: Path) -> None:
    """A watcher gets the current state, a SYNCED marker, then each change as it commits."""
    publish(server, tmp_path, "1.0.0")
    watcher = server.client().watch()
    first = next(watcher)
    assert first.type == pb.WATCH_EVENT_TYPE_SNAPSHOT
    assert first.feature.stable_version == "1.0.0"
    assert next(watcher).type == pb.WATCH_EVENT_TYPE_SYNCED
    publish(server, tmp_path, "1.1.0")
    publish(server, tmp_path, "1.2.0", channel="canary", soak_seconds=60)
    changes = [next(watcher), next(watcher)]
    assert [c.type for c in changes] == [pb.WATCH_EVENT_TYPE_CHANGE] * 2
    assert [c.global_sequence for c in changes] == [2, 3]
    assert changes[1].feature.canary.version == "1.2.0"
    watcher.cancel()  # type: ignore[attr-defined]


def test_health_and_reflection_are_served(server: RunningServer) -> None:
    """The standard health service says SERVING and reflection lists the service."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    client = server.client()
    health = health_pb2_grpc.HealthStub(client.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service="releasecontrol.v1.ReleaseControl"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING

    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    services = ProtoReflectionDescriptorDatabase(client.channel).get_services()
    assert "releasecontrol.v1.ReleaseControl" in services
    assert "grpc.health.v1.Health" in services


def test_a_client_without_a_certificate_is_refused(server: RunningServer) -> None:
    """mTLS is required: a caller presenting no client certificate cannot make calls."""
    ca = (server.home / "pki" / "ca.pem").read_bytes()
    channel = grpc.secure_channel(server.grpc, grpc.ssl_channel_credentials(root_certificates=ca))
    from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

    with pytest.raises(grpc.RpcError) as caught:
        pb_grpc.ReleaseControlStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    channel.close()


def test_a_change_killed_after_commit_reaches_the_origin_on_restart(tmp_path: Path) -> None:
    """Killing the server between commit and origin write loses nothing: restart finishes it."""
    home = tmp_path / "home"
    first = start_server(home)
    try:
        folder = make_feature(tmp_path / "v1", "checkout", "1.0.0")
        first.client().publish(load_feature_folder(folder, feature_id="checkout"))
        folder = make_feature(tmp_path / "v2", "checkout", "1.1.0")
        first.client().publish(load_feature_folder(folder, feature_id="checkout"))
    finally:
        first.stop()

    crashing = start_server(home, **killed_at("commit"))
    with pytest.raises(errors.Unavailable):
        crashing.client(timeout_seconds=10).deploy_canary("checkout", "1.0.0", soak_seconds=60)
    assert crashing.process.wait(timeout=15) != 0  # killed, not a clean exit
    crashing.stop()
    on_origin = Envelope.from_bytes((home / "origin/features/checkout/releases.json").read_bytes())
    assert on_origin.signed["sequence"] == 2  # the committed change never reached the origin

    restarted = start_server(home)
    try:
        # What a host verifies: the top level pins the shard that pins the new releases.json.
        view = host_view(folder_read(home / "origin"), home / "keys" / "trust.json")
        assert (view.releases.sequence, view.releases.canary) == (3, "1.0.0")
        assert view.top.sequence == 3
        assert view.shard.features["checkout"].sequence == 3
        assert restarted.client().get_status().pending_origin_writes == 0
    finally:
        restarted.stop()


@pytest.mark.parametrize(
    ("path", "ahead_by", "text"),
    [
        pytest.param("features/checkout/releases.json", 7, "is ahead of", id="releases-ahead"),
        pytest.param("remote-index.json", 7, "is ahead of", id="remote-index-ahead"),
        pytest.param("features/checkout/releases.json", 0, "differs from", id="same-seq-other"),
    ],
)
def test_an_origin_ahead_of_the_store_is_never_overwritten(
    server: RunningServer, tmp_path: Path, path: str, ahead_by: int, text: str
) -> None:
    """If another writer put newer index files on the origin, changes are refused, not published."""
    publish(server, tmp_path, "1.0.0")
    publish(server, tmp_path, "1.1.0", channel="canary", soak_seconds=0)
    target = server.origin_dir / path
    body = dict(Envelope.from_bytes(target.read_bytes()).signed)
    body["sequence"] += ahead_by
    body["issued_at"] = "2030-01-01T00:00:00Z"  # other bytes, as another writer's
    # Signed with this control plane's own key: a second server, or a restored backup.
    key = SigningKey.load(server.home / "keys" / "signing-key.pem")
    target.write_bytes(sign(body, [key]).to_bytes())
    tampered = target.read_bytes()
    before = server.client().get_status()
    with pytest.raises(errors.FailedPrecondition, match=text):
        server.client().promote("checkout", "1.1.0")
    assert target.read_bytes() == tampered
    after = server.client().get_status()
    assert after.global_sequence == before.global_sequence
    assert after.features[0].canary.version == "1.1.0"


def test_a_forged_index_on_the_origin_does_not_block_changes(
    server: RunningServer, tmp_path: Path
) -> None:
    """An unsigned file claiming a huge sequence is replaced, not obeyed: rollback still works."""
    publish(server, tmp_path, "1.0.0")
    publish(server, tmp_path, "1.1.0")
    target = server.origin_dir / "remote-index.json"
    target.write_text(json.dumps({"signed": {"sequence": 10**9}, "signatures": []}))
    rolled = server.client().rollback("checkout", "1.0.0", reason="bad release")
    assert rolled.feature.stable_version == "1.0.0"
    assert Envelope.from_bytes(target.read_bytes()).signed["sequence"] == 3


def test_a_retry_is_not_told_success_while_the_origin_lacks_the_change(
    server: RunningServer, tmp_path: Path
) -> None:
    """A change committed but not yet on the CDN stays UNAVAILABLE on retry until it is there."""
    publish(server, tmp_path, "1.0.0")
    publish(server, tmp_path, "1.1.0")
    releases_file = server.origin_dir / "features/checkout/releases.json"
    releases_file.unlink()
    releases_file.mkdir()  # the origin write now fails (cannot replace a directory)
    client = server.client(timeout_seconds=20)
    with pytest.raises(errors.Unavailable, match="committed"):
        client.rollback("checkout", "1.0.0", request_id="rollback-1")
    with pytest.raises(errors.Unavailable, match="still lacks it"):
        client.rollback("checkout", "1.0.0", request_id="rollback-1")
    releases_file.rmdir()  # the origin recovers
    done = client.rollback("checkout", "1.0.0", request_id="rollback-1")
    assert done.feature.stable_version == "1.0.0"
    assert Envelope.from_bytes(releases_file.read_bytes()).signed["sequence"] == 3


def test_a_dropped_publish_stream_leaves_nothing_and_can_be_retried(
    server: RunningServer, tmp_path: Path
) -> None:
    """A stream cut mid-upload publishes nothing; the retry with the same request_id succeeds."""
    import threading

    from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

    source = load_feature_folder(make_feature(tmp_path, "checkout", "1.0.0"), feature_id="checkout")
    client = server.client()
    stub = pb_grpc.ReleaseControlStub(client.channel)
    header = pb.PublishVersionRequest(
        header=pb.PublishHeader(
            feature_id="checkout",
            manifest_json=json.dumps(source.manifest).encode(),
            context=pb.ChangeContext(request_id="publish-once"),
        )
    )
    first_path = source.manifest["assets"][0]["path"]
    sent = threading.Event()
    hold = threading.Event()

    def cut_short():  # type: ignore[no-untyped-def]
        yield header
        yield pb.PublishVersionRequest(chunk=pb.ArtifactChunk(path=first_path, data=b"exp"))
        sent.set()
        hold.wait(10)

    call = stub.PublishVersion.future(cut_short())
    assert sent.wait(10)
    call.cancel()
    hold.set()
    assert client.get_status().global_sequence == 0
    assert not (server.origin_dir / "artifacts").exists()
    assert not (server.origin_dir / "features").exists()

    retried = client.publish(source, request_id="publish-once")
    assert retried.feature.stable_version == "1.0.0"
    assert retried.transition.request_id == "publish-once"


def test_refresh_manifests_restores_the_origin_and_tells_hosts(
    server: RunningServer, tmp_path: Path
) -> None:
    """A missing or altered manifest on the origin is restored, and watchers are told to refresh."""
    publish(server, tmp_path, "1.0.0")
    publish(server, tmp_path, "1.1.0")
    first = server.origin_dir / "features/checkout/1.0.0/manifest.json"
    second = server.origin_dir / "features/checkout/1.1.0/manifest.json"
    recorded_first, recorded_second = first.read_bytes(), second.read_bytes()
    first.unlink()
    second.write_bytes(b'{"tampered": true}')

    client = server.client()
    watcher = client.watch()
    assert next(watcher).type == pb.WATCH_EVENT_TYPE_SNAPSHOT
    assert next(watcher).type == pb.WATCH_EVENT_TYPE_SYNCED
    response = client.refresh_manifests()
    assert [(c.version, c.status) for c in response.checks] == [
        ("1.0.0", pb.MANIFEST_STATUS_RESTORED),
        ("1.1.0", pb.MANIFEST_STATUS_RESTORED),
    ]
    assert "missing" in response.checks[0].detail
    assert (first.read_bytes(), second.read_bytes()) == (recorded_first, recorded_second)
    assert response.watchers_notified == 1
    event = next(watcher)
    assert event.type == pb.WATCH_EVENT_TYPE_REFRESH
    assert list(event.feature_ids) == ["checkout"]
    watcher.cancel()

    again = client.refresh_manifests(["checkout"])
    assert {c.status for c in again.checks} == {pb.MANIFEST_STATUS_OK}
    with pytest.raises(errors.NotFound):
        client.refresh_manifests(["nosuch"])
    assert client.get_status().global_sequence == 2  # nothing changed in the store


def test_hot_refresh_restores_the_index_files_hosts_read(
    server: RunningServer, tmp_path: Path
) -> None:
    """A deleted shard, a truncated remote-index.json and a replaced root are written back
    with the signed bytes; a host then loads again."""
    publish(server, tmp_path, "1.0.0")
    origin = server.origin_dir
    top = origin / "remote-index.json"
    shard = next((origin / "index").rglob("*.json"))
    root = origin / "roots" / "1.json"
    signed = {p: p.read_bytes() for p in (top, shard, root)}
    shard.unlink()
    top.write_bytes(signed[top][:100])
    root.write_bytes(b"{}")

    response = server.client().refresh_manifests(["checkout"])
    by_path = {c.path: c for c in response.index_checks}
    assert set(by_path) == {
        "roots/1.json",
        "features/checkout/releases.json",
        str(shard.relative_to(origin)),
        "remote-index.json",
    }
    restored = {p for p, c in by_path.items() if c.status == pb.MANIFEST_STATUS_RESTORED}
    assert restored == {"roots/1.json", str(shard.relative_to(origin)), "remote-index.json"}
    assert "missing" in by_path[str(shard.relative_to(origin))].detail
    assert {p: p.read_bytes() for p in signed} == signed
    view = host_view(lambda path: (origin / path).read_bytes(), server.trust_path)
    assert view.releases.stable == "1.0.0"


def test_the_audit_record_keeps_the_caller_beside_the_actor_it_gave(tmp_path: Path) -> None:
    """--actor names who a change is for; the authenticated caller is recorded beside it, in
    the audit record and in the feature's status, and both survive a restart."""
    home = tmp_path / "home"
    first = start_server(home)
    try:
        folder = make_feature(tmp_path / "v1", "checkout", "1.0.0")
        first.client().publish(load_feature_folder(folder, feature_id="checkout"))
        folder = make_feature(tmp_path / "v2", "checkout", "1.1.0")
        first.client().publish(load_feature_folder(folder, feature_id="checkout"))
        first.client().rollback("checkout", "1.0.0", actor="alice", reason="bad deploy")
    finally:
        first.stop()
    restarted = start_server(home)
    try:
        history = restarted.client().list_transitions("checkout").transitions
        (feature,) = restarted.client().get_status().features
    finally:
        restarted.stop()
    rollback, *published = history
    caller = published[0].actor  # no --actor given: the actor is the caller
    assert caller and all(t.principal == caller for t in history)
    assert (rollback.actor, rollback.principal) == ("alice", caller)
    assert (feature.updated_by, feature.updated_by_principal) == ("alice", caller)


def test_a_second_server_on_the_same_home_is_refused(server: RunningServer) -> None:
    """Two servers on one state directory would both write its store and its origin: the
    second stops at once with one line naming the first one's pid; the first serves on."""
    with pytest.raises(LocalServerError) as refused:
        start_server(server.home)
    log = refused.value.last_error
    assert f"another releasecontrol-server (pid {server.pid}) is running on" in log
    assert str(server.home) in log
    assert server.client().get_status().global_sequence == 0
