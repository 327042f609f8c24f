"""`releasectl importmap`: a verified import map whose integrity values are the signed bytes'."""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from host_repository import KEY_B, HostRepository

from releasecontrol.importmap import build_import_map, integrity_of
from releasecontrol_server.origin.http import OriginHttpServer
from releasectl import main


@pytest.fixture
def repo(tmp_path: Path) -> HostRepository:
    # The command reads the real clock: sign as of now.
    r = HostRepository(tmp_path / "origin", now=datetime.now(UTC).replace(microsecond=0))
    r.add_version(
        "checkout",
        "1.0.0",
        {
            "index.js": b"import './chunk.mjs';\n",
            "chunk.mjs": b"export const a = 1;\n",
            "styles/main.css": b"body {}\n",
        },
    )
    r.add_version("search", "2.0.0")
    r.add_version("search", "2.1.0", channel="canary")
    r.publish()
    return r


@pytest.fixture
def origin(repo: HostRepository) -> Iterator[OriginHttpServer]:
    with OriginHttpServer(repo.root, port=0) as server:
        yield server


def run(repo: HostRepository, origin: OriginHttpServer, *args: str) -> Result:
    env = {
        "FEATURE_REMOTE_INDEX_URL": origin.url + "remote-index.json",
        "FEATURE_TRUST_PUBLIC_KEYS_JSON": repo.trust().to_json(),
        "RELEASECONTROL_ENV": "development",
    }
    return CliRunner().invoke(main, ["importmap", *args], env=env, prog_name="releasectl")


class TestImportMapCommand:
    def test_every_entry_and_script_is_mapped_with_the_integrity_of_its_served_bytes(
        self, repo: HostRepository, origin: OriginHttpServer
    ) -> None:
        """Each feature maps to its entry; each .js/.mjs asset's integrity is that of the bytes
        the origin serves; stylesheets are not listed."""
        result = run(repo, origin, "--channel", "stable")
        assert result.exit_code == 0, result.output
        mapping = json.loads(result.output)
        assert sorted(mapping["imports"]) == ["checkout", "search"]
        assert len(mapping["integrity"]) == 3  # index.js, chunk.mjs, search's index.js
        for url, value in mapping["integrity"].items():
            assert url.startswith(origin.url + "artifacts/") and not url.endswith(".css")
            with urllib.request.urlopen(url) as answer:
                served = answer.read()
            digest = base64.b64encode(hashlib.sha256(served).digest()).decode()
            assert value == f"sha256-{digest}"
        assert mapping["imports"]["checkout"] in mapping["integrity"]

    def test_the_canary_channel_maps_the_running_canary(
        self, repo: HostRepository, origin: OriginHttpServer
    ) -> None:
        """--channel canary points search at 2.1.0's entry, checkout (no canary) at stable."""
        stable = json.loads(run(repo, origin, "--channel", "stable").output)
        canary = json.loads(run(repo, origin, "--channel", "canary").output)
        assert canary["imports"]["checkout"] == stable["imports"]["checkout"]
        assert canary["imports"]["search"] != stable["imports"]["search"]

    def test_a_refusal_writes_no_map(
        self, repo: HostRepository, origin: OriginHttpServer, tmp_path: Path
    ) -> None:
        """Signed by a key the root does not list: exit 1 with the reason, nothing written."""
        repo.publish_remote(keys=[KEY_B])
        out = tmp_path / "map.json"
        result = run(repo, origin, "--channel", "stable", "--out", str(out))
        assert result.exit_code == 1
        assert "no import map written" in result.output and "remote-index.json" in result.output
        assert not out.exists()

    def test_channel_is_required(self, repo: HostRepository, origin: OriginHttpServer) -> None:
        """Without --channel the command says so (usage error, exit 2)."""
        result = run(repo, origin)
        assert result.exit_code == 2 and "--channel" in result.output


def test_integrity_is_sri_of_the_hex_digest() -> None:
    """sha256-<base64 of the raw digest>, as browsers compare it."""
    digest = hashlib.sha256(b"x").hexdigest()
    assert (
        integrity_of(digest) == "sha256-" + base64.b64encode(hashlib.sha256(b"x").digest()).decode()
    )


def test_urls_resolve_against_the_index_folder() -> None:
    """A CDN index below a folder maps assets below that folder."""
    manifest = {"entry": "a.js", "assets": [{"path": "a.js", "sha256": "ab" * 32}]}
    mapping = build_import_map("https://cdn.example.com/f/remote-index.json", {"x": manifest})
    assert mapping["imports"] == {"x": f"https://cdn.example.com/f/artifacts/{'ab' * 32}.js"}
