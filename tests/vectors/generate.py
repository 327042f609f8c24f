"""Writes the host protocol v2 test vectors: one folder per case (docs/host-protocol.md, 10).

    python tests/vectors/generate.py            # (re)write tests/vectors/
    python tests/vectors/generate.py --check    # exit 1 if the committed files differ

Every case is built with `HostRepository` (tests/unit/host_repository.py), the
same simulator the unit tests use, from fixed keys: Ed25519 signatures are
deterministic, so the same code writes the same bytes. Valid files expire in
2126, expired ones in 2001, so verifiers run the vectors with their real clock.
Both hosts (Python: tests/unit/test_vectors.py, JavaScript:
clients/js/test/vectors.test.js) must give exactly the verdicts in each
`case.json`.

It also writes `bucketing.json`, the table of sticky bucketing (section 11): each
bucket is computed here with hashlib from the formula itself, not with the
hosts' code, and both hosts' tests (tests/unit/test_bucketing.py,
clients/js/test/bucketing.test.js) must agree with every row: buckets of
(feature id, key), the side at weights around each bucket, and the keys each
host refuses, with the refusal's words after the field's name.
"""

from __future__ import annotations

import argparse
import base64
import filecmp
import hashlib
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "unit"))

from host_repository import (  # noqa: E402
    KEY_A,
    KEY_B,
    KEY_C,
    KEY_DEV,
    ROOT_B,
    HostRepository,
    fixed_key,
)

from releasecontrol.canonical import jcs  # noqa: E402
from releasecontrol.manifest import artifact_path, manifest_path  # noqa: E402
from releasecontrol.shards import bin_of  # noqa: E402

VALID_FROM = datetime(2026, 1, 1, tzinfo=UTC)
VALID_FOR = datetime(2126, 1, 1, tzinfo=UTC) - VALID_FROM
EXPIRED_FROM = datetime(2000, 1, 1, tzinfo=UTC)
EXPIRED_FOR = datetime(2001, 1, 1, tzinfo=UTC) - EXPIRED_FROM

# The seed of each test key: the private key is 32 bytes of that number.
SEEDS = {
    "KEY_A": 1,
    "KEY_B": 2,
    "KEY_C": 3,
    "KEY_DEV": 4,
    "ROOT_A": 11,
    "ROOT_B": 12,
    "ROOT_C": 13,
}
BIN_IDS = ["checkout", "search", "news", "profile", "cart", "nope", "a", "feature-dashboard"]


def repo(root: Path, **kwargs: Any) -> HostRepository:
    kwargs.setdefault("now", VALID_FROM)
    kwargs.setdefault("expiry", VALID_FOR)
    kwargs.setdefault("root_expiry", VALID_FOR)
    return HostRepository(root, **kwargs)


def base(root: Path, **kwargs: Any) -> HostRepository:
    """checkout 1.0.0 (bin 63) and search 2.0.0 (bin 12), both stable, published once."""
    r = repo(root, **kwargs)
    r.add_version("checkout", "1.0.0")
    r.add_version("search", "2.0.0")
    r.publish()
    return r


def flip(data: bytes, old: bytes, new: bytes) -> bytes:
    """`data` with the first `old` replaced by `new` of the same length (a new hash, same size)."""
    assert len(old) == len(new) and old in data, (old, new)
    return data.replace(old, new, 1)


def tampered_sha(data: bytes) -> bytes:
    """Change one hex digit of the first "sha256" value in a signed file."""
    at = data.index(b'"sha256":"') + len(b'"sha256":"')
    digit = b"0" if data[at : at + 1] != b"0" else b"1"
    return data[:at] + digit + data[at + 1 :]


@dataclass
class Case:
    """One vector: how the host is set up, and each step's origin and expected verdict."""

    name: str
    description: str
    trust: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    allow_dev_keys: bool = False
    channel: str = "stable"
    features: list[str] | None = None
    limits: dict[str, Any] = field(default_factory=lambda: {"timeout_seconds": 2})


class Builder:
    """Writes cases into `out`: each step is a copy of a repository's folder at that moment."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.cases: list[str] = []

    def case(
        self,
        name: str,
        description: str,
        build: Callable[[Path, Case], None],
        **options: Any,
    ) -> None:
        folder = self.out / name
        with tempfile.TemporaryDirectory() as work:
            case = Case(name=name, description=description, trust={}, **options)
            self._work = Path(work) / "origin"
            self._folder = folder
            build(self._work, case)
        document = {
            "description": case.description,
            "trust": case.trust,
            "allow_dev_keys": case.allow_dev_keys,
            "channel": case.channel,
            "features": case.features,
            "limits": case.limits,
            "steps": case.steps,
        }
        (folder / "case.json").write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        self.cases.append(name)

    def step(
        self,
        case: Case,
        r: HostRepository,
        *,
        loaded: dict[str, str],
        refused: dict[str, tuple[str, str]] | None = None,
        serve: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Snapshot the repository's folder as the next step, with what a host must do."""
        name = f"step-{len(case.steps) + 1}"
        shutil.copytree(r.root, self._folder / name)
        step: dict[str, Any] = {
            "origin": name,
            "expect": {
                "loaded": loaded,
                "refused": {k: {"code": c, "file": f} for k, (c, f) in (refused or {}).items()},
            },
        }
        if serve:
            step["serve"] = serve
        case.steps.append(step)


def trust_of(r: HostRepository, **kwargs: Any) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(r.trust(**kwargs).to_json())
    return document


OK = {"checkout": "1.0.0", "search": "2.0.0"}
TOP = "remote-index.json"
CHECKOUT = "features/checkout/releases.json"


def build_all(out: Path) -> list[str]:
    b = Builder(out)
    shard_checkout = f"index/7/{bin_of('checkout', 7)}.json"
    shard_search = f"index/7/{bin_of('search', 7)}.json"

    # -- valid origins ---------------------------------------------------------------------

    def valid(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)

    b.case("valid", "a valid origin: every feature loads", valid)

    def canary(root: Path, case: Case) -> None:
        r = base(root)
        r.add_version("search", "2.1.0", channel="canary")
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"checkout": "1.0.0", "search": "2.1.0"})

    b.case(
        "valid-canary", "a host on the canary channel loads the canary", canary, channel="canary"
    )

    def one(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded={"checkout": "1.0.0"})

    b.case(
        "valid-one-feature",
        "a host that needs one feature loads only it",
        one,
        features=["checkout"],
    )

    def shared_bin(root: Path, case: Case) -> None:
        r = base(root)
        r.add_version("news", "0.1.0")
        r.add_version("profile", "3.0.0")  # news and profile share bin 0c
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={**OK, "news": "0.1.0", "profile": "3.0.0"})

    b.case("valid-shared-bin", "two features in one shard both load", shared_bin)

    def bits(root: Path, case: Case) -> None:
        r = repo(root, bits=0)
        r.add_version("checkout", "1.0.0")
        r.add_version("search", "2.0.0")
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)

    b.case("valid-bits-0", "an origin sharded with bits 0 (one shard named 0) loads", bits)

    def threshold_met(root: Path, case: Case) -> None:
        r = base(root, keys=(KEY_A, KEY_B), threshold=2)
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)

    b.case("threshold-met", "an index role of 2 of 2 keys, both signed: loads", threshold_met)

    # -- not published ---------------------------------------------------------------------

    def not_found(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded={"checkout": "1.0.0"}, refused={"nope": ("not-found", TOP)})

    b.case(
        "not-found",
        "a needed feature whose bin has no shard is not published",
        not_found,
        features=["checkout", "nope"],
    )

    def no_stable(root: Path, case: Case) -> None:
        r = base(root)
        r.add_version("news", "0.1.0", channel="canary")
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK, refused={"news": ("not-found", "features/news/releases.json")})

    b.case("no-stable-version", "a feature with only a canary has nothing on stable", no_stable)

    # -- signatures ---------------------------------------------------------------------------

    def tampered_top(root: Path, case: Case) -> None:
        r = base(root)
        r.publish_remote(tamper=lambda s: s.update(expires_at="2126-01-01T00:00:01Z"))
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("signature", TOP)})

    b.case("tampered-top", "remote-index.json changed after signing", tampered_top)

    def tampered_shard(root: Path, case: Case) -> None:
        r = base(root)
        r.publish_shard(
            bin_of("search", 7),
            sequence=r.remote_sequence + 1,
            tamper=lambda s: s.update(issued_at="2026-01-01T00:00:01Z"),
        )
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(
            case,
            r,
            loaded={"checkout": "1.0.0"},
            refused={shard_search: ("signature", shard_search)},
        )

    b.case("tampered-shard", "a shard changed after signing, pinned as changed", tampered_shard)

    def shard_hash(root: Path, case: Case) -> None:
        r = base(root)
        r.write(shard_search, tampered_sha(r.read(shard_search)))
        case.trust = trust_of(r)
        b.step(
            case, r, loaded={"checkout": "1.0.0"}, refused={shard_search: ("hash", shard_search)}
        )

    b.case("shard-hash", "a shard whose bytes are not the ones the top level pins", shard_hash)

    def tampered_releases(root: Path, case: Case) -> None:
        r = base(root)
        r.publish_releases(
            "checkout",
            tamper=lambda s: s.update(
                active_version="1.0.0-x", channels={"stable": "1.0.0-x", "canary": None}
            ),
        )
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("signature", CHECKOUT)})

    b.case("tampered-releases", "a releases.json changed after signing", tampered_releases)

    def unknown_key(root: Path, case: Case) -> None:
        r = base(root)
        r.publish_remote(keys=[KEY_B])
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("signature", TOP)})

    b.case("wrong-key", "remote-index.json signed by a key the root does not list", unknown_key)

    def below(root: Path, case: Case) -> None:
        r = base(root, keys=(KEY_A, KEY_B), threshold=2)
        r.publish_remote(keys=[KEY_A])
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("signature", TOP)})

    b.case("below-threshold", "1 signature where the index role needs 2", below)

    def twice(root: Path, case: Case) -> None:
        r = base(root, keys=(KEY_A, KEY_B), threshold=2)
        data = json.loads(r.publish_remote(keys=[KEY_A]))
        data["signatures"] = data["signatures"] * 2
        r.write(TOP, jcs(data))
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("signature", TOP)})

    b.case("duplicate-signature", "one key signing twice counts once", twice)

    def dev_refused(root: Path, case: Case) -> None:
        r = base(root, root_keys=(KEY_DEV,), dev_keys=(KEY_DEV,))
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("root", "roots/1.json")})

    b.case("dev-key-refused", "a root signed by a dev key, dev keys not allowed", dev_refused)

    def dev_allowed(root: Path, case: Case) -> None:
        r = base(root, root_keys=(KEY_DEV,), dev_keys=(KEY_DEV,))
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)

    b.case(
        "dev-key-allowed",
        "a root signed by a dev key, dev keys allowed",
        dev_allowed,
        allow_dev_keys=True,
    )

    # -- rollback and freeze ----------------------------------------------------------------

    def rollback_top(root: Path, case: Case) -> None:
        r = base(root)
        old = r.read(TOP)
        r.add_version("checkout", "1.1.0")
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"checkout": "1.1.0", "search": "2.0.0"})
        r.write(TOP, old)
        b.step(
            case,
            r,
            loaded={"checkout": "1.1.0", "search": "2.0.0"},
            refused={TOP: ("rollback", TOP)},
        )

    b.case("rollback-top", "an older remote-index.json after a newer one", rollback_top)

    def rollback_releases(root: Path, case: Case) -> None:
        r = base(root)
        old = r.read(CHECKOUT)
        r.add_version("checkout", "1.1.0")
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"checkout": "1.1.0", "search": "2.0.0"})
        r.put_releases("checkout", old)  # a fresh top and shard pinning the old file
        r.publish()
        b.step(
            case,
            r,
            loaded={"checkout": "1.1.0", "search": "2.0.0"},
            refused={"checkout": ("rollback", CHECKOUT)},
        )

    b.case(
        "rollback-releases", "a fresh top level pinning an older releases.json", rollback_releases
    )

    def same_sequence(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)
        r.publish_remote(sequence=r.remote_sequence, issued_at="2026-01-01T00:00:01Z")
        b.step(case, r, loaded=OK, refused={TOP: ("rollback", TOP)})

    b.case(
        "same-sequence-other-body",
        "remote-index.json re-signed at the same sequence",
        same_sequence,
    )

    def expired_top(root: Path, case: Case) -> None:
        r = base(root)
        r.now, r.expiry = EXPIRED_FROM, EXPIRED_FOR
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("expired", TOP)})

    b.case("expired-top", "remote-index.json past its expiry", expired_top)

    def expired_shard(root: Path, case: Case) -> None:
        r = base(root)
        r.now, r.expiry = EXPIRED_FROM, EXPIRED_FOR
        r.publish_shard(bin_of("search", 7), sequence=r.remote_sequence + 1)
        r.now, r.expiry = VALID_FROM, VALID_FOR
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(
            case, r, loaded={"checkout": "1.0.0"}, refused={shard_search: ("expired", shard_search)}
        )

    b.case("expired-shard", "a shard past its expiry", expired_shard)

    def expired_releases(root: Path, case: Case) -> None:
        r = base(root)
        r.now, r.expiry = EXPIRED_FROM, EXPIRED_FOR
        r.publish_releases("checkout")
        r.now, r.expiry = VALID_FROM, VALID_FOR
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("expired", CHECKOUT)})

    b.case("expired-releases", "a releases.json past its expiry", expired_releases)

    def expired_root(root: Path, case: Case) -> None:
        r = base(root, root_expiry=EXPIRED_FOR, now=EXPIRED_FROM)
        r.now, r.expiry = VALID_FROM, VALID_FOR
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("expired", "roots/1.json")})

    b.case("expired-root", "the trusted root past its expiry", expired_root)

    # -- mix and match ---------------------------------------------------------------------

    def other_bin(root: Path, case: Case) -> None:
        r = base(root)
        pins = dict(r.pins)
        r.publish_shard(
            bin_of("checkout", 7),
            sequence=r.remote_sequence + 1,
            features={"checkout": pins["checkout"], "search": pins["search"]},
        )
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(
            case,
            r,
            loaded={"search": "2.0.0"},
            refused={shard_checkout: ("mismatch", shard_checkout)},
        )

    b.case("mix-shard-other-bin", "a shard listing a feature of another bin", other_bin)

    def other_feature(root: Path, case: Case) -> None:
        r = base(root)
        r.put_releases("checkout", r.read("features/search/releases.json"))
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("mismatch", CHECKOUT)})

    b.case(
        "mix-releases-other-feature",
        "search's releases.json served (and pinned) as checkout's",
        other_feature,
    )

    def other_top(root: Path, case: Case) -> None:
        r = base(root)
        name = bin_of("search", 7)
        r.publish_shard(name, sequence=r.remote_sequence + 1, pinned_sequence=r.remote_sequence + 7)
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(
            case,
            r,
            loaded={"checkout": "1.0.0"},
            refused={shard_search: ("mismatch", shard_search)},
        )

    b.case(
        "mix-shard-sequence", "a shard whose sequence is not the one the top level pins", other_top
    )

    def pinned_sequence(root: Path, case: Case) -> None:
        r = base(root)
        r.publish_releases("checkout", pinned_sequence=5)
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("mismatch", CHECKOUT)})

    b.case(
        "mix-releases-sequence",
        "a releases.json whose sequence is not the one its shard pins",
        pinned_sequence,
    )

    # -- bounded downloads -------------------------------------------------------------------

    def oversized(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("too-large", TOP)})

    b.case(
        "oversized-top",
        "a remote-index.json over the host's limit",
        oversized,
        limits={"timeout_seconds": 2, "max_index_bytes": 256},
    )

    def endless(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(
            case, r, loaded={}, refused={TOP: ("too-large", TOP)}, serve={TOP: {"endless": True}}
        )

    b.case(
        "endless-top",
        "remote-index.json streamed without end",
        endless,
        limits={"timeout_seconds": 5, "max_index_bytes": 65536},
    )

    def drip(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(
            case,
            r,
            loaded={"checkout": "1.0.0"},
            refused={shard_search: ("timeout", shard_search)},
            serve={shard_search: {"drip_bytes_per_second": 20}},
        )

    b.case(
        "slow-drip-shard",
        "a shard sent slower than the deadline",
        drip,
        limits={"timeout_seconds": 1},
    )

    def status(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("fetch", TOP)}, serve={TOP: {"status": 500}})

    b.case("status-500", "the origin answers remote-index.json with 500", status)

    def missing_top(root: Path, case: Case) -> None:
        r = base(root)
        r.delete(TOP)
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("fetch", TOP)})

    b.case("missing-top", "no remote-index.json on the origin (404)", missing_top)

    # -- manifests and assets ----------------------------------------------------------------

    def asset_hash(root: Path, case: Case) -> None:
        r = base(root)
        manifest = json.loads(r.read(manifest_path("checkout", "1.0.0")))
        entry = next(a for a in manifest["assets"] if a["path"] == "index.js")
        path = artifact_path(entry["sha256"], "index.js")
        r.write(path, flip(r.read(path), b"export", b"EXPORT"))
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("hash", path)})

    b.case(
        "wrong-asset-hash", "an asset whose bytes are not the ones its manifest lists", asset_hash
    )

    def asset_length(root: Path, case: Case) -> None:
        r = base(root)
        manifest = json.loads(r.read(manifest_path("checkout", "1.0.0")))
        entry = next(a for a in manifest["assets"] if a["path"] == "index.js")
        path = artifact_path(entry["sha256"], "index.js")
        r.write(path, r.read(path) + b"alert(1);\n")
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("length", path)})

    b.case("wrong-asset-length", "an asset longer than its manifest lists", asset_length)

    def manifest_hash(root: Path, case: Case) -> None:
        r = base(root)
        path = manifest_path("checkout", "1.0.0")
        r.write(path, flip(r.read(path), b'"/checkout"', b'"/checkoux"'))
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("hash", path)})

    b.case(
        "wrong-manifest-hash",
        "a manifest whose bytes are not the ones releases.json lists",
        manifest_hash,
    )

    def manifest_version(root: Path, case: Case) -> None:
        r = repo(root)
        r.add_version("checkout", "1.0.0", manifest_changes={"version": "1.0.1"})
        r.add_version("search", "2.0.0")
        r.publish()
        case.trust = trust_of(r)
        b.step(
            case,
            r,
            loaded={"search": "2.0.0"},
            refused={"checkout": ("mismatch", manifest_path("checkout", "1.0.0"))},
        )

    b.case(
        "manifest-other-version", "the manifest listed for 1.0.0 says it is 1.0.1", manifest_version
    )

    def not_semver(root: Path, case: Case) -> None:
        r = base(root)
        listed = r.releases_body("checkout")["versions"][0]
        r.publish_releases(
            "checkout",
            versions=[{**listed, "version": "../x"}],
            channels={"stable": "../x", "canary": None},
            active_version="../x",
        )
        r.publish()
        case.trust = trust_of(r)
        b.step(case, r, loaded={"search": "2.0.0"}, refused={"checkout": ("malformed", CHECKOUT)})

    b.case(
        "version-not-semver",
        "a signed releases.json naming a version that is not SemVer (it would climb out of its "
        "folder)",
        not_semver,
    )

    # -- keys and roots ----------------------------------------------------------------------

    def rotated(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)
        r.rotate([KEY_B])
        b.step(case, r, loaded=OK)

    b.case("rotated-key", "the online key rotated: root 2 accepted through root 1", rotated)

    def rotated_fresh(root: Path, case: Case) -> None:
        r = base(root)
        r.rotate([KEY_B])
        r.rotate([KEY_C], root_keys=[ROOT_B])
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)

    b.case(
        "rotated-root-keys",
        "a new host follows roots 1 to 3, root keys rotated at 3",
        rotated_fresh,
    )

    def stale_root(root: Path, case: Case) -> None:
        r = base(root)
        old_top = r.read(TOP)
        r.rotate([KEY_B])
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)
        r.write(TOP, old_top)
        b.step(case, r, loaded=OK, refused={TOP: ("stale-root", TOP)})

    b.case("stale-root", "after root 2, a top level signed under root 1", stale_root)

    def revoked(root: Path, case: Case) -> None:
        r = base(root)
        r.rotate([KEY_B])
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)
        r.publish_remote(keys=[KEY_A])
        b.step(case, r, loaded=OK, refused={TOP: ("signature", TOP)})

    b.case("revoked-key", "the revoked online key signs a top level under root 2", revoked)

    def not_chained(root: Path, case: Case) -> None:
        r = base(root)
        new = r.model_root(2, [ROOT_B], [KEY_B])
        r.publish_root(new, root_keys=[ROOT_B], signers=[ROOT_B])
        r.keys = [KEY_B]
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("root", "roots/2.json")})

    b.case("root-not-chained", "root 2 not signed by root 1's root keys", not_chained)

    def root_missing(root: Path, case: Case) -> None:
        r = base(root)
        r.rotate([KEY_B])
        r.delete("roots/2.json")
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("root", "roots/2.json")})

    b.case("root-missing", "the top level names root 2, which the origin lacks", root_missing)

    def fast_forward(root: Path, case: Case) -> None:
        r = base(root)
        r.remote_sequence = 1_000_000  # a stolen key signed a huge sequence
        r.publish_remote()
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)
        r.remote_sequence = 1
        r.rotate([KEY_B])
        b.step(case, r, loaded=OK)

    b.case(
        "fast-forward-recovery",
        "revoking the key that signed a huge sequence lets the host accept the new key's lower one",
        fast_forward,
    )

    # -- format ------------------------------------------------------------------------------

    def v1(root: Path, case: Case) -> None:
        r = base(root)
        r.publish_remote(schema_version=1)
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("schema-version", TOP)})

    b.case("v1-origin", "a remote-index.json of schema_version 1", v1)

    def pretty(root: Path, case: Case) -> None:
        r = base(root)
        r.write(TOP, json.dumps(json.loads(r.read(TOP)), indent=1).encode())
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("not-canonical", TOP)})

    b.case("not-canonical", "a signed remote-index.json written with whitespace", pretty)

    def duplicate(root: Path, case: Case) -> None:
        r = base(root)
        data = r.read(TOP)
        r.write(TOP, data.replace(b'"sequence":1,', b'"sequence":1,"sequence":1,', 1))
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("not-canonical", TOP)})

    b.case("duplicate-member", "a member repeated inside the signed body", duplicate)

    def truncated(root: Path, case: Case) -> None:
        r = base(root)
        r.write(TOP, r.read(TOP)[:-20])
        case.trust = trust_of(r)
        b.step(case, r, loaded={}, refused={TOP: ("malformed", TOP)})

    b.case("malformed", "a remote-index.json cut short", truncated)

    def after_good(root: Path, case: Case) -> None:
        r = base(root)
        case.trust = trust_of(r)
        b.step(case, r, loaded=OK)
        r.add_version("checkout", "1.1.0")
        r.publish()
        manifest = json.loads(r.read(manifest_path("checkout", "1.1.0")))
        entry = next(a for a in manifest["assets"] if a["path"] == "index.js")
        path = artifact_path(entry["sha256"], "index.js")
        r.write(path, flip(r.read(path), b"export", b"EXPORT"))
        b.step(case, r, loaded=OK, refused={"checkout": ("hash", path)})

    b.case(
        "last-good-kept", "a tampered update leaves the host on the last good version", after_good
    )

    return b.cases


def write_shared(out: Path) -> None:
    keys = {
        name: {
            "private_key_hex": (bytes([seed]) * 32).hex(),
            "keyid": fixed_key(seed).keyid,
            "public_key": base64.b64encode(fixed_key(seed).public_key_raw).decode("ascii"),
        }
        for name, seed in SEEDS.items()
    }
    (out / "keys.json").write_text(json.dumps(keys, indent=2, sort_keys=True) + "\n")
    bins = {fid: {str(n): bin_of(fid, n) for n in (0, 1, 4, 7, 8, 16)} for fid in BIN_IDS}
    (out / "bins.json").write_text(json.dumps(bins, indent=2, sort_keys=True) + "\n")


# --- bucketing.json (docs/host-protocol.md, section 11) ---------------------------------------

BUCKET_DOMAIN = b"releasecontrol-bucket-v1"
WEIGHT_SCALE = 10_000
MAX_KEY_BYTES = 256
# (feature id, key): ASCII and not, keys one character apart, keys equal but for Unicode
# normalization (the bytes are hashed: no normalization), and keys of exactly 256 bytes.
BUCKET_ROWS = [
    ("checkout", "user-42"),
    ("checkout", "user-43"),
    ("checkout", "user-4"),
    ("checkout", "user-420"),
    ("checkout", "User-42"),
    ("search", "user-42"),
    ("a", "user-42"),
    ("feature-dashboard", "user-42"),
    ("a" + "b" * 61 + "c", "user-42"),
    ("checkout", "a"),
    ("checkout", "b"),
    ("checkout", "0"),
    ("checkout", " "),
    ("checkout", "alice@example.com"),
    ("checkout", "alice@example.con"),
    ("checkout", "3f2504e0-4f89-11d3-9a0c-0305e82c3301"),
    ("checkout", "0123456789abcdef0123456789abcdef"),
    ("checkout", "zo\u00eb"),
    ("checkout", "zoe\u0308"),
    ("checkout", "\u7528\u6237-42"),
    ("checkout", "\u043f\u043e\u043b\u044c\u0437\u043e\u0432\u0430\u0442\u0435\u043b\u044c"),
    ("checkout", "\U0001f642"),
    ("checkout", "smile \U0001f642 key"),
    ("checkout", "tab\there"),
    ("checkout", "nul\u0000inside"),
    ("checkout", "k" * 256),
    ("checkout", "k" * 255 + "l"),
    ("checkout", "\u00e9" * 128),
    ("checkout", "\U0001f642" * 64),
    ("search", "k" * 256),
]
# A key that is not bucketed, and the words of its refusal after the field's name
# ("bucketing_key" in Python, "bucketingKey" in JavaScript).
INVALID_KEYS = [
    ("", "empty", "must be 1 to 256 bytes long in UTF-8, not empty"),
    ("k" * 257, "257 ASCII bytes", "must be 1 to 256 bytes long in UTF-8, not 257 bytes"),
    (
        "\u00e9" * 128 + "k",
        "129 characters, 257 bytes",
        "must be 1 to 256 bytes long in UTF-8, not 257 bytes",
    ),
    (
        "\U0001f642" * 65,
        "65 characters of 4 bytes",
        "must be 1 to 256 bytes long in UTF-8, not 260 bytes",
    ),
    (
        "\ud800",
        "a lone high surrogate",
        "must be well-formed Unicode: it holds a lone surrogate (U+D800), which has no UTF-8 "
        "encoding",
    ),
    (
        "a\udc00b",
        "a lone low surrogate",
        "must be well-formed Unicode: it holds a lone surrogate (U+DC00), which has no UTF-8 "
        "encoding",
    ),
    (
        "\U0001f642\ud83d",
        "a pair, then a high surrogate alone",
        "must be well-formed Unicode: it holds a lone surrogate (U+D83D), which has no UTF-8 "
        "encoding",
    ),
]


def bucket_input(feature_id: str, key: str) -> bytes:
    return b"\x00".join([BUCKET_DOMAIN, feature_id.encode(), key.encode("utf-8")])


def bucket_of(feature_id: str, key: str) -> int:
    digest = hashlib.sha256(bucket_input(feature_id, key)).digest()
    return int.from_bytes(digest[:4], "big") % WEIGHT_SCALE


def _key_with_bucket(feature_id: str, wanted: int) -> str:
    """The first key "edge-<n>" whose bucket is `wanted`: the scale's ends, found once."""
    n = 0
    while bucket_of(feature_id, f"edge-{n}") != wanted:
        n += 1
    return f"edge-{n}"


def bucketing_table() -> dict[str, Any]:
    for _, key in BUCKET_ROWS:
        assert 1 <= len(key.encode("utf-8")) <= MAX_KEY_BYTES, key
    feature_id, key = BUCKET_ROWS[0]
    data = bucket_input(feature_id, key)
    digest = hashlib.sha256(data).digest()
    example = {
        "feature_id": feature_id,
        "key": key,
        "hashed_bytes_hex": data.hex(),
        "sha256": digest.hex(),
        "first_4_bytes_hex": digest[:4].hex(),
        "uint32": int.from_bytes(digest[:4], "big"),
        "bucket": bucket_of(feature_id, key),
    }
    sides = []
    edges = [
        ("checkout", "user-42"),
        ("search", "user-42"),
        ("checkout", "\U0001f642"),
        ("checkout", _key_with_bucket("checkout", 0)),
        ("checkout", _key_with_bucket("checkout", WEIGHT_SCALE - 1)),
    ]
    for feature_id, key in edges:
        b = bucket_of(feature_id, key)
        weights = sorted({0, max(b - 1, 0), b, b + 1, WEIGHT_SCALE})
        sides.append({"feature_id": feature_id, "key": key, "weight": None, "canary": False})
        sides += [
            {"feature_id": feature_id, "key": key, "weight": w, "canary": b < w} for w in weights
        ]
    return {
        "description": (
            "Sticky bucketing (docs/host-protocol.md, section 11): bucket = uint32 big-endian of "
            "the first 4 bytes of SHA-256(UTF-8(domain) || 0x00 || UTF-8(feature_id) || 0x00 || "
            "UTF-8(key))) mod weight_scale; a key gets the canary iff a canary runs and bucket < "
            "canary_weight (weight null: the field is absent, read as 0). An invalid key is "
            "refused with the field's name, a space, then refusal."
        ),
        "domain": BUCKET_DOMAIN.decode(),
        "weight_scale": WEIGHT_SCALE,
        "max_key_bytes": MAX_KEY_BYTES,
        "example": example,
        "buckets": [
            {
                "feature_id": fid,
                "key": key,
                "key_utf8_hex": key.encode("utf-8").hex(),
                "bucket": bucket_of(fid, key),
            }
            for fid, key in BUCKET_ROWS
        ],
        "sides": sides,
        "invalid_keys": [
            {"key": key, "why": why, "refusal": refusal} for key, why, refusal in INVALID_KEYS
        ],
    }


def write_bucketing(out: Path) -> None:
    # ensure_ascii: the lone surrogates of invalid_keys have no UTF-8; \u escapes carry them.
    text = json.dumps(bucketing_table(), indent=2, ensure_ascii=True)
    (out / "bucketing.json").write_text(text + "\n")


def generate(out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    write_shared(out)
    write_bucketing(out)
    return build_all(out)


def _same_tree(a: Path, b: Path) -> bool:
    comparison = filecmp.dircmp(a, b, ignore=["generate.py", "__pycache__", "README.md"])
    if comparison.left_only or comparison.right_only or comparison.diff_files:
        return False
    _, mismatch, errors = filecmp.cmpfiles(a, b, comparison.common_files, shallow=False)
    if mismatch or errors:
        return False
    return all(_same_tree(a / d, b / d) for d in comparison.common_dirs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed files")
    args = parser.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            if not _same_tree(Path(tmp), HERE):
                print("tests/vectors is stale: run python tests/vectors/generate.py")
                return 1
        return 0
    for child in HERE.iterdir():
        if child.is_dir() and child.name != "__pycache__":
            shutil.rmtree(child)
    cases = generate(HERE)
    print(f"wrote {len(cases)} cases to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
