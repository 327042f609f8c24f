"""Signed files and releases.json: the envelope, signing, checking signatures, and the
ReleasesIndex model (releasecontrol.index; docs/host-protocol.md 3.1 and 3.6).

The top level and its shards are tested in test_shards.py, roots in test_root.py,
canonical JSON in test_canonical.py, and the checks a host makes in order in
test_verifier.py.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from releasecontrol.errors import VerificationError
from releasecontrol.index import (
    REMOTE_INDEX_PATH,
    CanarySoak,
    Envelope,
    NotCanonicalEnvelope,
    ReleasesIndex,
    Signature,
    VersionEntry,
    canonical_json,
    check_signatures,
    format_time,
    parse_time,
    releases_path,
    sign,
    verify_signatures,
)
from releasecontrol.trust import SigningKey, TrustStore


def fixed_key(n: int) -> SigningKey:
    """A deterministic signing key, so failures are reproducible."""
    return SigningKey(Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32))


KEY_A, KEY_B, KEY_C, KEY_DEV = fixed_key(1), fixed_key(2), fixed_key(3), fixed_key(4)
SHA_120 = hashlib.sha256(b"manifest 1.2.0").hexdigest()
SHA_130 = hashlib.sha256(b"manifest 1.3.0").hexdigest()
ISSUED = datetime(2026, 11, 26, 10, 0, 0, tzinfo=UTC)


def trust(*keys: SigningKey, threshold: int = 1) -> TrustStore:
    """A role of `keys` needing `threshold`; KEY_DEV is marked a dev key."""
    return TrustStore.for_keys([k.trusted_key(dev=k is KEY_DEV) for k in keys], threshold=threshold)


def short(key: SigningKey) -> str:
    return key.keyid[:8] + "…"


def releases(**changes: Any) -> ReleasesIndex:
    """The contract's example releases.json body as a model, with `changes` applied."""
    fields: dict[str, Any] = {
        "feature_id": "checkout",
        "sequence": 3,
        "stable": "1.2.0",
        "canary": "1.3.0",
        "canary_soak": CanarySoak(started_at=ISSUED, duration_seconds=1800),
        "versions": (
            VersionEntry("1.2.0", SHA_120, datetime(2026, 11, 26, 9, 0, 0, tzinfo=UTC)),
            VersionEntry("1.3.0", SHA_130, datetime(2026, 11, 26, 9, 30, 0, tzinfo=UTC)),
        ),
        "issued_at": ISSUED,
        "expires_at": ISSUED + timedelta(days=7),
    }
    fields.update(changes)
    return ReleasesIndex(**fields)


# The contract's example body, written out by hand: the model must produce exactly this.
CONTRACT_RELEASES_BODY: dict[str, Any] = {
    "schema_version": 2,
    "type": "releases",
    "feature_id": "checkout",
    "sequence": 3,
    "active_version": "1.2.0",
    "channels": {"stable": "1.2.0", "canary": "1.3.0"},
    "canary_soak": {
        "started_at": "2026-11-26T10:00:00Z",
        "duration_seconds": 1800,
        "ends_at": "2026-11-26T10:30:00Z",
    },
    "versions": [
        {"version": "1.2.0", "manifest_sha256": SHA_120, "published_at": "2026-11-26T09:00:00Z"},
        {"version": "1.3.0", "manifest_sha256": SHA_130, "published_at": "2026-11-26T09:30:00Z"},
    ],
    "issued_at": "2026-11-26T10:00:00Z",
    "expires_at": "2026-12-03T10:00:00Z",
}


def independent_verify(file_bytes: bytes, trust_file: str) -> bool:
    """A host written from the contract alone: no releasecontrol code, only its wire rules.

    Canonical form: json.dumps with sorted keys and no whitespace equals JCS for
    data without floats, which is all the contract's bodies hold.
    """
    envelope = json.loads(file_bytes)
    trust_doc = json.loads(trust_file)
    keys = {}
    for entry in trust_doc["keys"]:
        raw = base64.b64decode(entry["public_key"], validate=True)
        assert entry["alg"] == "ed25519" and len(raw) == 32
        assert entry["keyid"] == hashlib.sha256(raw).hexdigest()
        keys[entry["keyid"]] = Ed25519PublicKey.from_public_bytes(raw)
    message = json.dumps(
        envelope["signed"], sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    good = set()
    for signature in envelope["signatures"]:
        key = keys.get(signature["keyid"])
        if key is None:
            continue
        try:
            key.verify(base64.b64decode(signature["sig"], validate=True), message)
        except InvalidSignature:
            continue
        good.add(signature["keyid"])
    threshold: int = trust_doc.get("threshold", 1)
    return len(good) >= threshold


def own_jcs(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class TestTime:
    @pytest.mark.parametrize(
        ("moment", "text"),
        [
            pytest.param(ISSUED, "2026-11-26T10:00:00Z", id="utc"),
            pytest.param(
                datetime(2026, 11, 26, 11, 0, 0, tzinfo=timezone(timedelta(hours=1))),
                "2026-11-26T10:00:00Z",
                id="other-zone-converted",
            ),
            pytest.param(ISSUED.replace(microsecond=999_999), "2026-11-26T10:00:00Z", id="µs-cut"),
        ],
    )
    def test_format_time_writes_utc_seconds_with_z(self, moment: datetime, text: str) -> None:
        """Times go on the wire as RFC 3339 UTC with whole seconds and a "Z"."""
        assert format_time(moment) == text

    def test_format_time_refuses_a_naive_datetime(self) -> None:
        """A naive datetime has no zone to convert from, so it is refused."""
        with pytest.raises(ValueError, match="aware"):
            format_time(datetime(2026, 11, 26, 10, 0, 0))

    def test_parse_time_reads_back_an_aware_utc_datetime(self) -> None:
        """parse_time is the inverse of format_time and gives an aware UTC datetime."""
        parsed = parse_time("2026-11-26T10:00:00Z")
        assert parsed == ISSUED and parsed.tzinfo is UTC

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("2026-11-26 10:00:00Z", id="space-separator"),
            pytest.param("2026-11-26T10:00:00+00:00", id="offset-not-z"),
            pytest.param("2026-11-26T10:00:00.5Z", id="fraction"),
            pytest.param("2026-11-26T10:00:00z", id="lowercase-z"),
            pytest.param("2026-13-01T00:00:00Z", id="month-13"),
            pytest.param("yesterday", id="words"),
            pytest.param("", id="empty"),
        ],
    )
    def test_parse_time_refuses_other_forms_naming_the_text(self, text: str) -> None:
        """Anything but the exact wire form is a VerificationError that quotes the text."""
        with pytest.raises(VerificationError) as caught:
            parse_time(text)
        assert repr(text) in caught.value.message


class TestParseTimeMatchesStrptime:
    """parse_time accepts and refuses exactly what strptime("%Y-%m-%dT%H:%M:%SZ") did
    for the wire form, giving the same moment."""

    @staticmethod
    def reference(text: str) -> datetime | None:
        try:
            return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return None

    def check(self, text: str) -> None:
        expected = self.reference(text)
        if expected is None:
            with pytest.raises(VerificationError, match="is not a valid date and time"):
                parse_time(text)
        else:
            got = parse_time(text)
            assert got == expected and got.tzinfo is UTC, text

    @pytest.mark.parametrize("year", ["0000", "0001", "1900", "2000", "2023", "2024", "9999"])
    def test_every_month_and_day(self, year: str) -> None:
        """Days 00-32 of months 00-13, in leap and common years (29 February included)."""
        for month in range(14):
            for day in range(33):
                self.check(f"{year}-{month:02d}-{day:02d}T10:00:00Z")

    def test_every_hour_minute_and_second(self) -> None:
        """Hours 00-99, minutes and seconds 00-99 (strptime's 60 and 61 included)."""
        for value in range(100):
            self.check(f"2026-11-26T{value:02d}:00:00Z")
            self.check(f"2026-11-26T00:{value:02d}:00Z")
            self.check(f"2026-11-26T00:00:{value:02d}Z")

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("2026-11-26T10:00:00Z\n", id="trailing-newline"),
            pytest.param(" 2026-11-26T10:00:00Z", id="leading-space"),
            pytest.param("2026-1-26T10:00:00Z", id="one-digit-month"),
            pytest.param("20261-11-26T10:00:00Z", id="five-digit-year"),
            pytest.param("２０２６-11-26T10:00:00Z", id="non-ascii-digits"),
            pytest.param("2026-11-26T10:00:60Z", id="leap-second"),
            pytest.param("2026-02-29T10:00:00Z", id="29-february-common-year"),
        ],
    )
    def test_near_misses_are_refused(self, text: str) -> None:
        """Forms strptime's own format might let through are refused, naming the text."""
        with pytest.raises(VerificationError) as caught:
            parse_time(text)
        assert repr(text) in caught.value.message

    def test_not_a_string_is_refused(self) -> None:
        """A JSON number or null where a time belongs is a VerificationError."""
        for value in (20261126, None):
            with pytest.raises(VerificationError):
                parse_time(value)  # type: ignore[arg-type]


class TestSignAndVerify:
    def test_round_trip_verifies(self) -> None:
        """What sign produces with a trusted key verifies, through the file bytes and back."""
        envelope = sign(releases().to_dict(), [KEY_A])
        parsed = Envelope.from_bytes(envelope.to_bytes())
        result = verify_signatures(parsed, trust(KEY_A))
        assert result.verified
        assert result.valid == {KEY_A.keyid}
        assert result.message == "signed by 1 of 1 required trusted key"
        assert ReleasesIndex.from_dict(parsed.signed) == releases()

    def test_tampered_signed_body_fails(self) -> None:
        """Changing any signed field after signing makes the signature bad."""
        envelope = sign(releases().to_dict(), [KEY_A])
        body = copy.deepcopy(dict(envelope.signed))
        body["channels"]["stable"] = body["active_version"] = "1.3.0"
        tampered = Envelope(signed=body, signatures=envelope.signatures)
        result = check_signatures(tampered, trust(KEY_A))
        assert not result.verified
        assert result.invalid == {KEY_A.keyid}
        with pytest.raises(VerificationError) as caught:
            verify_signatures(tampered, trust(KEY_A))
        assert caught.value.message == (
            f"signed by 0 of 1 required trusted key; bad signature from {short(KEY_A)}"
        )

    def test_tampered_file_bytes_fail(self) -> None:
        """Editing the file on the CDN (a higher sequence) is caught by the signature."""
        data = sign(releases().to_dict(), [KEY_A]).to_bytes()
        edited = data.replace(b'"sequence":3', b'"sequence":4')
        assert edited != data
        assert not check_signatures(Envelope.from_bytes(edited), trust(KEY_A)).verified

    @pytest.mark.parametrize(
        ("signatures", "trusted", "threshold", "verified", "message"),
        [
            pytest.param(
                [KEY_C],
                [KEY_A],
                1,
                False,
                f"signed by 0 of 1 required trusted key; unknown key {short(KEY_C)}",
                id="untrusted-key-not-counted",
            ),
            pytest.param(
                [KEY_A, KEY_C],
                [KEY_A],
                1,
                True,
                f"signed by 1 of 1 required trusted key; unknown key {short(KEY_C)}",
                id="untrusted-beside-trusted",
            ),
            pytest.param(
                [KEY_A, KEY_A],
                [KEY_A, KEY_B],
                2,
                False,
                "signed by 1 of 2 required trusted keys",
                id="same-key-twice-counts-once",
            ),
            pytest.param(
                [KEY_A, KEY_B],
                [KEY_A, KEY_B],
                2,
                True,
                "signed by 2 of 2 required trusted keys",
                id="two-distinct-keys-meet-threshold-2",
            ),
            pytest.param(
                [],
                [KEY_A],
                1,
                False,
                "signed by 0 of 1 required trusted key; it carries no signatures",
                id="no-signatures",
            ),
        ],
    )
    def test_threshold_counts_distinct_trusted_keys(
        self,
        signatures: list[SigningKey],
        trusted: list[SigningKey],
        threshold: int,
        verified: bool,
        message: str,
    ) -> None:
        """Only distinct trusted keys with good signatures count toward the threshold."""
        body = releases().to_dict()
        data = canonical_json(body)
        sigs = tuple(
            Signature(k.keyid, base64.b64encode(k.sign(data)).decode()) for k in signatures
        )
        result = check_signatures(Envelope(body, sigs), trust(*trusted, threshold=threshold))
        assert result.verified is verified
        assert result.message == message

    @pytest.mark.parametrize(
        "make_sig",
        [
            pytest.param(lambda data: base64.b64encode(bytes(64)).decode(), id="zero-bytes"),
            pytest.param(lambda data: "not base64!", id="not-base64"),
            pytest.param(lambda data: base64.b64encode(KEY_A.sign(data)[:32]).decode(), id="short"),
            pytest.param(lambda data: base64.b64encode(KEY_B.sign(data)).decode(), id="other-key"),
            pytest.param(
                lambda data: base64.urlsafe_b64encode(KEY_A.sign(data)).decode().replace("=", ""),
                id="unpadded-urlsafe",
            ),
        ],
    )
    def test_invalid_signature_is_reported_not_raised(
        self, make_sig: Callable[[bytes], str]
    ) -> None:
        """A bad signature under a trusted keyid is reported as bad; check never raises."""
        body = releases().to_dict()
        envelope = Envelope(body, (Signature(KEY_A.keyid, make_sig(canonical_json(body))),))
        result = check_signatures(envelope, trust(KEY_A))
        assert not result.verified
        assert result.invalid == {KEY_A.keyid} and result.valid == frozenset()
        assert f"bad signature from {short(KEY_A)}" in result.message

    def test_message_names_counts_bad_and_unknown_keys(self) -> None:
        """The one-sentence message names the count, the bad signer and the unknown signer."""
        body = releases().to_dict()
        data = canonical_json(body)
        sigs = (
            Signature(KEY_A.keyid, base64.b64encode(KEY_A.sign(data)).decode()),
            Signature(KEY_B.keyid, base64.b64encode(bytes(64)).decode()),
            Signature(KEY_C.keyid, base64.b64encode(KEY_C.sign(data)).decode()),
        )
        result = check_signatures(Envelope(body, sigs), trust(KEY_A, KEY_B, threshold=2))
        assert result.message == (
            f"signed by 1 of 2 required trusted keys; bad signature from {short(KEY_B)}; "
            f"unknown key {short(KEY_C)}"
        )

    def test_a_bad_and_a_good_signature_by_one_key_count_once(self) -> None:
        """A keyid listed twice counts once, and its good signature counts even after a bad one."""
        body = releases().to_dict()
        data = canonical_json(body)
        good = base64.b64encode(KEY_A.sign(data)).decode()
        bad = base64.b64encode(bytes(64)).decode()
        sigs = (Signature(KEY_A.keyid, bad), Signature(KEY_A.keyid, good))
        result = check_signatures(Envelope(body, sigs), trust(KEY_A, KEY_B, threshold=2))
        assert result.valid == {KEY_A.keyid} and result.invalid == frozenset()
        assert not result.verified
        assert check_signatures(Envelope(body, sigs), trust(KEY_A)).verified

    def test_a_non_canonical_s_is_not_a_valid_signature(self) -> None:
        """Ed25519 is checked strictly (RFC 8032): S + L, the same signature otherwise, is bad."""
        body = releases().to_dict()
        raw = KEY_A.sign(canonical_json(body))
        order = 2**252 + 27742317777372353535851937790883648493
        s_plus_l = int.from_bytes(raw[32:], "little") + order
        malleated = raw[:32] + s_plus_l.to_bytes(32, "little")
        sig = Signature(KEY_A.keyid, base64.b64encode(malleated).decode())
        assert not check_signatures(Envelope(body, (sig,)), trust(KEY_A)).verified

    def test_signed_bytes_given_are_what_is_checked(self) -> None:
        """check_signatures checks the `signed_bytes` it is handed, not a fresh encoding."""
        envelope = sign(releases().to_dict(), [KEY_A])
        right = envelope.signed_bytes()
        assert check_signatures(envelope, trust(KEY_A), signed_bytes=right).verified
        other = right.replace(b'"sequence":3', b'"sequence":4')
        assert not check_signatures(envelope, trust(KEY_A), signed_bytes=other).verified

    @pytest.mark.parametrize(
        ("signers", "allow", "verified", "message"),
        [
            pytest.param(
                [KEY_DEV],
                False,
                False,
                f"signed by 0 of 1 required trusted key; dev key {short(KEY_DEV)} not "
                "accepted: FEATURE_ALLOW_INSECURE_DEV_KEYS is off",
                id="dev-key-off",
            ),
            pytest.param(
                [KEY_DEV], True, True, "signed by 1 of 1 required trusted key", id="dev-key-on"
            ),
            pytest.param(
                [KEY_A, KEY_DEV],
                False,
                True,
                f"signed by 1 of 1 required trusted key; dev key {short(KEY_DEV)} not "
                "accepted: FEATURE_ALLOW_INSECURE_DEV_KEYS is off",
                id="real-key-beside-dev-key",
            ),
        ],
    )
    def test_a_dev_key_counts_only_when_allowed(
        self, signers: list[SigningKey], allow: bool, verified: bool, message: str
    ) -> None:
        """A dev key's good signature counts only with allow_dev_keys; the message says so."""
        envelope = sign(releases().to_dict(), signers)
        result = check_signatures(envelope, trust(KEY_A, KEY_DEV), allow_dev_keys=allow)
        assert result.verified is verified
        assert result.message == message
        assert (KEY_DEV.keyid in result.valid) is allow
        assert (KEY_DEV.keyid in result.dev_refused) is not allow

    def test_a_dev_keys_bad_signature_is_bad_not_refused(self) -> None:
        """A dev key's bad signature is reported as bad, whether dev keys are allowed or not."""
        body = releases().to_dict()
        sig = Signature(KEY_DEV.keyid, base64.b64encode(bytes(64)).decode())
        for allow in (False, True):
            result = check_signatures(Envelope(body, (sig,)), trust(KEY_DEV), allow_dev_keys=allow)
            assert result.invalid == {KEY_DEV.keyid} and result.dev_refused == frozenset()

    def test_many_keys_are_named_five_and_counted(self) -> None:
        """A message names at most five unknown keys and counts the rest."""
        keys = [fixed_key(n) for n in range(20, 27)]
        result = check_signatures(sign({"x": 1}, keys), trust(KEY_A))
        assert result.message.endswith(" and 2 more")
        assert result.message.count("…") == 5

    def test_sign_signs_once_per_distinct_key(self) -> None:
        """Giving the same key twice yields one signature, in the order the keys came."""
        envelope = sign({"x": 1}, [KEY_B, KEY_A, KEY_B])
        assert [s.keyid for s in envelope.signatures] == [KEY_B.keyid, KEY_A.keyid]

    def test_sign_needs_a_key(self) -> None:
        """Signing with no key is a programming error, not an unsigned envelope."""
        with pytest.raises(ValueError, match="at least one"):
            sign({"x": 1}, [])


class TestFileBytes:
    def test_file_is_the_jcs_of_the_envelope(self) -> None:
        """The bytes on the CDN are the envelope with sorted keys and no whitespace."""
        envelope = sign(releases().to_dict(), [KEY_A, KEY_B])
        data = envelope.to_bytes()
        assert data == own_jcs(envelope.to_dict())
        assert data.startswith(b'{"signatures":[{"keyid":"')
        assert b"\n" not in data and b": " not in data and b", " not in data
        assert Envelope.from_bytes(data) == envelope

    def test_signed_bytes_are_the_jcs_of_the_body(self) -> None:
        """Signatures cover the JCS bytes of `signed` and nothing else."""
        envelope = sign(CONTRACT_RELEASES_BODY, [KEY_A])
        assert envelope.signed_bytes() == own_jcs(CONTRACT_RELEASES_BODY)
        raw = base64.b64decode(envelope.signatures[0].sig)
        assert len(raw) == 64
        assert KEY_A.trusted_key().verify(raw, own_jcs(CONTRACT_RELEASES_BODY))

    def test_envelope_keeps_its_own_copy_of_the_body(self) -> None:
        """Changing the dict after signing does not change the envelope's signed body."""
        body = releases().to_dict()
        envelope = sign(body, [KEY_A])
        body["sequence"] = 99
        assert envelope.signed["sequence"] == 3
        assert verify_signatures(envelope, trust(KEY_A)).verified

    @pytest.mark.parametrize(
        ("data", "fragment"),
        [
            pytest.param(b"{", "it is not JSON", id="truncated"),
            pytest.param(b'{"signatures":[],"signed":{"a":"\xff"}}', "not UTF-8", id="not-utf8"),
            pytest.param(b'{"signatures":[],"signed":{"a":NaN}}', "NaN", id="nan"),
            pytest.param(b"[" * 100_000 + b"]" * 100_000, "it is not JSON", id="deep-nesting"),
            pytest.param(b"[]", "must be a JSON object", id="array"),
            pytest.param(b'{"signatures":[]}', 'missing field "signed"', id="no-signed"),
            pytest.param(b'{"signed":{}}', 'missing field "signatures"', id="no-signatures"),
            pytest.param(
                b'{"extra":1,"signatures":[],"signed":{}}',
                'must have only "signatures" and "signed", not also ["extra"]',
                id="extra-member",
            ),
            pytest.param(b'{"signatures":[],"signed":[]}', '"signed" must be an object', id="list"),
            pytest.param(
                b'{"signatures":{},"signed":{}}', '"signatures" must be an array', id="sigs-object"
            ),
            pytest.param(
                b'{"signatures":[{"keyid":"ab"}],"signed":{}}',
                '"signatures[0]" must be an object with exactly "keyid" and "sig"',
                id="sig-missing",
            ),
            pytest.param(
                b'{"signatures":[{"keyid":"%s","note":"x","sig":""}],"signed":{}}'
                % KEY_A.keyid.encode(),
                '"signatures[0]" must be an object with exactly "keyid" and "sig"',
                id="sig-extra-member",
            ),
            pytest.param(
                b'{"signatures":[{"keyid":"AB","sig":""}],"signed":{}}',
                "64 lowercase hex",
                id="keyid-not-hex",
            ),
            pytest.param(
                b'{"signatures":[{"keyid":"%s","sig":5}],"signed":{}}' % KEY_A.keyid.encode(),
                "sig must be a base64 string",
                id="sig-not-string",
            ),
        ],
    )
    def test_from_bytes_says_what_is_wrong(self, data: bytes, fragment: str) -> None:
        """A file that is not a well-formed envelope is a VerificationError saying why."""
        with pytest.raises(VerificationError) as caught:
            Envelope.from_bytes(data)
        assert not isinstance(caught.value, NotCanonicalEnvelope)
        assert fragment in caught.value.message

    @pytest.mark.parametrize(
        "data",
        [
            pytest.param(b'{"signatures": [], "signed": {}}', id="whitespace"),
            pytest.param(b'{"signed":{},"signatures":[]}', id="members-out-of-order"),
            pytest.param(b'{"signatures":[],"signed":{"a":1,"a":2}}', id="repeated-member"),
            pytest.param(b'{"signatures":[],"signed":{"n":1.0}}', id="number-form"),
            pytest.param(
                b'{"signatures":[],"signed":{"n":9007199254740993}}', id="int-beyond-a-double"
            ),
        ],
    )
    def test_from_bytes_refuses_a_file_that_is_not_canonical(self, data: bytes) -> None:
        """JSON that is not exactly its RFC 8785 encoding is refused as not canonical."""
        with pytest.raises(NotCanonicalEnvelope, match="not the RFC 8785 \\(JCS\\) encoding"):
            Envelope.from_bytes(data)

    def test_from_dict_refuses_a_body_with_no_jcs_form(self) -> None:
        """A parsed body that JCS cannot encode (an integer beyond 2**53) is refused."""
        with pytest.raises(VerificationError, match='"signed" has no JCS form'):
            Envelope.from_dict({"signatures": [], "signed": {"n": 2**60}})

    def test_from_bytes_refuses_an_oversize_file_before_parsing(self) -> None:
        """A file over max_bytes is refused with both sizes in the message."""
        data = sign({"pad": "x" * 100}, [KEY_A]).to_bytes()
        with pytest.raises(VerificationError, match=f"is {len(data)} bytes, more than the 64"):
            Envelope.from_bytes(data, max_bytes=64)


class TestIndependentVerifier:
    def test_independent_host_verifies_a_signed_releases_file(self) -> None:
        """A verifier built only from the contract accepts what sign wrote, with its trust file."""
        body = {**releases().to_dict(), "notes": "café ✓ 日本"}  # non-ASCII must survive as UTF-8
        data = sign(body, [KEY_A]).to_bytes()
        assert independent_verify(data, trust(KEY_A).to_json())
        assert data == own_jcs(json.loads(data))

    def test_independent_host_verifies_threshold_two(self) -> None:
        """Two keys, threshold 2: the independent verifier agrees that both signatures hold."""
        data = sign(releases().to_dict(), [KEY_A, KEY_B]).to_bytes()
        assert independent_verify(data, trust(KEY_A, KEY_B, threshold=2).to_json())

    def test_independent_host_rejects_a_tampered_file(self) -> None:
        """The independent verifier is not a rubber stamp: it refuses an edited file."""
        data = sign(releases().to_dict(), [KEY_A]).to_bytes()
        assert not independent_verify(
            data.replace(b'"sequence":3', b'"sequence":4'), trust(KEY_A).to_json()
        )

    def test_keyid_in_the_envelope_is_the_sha256_of_the_raw_key(self) -> None:
        """Each signature's keyid is the hex SHA-256 of the signer's raw public key."""
        envelope = json.loads(sign({"x": 1}, [KEY_A]).to_bytes())
        assert (
            envelope["signatures"][0]["keyid"] == hashlib.sha256(KEY_A.public_key_raw).hexdigest()
        )


def _set(body: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value


def _delete(body: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    target: Any = body
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    del target[last]


DELETE = object()


class TestReleasesIndex:
    def test_to_dict_is_the_contract_body(self) -> None:
        """The model writes exactly the contract's releases.json body."""
        assert releases().to_dict() == CONTRACT_RELEASES_BODY

    def test_no_canary_writes_nulls(self) -> None:
        """No canary: canary and canary_soak are null; no stable: both stable fields are null."""
        body = releases(stable=None, canary=None, canary_soak=None).to_dict()
        assert body["channels"] == {"stable": None, "canary": None}
        assert body["active_version"] is None and body["canary_soak"] is None

    @pytest.mark.parametrize(
        "index",
        [
            pytest.param(releases(), id="with-canary"),
            pytest.param(releases(canary=None, canary_soak=None), id="stable-only"),
            pytest.param(releases(stable=None, canary=None, canary_soak=None), id="nothing-live"),
            pytest.param(
                releases(versions=(), stable=None, canary=None, canary_soak=None), id="empty"
            ),
        ],
    )
    def test_round_trips_through_dict_and_signed_file(self, index: ReleasesIndex) -> None:
        """from_dict(to_dict()) is the same index, also after signing and parsing the file."""
        assert ReleasesIndex.from_dict(index.to_dict()) == index
        parsed = Envelope.from_bytes(sign(index.to_dict(), [KEY_A]).to_bytes())
        assert ReleasesIndex.from_dict(parsed.signed) == index

    def test_unknown_fields_of_a_newer_schema_are_carried(self) -> None:
        """Fields this code does not know, at any level, come back out of to_dict unchanged."""
        body = copy.deepcopy(CONTRACT_RELEASES_BODY)
        body["schema_version"] = 3
        body["rollout"] = {"percent": 5, "regions": ["eu"]}
        body["channels"]["beta"] = "1.3.0"
        body["versions"][0]["size_bytes"] = 1234
        body["canary_soak"]["policy"] = "error-rate"
        index = ReleasesIndex.from_dict(body)
        assert index.schema_version == 3
        assert index.extra == {"rollout": {"percent": 5, "regions": ["eu"]}}
        assert index.to_dict() == body
        assert canonical_json(index.to_dict()) == canonical_json(body)

    def test_active_version_is_the_stable_channel(self) -> None:
        """active_version, what a host serves by default, is the stable channel."""
        assert releases().active_version == "1.2.0"
        assert releases(stable=None, canary=None, canary_soak=None).active_version is None

    @pytest.mark.parametrize(
        ("path", "value", "fragment"),
        [
            pytest.param("feature_id", DELETE, 'missing field "feature_id"', id="no-feature-id"),
            pytest.param(
                "feature_id", "", 'field "feature_id" must be a non-empty string', id="empty-id"
            ),
            pytest.param(
                "type", "remote-index", 'field "type" must be "releases"', id="wrong-type"
            ),
            pytest.param("type", DELETE, 'missing field "type"', id="no-type"),
            pytest.param(
                "schema_version", "1", 'field "schema_version" must be an integer', id="schema-str"
            ),
            pytest.param(
                "schema_version",
                0,
                'field "schema_version" must be an integer of at least 1',
                id="schema-0",
            ),
            pytest.param(
                "sequence", "3", 'field "sequence" must be an integer', id="sequence-string"
            ),
            pytest.param(
                "sequence", True, 'field "sequence" must be an integer', id="sequence-bool"
            ),
            pytest.param(
                "sequence", -1, 'field "sequence" must be an integer of at least 0', id="seq-neg"
            ),
            pytest.param(
                "sequence", 3.0, 'field "sequence" must be an integer', id="sequence-float"
            ),
            pytest.param(
                "channels", None, 'field "channels" must be an object', id="channels-null"
            ),
            pytest.param(
                "channels.canary", DELETE, 'missing field "channels.canary"', id="no-canary-key"
            ),
            pytest.param(
                "channels.stable",
                3,
                'field "channels.stable" must be a non-empty string or null',
                id="stable-int",
            ),
            pytest.param(
                "active_version",
                "1.3.0",
                'field "active_version" is "1.3.0" but "channels.stable"',
                id="active-not-stable",
            ),
            pytest.param(
                "active_version", DELETE, 'missing field "active_version"', id="no-active"
            ),
            pytest.param("versions", {}, 'field "versions" must be an array', id="versions-object"),
            pytest.param(
                "versions.0", "1.2.0", 'field "versions[0]" must be an object', id="version-str"
            ),
            pytest.param(
                "versions.1.version", DELETE, 'missing field "versions[1].version"', id="no-version"
            ),
            pytest.param(
                "versions.0.manifest_sha256",
                "XYZ",
                'field "versions[0].manifest_sha256" must be a SHA-256',
                id="bad-sha",
            ),
            pytest.param(
                "versions.0.manifest_sha256",
                SHA_120.upper(),
                'field "versions[0].manifest_sha256"',
                id="upper-sha",
            ),
            pytest.param(
                "versions.0.published_at",
                "yesterday",
                'field "versions[0].published_at" must be an RFC 3339',
                id="bad-time",
            ),
            pytest.param(
                "versions.1.version", "1.2.0", "versions lists a version twice", id="dup-version"
            ),
            pytest.param(
                "canary_soak", [], 'field "canary_soak" must be an object', id="soak-list"
            ),
            pytest.param(
                "canary_soak.duration_seconds",
                -5,
                'field "canary_soak.duration_seconds"',
                id="soak-neg",
            ),
            pytest.param("canary_soak.duration_seconds", 2**52, "never ends", id="soak-forever"),
            pytest.param(
                "canary_soak.ends_at",
                "2026-11-26T11:00:00Z",
                'field "canary_soak.ends_at" must be started_at + duration_seconds '
                "(2026-11-26T10:30:00Z)",
                id="soak-end-mismatch",
            ),
            pytest.param(
                "canary_soak.started_at",
                DELETE,
                'missing field "canary_soak.started_at"',
                id="soak-no-start",
            ),
            pytest.param("issued_at", DELETE, 'missing field "issued_at"', id="no-issued"),
            pytest.param(
                "expires_at", 1700000000, 'field "expires_at" must be an RFC 3339', id="expiry-int"
            ),
            pytest.param(
                "expires_at",
                "2026-11-26T09:00:00Z",
                "expires_at 2026-11-26T09:00:00Z is not after issued_at",
                id="expiry-before-issue",
            ),
        ],
    )
    def test_bad_field_is_a_verification_error_naming_it(
        self, path: str, value: Any, fragment: str
    ) -> None:
        """A missing, ill-typed or inconsistent field is a VerificationError that names it."""
        body = copy.deepcopy(CONTRACT_RELEASES_BODY)
        if value is DELETE:
            _delete(body, path)
        else:
            _set(body, path, value)
        with pytest.raises(VerificationError) as caught:
            ReleasesIndex.from_dict(body)
        assert caught.value.message.startswith("releases index")
        assert fragment in caught.value.message

    @pytest.mark.parametrize(
        ("changes", "fragment"),
        [
            pytest.param(
                {"stable": "9.9.9"},
                "channels.stable '9.9.9' is not in versions",
                id="stable-unlisted",
            ),
            pytest.param(
                {"canary": "9.9.9"},
                "channels.canary '9.9.9' is not in versions",
                id="canary-unlisted",
            ),
            pytest.param(
                {"canary": None}, "canary_soak is set but no canary runs", id="soak-without-canary"
            ),
        ],
    )
    def test_channel_rules_hold_when_parsing_and_building(
        self, changes: dict[str, Any], fragment: str
    ) -> None:
        """A channel naming an unlisted version, or a soak with no canary, is refused both ways."""
        body = copy.deepcopy(CONTRACT_RELEASES_BODY)
        if "stable" in changes:
            body["channels"]["stable"] = body["active_version"] = changes["stable"]
        else:
            body["channels"]["canary"] = changes["canary"]
        with pytest.raises(VerificationError, match=r"^releases index: ") as caught:
            ReleasesIndex.from_dict(body)
        assert fragment in caught.value.message
        with pytest.raises(ValueError, match=re.escape(fragment)):
            releases(**changes)

    def test_canary_weight_round_trips_and_is_left_out_without_one(self) -> None:
        """A weighted canary writes canary_weight and reads it back; a file without the field
        (signed before weights) reads as None, and none is written then."""
        weighted = releases(canary_weight=2500)
        body = weighted.to_dict()
        assert body["canary_weight"] == 2500
        assert ReleasesIndex.from_dict(body) == weighted
        parsed = Envelope.from_bytes(sign(body, [KEY_A]).to_bytes())
        assert ReleasesIndex.from_dict(parsed.signed).canary_weight == 2500
        assert "canary_weight" not in releases().to_dict()
        assert ReleasesIndex.from_dict(CONTRACT_RELEASES_BODY).canary_weight is None

    @pytest.mark.parametrize(
        ("weight", "canary", "fragment"),
        [
            pytest.param(10_001, "1.3.0", "an integer from 0 to 10000", id="above-scale"),
            pytest.param(-1, "1.3.0", "an integer from 0 to 10000", id="negative"),
            pytest.param(25.5, "1.3.0", "an integer from 0 to 10000", id="fraction"),
            pytest.param(True, "1.3.0", "an integer from 0 to 10000", id="bool"),
            pytest.param(500, None, "canary_weight is set but no canary runs", id="no-canary"),
        ],
    )
    def test_bad_canary_weight_is_refused(
        self, weight: Any, canary: str | None, fragment: str
    ) -> None:
        """A weight off the 0-10,000 scale, or one without a canary, is malformed."""
        body = copy.deepcopy(CONTRACT_RELEASES_BODY)
        body["canary_weight"] = weight
        body["channels"]["canary"] = canary
        if canary is None:
            body["canary_soak"] = None
        with pytest.raises(VerificationError, match=r"^releases index: ") as caught:
            ReleasesIndex.from_dict(body)
        assert fragment in caught.value.message

    def test_body_that_is_not_an_object_is_refused(self) -> None:
        """A signed body that is not a JSON object is a VerificationError, not a crash."""
        with pytest.raises(VerificationError, match="must be an object"):
            ReleasesIndex.from_dict([])  # type: ignore[arg-type]

    def test_model_keeps_times_in_utc_whole_seconds(self) -> None:
        """Times given in another zone or with a fraction are kept as the wire will carry them."""
        plus_one = timezone(timedelta(hours=1))
        index = releases(issued_at=datetime(2026, 11, 26, 11, 0, 0, 500_000, tzinfo=plus_one))
        assert index.issued_at == ISSUED and index.issued_at.tzinfo is UTC
        assert ReleasesIndex.from_dict(index.to_dict()) == index

    def test_model_refuses_naive_times(self) -> None:
        """A naive datetime in the model is refused at construction, not written as a guess."""
        with pytest.raises(ValueError, match="aware"):
            releases(issued_at=datetime(2026, 11, 26, 10, 0, 0))


class TestExpiry:
    @pytest.mark.parametrize(
        ("offset", "expired"),
        [
            pytest.param(timedelta(seconds=-1), False, id="one-second-before"),
            pytest.param(timedelta(0), True, id="at-expiry"),
            pytest.param(timedelta(days=30), True, id="long-after"),
        ],
    )
    def test_expired_from_expires_at_on(self, offset: timedelta, expired: bool) -> None:
        """A releases.json is valid strictly before expires_at and expired from that second on."""
        index = releases()
        assert index.is_expired(index.expires_at + offset) is expired

    def test_fresh_index_is_not_expired(self) -> None:
        """An index checked at its issue time is not expired."""
        assert not releases().is_expired(ISSUED)

    def test_naive_now_is_refused(self) -> None:
        """A naive clock reading is refused instead of compared as if it were UTC."""
        with pytest.raises(ValueError, match="aware"):
            releases().is_expired(datetime(2030, 1, 1))


class TestPaths:
    def test_origin_paths(self) -> None:
        """Origin paths are the contract's: remote-index.json and features/<id>/releases.json."""
        assert REMOTE_INDEX_PATH == "remote-index.json"
        assert releases_path("checkout") == "features/checkout/releases.json"

    @pytest.mark.parametrize(
        "feature_id",
        [
            pytest.param("", id="empty"),
            pytest.param("..", id="dot-dot"),
            pytest.param("a/b", id="slash"),
            pytest.param("a\\b", id="backslash"),
            pytest.param("a\nb", id="newline"),
        ],
    )
    def test_releases_path_refuses_ids_that_escape_their_folder(self, feature_id: str) -> None:
        """A feature id that could point outside features/<id>/ is refused."""
        with pytest.raises(ValueError, match="cannot name a folder"):
            releases_path(feature_id)
