"""releasectl: help, input checked before any network call, one-line errors, and output.

Commands that need the control plane talk to a fake client here (installed in
place of `ReleaseControlClient.from_environment`); tests/integration drives the
real server.
"""

from __future__ import annotations

import inspect
import json
import os
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from google.protobuf.timestamp_pb2 import Timestamp

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient
from releasecontrol.manifest import SourceFeature
from releasecontrol.v1 import release_control_pb2 as pb
from releasectl import main


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Every test runs in an empty directory with no ReleaseControl variables set, and its
    own per-user runtime folder (where `releasectl dev` records itself)."""
    for name in list(os.environ):
        if name.startswith("RELEASECONTROL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="releasectl")


def assert_one_line_error(result: Result, *fragments: str, code: int = 1) -> None:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command tries to build a client."""

    def refuse(cls: type, **kwargs: Any) -> ReleaseControlClient:
        raise AssertionError("the command reached for the network")

    monkeypatch.setattr(ReleaseControlClient, "from_environment", classmethod(refuse))


# -- help --------------------------------------------------------------------------

CHANGE = ["--actor", "--reason", "--ticket", "--expected-sequence", "--request-id"]

HELP = [
    pytest.param(
        [], ["--server", "--home", "dev", "publish", "release", "channel"], id="releasectl"
    ),
    pytest.param(["dev"], [], id="dev"),
    pytest.param(
        ["publish"],
        ["--feature", "--dir", "--channel", "--soak", "--output", *CHANGE],
        id="publish",
    ),
    pytest.param(["release"], ["canary", "promote", "rollback", "status"], id="release"),
    pytest.param(
        ["release", "canary"],
        ["--feature", "--version", "--soak", "--output", *CHANGE],
        id="release-canary",
    ),
    pytest.param(
        ["release", "promote"],
        ["--feature", "--version", "--skip-soak", "--output", *CHANGE],
        id="release-promote",
    ),
    pytest.param(
        ["release", "rollback"],
        ["--feature", "--version", "--output", *CHANGE],
        id="release-rollback",
    ),
    pytest.param(["release", "status"], ["--feature", "--output"], id="release-status"),
    pytest.param(["channel"], ["fallback"], id="channel"),
    pytest.param(
        ["channel", "fallback"],
        ["--feature", "--version", "--to", "--output", *CHANGE],
        id="channel-fallback",
    ),
]


class TestHelp:
    @pytest.mark.parametrize(("command", "names"), HELP)
    def test_help_names_every_option_and_shows_an_example(
        self, command: list[str], names: list[str], no_network: None
    ) -> None:
        """`--help` of every command and group exits 0, names its options and gives an example."""
        result = run(*command, "--help")
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith("Usage: releasectl")
        for name in names:
            assert name in result.stdout
        assert "Example:\n    releasectl " in result.stdout

    def test_version_prints_the_package_version(self) -> None:
        """`releasectl --version` exits 0 and names the program."""
        result = run("--version")
        assert result.exit_code == 0
        assert result.stdout.startswith("releasectl, version ")


# -- bad input stops before the network ----------------------------------------------


USAGE_ERRORS = [
    pytest.param(
        ["release", "promote", "--feature", "checkout", "--version", "1.3.0", "--skip-soak"],
        "--skip-soak needs --reason",
        id="skip-soak-without-reason",
    ),
    pytest.param(
        [
            "release",
            "promote",
            "--feature",
            "checkout",
            "--version",
            "1.3.0",
            "--skip-soak",
            "--reason",
            "  ",
        ],
        "--skip-soak needs --reason",
        id="skip-soak-with-blank-reason",
    ),
    pytest.param(
        ["release", "canary", "--feature", "checkout", "--version", "1.3.0", "--soak", "3x"],
        "duration '3x' is not understood",
        id="bad-soak",
    ),
    pytest.param(
        ["publish", "--feature", "checkout", "--channel", "canary", "--soak", "soon"],
        "duration 'soon' is not understood",
        id="publish-bad-soak",
    ),
    pytest.param(
        ["publish", "--feature", "checkout", "--soak", "30m"],
        "--soak applies to --channel canary only",
        id="soak-on-stable",
    ),
    pytest.param(
        ["release", "canary", "--feature", "Checkout", "--version", "1.3.0"],
        "not a valid feature id",
        id="uppercase-feature",
    ),
    pytest.param(
        ["release", "rollback", "--feature", "checkout", "--version", "v1"],
        "not a SemVer 2.0 version",
        id="not-semver",
    ),
    pytest.param(
        ["release", "status", "--feature", "ok", "--feature", "../etc"],
        "not a valid feature id",
        id="status-bad-feature",
    ),
    pytest.param(
        [
            "release",
            "canary",
            "--feature",
            "checkout",
            "--version",
            "1.0.0",
            "--expected-sequence",
            "-1",
        ],
        "--expected-sequence",
        id="negative-expected-sequence",
    ),
    pytest.param(
        ["channel", "fallback", "--feature", "checkout", "--version", "1.0.0", "--to", "beta"],
        "'beta' is not one of 'stable', 'canary'",
        id="unknown-channel",
    ),
    pytest.param(
        ["release", "canary", "--version", "1.0.0"],
        "missing option '--feature'",
        id="missing-feature",
    ),
    pytest.param(["release", "frob"], "no such command 'frob'", id="unknown-command"),
    pytest.param(["--bogus", "release", "status"], "no such option '--bogus'", id="top-option"),
]


class TestUsageErrors:
    @pytest.mark.parametrize(("args", "text"), USAGE_ERRORS)
    def test_bad_input_is_a_usage_error_before_any_network_call(
        self, args: list[str], text: str, no_network: None
    ) -> None:
        """Bad flags fail with exit 2 in ONE line naming the problem and where the help is
        (issue 13, item 15: click printed four: usage, "Try …", a blank, "Error: …")."""
        result = run(*args)
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: ") and text in line, line
        assert re.search(r" \(see `releasectl[a-z -]*--help`\)$", line), line
        assert "Traceback" not in result.output

    @pytest.mark.parametrize(
        ("args", "command"),
        [
            pytest.param(["--bogus"], "releasectl", id="top"),
            pytest.param(["release", "frob"], "releasectl release", id="group"),
            pytest.param(["release", "promote", "-f", "x"], "releasectl release promote", id="cmd"),
        ],
    )
    def test_the_help_named_is_the_command_s(
        self, args: list[str], command: str, no_network: None
    ) -> None:
        """The line points at the help of the command that refused the input."""
        result = run(*args)
        assert result.stderr.rstrip("\n").endswith(f"(see `{command} --help`)"), result.stderr

    def test_a_group_without_its_command_still_shows_its_help(self, no_network: None) -> None:
        """`releasectl release` alone lists the release commands (click's help, exit 2)."""
        result = run("release")
        assert result.exit_code == 2
        assert "promote" in result.output and "rollback" in result.output


def write_feature(root: Path, files: dict[str, bytes] | None = None, **overrides: Any) -> Path:
    folder = root / "features" / "checkout"
    files = files or {"index.js": b"export default 1;\n", "main.css": b"body{}\n"}
    for path, data in files.items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    manifest = {
        "id": "checkout",
        "version": "1.2.0",
        "entry": next(iter(files)),
        "routes": ["/checkout"],
        "compat": {"host": "^2.0.0"},
        "assets": [{"path": p} for p in files],
        **overrides,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


class TestPublishInput:
    def test_no_manifest_folder_names_the_folder(self, no_network: None) -> None:
        """Publishing a feature with no folder fails in one line that names the folder."""
        result = run("publish", "--feature", "checkout")
        assert_one_line_error(result, "no manifest.json in features/checkout", "--dir", code=2)

    def test_dir_is_read_instead_of_the_default_folder(
        self, isolated: Path, no_network: None
    ) -> None:
        """--dir names the folder read, and the error says that folder."""
        result = run("publish", "--feature", "checkout", "--dir", "build/out")
        assert_one_line_error(result, "no manifest.json in build/out", code=2)

    def test_a_listed_sha256_that_does_not_match_names_the_file(
        self, isolated: Path, no_network: None
    ) -> None:
        """A manifest whose sha256 differs from its file fails in one line naming the file."""
        write_feature(
            isolated,
            assets=[{"path": "index.js", "sha256": "0" * 64}, {"path": "main.css"}],
        )
        result = run("publish", "--feature", "checkout")
        assert_one_line_error(result, "'index.js'", "sha256", code=2)

    def test_a_manifest_of_another_feature_is_refused(
        self, isolated: Path, no_network: None
    ) -> None:
        """A manifest whose id is another feature's fails in one line naming both."""
        write_feature(isolated, id="payments")
        result = run("publish", "--feature", "checkout")
        assert_one_line_error(result, "'payments'", "'checkout'", code=2)

    def test_missing_ca_is_one_line_with_the_fix(self, isolated: Path) -> None:
        """With no dev PKI yet, a command says to start `releasectl dev` in one line."""
        write_feature(isolated)
        result = run("--home", str(isolated / "state"), "publish", "--feature", "checkout")
        assert_one_line_error(result, "ca.pem", "start `releasectl dev` first")


# -- against a fake client ---------------------------------------------------------


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


NOW = 1_800_000_000  # 2027-01-15T08:00:00Z


def feature(**overrides: Any) -> pb.Feature:
    values: dict[str, Any] = {
        "feature_id": "checkout",
        "sequence": 4,
        "stable_version": "1.2.0",
        "canary": pb.CanaryState(
            version="1.3.0",
            soak_started_at=ts(NOW - 1800),
            soak_seconds=7200,
            soak_ends_at=ts(NOW + 5400),
        ),
        "versions": [
            pb.VersionInfo(
                version="1.2.0",
                manifest_sha256="a" * 64,
                published_at=ts(NOW - 86400),
                was_stable=True,
            ),
            pb.VersionInfo(version="1.3.0", manifest_sha256="b" * 64, published_at=ts(NOW - 1800)),
        ],
        "updated_at": ts(NOW - 1800),
        "updated_by": "alice",
    }
    values.update(overrides)
    return pb.Feature(**values)


def transition(action: pb.TransitionAction.ValueType, **overrides: Any) -> pb.Transition:
    values: dict[str, Any] = {
        "id": 9,
        "feature_id": "checkout",
        "sequence": 4,
        "global_sequence": 11,
        "action": action,
        "version": "1.3.0",
        "from_stable": "1.2.0",
        "to_stable": "1.2.0",
        "to_canary": "1.3.0",
        "actor": "alice",
        "at": ts(NOW),
        "request_id": "r-1",
    }
    values.update(overrides)
    return pb.Transition(**values)


@dataclass
class FakeClient:
    """Records each call; answers with `responses[method]`, or raises it if an exception.

    Every call must bind to the real client method's signature, so the fake
    cannot drift from ReleaseControlClient.
    """

    responses: dict[str, Any] = field(default_factory=dict)
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)
    built_with: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def __getattr__(self, name: str) -> Any:
        signature = inspect.signature(getattr(ReleaseControlClient, name))

        def method(*args: Any, **kwargs: Any) -> Any:
            signature.bind(self, *args, **kwargs)
            self.calls.append((name, args, kwargs))
            answer = self.responses[name]
            if isinstance(answer, Exception):
                raise answer
            return answer

        return method


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClient]:
    client = FakeClient()

    def build(cls: type, **kwargs: Any) -> FakeClient:
        client.built_with = kwargs
        return client

    monkeypatch.setattr(ReleaseControlClient, "from_environment", classmethod(build))
    yield client


class TestGlobalOptions:
    def test_server_and_home_reach_the_client(self, fake: FakeClient, isolated: Path) -> None:
        """--server and --home are what the client is built from."""
        fake.responses["get_status"] = pb.GetStatusResponse()
        result = run("--server", "rc:443", "--home", "st", "release", "status")
        assert result.exit_code == 0, result.output
        assert fake.built_with == {"server": "rc:443", "home": Path("st")}
        assert fake.closed

    def test_environment_supplies_server_and_home(
        self, fake: FakeClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """RELEASECONTROL_ADDR and RELEASECONTROL_HOME stand in for the flags."""
        monkeypatch.setenv("RELEASECONTROL_ADDR", "env:1")
        monkeypatch.setenv("RELEASECONTROL_HOME", "/tmp/rc-home")
        fake.responses["get_status"] = pb.GetStatusResponse()
        assert run("release", "status").exit_code == 0
        assert fake.built_with == {"server": "env:1", "home": Path("/tmp/rc-home")}


SERVER_ERRORS = [
    pytest.param(errors.InvalidArgument("reason is too long", field="reason"), 2, id="invalid"),
    pytest.param(errors.NotFound("feature 'x' does not exist"), 3, id="not-found"),
    pytest.param(errors.StaleSequence("expected 3, the feature is at 4"), 4, id="stale"),
    pytest.param(errors.AlreadyExists("1.3.0 was published with another manifest"), 4, id="exists"),
    pytest.param(errors.FailedPrecondition("no canary is running"), 5, id="refused"),
    pytest.param(errors.SoakNotOver("still soaking:\n29m left", seconds_left=1740), 5, id="soak"),
    pytest.param(errors.Unauthenticated("no client certificate"), 6, id="unauthenticated"),
    pytest.param(errors.PermissionDenied("alice is a viewer"), 6, id="permission"),
    pytest.param(errors.Unavailable("cannot reach the server at h:1"), 7, id="unavailable"),
    pytest.param(errors.OriginPending("committed as sequence 5; the origin"), 8, id="pending"),
    pytest.param(errors.Internal("the server failed"), 1, id="internal"),
    pytest.param(errors.ConfigError("RELEASECONTROL_TLS_CA is unreadable"), 1, id="config"),
    pytest.param(errors.VerificationError("bad signature"), 1, id="verification"),
]


class TestServerErrors:
    @pytest.mark.parametrize(("error", "code"), SERVER_ERRORS)
    def test_a_refusal_is_one_line_on_stderr_with_the_exit_code_of_its_class(
        self, fake: FakeClient, error: errors.ReleaseControlError, code: int
    ) -> None:
        """Any ReleaseControlError becomes `error: <message>` on one line, no traceback, and
        exits with its class's code, so scripts can branch (issue 13, item 19: all were 1)."""
        fake.responses["promote"] = error
        result = run("release", "promote", "--feature", "checkout", "--version", "1.3.0")
        assert_one_line_error(result, " ".join(error.message.split()), code=code)

    def test_every_exit_code_is_listed_in_the_help(self, no_network: None) -> None:
        """`releasectl --help` ends with the exit codes, one a line, each with its meaning."""
        from releasectl._common import EXIT_CODE_MEANINGS

        result = run("--help")
        assert result.exit_code == 0
        listed = result.stdout.split("Exit codes:")[1]
        for code, meaning in EXIT_CODE_MEANINGS.items():
            assert f"{int(code)}  {meaning}" in listed

    def test_a_soak_refusal_names_this_cli_s_options(self, fake: FakeClient) -> None:
        """The server speaks of skipping the soak with a reason; the CLI says which options
        do that (the admin form, meeting the same refusal, names its own controls)."""
        fake.responses["promote"] = errors.SoakNotOver(
            "canary 1.3.0 is still soaking: 29m left; wait, or skip the rest of the soak, "
            "giving a reason",
            seconds_left=1740,
        )
        result = run("release", "promote", "--feature", "checkout", "--version", "1.3.0")
        assert_one_line_error(
            result, "29m left", '(releasectl: --skip-soak --reason "why it cannot wait")', code=5
        )

    def test_text_from_the_server_is_escaped(self, fake: FakeClient) -> None:
        """Control characters and bidirectional overrides in an error are shown escaped."""
        fake.responses["promote"] = errors.FailedPrecondition("actor \x1b[2Jbob\u202egnp.exe")
        result = run("release", "promote", "--feature", "checkout", "--version", "1.3.0")
        assert_one_line_error(result, "actor \\x1b[2Jbob\\u202egnp.exe", code=5)


class TestStatus:
    def test_table_shows_channels_soak_left_and_who(self, fake: FakeClient) -> None:
        """The table has one row per feature; soak left counts from the server's clock."""
        fake.responses["get_status"] = pb.GetStatusResponse(
            features=[
                feature(),
                feature(feature_id="search", canary=None, sequence=1, updated_by=""),
            ],
            server_time=ts(NOW),
        )
        result = run("release", "status")
        assert result.exit_code == 0, result.output
        header, first, second = result.stdout.splitlines()
        assert header.split() == [
            "FEATURE",
            "STABLE",
            "CANARY",
            "SOAK",
            "LEFT",
            "SEQ",
            "UPDATED",
            "BY",
        ]
        assert first.split() == [
            "checkout",
            "1.2.0",
            "1.3.0",
            "1h",
            "30m",
            "4",
            "2027-01-15T07:30:00Z",
            "alice",
        ]
        assert second.split() == ["search", "1.2.0", "-", "-", "1", "2027-01-15T07:30:00Z", "-"]
        assert fake.calls == [("get_status", ((),), {})]

    def test_feature_filter_is_sent(self, fake: FakeClient) -> None:
        """Each --feature is passed on to GetStatus."""
        fake.responses["get_status"] = pb.GetStatusResponse()
        run("release", "status", "--feature", "checkout", "--feature", "search")
        assert fake.calls == [("get_status", (("checkout", "search"),), {})]

    def test_no_features_says_how_to_publish(self, fake: FakeClient) -> None:
        """An empty control plane says how to publish the first feature."""
        fake.responses["get_status"] = pb.GetStatusResponse()
        result = run("release", "status")
        assert "releasectl publish --feature" in result.stdout

    def test_json_is_a_list_with_rfc3339_times(self, fake: FakeClient) -> None:
        """--output json lists features with channels, soak left, versions and RFC 3339 times."""
        fake.responses["get_status"] = pb.GetStatusResponse(
            features=[feature(), feature(feature_id="search", canary=None, stable_version="")],
            server_time=ts(NOW),
        )
        result = run("release", "status", "--output", "json")
        assert result.exit_code == 0, result.output
        checkout, search = json.loads(result.stdout)
        assert checkout == {
            "feature_id": "checkout",
            "sequence": 4,
            "stable": "1.2.0",
            "canary": {
                "version": "1.3.0",
                "soak_started_at": "2027-01-15T07:30:00Z",
                "soak_ends_at": "2027-01-15T09:30:00Z",
                "soak_seconds_left": 5400,
                "weight_percent": 0.0,
                "steps_percent": [],
                "step_seconds": None,
                "next_step_at": None,
                "min_loads": 0,
            },
            "versions": [
                {
                    "version": "1.2.0",
                    "manifest_sha256": "a" * 64,
                    "published_at": "2027-01-14T08:00:00Z",
                    "was_stable": True,
                },
                {
                    "version": "1.3.0",
                    "manifest_sha256": "b" * 64,
                    "published_at": "2027-01-15T07:30:00Z",
                    "was_stable": False,
                },
            ],
            "updated_at": "2027-01-15T07:30:00Z",
            "updated_by": "alice",
            "updated_by_principal": None,
        }
        assert search["canary"] is None and search["stable"] is None

    def test_who_really_changed_it_is_shown_beside_the_actor(self, fake: FakeClient) -> None:
        """As in history: "alice (by ci-bot)" when the caller gave another --actor (issue 13,
        item 7); the same principal is not repeated; JSON carries both."""
        fake.responses["get_status"] = pb.GetStatusResponse(
            features=[
                feature(updated_by="alice", updated_by_principal="spiffe://x/ci-bot"),
                feature(feature_id="search", updated_by="bob", updated_by_principal="bob"),
            ],
            server_time=ts(NOW),
        )
        table = run("release", "status")
        first, second = table.stdout.splitlines()[1:]
        assert first.endswith("alice (by spiffe://x/ci-bot)") and second.endswith("  bob")
        data = json.loads(run("release", "status", "-o", "json").stdout)
        assert (data[0]["updated_by"], data[0]["updated_by_principal"]) == (
            "alice",
            "spiffe://x/ci-bot",
        )

    def test_a_soak_that_is_over_shows_zero(self, fake: FakeClient) -> None:
        """Once the server's clock passes soak_ends_at the soak left is 0s."""
        fake.responses["get_status"] = pb.GetStatusResponse(
            features=[feature()], server_time=ts(NOW + 10_000)
        )
        row = run("release", "status").stdout.splitlines()[1]
        assert row.split()[3] == "0s"


CONTEXT_FLAGS = [
    "--actor",
    "bob",
    "--reason",
    "why",
    "--ticket",
    "CHG-1",
    "--expected-sequence",
    "3",
    "--request-id",
    "req-9",
]
CONTEXT_KWARGS = {
    "actor": "bob",
    "reason": "why",
    "ticket": "CHG-1",
    "expected_sequence": 3,
    "request_id": "req-9",
}
NO_CONTEXT = {
    "actor": "",
    "reason": "",
    "ticket": "",
    "expected_sequence": None,
    "request_id": "",
}

CHANGES = [
    pytest.param(
        ["release", "canary", "--feature", "checkout", "--version", "1.3.0", "--soak", "30m"],
        "deploy_canary",
        ("checkout", "1.3.0"),
        {"soak_seconds": 1800, "weight": 0, "steps": (), "step_seconds": 0, "min_loads": 0},
        pb.DeployCanaryResponse(
            feature=feature(),
            transition=transition(pb.TRANSITION_ACTION_DEPLOY_CANARY, detail="soak 30m"),
        ),
        "checkout: canary 1.3.0 deployed, soak 30m (sequence 4)",
        id="canary",
    ),
    pytest.param(
        ["release", "canary", "--feature", "checkout", "--version", "1.3.0", "--percent", "2.5"],
        "deploy_canary",
        ("checkout", "1.3.0"),
        {"soak_seconds": None, "weight": 250, "steps": (), "step_seconds": 0, "min_loads": 0},
        pb.DeployCanaryResponse(
            feature=feature(),
            transition=transition(
                pb.TRANSITION_ACTION_DEPLOY_CANARY, detail="soak 30m; 2.5% of users"
            ),
        ),
        "checkout: canary 1.3.0 deployed, soak 30m; 2.5% of users (sequence 4)",
        id="canary-percent",
    ),
    pytest.param(
        [
            "release",
            "canary",
            "--feature",
            "checkout",
            "--version",
            "1.3.0",
            "--steps",
            "5,25,50,100",
            "--step-soak",
            "10m",
        ],
        "deploy_canary",
        ("checkout", "1.3.0"),
        {
            "soak_seconds": None,
            "weight": 0,
            "steps": (500, 2500, 5000, 10000),
            "step_seconds": 600,
            "min_loads": 0,
        },
        pb.DeployCanaryResponse(
            feature=feature(),
            transition=transition(
                pb.TRANSITION_ACTION_DEPLOY_CANARY,
                detail="soak 40m; 5% of users, step 1 of 4 of 5,25,50,100 % (each 10m)",
            ),
        ),
        "checkout: canary 1.3.0 deployed, soak 40m; 5% of users, step 1 of 4 of 5,25,50,100 % "
        "(each 10m) (sequence 4)",
        id="canary-steps",
    ),
    pytest.param(
        ["release", "set-weight", "--feature", "checkout", "--percent", "25"],
        "set_canary_weight",
        ("checkout", 2500),
        {},
        pb.SetCanaryWeightResponse(
            feature=feature(),
            transition=transition(
                pb.TRANSITION_ACTION_SET_WEIGHT, detail="canary 1.3.0 weight 5% -> 25%"
            ),
        ),
        "checkout: canary 1.3.0 weight 5% -> 25% (sequence 4)",
        id="set-weight",
    ),
    pytest.param(
        ["release", "promote", "--feature", "checkout", "--version", "1.3.0"],
        "promote",
        ("checkout", "1.3.0"),
        {"skip_soak": False},
        pb.PromoteResponse(
            feature=feature(stable_version="1.3.0", canary=None),
            transition=transition(
                pb.TRANSITION_ACTION_PROMOTE,
                sequence=5,
                to_stable="1.3.0",
                to_canary="",
                from_canary="1.3.0",
                detail="canary 1.3.0 promoted after 30m soak",
            ),
        ),
        "checkout: 1.3.0 promoted to stable (was 1.2.0), canary 1.3.0 promoted after 30m soak "
        "(sequence 5)",
        id="promote",
    ),
    pytest.param(
        ["release", "rollback", "--feature", "checkout", "--version", "1.1.0"],
        "rollback",
        ("checkout", "1.1.0"),
        {},
        pb.RollbackResponse(
            feature=feature(stable_version="1.1.0", canary=None),
            transition=transition(
                pb.TRANSITION_ACTION_ROLLBACK,
                sequence=6,
                version="1.1.0",
                to_stable="1.1.0",
                to_canary="",
                from_canary="1.3.0",
                detail="rolled back from 1.2.0; cleared canary 1.3.0",
            ),
        ),
        "checkout: stable is now 1.1.0, rolled back from 1.2.0; cleared canary 1.3.0 (sequence 6)",
        id="rollback",
    ),
    pytest.param(
        ["channel", "fallback", "--feature", "checkout", "--version", "1.1.0", "--to", "stable"],
        "set_channel",
        ("checkout", "1.1.0", "stable"),
        {},
        pb.SetChannelResponse(
            feature=feature(stable_version="1.1.0"),
            transition=transition(
                pb.TRANSITION_ACTION_SET_CHANNEL,
                sequence=7,
                version="1.1.0",
                to_stable="1.1.0",
                from_canary="1.3.0",
            ),
        ),
        "checkout: stable set to 1.1.0 (was 1.2.0) (sequence 7)",
        id="fallback-stable",
    ),
    pytest.param(
        ["channel", "fallback", "--feature", "checkout", "--version", "1.1.0", "--to", "canary"],
        "set_channel",
        ("checkout", "1.1.0", "canary"),
        {},
        pb.SetChannelResponse(
            feature=feature(),
            transition=transition(
                pb.TRANSITION_ACTION_SET_CHANNEL,
                sequence=8,
                version="1.1.0",
                from_canary="1.3.0",
                to_canary="1.1.0",
                detail="canary set to 1.1.0 by operator fallback, soak 30m",
            ),
        ),
        "checkout: canary set to 1.1.0 by operator fallback, soak 30m (sequence 8)",
        id="fallback-canary",
    ),
]


class TestChanges:
    @pytest.mark.parametrize(("args", "method", "call_args", "extra", "response", "line"), CHANGES)
    def test_a_change_prints_one_line_summarising_it(
        self,
        fake: FakeClient,
        args: list[str],
        method: str,
        call_args: tuple[Any, ...],
        extra: dict[str, Any],
        response: Any,
        line: str,
    ) -> None:
        """Each change command calls its RPC with the flags given and prints one line."""
        fake.responses[method] = response
        result = run(*args)
        assert result.exit_code == 0, result.output
        assert result.stdout == line + "\n"
        assert fake.calls == [(method, call_args, {**extra, **NO_CONTEXT})]

    @pytest.mark.parametrize(("args", "method", "call_args", "extra", "response", "line"), CHANGES)
    def test_context_flags_are_passed_through(
        self,
        fake: FakeClient,
        args: list[str],
        method: str,
        call_args: tuple[Any, ...],
        extra: dict[str, Any],
        response: Any,
        line: str,
    ) -> None:
        """--actor, --reason, --ticket, --expected-sequence and --request-id reach the client."""
        fake.responses[method] = response
        result = run(*args, *CONTEXT_FLAGS)
        assert result.exit_code == 0, result.output
        assert fake.calls == [(method, call_args, {**extra, **CONTEXT_KWARGS})]

    def test_skip_soak_with_a_reason_is_sent(self, fake: FakeClient) -> None:
        """--skip-soak with --reason asks the server to skip the soak."""
        fake.responses["promote"] = pb.PromoteResponse(
            feature=feature(), transition=transition(pb.TRANSITION_ACTION_PROMOTE)
        )
        result = run(
            "release",
            "promote",
            "--feature",
            "checkout",
            "--version",
            "1.3.0",
            "--skip-soak",
            "--reason",
            "hotfix",
        )
        assert result.exit_code == 0, result.output
        assert fake.calls[0][2]["skip_soak"] is True

    @pytest.mark.parametrize(
        ("args", "fragment"),
        [
            pytest.param(["--percent", "101"], "--percent '101' is above 100 %", id="above-100"),
            pytest.param(["--percent", "-5"], "is not a percentage", id="negative"),
            pytest.param(["--percent", "1.234"], "at most two decimals", id="three-decimals"),
            pytest.param(
                ["--steps", "25,5", "--step-soak", "10m"],
                "--steps 25,5 % do not increase (5% after 25%)",
                id="decreasing-steps",
            ),
            pytest.param(
                ["--steps", "5,5,100", "--step-soak", "10m"], "do not increase", id="repeated-step"
            ),
            pytest.param(["--steps", "5,25"], "--steps and --step-soak go together", id="no-soak"),
            pytest.param(
                ["--steps", "5,25", "--step-soak", "1m", "--percent", "5"],
                "leave out --soak and --percent",
                id="steps-and-percent",
            ),
        ],
    )
    def test_bad_weights_are_refused_before_calling(
        self, fake: FakeClient, args: list[str], fragment: str
    ) -> None:
        """A bad --percent or --steps is a usage error naming the option; no RPC is made."""
        result = run("release", "canary", "--feature", "checkout", "--version", "1.3.0", *args)
        assert result.exit_code == 2, result.output
        assert fragment in " ".join(result.output.split())
        assert fake.calls == []

    def test_json_output_is_the_transition(self, fake: FakeClient) -> None:
        """--output json prints the transition with its action, channels and RFC 3339 time."""
        fake.responses["deploy_canary"] = pb.DeployCanaryResponse(
            feature=feature(),
            transition=transition(pb.TRANSITION_ACTION_DEPLOY_CANARY, detail="soak 30m"),
        )
        result = run(
            "release", "canary", "--feature", "checkout", "--version", "1.3.0", "-o", "json"
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout) == {
            "id": 9,
            "feature_id": "checkout",
            "sequence": 4,
            "global_sequence": 11,
            "action": "deploy_canary",
            "version": "1.3.0",
            "from_stable": "1.2.0",
            "to_stable": "1.2.0",
            "from_canary": None,
            "to_canary": "1.3.0",
            "actor": "alice",
            "principal": None,
            "reason": "",
            "ticket": "",
            "at": "2027-01-15T08:00:00Z",
            "detail": "soak 30m",
            "request_id": "r-1",
        }


class TestPublish:
    def published(self, channel: str = "stable") -> pb.PublishVersionResponse:
        canary = channel == "canary"
        return pb.PublishVersionResponse(
            feature=feature(sequence=3),
            transition=transition(
                pb.TRANSITION_ACTION_PUBLISH,
                sequence=3,
                version="1.2.0" if not canary else "1.3.0",
                to_stable="1.2.0",
                to_canary="1.3.0" if canary else "",
            ),
            manifest_sha256="c" * 64,
        )

    def test_publish_sends_the_filled_in_folder_and_says_what_was_published(
        self, fake: FakeClient, isolated: Path
    ) -> None:
        """publish loads ./features/F with sizes and hashes filled in and prints one line."""
        write_feature(isolated)
        fake.responses["publish"] = self.published()
        result = run("publish", "--feature", "checkout")
        assert result.exit_code == 0, result.output
        assert result.stdout == "published checkout 1.2.0 as stable (sequence 3)\n"
        assert result.stderr == ""  # no progress bar when stderr is not a terminal
        (name, (source,), kwargs) = fake.calls[0]
        assert name == "publish" and isinstance(source, SourceFeature)
        assert source.folder == Path("features/checkout")
        assert all(len(a["sha256"]) == 64 and a["size"] > 0 for a in source.manifest["assets"])
        assert kwargs == {"channel": "stable", "soak_seconds": None, **NO_CONTEXT}

    def test_publish_to_canary_with_soak_and_dir(self, fake: FakeClient, isolated: Path) -> None:
        """--dir, --channel canary and --soak reach the client; the line names the soak."""
        folder = write_feature(isolated / "elsewhere")
        fake.responses["publish"] = self.published("canary")
        result = run(
            "publish",
            "--feature",
            "checkout",
            "--dir",
            str(folder),
            "--channel",
            "canary",
            "--soak",
            "2h",
            *CONTEXT_FLAGS,
        )
        assert result.exit_code == 0, result.output
        assert result.stdout == "published checkout 1.3.0 as canary, soak 2h (sequence 3)\n"
        (_, (source,), kwargs) = fake.calls[0]
        assert source.folder == folder
        assert kwargs == {"channel": "canary", "soak_seconds": 7200, **CONTEXT_KWARGS}

    def test_already_published_says_nothing_changed(self, fake: FakeClient, isolated: Path) -> None:
        """Republishing the same manifest says it was already published and nothing changed."""
        write_feature(isolated)
        fake.responses["publish"] = pb.PublishVersionResponse(
            feature=feature(sequence=3), already_published=True, manifest_sha256="c" * 64
        )
        result = run("publish", "--feature", "checkout")
        assert result.exit_code == 0, result.output
        assert result.stdout == (
            "already published checkout 1.2.0, nothing to do (manifest sha256 cccccccccccc…, "
            "sequence 3); it is the stable version\n"
        )

    @pytest.mark.parametrize(
        ("channel", "stable", "canary", "says"),
        [
            pytest.param(
                "canary",
                "1.2.0",
                "",
                "it stays the stable version, not canary: a canary must be another version",
                id="canary-asked-but-stable",
            ),
            pytest.param(
                "canary",
                "1.1.0",
                "",
                "it is in no channel (stable is 1.1.0): deploy it with "
                "`releasectl release canary --feature checkout --version 1.2.0`",
                id="canary-asked-in-no-channel",
            ),
            pytest.param(
                "stable",
                "1.1.0",
                "1.2.0",
                "it stays the canary version, not stable: promote it with "
                "`releasectl release promote --feature checkout --version 1.2.0`",
                id="stable-asked-but-canary",
            ),
            pytest.param(
                "stable",
                "1.1.0",
                "",
                "it is in no channel (stable is 1.1.0): point stable at it with "
                "`releasectl channel fallback --feature checkout --version 1.2.0 --to stable`",
                id="stable-asked-in-no-channel",
            ),
        ],
    )
    def test_already_published_says_what_the_channel_flag_did_not_do(
        self, fake: FakeClient, isolated: Path, channel: str, stable: str, canary: str, says: str
    ) -> None:
        """A publish of an unchanged version elsewhere than --channel asked is not silent
        (issue 13, item 14): it says nothing was done, where the version is, and the command
        that moves it."""
        write_feature(isolated)
        fake.responses["publish"] = pb.PublishVersionResponse(
            feature=feature(
                sequence=3,
                stable_version=stable,
                canary=pb.CanaryState(version=canary) if canary else None,
            ),
            already_published=True,
            manifest_sha256="c" * 64,
        )
        result = run("publish", "--feature", "checkout", "--channel", channel)
        assert result.exit_code == 0, result.output
        assert "already published checkout 1.2.0, nothing to do" in result.stdout
        assert result.stdout.rstrip().endswith(says), result.stdout

    def test_json_output_has_the_outcome_and_the_feature(
        self, fake: FakeClient, isolated: Path
    ) -> None:
        """--output json prints the version, whether it was new, its transition and the feature."""
        write_feature(isolated)
        fake.responses["publish"] = self.published()
        result = run("publish", "--feature", "checkout", "--output", "json")
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert (data["feature_id"], data["version"], data["already_published"]) == (
            "checkout",
            "1.2.0",
            False,
        )
        assert data["manifest_sha256"] == "c" * 64
        assert data["transition"]["action"] == "publish"
        assert data["feature"]["feature_id"] == "checkout"


class TestDev:
    def test_dev_runs_the_server_in_dev_mode_with_home_and_extra_args(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`releasectl --home H dev ARGS` runs server main(["--dev", "--home", H, *ARGS])."""
        seen: list[list[str]] = []

        def server_main(argv: list[str]) -> int:
            seen.append(argv)
            return 3

        module = types.ModuleType("releasecontrol_server.main")
        module.main = server_main  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "releasecontrol_server.main", module)
        result = run("--home", "state", "dev", "--config", "rc.toml")
        assert result.exit_code == 3
        assert seen == [["--dev", "--home", "state", "--config", "rc.toml"]]

    def test_dev_without_home_passes_only_dev(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --home the server picks its own state directory."""
        seen: list[list[str]] = []
        module = types.ModuleType("releasecontrol_server.main")
        module.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "releasecontrol_server.main", module)
        assert run("dev").exit_code == 0
        assert seen == [["--dev"]]


# -- text from elsewhere is escaped (issue 13, item 4: the CLI half) -----------------------

ODD = "\x1b[2J\u202eevil\u200b\r\nnext\x00"
ODD_SHOWN = "\\x1b[2J\\u202eevil\\u200b\\x0d\\x0anext\\x00"


class TestEscaping:
    def test_history_escapes_actor_reason_and_ticket(self, fake: FakeClient) -> None:
        """Control characters, bidirectional overrides and zero-width characters in who and
        why are shown as escapes: they can neither clear the screen nor reorder the row."""
        fake.responses["list_transitions"] = pb.ListTransitionsResponse(
            transitions=[
                transition(
                    pb.TRANSITION_ACTION_PROMOTE,
                    actor="bob" + ODD,
                    principal="spiffe://x/ci\u2066",
                    reason="why" + ODD,
                    ticket="INC\u202e1",
                )
            ]
        )
        result = run("release", "history")
        assert result.exit_code == 0, result.output
        _, row = result.stdout.splitlines()
        assert f"bob{ODD_SHOWN} (by spiffe://x/ci\\u2066)" in row
        assert f"why{ODD_SHOWN} [INC\\u202e1]" in row
        assert all(ch.isprintable() for ch in result.stdout.replace("\n", ""))

    def test_status_escapes_who_changed_it_last(self, fake: FakeClient) -> None:
        fake.responses["get_status"] = pb.GetStatusResponse(
            features=[feature(updated_by="alice" + ODD)], server_time=ts(NOW)
        )
        result = run("release", "status")
        assert result.exit_code == 0, result.output
        assert result.stdout.splitlines()[1].endswith("alice" + ODD_SHOWN)

    def test_json_keeps_the_text_exact(self, fake: FakeClient) -> None:
        """--output json is for programs: the value is exact (JSON escapes it already)."""
        fake.responses["list_transitions"] = pb.ListTransitionsResponse(
            transitions=[transition(pb.TRANSITION_ACTION_PROMOTE, actor="bob" + ODD)]
        )
        result = run("release", "history", "--output", "json")
        assert json.loads(result.stdout)[0]["actor"] == "bob" + ODD
        assert "\x1b" not in result.stdout

    def test_other_scripts_are_kept(self) -> None:
        from releasectl._common import printable

        assert printable("Zoë 張 Ωmega — café") == "Zoë 張 Ωmega — café"


# -- history of an unknown feature (item 16) --------------------------------------------


class TestHistoryOfAnUnknownFeature:
    def test_an_unknown_feature_is_not_found_not_an_empty_table(self, fake: FakeClient) -> None:
        """The server answers NOT_FOUND for an unknown feature's history: one line, exit 3."""
        fake.responses["list_transitions"] = errors.NotFound("feature 'nope' does not exist")
        result = run("release", "history", "--feature", "nope")
        assert_one_line_error(result, "feature 'nope' does not exist", code=3)
        assert [name for name, _, _ in fake.calls] == ["list_transitions"]


# -- release status --watch and completion (item 20) --------------------------------------


def watch_event(kind: pb.WatchEventType.ValueType, **fields: Any) -> pb.WatchReleasesResponse:
    return pb.WatchReleasesResponse(type=kind, **fields)


class FakeStream:
    """A WatchStream's surface: iterate the events, cancel."""

    def __init__(self, events: list[pb.WatchReleasesResponse]) -> None:
        self.events = iter(events)
        self.cancelled = False

    def __iter__(self) -> FakeStream:
        return self

    def __next__(self) -> pb.WatchReleasesResponse:
        return next(self.events)

    def cancel(self) -> None:
        self.cancelled = True


class TestWatch:
    def events(self) -> list[Any]:
        promoted = feature(stable_version="1.3.0", canary=None, sequence=5)
        return [
            watch_event(pb.WATCH_EVENT_TYPE_SNAPSHOT, feature=feature(), global_sequence=4),
            watch_event(
                pb.WATCH_EVENT_TYPE_SNAPSHOT,
                feature=feature(feature_id="search", canary=None, sequence=1),
                global_sequence=4,
            ),
            watch_event(pb.WATCH_EVENT_TYPE_SYNCED, global_sequence=4),
            watch_event(
                pb.WATCH_EVENT_TYPE_CHANGE,
                feature=promoted,
                transition=transition(
                    pb.TRANSITION_ACTION_PROMOTE,
                    sequence=5,
                    to_stable="1.3.0",
                    to_canary="",
                    from_canary="1.3.0",
                ),
                global_sequence=5,
            ),
        ]

    def test_the_table_is_drawn_at_synced_and_again_after_each_change(
        self, fake: FakeClient
    ) -> None:
        """Into a pipe: the table, then the change's line and the table again; the feed's end
        is reported as unavailable (exit 7)."""
        stream = FakeStream(self.events())
        fake.responses["watch"] = stream
        result = run("release", "status", "--watch", "--feature", "checkout")
        assert stream.cancelled
        assert fake.calls[0] == ("watch", (("checkout",),), {})
        first, second, _ = result.stdout.split("\n\n")
        assert [line.split()[:3] for line in first.splitlines()[1:]] == [
            ["checkout", "1.2.0", "1.3.0"],
            ["search", "1.2.0", "-"],
        ]
        change, header, *rows = second.splitlines()
        assert change.endswith("checkout: 1.3.0 promoted to stable (was 1.2.0) (sequence 5)")
        assert header.split()[0] == "FEATURE"
        assert rows[0].split()[:3] == ["checkout", "1.3.0", "-"]
        assert_one_line_error_in(result, "the server ended the watch feed", code=7)

    def test_json_is_one_object_a_line(self, fake: FakeClient) -> None:
        fake.responses["watch"] = FakeStream(self.events())
        result = run("release", "status", "--watch", "--output", "json")
        first, second = (json.loads(line) for line in result.stdout.splitlines())
        assert (first["global_sequence"], first["change"]) == (4, None)
        assert [f["feature_id"] for f in first["features"]] == ["checkout", "search"]
        assert second["global_sequence"] == 5 and second["change"]["action"] == "promote"
        assert second["features"][0]["stable"] == "1.3.0"

    def test_a_watcher_that_fell_behind_watches_anew(self, fake: FakeClient) -> None:
        """RESYNC_REQUIRED: a note, then a new watch that reads every state again."""
        feeds = iter(
            [
                FakeStream([watch_event(pb.WATCH_EVENT_TYPE_RESYNC_REQUIRED, message="32 behind")]),
                FakeStream(self.events()[:3]),
            ]
        )

        def watch(feature_ids: Any = ()) -> Any:
            fake.calls.append(("watch", (feature_ids,), {}))
            return next(feeds)

        fake.__dict__["watch"] = watch  # a new stream each call
        result = run("release", "status", "--watch")
        assert [c[0] for c in fake.calls] == ["watch", "watch"]
        assert "note: the watch fell behind (32 behind); reading every state again" in (
            result.stderr
        )
        assert result.stdout.splitlines()[1].split()[0] == "checkout"

    def test_watch_is_for_the_control_plane_only(self, no_network: None) -> None:
        result = run("release", "status", "--watch", "--index-url", "http://x/remote-index.json")
        assert result.exit_code == 2 and "--watch follows the control plane" in result.stderr


def assert_one_line_error_in(result: Result, fragment: str, code: int) -> None:
    """Exit `code` with one `error:` line, the last on stderr (stdout, and stderr before it,
    may hold output and progress)."""
    assert result.exit_code == code, result.output
    *before, line = result.stderr.splitlines()
    assert line.startswith("error: ") and fragment in line, line
    assert not any(earlier.startswith("error: ") for earlier in before), result.stderr


class TestCompletion:
    @pytest.mark.parametrize(
        ("shell", "marker"),
        [
            pytest.param("bash", "complete -o nosort -F _releasectl_completion releasectl"),
            pytest.param("zsh", "compdef _releasectl_completion releasectl"),
            pytest.param("fish", "complete --no-files --command releasectl"),
        ],
    )
    def test_the_script_is_click_s_for_that_shell(
        self, shell: str, marker: str, no_network: None
    ) -> None:
        result = run("completion", shell)
        assert result.exit_code == 0, result.output
        assert marker in result.stdout and "_RELEASECTL_COMPLETE" in result.stdout

    def test_the_script_s_question_is_answered(
        self, monkeypatch: pytest.MonkeyPatch, no_network: None
    ) -> None:
        """What the bash script asks (`releasectl rel<TAB>`, `release pro<TAB>`) completes."""
        monkeypatch.setenv("_RELEASECTL_COMPLETE", "bash_complete")
        monkeypatch.setenv("COMP_WORDS", "releasectl rel")
        monkeypatch.setenv("COMP_CWORD", "1")
        result = CliRunner().invoke(main, [], prog_name="releasectl")
        assert result.stdout.splitlines() == ["plain,release"]
        monkeypatch.setenv("COMP_WORDS", "releasectl release pro")
        monkeypatch.setenv("COMP_CWORD", "2")
        result = CliRunner().invoke(main, [], prog_name="releasectl")
        assert result.stdout.splitlines() == ["plain,promote"]

    def test_an_unknown_shell_is_a_usage_error(self, no_network: None) -> None:
        result = run("completion", "tcsh")
        assert result.exit_code == 2 and "'tcsh' is not one of" in result.stderr


# -- wording (item 18, the CLI's part) ------------------------------------------------------


class TestWording:
    @pytest.mark.parametrize(
        ("count", "text"),
        [(0, "0 artifacts"), (1, "1 artifact"), (2, "2 artifacts")],
    )
    def test_counts_agree_with_their_noun(self, count: int, text: str) -> None:
        from releasectl._common import plural

        assert plural(count, "artifact") == text

    def test_one_missing_artifact_is_singular(self, fake: FakeClient) -> None:
        """`origin rebuild` with one lost artifact: "1 artifact is", no "…" after the one."""
        fake.responses["rebuild_origin"] = iter(
            [
                pb.RebuildOriginResponse(
                    files_done=3, files_written=1, bytes_written=1, missing_artifacts=["ab" * 32]
                )
            ]
        )
        result = run("origin", "rebuild")
        assert result.stdout.startswith("origin rebuilt: 3 files checked, 1 written (1 byte)")
        assert_one_line_error_in(
            result,
            f"1 artifact is neither in the artifact store nor on the origin ({'ab' * 32})",
            1,
        )
        assert "publish that version again" in result.stderr
