"""Generated requests to every RPC: only documented codes, and a refusal changes nothing.

Hypothesis draws requests for each ReleaseControl RPC (mostly bad: odd feature
ids, versions, page tokens, control characters in the change context, long
request ids) and manifests for PublishVersion (valid ones, mutated ones, raw
JSON tricks such as duplicate keys, deep nesting and huge numbers, arbitrary
JSON and bytes). Every answer must be a success or a code the API documents
(README "The API"; PERMISSION_DENIED from "Authentication and roles"), with
the `google.rpc.ErrorInfo` of status.py, an INVALID_ARGUMENT naming its field,
and a one-line message of our own; after a refusal (and after any read) the
store (GetStatus) and every file on the origin are exactly as before.

Bounded for CI: one server for the module, a fixed number of examples per RPC,
derandomized (the same examples on every run), no example database.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from conftest import RunningServer, folder_read, host_view, make_feature, start_server
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from releasecontrol.client import ReleaseControlClient
from releasecontrol.manifest import load_feature_folder
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.v1 import release_control_pb2_grpc as pb_grpc

pytestmark = pytest.mark.integration

DOCUMENTED = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.PERMISSION_DENIED,
}
LEAKS = ("Traceback", "Exceeds the limit", "maximum recursion", "int_max_str_digits", "Error(")
WRITES = {
    "PublishVersion",
    "DeployCanary",
    "Promote",
    "Rollback",
    "SetChannel",
    "SetCanaryWeight",
    "Approve",
}
TIMEOUT = 30.0

SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- the server and what it holds ------------------------------------------------------------

FILES = {"index.js": b"export const v = 1;\n", "styles/main.css": b"body {}\n"}


class Probe:
    """The running server, a raw stub on its mTLS channel, and the state last seen."""

    def __init__(self, server: RunningServer, client: ReleaseControlClient) -> None:
        self.server = server
        self.stub = pb_grpc.ReleaseControlStub(client.channel)
        token = client.settings.token
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.seen = self.state()
        self.answers: Counter[tuple[str, str]] = Counter()
        """(rpc, code name or "OK") -> how many times: what the examples reached."""

    def state(self) -> tuple[bytes, str]:
        """Every feature and the global sequence (GetStatus), and a digest of the origin."""
        status = self.stub.GetStatus(pb.GetStatusRequest(), timeout=TIMEOUT, metadata=self.metadata)
        status.ClearField("server_time")
        status.ClearField("pending_origin_writes")  # the sync thread's progress, not state
        digest = hashlib.sha256()
        origin = self.server.origin_dir
        for path in sorted(origin.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                digest.update(path.relative_to(origin).as_posix().encode() + b"\0")
                digest.update(hashlib.sha256(path.read_bytes()).digest())
        return status.SerializeToString(deterministic=True), digest.hexdigest()

    def check(self, rpc: str, call: Callable[[], Any]) -> None:
        """Run `call`; a refusal must be documented, explained and change nothing."""
        try:
            call()
        except grpc.RpcError as error:
            self.answers[rpc, error.code().name] += 1
            assert_documented(rpc, error)
            assert self.state() == self.seen, f"{rpc} was refused but changed the state"
            return
        self.answers[rpc, "OK"] += 1
        if rpc in WRITES:
            self.seen = self.state()  # a change that went through: the new normal
        else:
            assert self.state() == self.seen, f"{rpc} answered and changed the state"


def assert_documented(rpc: str, error: Any) -> None:
    code, message = error.code(), error.details() or ""
    assert code in DOCUMENTED, f"{rpc} answered {code.name}: {message[:300]!r}"
    assert "\n" not in message and len(message) < 1000, f"{rpc}: {message[:300]!r}"
    assert not any(leak in message for leak in LEAKS), f"{rpc}: {message[:300]!r}"
    details = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert details, f"{rpc} {code.name} carries no status details: {message!r}"
    status = status_pb2.Status.FromString(details)
    info = error_details_pb2.ErrorInfo()
    assert status.details and status.details[0].Unpack(info), f"{rpc}: no ErrorInfo"
    assert info.domain == "releasecontrol.v1"
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert info.metadata.get("field"), f"{rpc} INVALID_ARGUMENT names no field: {message!r}"


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probe]:
    """checkout 1.0.0 then 1.1.0 (stable; 1.0.0 a rollback target) and profile 1.0.0."""
    root = tmp_path_factory.mktemp("properties")
    server = start_server(root / "home")
    try:
        client = server.client(retry_seconds=0)
        for feature_id, version in (
            ("checkout", "1.0.0"),
            ("checkout", "1.1.0"),
            ("profile", "1.0.0"),
        ):
            folder = make_feature(
                root / f"{feature_id}-{version}", feature_id, version, files=FILES
            )
            client.publish(load_feature_folder(folder, feature_id=feature_id))
        yield Probe(server, client)
    finally:
        server.stop()


# -- strategies: the fields ------------------------------------------------------------------
#
# Each request starts good (known features and versions, a plain context) and has up to two
# of its fields drawn wild instead: so examples reach the release rules as well as the input
# checks, and a refusal is about the field that was drawn wild.

# st.text draws from all of Unicode but surrogates (protobuf strings are UTF-8): control,
# format and bidirectional characters included.
TEXT = st.text(max_size=30)
LONG_TEXT = st.text(min_size=100, max_size=2000)
KNOWN_FEATURES = st.sampled_from(["checkout", "profile"])
KNOWN_VERSIONS = st.sampled_from(["1.0.0", "1.1.0", "2.0.0", "2.0.1", "3.0.0-rc.1"])
WILD_FEATURE_IDS = st.one_of(
    st.sampled_from(["nope", "", "Checkout", "a" * 64, "../etc", "checkout\n"]), TEXT, LONG_TEXT
)
WILD_VERSIONS = st.one_of(
    st.sampled_from(["", "v1", "1.0", "1.0.0-" + "a" * 200, "1.0.0\x00", "99.0.0"]),
    st.from_regex(r"\A[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}(-[a-z0-9.]{1,10})?\Z"),
    TEXT,
    LONG_TEXT,
)
UINT32 = st.integers(0, 2**32 - 1)
WILD_TEXT = st.one_of(TEXT, LONG_TEXT)
WILD_REQUEST_IDS = st.one_of(
    TEXT,
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=120, max_size=140
    ),
)
PAGE_TOKENS = st.one_of(
    TEXT,
    st.text(max_size=40).map(lambda t: base64.urlsafe_b64encode(t.encode()).decode()),
    st.integers(-5, 10**30).map(lambda n: base64.urlsafe_b64encode(str(n).encode()).decode()),
    st.text(min_size=200, max_size=5000),
)


def messages(
    message: Any, good: dict[str, st.SearchStrategy[Any]], wild: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """`message`s with every field drawn from `good`, then up to two drawn from `wild`."""

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        fields = {name: draw(strategy) for name, strategy in good.items()}
        for name in draw(st.lists(st.sampled_from(sorted(wild)), max_size=2, unique=True)):
            fields[name] = draw(wild[name])
        return message(**fields)

    return build()


CONTEXTS = messages(
    pb.ChangeContext,
    {
        "actor": st.sampled_from(["", "alice", "Zoë (release captain)"]),
        "reason": st.sampled_from(["", "hotfix for INC-7", "ship it 🚀"]),
        "ticket": st.sampled_from(["", "INC-7"]),
        "request_id": st.just("") | st.uuids().map(str),
        "expected_sequence": st.none(),
    },
    {
        "actor": WILD_TEXT,
        "reason": WILD_TEXT,
        "ticket": WILD_TEXT,
        "request_id": WILD_REQUEST_IDS,
        "expected_sequence": st.integers(0, 12) | st.integers(0, 2**64 - 1),
    },
)
FEATURE = {"feature_id": KNOWN_FEATURES}
WILD_FEATURE = {"feature_id": WILD_FEATURE_IDS}
CHANGE = {"feature_id": KNOWN_FEATURES, "version": KNOWN_VERSIONS, "context": CONTEXTS}
WILD_CHANGE = {"feature_id": WILD_FEATURE_IDS, "version": WILD_VERSIONS}
WILD_PAGE = {"page_size": UINT32, "page_token": PAGE_TOKENS}
FEATURE_LISTS = st.lists(KNOWN_FEATURES, max_size=2)
WILD_FEATURE_LISTS = st.lists(st.one_of(KNOWN_FEATURES, WILD_FEATURE_IDS), min_size=1, max_size=5)
SOAKS = st.none() | st.integers(0, 3600)
WILD_SOAKS = UINT32
WEIGHTS = st.integers(0, 10_000)
CHANNELS = st.sampled_from([pb.CHANNEL_STABLE, pb.CHANNEL_CANARY])
WILD_CHANNELS = st.integers(0, 4)


# -- strategies: manifests -------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=15,
)


def assets(files: dict[str, bytes]) -> list[dict[str, Any]]:
    return [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
        for p, d in files.items()
    ]


def good_manifest(feature_id: str, version: str) -> dict[str, Any]:
    return {
        "id": feature_id,
        "version": version,
        "entry": "index.js",
        "routes": [f"/{feature_id}"],
        "compat": {"host": "^2.0.0", "shared": {"react": "^18.2.0"}},
        "assets": assets(FILES),
    }


# What json.dumps never writes, injected into a good manifest as text.
TRICKS = [
    f'"n": {"7" * 5000}',
    f'"n": -{"1" * 40}',
    '"n": 1e999',
    '"n": NaN',
    '"n": "\\ud800"',
    '"entry": "index.js"',  # a duplicate key
    '"deep": ' + "[" * 100_000 + "]" * 100_000,
    '"deep": ' + '{"a":' * 33 + "1" + "}" * 33,
    '"s": "' + "x" * 9000 + '"',
    '"o": {' + ",".join(f'"k{i}": 0' for i in range(1001)) + "}",
]


@st.composite
def manifests(draw: st.DrawFn) -> tuple[str, bytes]:
    """A feature id and the manifest bytes to publish for it."""
    feature_id = draw(st.sampled_from(["checkout", "checkout", "profile", "nope"]))
    version = draw(KNOWN_VERSIONS)
    base = good_manifest(feature_id, version)
    how = draw(
        st.sampled_from(
            ["good", "field", "extra", "asset-path", "raw", "json", "bytes", "size", "id"]
        )
    )
    if how == "field":  # one known field replaced by any JSON value
        base[draw(st.sampled_from(sorted(base)))] = draw(JSON)
    elif how == "extra":  # an unknown field: kept as long as it is within the limits
        base[draw(TEXT)] = draw(JSON)
    elif how == "asset-path":
        path = draw(st.one_of(TEXT, st.sampled_from(["C:/x.js", "../x", "/x", "a\\b", "a\u202eb"])))
        base["assets"][1]["path"] = path
    elif how == "size":
        base["assets"][0]["size"] = draw(st.integers(-(2**60), 2**60))
    elif how == "id":
        base["id"] = draw(WILD_FEATURE_IDS)
    if how == "json":
        return feature_id, json.dumps(draw(JSON)).encode()
    if how == "bytes":
        return feature_id, draw(st.binary(max_size=300))
    text = json.dumps(base)
    if how == "raw":
        trick = draw(st.sampled_from(TRICKS))
        text = text[:-1] + ", " + trick + "}"
    return feature_id, text.encode()


@st.composite
def publish_streams(draw: st.DrawFn) -> list[pb.PublishVersionRequest]:
    """A PublishVersion stream: usually a header then chunks, sometimes out of order."""
    feature_id, manifest_json = draw(manifests())
    header = draw(
        messages(
            pb.PublishHeader,
            {
                "feature_id": st.just(feature_id),
                "manifest_json": st.just(manifest_json),
                "channel": CHANNELS,
                "soak_seconds": SOAKS,
                "context": CONTEXTS,
            },
            {"feature_id": WILD_FEATURE_IDS, "channel": WILD_CHANNELS, "soak_seconds": WILD_SOAKS},
        )
    )
    good_chunks = [
        pb.PublishVersionRequest(chunk=pb.ArtifactChunk(path=p, data=d)) for p, d in FILES.items()
    ]
    odd_chunk = st.builds(
        lambda p, d: pb.PublishVersionRequest(chunk=pb.ArtifactChunk(path=p, data=d)),
        st.one_of(st.sampled_from(sorted(FILES)), TEXT),
        st.binary(max_size=64),
    )
    first = pb.PublishVersionRequest(header=header)
    shape = draw(st.sampled_from(["good", "good", "odd", "short", "two-headers", "no-header"]))
    if shape == "good":
        return [first, *good_chunks]
    if shape == "odd":
        return [first, *draw(st.lists(odd_chunk, max_size=4))]
    if shape == "short":
        return [first, *good_chunks[:1]]
    if shape == "two-headers":
        return [first, first, *good_chunks]
    return draw(st.lists(odd_chunk, max_size=2))


# -- the RPCs --------------------------------------------------------------------------------


def unary(method: str, request: Any) -> Callable[[Probe], Any]:
    return lambda p: getattr(p.stub, method)(request, timeout=TIMEOUT, metadata=p.metadata)


def watch(request: pb.WatchReleasesRequest) -> Callable[[Probe], Any]:
    """Read the snapshot up to SYNCED (or the refusal), then leave."""

    def run(p: Probe) -> None:
        call = p.stub.WatchReleases(request, timeout=TIMEOUT, metadata=p.metadata)
        try:
            for event in call:
                if event.type == pb.WATCH_EVENT_TYPE_SYNCED:
                    break
        finally:
            call.cancel()

    return run


def rebuild(request: pb.RebuildOriginRequest) -> Callable[[Probe], Any]:
    return lambda p: list(p.stub.RebuildOrigin(request, timeout=TIMEOUT, metadata=p.metadata))


def publish(stream: list[pb.PublishVersionRequest]) -> Callable[[Probe], Any]:
    return lambda p: p.stub.PublishVersion(iter(stream), timeout=TIMEOUT, metadata=p.metadata)


def unaries(method: str, good: dict[str, Any], wild: dict[str, Any]) -> Any:
    message = getattr(pb, f"{method}Request")
    return messages(message, good, wild).map(lambda r: unary(method, r))


REQUESTS: dict[str, tuple[int, st.SearchStrategy[Callable[[Probe], Any]]]] = {
    # rpc: (examples, calls)
    "ListFeatures": (30, unaries("ListFeatures", {}, WILD_PAGE)),
    "GetFeature": (30, unaries("GetFeature", FEATURE, WILD_FEATURE)),
    "GetReleaseIndex": (30, unaries("GetReleaseIndex", FEATURE, WILD_FEATURE)),
    "GetStatus": (
        30,
        unaries(
            "GetStatus",
            {"feature_ids": FEATURE_LISTS},
            {"feature_ids": WILD_FEATURE_LISTS, **WILD_PAGE},
        ),
    ),
    "ListTransitions": (40, unaries("ListTransitions", FEATURE, {**WILD_FEATURE, **WILD_PAGE})),
    "WatchReleases": (
        20,
        messages(
            pb.WatchReleasesRequest,
            {"feature_ids": FEATURE_LISTS},
            {"feature_ids": WILD_FEATURE_LISTS},
        ).map(watch),
    ),
    "RefreshManifests": (
        20,
        unaries(
            "RefreshManifests", {"feature_ids": FEATURE_LISTS}, {"feature_ids": WILD_FEATURE_LISTS}
        ),
    ),
    "RebuildOrigin": (3, st.builds(pb.RebuildOriginRequest, force=st.booleans()).map(rebuild)),
    "DeployCanary": (
        60,
        unaries(
            "DeployCanary",
            {**CHANGE, "soak_seconds": SOAKS, "weight": WEIGHTS},
            {
                **WILD_CHANGE,
                "soak_seconds": WILD_SOAKS,
                "weight": UINT32,
                "steps": st.lists(st.integers(0, 20_000), max_size=25),
                "step_seconds": UINT32,
                "min_loads": UINT32,
            },
        ),
    ),
    "SetCanaryWeight": (
        40,
        unaries(
            "SetCanaryWeight",
            {**FEATURE, "weight": WEIGHTS, "context": CONTEXTS},
            {**WILD_FEATURE, "weight": UINT32},
        ),
    ),
    "ListApprovals": (
        20,
        unaries("ListApprovals", {**FEATURE, "include_done": st.booleans()}, WILD_FEATURE),
    ),
    "Approve": (
        20,
        unaries(
            "Approve",
            {"approval_id": st.integers(0, 5)},
            {"approval_id": st.integers(0, 2**64 - 1)},
        ),
    ),
    "GetAnalysis": (20, unaries("GetAnalysis", FEATURE, WILD_FEATURE)),
    "TestWebhooks": (10, unaries("TestWebhooks", {}, {"name": WILD_TEXT})),
    "Promote": (50, unaries("Promote", {**CHANGE, "skip_soak": st.booleans()}, WILD_CHANGE)),
    "Rollback": (50, unaries("Rollback", CHANGE, WILD_CHANGE)),
    "SetChannel": (
        50,
        unaries(
            "SetChannel", {**CHANGE, "channel": CHANNELS}, {**WILD_CHANGE, "channel": WILD_CHANNELS}
        ),
    ),
    "PublishVersion": (150, publish_streams().map(publish)),
}


def test_every_rpc_of_the_service_is_covered() -> None:
    """A new RPC needs its generated requests here."""
    assert set(REQUESTS) == set(pb.DESCRIPTOR.services_by_name["ReleaseControl"].methods_by_name)


@pytest.mark.parametrize("rpc", list(REQUESTS))
def test_generated_requests_get_documented_answers_and_refusals_change_nothing(
    probe: Probe, rpc: str
) -> None:
    examples, requests = REQUESTS[rpc]

    @settings(SETTINGS, max_examples=examples)
    @given(requests)
    def run(call: Callable[[Probe], Any]) -> None:
        probe.check(rpc, lambda: call(probe))

    run()


def test_the_examples_reached_past_the_input_checks(probe: Probe) -> None:
    """The generated requests are not all refused at the first field: publishes went through
    and changes met the release rules (run after the RPC tests; skipped when they did not run)."""
    if {rpc for rpc, _ in probe.answers} != set(REQUESTS):
        pytest.skip("run with the whole module")
    codes = {(rpc, code) for rpc, code in probe.answers if rpc in WRITES}
    assert ("PublishVersion", "OK") in codes
    assert ("PublishVersion", "INVALID_ARGUMENT") in codes
    for code in ("OK", "NOT_FOUND", "FAILED_PRECONDITION"):
        assert any(c == code for _, c in codes), f"no change answered {code}"


def test_the_origin_is_still_what_hosts_verify(probe: Probe) -> None:
    """After everything above, the origin is still whole: a host verifies each feature."""
    for feature_id in ("checkout", "profile"):
        host_view(folder_read(probe.server.origin_dir), probe.server.trust_path, feature_id)
