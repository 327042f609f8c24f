"""Roots: which keys sign the next root and which sign the index (releasecontrol.root).

A root is `roots/<N>.json` (docs/host-protocol.md, 3.3): its keys, and the `root`
and `index` roles naming them with a threshold. These tests pin the model and
what `Root.from_dict` refuses; following the chain of roots is the verifier's
(tests/unit/test_verifier.py).
"""

from __future__ import annotations

import base64
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from host_repository import KEY_A, KEY_B, NOW, ROOT_A, ROOT_EXPIRY

from releasecontrol.errors import VerificationError
from releasecontrol.index import Envelope, check_signatures
from releasecontrol.root import ROLE_INDEX, ROLE_ROOT, Role, Root, root_path
from releasecontrol.trust import TrustedKey, keyid_for

DELETE = object()


def make_root(**changes: Any) -> Root:
    """Root 3: ROOT_A as root key, KEY_A (a dev key) and KEY_B as online keys, threshold 1."""
    fields: dict[str, Any] = {
        "version": 3,
        "root_keys": [ROOT_A.trusted_key()],
        "index_keys": [KEY_A.trusted_key(dev=True), KEY_B.trusted_key()],
        "issued_at": NOW,
        "expires_at": NOW + ROOT_EXPIRY,
    }
    fields.update(changes)
    return Root.create(**fields)


# Root 3 as the protocol writes it, by hand: the model must produce exactly this.
SPEC_BODY: dict[str, Any] = {
    "schema_version": 2,
    "type": "root",
    "version": 3,
    "issued_at": "2026-11-26T10:00:00Z",
    "expires_at": "2027-11-26T10:00:00Z",
    "keys": {
        ROOT_A.keyid: {
            "alg": "ed25519",
            "public_key": base64.b64encode(ROOT_A.public_key_raw).decode(),
        },
        KEY_A.keyid: {
            "alg": "ed25519",
            "public_key": base64.b64encode(KEY_A.public_key_raw).decode(),
            "dev": True,
        },
        KEY_B.keyid: {
            "alg": "ed25519",
            "public_key": base64.b64encode(KEY_B.public_key_raw).decode(),
        },
    },
    "roles": {
        "root": {"keyids": [ROOT_A.keyid], "threshold": 1},
        "index": {"keyids": [KEY_A.keyid, KEY_B.keyid], "threshold": 1},
    },
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """SPEC_BODY with the member at dotted `path` set to `value` (or deleted)."""
    body = copy.deepcopy(SPEC_BODY)
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return body


class TestRootPath:
    def test_root_n_lives_at_roots_n_json(self) -> None:
        """Root version N is served at roots/<N>.json."""
        assert root_path(1) == "roots/1.json"
        assert root_path(412) == "roots/412.json"

    @pytest.mark.parametrize(
        "version",
        [
            pytest.param(0, id="zero"),
            pytest.param(-1, id="negative"),
            pytest.param(True, id="bool"),
            pytest.param("1", id="string"),
        ],
    )
    def test_a_version_below_one_has_no_path(self, version: Any) -> None:
        """Only an integer of at least 1 names a root; anything else is a ValueError."""
        with pytest.raises(ValueError, match="a root version is an integer of at least 1"):
            root_path(version)


class TestRole:
    @pytest.mark.parametrize(
        ("keyids", "threshold", "fragment"),
        [
            pytest.param((), 1, "at least one keyid", id="no-keyids"),
            pytest.param((KEY_A.keyid, KEY_A.keyid), 1, "lists a keyid twice", id="duplicate"),
            pytest.param((KEY_A.keyid,), 0, "cannot be met", id="threshold-0"),
            pytest.param((KEY_A.keyid,), 2, "cannot be met by 1 keyid", id="threshold-above"),
            pytest.param((KEY_A.keyid,), True, "cannot be met", id="threshold-bool"),
        ],
    )
    def test_a_role_that_cannot_be_met_is_refused(
        self, keyids: tuple[str, ...], threshold: Any, fragment: str
    ) -> None:
        """A role with no keyid, a repeated keyid or an unreachable threshold is a ValueError."""
        with pytest.raises(ValueError, match=fragment):
            Role(keyids, threshold)


class TestRootModel:
    def test_to_dict_is_the_protocols_body(self) -> None:
        """The model writes exactly section 3.3's body; `dev` appears only on dev keys."""
        assert make_root().to_dict() == SPEC_BODY

    def test_round_trips_through_dict_and_signed_file(self) -> None:
        """from_dict(to_dict()) is the same root, also after signing and parsing the file."""
        root = make_root()
        assert Root.from_dict(root.to_dict()) == root
        envelope = Envelope.from_bytes(root.sign([ROOT_A]).to_bytes())
        assert Root.from_dict(envelope.signed) == root

    def test_sign_makes_a_file_its_root_role_verifies(self) -> None:
        """A root signed by its root keys meets its own root role, and not its index role."""
        root = make_root()
        envelope = root.sign([ROOT_A])
        assert check_signatures(envelope, root.role(ROLE_ROOT)).verified
        assert not check_signatures(envelope, root.role(ROLE_INDEX)).verified

    def test_role_is_a_trust_store_of_its_keys_and_threshold(self) -> None:
        """role() gives the keys of that role only, their dev flags and the threshold."""
        root = make_root(index_threshold=2)
        index = root.role(ROLE_INDEX)
        assert set(index.keys) == {KEY_A.keyid, KEY_B.keyid}
        assert index.threshold == 2
        assert index.dev_keyids == {KEY_A.keyid}
        assert set(root.role(ROLE_ROOT).keys) == {ROOT_A.keyid}

    def test_a_key_in_both_roles_is_listed_once(self) -> None:
        """A key used as root and online key (a dev setup) appears once under "keys"."""
        root = make_root(index_keys=[ROOT_A.trusted_key()])
        assert list(root.to_dict()["keys"]) == [ROOT_A.keyid]

    def test_unknown_fields_of_a_newer_server_are_carried(self) -> None:
        """Members this code does not know stay in `extra` and are written back."""
        body = {**SPEC_BODY, "mirrors": ["https://cdn2.example/"]}
        root = Root.from_dict(body)
        assert root.extra == {"mirrors": ["https://cdn2.example/"]}
        assert root.to_dict() == body

    @pytest.mark.parametrize(
        ("offset", "expired"),
        [
            pytest.param(timedelta(seconds=-1), False, id="one-second-before"),
            pytest.param(timedelta(0), True, id="at-expiry"),
        ],
    )
    def test_expired_from_expires_at_on(self, offset: timedelta, expired: bool) -> None:
        """A root is valid strictly before expires_at and expired from that second on."""
        root = make_root()
        assert root.is_expired(root.expires_at + offset) is expired

    @pytest.mark.parametrize(
        ("changes", "fragment"),
        [
            pytest.param({"version": 0}, "root version must be an integer of at least 1", id="v0"),
            pytest.param({"expires_at": NOW}, "is not after issued_at", id="expires-at-issue"),
            pytest.param({"issued_at": datetime(2026, 11, 26, 10, 0, 0)}, "aware", id="naive-time"),
        ],
    )
    def test_inconsistent_values_are_refused_when_built(
        self, changes: dict[str, Any], fragment: str
    ) -> None:
        """A root built in code with impossible values is a ValueError, never written."""
        with pytest.raises(ValueError, match=fragment):
            make_root(**changes)

    def test_a_role_naming_an_unlisted_key_is_refused_when_built(self) -> None:
        """Each role's keyids must be listed under "keys"."""
        with pytest.raises(ValueError, match='role "index" names keyid'):
            Root(
                version=1,
                keys={ROOT_A.keyid: ROOT_A.trusted_key()},
                roles={ROLE_ROOT: Role((ROOT_A.keyid,), 1), ROLE_INDEX: Role((KEY_A.keyid,), 1)},
                issued_at=NOW,
                expires_at=NOW + ROOT_EXPIRY,
            )

    def test_times_are_kept_in_utc_whole_seconds(self) -> None:
        """A time with a fraction of a second is kept as the wire will carry it."""
        root = make_root(issued_at=NOW.replace(microsecond=500_000))
        assert root.issued_at == NOW and root.issued_at.tzinfo is UTC


_SHORT_KEY = base64.b64encode(bytes(31)).decode()


class TestRootFromDict:
    @pytest.mark.parametrize(
        ("body", "fragment"),
        [
            pytest.param(changed("type", "remote-index"), 'field "type" must be "root"', id="type"),
            pytest.param(changed("version", 0), 'field "version" must be an integer', id="v0"),
            pytest.param(changed("version", "3"), 'field "version" must be an integer', id="v-str"),
            pytest.param(changed("keys", DELETE), 'missing field "keys"', id="no-keys"),
            pytest.param(changed("keys", []), 'field "keys" must be an object', id="keys-list"),
            pytest.param(
                changed(f"keys.{KEY_B.keyid}.alg", "rsa"),
                f'field "keys.{KEY_B.keyid}.alg" must be "ed25519", not "rsa"',
                id="alg",
            ),
            pytest.param(
                changed(f"keys.{KEY_B.keyid}.public_key", "not base64!"),
                "must be the standard base64 of a raw 32-byte Ed25519 key",
                id="public-key-not-base64",
            ),
            pytest.param(
                changed(f"keys.{KEY_B.keyid}.public_key", _SHORT_KEY),
                "must be the standard base64 of a raw 32-byte Ed25519 key",
                id="public-key-31-bytes",
            ),
            pytest.param(
                changed(
                    f"keys.{KEY_B.keyid}.public_key",
                    base64.b64encode(KEY_A.public_key_raw).decode(),
                ),
                f'keyid "{KEY_B.keyid}" is not the SHA-256 of its public key',
                id="keyid-of-another-key",
            ),
            pytest.param(
                changed(f"keys.{KEY_A.keyid}.dev", "yes"),
                f'field "keys.{KEY_A.keyid}.dev" must be true or false',
                id="dev-not-bool",
            ),
            pytest.param(changed("roles.root", DELETE), 'needs the "root" role', id="no-root-role"),
            pytest.param(
                changed("roles.index", DELETE), 'needs the "index" role', id="no-index-role"
            ),
            pytest.param(
                changed("roles.index.keyids", [KEY_A.keyid, "f" * 64]),
                'role "index" names keyid',
                id="role-names-unlisted-key",
            ),
            pytest.param(
                changed("roles.index.keyids", []), "a role needs at least one keyid", id="empty"
            ),
            pytest.param(
                changed("roles.index.keyids", [KEY_A.keyid, KEY_A.keyid]),
                "lists a keyid twice",
                id="role-keyid-twice",
            ),
            pytest.param(
                changed("roles.index.keyids", [7]),
                'field "roles.index.keyids[0]" must be a keyid string',
                id="keyid-not-string",
            ),
            pytest.param(
                changed("roles.index.threshold", 3), "cannot be met by 2 keyid", id="threshold-3"
            ),
            pytest.param(
                changed("roles.index.threshold", 0),
                'field "roles.index.threshold" must be an integer of at least 1',
                id="threshold-0",
            ),
            pytest.param(
                changed("expires_at", "2026-11-26T10:00:00Z"),
                "is not after issued_at",
                id="expires-at-issue",
            ),
            pytest.param(
                changed("issued_at", "2026-11-26"), 'field "issued_at" must be an RFC 3339', id="t"
            ),
        ],
    )
    def test_a_bad_root_is_a_verification_error_naming_the_field(
        self, body: dict[str, Any], fragment: str
    ) -> None:
        """A root with a bad key, role, threshold or time is refused, naming what is wrong."""
        with pytest.raises(VerificationError) as caught:
            Root.from_dict(body)
        assert caught.value.message.startswith("root")
        assert fragment in caught.value.message
        assert "\n" not in caught.value.message

    def test_a_dev_flag_is_read(self) -> None:
        """`"dev": true` on a key marks it a dev key; a key without it is not one."""
        root = Root.from_dict(SPEC_BODY)
        assert root.keys[KEY_A.keyid].dev is True
        assert root.keys[KEY_B.keyid] == TrustedKey(
            keyid_for(KEY_B.public_key_raw), KEY_B.public_key_raw
        )
