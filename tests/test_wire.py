"""Gossip datagrams: what a receiver accepts, and every hostile datagram it drops and counts."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

from lannode.core import wire
from lannode.core.ids import node_id_for

NETWORK_KEY = bytes(range(32))


def pair(*, key: bytes | None = None, receiver_key: bytes | None = None, epoch: int = 1) -> tuple[wire.DatagramCodec, wire.DatagramCodec]:
    sender = wire.DatagramCodec(SigningKey.generate(), epoch=epoch, network_key=key)
    receiver = wire.DatagramCodec(SigningKey.generate(), epoch=1, network_key=receiver_key if receiver_key is not None else key)
    return sender, receiver


def dropped(receiver: wire.DatagramCodec, data: bytes) -> str:
    with pytest.raises(wire.Dropped) as caught:
        receiver.decode(data)
    return caught.value.reason


@pytest.mark.parametrize("key", [None, NETWORK_KEY], ids=["open", "sealed"])
def test_a_datagram_arrives_with_its_sender_payload_and_fits_the_mtu(key: bytes | None) -> None:
    sender, receiver = pair(key=key)
    payload = os.urandom(wire.MAX_PAYLOAD)
    data = sender.encode(payload)
    assert len(data) <= wire.MAX_DATAGRAM
    got = receiver.decode(data)
    assert got.payload == payload
    assert got.node_id == node_id_for(sender.public_key)
    assert (got.epoch, got.counter) == (1, 1)


def test_a_payload_over_the_budget_is_our_own_error() -> None:
    sender, _ = pair()
    with pytest.raises(wire.LocalProtocolError):
        sender.encode(b"x" * (wire.MAX_PAYLOAD + 1))


def test_sealed_datagrams_hide_their_content() -> None:
    sender, _ = pair(key=NETWORK_KEY)
    secret = b"alice is at the door" * 4
    data = sender.encode(secret)
    assert secret not in data and sender.public_key not in data


def test_without_the_network_key_nothing_gets_in() -> None:
    insider, receiver = pair(key=NETWORK_KEY)
    outsider = wire.DatagramCodec(SigningKey.generate(), epoch=1, network_key=bytes(32))
    assert dropped(receiver, outsider.encode(b"hello")) == "decrypt"
    open_sender = wire.DatagramCodec(SigningKey.generate(), epoch=1)
    assert dropped(receiver, open_sender.encode(b"hello")) == "unsealed"
    keyless = wire.DatagramCodec(SigningKey.generate(), epoch=1)
    assert dropped(keyless, insider.encode(b"hello")) == "sealed"
    assert receiver.dropped == {"decrypt": 1, "unsealed": 1}


@pytest.mark.parametrize("key", [None, NETWORK_KEY], ids=["open", "sealed"])
def test_flipping_any_bit_gets_the_datagram_dropped(key: bytes | None) -> None:
    sender, receiver = pair(key=key)
    data = sender.encode(b"presence of alice")
    for i in range(len(data)):
        for bit in (0x01, 0x80):
            tampered = bytearray(data)
            tampered[i] ^= bit
            with pytest.raises(wire.Dropped):
                receiver.decode(bytes(tampered))
    assert receiver.decode(data).payload == b"presence of alice"


def test_a_forged_signature_is_dropped_even_with_the_network_key() -> None:
    sender, receiver = pair()
    data = bytearray(sender.encode(b"I am alice"))
    data[-1] ^= 0xFF  # the last byte of the signature
    assert dropped(receiver, bytes(data)) == "signature"


def test_a_claim_to_be_another_node_fails_its_signature() -> None:
    alice, receiver = pair()
    mallory = wire.DatagramCodec(SigningKey.generate(), epoch=1)
    forged = bytearray(mallory.encode(b"I am alice"))
    forged[4:36] = alice.public_key  # claim alice's key, sign with mallory's
    assert dropped(receiver, bytes(forged)) == "signature"


def test_replays_are_dropped_and_reordering_within_the_window_is_not() -> None:
    sender, receiver = pair()
    datagrams = [sender.encode(f"n{i}".encode()) for i in range(100)]
    receiver.decode(datagrams[50])
    assert dropped(receiver, datagrams[50]) == "replay"
    receiver.decode(datagrams[49])  # late but inside the window: accepted once
    assert dropped(receiver, datagrams[49]) == "replay"
    receiver.decode(datagrams[99])
    assert dropped(receiver, datagrams[20]) == "replay"  # below the window
    receiver.decode(datagrams[98])
    assert receiver.dropped["replay"] == 3


def test_a_restarted_sender_is_accepted_and_its_old_boot_is_not() -> None:
    key = SigningKey.generate()
    receiver = wire.DatagramCodec(SigningKey.generate(), epoch=1)
    first_boot = wire.DatagramCodec(key, epoch=7)
    old = [first_boot.encode(b"a"), first_boot.encode(b"b")]
    receiver.decode(old[0])
    second_boot = wire.DatagramCodec(key, epoch=8)
    assert receiver.decode(second_boot.encode(b"again")).counter == 1
    assert dropped(receiver, old[1]) == "replay"


def test_our_own_datagrams_looped_back_are_dropped() -> None:
    sender, _ = pair()
    assert dropped(sender, sender.encode(b"me")) == "own"


def test_truncated_and_oversized_datagrams_are_dropped() -> None:
    for key in (None, NETWORK_KEY):
        sender, receiver = pair(key=key)
        data = sender.encode(b"some presence")
        for cut in range(len(data)):
            with pytest.raises(wire.Dropped):
                receiver.decode(data[:cut])
        assert dropped(receiver, data + b"\0") in ("truncated", "decrypt")
    assert dropped(receiver, b"LN" + bytes(wire.MAX_DATAGRAM)) == "oversized"
    assert dropped(receiver, b"XX\x01\x00" + bytes(200)) == "magic"
    assert dropped(receiver, b"LN\x09\x00" + bytes(200)) == "version"
    assert dropped(receiver, b"LN\x01\x80" + bytes(200)) == "flags"


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=1600), sealed=st.booleans())
def test_random_bytes_are_dropped_never_raised(data: bytes, sealed: bool) -> None:
    receiver = wire.DatagramCodec(SigningKey.generate(), epoch=1, network_key=NETWORK_KEY if sealed else None)
    try:
        receiver.decode(data)
    except wire.Dropped as exc:
        assert exc.reason in wire.DROP_REASONS
    else:
        pytest.fail("random bytes were accepted")


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from([b"LN\x01\x00", b"LN\x01\x01"]), rest=st.binary(max_size=1396))
def test_random_bytes_behind_a_valid_header_are_dropped(prefix: bytes, rest: bytes) -> None:
    receiver = wire.DatagramCodec(SigningKey.generate(), epoch=1, network_key=NETWORK_KEY if prefix[3] else None)
    with pytest.raises(wire.Dropped):
        receiver.decode(prefix + rest)
