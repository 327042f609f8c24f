"""The sharded index: hash bins, pins, remote-index.json and its shards (releasecontrol.shards).

docs/host-protocol.md sections 3.4, 3.5 and 3.7. What a verifier does with these
models (pins checked, mix and match refused) is in tests/unit/test_verifier.py.
"""

from __future__ import annotations

import copy
import hashlib
from datetime import timedelta
from typing import Any

import pytest
from host_repository import EXPIRY, NOW

from releasecontrol.errors import VerificationError
from releasecontrol.shards import (
    MAX_BITS,
    Pin,
    RemoteIndex,
    Shard,
    bin_name_valid,
    bin_of,
    shard_path,
)

SHA_1 = hashlib.sha256(b"one").hexdigest()
SHA_2 = hashlib.sha256(b"two").hexdigest()
DELETE = object()


def spec_bin(feature_id: str, bits: int) -> str:
    """Section 3.7, written out from the page alone."""
    digest = hashlib.sha256(feature_id.encode("utf-8")).digest()
    value = int.from_bytes(digest[:4], "big") >> (32 - bits) if bits else 0
    digits = max(1, -(-bits // 4))
    return f"{value:0{digits}x}"


TOP_BODY: dict[str, Any] = {
    "schema_version": 2,
    "type": "remote-index",
    "sequence": 412,
    "root_version": 3,
    "issued_at": "2026-11-26T10:00:00Z",
    "expires_at": "2026-12-03T10:00:00Z",
    "bins": {
        "bits": 7,
        "shards": {
            "12": {"sha256": SHA_2, "length": 300, "sequence": 411},
            "63": {"sha256": SHA_1, "length": 10411, "sequence": 409},
        },
    },
}

SHARD_BODY: dict[str, Any] = {
    "schema_version": 2,
    "type": "index-shard",
    "bits": 7,
    "bin": "63",
    "sequence": 409,
    "issued_at": "2026-11-26T09:58:00Z",
    "expires_at": "2026-12-03T09:58:00Z",
    "features": {"checkout": {"sha256": SHA_1, "length": 912, "sequence": 17}},
}


def changed(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `body` with the member at dotted `path` set to `value` (or deleted)."""
    body = copy.deepcopy(body)
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[part]
    if value is DELETE:
        del target[last]
    else:
        target[last] = value
    return body


class TestBins:
    def test_the_pages_example(self) -> None:
        """With 7 bits `checkout` (SHA-256 c7…) is in bin 63, served at index/7/63.json."""
        assert bin_of("checkout", 7) == "63"
        assert shard_path(7, bin_of("checkout", 7)) == "index/7/63.json"

    @pytest.mark.parametrize("bits", [0, 1, 3, 4, 5, 7, 8, 12, 15, 16])
    def test_bin_of_is_the_formula_of_section_3_7(self, bits: int) -> None:
        """bin_of gives what the page's formula gives, zero-padded to the width of its bits."""
        for feature_id in ("checkout", "search", "cart", "a", "feature-0042", "x" * 63):
            expected = spec_bin(feature_id, bits)
            assert bin_of(feature_id, bits) == expected
            assert bin_name_valid(expected, bits)

    @pytest.mark.parametrize(
        ("name", "bits", "valid"),
        [
            pytest.param("0", 0, True, id="bits-0-only-bin"),
            pytest.param("1", 0, False, id="bits-0-no-bin-1"),
            pytest.param("1", 1, True, id="bits-1-bin-1"),
            pytest.param("2", 1, False, id="bits-1-bin-2"),
            pytest.param("7f", 7, True, id="bits-7-highest"),
            pytest.param("80", 7, False, id="bits-7-too-high"),
            pytest.param("7", 7, False, id="bits-7-one-digit"),
            pytest.param("063", 7, False, id="bits-7-three-digits"),
            pytest.param("6F", 7, False, id="uppercase"),
            pytest.param("ffff", 16, True, id="bits-16-highest"),
            pytest.param("g0", 8, False, id="not-hex"),
        ],
    )
    def test_a_bin_name_is_lowercase_hex_of_its_width_below_2_to_the_bits(
        self, name: str, bits: int, valid: bool
    ) -> None:
        """Bin names are max(1, ceil(bits/4)) lowercase hex digits below 2**bits."""
        assert bin_name_valid(name, bits) is valid

    @pytest.mark.parametrize("bits", [-1, MAX_BITS + 1, True], ids=["negative", "17", "bool"])
    def test_bits_outside_0_to_16_are_refused(self, bits: Any) -> None:
        """bits is an integer from 0 to 16; anything else is a ValueError."""
        with pytest.raises(ValueError, match="bits must be an integer from 0 to 16"):
            bin_of("checkout", bits)

    def test_shard_path_refuses_a_bin_that_is_not_one(self) -> None:
        """No path is made for a name that is not a bin: it could leave index/<bits>/."""
        with pytest.raises(ValueError, match="is not a bin under 7 bits"):
            shard_path(7, "../x")


class TestPin:
    def test_of_pins_the_bytes_and_the_sequence(self) -> None:
        """Pin.of records the SHA-256 and length of the bytes, and the sequence given."""
        assert Pin.of(b"one", 4) == Pin(SHA_1, 3, 4)

    @pytest.mark.parametrize(
        ("sha256", "length", "sequence", "fragment"),
        [
            pytest.param("ab", 1, 1, "not 64 lowercase hex", id="short-sha"),
            pytest.param(SHA_1.upper(), 1, 1, "not 64 lowercase hex", id="upper-sha"),
            pytest.param(SHA_1, 0, 1, "length must be an integer of at least 1", id="length-0"),
            pytest.param(SHA_1, True, 1, "length must be an integer", id="length-bool"),
            pytest.param(SHA_1, 1, -1, "sequence must be a non-negative", id="sequence-negative"),
        ],
    )
    def test_a_pin_that_pins_nothing_is_refused(
        self, sha256: str, length: Any, sequence: int, fragment: str
    ) -> None:
        """A pin needs a SHA-256, a length of at least one byte and a sequence."""
        with pytest.raises(ValueError, match=fragment):
            Pin(sha256, length, sequence)


class TestRemoteIndex:
    def test_round_trips_the_pages_body(self) -> None:
        """The page's remote-index.json body reads into the model and is written back exactly."""
        top = RemoteIndex.from_dict(TOP_BODY)
        assert (top.sequence, top.root_version, top.bits) == (412, 3, 7)
        assert top.shards["63"] == Pin(SHA_1, 10411, 409)
        assert top.to_dict() == TOP_BODY

    def test_shard_of_names_the_bin_and_its_pin(self) -> None:
        """shard_of gives a feature's bin and the pin of its shard, None for an empty bin."""
        top = RemoteIndex.from_dict(TOP_BODY)
        assert top.shard_of("checkout") == ("63", Pin(SHA_1, 10411, 409))
        assert top.shard_of("cart") == ("0e", None)

    def test_unknown_members_are_carried(self) -> None:
        """Members of a newer server, at the top and in "bins", come back out unchanged."""
        body = changed(TOP_BODY, "mirrors", ["https://cdn2.example/"])
        body["bins"]["hash"] = "sha256"
        body["bins"]["shards"]["63"]["size_hint"] = 3
        assert RemoteIndex.from_dict(body).to_dict() == body

    @pytest.mark.parametrize(
        ("path", "value", "fragment"),
        [
            pytest.param("type", "index-shard", 'field "type" must be "remote-index"', id="type"),
            pytest.param("sequence", DELETE, 'missing field "sequence"', id="no-sequence"),
            pytest.param(
                "root_version", 0, 'field "root_version" must be an integer of at least 1', id="rv0"
            ),
            pytest.param(
                "bins.bits", 17, 'field "bins.bits" must be an integer from 0 to 16', id="bits-17"
            ),
            pytest.param(
                "bins.bits", "7", 'field "bins.bits" must be an integer from 0 to 16', id="bits-str"
            ),
            pytest.param(
                "bins.shards.80",
                {"sha256": SHA_1, "length": 1, "sequence": 1},
                '"bins.shards" names bin "80", which is not 2 lowercase hex digit(s) below 128',
                id="bin-out-of-range",
            ),
            pytest.param(
                "bins.shards.63.length",
                0,
                'field "bins.shards.63.length" must be an integer of at least 1',
                id="pin-length-0",
            ),
            pytest.param(
                "bins.shards.63.sha256",
                SHA_1.upper(),
                'field "bins.shards.63.sha256" must be a SHA-256',
                id="pin-sha-upper",
            ),
            pytest.param(
                "bins.shards.63.sequence", DELETE, 'missing field "bins.shards.63.sequence"', id="q"
            ),
            pytest.param(
                "expires_at", "2026-11-26T10:00:00Z", "is not after issued_at", id="expiry"
            ),
        ],
    )
    def test_a_bad_field_is_a_verification_error_naming_it(
        self, path: str, value: Any, fragment: str
    ) -> None:
        """A missing, ill-typed or out-of-range field is refused, naming its full path."""
        with pytest.raises(VerificationError) as caught:
            RemoteIndex.from_dict(changed(TOP_BODY, path, value))
        assert caught.value.message.startswith("remote index")
        assert fragment in caught.value.message

    def test_a_bin_that_does_not_fit_its_bits_is_refused_when_built(self) -> None:
        """A model naming a bin its bits cannot hold is a ValueError, never written."""
        with pytest.raises(ValueError, match="'80' is not a bin under 7 bits"):
            RemoteIndex(1, 1, 7, {"80": Pin(SHA_1, 1, 1)}, NOW, NOW + EXPIRY)

    def test_expired_from_expires_at_on(self) -> None:
        """A top level is expired from its expires_at second on, not a second before."""
        top = RemoteIndex.from_dict(TOP_BODY)
        assert not top.is_expired(top.expires_at - timedelta(seconds=1))
        assert top.is_expired(top.expires_at)


class TestShard:
    def test_round_trips_the_pages_body(self) -> None:
        """The page's shard body reads into the model and is written back exactly."""
        shard = Shard.from_dict(SHARD_BODY)
        assert shard.features == {"checkout": Pin(SHA_1, 912, 17)}
        assert shard.path == "index/7/63.json"
        assert shard.to_dict() == SHARD_BODY

    @pytest.mark.parametrize(
        ("path", "value", "fragment"),
        [
            pytest.param("type", "remote-index", 'field "type" must be "index-shard"', id="type"),
            pytest.param("bin", "80", 'field "bin" must be 2 lowercase hex digit(s)', id="bin"),
            pytest.param("bin", 99, 'field "bin" must be 2 lowercase hex digit(s)', id="bin-int"),
            pytest.param("bits", 17, 'field "bits" must be an integer from 0 to 16', id="bits"),
            pytest.param(
                "features.Checkout",
                {"sha256": SHA_1, "length": 1, "sequence": 1},
                '"Checkout" in "features" is not a feature id',
                id="uppercase-id",
            ),
            pytest.param(
                "features.-x",
                {"sha256": SHA_1, "length": 1, "sequence": 1},
                '"-x" in "features" is not a feature id',
                id="leading-dash",
            ),
            pytest.param(
                "features." + "a" * 64,
                {"sha256": SHA_1, "length": 1, "sequence": 1},
                'in "features" is not a feature id',
                id="64-characters",
            ),
            pytest.param(
                "features.checkout.sequence",
                0,
                'field "features.checkout.sequence" must be an integer of at least 1',
                id="releases-sequence-0",
            ),
            pytest.param(
                "features.search",
                {"sha256": SHA_1, "length": 1, "sequence": 1},
                "feature 'search' is not in bin 63",
                id="feature-of-another-bin",
            ),
        ],
    )
    def test_a_bad_shard_is_a_verification_error_naming_it(
        self, path: str, value: Any, fragment: str
    ) -> None:
        """A shard with a bad bin, feature id or pin is refused, saying what is wrong."""
        with pytest.raises(VerificationError) as caught:
            Shard.from_dict(changed(SHARD_BODY, path, value))
        assert caught.value.message.startswith("index shard")
        assert fragment in caught.value.message

    def test_without_check_bins_a_feature_of_another_bin_is_read(self) -> None:
        """check_bins=False reads it, so a verifier can call it mix and match, not malformed."""
        body = changed(SHARD_BODY, "features.search", {"sha256": SHA_2, "length": 5, "sequence": 2})
        shard = Shard.from_dict(body, check_bins=False)
        assert set(shard.features) == {"checkout", "search"}

    def test_a_63_character_id_is_a_feature_id(self) -> None:
        """The longest feature id the page allows is read (when it falls in the shard's bin)."""
        long_id = next(f"f{i:061d}x" for i in range(10_000) if bin_of(f"f{i:061d}x", 7) == "63")
        body = changed(
            SHARD_BODY, f"features.{long_id}", {"sha256": SHA_2, "length": 5, "sequence": 2}
        )
        assert long_id in Shard.from_dict(body).features
