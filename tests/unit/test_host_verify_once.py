"""FeatureHost's cheaper cold load: each signed file parsed and verified once, without
re-encoding it; the state file written once per refresh; relative paths joined without
urljoin where that gives the same URL.

The attack table in test_host.py runs through the same code; these tests pin what
the shortcut must and must not accept.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import pytest
from host_repository import KEY_A, KEY_B, NOW, HostRepository, trust_for

from releasecontrol import host as host_module
from releasecontrol import index as index_module
from releasecontrol.fetch import Fetcher
from releasecontrol.host import DEFAULT_LIMITS, FeatureHost, Limits
from releasecontrol.index import REMOTE_INDEX_PATH, canonical_json
from releasecontrol_server.origin.http import OriginHttpServer

RELEASES = "features/checkout/releases.json"


@pytest.fixture
def repo(tmp_path: Path) -> HostRepository:
    repo = HostRepository(tmp_path / "origin")
    repo.add_version("checkout", "1.0.0")
    repo.publish()
    return repo


@pytest.fixture
def server(repo: HostRepository) -> Iterator[OriginHttpServer]:
    with OriginHttpServer(repo.root, port=0) as server:
        yield server


def make_host(server: OriginHttpServer, tmp_path: Path, **kwargs: Any) -> FeatureHost:
    return FeatureHost(
        server.url + REMOTE_INDEX_PATH,
        kwargs.pop("trust", trust_for(KEY_A)),
        state_dir=tmp_path / "host",
        clock=lambda: NOW + timedelta(hours=1),
        fetcher=Fetcher(timeout_seconds=2.0),
        **kwargs,
    )


def repin(repo: HostRepository, data: bytes) -> None:
    """Serve `data` as checkout's releases.json, pinned by a new remote index."""
    repo.features["checkout"].sequence += 1
    repo.put_releases("checkout", data)
    repo.publish_remote()


def test_files_as_the_signer_writes_them_are_not_re_encoded(
    server: OriginHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold load of JCS-written files never canonicalises: the signatures are checked
    over the bytes as served."""

    def refuse(value: Any) -> bytes:
        raise AssertionError("canonical_json called on the host's hot path")

    monkeypatch.setattr(index_module, "canonical_json", refuse)
    report = make_host(server, tmp_path).refresh()
    assert report.ok, report.refused
    assert report.loaded == {"checkout": "1.0.0"}


def test_a_validly_signed_file_written_differently_still_loads(
    repo: HostRepository, server: OriginHttpServer, tmp_path: Path
) -> None:
    """An envelope that is not JCS-written (indented, keys in another order) but signed over
    the JCS of its body goes the general way and is accepted, as before."""
    repo.features["checkout"].sequence += 1
    envelope = json.loads(repo.releases_bytes("checkout"))
    reordered = {"signed": envelope["signed"], "signatures": envelope["signatures"]}
    pretty = json.dumps(reordered, indent=1)
    repo.put_releases("checkout", pretty.encode())
    repo.publish_remote()
    report = make_host(server, tmp_path).refresh()
    assert report.ok, report.refused


def test_signed_bytes_smuggled_elsewhere_in_the_file_are_not_accepted(
    repo: HostRepository, server: OriginHttpServer, tmp_path: Path
) -> None:
    """Genuinely signed bytes hidden inside the signatures array, with an unsigned body of a
    higher sequence as the real "signed": refused, whatever the shortcut finds first."""
    repo.features["checkout"].sequence += 1
    genuine = json.loads(repo.releases_bytes("checkout"))
    signed_bytes = canonical_json(genuine["signed"])
    forged = dict(genuine["signed"], sequence=99)
    signature = genuine["signatures"][0]
    smuggled = (
        b'{"signatures":[{"keyid":"'
        + signature["keyid"].encode()
        + b'","sig":"'
        + signature["sig"].encode()
        + b'","x":{"a":1,"signed":'
        + signed_bytes
        + b'}}],"signed":'
        + canonical_json(forged)
        + b"}"
    )
    repo.put_releases("checkout", smuggled)
    repo.publish_remote()
    report = make_host(server, tmp_path).refresh()
    assert "checkout" in report.refused
    assert "signed by 0 of 1" in report.refused["checkout"]


def test_a_signature_over_other_bytes_is_refused_with_the_reason(
    repo: HostRepository, server: OriginHttpServer, tmp_path: Path
) -> None:
    """One byte of the signed body changed after signing: refused, naming the bad signature."""
    data = repo.releases_bytes("checkout", sequence=repo.features["checkout"].sequence + 1)
    tampered = data.replace(b'"sequence":2', b'"sequence":3')
    assert tampered != data
    repin(repo, tampered)
    report = make_host(server, tmp_path).refresh()
    assert "bad signature" in report.refused.get("checkout", "")


def test_the_threshold_counts_a_key_once(
    repo: HostRepository, server: OriginHttpServer, tmp_path: Path
) -> None:
    """Two copies of one key's signature do not meet a threshold of two."""
    data = repo.releases_bytes("checkout", sequence=repo.features["checkout"].sequence + 1)
    envelope = json.loads(data)
    envelope["signatures"] = envelope["signatures"] * 2
    repin(repo, canonical_json(envelope))
    trust = trust_for(KEY_A, KEY_B, threshold=2)
    report = make_host(server, tmp_path, trust=trust).refresh()
    assert "remote-index.json" in report.refused  # signed by KEY_A alone as well
    assert "signed by 1 of 2" in report.refused["remote-index.json"]


def test_a_dev_key_does_not_count_unless_allowed(
    repo: HostRepository, server: OriginHttpServer, tmp_path: Path
) -> None:
    """The shortcut applies the dev-key rule too: a dev-signed index is refused by default."""
    trust = trust_for(KEY_A, dev=[KEY_A])
    refused = make_host(server, tmp_path, trust=trust).refresh()
    assert "dev key" in refused.refused.get("remote-index.json", "")
    allowed = FeatureHost(
        server.url + REMOTE_INDEX_PATH,
        trust,
        state_dir=tmp_path / "other",
        clock=lambda: NOW + timedelta(hours=1),
        allow_insecure_dev_keys=True,
    )
    assert allowed.refresh().ok


def test_a_bad_base64_signature_is_not_valid(
    repo: HostRepository, server: OriginHttpServer, tmp_path: Path
) -> None:
    """A signature that is not base64 counts for nothing."""
    data = repo.releases_bytes("checkout", sequence=repo.features["checkout"].sequence + 1)
    envelope = json.loads(data)
    raw = base64.b64decode(envelope["signatures"][0]["sig"])
    envelope["signatures"][0]["sig"] = base64.b64encode(raw).decode()[:-2] + "!!"
    repin(repo, canonical_json(envelope))
    report = make_host(server, tmp_path).refresh()
    assert "checkout" in report.refused


def test_the_state_file_is_written_once_per_refresh(
    repo: HostRepository, server: OriginHttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold load writes state.json once (remote and features together), an unchanged
    refresh not at all, and a refresh with a change once again."""
    writes: list[Path] = []
    real = host_module.atomic_write

    def counting(path: Path, data: bytes, **kwargs: Any) -> None:
        writes.append(path)
        real(path, data, **kwargs)

    monkeypatch.setattr(host_module, "atomic_write", counting)
    repo.add_version("other", "1.0.0")
    repo.publish()
    host = make_host(server, tmp_path)
    assert host.refresh().ok
    assert len(writes) == 1
    state = json.loads(writes[0].read_text())
    assert set(state["features"]) == {"checkout", "other"}
    assert state["remote_index"]["sequence"] == repo.remote_sequence
    assert host.refresh().ok
    assert len(writes) == 1
    repo.add_version("checkout", "1.1.0")
    repo.publish()
    assert host.refresh().ok
    assert len(writes) == 2


@pytest.mark.parametrize(
    "index_url",
    [
        "http://cdn.example/remote-index.json",
        "http://cdn.example:8080/a/b/remote-index.json?x=1",
        "https://[::1]:4100/remote-index.json",
    ],
)
@pytest.mark.parametrize(
    "relative",
    [
        "features/checkout/releases.json",
        "artifacts/" + "a" * 64,
        "features/checkout/1.0.0-rc.1%2Bbuild/manifest.json",
        "features/a~b/1.0.0+build/manifest.json",
        "../x.json",
        "./x.json",
        "/x.json",
        "//evil.example/x.json",
        "http://evil.example/x.json",
        "a//b.json",
        "x.json?y",
        "",
    ],
)
def test_relative_paths_resolve_as_urljoin_does(index_url: str, relative: str) -> None:
    """The shortcut for plain paths gives urljoin's URL, and declines everything else."""
    plain = host_module._Base(index_url).plain(relative)
    if plain is not None:
        assert plain == urljoin(index_url, relative)
    else:
        assert relative in (
            "../x.json",
            "./x.json",
            "/x.json",
            "//evil.example/x.json",
            "http://evil.example/x.json",
            "a//b.json",
            "x.json?y",
            "",
        )


def test_the_default_index_limit_fits_100000_features() -> None:
    """remote-index.json of 100,000 features (~150 bytes an entry) is under the default."""
    assert DEFAULT_LIMITS.max_index_bytes == 32 << 20 == Limits().max_index_bytes
    assert DEFAULT_LIMITS.max_index_bytes > 100_000 * 150
