"""The link protocol without sockets: two :class:`Session` objects talking through bytes handed across by hand."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from ccied_p2p.codec.auth import SEAL_OVERHEAD, Role, clear_hello, compute_proof, new_nonce, open_session
from ccied_p2p.codec.messages import (
    Auth,
    ErrorMessage,
    Hello,
    InferInput,
    InferRequest,
    InferResponse,
    Leave,
    Message,
    Ping,
)
from ccied_p2p.codec.session import PROTOCOL_VERSION, Session, SessionState
from ccied_p2p.codec.wire import Frame, decode_message, encode_message
from ccied_p2p.errors import AuthenticationError, LocalError, UnsupportedError

SECRET = "correct horse battery staple"
FP = "ab" * 32


def hello(name: str, port: int, protocol: int = PROTOCOL_VERSION) -> Hello:
    return Hello(os.urandom(16), name, FP, protocol, new_nonce(), port)


def pair(
    secret_i: str | None = SECRET, secret_r: str | None = SECRET, protocol_r: int = PROTOCOL_VERSION
) -> tuple[Session, Session]:
    return (
        Session(Role.INITIATOR, hello("alice", 7001), secret_i),
        Session(Role.RESPONDER, hello("bob", 7002, protocol_r), secret_r),
    )


Wire = list[tuple[str, bytes]]


def pump(i: Session, r: Session) -> Wire:
    """Hand every queued frame across, in order, until neither side has anything to say; the wire as seen."""
    wire: Wire = []
    while True:
        moved = False
        for name, src, dst in (("i>r", i, r), ("r>i", r, i)):
            for data in src.data_to_send():
                wire.append((name, data))
                dst.receive_data(data)
                moved = True
        if not moved:
            return wire


def opened(secret: str | None = SECRET) -> tuple[Session, Session, Wire]:
    i, r = pair(secret, secret)
    wire = pump(i, r)
    assert i.is_open
    assert r.is_open
    return i, r, wire


def deliver(src: Session, dst: Session, msg: Message) -> Message:
    frame = dst.receive_data(src.send(msg))
    assert frame is not None
    return frame.decode()


# -- the handshake ----------------------------------------------------------------------------------------------------


def test_the_handshake_opens_both_sides_with_each_others_full_hello() -> None:
    i, r, wire = opened()
    assert i.peer == r._me  # the very hello the responder was built with
    assert r.peer == i._me
    assert (i.peer.name, i.peer.fingerprint, r.peer.name) == ("bob", FP, "alice")
    # The documented exchange, frame by frame: hello, hello, auth, auth + sealed hello, sealed hello.
    assert [d for d, _ in wire] == ["i>r", "r>i", "i>r", "r>i", "r>i", "i>r"]
    kinds = [type(decode_message(data)).__name__ for _, data in wire[:4]]
    assert kinds == ["Hello", "Hello", "Auth", "Auth"]
    assert i.data_to_send() == r.data_to_send() == []


def test_the_clear_hellos_carry_no_name_or_fingerprint_and_the_sealed_ones_open_as_documented() -> None:
    i, r, wire = opened()
    clear_i, clear_r = (decode_message(wire[k][1]) for k in (0, 1))
    assert isinstance(clear_i, Hello)
    assert isinstance(clear_r, Hello)
    assert clear_i == clear_hello(r.peer)
    assert clear_r == clear_hello(i.peer)
    # The sealed hellos are exactly what codec.auth documents (keys from the clear transcript): bytes unchanged.
    i_seal, i_open = open_session(SECRET, Role.INITIATOR, clear_i, clear_r)
    r_seal, r_open = open_session(SECRET, Role.RESPONDER, clear_i, clear_r)
    assert decode_message(i_open.open(wire[4][1])) == i.peer
    assert decode_message(r_open.open(wire[5][1])) == r.peer
    assert r_seal.seal(encode_message(i.peer)) == wire[4][1]  # ChaCha20-Poly1305 is deterministic per nonce
    assert i_seal.seal(encode_message(r.peer)) == wire[5][1]
    for _, data in wire[4:]:
        assert b"alice" not in data
        assert b"bob" not in data
        assert FP.encode() not in data
    assert i.seal(encode_message(Leave(b"x" * 16, 1))) == i_seal.seal(encode_message(Leave(b"x" * 16, 1)))


def test_the_wrong_secret_is_refused_by_the_responder_and_the_session_stays_failed() -> None:
    i, r = pair(SECRET, "another secret")
    with pytest.raises(AuthenticationError, match="bad handshake proof from the initiator"):
        pump(i, r)
    assert r.state is SessionState.FAILED
    assert not i.is_open
    with pytest.raises(LocalError, match="not open"):
        r.send(Ping(1))
    with pytest.raises(AuthenticationError, match="already failed"):
        r.receive_data(encode_message(Auth(b"\x00" * 32)))


def test_a_responder_without_the_secret_is_refused_by_the_initiator() -> None:
    i, r = pair()
    (clear_i,) = i.data_to_send()
    r.receive_data(clear_i)
    (clear_r,) = r.data_to_send()
    i.receive_data(clear_r)
    (auth,) = i.data_to_send()
    assert isinstance(decode_message(auth), Auth)
    alice, bob = decode_message(clear_i), decode_message(clear_r)
    assert isinstance(alice, Hello)
    assert isinstance(bob, Hello)
    forged = Auth(compute_proof("not the secret", Role.RESPONDER, alice, bob))
    with pytest.raises(AuthenticationError, match="bad handshake proof from the responder"):
        i.receive_data(encode_message(forged))
    assert i.state is SessionState.FAILED
    assert i.data_to_send() == []  # no sealed hello for a peer that failed its proof


def test_a_reflected_auth_is_refused() -> None:
    i, r = pair()
    r.receive_data(i.data_to_send()[0])
    i.receive_data(r.data_to_send()[0])
    (auth,) = i.data_to_send()
    with pytest.raises(AuthenticationError, match="from the responder"):
        i.receive_data(auth)  # its own proof, sent back


def test_a_sealed_hello_that_contradicts_the_clear_one_is_refused() -> None:
    # A peer with the secret runs the handshake by hand and claims another node id once sealed.
    r = Session(Role.RESPONDER, hello("bob", 7002), SECRET)
    me = hello("mallory", 7003)
    clear = clear_hello(me)
    r.receive_data(encode_message(clear))
    (bob,) = (decode_message(d) for d in r.data_to_send())
    assert isinstance(bob, Hello)
    r.receive_data(encode_message(Auth(compute_proof(SECRET, Role.INITIATOR, clear, bob))))
    auth, identity = r.data_to_send()
    assert isinstance(decode_message(auth), Auth)
    sealer, opener = open_session(SECRET, Role.INITIATOR, clear, bob)
    assert decode_message(opener.open(identity)).fingerprint == FP  # type: ignore[union-attr]
    liar = dataclasses.replace(me, node_id=os.urandom(16), fingerprint="cd" * 32)
    with pytest.raises(AuthenticationError, match="contradicts"):
        r.receive_data(sealer.seal(encode_message(liar)))
    assert r.state is SessionState.FAILED
    with pytest.raises(LocalError, match="peer is not known"):
        _ = r.peer


def test_the_peers_fingerprint_is_known_only_once_sealed() -> None:
    i, r = pair()
    r.receive_data(i.data_to_send()[0])
    with pytest.raises(LocalError, match="auth"):
        _ = r.peer  # the clear hello said nothing about the model
    pump(i, r)
    assert r.peer.fingerprint == FP
    other = Session(Role.INITIATOR, dataclasses.replace(hello("carol", 7004), fingerprint="cd" * 32), SECRET)
    r2 = Session(Role.RESPONDER, hello("bob", 7002), SECRET)
    pump(other, r2)
    assert r2.peer.fingerprint == "cd" * 32  # another model is a node's business, not the link's


def test_another_protocol_is_refused_after_the_responder_said_hello() -> None:
    i, r = pair(protocol_r=PROTOCOL_VERSION + 1)
    r.receive_data(i.data_to_send()[0])
    (bob,) = r.data_to_send()
    with pytest.raises(
        AuthenticationError, match=f"protocol {PROTOCOL_VERSION + 1}, this node {PROTOCOL_VERSION}"
    ):
        i.receive_data(bob)
    assert i.data_to_send() == []
    i2, r2 = pair()
    alice = decode_message(i2.data_to_send()[0])
    assert isinstance(alice, Hello)
    bad = dataclasses.replace(alice, protocol=2)
    with pytest.raises(AuthenticationError, match="peer speaks protocol 2"):
        r2.receive_data(encode_message(bad))
    (said,) = r2.data_to_send()  # what went out before the refusal, as before the session existed
    assert isinstance(decode_message(said), Hello)


@pytest.mark.parametrize(
    ("first", "match", "error"),
    [
        (ErrorMessage(0, "auth", "authentication failed"), "peer refused the handshake", AuthenticationError),
        (Auth(b"\x01" * 32), "expected Hello, got Auth", AuthenticationError),
        (Ping(1), "not acceptable here", UnsupportedError),
        (InferRequest(1, FP, "s", np.zeros((1, 4), np.float32)), "not acceptable here", UnsupportedError),
    ],
)
def test_only_handshake_messages_are_decoded_before_the_peer_is_trusted(
    first: Message, match: str, error: type[Exception]
) -> None:
    r = Session(Role.RESPONDER, hello("bob", 7002), SECRET)
    with pytest.raises(error, match=match):
        r.receive_data(encode_message(first))
    assert r.state is SessionState.FAILED
    assert r.data_to_send() == []  # it said nothing to a peer that did not say hello


def test_a_secure_side_refuses_an_insecure_one() -> None:
    i, r = pair(None, SECRET)
    pump(i, r)  # the insecure side thinks it is done; the secure one still waits for a proof
    assert i.is_open
    assert r.state.value == "auth"
    with pytest.raises(UnsupportedError, match="Ping is not acceptable here"):
        r.receive_data(i.send(Ping(1)))
    assert r.state is SessionState.FAILED


# -- sealed frames --------------------------------------------------------------------------------------------------


def test_messages_travel_sealed_both_ways_and_are_peeked_before_decoding() -> None:
    i, r, _ = opened()
    act = np.ones((2, 4), np.float32)
    rid, data = i.request(InferRequest(0, FP, "features.3", act))
    assert len(data) == len(encode_message(InferRequest(rid, FP, "features.3", act))) + SEAL_OVERHEAD
    frame = r.receive_data(data)
    assert isinstance(frame, Frame)
    assert (frame.kind, frame.request_id, frame.tensors[0].shape) == (InferRequest, rid, (2, 4))
    got = frame.decode()
    assert isinstance(got, InferRequest)
    np.testing.assert_array_equal(got.activation, act)
    assert deliver(r, i, Ping(5)) == Ping(5)


def test_a_replayed_frame_is_refused_and_the_session_then_refuses_everything() -> None:
    i, r, _ = opened()
    data = i.send(Ping(1))
    r.receive_data(data)
    with pytest.raises(AuthenticationError, match="replayed"):
        r.receive_data(data)
    assert r.state is SessionState.FAILED
    with pytest.raises(AuthenticationError, match="already failed"):
        r.receive_data(i.send(Ping(2)))


def test_reordered_frames_are_refused() -> None:
    i, r, _ = opened()
    i.send(Ping(1))  # sealed, never delivered
    with pytest.raises(AuthenticationError, match="out-of-order"):
        r.receive_data(i.send(Ping(2)))


@pytest.mark.parametrize("at", [0, 8, 12, -1])
def test_a_tampered_frame_is_refused(at: int) -> None:
    i, r, _ = opened()
    data = bytearray(i.send(Leave(b"x" * 16, 3)))
    data[at] ^= 0x01
    with pytest.raises(AuthenticationError):
        r.receive_data(bytes(data))
    assert r.state is SessionState.FAILED


def test_a_frame_sealed_for_another_connection_is_refused() -> None:
    i, _, _ = opened()
    _, r2, _ = opened()
    with pytest.raises(AuthenticationError, match="bad frame tag"):
        r2.receive_data(i.send(Ping(1)))


def test_a_frame_reflected_to_its_sender_is_refused() -> None:
    i, _, _ = opened()
    with pytest.raises(AuthenticationError, match="bad frame tag"):
        i.receive_data(i.send(Ping(1)))


def test_insecure_mode_sends_the_full_hellos_and_plain_frames() -> None:
    i, r, wire = opened(None)
    assert [d for d, _ in wire] == ["i>r", "r>i"]
    assert [decode_message(data) for _, data in wire] == [r.peer, i.peer]
    assert i.send(Ping(7)) == encode_message(Ping(7))


def test_nothing_is_sent_before_the_session_opens() -> None:
    i, _ = pair()
    for call in (lambda: i.send(Ping(1)), lambda: i.request(InferInput(0, FP, "p", "jpeg", (3, 2, 2), b"j"))):
        with pytest.raises(LocalError, match="hello, not open"):
            call()


# -- request ids ----------------------------------------------------------------------------------------------------


def test_request_ids_count_per_session_and_answers_match_only_pending_requests() -> None:
    i, r, _ = opened()
    act = np.zeros((1, 4), np.float32)
    ids = []
    for _ in range(3):
        rid, data = i.request(InferRequest(999, FP, "s", act))  # whatever id the caller put in is replaced
        frame = r.receive_data(data)
        assert frame is not None
        assert frame.request_id == rid
        ids.append(rid)
    assert ids == [1, 2, 3]
    assert i.pending == {1, 2, 3}
    rid, data = i.request(InferInput(0, FP, "p", "jpeg", (3, 2, 2), b"jpeg"))
    assert rid == 4
    got = r.receive_data(data)
    assert got is not None
    assert got.decode().request_id == 4  # type: ignore[union-attr]

    answer = deliver(r, i, InferResponse(2, (7,), (0.9,)))
    assert i.answers(answer) == 2
    assert i.answers(deliver(r, i, ErrorMessage(3, "busy", "later"))) == 3
    assert i.answers(deliver(r, i, InferResponse(99, (), ()))) is None  # never asked
    assert i.answers(deliver(r, i, Ping(2))) is None  # not an answer
    i.finish(2)
    assert i.answers(answer) is None  # a late answer to a finished request is no answer
    assert i.pending == {1, 3, 4}
    assert r.pending == frozenset()  # ids are the asker's: the answering side holds none

    i2, _, _ = opened()
    assert i2.request(InferRequest(0, FP, "s", act))[0] == 1  # a new connection starts again at 1


def test_a_request_that_does_not_encode_takes_no_id() -> None:
    i, r, _ = opened()
    with pytest.raises(LocalError):
        i.request(InferRequest(0, FP, "s", np.full((1, 2), np.nan, np.float32)))
    rid, data = i.request(InferRequest(0, FP, "s", np.zeros((1, 2), np.float32)))
    assert rid == 1
    assert i.pending == {1}
    assert r.receive_data(data) is not None  # and no sequence number was spent either
