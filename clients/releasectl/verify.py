"""`releasectl verify remote-cdn`: the remote-validation flow, end to end, in a temporary home.

It starts a real control plane, publishes a sample feature to its CDN origin,
and points real `FeatureHost`s (a stable one and a canary one) at the origin's
URL: each step is checked on what the hosts verified and serve, and printed as
one checklist line. Nothing outside the temporary directory is touched.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from releasecontrol.client import ReleaseControlClient
from releasecontrol.errors import ReleaseControlError
from releasecontrol.host import FeatureHost
from releasecontrol.index import REMOTE_INDEX_PATH, releases_path
from releasecontrol.manifest import SourceFeature, load_feature_folder
from releasecontrol.trust import TrustStore
from releasecontrol.v1 import release_control_pb2 as pb
from releasectl._common import OneLineError, echo_json, one_line, output_option, plural
from releasectl.publish import verify_on_cdn

if TYPE_CHECKING:
    from releasectl.launcher import LocalServer

__all__ = ["verify"]

SAMPLE_FEATURE = "checkout"


class StepFailed(Exception):
    """A check did not hold; the message says what was expected and what was found."""


@dataclass
class Checklist:
    """The steps done so far; prints each as it passes (unless the output is JSON)."""

    output: str
    steps: list[dict[str, Any]] = field(default_factory=list)

    def passed(self, line: str) -> None:
        self.steps.append({"step": line, "ok": True})
        if self.output != "json":
            click.echo(f"✓ {line}")

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one step; any failure inside becomes `error: <name>: <why>` and exit 1."""
        try:
            yield
        except (StepFailed, ReleaseControlError, OSError) as exc:
            reason = exc.message if isinstance(exc, ReleaseControlError) else str(exc)
            self.fail(name, reason)

    def fail(self, name: str, reason: str) -> None:
        reason = one_line(reason)
        self.steps.append({"step": name, "ok": False, "error": reason})
        if self.output == "json":
            echo_json({"ok": False, "steps": self.steps})
        else:
            click.echo(f"✗ {name}")
        raise OneLineError(f"{name} failed: {reason}")


def write_sample(root: Path, version: str) -> Path:
    """A built feature folder: manifest.json and two files whose contents name the version."""
    folder = root / f"{SAMPLE_FEATURE}-{version}"
    (folder / "styles").mkdir(parents=True, exist_ok=True)
    (folder / "index.js").write_text(
        f"export const feature = {json.dumps(SAMPLE_FEATURE)};\n"
        f"export const version = {json.dumps(version)};\n"
    )
    (folder / "styles" / "main.css").write_text(f"/* {SAMPLE_FEATURE} {version} */\nbody {{}}\n")
    manifest = {
        "id": SAMPLE_FEATURE,
        "version": version,
        "entry": "index.js",
        "routes": [f"/{SAMPLE_FEATURE}"],
        "compat": {"host": "^2.0.0", "shared": {}},
        "assets": [{"path": "index.js"}, {"path": "styles/main.css"}],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def expect_loaded(host: FeatureHost, source: SourceFeature, channel: str) -> int:
    """Refresh `host` and check it serves `source` from `channel`, byte for byte.

    Returns the number of artifacts checked. Raises StepFailed naming the difference.
    """
    report = host.refresh()
    if not report.ok:
        reasons = "; ".join(f"{k}: {v}" for k, v in sorted(report.refused.items()))
        raise StepFailed(f"the host refused {reasons}")
    loaded = host.features.get(source.feature_id)
    if loaded is None:
        raise StepFailed(
            f"the host loaded no {source.feature_id} (it loaded {dict(report.loaded)})"
        )
    if (loaded.version, loaded.channel) != (source.version, channel):
        raise StepFailed(
            f"expected {source.feature_id} {source.version} from {channel}, "
            f"got {loaded.version} from {loaded.channel}"
        )
    expected_paths = {str(a["path"]) for a in source.manifest["assets"]}
    if set(loaded.artifacts) != expected_paths:
        raise StepFailed(
            f"expected artifacts {sorted(expected_paths)}, got {sorted(loaded.artifacts)}"
        )
    for path in sorted(expected_paths):
        served = loaded.artifact_bytes(path)
        built = source.files[path].read_bytes()
        if served != built:
            raise StepFailed(
                f"artifact {path} differs from the built file ({len(served)} bytes served, "
                f"{len(built)} built)"
            )
    return len(expected_paths)


def _publish(
    client: ReleaseControlClient,
    source: SourceFeature,
    origin_url: str,
    trust: TrustStore,
    **kwargs: Any,
) -> pb.PublishVersionResponse:
    response = client.publish(source, **kwargs)
    verify_on_cdn(
        origin_url,
        source.feature_id,
        source.version,
        sequence=response.feature.sequence,
        manifest_sha256=response.manifest_sha256,
        trust=trust,
        allow_dev_keys=True,
    )
    return response


def _served_by_dev_host(host: FeatureHost, source: SourceFeature, path: str) -> str:
    from releasecontrol.devhost import DevHostServer

    with DevHostServer(host, index_url=host.index_url, channel="stable", port=0) as app:
        url = f"{app.url}features/{source.feature_id}/{path}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            served = answer.read()
        with urllib.request.urlopen(f"{app.url}status.json", timeout=10) as answer:
            status = json.loads(answer.read())
    if served != source.files[path].read_bytes():
        raise StepFailed(f"{url} served other bytes than the built {path}")
    version = status.get("loaded", {}).get(source.feature_id, {}).get("version")
    if version != source.version:
        raise StepFailed(f"/status.json lists {source.feature_id} {version}, not {source.version}")
    return url


def run_checks(work: Path, checklist: Checklist) -> None:
    """Every step of the flow under `work`; raises OneLineError at the first that fails."""
    # Imported here: --help must work without the server's dependencies loaded.
    from releasectl.launcher import LocalServer, LocalServerError

    server = LocalServer(work / "home")
    with checklist.step("start the control plane"):
        try:
            server.start()
        except LocalServerError as exc:
            raise StepFailed(f"{exc.reason}: {exc.last_error}") from None
    try:
        _flow(work, server, checklist)
    finally:
        server.stop()


def _flow(work: Path, server: LocalServer, checklist: Checklist) -> None:
    origin_url, client = server.origin_url, server.client()
    checklist.passed(f"control plane started (gRPC {server.grpc}, CDN origin {origin_url})")
    trust = TrustStore.from_file(server.trust_path)
    index_url = origin_url + REMOTE_INDEX_PATH
    sources = work / "features"
    fid = SAMPLE_FEATURE

    def host(channel: str, name: str | None = None) -> FeatureHost:
        return FeatureHost(
            index_url,
            trust,
            state_dir=work / "hosts" / (name or channel),
            allow_insecure_dev_keys=True,
            channel=channel,
        )

    with checklist.step(f"publish {fid} 1.0.0"):
        v1 = load_feature_folder(write_sample(sources, "1.0.0"), feature_id=fid)
        response = _publish(client, v1, origin_url, trust)
    checklist.passed(
        f"published {fid} 1.0.0 as stable and verified it on the CDN "
        f"(sequence {response.feature.sequence})"
    )

    stable, canary = host("stable"), host("canary")
    with checklist.step(f"host loads {fid} 1.0.0"):
        count = expect_loaded(stable, v1, "stable")
    checklist.passed(f"host loaded {fid} 1.0.0, {plural(count, 'artifact')} verified")
    with checklist.step("canary host loads stable while no canary runs"):
        expect_loaded(canary, v1, "stable")
    checklist.passed(f"canary host loaded {fid} 1.0.0 too (no canary running)")

    with checklist.step("the dev host serves verified bytes"):
        url = _served_by_dev_host(stable, v1, "index.js")
    checklist.passed(f"dev host served the verified index.js at {url}")

    with checklist.step(f"deploy {fid} 1.1.0 as canary"):
        v2 = load_feature_folder(write_sample(sources, "1.1.0"), feature_id=fid)
        response = _publish(client, v2, origin_url, trust, channel="canary", soak_seconds=0)
    checklist.passed(
        f"deployed {fid} 1.1.0 as canary, soak 0s (sequence {response.feature.sequence})"
    )
    with checklist.step("the canary host follows the canary"):
        count = expect_loaded(canary, v2, "canary")
    checklist.passed(f"canary host follows: {fid} 1.1.0, {plural(count, 'artifact')} verified")
    with checklist.step("the stable host stays on stable"):
        expect_loaded(stable, v1, "stable")
    checklist.passed(f"stable host stays on {fid} 1.0.0")

    with checklist.step(f"promote {fid} 1.1.0"):
        promoted = client.promote(fid, "1.1.0", reason="verify remote-cdn")
    checklist.passed(f"promoted {fid} 1.1.0 to stable (sequence {promoted.feature.sequence})")
    with checklist.step("both hosts follow the promotion"):
        expect_loaded(stable, v2, "stable")
        expect_loaded(canary, v2, "stable")
    checklist.passed(f"both hosts follow: {fid} 1.1.0")

    with checklist.step(f"roll back {fid} to 1.0.0"):
        rolled = client.rollback(fid, "1.0.0", reason="verify remote-cdn")
    checklist.passed(f"rolled back {fid} to 1.0.0 (sequence {rolled.feature.sequence})")
    with checklist.step("both hosts follow the rollback"):
        count = expect_loaded(stable, v1, "stable")
        expect_loaded(canary, v1, "stable")
    checklist.passed(
        f"both hosts follow the rollback: {fid} 1.0.0, {plural(count, 'artifact')} verified"
    )

    with checklist.step("a host refuses a tampered releases.json"):
        reason = _tampered_is_refused(server.origin_dir / releases_path(fid), host, fid)
    checklist.passed(f"a new host refuses a tampered releases.json ({reason})")


def _tampered_is_refused(
    file: Path, make_host: Callable[[str, str], FeatureHost], feature_id: str
) -> str:
    original = file.read_bytes()
    tampered = original.replace(b'"active_version":"1.0.0"', b'"active_version":"1.1.0"', 1)
    if tampered == original:
        raise StepFailed(f"{file} does not name active_version 1.0.0 to tamper with")
    file.write_bytes(tampered)
    try:
        fresh = make_host("stable", "tampered")
        report = fresh.refresh()
    finally:
        file.write_bytes(original)
    if feature_id in fresh.features or feature_id not in report.refused:
        raise StepFailed(
            f"the host accepted it (loaded {dict(report.loaded)}, refused {dict(report.refused)})"
        )
    return report.refused[feature_id]


@click.group()
def verify() -> None:
    """End-to-end checks of a whole flow.

    \b
    Example:
      releasectl verify remote-cdn
    """


@verify.command("remote-cdn")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the temporary state directory (server log, origin, host caches) and print it.",
)
@click.option(
    "--index-url",
    metavar="URL",
    default=None,
    help="Instead of the flow in a temporary directory, check the CDN serving this "
    "remote-index.json as hosts see it (after `releasectl origin rebuild`, say).",
)
@click.option(
    "--allow-dev-keys",
    is_flag=True,
    help="With --index-url: count signatures by dev keys (local development only).",
)
@output_option
@click.pass_context
def remote_cdn(
    ctx: click.Context, keep: bool, index_url: str | None, allow_dev_keys: bool, output: str
) -> None:
    """Publish to a local CDN origin and check that hosts load and verify it, end to end.

    In a temporary directory: starts a control plane, publishes a sample
    feature, checks a host loaded that version with every hash verified,
    deploys a canary and checks a canary host follows while a stable host
    stays, promotes and rolls back and checks both follow, and checks that a
    tampered releases.json is refused. Exits 0 only when all of it held; else
    names the failing step in one line and exits 1.

    With --index-url, nothing is published: a stable and a canary host read that
    CDN, verify every signature and hash with the trust file, and load every
    feature; it exits 1 naming whatever they refuse.

    \b
    Example:
      releasectl verify remote-cdn --keep
      releasectl verify remote-cdn --index-url https://cdn.example.com/remote-index.json
    """
    if index_url is not None:
        if keep:
            raise click.UsageError("--keep applies to the flow, not to --index-url", ctx)
        from releasectl.release import remote_status

        remote_status(ctx, index_url, (), allow_dev_keys, output)
        return
    if allow_dev_keys:
        raise click.UsageError("--allow-dev-keys applies to --index-url only", ctx)
    # Refusals are expected in one step and every outcome is on the checklist:
    # keep the host library's warnings off the terminal.
    logging.getLogger("releasecontrol").addHandler(logging.NullHandler())
    work = Path(tempfile.mkdtemp(prefix="releasectl-verify-"))
    checklist = Checklist(output)
    try:
        run_checks(work, checklist)
    finally:
        if keep:
            click.echo(f"kept {work}", err=output == "json")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if output == "json":
        echo_json({"ok": True, "steps": checklist.steps, "kept": str(work) if keep else None})
    else:
        click.echo("all checks passed")
