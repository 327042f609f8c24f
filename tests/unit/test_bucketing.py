"""Sticky bucketing (releasecontrol.bucketing), checked against tests/vectors/bucketing.json.

The table is written by tests/vectors/generate.py from the formula itself (hashlib,
not this module); the JavaScript host's tests read the same file, so both hosts
put every user on the same side.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from releasecontrol.bucketing import (
    BUCKET_DOMAIN,
    MAX_BUCKETING_KEY_BYTES,
    WEIGHT_SCALE,
    bucket,
    check_bucketing_key,
    new_bucketing_key,
    on_canary,
)
from releasecontrol.errors import InvalidArgument

TABLE: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[1] / "vectors" / "bucketing.json").read_text("utf-8")
)


def row_id(row: dict[str, Any]) -> str:
    key = row["key"]
    shown = key if len(key) <= 24 and key.isprintable() else f"{key[:12]!a}..{len(key)}"
    return f"{row['feature_id'][:12]}/{shown}" + (f"@{row['weight']}" if "weight" in row else "")


class TestSharedTable:
    def test_the_table_is_complete(self) -> None:
        """The table has the rows the JavaScript host checks too: an empty one would pass all."""
        assert TABLE["domain"] == BUCKET_DOMAIN
        assert TABLE["weight_scale"] == WEIGHT_SCALE == 10_000
        assert TABLE["max_key_bytes"] == MAX_BUCKETING_KEY_BYTES == 256
        assert len(TABLE["buckets"]) >= 30
        assert len(TABLE["sides"]) >= 20
        assert len(TABLE["invalid_keys"]) >= 5

    @pytest.mark.parametrize("row", TABLE["buckets"], ids=row_id)
    def test_bucket_matches_the_table(self, row: dict[str, Any]) -> None:
        """Every (feature id, key) lands in the bucket the table lists, from its UTF-8 bytes."""
        assert row["key"].encode("utf-8").hex() == row["key_utf8_hex"]
        assert bucket(row["feature_id"], row["key"]) == row["bucket"]

    @pytest.mark.parametrize("row", TABLE["sides"], ids=row_id)
    def test_side_matches_the_table(self, row: dict[str, Any]) -> None:
        """At each weight around a key's bucket, the key is on the side the table says."""
        assert on_canary(row["weight"], row["feature_id"], row["key"]) is row["canary"]

    @pytest.mark.parametrize("row", TABLE["invalid_keys"], ids=lambda row: row["why"])
    def test_invalid_keys_are_refused_with_the_tables_words(self, row: dict[str, Any]) -> None:
        """A key the table refuses is refused, naming bucketing_key and the limit, on one line."""
        with pytest.raises(InvalidArgument) as caught:
            check_bucketing_key(row["key"])
        assert caught.value.message == f"bucketing_key {row['refusal']}"
        assert caught.value.field == "bucketing_key"
        with pytest.raises(InvalidArgument, match=r"^bucketing_key "):
            bucket("checkout", row["key"])

    def test_the_worked_example_is_the_formula(self) -> None:
        """The documented example's intermediate values follow from its inputs step by step."""
        example = TABLE["example"]
        data = bytes.fromhex(example["hashed_bytes_hex"])
        assert data == b"releasecontrol-bucket-v1\x00checkout\x00user-42"
        digest = hashlib.sha256(data).digest()
        assert digest.hex() == example["sha256"]
        assert digest[:4].hex() == example["first_4_bytes_hex"]
        assert int(example["first_4_bytes_hex"], 16) == example["uint32"]
        assert example["uint32"] % 10_000 == example["bucket"] == bucket("checkout", "user-42")


class TestKeys:
    @pytest.mark.parametrize(
        "key",
        [
            pytest.param("x", id="one-byte"),
            pytest.param("k" * 256, id="256-ascii"),
            pytest.param("\u00e9" * 128, id="256-bytes-of-2"),
            pytest.param("\U0001f642" * 64, id="256-bytes-of-4"),
            pytest.param("\x00", id="nul"),
        ],
    )
    def test_keys_up_to_the_limit_are_accepted(self, key: str) -> None:
        """Any well-formed string of 1 to 256 UTF-8 bytes is a key, whatever its characters."""
        assert check_bucketing_key(key) is key
        assert 0 <= bucket("checkout", key) < WEIGHT_SCALE

    @pytest.mark.parametrize(
        ("key", "words"),
        [
            pytest.param(None, "not NoneType", id="none"),
            pytest.param(42, "not int", id="int"),
            pytest.param(b"user-42", "not bytes", id="bytes"),
        ],
    )
    def test_a_key_that_is_not_a_string_is_refused(self, key: object, words: str) -> None:
        """Only text is bucketed: bytes or a number would hash differently in each language."""
        with pytest.raises(InvalidArgument) as caught:
            check_bucketing_key(key)
        assert caught.value.message == (
            f"bucketing_key must be a string of 1 to 256 bytes in UTF-8, {words}"
        )

    def test_the_field_name_is_the_callers(self) -> None:
        """A caller checking its own option gets its own name in the message."""
        with pytest.raises(InvalidArgument, match=r"^user_id must be 1 to 256 bytes") as caught:
            check_bucketing_key("", "user_id")
        assert caught.value.field == "user_id"

    def test_a_feature_id_that_is_not_one_is_refused(self) -> None:
        """The feature id is hashed as well; one that cannot be published is a caller's bug."""
        with pytest.raises(InvalidArgument, match="feature_id 'Checkout' is not a valid"):
            bucket("Checkout", "user-42")

    def test_a_new_key_is_128_random_bits_in_hex(self) -> None:
        """A generated key is 32 lowercase hex digits, and two are never alike."""
        keys = {new_bucketing_key() for _ in range(100)}
        assert len(keys) == 100
        assert all(len(k) == 32 and k == k.lower() and int(k, 16) >= 0 for k in keys)


class TestDistribution:
    def test_a_quarter_of_random_keys_are_on_a_quarter_canary(self) -> None:
        """At weight 2,500, 25 % +/- 1.5 % of 20,000 random keys get the canary (5 standard
        deviations: a skewed hash fails, chance does not)."""
        rng = random.Random(14)
        keys = [f"{rng.getrandbits(128):032x}" for _ in range(20_000)]
        share = sum(on_canary(2_500, "checkout", k) for k in keys) / len(keys)
        assert 0.235 <= share <= 0.265, share

    def test_each_feature_draws_its_own_users(self) -> None:
        """The feature id is hashed in: another feature's quarter is another set of users."""
        keys = [f"user-{n}" for n in range(4_000)]
        first = {k for k in keys if on_canary(2_500, "checkout", k)}
        second = {k for k in keys if on_canary(2_500, "search", k)}
        # Independent quarters overlap on about a sixteenth of the keys (250).
        assert 150 < len(first & second) < 350, len(first & second)

    def test_a_user_on_the_canary_stays_on_it_as_the_weight_grows(self) -> None:
        """Sticky: a key on the canary at weight w is on it at every w' > w."""
        rng = random.Random(15)
        ramp = [0, 1, 100, 500, 2_500, 5_000, 9_999, 10_000]
        for _ in range(2_000):
            key = f"{rng.getrandbits(128):032x}"
            sides = [on_canary(w, "checkout", key) for w in ramp]
            first = sides.index(True)  # at 10,000 every key is on the canary
            assert sides == [False] * first + [True] * (len(ramp) - first), (key, sides)
            assert first > 0  # at 0 nobody is

    @pytest.mark.parametrize(
        "weight",
        [
            pytest.param(-1, id="negative"),
            pytest.param(10_001, id="above"),
            pytest.param(2.5, id="fraction"),
            pytest.param(True, id="bool"),
        ],
    )
    def test_a_weight_off_the_scale_is_a_programming_error(self, weight: Any) -> None:
        """A weight comes from a verified releases.json; anything else is a caller's bug."""
        with pytest.raises(ValueError, match="weight must be an integer from 0 to 10000"):
            on_canary(weight, "checkout", "user-42")
