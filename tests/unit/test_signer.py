"""Signer: index files built from cached JCS fragments are byte for byte the reference encoding."""

from __future__ import annotations

import hashlib
import random
import string
from datetime import UTC, datetime, timedelta, timezone

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from releasecontrol.index import Envelope, FeatureEntry, RemoteIndex, sign, verify_signatures
from releasecontrol.trust import SigningKey, TrustStore
from releasecontrol_server.releases import Canary, FeatureState, PublishedVersion
from releasecontrol_server.signer import FeatureEntries, Signer, jcs, jcs_sort_key

NOW = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)
EXPIRY_SECONDS = 7 * 24 * 3600


def fixed_key(n: int) -> SigningKey:
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


KEY_A, KEY_B = fixed_key(1), fixed_key(2)

# Names whose UTF-16 order differs from their code point order (U+FF5E sorts
# after U+1F600 by code point, before it by UTF-16 code unit), escapes, and
# the plain feature ids the control plane uses.
ODD_NAMES = ["\uff5e", "\U0001f600", "a\u00e9", "é", "tab\t", 'quote"', "back\\slash", "\u007f"]


def random_name(rng: random.Random) -> str:
    if rng.random() < 0.2:
        return rng.choice(ODD_NAMES) + str(rng.randrange(100))
    alphabet = string.ascii_lowercase + string.digits + "-"
    return "f" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 12)))


def random_entry(rng: random.Random, feature_id: str) -> FeatureEntry:
    extra = (
        {"note": rng.choice(["x", "ü", "\U0001f600", 1.5, None, [1, "2"]])}
        if rng.random() < 0.1
        else {}
    )
    return FeatureEntry(
        url=f"features/{feature_id}/releases.json",
        sha256=hashlib.sha256(f"{feature_id}{rng.random()}".encode()).hexdigest(),
        sequence=rng.randrange(0, 2**40),
        extra=extra,
    )


def reference_remote(
    sequence: int, entries: dict[str, FeatureEntry], keys: list[SigningKey]
) -> bytes:
    """The encoding before the fragment cache: the model, sign(), the envelope's JCS."""
    index = RemoteIndex(
        sequence=sequence,
        features=entries,
        issued_at=NOW,
        expires_at=NOW + timedelta(seconds=EXPIRY_SECONDS),
    )
    return sign(index.to_dict(), keys).to_bytes()


class TestJcsSortKey:
    def test_orders_by_utf16_code_units_as_rfc8785_does(self) -> None:
        """Sorting names by jcs_sort_key is the member order rfc8785.dumps writes."""
        rng = random.Random(7)
        names = list({random_name(rng) for _ in range(300)} | set(ODD_NAMES))
        encoded = rfc8785.dumps({name: 0 for name in names})
        ordered = sorted(names, key=jcs_sort_key)
        assert encoded == b"{" + b",".join(rfc8785.dumps(n) + b":0" for n in ordered) + b"}"


class TestFeatureEntries:
    @pytest.mark.parametrize("seed", range(40))
    def test_encoded_is_rfc8785_of_the_features_object(self, seed: int) -> None:
        """For random entry sets, built at once or one by one, the bytes equal rfc8785.dumps."""
        rng = random.Random(seed)
        count = rng.choice([0, 1, 2, 5, 50, 300, 700])
        entries = {}
        for _ in range(count):
            name = random_name(rng)
            entries[name] = random_entry(rng, name)
        expected = rfc8785.dumps({fid: e.to_dict() for fid, e in entries.items()})
        assert FeatureEntries(entries).encoded() == expected
        grown = FeatureEntries()
        for fid, entry in entries.items():
            grown.set(fid, entry)
        assert grown.encoded() == expected
        assert dict(grown) == entries

    @pytest.mark.parametrize("seed", range(20))
    def test_changes_and_views_stay_equal_to_rfc8785(self, seed: int) -> None:
        """After random replacements and additions, and in a `replacing` view, bytes still match."""
        rng = random.Random(1000 + seed)
        entries = {}
        for _ in range(rng.choice([1, 10, 400])):
            name = random_name(rng)
            entries[name] = random_entry(rng, name)
        cached = FeatureEntries(entries)
        for _ in range(60):
            name = rng.choice([*entries, random_name(rng)])
            entry = random_entry(rng, name)
            view = cached.replacing(name, entry)
            with_change = {**entries, name: entry}
            assert view.encoded() == rfc8785.dumps({f: e.to_dict() for f, e in with_change.items()})
            assert dict(view) == with_change
            assert len(view) == len(with_change)
            # The view changed nothing underneath.
            assert cached.encoded() == rfc8785.dumps({f: e.to_dict() for f, e in entries.items()})
            if rng.random() < 0.7:
                cached.set(name, entry)
                entries = with_change

    @pytest.mark.parametrize("seed", range(20))
    def test_a_view_of_several_changes_equals_rfc8785(self, seed: int) -> None:
        """Several entries changed and added at once (one signed batch) encode as rfc8785 does."""
        rng = random.Random(5000 + seed)
        entries = {}
        for _ in range(rng.choice([0, 3, 300, 900])):
            name = random_name(rng)
            entries[name] = random_entry(rng, name)
        cached = FeatureEntries(entries)
        for _ in range(10):
            names = [rng.choice([*entries, random_name(rng)]) for _ in range(rng.randrange(1, 9))]
            changed = {name: random_entry(rng, name) for name in names}
            expected = {**entries, **changed}
            view = cached.with_entries(changed)
            assert view.encoded() == rfc8785.dumps({f: e.to_dict() for f, e in expected.items()})
            assert dict(view) == expected
            assert len(view) == len(expected)

    def test_refuses_an_empty_feature_id(self) -> None:
        """An empty id is refused, as RemoteIndex refuses it."""
        entry = FeatureEntry(url="features/x/releases.json", sha256="a" * 64, sequence=1)
        with pytest.raises(ValueError, match="must not be empty"):
            FeatureEntries({"": entry})
        with pytest.raises(ValueError, match="must not be empty"):
            FeatureEntries().set("", entry)


class TestSignerBytes:
    @pytest.mark.parametrize(
        "keys", [[KEY_A], [KEY_A, KEY_B], [KEY_B, KEY_A, KEY_B]], ids=["a", "a-b", "b-a-b"]
    )
    @pytest.mark.parametrize("count", [0, 1, 3, 260])
    def test_remote_index_file_is_the_reference_encoding(
        self, keys: list[SigningKey], count: int
    ) -> None:
        """remote-index.json from cached fragments equals sign(RemoteIndex).to_bytes()."""
        rng = random.Random(count)
        entries = {f"feature-{i:04d}": random_entry(rng, f"feature-{i:04d}") for i in range(count)}
        signer = Signer(keys, EXPIRY_SECONDS)
        expected = reference_remote(42, entries, keys)
        for features in (entries, FeatureEntries(entries)):
            file = signer.remote_index_file(42, features, NOW)
            assert file.content == expected
            assert file.sha256 == hashlib.sha256(expected).hexdigest()
            assert file.sequence == 42
            assert file.path == "remote-index.json"
        trust = TrustStore.for_keys([k.trusted_key() for k in keys])
        verify_signatures(Envelope.from_bytes(file.content), trust)

    def test_a_replacing_view_signs_the_changed_index(self) -> None:
        """Signing a `replacing` view equals signing the changed mapping from scratch."""
        rng = random.Random(3)
        entries = {f"feature-{i:04d}": random_entry(rng, f"feature-{i:04d}") for i in range(300)}
        cached = FeatureEntries(entries)
        signer = Signer([KEY_A], EXPIRY_SECONDS)
        for name in ("feature-0150", "feature-0150a", "a-first", "zz-last"):
            entry = random_entry(rng, name)
            got = signer.remote_index_file(7, cached.replacing(name, entry), NOW).content
            assert got == reference_remote(7, {**entries, name: entry}, [KEY_A])

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
