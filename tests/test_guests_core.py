"""Guests, sans-IO (lannode/core/guests.py): invitations, the record a guest signs, signed requests."""

from __future__ import annotations

import pytest
from nacl.signing import SigningKey

from lannode.core.guests import (
    GUEST_DOMAIN,
    MAX_WRONG_CODES,
    REPLAY_WINDOW,
    REQUEST_DOMAIN,
    SESSION_DOMAIN,
    GuestError,
    GuestRecord,
    Invites,
    Sessions,
    canonical,
)
from lannode.core.ids import node_id_for
from lannode.core.store import Entry
from lannode.core.writers import refusal

HOST = node_id_for(b"h" * 32)


def signed_record(key: SigningKey, *, host: str = HOST, name: str = "Ann's phone") -> dict[str, object]:
    record = GuestRecord(bytes(key.verify_key), host, name, 1_765_000_000_000)
    signature = key.sign(GUEST_DOMAIN + canonical(record.signed_fields())).signature
    return GuestRecord(record.guest_key, host, name, record.since, signature).to_json()


def test_an_invite_is_redeemed_once_by_its_token_or_its_code_and_expires() -> None:
    invites = Invites()
    first, second = invites.make(now=0.0), invites.make(now=0.0)
    assert invites.redeem(10.0, token=first.token) is first
    with pytest.raises(GuestError) as used:
        invites.redeem(11.0, token=first.token)
    assert used.value.reason == "unknown_token"
    assert invites.redeem(12.0, code=f"{second.code[:3]} {second.code[3:]}") is second  # spaces typed are fine
    late = invites.make(now=0.0, lifetime=600)
    with pytest.raises(GuestError):
        invites.redeem(601.0, token=late.token)
    assert invites.counters["expired"] == 1 and invites.counters["redeemed"] == 2


def test_five_wrong_codes_void_every_open_invite() -> None:
    invites = Invites()
    invite = invites.make(now=0.0)
    wrong = f"{(int(invite.code) + 1) % 1_000_000:06d}"
    for attempt in range(MAX_WRONG_CODES):
        with pytest.raises(GuestError) as refused:
            invites.redeem(1.0, code=wrong)
        assert refused.value.reason == "wrong_code"
    assert invites.counters["voided"] == 1
    with pytest.raises(GuestError):
        invites.redeem(2.0, code=invite.code)  # the right code is too late now


def test_invites_are_revocable_listed_and_bounded() -> None:
    invites = Invites()
    made = [invites.make(now=float(i)) for i in range(40)]
    assert len(invites.listing(now=40.0)) == 32 and invites.counters["displaced"] == 8
    assert invites.revoke(made[-1].id) and not invites.revoke(made[-1].id)
    assert made[-1].id not in {i["id"] for i in invites.listing(now=41.0)}


def test_a_guest_record_holds_only_with_the_guests_own_signature() -> None:
    key = SigningKey.generate()
    data = signed_record(key)
    record = GuestRecord.from_json(data)
    assert record.node_id == node_id_for(bytes(key.verify_key)) and record.host == HOST
    for forged in ({**data, "host": node_id_for(b"x" * 32)}, {**data, "name": "Mallory"}, {**data, "since": 1}):
        with pytest.raises(GuestError) as refused:
            GuestRecord.from_json(forged)
        assert refused.value.reason == "forged"
    for malformed in ({**data, "host": "nope"}, {**data, "name": "\x00"}, {**data, "since": -1}, {**data, "guest_key": "AAAA"}, [], {**data, "since": True}):
        with pytest.raises(GuestError):
            GuestRecord.from_json(malformed)


def open_session(sessions: Sessions, key: SigningKey, guest: str) -> str:
    nonce = sessions.challenge(guest, now=0.0)
    answer = key.sign(SESSION_DOMAIN + nonce.encode() + b"\x00" + guest.encode()).signature
    return sessions.open(guest, bytes(key.verify_key), nonce, answer, now=1.0).id


def sign_request(key: SigningKey, session: str, counter: int, body: bytes) -> bytes:
    return key.sign(REQUEST_DOMAIN + f"{session}\x00{counter}\x00".encode() + body).signature


def test_a_session_takes_each_signed_request_once_even_out_of_order() -> None:
    key = SigningKey.generate()
    guest = node_id_for(bytes(key.verify_key))
    sessions = Sessions()
    session = open_session(sessions, key, guest)
    body = b'{"method":"chat.send"}'
    for counter in (3, 1, 2, 10):
        assert sessions.check(session, counter, body, sign_request(key, session, counter, body), now=2.0).guest == guest
    for replayed in (2, 10):
        with pytest.raises(GuestError) as refused:
            sessions.check(session, replayed, body, sign_request(key, session, replayed, body), now=2.0)
        assert refused.value.reason == "replayed"
    far = 10 + REPLAY_WINDOW + 5
    sessions.check(session, far, body, sign_request(key, session, far, body), now=3.0)
    with pytest.raises(GuestError):
        sessions.check(session, 11, body, sign_request(key, session, 11, body), now=3.0)  # fallen out of the window
    with pytest.raises(GuestError) as tampered:
        sessions.check(session, far + 1, b'{"method":"node.stop"}', sign_request(key, session, far + 1, body), now=3.0)
    assert tampered.value.reason == "forged"


def test_a_challenge_is_answered_once_by_its_guest_only() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    guest = node_id_for(bytes(key.verify_key))
    sessions = Sessions()
    nonce = sessions.challenge(guest, now=0.0)
    wrong = other.sign(SESSION_DOMAIN + nonce.encode() + b"\x00" + guest.encode()).signature
    with pytest.raises(GuestError) as forged:
        sessions.open(guest, bytes(key.verify_key), nonce, wrong, now=1.0)
    assert forged.value.reason in ("forged", "stale_challenge")
    nonce = sessions.challenge(guest, now=0.0)
    late = key.sign(SESSION_DOMAIN + nonce.encode() + b"\x00" + guest.encode()).signature
    with pytest.raises(GuestError) as stale:
        sessions.open(guest, bytes(key.verify_key), nonce, late, now=61.0)
    assert stale.value.reason == "stale_challenge"


def test_a_request_in_a_session_another_guest_opened_does_not_hold() -> None:
    ann, ben = SigningKey.generate(), SigningKey.generate()
    sessions = Sessions()
    ann_session = open_session(sessions, ann, node_id_for(bytes(ann.verify_key)))
    with pytest.raises(GuestError) as refused:
        sessions.check(ann_session, 1, b"{}", sign_request(ben, ann_session, 1, b"{}"), now=2.0)
    assert refused.value.reason == "forged"
    with pytest.raises(GuestError) as unknown:
        sessions.check("nope", 1, b"{}", sign_request(ann, "nope", 1, b"{}"), now=2.0)
    assert unknown.value.reason == "no_session"


def guest_entry(writer: SigningKey, key: str, value: object | None) -> Entry:
    import json

    data = None if value is None else json.dumps(value).encode()
    return Entry(key, data, bytes(writer.verify_key), 1, 1).signed(writer)


def test_only_the_host_a_guest_named_announces_or_drops_it() -> None:
    host, other, guest = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    host_id, other_id, guest_id = (node_id_for(bytes(k.verify_key)) for k in (host, other, guest))
    record = signed_record(guest, host=host_id)
    assert refusal(guest_entry(host, f"guests/{host_id}/{guest_id}", {"record": record, "online": True}), None) is None
    assert refusal(guest_entry(host, f"guests/{host_id}/{guest_id}", None), None) is None
    assert refusal(guest_entry(other, f"guests/{host_id}/{guest_id}", None), None)  # not its guest to drop
    assert refusal(guest_entry(other, f"guests/{other_id}/{guest_id}", {"record": record, "online": True}), None)  # the guest named another host
    made_up = signed_record(SigningKey.generate(), host=host_id)
    assert refusal(guest_entry(host, f"guests/{host_id}/{guest_id}", {"record": made_up, "online": True}), None)  # another guest's record
    assert refusal(guest_entry(host, f"guests/{host_id}/{guest_id}", {"record": {**record, "name": "Eve"}, "online": True}), None)
    assert refusal(guest_entry(host, f"door/{host_id}", {"url": "https://127.0.0.1:1/"}), None) is None
    assert refusal(guest_entry(other, f"door/{host_id}", {"url": "https://127.0.0.66:1/"}), None)


def test_a_guests_room_entry_is_written_by_its_host_and_nobody_else() -> None:
    host, other, guest = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    host_id, guest_id = node_id_for(bytes(host.verify_key)), node_id_for(bytes(guest.verify_key))
    hosted = guest_entry(host, f"guests/{host_id}/{guest_id}", {"record": signed_record(guest, host=host_id), "online": True})
    held = {hosted.key: hosted}
    room = {"name": "phone", "fronts": []}
    assert refusal(guest_entry(host, f"rooms/standup/{guest_id}", room), None, held.get) is None
    assert refusal(guest_entry(other, f"rooms/standup/{guest_id}", room), None, held.get)  # not its guest
    assert refusal(guest_entry(host, f"rooms/standup/{guest_id}", room), None)  # nothing to look the guest up in
