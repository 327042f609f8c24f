"""Bad input over the real API is INVALID_ARGUMENT naming the field, and changes nothing
(issue 13, items 1-5).

One server for the module: every request here is refused, so it never changes
(each test checks so); the limits are documented in `releasecontrol/limits.py`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import RunningServer, make_feature, start_server

from releasecontrol import errors
from releasecontrol.client import ReleaseControlClient
from releasecontrol.manifest import load_feature_folder

pytestmark = pytest.mark.integration

LEAKS = ("Traceback", "Exceeds the limit", "maximum recursion", "int_max_str_digits", "Error(")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """checkout 1.0.0 then 1.1.0 published to stable: 1.0.0 is a rollback target, and a
    canary, rollback or fallback to it would be applied if its input were good."""
    root = tmp_path_factory.mktemp("bad-input")
    running = start_server(root / "home")
    client = running.client()
    for version in ("1.0.0", "1.1.0"):
        folder = make_feature(root / version, "checkout", version)
        client.publish(load_feature_folder(folder, feature_id="checkout"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server: RunningServer) -> ReleaseControlClient:
    return server.client(retry_seconds=0)


def state(server: RunningServer, client: ReleaseControlClient) -> tuple[bytes, str]:
    """The whole store as the API shows it and a digest of every file on the origin."""
    status = client.get_status()
    status.ClearField("server_time")
    digest = hashlib.sha256()
    for path in sorted(server.origin_dir.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            digest.update(path.relative_to(server.origin_dir).as_posix().encode() + b"\0")
            digest.update(path.read_bytes())
    return status.SerializeToString(deterministic=True), digest.hexdigest()


def refused(
    server: RunningServer, client: ReleaseControlClient, call: Callable[[], Any], field: str
) -> str:
    """Run `call`, which must be refused with INVALID_ARGUMENT naming `field` in its ErrorInfo
    and in one line of our own, with the store and the origin as they were; its message."""
    before = state(server, client)
    with pytest.raises(errors.InvalidArgument) as caught:
        call()
    error = caught.value
    assert error.field == field, error.message
    assert field.rsplit(".", 1)[-1] in error.message
    assert "\n" not in error.message
    assert len(error.message) < 500, error.message
    assert not any(leak in error.message for leak in LEAKS), error.message
    assert state(server, client) == before
    return error.message


def manifest(version: str = "2.0.0", **extra: Any) -> dict[str, Any]:
    data = b"export default 1;\n"
    return {
        "id": "checkout",
        "version": version,
        "entry": "index.js",
        "routes": ["/checkout"],
        "compat": {"host": "^2.0.0"},
        "assets": [
            {"path": "index.js", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        ],
        **extra,
    }


FILES = {"index.js": b"export default 1;\n"}


def publish_text(client: ReleaseControlClient, text: str, **kwargs: Any) -> Any:
    return client.publish_raw("checkout", text.encode(), FILES, **kwargs)


class TestManifests:
    @pytest.mark.parametrize("sign", ["", "-"])
    def test_a_5000_digit_integer_is_invalid_argument(
        self, server: RunningServer, client: ReleaseControlClient, sign: str
    ) -> None:
        """Item 1: was UNKNOWN with Python's int-conversion text."""
        text = json.dumps(manifest())[:-1] + f', "n": {sign}{"4" * 5000}}}'
        message = refused(server, client, lambda: publish_text(client, text), "manifest")
        assert "number longer than 32 characters" in message

    @pytest.mark.parametrize("kind", ["[", "{"])
    def test_json_nested_100000_deep_is_invalid_argument(
        self, server: RunningServer, client: ReleaseControlClient, kind: str
    ) -> None:
        """Item 1: was UNKNOWN with RecursionError's text."""
        deep = (
            "[" * 100_000 + "]" * 100_000
            if kind == "["
            else '{"a":' * 100_000 + "1" + "}" * 100_000
        )
        text = json.dumps(manifest())[:-1] + f', "deep": {deep}}}'
        message = refused(server, client, lambda: publish_text(client, text), "manifest")
        assert "deep; the limit is 32" in message

    def test_a_duplicate_key_is_refused_naming_it(
        self, server: RunningServer, client: ReleaseControlClient
    ) -> None:
        """Item 2: was accepted (the last value won, silently)."""
        text = json.dumps(manifest())[:-1] + ', "entry": "other.js"}'
        message = refused(server, client, lambda: publish_text(client, text), "manifest")
        assert "the key 'entry' appears twice" in message

    @pytest.mark.parametrize(
        "path",
        [
            "a\x00.js",
            "a\x1b[31m.js",
            "evil\u202esj.js",
            "a\u2066b.js",
            "js\\app.js",
            "C:/app.js",
            "js/../../app.js",
            "/app.js",
            "a" * 1025,
        ],
        ids=[
            "nul",
            "escape",
            "bidi-override",
            "bidi-isolate",
            "backslash",
            "drive",
            "dotdot",
            "absolute",
            "1025-chars",
        ],
    )
    def test_a_bad_asset_path_is_refused_naming_the_asset(
        self, server: RunningServer, client: ReleaseControlClient, path: str
    ) -> None:
        """Item 3: the control, bidi and Windows-path cases were accepted."""
        body = manifest()
        body["assets"].append({"path": path, "size": 1, "sha256": "0" * 64})
        text = json.dumps(body)
        message = refused(
            server, client, lambda: publish_text(client, text), "manifest.assets[1].path"
        )
        assert "relative to the feature folder" in message


CHANGES: dict[str, Callable[..., Any]] = {
    "canary": lambda c, **kw: c.deploy_canary("checkout", "1.0.0", **kw),
    "rollback": lambda c, **kw: c.rollback("checkout", "1.0.0", **kw),
    "fallback": lambda c, **kw: c.set_channel("checkout", "1.0.0", "canary", **kw),
    "publish": lambda c, **kw: c.publish_raw(
        "checkout", json.dumps(manifest()).encode(), FILES, **kw
    ),
}


class TestChangeContext:
    @pytest.mark.parametrize("change", list(CHANGES))
    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("actor", "mallory\x1b[2K\rroot"),
            ("reason", "line one\nline two"),
            ("ticket", "INC-1\u202e7"),
            ("reason", "tab\there"),
        ],
        ids=["actor-escape", "reason-newline", "ticket-bidi", "reason-tab"],
    )
    def test_control_characters_are_refused_naming_the_field(
        self,
        server: RunningServer,
        client: ReleaseControlClient,
        change: str,
        name: str,
        value: str,
    ) -> None:
        """Item 4: each was stored and broke `release history`; a publish is refused at its
        header, before the upload."""
        message = refused(
            server, client, lambda: CHANGES[change](client, **{name: value}), f"context.{name}"
        )
        assert "control or direction character" in message

    @pytest.mark.parametrize(("name", "most"), [("actor", 256), ("reason", 1000), ("ticket", 200)])
    def test_lengths_are_bounded(
        self, server: RunningServer, client: ReleaseControlClient, name: str, most: int
    ) -> None:
        """Item 4: one character over the documented length is refused, naming the limit."""
        message = refused(
            server,
            client,
            lambda: CHANGES["canary"](client, **{name: "x" * (most + 1)}),
            f"context.{name}",
        )
        assert f"at most {most}" in message

    @pytest.mark.parametrize("change", ["canary", "publish"])
    @pytest.mark.parametrize(
        "request_id",
        ["r" * (1 << 20), "r" * 129, "has space", "ünïcode"],
        ids=lambda r: f"{len(r)}-chars",
    )
    def test_a_request_id_is_bounded_and_says_so(
        self, server: RunningServer, client: ReleaseControlClient, change: str, request_id: str
    ) -> None:
        """Item 5: a 1 MiB request_id was accepted (and stored)."""
        message = refused(
            server,
            client,
            lambda: CHANGES[change](client, request_id=request_id),
            "context.request_id",
        )
        assert "1-128 printable ASCII characters" in message


@pytest.mark.parametrize(
    "token",
    [
        base64.urlsafe_b64encode(b"9" * 30).decode(),  # beyond SQLite's INTEGER
        base64.urlsafe_b64encode("²".encode()).decode(),  # str.isdigit, but not int()
        "A" * 10_000,
    ],
    ids=["huge-id", "superscript-digit", "long"],
)
def test_a_foreign_history_page_token_is_invalid_argument(
    server: RunningServer, client: ReleaseControlClient, token: str
) -> None:
    """A page token this server never issued is refused as such, not a crash (UNKNOWN)."""
    refused(server, client, lambda: client.list_transitions(page_token=token), "page_token")


def test_a_good_change_still_goes_through(
    server: RunningServer, client: ReleaseControlClient, tmp_path: Path
) -> None:
    """Ordinary text, a UUID request id and a Unicode asset path are accepted (run last: it
    changes the state the tests above compare)."""
    response = client.publish_raw(
        "checkout",
        json.dumps(
            manifest(
                "3.0.0",
                entry="js/über app.js",
                assets=[
                    {
                        "path": "js/über app.js",
                        "size": len(FILES["index.js"]),
                        "sha256": hashlib.sha256(FILES["index.js"]).hexdigest(),
                    }
                ],
            )
        ).encode(),
        {"js/über app.js": FILES["index.js"]},
        actor="Zoë (release captain)",
        reason="ship 3.0 ✅",
        ticket="INC-42",
        request_id="7d3f1f0a-5a4e-4d0b-9a57-5b8f3f0f2c11",
    )
    assert response.transition.actor == "Zoë (release captain)"
