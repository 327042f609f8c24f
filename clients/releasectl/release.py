"""`releasectl release`: canary, promote, rollback, and where every feature stands."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from releasecontrol.errors import ConfigError, InvalidArgument
from releasecontrol.v1 import release_control_pb2 as pb
from releasecontrol.weights import parse_percent, parse_steps
from releasectl._common import (
    DURATION,
    HISTORY_HEADERS,
    STATUS_HEADERS,
    Change,
    OneLineError,
    change_options,
    echo_json,
    feature_json,
    feature_option,
    history_row,
    open_client,
    output_option,
    print_transition,
    printable,
    render_table,
    rfc3339,
    server_now,
    short_time,
    soak_option,
    state_dir,
    status_row,
    transition_json,
    validate_feature_option,
    version_option,
)

if TYPE_CHECKING:
    from releasecontrol.host import LoadedFeature

ENV_REMOTE_INDEX_URL = "FEATURE_REMOTE_INDEX_URL"


@click.group()
def release() -> None:
    """Canary, promote, rollback, the status of every feature and its history.

    \b
    Example:
      releasectl release status
      releasectl release history --feature checkout
    """


def _percent(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_percent(value, f"--{param.name}")
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


def _steps(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...]:
    if value is None:
        return ()
    try:
        return parse_steps(value, "--steps")
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, ctx, param) from None


percent_option = click.option(
    "--percent",
    metavar="PERCENT",
    callback=_percent,
    help="Serve the canary to this share of users (0-100, up to two decimals), chosen by "
    "each host's bucketing key; without it only hosts that opt into the canary channel get it.",
)


@release.command("canary")
@feature_option
@version_option
@soak_option
@percent_option
@click.option(
    "--steps",
    metavar="P1,P2,...",
    callback=_steps,
    help="A ramp of increasing percentages (e.g. 5,25,50,100): the server moves to the next "
    "each time one held --step-soak, and after a last step of 100 promotes. The soak is then "
    "the whole ramp.",
)
@click.option(
    "--step-soak",
    type=DURATION,
    default=None,
    help="How long each step of --steps holds (e.g. 10m).",
)
@click.option(
    "--min-loads",
    type=click.IntRange(0, 1_000_000_000),
    default=0,
    help="Soak by exposure: the canary loads hosts must report (beacons) before it may be "
    "promoted, besides the soak time.",
)
@change_options
@output_option
@click.pass_context
def canary(
    ctx: click.Context,
    feature: str,
    version: str,
    soak: int | None,
    percent: int | None,
    steps: tuple[int, ...],
    step_soak: int | None,
    min_loads: int,
    output: str,
    change: Change,
) -> None:
    """Deploy a published version as canary and start its soak timer.

    \b
    Example:
      releasectl release canary --feature checkout --version 1.3.0 --soak 30m
      releasectl release canary --feature checkout --version 1.3.0 --percent 5
      releasectl release canary --feature checkout --version 1.3.0 \\
          --steps 5,25,50,100 --step-soak 10m
      releasectl release canary --feature checkout --version 1.3.0 --soak 30m --min-loads 5000
    """
    if steps and (soak is not None or percent is not None):
        raise click.UsageError(
            "--steps sets both the weight (its first step) and the soak (the whole ramp); "
            "leave out --soak and --percent",
            ctx,
        )
    if bool(steps) != (step_soak is not None):
        raise click.UsageError(
            "--steps and --step-soak go together: e.g. --steps 5,25,50,100 --step-soak 10m",
            ctx,
        )
    with open_client(ctx) as client:
        response = client.deploy_canary(
            feature,
            version,
            soak_seconds=soak,
            weight=percent or 0,
            steps=steps,
            step_seconds=step_soak or 0,
            min_loads=min_loads,
            **change.kwargs(),
        )
    print_transition(response.transition, response.feature, output)


@release.command("set-weight")
@feature_option
@click.option(
    "--percent",
    metavar="PERCENT",
    required=True,
    callback=_percent,
    help="The share of users the running canary serves (0-100, up to two decimals).",
)
@change_options
@output_option
@click.pass_context
def set_weight(
    ctx: click.Context,
    feature: str,
    percent: int,
    output: str,
    change: Change,
) -> None:
    """Serve the running canary to a share of users; stops a --steps ramp.

    Users stay on their side while the weight only grows; lowering it sends those
    above the new weight back to stable.

    \b
    Example:
      releasectl release set-weight --feature checkout --percent 25 --reason "errors flat"
    """
    with open_client(ctx) as client:
        response = client.set_canary_weight(feature, percent, **change.kwargs())
    print_transition(response.transition, response.feature, output)


@release.command("promote")
@feature_option
@version_option
@click.option(
    "--skip-soak",
    is_flag=True,
    help="Promote before the soak is over; needs --reason.",
)
@change_options
@output_option
@click.pass_context
def promote(
    ctx: click.Context,
    feature: str,
    version: str,
    skip_soak: bool,
    output: str,
    change: Change,
) -> None:
    """Promote the canary to stable once its soak is over.

    \b
    Example:
      releasectl release promote --feature checkout --version 1.3.0 --ticket CHG-42
    """
    if skip_soak and not change.reason.strip():
        raise click.UsageError(
            "--skip-soak needs --reason: say why the soak cannot be waited out, "
            'e.g. --reason "fix for INC-7"',
            ctx,
        )
    with open_client(ctx) as client:
        response = client.promote(feature, version, skip_soak=skip_soak, **change.kwargs())
    print_transition(response.transition, response.feature, output)


@release.command("rollback")
@feature_option
@version_option
@change_options
@output_option
@click.pass_context
def rollback(
    ctx: click.Context,
    feature: str,
    version: str,
    output: str,
    change: Change,
) -> None:
    """Roll stable back to a version that was stable before; clears the canary.

    \b
    Example:
      releasectl release rollback --feature checkout --version 1.2.0 --reason "INC-7"
    """
    with open_client(ctx) as client:
        response = client.rollback(feature, version, **change.kwargs())
    print_transition(response.transition, response.feature, output)


@release.command("status")
@click.option(
    "--feature",
    "-f",
    "features",
    multiple=True,
    metavar="FEATURE",
    callback=validate_feature_option,
    help="Only this feature (repeatable); default: every feature.",
)
@click.option(
    "--index-url",
    metavar="URL",
    default=None,
    help="Instead of asking the control plane, show what hosts reading this "
    "remote-index.json would load, after verifying every signature and hash.",
)
@click.option(
    "--allow-dev-keys",
    is_flag=True,
    help="With --index-url: count signatures by dev keys (local development only).",
)
@click.option(
    "--watch",
    "-w",
    is_flag=True,
    help="Keep following the control plane's watch feed and redraw the table on every "
    "change (one JSON object a line with --output json) until Ctrl-C.",
)
@click.option(
    "--analysis",
    "-a",
    "with_analysis",
    is_flag=True,
    help="Also what hosts report: each canary's verdict, its loads against a soak by "
    "exposure, and the share of hosts on each version (reach).",
)
@output_option
@click.pass_context
def status(
    ctx: click.Context,
    features: tuple[str, ...],
    index_url: str | None,
    allow_dev_keys: bool,
    watch: bool,
    with_analysis: bool,
    output: str,
) -> None:
    """Show the stable and canary version of every feature, from the control plane or a CDN.

    With --index-url, nothing is asked of the control plane: a stable and a
    canary host (with a throwaway state directory) read that remote-index.json,
    verify it with the trust file (FEATURE_TRUST_PUBLIC_KEYS_PATH or _JSON,
    else the state directory's keys/trust.json) and load every feature. Exits 1
    with the reasons if they refused anything.

    With --watch, the table is drawn from the watch feed (WatchReleases) and
    drawn again on every change, with a line saying what changed, until Ctrl-C.

    \b
    Example:
      releasectl release status --feature checkout --output json
      releasectl release status --watch
      releasectl release status --index-url https://cdn.example.com/features/remote-index.json
    """
    if allow_dev_keys and index_url is None:
        raise click.UsageError("--allow-dev-keys applies to --index-url only", ctx)
    if index_url is not None:
        if watch:
            raise click.UsageError("--watch follows the control plane, not --index-url", ctx)
        remote_status(ctx, index_url, features, allow_dev_keys, output)
        return
    if watch:
        from releasectl.watch import watch_status  # here: plain `status` does not need it

        watch_status(ctx, features, output)
        return
    if with_analysis and (watch or index_url is not None):
        raise click.UsageError("--analysis goes with the control plane's status only", ctx)
    with open_client(ctx) as client:
        response = client.get_status(features)
        found = (
            {f.feature_id: client.get_analysis(f.feature_id) for f in response.features}
            if with_analysis
            else {}
        )
    now = server_now(response)
    if output == "json":
        rows = [feature_json(f, now) for f in response.features]
        for row in rows if with_analysis else ():
            row["analysis"] = _analysis_json(found[row["feature_id"]])
        echo_json(rows)
    elif not response.features:
        click.echo("no features yet: publish one with `releasectl publish --feature F`")
    elif with_analysis:
        click.echo(
            render_table(
                (*STATUS_HEADERS, "VERDICT", "LOADS", "REACH"),
                [
                    [*status_row(f, now), *_analysis_cells(found[f.feature_id])]
                    for f in response.features
                ],
            )
        )
    else:
        click.echo(render_table(STATUS_HEADERS, [status_row(f, now) for f in response.features]))


def _analysis_cells(found: pb.GetAnalysisResponse) -> list[str]:
    """VERDICT, LOADS (the canary's, against a soak by exposure) and REACH cells."""
    if not found.enabled:
        return ["off", "-", "-"]
    loads = "-"
    if found.canary_version:
        loads = f"{found.canary_loads:,}"
        if found.min_loads:
            loads += f"/{found.min_loads:,}"
    reach = " ".join(f"{r.version} {r.share:.0%}" for r in found.reach) or "-"
    return [found.verdict or "-", loads, reach]


@release.command("history")
@click.option(
    "--feature",
    "-f",
    metavar="FEATURE",
    default=None,
    callback=validate_feature_option,
    help="Only this feature's changes; default: every feature's.",
)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(1, 100_000),
    default=20,
    show_default=True,
    help="At most this many changes, newest first.",
)
@output_option
@click.pass_context
def history(ctx: click.Context, feature: str | None, limit: int, output: str) -> None:
    """Show the audit history, newest first: what changed, when, by whom and why.

    ACTOR is who the change was recorded for (--actor, or else the caller).
    When the authenticated caller was someone else, it follows in brackets:
    "alice (by ci-bot)".

    \b
    Example:
      releasectl release history --feature checkout --limit 5
      releasectl release history --output json
    """
    transitions: list[pb.Transition] = []
    with open_client(ctx) as client:
        token = ""
        while len(transitions) < limit:
            page = client.list_transitions(
                feature or "", page_size=min(limit - len(transitions), 1000), page_token=token
            )
            transitions += page.transitions
            token = page.next_page_token
            if not token:
                break
    transitions = transitions[:limit]
    if output == "json":
        echo_json([transition_json(t) for t in transitions])
    elif not transitions:
        click.echo("no changes yet: publish a version with `releasectl publish --feature F`")
    else:
        click.echo(render_table(HISTORY_HEADERS, [history_row(t) for t in transitions]))


# -- analysis ------------------------------------------------------------------------------------


@release.command("analysis")
@feature_option
@output_option
@click.pass_context
def analysis(ctx: click.Context, feature: str, output: str) -> None:
    """Show how the running canary compares with stable, from what hosts report, and the share
    of hosts on each version (reach).

    \b
    Example:
      releasectl release analysis --feature checkout
    """
    with open_client(ctx) as client:
        found = client.get_analysis(feature)
    if output == "json":
        echo_json(_analysis_json(found))
        return
    if not found.enabled:
        click.echo(
            f"{feature}: no analysis: the control plane takes no beacons (set beacon_keys); "
            "canaries are judged by time alone"
        )
        return
    if not found.canary_version:
        click.echo(f"{feature}: no canary is running (stable {found.stable_version or '-'})")
    else:
        click.echo(
            printable(
                f"{feature}: canary {found.canary_version} vs stable {found.stable_version}: "
                f"{found.verdict}, {found.reason}"
            )
        )
        if found.min_loads:
            click.echo(f"  soak by exposure: {found.canary_loads:,} of {found.min_loads:,} loads")
    if found.reach:
        shares = ", ".join(f"{r.version} {r.share:.0%}" for r in found.reach)
        click.echo(f"  reach (last 10 min): {shares}")


def _analysis_json(found: pb.GetAnalysisResponse) -> dict[str, Any]:
    return {
        "feature_id": found.feature_id,
        "enabled": found.enabled,
        "canary": found.canary_version or None,
        "stable": found.stable_version or None,
        "verdict": found.verdict or None,
        "reason": found.reason or None,
        "canary_loads": found.canary_loads,
        "canary_failures": found.canary_failures,
        "stable_loads": found.stable_loads,
        "stable_failures": found.stable_failures,
        "min_loads": found.min_loads,
        "judged_at": rfc3339(found.judged_at, present=found.HasField("judged_at")),
        "reach": {r.version: {"share": r.share, "batches": r.batches} for r in found.reach},
    }


# -- four eyes ------------------------------------------------------------------------------------

APPROVAL_HEADERS = ("ID", "FEATURE", "WAITS FOR", "ASKED BY", "REASON", "STATE", "EXPIRES")


def _approval_json(a: pb.Approval) -> dict[str, Any]:
    return {
        "id": a.id,
        "feature_id": a.feature_id,
        "what": a.what,
        "version": a.version,
        "requested_by": a.requested_by,
        "actor": a.actor,
        "reason": a.reason,
        "ticket": a.ticket,
        "requested_at": rfc3339(a.requested_at, present=a.HasField("requested_at")),
        "expires_at": rfc3339(a.expires_at, present=a.HasField("expires_at")),
        "state": a.state,
        "approved_by": a.approved_by or None,
        "approved_at": rfc3339(a.approved_at, present=a.HasField("approved_at")),
        "transition_id": a.transition_id or None,
    }


def _approval_row(a: pb.Approval) -> list[str]:
    state = f"approved by {a.approved_by}" if a.state == "approved" else a.state
    return [
        str(a.id),
        a.feature_id,
        a.what,
        a.requested_by,
        a.reason or "-",
        state,
        short_time(a.expires_at, present=a.HasField("expires_at")),
    ]


@release.command("approvals")
@click.option(
    "--feature",
    "-f",
    metavar="FEATURE",
    default=None,
    callback=validate_feature_option,
    help="Only this feature's requests; default: every feature's.",
)
@click.option("--all", "include_done", is_flag=True, help="Also those approved or expired.")
@output_option
@click.pass_context
def approvals(ctx: click.Context, feature: str | None, include_done: bool, output: str) -> None:
    """List changes waiting for a second pair of eyes (features under require_approval).

    \b
    Example:
      releasectl release approvals
      releasectl release approve --id 7
    """
    with open_client(ctx) as client:
        found = list(client.list_approvals(feature or "", include_done=include_done).approvals)
    if output == "json":
        echo_json([_approval_json(a) for a in found])
    elif not found:
        click.echo("no change waits for approval")
    else:
        click.echo(render_table(APPROVAL_HEADERS, [_approval_row(a) for a in found]))


@release.command("approve")
@click.option(
    "--id",
    "approval_id",
    type=click.IntRange(1),
    required=True,
    help="The request to approve (`release approvals` lists them).",
)
@output_option
@click.pass_context
def approve(ctx: click.Context, approval_id: int, output: str) -> None:
    """Approve a change another principal asked for; it is then applied as they asked it.

    You need the approver role and must not be the one who asked (four eyes).

    \b
    Example:
      releasectl release approve --id 7
    """
    with open_client(ctx) as client:
        response = client.approve(approval_id)
    print_transition(response.transition, response.feature, output)


# -- what hosts at a remote index would load --------------------------------------------------

REMOTE_HEADERS = ("FEATURE", "STABLE", "CANARY", "SEQ", "ARTIFACTS", "VERIFIED")


def _host_environment(ctx: click.Context, index_url: str) -> dict[str, str]:
    # Imported here, like the host library: plain `release status` does not need them.
    from releasecontrol.trust import DEV_TRUST_FILE, ENV_TRUST_JSON, ENV_TRUST_PATH

    env = dict(os.environ)
    env[ENV_REMOTE_INDEX_URL] = index_url
    if not (env.get(ENV_TRUST_JSON, "").strip() or env.get(ENV_TRUST_PATH, "").strip()):
        local = state_dir(ctx) / "keys" / DEV_TRUST_FILE
        if not local.is_file():
            raise ConfigError(
                f"no trust file to verify {index_url} with: set {ENV_TRUST_PATH} (or "
                f"{ENV_TRUST_JSON}), or run `releasectl dev` to make {local}"
            )
        env[ENV_TRUST_PATH] = str(local)
    return env


def _loaded_json(loaded: LoadedFeature | None) -> dict[str, Any] | None:
    if loaded is None:
        return None
    return {
        "version": loaded.version,
        "channel": loaded.channel,
        "manifest_sha256": loaded.manifest_sha256,
        "artifacts": {str(a["path"]): str(a["sha256"]) for a in loaded.manifest["assets"]},
    }


def _is_file(name: str) -> bool:
    """Whether a refusal's key names a file (remote-index.json, a shard), not a feature."""
    return name.endswith(".json")


def remote_status(
    ctx: click.Context,
    index_url: str,
    only: tuple[str, ...],
    allow_dev_keys: bool,
    output: str,
) -> None:
    """What a stable and a canary host reading `index_url` load, verified (only the features
    in `only`, when given), as a table or JSON; OneLineError naming what they refuse."""
    import tempfile  # here, like the host library: `release status` alone starts quicker

    from releasecontrol.host import FeatureHost

    env = _host_environment(ctx, index_url)
    extra: dict[str, Any] = {"allow_insecure_dev_keys": True} if allow_dev_keys else {}
    if only:
        extra["features"] = only  # hosts then read only the shards of those features
    # Refusals are reported below, once; keep the host library's warnings off the terminal.
    logging.getLogger("releasecontrol").addHandler(logging.NullHandler())
    with tempfile.TemporaryDirectory(prefix="releasectl-status-") as tmp:
        hosts = {
            channel: FeatureHost.from_environment(
                env, state_dir=Path(tmp) / channel, channel=channel, **extra
            )
            for channel in ("stable", "canary")
        }
        reports = {channel: host.refresh() for channel, host in hosts.items()}
        stable, canary = hosts["stable"].features, hosts["canary"].features

    # name -> channel -> reason; one sentence when both hosts refused it for the same reason.
    by_name: dict[str, dict[str, str]] = {}
    for channel, report in reports.items():
        for name, reason in report.refused.items():
            # A feature id, or a file refused for several features (the top level, a shard).
            if not only or name in only or _is_file(name):
                by_name.setdefault(name, {})[channel] = reason
    refused: dict[str, str] = {}
    for name, reasons in sorted(by_name.items()):
        if len(set(reasons.values())) == 1:
            refused[name] = next(iter(reasons.values()))
        else:
            refused.update({f"{name} ({ch} host)": why for ch, why in reasons.items()})
    ids = sorted(set(stable) | set(canary) | {n for n in by_name if not _is_file(n)})
    if only:
        ids = [fid for fid in ids if fid in only]

    def running_canary(fid: str) -> LoadedFeature | None:
        loaded = canary.get(fid)
        return loaded if loaded is not None and loaded.channel == "canary" else None

    def sequence(fid: str) -> int | None:
        seen = stable.get(fid) or canary.get(fid)
        return seen.releases_sequence if seen is not None else None

    if output == "json":
        echo_json(
            {
                "index_url": index_url,
                "remote_sequence": reports["stable"].remote_sequence,
                "root_version": reports["stable"].root_version,
                "features": [
                    {
                        "feature_id": fid,
                        "sequence": sequence(fid),
                        "stable": _loaded_json(stable.get(fid)),
                        "canary": _loaded_json(running_canary(fid)),
                        "refused": fid in by_name,
                    }
                    for fid in ids
                ],
                "refused": refused,
            }
        )
    elif ids:
        rows = []
        for fid in ids:
            s, c, seq = stable.get(fid), running_canary(fid), sequence(fid)
            rows.append(
                [
                    fid,
                    s.version if s else "-",
                    c.version if c else "-",
                    str(seq) if seq is not None else "-",
                    str(len(s.artifacts)) if s else "-",
                    "refused" if fid in by_name else "yes",
                ]
            )
        click.echo(render_table(REMOTE_HEADERS, rows))
    elif not refused:
        click.echo(f"no features at {index_url}")
    if refused:
        text = "; ".join(
            reason if reason.startswith(name) else f"{name}: {reason}"
            for name, reason in refused.items()
        )
        hint = ""
        if not allow_dev_keys and "dev key" in text:
            hint = " (pass --allow-dev-keys for a local dev CDN)"
        raise OneLineError(f"hosts at {index_url} would refuse {text}{hint}")
