"""Sticky bucketing: which users of a percentage canary get it (docs/host-protocol.md, 11).

A signed `releases.json` carries `canary_weight`, out of `WEIGHT_SCALE` (10,000)
buckets, while a canary runs. A host puts each user in one bucket of each
feature with one documented hash, the same in every host language:

    bucket = uint32_be(SHA-256("releasecontrol-bucket-v1" 0x00 feature_id 0x00 key)[0:4]) mod 10000

and serves that user the canary iff `bucket < canary_weight`. A user's bucket
never changes, so while the weight only grows, nobody leaves the canary.

Pure: no clock, no I/O, no randomness except `new_bucketing_key`. The host
(`releasecontrol.host`) decides where a key comes from and keeps it.
"""

from __future__ import annotations

import hashlib
import secrets

from releasecontrol.errors import InvalidArgument
from releasecontrol.index import WEIGHT_SCALE
from releasecontrol.manifest import validate_feature_id

__all__ = [
    "BUCKET_DOMAIN",
    "MAX_BUCKETING_KEY_BYTES",
    "WEIGHT_SCALE",
    "bucket",
    "check_bucketing_key",
    "new_bucketing_key",
    "on_canary",
]

BUCKET_DOMAIN = "releasecontrol-bucket-v1"
"""Hashed first, so these buckets are unrelated to any other SHA-256 of the same ids (the
feature's shard bin, section 3.7); a new scheme would be "-v2" and move every user once."""
MAX_BUCKETING_KEY_BYTES = 256
"""The longest key, in bytes of UTF-8: room for any user id or UUID, nothing bigger."""


def check_bucketing_key(key: object, field: str = "bucketing_key") -> str:
    """Return `key` if it can be bucketed: a string of 1 to 256 bytes of UTF-8, well-formed
    Unicode (no lone surrogate, which has no UTF-8 encoding).

    Raises InvalidArgument naming `field` and the limit.
    """
    if not isinstance(key, str):
        raise InvalidArgument(
            f"{field} must be a string of 1 to {MAX_BUCKETING_KEY_BYTES} bytes in UTF-8, "
            f"not {type(key).__name__}",
            field=field,
        )
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        lone = ord(key[exc.start])
        raise InvalidArgument(
            f"{field} must be well-formed Unicode: it holds a lone surrogate (U+{lone:04X}), "
            "which has no UTF-8 encoding",
            field=field,
        ) from None
    if not 1 <= size <= MAX_BUCKETING_KEY_BYTES:
        raise InvalidArgument(
            f"{field} must be 1 to {MAX_BUCKETING_KEY_BYTES} bytes long in UTF-8, "
            f"not {'empty' if size == 0 else f'{size} bytes'}",
            field=field,
        )
    return key


def bucket(feature_id: str, key: str) -> int:
    """The bucket (0 to 9,999) of `key` for `feature_id`: the same in every host.

    Raises InvalidArgument for a feature id that is not one (section 3.2) or a key
    `check_bucketing_key` refuses. Feature ids never hold a 0x00 byte, so the two
    separators make (feature id, key) -> hashed bytes one-to-one.
    """
    validate_feature_id(feature_id)
    check_bucketing_key(key)
    data = b"\x00".join(s.encode("utf-8") for s in (BUCKET_DOMAIN, feature_id, key))
    return int.from_bytes(hashlib.sha256(data).digest()[:4], "big") % WEIGHT_SCALE


def on_canary(weight: int | None, feature_id: str, key: str) -> bool:
    """True when the user `key` gets the running canary of `feature_id` at `weight`.

    `weight`: the signed `canary_weight` (out of WEIGHT_SCALE); None, from a file signed
    before weights, counts as 0 (nobody but hosts that opted into the canary channel).
    Raises as `bucket` does, and ValueError for a weight off the scale.
    """
    if weight is None:
        weight = 0
    if type(weight) is not int or not 0 <= weight <= WEIGHT_SCALE:
        raise ValueError(f"weight must be an integer from 0 to {WEIGHT_SCALE}, not {weight!r}")
    return bucket(feature_id, key) < weight


def new_bucketing_key() -> str:
    """A random key for a host that was given none: 128 bits as 32 lowercase hex digits."""
    return secrets.token_hex(16)
