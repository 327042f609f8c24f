"""`releasectl publish`: stream a built feature folder to the control plane, then check the CDN.

After the server answers, the files hosts will read are fetched back from the
origin's public URL (the one the server reports) and verified as a host would:
`remote-index.json` and the feature's `releases.json` signed by trusted keys and
unexpired, the index pinning that exact `releases.json`, a sequence no lower
than the one the server just committed, and the manifest with the SHA-256 the
index names. `verify_on_cdn` is that check, shared with `releasectl verify`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import click

from releasecontrol.client import ChannelName, ReleaseControlClient, find_home
from releasecontrol.errors import ConfigError, ReleaseControlError, VerificationError
from releasecontrol.fetch import Fetcher
from releasecontrol.index import REMOTE_INDEX_PATH
from releasecontrol.manifest import SourceFeature, load_feature_folder, sha256_hex
from releasecontrol.root import root_path
from releasecontrol.shards import shard_path
from releasecontrol.trust import DEV_TRUST_FILE, ENV_ALLOW_DEV_KEYS, TrustStore
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.verifier import Verifier
from releasectl._common import (
    Change,
    OneLineError,
    change_options,
    describe_transition,
    echo_json,
    feature_json,
    feature_option,
    one_line,
    open_client,
    output_option,
    printable,
    soak_option,
    state_dir,
    transition_json,
)

# What the read-back accepts per file: index files and manifests are small.
MAX_INDEX_BYTES = 16 * 1024 * 1024
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
_TRUE = ("1", "true", "yes", "on")


@click.command()
@feature_option
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The built feature folder holding manifest.json; default: ./features/FEATURE.",
)
@click.option(
    "--channel",
    type=click.Choice(["stable", "canary"]),
    default="stable",
    show_default=True,
    help="Where the new version goes.",
)
@soak_option
@click.option(
    "--no-verify",
    is_flag=True,
    help="Skip reading remote-index.json, releases.json and the manifest back from the "
    "CDN and verifying their signatures and hashes.",
)
@change_options
@output_option
@click.pass_context
def publish(
    ctx: click.Context,
    feature: str,
    folder: Path | None,
    channel: str,
    soak: int | None,
    no_verify: bool,
    output: str,
    change: Change,
) -> None:
    """Publish the version in a feature's manifest.json, then verify it on the CDN.

    Streams the manifest and the built files to the control plane, which signs
    and publishes them to the CDN origin.

    Sizes and SHA-256 hashes missing from the manifest are filled in from the
    files; one that is listed but does not match its file is refused.

    Then reads remote-index.json, the feature's releases.json and the manifest
    back from the origin's public URL and verifies them as a host would, with
    the trust file (FEATURE_TRUST_PUBLIC_KEYS_PATH or _JSON, else the dev
    trust.json in the state directory); any mismatch fails the command
    (--no-verify skips this).

    \b
    Example:
      releasectl publish --feature checkout --channel canary --soak 30m
    """
    if soak is not None and channel != "canary":
        raise click.UsageError("--soak applies to --channel canary only", ctx)
    folder = Path("features") / feature if folder is None else folder
    try:
        source = load_feature_folder(folder, feature_id=feature)
    except OSError as exc:
        raise OneLineError(f"cannot read {exc.filename or folder}: {exc.strerror or exc}") from None

    with open_client(ctx) as client:
        response = _send(client, source, channel, soak, change)

    published = printable(
        _already_line(source, response, channel)
        if response.already_published
        else describe_transition(response.transition, response.feature)
    )
    check: CdnCheck | None = None
    # A server that does not say where its origin is (an older one) cannot be read back.
    if not no_verify and response.origin_public_url:
        try:
            trust = trust_for_checks(state_dir(ctx))
            check = verify_on_cdn(
                response.origin_public_url,
                source.feature_id,
                source.version,
                sequence=response.feature.sequence,
                manifest_sha256=response.manifest_sha256,
                trust=trust[0],
                allow_dev_keys=trust[1],
                expected_channels=_channels(response.feature),
            )
        except ReleaseControlError as exc:
            if output != "json":
                click.echo(published)
            raise OneLineError(
                f"{source.feature_id} {source.version} is committed (sequence "
                f"{response.feature.sequence}) but not verified on the CDN at "
                f"{response.origin_public_url}: {one_line(exc.message)}"
            ) from None

    if output == "json":
        echo_json(
            {
                "feature_id": source.feature_id,
                "version": source.version,
                "already_published": response.already_published,
                "manifest_sha256": response.manifest_sha256,
                "transition": (
                    transition_json(response.transition)
                    if response.HasField("transition")
                    else None
                ),
                "feature": feature_json(response.feature, datetime.now(UTC)),
                "cdn": check.to_json() if check is not None else None,
            }
        )
    else:
        click.echo(published)
        if check is not None:
            click.echo(check.line())


def _already_line(source: SourceFeature, response: pb.PublishVersionResponse, channel: str) -> str:
    """What a publish of a version published before (same manifest) says: nothing was done,
    and, when the version is not where --channel asked, that it stayed where it is and
    which command moves it."""
    fid, version, feature = source.feature_id, source.version, response.feature
    line = (
        f"already published {fid} {version}, nothing to do (manifest sha256 "
        f"{response.manifest_sha256[:12]}…, sequence {feature.sequence})"
    )
    canary = feature.canary.version if feature.HasField("canary") else ""
    where = "stable" if feature.stable_version == version else "canary" if canary == version else ""
    if where == channel:
        return line + f"; it is the {where} version"
    flags = f"--feature {fid} --version {version}"
    if where:
        line += f"; it stays the {where} version, not {channel}"
    else:
        line += f"; it is in no channel (stable is {feature.stable_version or 'none'})"
    if channel == "canary" and where != "stable":
        return line + f": deploy it with `releasectl release canary {flags}`"
    if channel == "canary":
        return line + ": a canary must be another version"
    if where == "canary":
        return line + f": promote it with `releasectl release promote {flags}`"
    return line + f": point stable at it with `releasectl channel fallback {flags} --to stable`"


def _channels(feature: pb.Feature) -> tuple[str | None, str | None]:
    canary = feature.canary.version if feature.HasField("canary") else ""
    return (feature.stable_version or None, canary or None)


def _send(
    client: ReleaseControlClient,
    source: SourceFeature,
    channel: str,
    soak: int | None,
    change: Change,
) -> pb.PublishVersionResponse:
    target: ChannelName = "canary" if channel == "canary" else "stable"
    if not sys.stderr.isatty():
        return client.publish(source, channel=target, soak_seconds=soak, **change.kwargs())
    label = f"uploading {source.feature_id} {source.version}"
    with click.progressbar(length=source.total_bytes, label=label, file=sys.stderr) as bar:
        shown = 0

        def progress(sent: int, total: int) -> None:
            nonlocal shown
            bar.update(sent - shown)
            shown = sent

        return client.publish(
            source, channel=target, soak_seconds=soak, on_progress=progress, **change.kwargs()
        )


# -- reading the result back from the CDN ----------------------------------------------


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def trust_for_checks(
    home: Path | None, environ: Mapping[str, str] | None = None
) -> tuple[TrustStore, bool]:
    """The trust store a CLI check verifies with, and whether it may count dev keys.

    FEATURE_TRUST_PUBLIC_KEYS_JSON / _PATH when set (dev keys only with
    FEATURE_ALLOW_INSECURE_DEV_KEYS); else the dev trust file the local server
    made, `<home>/keys/trust.json`, whose dev key is this machine's own and so
    is accepted. Raises ConfigError when there is neither.
    """
    env = os.environ if environ is None else environ
    configured = TrustStore.from_environment(env)
    if configured is not None:
        return configured, _flag(env.get(ENV_ALLOW_DEV_KEYS))
    local = (home or find_home(env).path) / "keys" / DEV_TRUST_FILE
    if local.is_file():
        return TrustStore.from_file(local), True
    raise ConfigError(
        f"no trust file to verify the CDN with: set FEATURE_TRUST_PUBLIC_KEYS_PATH "
        f"(or _JSON), or run `releasectl dev` to make {local}"
    )


@dataclass(frozen=True)
class CdnCheck:
    """What the read-back found on the CDN, all of it verified."""

    url: str
    """The origin's public URL (ends in `/`)."""
    feature_id: str
    version: str
    remote_index_sequence: int
    releases_sequence: int
    manifest_sha256: str
    signed_by: tuple[str, ...]
    """The keyids whose signatures counted on releases.json."""

    def line(self) -> str:
        return (
            f"verified on the CDN: {self.feature_id} {self.version} at {self.url} "
            f"(remote-index.json sequence {self.remote_index_sequence}, releases.json "
            f"sequence {self.releases_sequence}, manifest sha256 {self.manifest_sha256[:12]}…)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "verified": True,
            "url": self.url,
            "remote_index_sequence": self.remote_index_sequence,
            "releases_sequence": self.releases_sequence,
            "manifest_sha256": self.manifest_sha256,
            "signed_by": list(self.signed_by),
        }


def _check_usable(trust: TrustStore, allow_dev_keys: bool) -> None:
    if allow_dev_keys:
        return
    try:
        trust.without_dev_keys()
    except ValueError as exc:
        raise ConfigError(
            f"the trust file's keys are dev keys, refused here ({exc}); set "
            f"{ENV_ALLOW_DEV_KEYS}=1 for a development CDN, or trust production keys"
        ) from None


def verify_on_cdn(
    base_url: str,
    feature_id: str,
    version: str,
    *,
    sequence: int,
    manifest_sha256: str,
    trust: TrustStore,
    allow_dev_keys: bool = False,
    expected_channels: tuple[str | None, str | None] | None = None,
    fetcher: Fetcher | None = None,
    now: datetime | None = None,
) -> CdnCheck:
    """Fetch what hosts will read for `feature_id` under `base_url` and verify it.

    Checks, in order, as a host does (`releasecontrol.verifier`): remote-index.json
    (following the roots from `trust`; dev keys only with `allow_dev_keys`), the
    feature's shard, which lists the feature, and its releases.json; then that it
    has a sequence of at least `sequence`, and
    lists `version` with `manifest_sha256`; at exactly `sequence`, its stable
    and canary are `expected_channels`; the manifest's bytes hash to
    `manifest_sha256`. Raises VerificationError (a FetchError for HTTP
    failures) with one sentence naming the file and both values, or ConfigError
    when the trust store holds nothing allowed.
    """
    fetch = fetcher or Fetcher(timeout_seconds=10.0)
    moment = now or datetime.now(UTC)
    _check_usable(trust, allow_dev_keys)
    verifier = Verifier(trust, allow_dev_keys=allow_dev_keys)
    base = base_url if base_url.endswith("/") else base_url + "/"

    def get(path: str, max_bytes: int) -> bytes:
        return fetch.get(urljoin(base, path), max_bytes=max_bytes).body

    top = verifier.top(
        get(REMOTE_INDEX_PATH, MAX_INDEX_BYTES),
        moment,
        lambda version: get(root_path(version), MAX_INDEX_BYTES),
    ).model
    name, shard_pin = top.shard_of(feature_id)
    pin = None
    if shard_pin is not None:
        path = shard_path(top.bits, name)
        shard = verifier.shard(top, name, get(path, shard_pin.length + 1), moment).model
        pin = shard.features.get(feature_id)
    if pin is None:
        raise VerificationError(
            f"{REMOTE_INDEX_PATH} (sequence {top.sequence}) does not list feature {feature_id!r}"
        )
    what = f"features/{feature_id}/releases.json"
    signed = verifier.releases(feature_id, pin, get(what, pin.length + 1), moment)
    releases = signed.model
    if releases.sequence < sequence:
        raise VerificationError(
            f"{what} is at sequence {releases.sequence}, behind the {sequence} just "
            "committed: the CDN serves a stale copy"
        )
    listed = {v.version: v.manifest_sha256 for v in releases.versions}
    if version not in listed:
        raise VerificationError(
            f"{what} (sequence {releases.sequence}) does not list version {version}"
        )
    if listed[version] != manifest_sha256:
        raise VerificationError(
            f"{what} lists {version} with manifest sha256 {listed[version][:12]}…, but the "
            f"server published {manifest_sha256[:12]}…"
        )
    if expected_channels is not None and releases.sequence == sequence:
        found = (releases.stable, releases.canary)
        if found != expected_channels:
            raise VerificationError(
                f"{what} (sequence {sequence}) has stable {found[0]} and canary {found[1]}, "
                f"but the server committed stable {expected_channels[0]} and canary "
                f"{expected_channels[1]}"
            )

    manifest_url = urljoin(base, f"features/{feature_id}/{version}/manifest.json")
    manifest = fetch.get(manifest_url, max_bytes=MAX_MANIFEST_BYTES).body
    if sha256_hex(manifest) != manifest_sha256:
        raise VerificationError(
            f"the manifest of {feature_id} {version} has sha256 {sha256_hex(manifest)[:12]}…, "
            f"but {what} names {manifest_sha256[:12]}…"
        )
    return CdnCheck(
        url=base,
        feature_id=feature_id,
        version=version,
        remote_index_sequence=top.sequence,
        releases_sequence=releases.sequence,
        manifest_sha256=manifest_sha256,
        signed_by=tuple(sorted(signed.keyids)),
    )
