"""Rotating the online key on a running server, as an operator does, without touching hosts.

`releasectl keys rotate` (development: the root key is in the keys folder) signs
root 2 and puts a new signing key in place; the running server notices, signs
every index again, and a host that only ever pinned root 1's keys follows the
chain and keeps loading. The production path proposes the root, signs it
offline with `keys sign-root`, and installs it with `keys install-root`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import RunningServer, make_feature, releasectl

from releasecontrol.host import FeatureHost
from releasecontrol.index import REMOTE_INDEX_PATH, Envelope
from releasecontrol.trust import SigningKey, TrustStore


def top_level(server: RunningServer) -> dict[str, object]:
    data = (server.origin_dir / REMOTE_INDEX_PATH).read_bytes()
    body: dict[str, object] = dict(Envelope.from_bytes(data).signed)
    return body


def wait_for_root(server: RunningServer, version: int, timeout: float = 20.0) -> None:
    """Until the origin's remote-index.json is signed under root `version`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if top_level(server).get("root_version") == version:
            return
        time.sleep(0.1)
    raise AssertionError(f"the server did not sign under root {version}:\n{server.log()[-2000:]}")


def host_of(server: RunningServer, trust: TrustStore, state: Path) -> FeatureHost:
    return FeatureHost(
        server.origin_url + REMOTE_INDEX_PATH, trust, state_dir=state, allow_insecure_dev_keys=True
    )


def test_a_dev_rotation_is_followed_by_a_host_pinning_root_1(
    server: RunningServer, tmp_path: Path
) -> None:
    """keys rotate → the server re-signs under root 2 with the new key → the same host (same
    state) loads on; the old key's signatures are gone from the origin."""
    make_feature(tmp_path)
    published = releasectl(server, tmp_path, "publish", "--feature", "checkout")
    assert published.returncode == 0, published.stderr
    trust = TrustStore.from_file(server.trust_path)  # pinned once, never updated
    host = host_of(server, trust, tmp_path / "host")
    assert host.refresh().loaded == {"checkout": "1.0.0"}
    old_key = SigningKey.load(server.home / "keys" / "signing-key.pem")

    rotated = releasectl(server, tmp_path, "keys", "rotate", "--output", "json")
    assert rotated.returncode == 0, rotated.stderr
    result = json.loads(rotated.stdout)
    assert result["installed"] is True and result["root_version"] == 2
    # A dev setup's new key is a dev key too: its file says so, for production to refuse.
    assert (
        b"releasecontrol insecure development key"
        in (server.home / "keys" / "signing-key.pem").read_bytes()
    )
    wait_for_root(server, 2)

    report = host.refresh()
    assert report.ok, report.refused
    assert (report.root_version, report.loaded) == (2, {"checkout": "1.0.0"})
    new_keyid = result["new_keyid"]
    assert host.features["checkout"].keyids == {new_keyid}
    releases = Envelope.from_bytes(
        (server.origin_dir / "features/checkout/releases.json").read_bytes()
    )
    assert [s.keyid for s in releases.signatures] == [new_keyid] != [old_key.keyid]
    # A change after the rotation is signed with the new key too, and the host follows.
    make_feature(tmp_path, version="1.1.0")
    assert releasectl(server, tmp_path, "publish", "--feature", "checkout").returncode == 0
    assert host.refresh().loaded == {"checkout": "1.1.0"}


def test_the_offline_rotation_installs_only_a_fully_signed_root(
    server: RunningServer, tmp_path: Path
) -> None:
    """Proposed without root keys, the root is refused until signed; once signed, installed,
    and the new key moved in place, the server signs under it."""
    make_feature(tmp_path)
    assert releasectl(server, tmp_path, "publish", "--feature", "checkout").returncode == 0
    keys = server.home / "keys"
    proposal = tmp_path / "root-2.json"
    proposed = releasectl(
        server,
        tmp_path,
        "keys",
        "rotate",
        "--root-dir",
        str(keys / "roots"),
        "--out",
        str(proposal),
    )
    assert proposed.returncode == 0, proposed.stderr
    assert "proposed" in proposed.stdout and proposal.is_file()

    refused = releasectl(server, tmp_path, "keys", "install-root", str(proposal))
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: root 2 is not signed enough")
    assert not (keys / "roots" / "2.json").exists()

    signed = releasectl(
        server,
        tmp_path,
        "keys",
        "sign-root",
        str(proposal),
        "--root-key",
        str(keys / "root-key.pem"),
    )
    assert signed.returncode == 0 and "complete" in signed.stdout, signed.stdout
    installed = releasectl(server, tmp_path, "keys", "install-root", str(proposal))
    assert installed.returncode == 0, installed.stderr
    # The server keeps signing with the old key until it holds the one root 2 lists.
    deadline = time.monotonic() + 20
    while "new keys not used" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "is not an online key of root 2" in server.log()
    assert top_level(server)["root_version"] == 1
    (keys / "signing-key.next.pem").replace(keys / "signing-key.pem")
    wait_for_root(server, 2)
    host = host_of(server, TrustStore.from_file(server.trust_path), tmp_path / "host")
    assert host.refresh().loaded == {"checkout": "1.0.0"}
