"""`releasectl keys`: the root of trust and the online keys (host protocol v2).

Hosts pin the root keys (trust.json). Roots (`roots/<N>.json`) list the online
keys the server signs with; each new root is signed by the root keys of the
previous one and its own, so hosts follow the chain without being touched.

    releasectl keys show                           what the keys folder holds
    releasectl keys rotate                         a new online key and root N+1
    releasectl keys sign-root root-3.json --root-key k.pem    the offline step
    releasectl keys install-root root-3.json       put a fully signed root in place
    releasectl keys init-root --root-key ... --online-key ... a production root 1
    releasectl keys generate --out key.pem         an Ed25519 key file

In development (`releasectl dev`) the root key sits in the keys folder, so
`keys rotate` signs and installs root N+1 at once and the running server signs
everything again with the new key within seconds. In production the root keys
stay offline: `keys rotate` writes the proposal, `keys sign-root` is run where
the root keys are, and `keys install-root` puts the result in place.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from releasecontrol.errors import ConfigError
from releasecontrol.files import atomic_create, atomic_write
from releasecontrol.index import Envelope
from releasecontrol.keyfiles import (
    DEV_ROOT_KEY_FILE,
    DEV_SIGNING_KEY_FILE,
    DEV_TRUST_FILE,
    ROOT_EXPIRY,
    ROOTS_DIR,
    add_signatures,
    describe_root,
    dev_key_pem,
    install_root,
    propose_rotation,
    read_roots,
    root_status,
    verify_roots,
)
from releasecontrol.root import Root
from releasecontrol.trust import SigningKey, TrustedKey, TrustStore, short_keyid
from releasectl._common import OneLineError, echo_json, output_option, state_dir

__all__ = ["keys"]


class _Paths:
    """Where the keys live: a keys folder's defaults, each overridable."""

    def __init__(
        self,
        ctx: click.Context,
        root_dir: Path | None,
        trust: Path | None,
        signing_key: Path | None,
    ) -> None:
        self.folder = state_dir(ctx) / "keys"
        self.root_dir = root_dir or self.folder / ROOTS_DIR
        self.trust = trust or self.folder / DEV_TRUST_FILE
        self.signing_key = signing_key or self.folder / DEV_SIGNING_KEY_FILE

    def load(self) -> tuple[TrustStore, Root]:
        """The trust file and the newest root, checked as hosts check the chain."""
        if not self.trust.is_file():
            raise ConfigError(
                f"no trust file at {self.trust}: run `releasectl dev` (development) or pass --trust"
            )
        trust = TrustStore.from_file(self.trust)
        roots = read_roots(self.root_dir)
        if not roots:
            raise ConfigError(
                f"no roots in {self.root_dir}: run `releasectl dev` (development), "
                "`releasectl keys init-root` (production), or pass --root-dir"
            )
        return trust, verify_roots(trust, roots, allow_dev_keys=True, source=str(self.root_dir))


def _path_options(command: Any) -> Any:
    command = click.option(
        "--signing-key",
        "signing_key",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="The online key the server signs with; default: the keys folder's signing-key.pem.",
    )(command)
    command = click.option(
        "--trust",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="The trust file hosts pin; default: the keys folder's trust.json.",
    )(command)
    command = click.option(
        "--root-dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="The folder of signed roots (<N>.json); default: the keys folder's roots/ "
        "($RELEASECONTROL_HOME/keys/roots).",
    )(command)
    return command


def _load_keys(paths: tuple[Path, ...]) -> list[SigningKey]:
    return [SigningKey.load(path) for path in paths]


def _public_key(path: Path) -> TrustedKey:
    """The public half of the key in `path`: a private key PEM, a public key PEM, or the
    standard base64 of the raw 32 bytes."""
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        return SigningKey.load(path).trusted_key()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if b"PUBLIC KEY" in data:
        key = serialization.load_pem_public_key(data)
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{path} holds a {type(key).__name__}, not an Ed25519 public key")
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        try:
            raw = base64.b64decode(data.strip(), validate=True)
        except ValueError:
            raw = b""
    if len(raw) != 32:
        raise ConfigError(
            f"{path} is neither an Ed25519 key PEM nor the base64 of a raw 32-byte public key"
        )
    return TrustedKey.from_raw(raw)


@click.group()
def keys() -> None:
    """The root of trust and the online signing keys (host protocol v2).

    \b
    Example:
      releasectl keys show
      releasectl keys rotate
    """


@keys.command("show")
@_path_options
@output_option
@click.pass_context
def show(
    ctx: click.Context,
    root_dir: Path | None,
    trust: Path | None,
    signing_key: Path | None,
    output: str,
) -> None:
    """Show the trust file, every root and the signing key, checked as hosts check them.

    \b
    Example:
      releasectl keys show --output json
    """
    paths = _Paths(ctx, root_dir, trust, signing_key)
    store, newest = paths.load()
    roots = read_roots(paths.root_dir)
    signer = SigningKey.load(paths.signing_key) if paths.signing_key.is_file() else None
    listed = signer is not None and signer.keyid in newest.roles["index"].keyids
    trust_keys = [short_keyid(k) for k in store.keys]
    info = {
        "trust": str(paths.trust),
        "trust_root_version": store.root_version,
        "trust_keys": trust_keys,
        "trust_threshold": store.threshold,
        "roots": sorted(roots),
        "newest_root": describe_root(newest),
        "signing_key": str(paths.signing_key) if signer else None,
        "signing_keyid": short_keyid(signer.keyid) if signer else None,
        "signing_key_listed": listed,
    }
    if output == "json":
        echo_json(info)
        return
    root = info["newest_root"]
    assert isinstance(root, dict)
    click.echo(
        f"trust file  {paths.trust}: {store.threshold} of {len(store.keys)} root key(s) "
        f"({', '.join(trust_keys)}) sign root {store.root_version}"
    )
    click.echo(f"roots       {paths.root_dir}: versions 1 to {newest.version}, chain verified")
    click.echo(
        f"newest      root {newest.version}, expires {root['expires_at']}; root keys "
        f"{', '.join(root['root_keys'])} (threshold {root['root_threshold']}); online keys "
        f"{', '.join(root['index_keys'])} (threshold {root['index_threshold']})"
    )
    if signer is None:
        click.echo(f"signing key {paths.signing_key}: missing")
    else:
        state = "listed by the newest root" if listed else "NOT listed by the newest root"
        click.echo(f"signing key {paths.signing_key}: {short_keyid(signer.keyid)}, {state}")


@keys.command("rotate")
@_path_options
@click.option(
    "--root-key",
    "root_keys",
    multiple=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A root key to sign the new root with (repeat for a threshold above 1); default in "
    "development: the keys folder's root-key.pem. Without root keys the new root is only "
    "proposed, for `keys sign-root`.",
)
@click.option(
    "--keep-old",
    is_flag=True,
    help="Keep the current online key in the new root beside the new one (an overlap).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Where to write the proposed root when it cannot be signed here; default: "
    "./root-<N>.json.",
)
@output_option
@click.pass_context
def rotate(
    ctx: click.Context,
    root_dir: Path | None,
    trust: Path | None,
    signing_key: Path | None,
    root_keys: tuple[Path, ...],
    keep_old: bool,
    out: Path | None,
    output: str,
) -> None:
    """Replace the online signing key: a new key and root N+1 listing it instead of the old.

    With the root keys at hand (development: the keys folder's root-key.pem), the
    new root is signed and installed and the new key put in place of the old one
    (kept as signing-key.<keyid>.retired.pem); a running server notices within
    seconds and signs every index again, and hosts follow the chain of roots on
    their next refresh. Without them, the new root is written to --out and the
    new key beside the old one as signing-key.next.pem: sign the root offline
    with `releasectl keys sign-root`, install it with `releasectl keys
    install-root`, then move the new key in place.

    \b
    Example:
      releasectl keys rotate
      releasectl keys rotate --root-key /media/offline/root-a.pem
    """
    paths = _Paths(ctx, root_dir, trust, signing_key)
    _, current = paths.load()
    if not root_keys and (paths.folder / DEV_ROOT_KEY_FILE).is_file() and root_dir is None:
        root_keys = (paths.folder / DEV_ROOT_KEY_FILE,)
    dev = any(k.dev for k in current.keys.values())
    new_key = SigningKey.generate()
    old = SigningKey.load(paths.signing_key) if paths.signing_key.is_file() else None
    keep = [old.keyid] if keep_old and old is not None else []
    proposed = propose_rotation(current, new_key, keep=keep, dev=dev)
    signers = _load_keys(root_keys)
    data = proposed.sign(signers).to_bytes() if signers else _unsigned(proposed)
    result: dict[str, Any] = {"root_version": proposed.version, "new_keyid": new_key.keyid}
    if signers and root_status(data, current).complete:
        install_root(paths.root_dir, data, current, allow_dev_keys=True)
        if old is not None:
            retired = paths.signing_key.with_name(
                f"{paths.signing_key.stem}.{old.keyid[:12]}.retired.pem"
            )
            atomic_write(retired, old.to_pem(), mode=0o600)
            result["retired_key"] = str(retired)
        # A key for a dev trust file is a dev key: its file says so, for production to refuse.
        pem = dev_key_pem(new_key) if dev else new_key.to_pem()
        atomic_write(paths.signing_key, pem, mode=0o600)
        result.update(installed=True, root=str(paths.root_dir / f"{proposed.version}.json"))
        lines = [
            f"root {proposed.version} signed and installed in {paths.root_dir}: online key "
            f"{short_keyid(new_key.keyid)} replaces "
            f"{short_keyid(old.keyid) if old else 'none'}" + (" (kept alongside)" if keep else ""),
            f"new signing key: {paths.signing_key}"
            + (f" (old one kept as {result['retired_key']})" if old else ""),
            "a running server signs every index again with it within seconds; hosts follow "
            "the chain of roots on their next refresh",
        ]
    else:
        target = out or Path.cwd() / f"root-{proposed.version}.json"
        atomic_write(target, data, mode=0o644)
        next_key = paths.signing_key.with_name(f"{paths.signing_key.stem}.next.pem")
        if not atomic_create(
            next_key, dev_key_pem(new_key) if dev else new_key.to_pem(), mode=0o600
        ):
            raise OneLineError(f"{next_key} exists already: finish or remove that rotation first")
        status = root_status(data, current)
        result.update(installed=False, root=str(target), next_key=str(next_key))
        lines = [
            f"root {proposed.version} proposed in {target}: online key "
            f"{short_keyid(new_key.keyid)} (new key in {next_key})",
            f"signatures so far: root {current.version}'s root keys {status.by_previous}; its "
            f"own {status.by_itself}",
            f"next: releasectl keys sign-root {target} --root-key <root key> (offline, "
            f"until both thresholds are met), then releasectl keys install-root {target}, then "
            f"move {next_key} to {paths.signing_key}",
        ]
    if output == "json":
        echo_json(result)
    else:
        click.echo("\n".join(lines))


def _unsigned(root: Root) -> bytes:
    """A proposed root with no signature yet: root key holders add theirs with sign-root."""
    return Envelope(signed=root.to_dict(), signatures=()).to_bytes()


@keys.command("sign-root")
@click.argument("root_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option(
    "--root-key",
    "root_keys",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A root key to sign with (repeat for several); run where the root keys are kept.",
)
@click.option(
    "--previous",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The root before this one, to say how many of its root keys signed; default: "
    "<root-dir>/<N-1>.json when it is there.",
)
@click.option(
    "--root-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where to look for the previous root; default: the keys folder's roots/.",
)
@output_option
@click.pass_context
def sign_root(
    ctx: click.Context,
    root_file: Path,
    root_keys: tuple[Path, ...],
    previous: Path | None,
    root_dir: Path | None,
    output: str,
) -> None:
    """Add root key signatures to a root file (the offline step); the file is updated in place.

    A root N+1 needs the threshold of root N's root keys and of its own; each
    holder runs this with their key until both are met, then `releasectl keys
    install-root` puts it in place.

    \b
    Example:
      releasectl keys sign-root root-3.json --root-key /media/offline/root-a.pem
    """
    data = add_signatures(root_file.read_bytes(), _load_keys(root_keys))
    atomic_write(root_file, data, mode=0o644)
    folder = root_dir or _Paths(ctx, None, None, None).root_dir
    status = root_status(data, None)
    prior: Root | None = None
    candidate = previous or folder / f"{status.version - 1}.json"
    if status.version > 1 and candidate.is_file():
        prior = Root.from_dict(Envelope.from_bytes(candidate.read_bytes()).signed)
    status = root_status(data, prior)
    if output == "json":
        echo_json(
            {
                "root": str(root_file),
                "version": status.version,
                "by_previous": status.by_previous,
                "by_itself": status.by_itself,
                "complete": status.complete,
            }
        )
        return
    click.echo(f"root {status.version} ({root_file}): signed with {len(root_keys)} key(s)")
    if prior is not None:
        click.echo(f"  by root {prior.version}'s root keys: {status.by_previous}")
    elif status.version > 1:
        click.echo(f"  by root {status.version - 1}'s root keys: not checked ({candidate} absent)")
    click.echo(f"  by its own root keys: {status.by_itself}")
    click.echo(
        "  complete: install it with `releasectl keys install-root`"
        if status.complete
        else "  not complete yet: more root key holders must sign"
    )


@keys.command("install-root")
@click.argument("root_file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@_path_options
@click.pass_context
def install_root_command(
    ctx: click.Context,
    root_file: Path,
    root_dir: Path | None,
    trust: Path | None,
    signing_key: Path | None,
) -> None:
    """Put a fully signed root N+1 in the roots folder, where the server picks it up.

    Refused unless it follows the newest root as hosts would accept it.

    \b
    Example:
      releasectl keys install-root root-3.json --root-dir /etc/releasecontrol/roots
    """
    paths = _Paths(ctx, root_dir, trust, signing_key)
    _, current = paths.load()
    installed = install_root(paths.root_dir, root_file.read_bytes(), current, allow_dev_keys=True)
    click.echo(
        f"root {installed.version} installed in {paths.root_dir}; the server signs with its "
        f"online keys ({', '.join(short_keyid(k) for k in installed.roles['index'].keyids)}) "
        "once it holds one of them"
    )


@keys.command("init-root")
@click.option(
    "--root-key",
    "root_keys",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A root key (private PEM: it signs root 1); repeat for several.",
)
@click.option(
    "--online-key",
    "online_keys",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="An online key's public half (public PEM, base64 of the raw key, or its private "
    "PEM); repeat for several.",
)
@click.option("--root-threshold", type=click.IntRange(1), default=1, show_default=True)
@click.option("--index-threshold", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--expires-in-days", type=click.IntRange(1, 3650), default=ROOT_EXPIRY.days, show_default=True
)
@click.option(
    "--root-dir",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Where to write roots/1.json (the server's root_dir).",
)
@click.option(
    "--trust-out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the trust file hosts pin.",
)
def init_root(
    root_keys: tuple[Path, ...],
    online_keys: tuple[Path, ...],
    root_threshold: int,
    index_threshold: int,
    expires_in_days: int,
    root_dir: Path,
    trust_out: Path,
) -> None:
    """Make root 1 for production: the root keys sign it, it lists the online keys.

    Run where the root keys are kept (offline). Writes <root-dir>/1.json and the
    trust file naming the root keys.

    \b
    Example:
      releasectl keys init-root --root-key a.pem --root-key b.pem --root-threshold 2 \\
        --online-key online.pub --root-dir roots --trust-out trust.json
    """
    signers = _load_keys(root_keys)
    now = datetime.now(UTC).replace(microsecond=0)
    try:
        root = Root.create(
            version=1,
            root_keys=[k.trusted_key() for k in signers],
            index_keys=[_public_key(p) for p in online_keys],
            issued_at=now,
            expires_at=now + timedelta(days=expires_in_days),
            root_threshold=root_threshold,
            index_threshold=index_threshold,
        )
    except ValueError as exc:
        raise OneLineError(f"cannot make root 1: {exc}") from None
    root_dir.mkdir(parents=True, exist_ok=True)
    target = root_dir / "1.json"
    if not atomic_create(target, root.sign(signers).to_bytes(), mode=0o644):
        raise OneLineError(f"{target} exists already; roots are never replaced")
    store = TrustStore.for_keys([k.trusted_key() for k in signers], threshold=root_threshold)
    atomic_write(trust_out, store.to_json().encode("utf-8"), mode=0o644)
    click.echo(f"root 1 written to {target} (expires {root.expires_at:%Y-%m-%d})")
    click.echo(f"trust file written to {trust_out}: give it to every host")


@keys.command("generate")
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    required=True,
    help="Where to write the new private key (mode 0600; never overwritten).",
)
@output_option
def generate(out: Path, output: str) -> None:
    """Make a new Ed25519 key file and print its keyid and public key.

    \b
    Example:
      releasectl keys generate --out online.pem
    """
    key = SigningKey.generate()
    if not atomic_create(out, key.to_pem(), mode=0o600):
        raise OneLineError(f"{out} exists already; keys are never overwritten")
    public = key.trusted_key().public_key_b64
    if output == "json":
        echo_json({"path": str(out), "keyid": key.keyid, "public_key": public})
    else:
        click.echo(f"{out}: keyid {key.keyid}\npublic key (base64) {public}")
