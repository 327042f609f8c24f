"""The JavaScript host against a real control plane: the same verdicts, the same import map.

`npx releasecontrol-host` (clients/js, built by `make js-test` before pytest runs)
verifies what a running server published, refuses what was tampered with, and
prints the same import map as `releasectl importmap`. The browser bundle that
`releasectl dev-host` serves is the one clients/js builds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import RunningServer, make_feature, releasectl

ROOT = Path(__file__).resolve().parents[2]
JS = ROOT / "clients" / "js"
CLI = JS / "bin" / "releasecontrol-host.js"
BUILT_BUNDLE = JS / "dist" / "releasecontrol-host.min.js"
SHIPPED_BUNDLE = ROOT / "clients" / "releasecontrol" / "static" / "releasecontrol-host.min.js"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")


def js(*args: str) -> subprocess.CompletedProcess[str]:
    if not (JS / "dist" / "index.js").is_file():
        pytest.fail("clients/js is not built: run `make js-test` (make test does it first)")
    return subprocess.run(
        ["node", str(CLI), *args], capture_output=True, text=True, timeout=60, check=False
    )


def publish_two(server: RunningServer, tmp_path: Path) -> None:
    make_feature(
        tmp_path,
        "checkout",
        "1.0.0",
        files={
            "index.js": b"import { a } from './lib/util.js';\nexport default a;\n",
            "lib/util.js": b"export const a = 'checkout';\n",
            "styles/main.css": b"body {}\n",
        },
    )
    make_feature(tmp_path, "search", "2.0.0")
    for feature in ("checkout", "search"):
        done = releasectl(server, tmp_path, "publish", "--feature", feature)
        assert done.returncode == 0, done.stderr


def test_the_js_cli_verifies_what_the_server_published(
    server: RunningServer, tmp_path: Path
) -> None:
    """verify --output json lists both features with their version, channel and signing key."""
    publish_two(server, tmp_path)
    index = server.origin_url + "remote-index.json"
    refused = js("verify", "--index-url", index, "--trust", str(server.trust_path))
    assert refused.returncode == 1  # the dev root key is not counted without the flag
    assert "dev" in refused.stderr and refused.stderr.count("\n") == 1
    done = js(
        "verify",
        "--index-url",
        index,
        "--trust",
        str(server.trust_path),
        "--allow-dev-keys",
        "--output",
        "json",
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    text = json.dumps(report)
    assert '"checkout"' in text and '"1.0.0"' in text and '"search"' in text and '"2.0.0"' in text


def test_a_tampered_artifact_is_refused_by_the_js_cli(
    server: RunningServer, tmp_path: Path
) -> None:
    """Bytes changed on the origin after publishing: exit 1 naming the artifact and `hash`."""
    publish_two(server, tmp_path)
    artifact = next(p for p in (server.origin_dir / "artifacts").iterdir() if p.suffix == ".js")
    data = bytearray(artifact.read_bytes())
    data[0] ^= 0x20  # same length, other bytes
    artifact.write_bytes(bytes(data))
    done = js(
        "verify",
        "--index-url",
        server.origin_url + "remote-index.json",
        "--trust",
        str(server.trust_path),
        "--allow-dev-keys",
        "--output",
        "json",
    )
    assert done.returncode == 1
    assert "hash" in done.stdout and artifact.name in done.stdout


def test_both_hosts_print_the_same_import_map(server: RunningServer, tmp_path: Path) -> None:
    """`releasectl importmap` and `releasecontrol-host importmap` give identical bytes, and the
    entry's relative import of lib/util.js is scoped to its content-addressed URL."""
    publish_two(server, tmp_path)
    python = releasectl(server, tmp_path, "importmap", "--channel", "stable")
    assert python.returncode == 0, python.stderr
    node = js(
        "importmap",
        "--index-url",
        server.origin_url + "remote-index.json",
        "--trust",
        str(server.trust_path),
        "--allow-dev-keys",
        "--channel",
        "stable",
    )
    assert node.returncode == 0, node.stderr
    assert json.loads(node.stdout) == json.loads(python.stdout)
    assert node.stdout == python.stdout
    mapping = json.loads(python.stdout)
    entry = mapping["imports"]["checkout"]
    scope = mapping["scopes"][entry]
    util = scope[server.origin_url + "artifacts/lib/util.js"]
    assert util in mapping["integrity"] and util != entry
    assert server.origin_url + "artifacts/styles/main.css" in scope  # every asset is reachable


def test_dev_host_serves_the_bundle_clients_js_builds() -> None:
    """The bundle shipped in the Python package is byte for byte a fresh build (make js-bundle)."""
    if not BUILT_BUNDLE.is_file():
        pytest.fail("clients/js is not built: run `make js-test` (make test does it first)")
    assert SHIPPED_BUNDLE.read_bytes() == BUILT_BUNDLE.read_bytes(), (
        "clients/releasecontrol/static/releasecontrol-host.min.js is stale: run `make js-bundle`"
    )
