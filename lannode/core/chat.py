"""Chat messages and the frames that carry them between daemons, sans-IO.

A ``ChatMessage`` is signed by its sender (Ed25519 over a canonical JSON form,
domain-separated), so a message relayed by a third node (a group member helping
another catch up) is as trustworthy as one received from its author, and a 1:1
message that arrives from anyone but its author is refused.

Identity and order:

* ``id``: 128 random bits, hex; receivers store a message at most once per id
  (that is what makes delivery exactly-once over at-least-once retries).
* ``seq``: the sender's own counter within the conversation (1, 2, 3...).
* ``lamport``: one more than the highest lamport the sender had seen in the
  conversation when it wrote. Every node shows a conversation sorted by
  ``(lamport, sender, seq)``: stable (the same on every node) and causal (a
  reply always sorts after what it replies to).

Frames on the link's chat channel are compact JSON objects: ``msg`` (one
message), ``ack`` (message ids stored: the delivery receipt), ``read``
(message ids a person has seen in a front: the read receipt), ``sync`` and
``synced`` (a group catch-up, see ``lannode.chat.service``). Every field is checked; a
bad frame raises ``BadFrame`` and never anything else. ``decode_frame`` does not
verify a message's signature: a message that arrives over its author's own
link is already authenticated by the link, and verifying costs more than the
rest of receiving it; the receiver verifies whatever was relayed.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass
from typing import Any

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from lannode.core.ids import node_id_for

MAX_TEXT_BYTES = 16 * 1024
MAX_FRAME_BYTES = 64 * 1024
MAX_IDS_PER_RECEIPT = 512
SIGN_DOMAIN = b"lannode chat v1\x00"
KINDS = ("text", "group")
MAX_DIGEST_SENDERS = 1024
# seq, lamport and sent_at: exact as a JavaScript number, so the web front orders what the
# daemon orders. A clock at the bound stays there (``next_count``): a peer that sends one
# that high degrades the conversation's order to (MAX_COUNT, sender, seq), and no more.
MAX_COUNT = (1 << 53) - 1


def next_count(value: int) -> int:
    """One more than ``value`` (a seq or lamport clock), saturating at ``MAX_COUNT``."""
    return min(max(value, 0) + 1, MAX_COUNT)


class BadFrame(Exception):
    """A frame or message from a peer that does not parse or does not verify."""


class ChatError(Exception):
    """Something this node's user asked for that cannot be done (too long, empty)."""


def dm_conversation(a: str, b: str) -> str:
    """The conversation id of two nodes' 1:1 chat: the same on both sides."""
    low, high = sorted((a, b))
    return f"dm/{low}/{high}"


def dm_peer(conversation: str, me: str) -> str | None:
    parts = conversation.split("/")
    if len(parts) != 3 or parts[0] != "dm" or me not in parts[1:]:
        return None
    return parts[2] if parts[1] == me else parts[1]


def make_message_id(now_ms: int) -> str:
    """A new message id for a message made at ``now_ms``: 32 hex digits, the time in ms (48
    bits), then 80 random bits. Ids made about the same time sort together, so each
    node's history b-tree takes new ids at its right edge instead of on a random page
    each (a page written per message fewer, and a cache that stays warm as the history
    grows); still unguessable."""
    return f"{now_ms & 0xFFFF_FFFF_FFFF:012x}{os.urandom(10).hex()}"


def check_text(text: str) -> None:
    if not text.strip():
        raise ChatError("a message needs some text")
    try:
        size = len(text.encode())
    except UnicodeEncodeError:
        raise ChatError("a message is text: it has a lone surrogate, which UTF-8 cannot carry") from None
    if size > MAX_TEXT_BYTES:
        raise ChatError(f"a message is at most {MAX_TEXT_BYTES} bytes of UTF-8; this one is {size}")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: str
    conversation: str
    sender_key: bytes  # the author's public key; the sender id derives from it
    seq: int
    lamport: int
    sent_at: int  # the author's wall clock, ms
    text: str
    kind: str = "text"
    signature: bytes = b""

    @property
    def sender(self) -> str:
        return node_id_for(self.sender_key)

    def order_key(self) -> tuple[int, str, int]:
        return (self.lamport, self.sender, self.seq)

    def signed_fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "conversation": self.conversation,
            "sender_key": base64.b64encode(self.sender_key).decode(),
            "seq": self.seq,
            "lamport": self.lamport,
            "sent_at": self.sent_at,
            "text": self.text,
            "kind": self.kind,
        }

    def _canonical(self) -> bytes:
        return json.dumps(self.signed_fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def signed(self, key: SigningKey) -> "ChatMessage":
        return self.with_signature(key.sign(SIGN_DOMAIN + self._canonical()).signature)

    def signed_body(self, key: SigningKey) -> tuple["ChatMessage", str]:
        """``signed(key)`` and its ``body()``, serializing the signed fields once."""
        canonical = self._canonical()
        signature = key.sign(SIGN_DOMAIN + canonical).signature
        return self.with_signature(signature), _body(canonical, signature)

    def with_signature(self, signature: bytes) -> "ChatMessage":
        # (dataclasses.replace walks the fields in Python: several times the cost, per message)
        return ChatMessage(self.id, self.conversation, self.sender_key, self.seq, self.lamport, self.sent_at, self.text, self.kind, signature)

    def verify(self) -> bool:
        try:
            VerifyKey(self.sender_key).verify(SIGN_DOMAIN + self._canonical(), self.signature)
        except (BadSignatureError, CryptoError, ValueError):
            return False
        return True

    def to_json(self) -> dict[str, Any]:
        return {**self.signed_fields(), "signature": base64.b64encode(self.signature).decode()}

    def body(self) -> str:
        """``to_json`` as compact JSON text: the signed form plus the signature, serialized once."""
        return _body(self._canonical(), self.signature)

    @classmethod
    def from_json(cls, data: Any, *, verify: bool = True) -> "ChatMessage":
        if not isinstance(data, dict):
            raise BadFrame("a message must be an object")
        try:
            message = cls(
                id=_hex_id(data["id"]),
                conversation=_string(data["conversation"], 200),
                sender_key=_b64(data["sender_key"], 32),
                seq=_count(data["seq"]),
                lamport=_count(data["lamport"]),
                sent_at=_count(data["sent_at"]),
                text=_string(data["text"], MAX_TEXT_BYTES),
                kind=_string(data.get("kind", "text"), 16),
                signature=_b64(data["signature"], 64),
            )
        except KeyError as exc:
            raise BadFrame(f"a message without {exc.args[0]!r}") from None
        if message.kind not in KINDS:
            raise BadFrame(f"unknown message kind {message.kind!r}")
        if verify and not message.verify():
            raise BadFrame("the message's signature does not verify")
        return message


def _body(canonical: bytes, signature: bytes) -> str:
    return canonical[:-1].decode() + ',"signature":"' + base64.b64encode(signature).decode() + '"}'


# -- frames --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageFrame:
    message: ChatMessage


@dataclass(frozen=True, slots=True)
class AckFrame:
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReadFrame:
    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SyncFrame:
    """Catch-up request: send me what of this conversation I lack; ``have`` is, per
    sender, the highest seq I hold with none missing below it."""

    conversation: str
    have: dict[str, int]


@dataclass(frozen=True, slots=True)
class SyncedFrame:
    """The end of a catch-up answer; ``more`` asks the requester to ask again."""

    conversation: str
    more: bool


Frame = MessageFrame | AckFrame | ReadFrame | SyncFrame | SyncedFrame


def encode_frame(frame: Frame) -> bytes:
    if isinstance(frame, MessageFrame):
        body: dict[str, Any] = {"t": "msg", "m": frame.message.to_json()}
    elif isinstance(frame, AckFrame):
        body = {"t": "ack", "ids": list(frame.ids)}
    elif isinstance(frame, ReadFrame):
        body = {"t": "read", "ids": list(frame.ids)}
    elif isinstance(frame, SyncFrame):
        body = {"t": "sync", "c": frame.conversation, "have": frame.have}
    else:
        body = {"t": "synced", "c": frame.conversation, "more": frame.more}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def decode_frame(data: bytes) -> Frame:
    if len(data) > MAX_FRAME_BYTES:
        raise BadFrame(f"a frame of {len(data)} bytes")
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadFrame("not JSON") from None
    if not isinstance(body, dict):
        raise BadFrame("a frame must be an object")
    kind = body.get("t")
    if kind == "msg":
        # not verified here: a message that comes over its author's own link is authenticated
        # by the link; the receiver verifies the signature of anything relayed
        return MessageFrame(ChatMessage.from_json(body.get("m"), verify=False))
    if kind in ("ack", "read"):
        ids = body.get("ids")
        if not isinstance(ids, list) or len(ids) > MAX_IDS_PER_RECEIPT:
            raise BadFrame("receipt ids must be a list of at most 512")
        checked = tuple(_hex_id(i) for i in ids)
        return AckFrame(checked) if kind == "ack" else ReadFrame(checked)
    if kind == "sync":
        have = body.get("have")
        if not isinstance(have, dict) or len(have) > MAX_DIGEST_SENDERS:
            raise BadFrame(f"a sync digest is an object of at most {MAX_DIGEST_SENDERS} senders")
        return SyncFrame(_string(body.get("c"), 200), {_string(k, 64): _count(v) for k, v in have.items()})
    if kind == "synced":
        more = body.get("more")
        if not isinstance(more, bool):
            raise BadFrame('"more" is true or false')
        return SyncedFrame(_string(body.get("c"), 200), more)
    raise BadFrame(f"unknown frame type {kind!r}")


_HEX_ID = re.compile(r"[0-9a-f]{32}")


def _hex_id(value: Any) -> str:
    if not isinstance(value, str) or _HEX_ID.fullmatch(value) is None:
        raise BadFrame("a message id is 32 lowercase hex digits")
    return value


def _string(value: Any, limit: int) -> str:
    if not isinstance(value, str):
        raise BadFrame(f"expected a string of at most {limit} bytes")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate: JSON can carry it, UTF-8 cannot
        raise BadFrame("expected text (a lone surrogate is not)") from None
    if size > limit:
        raise BadFrame(f"expected a string of at most {limit} bytes")
    return value


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise BadFrame(f"expected an integer from 0 to {MAX_COUNT}")
    return value


def _b64(value: Any, size: int) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise BadFrame(f"expected {size} bytes in base64")
    return raw
