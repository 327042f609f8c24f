"""Keys, keyids and the trust file (releasecontrol.trust).

In host protocol v2 the trust file names the root keys, their threshold and the
root version they sign (docs/host-protocol.md 4.1). The dev key setup that writes
one is tested in test_keyfiles.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.errors import ConfigError
from releasecontrol.trust import SigningKey, TrustedKey, TrustStore, keyid_for

# RFC 8032 section 7.1, test 1: a known Ed25519 key pair and its signature of the empty message.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def fixed_key(n: int) -> SigningKey:
    """A deterministic signing key, so failures are reproducible."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


KEY_A = fixed_key(1)
KEY_B = fixed_key(2)


def entry(key: SigningKey | TrustedKey) -> dict[str, Any]:
    """The trust-file entry of `key`, as the contract writes it."""
    raw = key.public_key_raw
    return {
        "keyid": hashlib.sha256(raw).hexdigest(),
        "alg": "ed25519",
        "public_key": base64.b64encode(raw).decode(),
    }


def trust_json(threshold: Any = 1, keys: Any = None) -> str:
    return json.dumps({"threshold": threshold, "keys": [entry(KEY_A)] if keys is None else keys})


def with_root_version(root_version: Any) -> str:
    """A trust file of KEY_A naming `root_version`."""
    return json.dumps({"threshold": 1, "root_version": root_version, "keys": [entry(KEY_A)]})


class TestKeyid:
    def test_keyid_is_the_hex_sha256_of_the_raw_public_key(self) -> None:
        """A keyid is the lowercase hex SHA-256 of the raw 32-byte key, recomputable by anyone."""
        expected = hashlib.sha256(RFC8032_PUBLIC).hexdigest()
        assert keyid_for(RFC8032_PUBLIC) == expected
        assert expected == expected.lower() and len(expected) == 64

    def test_signing_key_matches_rfc8032_vector(self) -> None:
        """A signing key derives the RFC 8032 public key and signs the empty message as it says."""
        key = SigningKey(Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))
        assert key.public_key_raw == RFC8032_PUBLIC
        assert key.keyid == keyid_for(RFC8032_PUBLIC)
        assert key.sign(b"") == RFC8032_SIGNATURE


class TestTrustedKey:
    def test_verifies_the_rfc8032_signature(self) -> None:
        """A trusted key accepts the published RFC 8032 signature of its message."""
        assert TrustedKey.from_raw(RFC8032_PUBLIC).verify(RFC8032_SIGNATURE, b"")

    @pytest.mark.parametrize(
        ("signature", "data"),
        [
            pytest.param(RFC8032_SIGNATURE, b"x", id="other-data"),
            pytest.param(RFC8032_SIGNATURE[:-1] + b"\x00", b"", id="altered-signature"),
            pytest.param(RFC8032_SIGNATURE[:63], b"", id="short-signature"),
            pytest.param(b"", b"", id="empty-signature"),
        ],
    )
    def test_rejects_without_raising(self, signature: bytes, data: bytes) -> None:
        """A wrong or malformed signature is reported as False, never as an exception."""
        assert TrustedKey.from_raw(RFC8032_PUBLIC).verify(signature, data) is False

    def test_refuses_a_keyid_that_is_not_its_keys_hash(self) -> None:
        """A trusted key cannot be built under another key's keyid."""
        with pytest.raises(ValueError, match="not the SHA-256"):
            TrustedKey(keyid=KEY_B.keyid, public_key_raw=KEY_A.public_key_raw)


class TestTrustStoreFromJson:
    def test_parses_the_contract_format(self) -> None:
        """A trust file in the contract's format gives its threshold and keys by keyid."""
        store = TrustStore.from_json(trust_json(2, [entry(KEY_A), entry(KEY_B)]))
        assert store.threshold == 2
        assert set(store.keys) == {KEY_A.keyid, KEY_B.keyid}
        assert store.keys[KEY_A.keyid].public_key_raw == KEY_A.public_key_raw

    def test_ignores_unknown_fields_in_a_key_entry(self) -> None:
        """Extra fields in a key entry (a note, an expiry of a newer format) are ignored."""
        store = TrustStore.from_json(trust_json(1, [{**entry(KEY_A), "note": "ops laptop"}]))
        assert list(store.keys) == [KEY_A.keyid]

    def test_missing_threshold_means_one(self) -> None:
        """The contract's default threshold is 1 when the file leaves it out."""
        store = TrustStore.from_json(json.dumps({"keys": [entry(KEY_A)]}))
        assert store.threshold == 1

    def test_to_json_writes_exactly_the_contract_format(self) -> None:
        """to_json writes threshold and keyid/alg/public_key entries, indent 2, trailing newline."""
        store = TrustStore.for_keys([KEY_A.trusted_key()])
        e = entry(KEY_A)
        assert store.to_json() == (
            "{\n"
            '  "threshold": 1,\n'
            '  "keys": [\n'
            "    {\n"
            f'      "keyid": "{e["keyid"]}",\n'
            '      "alg": "ed25519",\n'
            f'      "public_key": "{e["public_key"]}"\n'
            "    }\n"
            "  ]\n"
            "}\n"
        )

    def test_to_json_round_trips(self) -> None:
        """What to_json writes, from_json reads back as the same store."""
        store = TrustStore.for_keys([KEY_A.trusted_key(), KEY_B.trusted_key()], threshold=2)
        assert TrustStore.from_json(store.to_json()) == store

    def test_for_keys_refuses_an_unreachable_threshold(self) -> None:
        """A store that no set of its keys could satisfy is refused when built in code too."""
        with pytest.raises(ValueError, match="cannot be met"):
            TrustStore.for_keys([KEY_A.trusted_key()], threshold=2)


# A raw key whose standard base64 has "+" and "/", so the URL-safe spelling differs.
_PLUS_SLASH_RAW = b"\xfb\xff" * 16
_PLUS_SLASH = {
    "keyid": keyid_for(_PLUS_SLASH_RAW),
    "alg": "ed25519",
    "public_key": base64.b64encode(_PLUS_SLASH_RAW).decode(),
}
_SHORT_RAW = KEY_A.public_key_raw[:31]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param("{not json", "is not valid JSON", id="invalid-json"),
        pytest.param("[]", "must be a JSON object", id="not-an-object"),
        pytest.param('{"threshold": 1}', 'has no "keys"', id="missing-keys"),
        pytest.param(trust_json(1, []), '"keys" must be a non-empty list', id="empty-keys"),
        pytest.param(trust_json(1, "k"), '"keys" must be a non-empty list', id="keys-not-list"),
        pytest.param(trust_json(1, ["k"]), "keys[0] must be an object", id="entry-not-object"),
        pytest.param(
            trust_json(1, [{**entry(KEY_A), "alg": "rsa"}]),
            'keys[0].alg is "rsa"; only "ed25519" is supported',
            id="alg-not-ed25519",
        ),
        pytest.param(
            trust_json(1, [{k: v for k, v in entry(KEY_A).items() if k != "public_key"}]),
            'keys[0] has no "public_key"',
            id="missing-public-key",
        ),
        pytest.param(
            trust_json(1, [{k: v for k, v in entry(KEY_A).items() if k != "keyid"}]),
            'keys[0] has no "keyid"',
            id="missing-keyid",
        ),
        pytest.param(
            trust_json(1, [{k: v for k, v in entry(KEY_A).items() if k != "alg"}]),
            'keys[0] has no "alg"',
            id="missing-alg",
        ),
        pytest.param(
            trust_json(1, [{**entry(KEY_A), "public_key": 7}]),
            "keys[0].public_key must be a string",
            id="public-key-not-string",
        ),
        pytest.param(
            trust_json(1, [{**entry(KEY_A), "public_key": "not base64!"}]),
            "keys[0].public_key is not standard base64",
            id="public-key-not-base64",
        ),
        pytest.param(
            trust_json(
                1,
                [
                    {
                        **_PLUS_SLASH,
                        "public_key": _PLUS_SLASH["public_key"].translate({43: 45, 47: 95}),
                    }
                ],
            ),
            "keys[0].public_key is not standard base64",
            id="public-key-urlsafe-base64",
        ),
        pytest.param(
            trust_json(
                1,
                [
                    {
                        "keyid": keyid_for(_SHORT_RAW),
                        "alg": "ed25519",
                        "public_key": base64.b64encode(_SHORT_RAW).decode(),
                    }
                ],
            ),
            "keys[0].public_key decodes to 31 bytes, not 32",
            id="public-key-31-bytes",
        ),
        pytest.param(
            trust_json(1, [{**entry(KEY_A), "keyid": KEY_B.keyid}]),
            f"keys[0].keyid {KEY_B.keyid[:8]}… does not match its public key; "
            f"expected {KEY_A.keyid}",
            id="keyid-of-another-key",
        ),
        pytest.param(
            trust_json(1, [{**entry(KEY_A), "keyid": KEY_A.keyid.upper()}]),
            f"does not match its public key; expected {KEY_A.keyid}",
            id="keyid-uppercase",
        ),
        pytest.param(
            trust_json(1, [entry(KEY_A), entry(KEY_A)]),
            f"keys[1] repeats keyid {KEY_A.keyid[:8]}",
            id="duplicate-keyid",
        ),
        pytest.param(trust_json(0), "threshold must be an integer of at least 1", id="threshold-0"),
        pytest.param(
            trust_json(-1), "threshold must be an integer of at least 1", id="threshold-neg"
        ),
        pytest.param(
            trust_json("1"), "threshold must be an integer of at least 1", id="threshold-string"
        ),
        pytest.param(
            trust_json(1.5), "threshold must be an integer of at least 1", id="threshold-float"
        ),
        pytest.param(
            trust_json(True), "threshold must be an integer of at least 1", id="threshold-bool"
        ),
        pytest.param(
            trust_json(3, [entry(KEY_A), entry(KEY_B)]),
            "threshold 3 is more than the 2 key(s) listed",
            id="threshold-above-key-count",
        ),
        pytest.param(
            with_root_version(0),
            "root_version must be an integer of at least 1, not 0",
            id="root-version-0",
        ),
        pytest.param(
            with_root_version(-2),
            "root_version must be an integer of at least 1, not -2",
            id="root-version-negative",
        ),
        pytest.param(
            with_root_version("2"),
            'root_version must be an integer of at least 1, not "2"',
            id="root-version-string",
        ),
        pytest.param(
            with_root_version(2.0),
            "root_version must be an integer of at least 1, not 2.0",
            id="root-version-float",
        ),
        pytest.param(
            with_root_version(True),
            "root_version must be an integer of at least 1, not true",
            id="root-version-bool",
        ),
        pytest.param(
            with_root_version(None),
            "root_version must be an integer of at least 1, not null",
            id="root-version-null",
        ),
    ],
)
def test_malformed_trust_file_is_a_config_error_naming_source_and_problem(
    text: str, fragment: str
) -> None:
    """Every malformed trust file raises ConfigError: one line naming the source and the problem."""
    with pytest.raises(ConfigError) as caught:
        TrustStore.from_json(text, source="FEATURE_TRUST_PUBLIC_KEYS_JSON")
    message = caught.value.message
    assert message.startswith("FEATURE_TRUST_PUBLIC_KEYS_JSON")
    assert fragment in message
    assert "\n" not in message


def test_well_formed_plus_slash_key_is_accepted() -> None:
    """The standard base64 spelling (with "+" and "/") of the table's URL-safe case is valid."""
    store = TrustStore.from_json(trust_json(1, [_PLUS_SLASH]))
    assert store.keys[_PLUS_SLASH["keyid"]].public_key_raw == _PLUS_SLASH_RAW


class TestDevKeys:
    def test_a_dev_entry_is_read_and_written_back(self) -> None:
        """`"dev": true` marks a dev key; to_json writes it back, and from_json reads it again."""
        store = TrustStore.from_json(trust_json(1, [{**entry(KEY_A), "dev": True}, entry(KEY_B)]))
        assert store.keys[KEY_A.keyid].dev is True
        assert store.keys[KEY_B.keyid].dev is False
        assert store.dev_keyids == {KEY_A.keyid}
        assert TrustStore.from_json(store.to_json()) == store

    def test_to_json_writes_the_flag_only_for_dev_keys(self) -> None:
        """A key that is not a dev key keeps exactly the contract's three fields."""
        store = TrustStore.for_keys([KEY_A.trusted_key(dev=True), KEY_B.trusted_key()])
        entries = json.loads(store.to_json())["keys"]
        assert entries == [{**entry(KEY_A), "dev": True}, entry(KEY_B)]

    def test_an_explicit_false_is_not_a_dev_key(self) -> None:
        """`"dev": false` means the same as leaving the flag out."""
        store = TrustStore.from_json(trust_json(1, [{**entry(KEY_A), "dev": False}]))
        assert store.dev_keyids == frozenset()

    @pytest.mark.parametrize(
        "value",
        [pytest.param("true", id="string"), pytest.param(1, id="number")],
    )
    def test_a_dev_flag_that_is_not_a_boolean_is_refused(self, value: Any) -> None:
        """A dev flag of another type is a ConfigError naming the field, never a guess."""
        with pytest.raises(ConfigError, match=r"keys\[0\]\.dev must be true or false"):
            TrustStore.from_json(trust_json(1, [{**entry(KEY_A), "dev": value}]), source="t")

    def test_without_dev_keys_drops_them(self) -> None:
        """without_dev_keys keeps the threshold and every key that is not a dev key."""
        store = TrustStore.for_keys([KEY_A.trusted_key(), KEY_B.trusted_key(dev=True)])
        assert list(store.without_dev_keys().keys) == [KEY_A.keyid]
        assert store.without_dev_keys().threshold == 1
        plain = TrustStore.for_keys([KEY_A.trusted_key()])
        assert plain.without_dev_keys() is plain

    def test_without_dev_keys_refuses_an_unreachable_threshold(self) -> None:
        """A store that would verify nothing without its dev keys is a ValueError, not empty."""
        store = TrustStore.for_keys([KEY_A.trusted_key(dev=True)])
        with pytest.raises(ValueError, match="fewer than its threshold 1"):
            store.without_dev_keys()


class TestTrustStoreFromFile:
    def test_reads_the_file(self, tmp_path: Path) -> None:
        """from_file parses the trust file at a path."""
        path = tmp_path / "trust.json"
        path.write_text(trust_json())
        assert list(TrustStore.from_file(path).keys) == [KEY_A.keyid]

    def test_names_the_path_when_the_file_is_missing(self, tmp_path: Path) -> None:
        """A missing trust file is a ConfigError naming the path."""
        path = tmp_path / "absent.json"
        with pytest.raises(ConfigError, match=r"absent\.json"):
            TrustStore.from_file(path)

    def test_names_the_path_when_the_file_is_malformed(self, tmp_path: Path) -> None:
        """A malformed trust file's error names the file it came from."""
        path = tmp_path / "trust.json"
        path.write_text(trust_json(0))
        with pytest.raises(ConfigError, match=r"trust file .*trust\.json: threshold"):
            TrustStore.from_file(path)


class TestTrustStoreFromEnvironment:
    @pytest.fixture
    def path_b(self, tmp_path: Path) -> str:
        path = tmp_path / "trust-b.json"
        path.write_text(trust_json(1, [entry(KEY_B)]))
        return str(path)

    @pytest.mark.parametrize(
        ("use_json", "use_path", "expected"),
        [
            pytest.param(False, False, None, id="neither-set-none"),
            pytest.param(True, False, "A", id="inline-only"),
            pytest.param(False, True, "B", id="path-only"),
            pytest.param(True, True, "A", id="inline-wins-over-path"),
        ],
    )
    def test_inline_json_wins_over_path(
        self, path_b: str, use_json: bool, use_path: bool, expected: str | None
    ) -> None:
        """The inline JSON variable wins over the path variable; with neither set there is None."""
        environ = {"UNRELATED": "1"}
        if use_json:
            environ["FEATURE_TRUST_PUBLIC_KEYS_JSON"] = trust_json(1, [entry(KEY_A)])
        if use_path:
            environ["FEATURE_TRUST_PUBLIC_KEYS_PATH"] = path_b
        store = TrustStore.from_environment(environ)
        if expected is None:
            assert store is None
        else:
            assert store is not None
            assert list(store.keys) == [{"A": KEY_A, "B": KEY_B}[expected].keyid]

    def test_empty_inline_value_counts_as_unset(self, path_b: str) -> None:
        """An empty FEATURE_TRUST_PUBLIC_KEYS_JSON falls through to the path."""
        environ = {"FEATURE_TRUST_PUBLIC_KEYS_JSON": "", "FEATURE_TRUST_PUBLIC_KEYS_PATH": path_b}
        store = TrustStore.from_environment(environ)
        assert store is not None and list(store.keys) == [KEY_B.keyid]

    def test_malformed_inline_value_does_not_fall_back_to_the_path(self, path_b: str) -> None:
        """A broken inline trust file is an error naming the variable, not a silent fallback."""
        environ = {
            "FEATURE_TRUST_PUBLIC_KEYS_JSON": "{",
            "FEATURE_TRUST_PUBLIC_KEYS_PATH": path_b,
        }
        with pytest.raises(ConfigError, match=r"^FEATURE_TRUST_PUBLIC_KEYS_JSON is not valid JSON"):
            TrustStore.from_environment(environ)

    def test_unreadable_path_names_the_variable(self, tmp_path: Path) -> None:
        """A path to no file is a ConfigError naming FEATURE_TRUST_PUBLIC_KEYS_PATH and the path."""
        missing = str(tmp_path / "nope.json")
        with pytest.raises(
            ConfigError, match=r"^FEATURE_TRUST_PUBLIC_KEYS_PATH names .*nope\.json"
        ):
            TrustStore.from_environment({"FEATURE_TRUST_PUBLIC_KEYS_PATH": missing})

    def test_malformed_file_names_the_variable(self, tmp_path: Path) -> None:
        """A malformed file named by the path variable is reported under that variable."""
        path = tmp_path / "bad.json"
        path.write_text(trust_json(5))
        with pytest.raises(ConfigError, match=r"^FEATURE_TRUST_PUBLIC_KEYS_PATH \(.*bad.json\)"):
            TrustStore.from_environment({"FEATURE_TRUST_PUBLIC_KEYS_PATH": str(path)})


class TestSigningKey:
    def test_pem_round_trip_keeps_the_key(self) -> None:
        """to_pem writes an unencrypted PKCS8 PEM that from_pem reads back as the same key."""
        key = SigningKey.generate()
        pem = key.to_pem()
        assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")
        again = SigningKey.from_pem(pem)
        assert again.keyid == key.keyid
        assert again.trusted_key().verify(key.sign(b"data"), b"data")

    def test_keyid_is_the_hash_of_the_public_key(self) -> None:
        """A signing key's keyid is keyid_for its raw public key, as its trusted key says."""
        key = SigningKey.generate()
        assert key.keyid == hashlib.sha256(key.public_key_raw).hexdigest()
        assert key.trusted_key() == TrustedKey(key.keyid, key.public_key_raw)

    def test_save_is_owner_only_and_leaves_no_temp_files(self, tmp_path: Path) -> None:
        """save writes mode 0600, replaces an older file, and leaves nothing else behind."""
        path = tmp_path / "signing-key.pem"
        path.write_bytes(b"old")
        path.chmod(0o644)
        key = SigningKey.generate()
        key.save(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert SigningKey.load(path).keyid == key.keyid
        assert os.listdir(tmp_path) == ["signing-key.pem"]

    def test_repr_does_not_show_the_secret(self) -> None:
        """repr names the keyid only, so a logged key leaks nothing."""
        key = SigningKey.generate()
        assert repr(key) == f"SigningKey(keyid={key.keyid!r})"

    @pytest.mark.parametrize(
        ("pem", "fragment"),
        [
            pytest.param(b"not a pem", "not an unencrypted PKCS8 PEM", id="garbage"),
            pytest.param(
                Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"secret"),
                ),
                "not an unencrypted PKCS8 PEM",
                id="encrypted",
            ),
            pytest.param(
                ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                "not an Ed25519 key",
                id="ec-key",
            ),
        ],
    )
    def test_from_pem_refuses_what_is_not_an_ed25519_key(self, pem: bytes, fragment: str) -> None:
        """A PEM that is not an unencrypted Ed25519 key is a ConfigError naming the source."""
        with pytest.raises(ConfigError) as caught:
            SigningKey.from_pem(pem, source="signing key /etc/k.pem")
        assert caught.value.message.startswith("signing key /etc/k.pem")
        assert fragment in caught.value.message

    def test_load_names_a_missing_file(self, tmp_path: Path) -> None:
        """Loading a key that is not there is a ConfigError naming the path."""
        with pytest.raises(ConfigError, match=r"absent\.pem"):
            SigningKey.load(tmp_path / "absent.pem")


class TestRootVersion:
    def test_a_missing_root_version_means_root_1(self) -> None:
        """A trust file without root_version (every v1 trust file) pins root 1."""
        assert TrustStore.from_json(trust_json()).root_version == 1

    def test_root_version_is_read_and_written_back(self) -> None:
        """A trust file pinning root 3 reads as such, and to_json writes root_version 3."""
        store = TrustStore.from_json(with_root_version(3))
        assert store.root_version == 3
        assert json.loads(store.to_json())["root_version"] == 3
        assert TrustStore.from_json(store.to_json()) == store

    def test_root_version_1_is_left_out_when_written(self) -> None:
        """to_json writes root_version only when it is not 1, so v1 trust files stay the same."""
        store = TrustStore.from_json(with_root_version(1))
        assert "root_version" not in json.loads(store.to_json())

    @pytest.mark.parametrize("value", [0, True, "1"], ids=["zero", "bool", "string"])
    def test_a_store_built_in_code_refuses_a_bad_root_version(self, value: Any) -> None:
        """Building a store with a root version that is not an integer of at least 1 fails."""
        with pytest.raises(ValueError, match="root_version must be"):
            TrustStore(threshold=1, keys={KEY_A.keyid: KEY_A.trusted_key()}, root_version=value)


class TestFingerprint:
    def test_is_the_sha256_of_the_trust_files_jcs_bytes(self) -> None:
        """The fingerprint is the hex SHA-256 of the trust file's RFC 8785 bytes (4.2)."""
        store = TrustStore.from_json(trust_json())
        document = {"keys": [entry(KEY_A)], "threshold": 1}
        jcs = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
        assert store.fingerprint == hashlib.sha256(jcs).hexdigest()

    def test_the_same_trust_written_differently_has_one_fingerprint(self) -> None:
        """Whitespace, member order and an explicit root_version 1 do not change it."""
        plain = TrustStore.from_json(trust_json())
        spaced = TrustStore.from_json(
            json.dumps({"keys": [entry(KEY_A)], "root_version": 1, "threshold": 1}, indent=4)
        )
        assert spaced.fingerprint == plain.fingerprint

    @pytest.mark.parametrize(
        ("base", "other"),
        [
            pytest.param(trust_json(), trust_json(1, [entry(KEY_B)]), id="other-key"),
            pytest.param(trust_json(), trust_json(1, [entry(KEY_A), entry(KEY_B)]), id="key-added"),
            pytest.param(
                trust_json(1, [entry(KEY_A), entry(KEY_B)]),
                trust_json(2, [entry(KEY_A), entry(KEY_B)]),
                id="other-threshold",
            ),
            pytest.param(trust_json(), with_root_version(2), id="other-root-version"),
            pytest.param(trust_json(), trust_json(1, [{**entry(KEY_A), "dev": True}]), id="dev"),
        ],
    )
    def test_any_change_that_matters_changes_it(self, base: str, other: str) -> None:
        """Another key, threshold, root version or dev flag is another fingerprint."""
        assert TrustStore.from_json(other).fingerprint != TrustStore.from_json(base).fingerprint
