"""Key and root files on disk: the dev setup, rotation and the offline signing of roots.

A keys folder (the dev one is `$RELEASECONTROL_HOME/keys/`) holds:

    signing-key.pem      the online key the server signs every index with (0600)
    roots/<N>.json       the signed roots, version 1 to N: what the server publishes
    trust.json           what hosts pin: the root keys and the root version they sign
    root-key.pem         dev only: the root key, which production keeps offline

`load_or_create_dev_keys` makes all of it on first use and keeps it valid after
(a new root when the signing key changed or the newest root nears its expiry).
`propose_rotation` writes root N+1 with a new online key in place of the old
one; `add_signatures` is the offline step (`releasectl keys sign-root`), run by
each root key holder until the threshold is met; `install_root` puts a fully
signed root in place, where the running server picks it up
(docs/host-protocol.md, section 4).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.files import atomic_create, atomic_write
from releasecontrol.index import Envelope, Signature, check_signatures, sign
from releasecontrol.root import ROLE_INDEX, ROLE_ROOT, Root, root_path
from releasecontrol.trust import SigningKey, TrustStore, short_keyid
from releasecontrol.verifier import Refusal, Verifier

__all__ = [
    "DEV_ROOT_KEY_FILE",
    "DEV_SIGNING_KEY_FILE",
    "DEV_TRUST_FILE",
    "ROOTS_DIR",
    "ROOT_EXPIRY",
    "ROOT_RENEW_BEFORE",
    "DevKeys",
    "add_signatures",
    "install_root",
    "load_or_create_dev_keys",
    "load_signing_key",
    "propose_rotation",
    "read_roots",
    "root_status",
    "verify_roots",
]

log = logging.getLogger(__name__)

DEV_SIGNING_KEY_FILE = "signing-key.pem"
DEV_ROOT_KEY_FILE = "root-key.pem"
DEV_TRUST_FILE = "trust.json"
ROOTS_DIR = "roots"
ROOT_EXPIRY = timedelta(days=365)
ROOT_RENEW_BEFORE = timedelta(days=30)
"""A root this close to its expiry is renewed (dev) or warned about (doctor, server)."""

_ROOT_FILE_RE = re.compile(r"([1-9][0-9]{0,8})\.json")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def read_roots(root_dir: Path) -> dict[int, bytes]:
    """The root files in `root_dir` (`<N>.json`), by version. Raises ConfigError when the
    folder cannot be read or the versions do not run 1, 2, … without a gap."""
    try:
        names = [p.name for p in Path(root_dir).iterdir()]
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read root folder {root_dir} ({exc.strerror or exc})") from None
    roots: dict[int, bytes] = {}
    for name in names:
        match = _ROOT_FILE_RE.fullmatch(name)
        if match:
            roots[int(match.group(1))] = (Path(root_dir) / name).read_bytes()
    expected = list(range(1, len(roots) + 1))
    if sorted(roots) != expected:
        missing = sorted(set(range(1, max(roots, default=0) + 1)) - set(roots))
        raise ConfigError(
            f"root folder {root_dir} lacks root version(s) {missing}: a host follows the "
            "chain one version at a time, so every version must be kept"
        )
    return roots


def verify_roots(
    trust: TrustStore, roots: dict[int, bytes], *, allow_dev_keys: bool, source: str
) -> Root:
    """The newest of `roots`, checked as a host checks the chain from the trust file.

    Raises ConfigError naming the root that fails and why.
    """
    if trust.root_version not in roots:
        raise ConfigError(
            f"{source} has no root {trust.root_version}, the root version the trust file's "
            f"keys sign: run `releasectl dev` (development) or copy roots/"
            f"{trust.root_version}.json there"
        )
    verifier = Verifier(trust, allow_dev_keys=allow_dev_keys)
    try:
        return verifier.follow_roots([roots[v] for v in range(trust.root_version, max(roots) + 1)])
    except Refusal as exc:
        raise ConfigError(f"{source}: {exc.message}") from None


def load_signing_key(path: Path) -> SigningKey:
    """The key in the PEM file at `path`; ConfigError saying how to make one when missing."""
    if not Path(path).is_file():
        raise ConfigError(
            f"signing key {path} does not exist: run `releasectl dev` to make a dev key, "
            "or set signing_key_paths to your Ed25519 key files"
        )
    return SigningKey.load(path)


# --- the dev setup ------------------------------------------------------------------------


@dataclass(frozen=True)
class DevKeys:
    """What `load_or_create_dev_keys` made or found."""

    root_key: SigningKey
    signing_key: SigningKey
    root: Root
    """The newest root."""


DEV_KEY_MARKER = b"releasecontrol insecure development key"
"""Written on the first line of every key file the dev setup makes: a production server
refuses a key carrying it, whatever the trust file says (`keyring`)."""


def dev_key_pem(key: SigningKey) -> bytes:
    """`key` as PEM with the dev marker on a comment line before it (PEM readers skip it)."""
    return b"# " + DEV_KEY_MARKER + b"\n" + key.to_pem()


def _load_or_create_key(path: Path, what: str) -> SigningKey:
    if path.exists():
        return SigningKey.load(path)
    candidate = SigningKey.generate()
    if atomic_create(path, dev_key_pem(candidate), mode=0o600):
        log.info("created %s keyid=%s path=%s", what, candidate.keyid, path)
        return candidate
    return SigningKey.load(path)  # another process made it between our check and our write


def load_or_create_dev_keys(keys_dir: Path, *, now: datetime | None = None) -> DevKeys:
    """The dev root key, signing key, roots and trust file in `keys_dir`, made on first use.

    Both keys are insecure development keys (`"dev": true` in `trust.json` and in
    the roots). A new root is signed (and written) when there is none, when the
    newest does not list `signing-key.pem` as its online key, or when it expires
    within 30 days. `trust.json` is rewritten when it does not name the root key
    as root version 1's (a v1 dev setup named the signing key there). Every write
    is atomic. Raises ConfigError when an existing key file cannot be read.
    """
    now = _now() if now is None else now
    keys_dir = Path(keys_dir)
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    root_key = _load_or_create_key(keys_dir / DEV_ROOT_KEY_FILE, "dev root key")
    signing_key = _load_or_create_key(keys_dir / DEV_SIGNING_KEY_FILE, "dev signing key")
    trust = TrustStore.for_keys([root_key.trusted_key(dev=True)])
    trust_path = keys_dir / DEV_TRUST_FILE
    if _read_trust(trust_path) != trust:
        atomic_write(trust_path, trust.to_json().encode("utf-8"), mode=0o644)
        log.info("wrote dev trust file root keyid=%s path=%s", root_key.keyid, trust_path)
    root_dir = keys_dir / ROOTS_DIR
    root_dir.mkdir(mode=0o755, exist_ok=True)
    roots = read_roots(root_dir)
    newest: Root | None = None
    if roots:
        try:
            newest = verify_roots(trust, roots, allow_dev_keys=True, source=str(root_dir))
        except ConfigError as exc:
            # Roots another dev key signed (the folder was copied): start the chain again.
            log.warning("dev roots do not verify (%s); signing a new root 1", exc.message)
            for version in roots:
                (root_dir / f"{version}.json").unlink()
            newest = None
    if (
        newest is None
        or list(newest.roles[ROLE_INDEX].keyids) != [signing_key.keyid]
        or newest.expires_at - now < ROOT_RENEW_BEFORE
    ):
        version = 1 if newest is None else newest.version + 1
        newest = Root.create(
            version=version,
            root_keys=[root_key.trusted_key(dev=True)],
            index_keys=[signing_key.trusted_key(dev=True)],
            issued_at=now,
            expires_at=now + ROOT_EXPIRY,
        )
        data = newest.sign([root_key]).to_bytes()
        atomic_write(root_dir / f"{version}.json", data, mode=0o644)
        log.info("signed dev root version=%d path=%s", version, root_dir / f"{version}.json")
    return DevKeys(root_key=root_key, signing_key=signing_key, root=newest)


def _read_trust(path: Path) -> TrustStore | None:
    try:
        return TrustStore.from_file(path)
    except ConfigError:
        return None


# --- rotation and offline signing ---------------------------------------------------------------


def propose_rotation(
    current: Root,
    new_key: SigningKey,
    *,
    keep: Sequence[str] = (),
    now: datetime | None = None,
    dev: bool = False,
) -> Root:
    """Root version + 1 of `current`: `new_key` as the online key in place of the current
    ones (except the keyids in `keep`), the same root keys and thresholds otherwise
    (the index threshold lowered to what the keys left can meet)."""
    now = _now() if now is None else now
    index = current.roles[ROLE_INDEX]
    kept = [current.keys[k] for k in index.keyids if k in keep]
    index_keys = [*kept, new_key.trusted_key(dev=dev)]
    root_role = current.roles[ROLE_ROOT]
    return Root.create(
        version=current.version + 1,
        root_keys=[current.keys[k] for k in root_role.keyids],
        index_keys=index_keys,
        issued_at=now,
        expires_at=now + ROOT_EXPIRY,
        root_threshold=root_role.threshold,
        index_threshold=min(index.threshold, len(index_keys)),
    )


def add_signatures(data: bytes, keys: Sequence[SigningKey]) -> bytes:
    """The root file `data` with a signature by each of `keys` added (those already there are
    kept). Raises ConfigError when `data` is not a root file."""
    try:
        envelope = Envelope.from_bytes(data)
        Root.from_dict(envelope.signed)
    except VerificationError as exc:
        raise ConfigError(f"not a root file: {exc.message}") from None
    fresh = sign(envelope.signed, keys)
    signatures = {s.keyid: s for s in envelope.signatures}
    for signature in fresh.signatures:
        signatures.setdefault(signature.keyid, Signature(signature.keyid, signature.sig))
    return Envelope(signed=envelope.signed, signatures=tuple(signatures.values())).to_bytes()


@dataclass(frozen=True)
class RootStatus:
    """How far a root file is from being usable: its signatures against both roots."""

    version: int
    by_previous: str
    """The signatures of the previous root's root keys, as a sentence ("signed by 1 of 2 …")."""
    by_itself: str
    complete: bool
    """Both thresholds met: hosts will follow it."""


def root_status(data: bytes, previous: Root | None, *, allow_dev_keys: bool = True) -> RootStatus:
    """Whether root file `data` carries enough signatures of `previous`'s root keys (none for
    root 1) and of its own. Raises ConfigError when `data` is not a root file."""
    try:
        envelope = Envelope.from_bytes(data)
        root = Root.from_dict(envelope.signed)
    except VerificationError as exc:
        raise ConfigError(f"not a root file: {exc.message}") from None
    own = check_signatures(envelope, root.role(ROLE_ROOT), allow_dev_keys=allow_dev_keys)
    if previous is None:
        return RootStatus(root.version, "no previous root", own.message, own.verified)
    old = check_signatures(envelope, previous.role(ROLE_ROOT), allow_dev_keys=allow_dev_keys)
    return RootStatus(root.version, old.message, own.message, own.verified and old.verified)


def install_root(root_dir: Path, data: bytes, previous: Root, *, allow_dev_keys: bool) -> Root:
    """Write root file `data` as `<root_dir>/<N>.json` once it follows `previous` as a host
    would accept it. Raises ConfigError saying what is missing."""
    status = root_status(data, previous, allow_dev_keys=allow_dev_keys)
    if status.version != previous.version + 1:
        raise ConfigError(
            f"this is root {status.version}; the next root after {previous.version} is "
            f"{previous.version + 1}"
        )
    if not status.complete:
        raise ConfigError(
            f"root {status.version} is not signed enough to install: by root "
            f"{previous.version}'s root keys, {status.by_previous}; by its own root keys, "
            f"{status.by_itself}. Add signatures with `releasectl keys sign-root`"
        )
    target = Path(root_dir) / f"{status.version}.json"
    if target.exists():
        raise ConfigError(f"{target} exists already; root versions are never replaced")
    atomic_write(target, data, mode=0o644)
    return Root.from_dict(Envelope.from_bytes(data).signed)


def describe_root(root: Root) -> dict[str, object]:
    """A root as `releasectl keys show` prints it."""
    return {
        "version": root.version,
        "expires_at": root.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "root_keys": [short_keyid(k) for k in root.roles[ROLE_ROOT].keyids],
        "root_threshold": root.roles[ROLE_ROOT].threshold,
        "index_keys": [short_keyid(k) for k in root.roles[ROLE_INDEX].keyids],
        "index_threshold": root.roles[ROLE_INDEX].threshold,
        "dev": any(k.dev for k in root.keys.values()),
        "path": root_path(root.version),
    }
