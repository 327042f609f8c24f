"""Keys, keyids and the trust store: which Ed25519 keys may sign a release index.

A keyid is the lowercase hex SHA-256 of the raw 32-byte public key, so anyone
holding the public key can recompute it. The trust file (the contract's format)
lists the trusted keys and how many distinct ones must sign:

    {"threshold": 1,
     "keys": [{"keyid": "<hex>", "alg": "ed25519", "public_key": "<base64 of the raw key>"}]}

Hosts and tools read it from `FEATURE_TRUST_PUBLIC_KEYS_JSON` (inline) or the
file named by `FEATURE_TRUST_PUBLIC_KEYS_PATH`. A malformed trust file raises
ConfigError with one sentence naming the source, the field and the fix.

In host protocol v2 these are the *root* keys hosts pin (and `root_version`, the
root they sign); see `releasecontrol.root`. A key entry may also carry
`"dev": true`: an insecure development key (its private half sits unprotected in
a state directory, see `releasecontrol.keyfiles.load_or_create_dev_keys`).
Verifiers count a dev key's signature only while `FEATURE_ALLOW_INSECURE_DEV_KEYS`
is on, and production refuses to trust one at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from releasecontrol.canonical import jcs
from releasecontrol.errors import ConfigError
from releasecontrol.files import atomic_write

logger = logging.getLogger(__name__)

ALG_ED25519 = "ed25519"
PUBLIC_KEY_BYTES = 32
ENV_TRUST_JSON = "FEATURE_TRUST_PUBLIC_KEYS_JSON"
ENV_TRUST_PATH = "FEATURE_TRUST_PUBLIC_KEYS_PATH"
ENV_ALLOW_DEV_KEYS = "FEATURE_ALLOW_INSECURE_DEV_KEYS"
DEV_TRUST_FILE = "trust.json"

_KEY_ENTRY_FORMAT = '{"keyid": "<hex>", "alg": "ed25519", "public_key": "<base64>"}'


def keyid_for(raw_public_key: bytes) -> str:
    """The keyid of a raw Ed25519 public key: the lowercase hex SHA-256 of its 32 bytes."""
    return hashlib.sha256(raw_public_key).hexdigest()


def short_keyid(keyid: str) -> str:
    """The first 8 characters of a keyid and an ellipsis, for messages."""
    return keyid[:8] + "…" if len(keyid) > 8 else keyid


@dataclass(frozen=True)
class TrustedKey:
    """One public key a verifier trusts. Raises ValueError if the keyid does not match it."""

    keyid: str
    public_key_raw: bytes
    alg: str = ALG_ED25519
    dev: bool = False
    """An insecure development key: counted only where dev keys are allowed."""

    def __post_init__(self) -> None:
        if not isinstance(self.dev, bool):
            raise ValueError(f"dev must be True or False, not {self.dev!r}")
        if self.alg != ALG_ED25519:
            raise ValueError(f"unsupported key algorithm {self.alg!r}; only 'ed25519' is")
        if len(self.public_key_raw) != PUBLIC_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key is 32 bytes, not {len(self.public_key_raw)}")
        if self.keyid != keyid_for(self.public_key_raw):
            raise ValueError(f"keyid {self.keyid!r} is not the SHA-256 of its public key")

    @classmethod
    def from_raw(cls, public_key_raw: bytes) -> TrustedKey:
        """The trusted key for a raw 32-byte Ed25519 public key, its keyid computed."""
        return cls(keyid=keyid_for(public_key_raw), public_key_raw=public_key_raw)

    @property
    def public_key_b64(self) -> str:
        """The standard base64 of the raw public key, as the trust file writes it."""
        return base64.b64encode(self.public_key_raw).decode("ascii")

    def verify(self, signature: bytes, data: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature of `data`; False otherwise.

        Never raises: a malformed signature or key is simply not a valid signature.
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key_raw).verify(signature, data)
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True


@dataclass(frozen=True)
class TrustStore:
    """The trusted keys by keyid and how many distinct ones must sign (the threshold).

    Constructing one directly raises ValueError when the threshold cannot be met
    or a key is filed under another keyid; parsing a trust file raises ConfigError.
    """

    threshold: int
    keys: Mapping[str, TrustedKey]
    root_version: int = 1
    """As a trust file: the root version these keys sign (host protocol v2). A
    role of a root has no use for it and keeps 1."""

    def __post_init__(self) -> None:
        if isinstance(self.root_version, bool) or not isinstance(self.root_version, int):
            raise ValueError(f"root_version must be an integer, not {self.root_version!r}")
        if self.root_version < 1:
            raise ValueError(f"root_version must be at least 1, not {self.root_version}")
        for keyid, key in self.keys.items():
            if keyid != key.keyid:
                raise ValueError(f"key {key.keyid!r} is filed under keyid {keyid!r}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int):
            raise ValueError(f"threshold must be an integer, not {self.threshold!r}")
        if not 1 <= self.threshold <= len(self.keys):
            raise ValueError(
                f"threshold {self.threshold} cannot be met by {len(self.keys)} trusted key(s)"
            )
        # A read-only copy: a trust store must not change under a verifier's feet.
        object.__setattr__(self, "keys", MappingProxyType(dict(self.keys)))

    @property
    def dev_keyids(self) -> frozenset[str]:
        """The keyids of the trusted keys marked as insecure development keys."""
        return frozenset(keyid for keyid, key in self.keys.items() if key.dev)

    def without_dev_keys(self) -> TrustStore:
        """This store with its dev keys removed: what a verifier refusing dev keys trusts.

        Raises ValueError when the keys left cannot meet the threshold, so a
        caller never ends up with a store that silently verifies nothing.
        """
        if not self.dev_keyids:
            return self
        kept = {keyid: key for keyid, key in self.keys.items() if not key.dev}
        if len(kept) < self.threshold:
            raise ValueError(
                f"without its {len(self.dev_keyids)} dev key(s) the trust store has "
                f"{len(kept)} key(s), fewer than its threshold {self.threshold}"
            )
        return TrustStore(threshold=self.threshold, keys=kept, root_version=self.root_version)

    @property
    def fingerprint(self) -> str:
        """The SHA-256 (hex) of this trust file's canonical form: what a host records, so it
        starts over from the trust file when an operator changes it."""
        return hashlib.sha256(jcs(self._document())).hexdigest()

    @classmethod
    def for_keys(cls, keys: Sequence[TrustedKey], threshold: int = 1) -> TrustStore:
        """A trust store of `keys` (duplicates collapse) needing `threshold` of them.

        Raises ValueError when the threshold is not between 1 and the number of keys.
        """
        return cls(threshold=threshold, keys={key.keyid: key for key in keys})

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "trust file") -> TrustStore:
        """Parse a trust file in the contract's format; `source` names it in errors.

        A missing threshold means 1 and a missing `root_version` (host protocol v2:
        the root version these keys sign) means 1; a key entry's optional
        `"dev": true` marks an insecure development key. Unknown fields in a key
        entry are ignored.
        Raises ConfigError naming the source, the bad field and the fix.
        """
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{source} is not valid JSON ({exc}); write it as "
                f'{{"threshold": 1, "keys": [{_KEY_ENTRY_FORMAT}]}}'
            ) from None
        if not isinstance(document, dict):
            raise ConfigError(
                f'{source} must be a JSON object with "threshold" and "keys", '
                f"not a JSON {_json_type(document)}"
            )
        threshold = document.get("threshold", 1)
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise ConfigError(
                f"{source}: threshold must be an integer of at least 1, not "
                f"{json.dumps(threshold)}; set it to how many distinct keys must sign"
            )
        root_version = document.get("root_version", 1)
        if isinstance(root_version, bool) or not isinstance(root_version, int) or root_version < 1:
            raise ConfigError(
                f"{source}: root_version must be an integer of at least 1, not "
                f"{json.dumps(root_version)}; set it to the version of the root these keys "
                "sign (1 unless the root keys were rotated)"
            )
        entries = document.get("keys")
        if entries is None:
            raise ConfigError(
                f'{source} has no "keys"; add a list of trusted keys like [{_KEY_ENTRY_FORMAT}]'
            )
        if not isinstance(entries, list) or not entries:
            raise ConfigError(
                f'{source}: "keys" must be a non-empty list of trusted keys like '
                f"[{_KEY_ENTRY_FORMAT}]"
            )
        keys: dict[str, TrustedKey] = {}
        for index, entry in enumerate(entries):
            key = _parse_key_entry(entry, f"{source}: keys[{index}]")
            if key.keyid in keys:
                raise ConfigError(
                    f"{source}: keys[{index}] repeats keyid {short_keyid(key.keyid)}; "
                    "list each key once"
                )
            keys[key.keyid] = key
        if threshold > len(keys):
            raise ConfigError(
                f"{source}: threshold {threshold} is more than the {len(keys)} key(s) listed; "
                f"lower the threshold or add keys"
            )
        return cls(threshold=threshold, keys=keys, root_version=root_version)

    @classmethod
    def from_file(cls, path: Path) -> TrustStore:
        """Read and parse the trust file at `path`; raises ConfigError naming the path."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read trust file {path} ({exc.strerror or exc}); "
                "point to an existing, readable trust file"
            ) from None
        return cls.from_json(data, source=f"trust file {path}")

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> TrustStore | None:
        """The trust store the environment configures, or None when it configures none.

        `FEATURE_TRUST_PUBLIC_KEYS_JSON` (the trust file inline) wins over
        `FEATURE_TRUST_PUBLIC_KEYS_PATH` (a path to it); an empty value counts as
        unset. Raises ConfigError naming the variable when its trust file is malformed.
        """
        inline = environ.get(ENV_TRUST_JSON, "")
        if inline.strip():
            return cls.from_json(inline, source=ENV_TRUST_JSON)
        path = environ.get(ENV_TRUST_PATH, "")
        if path.strip():
            try:
                data = Path(path).read_bytes()
            except OSError as exc:
                raise ConfigError(
                    f"{ENV_TRUST_PATH} names {path}, which cannot be read "
                    f"({exc.strerror or exc}); point it to an existing, readable trust file"
                ) from None
            return cls.from_json(data, source=f"{ENV_TRUST_PATH} ({path})")
        return None

    def to_json(self) -> str:
        """The trust file in the contract's format: indent 2, keys in order, trailing newline.

        `"dev": true` is written only for a dev key, so other entries stay exactly
        the contract's three fields; `root_version` only when it is not 1.
        """
        return json.dumps(self._document(), indent=2) + "\n"

    def _document(self) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for key in self.keys.values():
            entry: dict[str, Any] = {
                "keyid": key.keyid,
                "alg": key.alg,
                "public_key": key.public_key_b64,
            }
            if key.dev:
                entry["dev"] = True
            entries.append(entry)
        document: dict[str, Any] = {"threshold": self.threshold, "keys": entries}
        if self.root_version != 1:
            document["root_version"] = self.root_version
        return document


def _parse_key_entry(entry: Any, where: str) -> TrustedKey:
    """One trusted key from a trust-file entry; `where` ("source: keys[i]") prefixes errors."""
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where} must be an object like {_KEY_ENTRY_FORMAT}, not a JSON {_json_type(entry)}"
        )
    fixes = {
        "keyid": "the lowercase hex SHA-256 of the raw public key",
        "alg": '"ed25519"',
        "public_key": "the standard base64 of the raw 32-byte Ed25519 public key",
    }
    for name, fix in fixes.items():
        if name not in entry:
            raise ConfigError(f'{where} has no "{name}"; add it, set to {fix}')
        if not isinstance(entry[name], str):
            raise ConfigError(f"{where}.{name} must be a string; set it to {fix}")
    keyid: str = entry["keyid"]
    alg: str = entry["alg"]
    encoded: str = entry["public_key"]
    if alg != ALG_ED25519:
        raise ConfigError(f'{where}.alg is {json.dumps(alg)}; only "ed25519" is supported')
    try:
        # validate=True refuses URL-safe characters, whitespace and missing padding.
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"{where}.public_key is not standard base64; set it to {fixes['public_key']}"
        ) from None
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ConfigError(
            f"{where}.public_key decodes to {len(raw)} bytes, not 32; "
            f"set it to {fixes['public_key']}"
        )
    expected = keyid_for(raw)
    if keyid != expected:
        raise ConfigError(
            f"{where}.keyid {short_keyid(keyid)} does not match its public key; expected {expected}"
        )
    dev = entry.get("dev", False)
    if not isinstance(dev, bool):
        raise ConfigError(
            f"{where}.dev must be true or false, not {json.dumps(dev)}; "
            "set it to true only for an insecure development key"
        )
    return TrustedKey(keyid=keyid, public_key_raw=raw, alg=alg, dev=dev)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


class SigningKey:
    """An Ed25519 private key that signs release indices. Its repr never shows the secret."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        self._public_key_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._keyid = keyid_for(self._public_key_raw)

    @classmethod
    def generate(cls) -> SigningKey:
        """A new random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, data: bytes, *, source: str = "signing key") -> SigningKey:
        """The key in an unencrypted PKCS8 PEM; raises ConfigError naming `source` otherwise."""
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ConfigError(
                f"{source} is not an unencrypted PKCS8 PEM private key; "
                "write one with `SigningKey.generate().save(path)` or "
                "`openssl genpkey -algorithm ed25519`"
            ) from None
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ConfigError(
                f"{source} holds a {type(private_key).__name__}, not an Ed25519 key; "
                "generate one with `openssl genpkey -algorithm ed25519`"
            )
        return cls(private_key)

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """The key in the PEM file at `path`; raises ConfigError naming the path."""
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"cannot read signing key {path} ({exc.strerror or exc}); "
                "point to an existing, readable PEM file"
            ) from None
        return cls.from_pem(data, source=f"signing key {path}")

    def to_pem(self) -> bytes:
        """The key as an unencrypted PKCS8 PEM."""
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: Path) -> None:
        """Write the key to `path` atomically, readable by the owner only (mode 0600)."""
        atomic_write(Path(path), self.to_pem(), mode=0o600)

    @property
    def keyid(self) -> str:
        return self._keyid

    @property
    def public_key_raw(self) -> bytes:
        return self._public_key_raw

    def sign(self, data: bytes) -> bytes:
        """The 64-byte Ed25519 signature of `data`."""
        return self._private_key.sign(data)

    def trusted_key(self, *, dev: bool = False) -> TrustedKey:
        """The public half, as a verifier trusts it; `dev` marks it an insecure dev key."""
        return TrustedKey(keyid=self._keyid, public_key_raw=self._public_key_raw, dev=dev)

    def __repr__(self) -> str:
        return f"SigningKey(keyid={self._keyid!r})"
