"""Handshake proofs, session keys and sealed frames: the secret is needed, nothing can be reflected or replayed."""

from __future__ import annotations

import dataclasses
import hmac
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from ccied_p2p.codec.auth import (
    NONCE_BYTES,
    SEAL_OVERHEAD,
    Role,
    SessionOpener,
    SessionSealer,
    check_identity,
    clear_hello,
    compute_proof,
    derive_session_keys,
    hkdf_sha256,
    new_nonce,
    open_session,
    transcript,
    verify_proof,
)
from ccied_p2p.codec.messages import Hello, InferRequest, Ping
from ccied_p2p.codec.wire import decode_message, encode_message
from ccied_p2p.errors import AuthenticationError, CodecError, ConfigError

SECRET = "correct horse battery staple"


def hello(name: str, nonce: bytes) -> Hello:
    return Hello(
        node_id=name.encode().ljust(16, b"."),
        name=name,
        fingerprint="ab" * 32,
        protocol=1,
        nonce=nonce,
        port=9000,
    )


ALICE = hello("alice", b"\x01" * NONCE_BYTES)
BOB = hello("bob", b"\x02" * NONCE_BYTES)
ALICE_TO_BOB = derive_session_keys(SECRET, ALICE, BOB).initiator_to_responder


@pytest.fixture
def pair() -> tuple[Hello, Hello]:
    return ALICE, BOB


# -- handshake proofs -------------------------------------------------------------------------------------------------


def test_each_side_verifies_the_others_proof(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    for role in Role:
        proof = compute_proof(SECRET, role, i, r)
        assert len(proof) == 32
        verify_proof(SECRET, role, i, r, proof)
        verify_proof(SECRET.encode(), role, i, r, proof)


def test_a_reflected_proof_is_refused(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    mine = compute_proof(SECRET, Role.INITIATOR, i, r)
    assert mine != compute_proof(SECRET, Role.RESPONDER, i, r)
    with pytest.raises(AuthenticationError, match="responder"):
        verify_proof(SECRET, Role.RESPONDER, i, r, mine)


def test_the_wrong_secret_is_refused(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    proof = compute_proof("another secret", Role.RESPONDER, i, r)
    with pytest.raises(AuthenticationError, match="bad handshake proof"):
        verify_proof(SECRET, Role.RESPONDER, i, r, proof)


@pytest.mark.parametrize(
    "change",
    [
        {"nonce": b"\x03" * NONCE_BYTES},
        {"name": "mallory"},
        {"node_id": b"m" * 16},
        {"fingerprint": "cd" * 32},
        {"protocol": 2},
        {"port": 9001},
    ],
)
def test_a_proof_answers_exactly_one_pair_of_hellos(
    pair: tuple[Hello, Hello], change: dict[str, object]
) -> None:
    i, r = pair
    proof = compute_proof(SECRET, Role.RESPONDER, i, r)
    with pytest.raises(AuthenticationError):
        verify_proof(SECRET, Role.RESPONDER, dataclasses.replace(i, **change), r, proof)  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError):
        verify_proof(SECRET, Role.RESPONDER, i, dataclasses.replace(r, **change), proof)  # type: ignore[arg-type]


def test_swapping_the_hellos_changes_the_proof(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    assert compute_proof(SECRET, Role.INITIATOR, i, r) != compute_proof(SECRET, Role.RESPONDER, r, i)
    assert transcript(i, r) != transcript(r, i)


def test_transcript_fields_cannot_be_shifted() -> None:
    # Length prefixes: moving a character from one field to the next must change the transcript.
    a = dataclasses.replace(hello("ab", b"\x01" * 16), fingerprint="c")
    b = dataclasses.replace(hello("ab", b"\x01" * 16), name="a", fingerprint="bc")
    peer = hello("z", b"\x02" * 16)
    assert transcript(a, peer) != transcript(b, peer)


def test_a_reflected_hello_is_refused(pair: tuple[Hello, Hello]) -> None:
    i, _ = pair
    with pytest.raises(AuthenticationError, match="same nonce"):
        compute_proof(SECRET, Role.RESPONDER, i, dataclasses.replace(i, name="echo"))


def test_short_nonces_are_refused(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    with pytest.raises(AuthenticationError, match="at least 16"):
        compute_proof(SECRET, Role.INITIATOR, dataclasses.replace(i, nonce=b"x" * 15), r)


def test_non_bytes_proof_is_refused(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    with pytest.raises(AuthenticationError):
        verify_proof(SECRET, Role.INITIATOR, i, r, "not bytes")  # type: ignore[arg-type]


def test_empty_secret_is_a_config_error(pair: tuple[Hello, Hello]) -> None:
    with pytest.raises(ConfigError, match="empty"):
        compute_proof("", Role.INITIATOR, *pair)


def test_proof_comparison_is_constant_time(
    pair: tuple[Hello, Hello], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[object, object]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module auth calls
    i, r = pair
    verify_proof(SECRET, Role.INITIATOR, i, r, compute_proof(SECRET, Role.INITIATOR, i, r))
    assert any(len(a) == 32 for a, _ in calls)  # type: ignore[arg-type]


def test_nonces_are_fresh_and_sized() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100
    assert all(len(n) == NONCE_BYTES for n in nonces)
    assert new_nonce(lambda k: b"\x07" * k) == b"\x07" * NONCE_BYTES
    with pytest.raises(ConfigError):
        new_nonce(lambda k: b"short")


def test_hkdf_matches_rfc5869_test_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = hkdf_sha256(ikm, salt, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


# -- session keys ------------------------------------------------------------------------------------------------------


def test_session_keys_differ_per_direction_and_per_connection(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    keys = derive_session_keys(SECRET, i, r)
    assert keys.initiator_to_responder != keys.responder_to_initiator
    assert len(keys.initiator_to_responder) == len(keys.responder_to_initiator) == 32
    assert keys == derive_session_keys(SECRET, i, r)
    again = derive_session_keys(SECRET, dataclasses.replace(i, nonce=b"\x09" * NONCE_BYTES), r)
    assert again.initiator_to_responder != keys.initiator_to_responder
    assert derive_session_keys("other", i, r) != keys
    assert "redacted" in repr(keys)
    assert keys.initiator_to_responder.hex() not in repr(keys)


# -- sealed frames -------------------------------------------------------------------------------------------------------


@pytest.fixture
def sessions(
    pair: tuple[Hello, Hello],
) -> tuple[tuple[SessionSealer, SessionOpener], tuple[SessionSealer, SessionOpener]]:
    i, r = pair
    return open_session(SECRET, Role.INITIATOR, i, r), open_session(SECRET, Role.RESPONDER, i, r)


Sessions = tuple[tuple[SessionSealer, SessionOpener], tuple[SessionSealer, SessionOpener]]


def test_sealed_messages_travel_both_ways(sessions: Sessions) -> None:
    (a_seal, a_open), (b_seal, b_open) = sessions
    x = np.zeros((1, 8, 3, 3), np.float32)
    x[0, 2] = 0.5
    request = InferRequest(request_id=1, fingerprint="fp", split="s", activation=x)
    for k in range(3):
        sealed = a_seal.seal(encode_message(Ping(seq=k)))
        assert len(sealed) == len(encode_message(Ping(seq=k))) + SEAL_OVERHEAD
        assert decode_message(b_open.open(sealed)) == Ping(seq=k)
        got = decode_message(a_open.open(b_seal.seal(encode_message(request))))
        assert isinstance(got, InferRequest)
        np.testing.assert_array_equal(got.activation, x)
    assert a_seal.seq == b_open.seq == 3


def test_replay_is_refused(sessions: Sessions) -> None:
    (a_seal, _), (_, b_open) = sessions
    first = a_seal.seal(b"one")
    assert b_open.open(first) == b"one"
    with pytest.raises(AuthenticationError, match="replayed"):
        b_open.open(first)


def test_reordering_and_gaps_are_refused(sessions: Sessions) -> None:
    (a_seal, _), (_, b_open) = sessions
    first, second = a_seal.seal(b"one"), a_seal.seal(b"two")
    with pytest.raises(AuthenticationError, match="out-of-order"):
        b_open.open(second)
    assert b_open.broken
    with pytest.raises(AuthenticationError, match="already failed"):
        b_open.open(first)


def test_a_frame_reflected_to_its_sender_is_refused(sessions: Sessions) -> None:
    (a_seal, a_open), _ = sessions
    with pytest.raises(AuthenticationError, match="bad frame tag"):
        a_open.open(a_seal.seal(b"hello"))


def test_another_connection_cannot_open_the_frame(pair: tuple[Hello, Hello]) -> None:
    i, r = pair
    a_seal, _ = open_session(SECRET, Role.INITIATOR, i, r)
    other = dataclasses.replace(r, nonce=b"\x05" * NONCE_BYTES)
    _, b_open = open_session(SECRET, Role.RESPONDER, i, other)
    with pytest.raises(AuthenticationError, match="bad frame tag"):
        b_open.open(a_seal.seal(b"hello"))


def test_every_single_bit_flip_is_refused(sessions: Sessions) -> None:
    (a_seal, _), _ = sessions
    sealed = a_seal.seal(b"payload")
    for at in range(len(sealed)):
        for bit in range(8):
            tampered = bytearray(sealed)
            tampered[at] ^= 1 << bit
            opener = SessionOpener(ALICE_TO_BOB)
            with pytest.raises(AuthenticationError):
                opener.open(bytes(tampered))


def test_short_sealed_frames_are_refused(sessions: Sessions) -> None:
    _, (_, b_open) = sessions
    with pytest.raises(AuthenticationError, match="shorter"):
        b_open.open(b"x" * (SEAL_OVERHEAD - 1))


def test_short_keys_are_a_config_error() -> None:
    with pytest.raises(ConfigError):
        SessionSealer(b"k" * 8)
    with pytest.raises(ConfigError):
        SessionOpener(b"k" * 8)
    with pytest.raises(ConfigError):
        SessionOpener(b"k" * 31)


def test_a_sealed_frame_is_chacha20_poly1305_as_documented(sessions: Sessions) -> None:
    (a_seal, _), _ = sessions
    a_seal.seal(b"first")
    frame = encode_message(Ping(seq=7))
    sealed = a_seal.seal(frame)
    header = struct.pack("<Q", 1)
    expected = ChaCha20Poly1305(ALICE_TO_BOB).encrypt(bytes(4) + header, frame, header)
    assert sealed == header + expected


def test_sealed_frames_hide_their_content(sessions: Sessions) -> None:
    (a_seal, _), (_, b_open) = sessions
    secret_part = b"activation bytes " * 8
    sealed = [a_seal.seal(secret_part) for _ in range(3)]
    for s in sealed:
        assert secret_part[:8] not in s
        assert b"activation" not in s
    assert len({s[8:] for s in sealed}) == 3  # a fresh nonce per frame: equal frames look unrelated
    assert [b_open.open(s) for s in sealed] == [secret_part] * 3


def test_the_clear_hello_carries_no_name_or_fingerprint() -> None:
    full = dataclasses.replace(ALICE, node_id=bytes(range(16)))  # the test's node ids spell the name
    clear = clear_hello(full)
    wire = encode_message(clear)
    assert b"alice" in encode_message(full)
    assert b"alice" not in wire
    assert ALICE.fingerprint.encode() not in wire
    assert (clear.node_id, clear.protocol, clear.nonce, clear.port) == (
        full.node_id,
        ALICE.protocol,
        ALICE.nonce,
        ALICE.port,
    )


def test_the_sealed_hello_must_repeat_the_clear_one() -> None:
    clear = clear_hello(ALICE)
    assert check_identity(clear, ALICE) == ALICE
    for change in (
        {"nonce": b"\x03" * NONCE_BYTES},
        {"node_id": b"mallory".ljust(16, b".")},
        {"port": 9001},
        {"protocol": 2},
    ):
        with pytest.raises(AuthenticationError, match="contradicts"):
            check_identity(clear, dataclasses.replace(ALICE, **change))
    with pytest.raises(AuthenticationError, match="sealed Hello first"):
        check_identity(clear, Ping(seq=0))


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_random_bytes_on_the_sealed_path_only_raise_authentication_error(data: bytes) -> None:
    opener = SessionOpener(ALICE_TO_BOB)
    try:
        frame = opener.open(data)
    except AuthenticationError:
        return
    with pytest.raises(CodecError):  # pragma: no cover - a forged tag would have to be guessed
        decode_message(frame)


@settings(max_examples=300, deadline=None)
@given(
    payload=st.binary(max_size=64),
    at=st.integers(0, 200),
    value=st.integers(1, 255),
    cut=st.integers(0, 3),
)
def test_mutated_sealed_frames_only_raise_authentication_error(
    payload: bytes, at: int, value: int, cut: int
) -> None:
    key = ALICE_TO_BOB
    sealed = bytearray(SessionSealer(key).seal(payload))
    sealed[at % len(sealed)] ^= value
    mutated = bytes(sealed[: len(sealed) - cut])
    with pytest.raises(AuthenticationError):
        SessionOpener(key).open(mutated)
