"""The keys the control plane signs with, and the roots that make hosts trust them.

Hosts pin the root keys (the trust file). The roots in `root_dir` (`<N>.json`,
signed offline: `releasectl keys sign-root`) list the online keys; the server
signs with the keys of `signing_key_paths` that the newest root lists in its
index role. `load_keyring` checks all of it as a host would, the chain from the
trust file to the newest root included, so a server never publishes what hosts
would refuse (docs/host-protocol.md, section 4).

Production refuses keys the dev setup (`releasectl dev`) made, and not only on
the word of the trust file (which anyone may edit): a signing key whose file
carries `DEV_KEY_MARKER`, one whose folder also holds a trusted root's private
key (`root-key.pem`: the dev layout; production keeps root keys offline), and
any key some root in `root_dir`, of any version, ever marked `"dev": true`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from releasecontrol.errors import ConfigError, VerificationError
from releasecontrol.files import file_stamp
from releasecontrol.index import Envelope
from releasecontrol.keyfiles import (
    DEV_KEY_MARKER,
    DEV_ROOT_KEY_FILE,
    ROOT_RENEW_BEFORE,
    load_signing_key,
    read_roots,
    verify_roots,
)
from releasecontrol.manifest import sha256_hex
from releasecontrol.root import ROLE_INDEX, ROLE_ROOT, Root, root_path
from releasecontrol.trust import SigningKey, TrustStore, short_keyid
from releasecontrol_server.config import Config
from releasecontrol_server.store import SignedFile

__all__ = [
    "DEV_KEY_MARKER",
    "KeyWatcher",
    "Keyring",
    "load_keyring",
    "root_dir_stamp",
    "trusted_keys",
]

log = logging.getLogger(__name__)

_FIX_DEV_KEY = (
    "production refuses keys the dev setup made, whatever the trust file says: make a real "
    "online key and a root listing it (`releasectl keys rotate`, then `releasectl keys "
    "sign-root` with the offline root keys) and point signing_key_paths at that key"
)


@dataclass(frozen=True)
class Keyring:
    """The trust file, every root to publish, the newest root and the keys that sign."""

    trust: TrustStore
    roots: tuple[SignedFile, ...]
    """roots/1.json to roots/<N>.json, as published on the origin (sequence: the version)."""
    root: Root
    keys: tuple[SigningKey, ...]

    @property
    def root_version(self) -> int:
        return self.root.version


def trusted_keys(config: Config) -> TrustStore:
    """The trust file hosts pin (root keys), as configured. Raises ConfigError."""
    if config.trust_public_keys_json:
        return TrustStore.from_json(
            config.trust_public_keys_json, source="FEATURE_TRUST_PUBLIC_KEYS_JSON"
        )
    if config.trust_public_keys_path is None or not config.trust_public_keys_path.is_file():
        raise ConfigError(
            f"no trust file at {config.trust_public_keys_path}: set "
            "FEATURE_TRUST_PUBLIC_KEYS_PATH or FEATURE_TRUST_PUBLIC_KEYS_JSON"
        )
    return TrustStore.from_file(config.trust_public_keys_path)


def root_dir_stamp(root_dir: Path) -> tuple[tuple[str, tuple[int, int, int] | None], ...]:
    """What changes when a root is added to `root_dir`: its file names and their stamps."""
    try:
        names = sorted(p.name for p in Path(root_dir).iterdir() if p.suffix == ".json")
    except OSError:
        return ()
    return tuple((name, file_stamp(Path(root_dir) / name)) for name in names)


def load_keyring(config: Config, *, now: datetime | None = None) -> Keyring:
    """The keyring of `config`, checked: the roots chain from the trust file, the newest root
    has not expired, and the signing keys it lists meet its index threshold.

    Raises ConfigError naming what is wrong and the fix.
    """
    now = datetime.now(UTC) if now is None else now
    trust = trusted_keys(config)
    allow_dev = config.allow_insecure_dev_keys or not config.is_production
    if config.is_production and trust.dev_keyids:
        raise ConfigError(
            f"the trust file names dev key {short_keyid(sorted(trust.dev_keyids)[0])}, which "
            "production refuses; pin real root keys kept offline"
        )
    roots = read_roots(config.root_dir)
    if not roots:
        raise ConfigError(
            f"no roots in {config.root_dir} (root_dir): run `releasectl dev` (development), or "
            "sign root 1 with `releasectl keys init-root` and `releasectl keys sign-root`"
        )
    source = f"root_dir {config.root_dir}"
    root = verify_roots(trust, roots, allow_dev_keys=allow_dev, source=source)
    if root.is_expired(now):
        raise ConfigError(
            f"root {root.version} in {config.root_dir} expired at "
            f"{root.expires_at:%Y-%m-%dT%H:%M:%SZ}: hosts refuse everything signed under it. "
            f"Sign root {root.version + 1} with `releasectl keys rotate` and "
            "`releasectl keys sign-root`"
        )
    if root.expires_at - now < ROOT_RENEW_BEFORE:
        log.warning(
            "root expires soon version=%d expires_at=%s: sign the next root version",
            root.version,
            f"{root.expires_at:%Y-%m-%dT%H:%M:%SZ}",
        )
    if config.is_production and any(k.dev for k in root.keys.values()):
        raise ConfigError(
            f"root {root.version} lists a dev key, which production refuses; sign a root "
            "listing only real keys"
        )
    index = root.roles[ROLE_INDEX]
    marked_dev = _marked_dev(trust, roots) if config.is_production else {}
    keys: list[SigningKey] = []
    for path in config.signing_key_paths:
        key = load_signing_key(path)
        if config.is_production:
            _refuse_dev_key(path, key, marked_dev, trust, roots)
        if key.keyid not in index.keyids:
            raise ConfigError(
                f"signing key {path} ({short_keyid(key.keyid)}) is not an online key of root "
                f"{root.version}, so hosts would refuse every index it signs: sign a root that "
                "lists it (`releasectl keys rotate`), or configure the key that root lists"
            )
        keys.append(key)
    distinct = {k.keyid for k in keys}
    if len(distinct) < index.threshold:
        raise ConfigError(
            f"root {root.version} needs {index.threshold} online keys to sign, and "
            f"signing_key_paths gives {len(distinct)}: configure more of the keys it lists"
        )
    files = tuple(
        SignedFile(root_path(v), data, sha256_hex(data), v) for v, data in sorted(roots.items())
    )
    return Keyring(trust=trust, roots=files, root=root, keys=tuple(keys))


def _marked_dev(trust: TrustStore, roots: dict[int, bytes]) -> dict[str, str]:
    """keyid -> where it is marked `"dev": true`: the trust file, or any root of any version."""
    marked = {keyid: "the trust file" for keyid in trust.dev_keyids}
    for version, data in sorted(roots.items()):
        root = _parse_root(data)
        if root is None:
            continue  # not part of the verified chain (older than the trust file's): unread
        for keyid, key in root.keys.items():
            if key.dev:
                marked.setdefault(keyid, f"root {version}")
    return marked


def _root_keyids(trust: TrustStore, roots: dict[int, bytes]) -> set[str]:
    """The root keys the trust file pins and every root's root role lists."""
    keyids = set(trust.keys)
    for data in roots.values():
        root = _parse_root(data)
        if root is not None:
            keyids.update(root.roles[ROLE_ROOT].keyids)
    return keyids


def _parse_root(data: bytes) -> Root | None:
    try:
        return Root.from_dict(Envelope.from_bytes(data).signed)
    except (VerificationError, ValueError, KeyError, TypeError):
        return None


def _refuse_dev_key(
    path: Path,
    key: SigningKey,
    marked_dev: dict[str, str],
    trust: TrustStore,
    roots: dict[int, bytes],
) -> None:
    """Production: raise ConfigError when the key at `path` shows the dev setup made it."""
    try:
        data = Path(path).read_bytes()
    except OSError:  # load_signing_key just read it; a vanished file is caught on the next read
        data = b""
    if DEV_KEY_MARKER in data:
        raise ConfigError(
            f"signing key {path} (signing_key_paths) is marked "
            f"{DEV_KEY_MARKER.decode()!r}: `releasectl dev` made it; {_FIX_DEV_KEY}"
        )
    where = marked_dev.get(key.keyid)
    if where is not None:
        raise ConfigError(
            f"signing key {path} (signing_key_paths, {short_keyid(key.keyid)}) is marked as a "
            f"dev key in {where}, and a key once made for development stays one; {_FIX_DEV_KEY}"
        )
    beside = Path(path).parent / DEV_ROOT_KEY_FILE
    if beside.is_file():
        try:
            root_key = SigningKey.load(beside)
        except ConfigError:
            return
        if root_key.keyid in _root_keyids(trust, roots):
            raise ConfigError(
                f"signing key {path} (signing_key_paths) sits beside {beside}, the private half "
                f"of root key {short_keyid(root_key.keyid)}: that is the layout `releasectl dev` "
                f"makes, and production keeps root keys offline; {_FIX_DEV_KEY}, and move "
                f"{beside} off this machine"
            )


class KeyWatcher:
    """Notices a new root (or signing key) on disk and hands the new keyring over.

    `releasectl keys rotate` (or an operator copying a root signed offline and its
    key) changes `root_dir` and `signing_key_paths`; the running server then signs
    everything again with the new keys, without a restart. A keyring that does not
    load is logged and the server keeps signing with the one it has.
    """

    def __init__(
        self,
        config: Config,
        current: Keyring,
        install: Callable[[Keyring], Awaitable[None]],
        *,
        interval_seconds: float = 2.0,
    ) -> None:
        self._config = config
        self._current = current
        self._install = install
        self.interval_seconds = interval_seconds
        self._stamp = self._stamp_now()

    def _stamp_now(self) -> tuple[object, ...]:
        keys = tuple(file_stamp(p) for p in self._config.signing_key_paths)
        return (root_dir_stamp(self._config.root_dir), keys)

    async def check(self) -> bool:
        """Load and install the keyring when the files changed; True when it installed one."""
        stamp = self._stamp_now()
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            keyring = load_keyring(self._config)
        except ConfigError as exc:
            log.error("new keys not used: %s", exc.message)
            return False
        same_keys = {k.keyid for k in keyring.keys} == {k.keyid for k in self._current.keys}
        if keyring.root_version == self._current.root_version and same_keys:
            return False
        log.info(
            "keys changed root_version=%d keys=%s",
            keyring.root_version,
            ",".join(short_keyid(k.keyid) for k in keyring.keys),
        )
        await self._install(keyring)
        self._current = keyring
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Check every `interval_seconds` until `stop` is set."""
        while not stop.is_set():
            try:
                await self.check()
            except Exception:  # a bug: keep serving with the keys we have
                log.exception("checking the keys failed")
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval_seconds)
            except TimeoutError:
                continue
