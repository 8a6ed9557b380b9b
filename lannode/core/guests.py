"""Guests, sans-IO: invitations, the record a guest signs, and signed requests.

A *guest* is a browser (a phone, most often) that takes part through a node, its
*host*, without running a daemon. It has an Ed25519 key of its own, made in the
browser (WebCrypto, non-extractable); its node id derives from that key as every
node's does (``lannode.core.ids``). What the host cannot do is speak for it: the
guest signs its own record and its own chat messages.

* **Invitations** (``Invites``). The host makes an invite: a one-time token (in the
  URL fragment of the QR code, so it never reaches a server log) and a 6-digit code
  to type instead. An invite is good for ``lifetime`` seconds (10 minutes by default)
  and for one guest. A wrong code counts against every open invite; the
  ``MAX_WRONG_CODES``-th voids it, so a guesser gets 5 tries in a million.
* **The guest's record** (``GuestRecord``): ``{"guest_key", "host", "name",
  "since"}``, signed by the guest (domain ``GUEST_DOMAIN``, canonical JSON). The
  host announces it to the network in the replicated store: "this guest is
  reachable via me". A host can drop a guest (a tombstone); it cannot make one up,
  nor rename one, nor move one to itself.
* **Signed requests** (``Sessions``). The guest opens a session by signing a
  challenge the host made; then every request carries the session, a counter and
  the guest's signature over both and the body. A request replayed (the same
  counter) or replayed into another session is refused. Counters may arrive out of
  order (a page sends several requests at once over several connections): a window
  of ``REPLAY_WINDOW`` counters behind the highest is accepted once each, as DTLS
  and IPsec accept records.

Canonical JSON here is what a browser's ``JSON.stringify`` of an object with
sorted keys gives: no spaces, UTF-8, integers only. That is what lets a page sign
and check what the daemon checks and signs.
"""

from __future__ import annotations

import base64
import hmac
import json
import os
import secrets
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from lannode.core.ids import is_node_id, node_id_for

GUEST_DOMAIN = b"lannode guest v1\x00"  # a guest's record
SESSION_DOMAIN = b"lannode guest session v1\x00"  # a guest's answer to a challenge
REQUEST_DOMAIN = b"lannode guest request v1\x00"  # every request of a session

INVITE_LIFETIME = 600.0  # seconds an invite is good for, by default
MAX_INVITE_LIFETIME = 7 * 24 * 3600.0
MAX_WRONG_CODES = 5  # wrong codes that void an invite
MAX_INVITES = 32  # open invites at once; past that the oldest goes
CODE_DIGITS = 6
MAX_GUEST_NAME_BYTES = 64
MAX_SINCE_MS = (1 << 53) - 1

CHALLENGE_LIFETIME = 60.0
MAX_CHALLENGES = 256  # challenges waiting for an answer, from all browsers
SESSION_IDLE = 24 * 3600.0  # a session unused this long is closed
MAX_SESSIONS_PER_GUEST = 8  # tabs and devices at once; past that the one used longest ago goes
MAX_SESSIONS = 1024
REPLAY_WINDOW = 64
MAX_COUNTER = (1 << 53) - 1


class GuestError(Exception):
    """A guest's request that cannot be taken; the message says why, for the page.
    ``reason`` is a short word for the counters."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def canonical(value: dict[str, Any]) -> bytes:
    """The bytes a signature covers: JSON, keys sorted, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def unb64(text: Any, size: int | None = None) -> bytes:
    """Bytes from (unpadded) base64url; GuestError if ``text`` is not that, or not ``size`` bytes."""
    if not isinstance(text, str) or len(text) > 4096:
        raise GuestError("malformed", "expected base64url text")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError):
        raise GuestError("malformed", "expected base64url text") from None
    if size is not None and len(data) != size:
        raise GuestError("malformed", f"expected {size} bytes, got {len(data)}")
    return data


def check_guest_name(value: Any) -> str:
    if not isinstance(value, str):
        raise GuestError("malformed", "a name is text")
    name = value.strip()
    if not name:
        raise GuestError("malformed", "pick a name people will know you by")
    if len(name.encode()) > MAX_GUEST_NAME_BYTES or not name.isprintable():
        raise GuestError("malformed", f"a name is at most {MAX_GUEST_NAME_BYTES} bytes of printable text")
    return name


def verify(public_key: bytes, domain: bytes, message: bytes, signature: bytes) -> bool:
    try:
        VerifyKey(public_key).verify(domain + message, signature)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


# -- invitations --------------------------------------------------------------------------------


@dataclass(slots=True)
class Invite:
    id: str  # for listing and revoking; not a secret
    token: str  # in the QR code's URL fragment
    code: str  # 6 digits, to type instead
    created: float
    expires: float
    wrong: int = 0

    def record(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "code": self.code, "expires_in": max(0, round(self.expires - now)), "wrong_codes": self.wrong}


class Invites:
    def __init__(self) -> None:
        self.open: dict[str, Invite] = {}
        self.counters: Counter[str] = Counter()

    def make(self, now: float, lifetime: float = INVITE_LIFETIME) -> Invite:
        if not 0 < lifetime <= MAX_INVITE_LIFETIME:
            raise GuestError("malformed", f"an invite lasts 1 s to {MAX_INVITE_LIFETIME / 86400:.0f} days")
        self.prune(now)
        while len(self.open) >= MAX_INVITES:
            del self.open[next(iter(self.open))]
            self.counters["displaced"] += 1
        codes = {invite.code for invite in self.open.values()}
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        while code in codes:
            code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        invite = Invite(id=os.urandom(4).hex(), token=b64(os.urandom(24)), code=code, created=now, expires=now + lifetime)
        self.open[invite.id] = invite
        self.counters["made"] += 1
        return invite

    def prune(self, now: float) -> None:
        for invite_id in [i for i, invite in self.open.items() if invite.expires <= now]:
            del self.open[invite_id]
            self.counters["expired"] += 1

    def revoke(self, invite_id: str) -> bool:
        if self.open.pop(invite_id, None) is None:
            return False
        self.counters["revoked"] += 1
        return True

    def listing(self, now: float) -> list[dict[str, Any]]:
        self.prune(now)
        return [invite.record(now) for invite in self.open.values()]

    def redeem(self, now: float, *, token: str | None = None, code: str | None = None) -> Invite:
        """Use an invite up: by its token, or by its code. GuestError if neither matches
        an open invite; a wrong code counts against every open invite."""
        self.prune(now)
        if token is not None:
            for invite in self.open.values():
                if hmac.compare_digest(invite.token.encode(), token.encode()):
                    del self.open[invite.id]
                    self.counters["redeemed"] += 1
                    return invite
            self.counters["unknown_token"] += 1
            raise GuestError("unknown_token", "this invitation is not valid: it was used, revoked or has expired; ask for a new one")
        if code is not None:
            typed = "".join(ch for ch in code if ch.isdigit())
            for invite in self.open.values():
                if len(typed) == CODE_DIGITS and hmac.compare_digest(invite.code.encode(), typed.encode()):
                    del self.open[invite.id]
                    self.counters["redeemed"] += 1
                    return invite
            self.counters["wrong_code"] += 1
            for invite in list(self.open.values()):
                invite.wrong += 1
                if invite.wrong >= MAX_WRONG_CODES:
                    del self.open[invite.id]
                    self.counters["voided"] += 1
            raise GuestError("wrong_code", "that code is not right (after 5 wrong codes the invitation is void)")
        raise GuestError("malformed", "an invitation's token or code is needed")


# -- the guest's record ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GuestRecord:
    """A guest's own word: its key, its host and its name, signed by it."""

    guest_key: bytes
    host: str
    name: str
    since: int  # ms, the guest's clock when it signed
    signature: bytes = b""
    box_key: bytes = b""  # X25519 public key the drive seals this guest's shares to (empty: none)

    @property
    def node_id(self) -> str:
        return node_id_for(self.guest_key)

    def signed_fields(self) -> dict[str, Any]:
        fields = {"guest_key": b64(self.guest_key), "host": self.host, "name": self.name, "since": self.since}
        return {**fields, "box_key": b64(self.box_key)} if self.box_key else fields

    def verify(self) -> bool:
        return verify(self.guest_key, GUEST_DOMAIN, canonical(self.signed_fields()), self.signature)

    def to_json(self) -> dict[str, Any]:
        return {**self.signed_fields(), "signature": b64(self.signature)}

    @classmethod
    def from_json(cls, data: Any) -> GuestRecord:
        """A record as a guest or the store gave it: every field checked, the signature too."""
        if not isinstance(data, dict):
            raise GuestError("malformed", "a guest record is an object")
        host, since = data.get("host"), data.get("since")
        if not isinstance(host, str) or not is_node_id(host):
            raise GuestError("malformed", "a guest record names its host's node id")
        if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= MAX_SINCE_MS:
            raise GuestError("malformed", "a guest record's since is a time in ms")
        box_key = unb64(data["box_key"], 32) if "box_key" in data else b""
        record = cls(unb64(data.get("guest_key"), 32), host, check_guest_name(data.get("name")), since, unb64(data.get("signature"), 64), box_key)
        if record.name != data.get("name"):
            raise GuestError("malformed", "a guest's name has no spaces at its ends")
        if not record.verify():
            raise GuestError("forged", "the guest's signature does not hold")
        return record


# -- sessions and signed requests ------------------------------------------------------------------


@dataclass(slots=True)
class Session:
    id: str
    guest: str
    public_key: bytes
    used: float
    highest: int = 0
    seen: int = 0  # bit i: counter highest - i was taken

    def take(self, counter: int) -> bool:
        """Whether ``counter`` is new in this session (and now taken)."""
        if counter > self.highest:
            shift = counter - self.highest
            self.seen = ((self.seen << shift) | 1) & ((1 << REPLAY_WINDOW) - 1) if shift < REPLAY_WINDOW else 1
            self.highest = counter
            return True
        back = self.highest - counter
        if back >= REPLAY_WINDOW or self.seen >> back & 1:
            return False
        self.seen |= 1 << back
        return True


@dataclass(slots=True)
class Sessions:
    """Challenges waiting for an answer, and the open sessions of known guests."""

    challenges: dict[str, tuple[str, float]] = field(default_factory=dict)  # challenge -> (guest, expires)
    sessions: dict[str, Session] = field(default_factory=dict)
    counters: Counter[str] = field(default_factory=Counter)

    def challenge(self, guest: str, now: float) -> str:
        for nonce in [n for n, (_, expires) in self.challenges.items() if expires <= now]:
            del self.challenges[nonce]
        while len(self.challenges) >= MAX_CHALLENGES:
            del self.challenges[next(iter(self.challenges))]
        nonce = b64(os.urandom(18))
        self.challenges[nonce] = (guest, now + CHALLENGE_LIFETIME)
        return nonce

    def open(self, guest: str, public_key: bytes, nonce: str, signature: bytes, now: float) -> Session:
        """A session for ``guest`` (whose key the caller looked up), if it signed our challenge."""
        waiting = self.challenges.pop(nonce, None)
        if waiting is None or waiting[0] != guest or waiting[1] <= now:
            self.counters["stale_challenge"] += 1
            raise GuestError("stale_challenge", "that challenge is unknown or has expired; ask for another")
        if not verify(public_key, SESSION_DOMAIN, nonce.encode() + b"\x00" + guest.encode(), signature):
            self.counters["forged"] += 1
            raise GuestError("forged", "the signature over the challenge does not hold")
        self._prune(now)
        mine = sorted((s for s in self.sessions.values() if s.guest == guest), key=lambda s: s.used)
        for old in mine[: max(0, len(mine) - MAX_SESSIONS_PER_GUEST + 1)]:
            del self.sessions[old.id]
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[min(self.sessions.values(), key=lambda s: s.used).id]
        session = Session(id=b64(os.urandom(18)), guest=guest, public_key=public_key, used=now)
        self.sessions[session.id] = session
        self.counters["opened"] += 1
        return session

    def check(self, session_id: str, counter: Any, signed: bytes, signature: bytes, now: float) -> Session:
        """The session a request belongs to, if its signature holds and its counter is new.
        ``signed`` is what the page signed after the session and counter (the body, or
        the request line of one without)."""
        session = self.sessions.get(session_id)
        if session is None or now - session.used > SESSION_IDLE:
            self.counters["no_session"] += 1
            raise GuestError("no_session", "no such session (the host restarted, or it expired): sign in again")
        if not isinstance(counter, int) or isinstance(counter, bool) or not 0 < counter <= MAX_COUNTER:
            self.counters["malformed"] += 1
            raise GuestError("malformed", "a request's counter is a whole number")
        message = f"{session_id}\x00{counter}\x00".encode() + signed
        if not verify(session.public_key, REQUEST_DOMAIN, message, signature):
            self.counters["forged"] += 1
            raise GuestError("forged", "the request's signature does not hold")
        if not session.take(counter):
            self.counters["replayed"] += 1
            raise GuestError("replayed", "that request was made before (a replay), or is too old")
        session.used = now
        return session

    def close_guest(self, guest: str) -> None:
        for session_id in [s.id for s in self.sessions.values() if s.guest == guest]:
            del self.sessions[session_id]

    def _prune(self, now: float) -> None:
        for session_id in [s.id for s in self.sessions.values() if now - s.used > SESSION_IDLE]:
            del self.sessions[session_id]
