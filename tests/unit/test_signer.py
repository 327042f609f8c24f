"""Signer: index files built without the models are byte for byte the reference encoding."""

from __future__ import annotations

import hashlib
import random
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.index import Envelope, sign, verify_signatures
from releasecontrol.shards import Pin, RemoteIndex, Shard, bin_of, shard_path
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.releases import Canary, FeatureState, PublishedVersion
from releasecontrol_server.signer import PinMembers, Signer, jcs, pin_of

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
EXPIRY_SECONDS = 7 * 24 * 3600


def fixed_key(n: int) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


KEY_A, KEY_B = fixed_key(1), fixed_key(2)


class TestSignerBytes:
    @pytest.mark.parametrize(
        "keys", [[KEY_A], [KEY_A, KEY_B], [KEY_B, KEY_A, KEY_B]], ids=["a", "a-b", "b-a-b"]
    )
    @pytest.mark.parametrize("count", [0, 1, 3, 130])
    def test_shard_and_top_files_are_the_reference_encoding(
        self, keys: list[SigningKey], count: int
    ) -> None:
        """A shard and remote-index.json equal sign(model.to_dict()).to_bytes(), verifiable."""
        rng = random.Random(count)
        pins = {
            f"f{i:03d}": Pin(
                hashlib.sha256(bytes([i % 256])).hexdigest(), rng.randrange(1, 9999), i
            )
            for i in range(count)
        }
        bins: dict[str, dict[str, Pin]] = {}
        for feature_id, pin in pins.items():
            bins.setdefault(bin_of(feature_id, 7), {})[feature_id] = pin
        signer = Signer(keys, EXPIRY_SECONDS)
        expires = NOW + timedelta(seconds=EXPIRY_SECONDS)
        shard_pins = {}
        for name, features in bins.items():
            file = signer.shard_file(7, name, features, 42, NOW)
            model = Shard(
                bits=7, bin=name, sequence=42, features=features, issued_at=NOW, expires_at=expires
            )
            assert file.content == sign(model.to_dict(), keys).to_bytes()
            assert (file.path, file.sequence) == (shard_path(7, name), 42)
            shard_pins[name] = pin_of(file)
        top = signer.top_file(43, 2, 7, shard_pins, NOW)
        model_top = RemoteIndex(
            sequence=43,
            root_version=2,
            bits=7,
            shards=shard_pins,
            issued_at=NOW,
            expires_at=expires,
        )
        assert top.content == sign(model_top.to_dict(), keys).to_bytes()
        assert (top.path, top.sequence, top.sha256) == (
            "remote-index.json",
            43,
            hashlib.sha256(top.content).hexdigest(),
        )
        trust = TrustStore.for_keys([k.trusted_key() for k in keys])
        verify_signatures(Envelope.from_bytes(top.content), trust)

    def test_a_top_level_kept_encoded_equals_one_encoded_whole(self) -> None:
        """Pins changed, added and refused through PinMembers sign the same bytes as the map."""
        rng = random.Random(7)
        signer = Signer([KEY_A], EXPIRY_SECONDS)

        def pin(n: int) -> Pin:
            return Pin(hashlib.sha256(bytes([n % 256])).hexdigest(), rng.randrange(1, 9999), n)

        names = sorted({bin_of(f"f{i}", 7) for i in range(300)})
        whole = {name: pin(n) for n, name in enumerate(names[::2])}
        kept = PinMembers(7, whole)
        for step in range(40):  # replace one, add one (between others, first or last)
            changed = {rng.choice(sorted(whole)): pin(step), rng.choice(names): pin(step + 1)}
            kept = kept.with_changes(changed)
            whole = {**whole, **changed}
            expected = signer.top_file(step + 1, 1, 7, dict(whole), NOW).content
            assert signer.top_file(step + 1, 1, 7, kept, NOW).content == expected
        # A name that is no bin of these bits goes through the model, which refuses it.
        with pytest.raises(ValueError):
            signer.top_file(99, 1, 7, kept.with_changes({"zz": pin(1)}), NOW)

    def test_resign_keeps_the_body_and_sequence_with_the_new_keys(self) -> None:
        """A rotation's re-signing changes the signatures only; signed_by_us tells them apart."""
        old, new = Signer([KEY_A], EXPIRY_SECONDS), Signer([KEY_B], EXPIRY_SECONDS)
        file = old.top_file(5, 1, 7, {}, NOW)
        again = new.resign(file)
        assert Envelope.from_bytes(again.content).signed == Envelope.from_bytes(file.content).signed
        assert (again.path, again.sequence) == (file.path, file.sequence)
        assert [s.keyid for s in Envelope.from_bytes(again.content).signatures] == [KEY_B.keyid]
        assert new.signed_by_us(again.content) and not new.signed_by_us(file.content)
        assert not new.signed_by_us(b"not json")

    @pytest.mark.parametrize("canary", [False, True])
    def test_releases_file_is_the_reference_encoding(self, canary: bool) -> None:
        """releases.json equals sign(ReleasesIndex.to_dict()).to_bytes()."""
        versions = tuple(
            PublishedVersion(f"1.{i}.0", hashlib.sha256(bytes([i])).hexdigest(), NOW, i < 3)
            for i in range(20)
        )
        state = FeatureState(
            feature_id="checkout",
            sequence=21,
            stable="1.2.0",
            canary=Canary("1.19.0", NOW, 600) if canary else None,
            versions=versions,
            updated_at=NOW,
            updated_by="alice",
        )
        signer = Signer([KEY_A, KEY_B], EXPIRY_SECONDS)
        file = signer.releases_file(state, NOW)
        expected = sign(signer.releases_index(state, NOW).to_dict(), [KEY_A, KEY_B]).to_bytes()
        assert file.content == expected
        assert file.path == "features/checkout/releases.json"
        assert file.sequence == 21


def random_json(rng: random.Random, depth: int = 0) -> object:
    """JSON values of every kind jcs() handles, fast path or not."""
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 7, 2**53 - 1, -(2**53) + 1, rng.randrange(-(10**12), 10**12)])
    if kind == 3:
        return rng.choice([0.5, 1.0, -2.25, 1e21, 3.0e-7])
    if kind in (4, 5):
        alphabet = string.printable + '\x00\x01\x1f\x7f\u00e9\u2028\ufb01\U0001f600"\\'
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind == 6:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return tuple(random_json(rng, depth + 1) for _ in range(rng.randrange(3)))
    keys = ["a", "B", "sequence", "\u00e9t\u00e9", "\ufb01", "\U0001f600", "z_1", ""]
    return {rng.choice(keys): random_json(rng, depth + 1) for _ in range(rng.randrange(5))}


class TestJcs:
    def test_equals_rfc8785_on_random_values(self) -> None:
        """Fast path or not, jcs() gives rfc8785's bytes: escapes, key order, numbers."""
        rng = random.Random(8785)
        for _ in range(3000):
            value = random_json(rng)
            plain = value if not isinstance(value, tuple) else list(value)
            try:
                expected = rfc8785.dumps(_lists(plain))
            except rfc8785.CanonicalizationError:
                with pytest.raises(ValueError):
                    jcs(value)
                continue
            assert jcs(value) == expected, value

    def test_refuses_what_has_no_jcs_form(self) -> None:
        for bad in ({"k": 2**53}, ["\ud800"], {"k": float("nan")}, {1: "x"}):
            with pytest.raises(ValueError):
                jcs(bad)

    def test_non_ascii_keys_sort_by_utf16(self) -> None:
        """U+FB01 sorts after U+1F600 by code point, before it by UTF-16 code units."""
        assert jcs({"\ufb01": 1, "\U0001f600": 2}) == rfc8785.dumps({"\ufb01": 1, "\U0001f600": 2})
        assert jcs({"\ufb01": 1, "\U0001f600": 2}).startswith('{"\U0001f600"'.encode())


def _lists(value: object) -> object:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def random_state(rng: random.Random) -> FeatureState:
    names = [f"{rng.randrange(5)}.{rng.randrange(20)}.{n}" for n in range(rng.randrange(0, 8))]
    if rng.random() < 0.2:
        names = [n + rng.choice(["-ü", '-"q"', "-\\", "-\U0001f600", "-rc.1"]) for n in names]
    zones = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    versions = tuple(
        PublishedVersion(
            name,
            hashlib.sha256(name.encode()).hexdigest(),
            (
                NOW - timedelta(seconds=rng.randrange(10**7), microseconds=rng.randrange(10**6))
            ).astimezone(rng.choice(zones)),
            was_stable=rng.random() < 0.5,
        )
        for name in names
    )
    stable = rng.choice([None, *names])
    canary = None
    if names and rng.random() < 0.5:
        canary = Canary(
            rng.choice(names),
            (NOW - timedelta(seconds=rng.randrange(10**5))).astimezone(rng.choice(zones)),
            rng.randrange(0, 10**6),
            weight=rng.choice([0, 1, 500, 2500, 10_000]),
        )
    return FeatureState(
        feature_id=rng.choice(["checkout", "pay-ü", 'q"uote', "a"]) + str(rng.randrange(99)),
        sequence=rng.randrange(0, 2**40),
        stable=stable,
        canary=canary,
        versions=versions,
        updated_at=NOW,
        updated_by="x",
    )


@pytest.mark.parametrize("seed", range(5))
def test_releases_body_is_the_models_encoding(seed: int) -> None:
    """The body built without the model equals jcs(ReleasesIndex.to_dict()) and rfc8785."""
    rng = random.Random(seed)
    signer = Signer([KEY_A], EXPIRY_SECONDS)
    for _ in range(400):
        state = random_state(rng)
        now = (NOW + timedelta(microseconds=rng.randrange(10**6))).astimezone(
            rng.choice([UTC, timezone(timedelta(hours=3))])
        )
        body = signer.releases_body(state, now)
        model = signer.releases_index(state, now).to_dict()
        assert body == jcs(model) == rfc8785.dumps(model)


@pytest.mark.parametrize(
    "state",
    [
        FeatureState("", 1),
        FeatureState("x", -1),
        FeatureState("x", 1, stable="9.9.9"),
        FeatureState("x", 1, canary=Canary("9.9.9", NOW, 0)),
        FeatureState("x", 1, versions=(PublishedVersion("1.0.0", "a" * 64, NOW),) * 2),
        FeatureState("x", 1, versions=(PublishedVersion("1.0.0", "not hex", NOW),)),
        FeatureState(
            "x", 1, versions=(PublishedVersion("1.0.0", "a" * 64, NOW.replace(tzinfo=None)),)
        ),
        FeatureState(
            "x",
            1,
            stable="1.0.0",
            canary=Canary("1.0.0", NOW, -5),
            versions=(PublishedVersion("1.0.0", "a" * 64, NOW),),
        ),
        FeatureState(
            "x",
            1,
            canary=Canary("1.0.0", NOW, 10**15),
            versions=(PublishedVersion("1.0.0", "a" * 64, NOW),),
        ),
        FeatureState(
            "x",
            1,
            canary=Canary("1.0.0", NOW, 60, weight=10_001),
            versions=(PublishedVersion("1.0.0", "a" * 64, NOW),),
        ),
    ],
)
def test_releases_body_refuses_what_the_model_refuses(state: FeatureState) -> None:
    signer = Signer([KEY_A], EXPIRY_SECONDS)
    with pytest.raises(ValueError) as model:
        signer.releases_index(state, NOW)
    with pytest.raises(ValueError) as fast:
        signer.releases_body(state, NOW)
    assert str(fast.value) == str(model.value)
    with pytest.raises(ValueError):
        signer.releases_body(FeatureState("x", 1), NOW.replace(tzinfo=None))
    with pytest.raises(ValueError):
        Signer([KEY_A], 0).releases_body(FeatureState("x", 1), NOW)
