"""WebSocket framing (RFC 6455 section 5) as a sans-IO object, for the local API.

Why not wsproto's ``Connection``: the local API carries a message per chat line,
call signal or progress tick, and at a thousand a second wsproto's generator-based
frame parser and trio-websocket's reader task and channels were a third of the
daemon's CPU per message (measured: an echo round trip costs 300 us through
trio-websocket, 200 us through wsproto alone, 94 us over a bare socket). This
codec does only what the API needs, in straight-line code: no extensions (the
handshake never accepts permessage-deflate, so every RSV bit set is an error),
text and binary messages, fragmentation, ping, pong and close. The HTTP upgrade
itself is ``lannode.net.websocket``'s job.

It is fed bytes (``receive_data``) and hands back events (``events``) and bytes to
send (``message``, ``pong``, ``close``); it owns no socket and reads no clock. A
peer's bad input raises ``ProtocolError`` carrying the close code to answer with
(1002 protocol error, 1007 bad UTF-8, 1009 too big); every length read from the
wire is checked against ``max_message`` before anything is buffered for it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (OP_TEXT, OP_BINARY)
CONTROL_OPCODES = (OP_CLOSE, OP_PING, OP_PONG)

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
# Codes a peer may send in a close frame (RFC 6455 7.4.1; 1004-1006 and 1015 never go on the wire).
_SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

_SHORT = struct.Struct("!H")
_LONG = struct.Struct("!Q")


class ProtocolError(Exception):
    """The peer broke RFC 6455; ``code`` is what to close the connection with."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    data: str | bytes  # str for a text message, bytes for a binary one


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    code: int  # 1005 when the peer's close frame carried no code
    reason: str


Event = Message | Ping | Pong | Closed


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (masking is its own inverse)."""
    n = len(payload)
    if n == 0:
        return b""
    stream = key * (n // 4 + 1)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(n, "little")


class FrameCodec:
    """One end of a WebSocket connection after the handshake.

    ``client=True`` masks what it sends and refuses masked frames; the server side
    does the opposite, as section 5.1 requires.
    """

    def __init__(self, *, client: bool, max_message: int) -> None:
        self.client = client
        self.max_message = max_message
        self._buffer = bytearray()
        self._parts: list[bytes] = []  # a fragmented message's payloads so far
        self._parts_size = 0
        self._parts_opcode: int | None = None
        self.closed_by_peer = False
        self.close_sent = False

    # -- receiving ----------------------------------------------------------
    def receive_data(self, data: bytes | bytearray) -> None:
        self._buffer += data

    def events(self) -> list[Event]:
        """Every whole frame buffered so far, as events; raises ProtocolError on bad input."""
        out: list[Event] = []
        buf = self._buffer
        pos = 0
        end = len(buf)
        try:
            while not self.closed_by_peer and end - pos >= 2:
                b0, b1 = buf[pos], buf[pos + 1]
                fin, opcode, masked, length = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
                if b0 & 0x70:
                    raise ProtocolError(PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
                header = 2
                if length == 126:
                    if end - pos < 4:
                        break
                    (length,) = _SHORT.unpack_from(buf, pos + 2)
                    header = 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    (length,) = _LONG.unpack_from(buf, pos + 2)
                    if length >> 63:
                        raise ProtocolError(PROTOCOL_ERROR, "a 64-bit frame length with its top bit set")
                    header = 10
                self._check_frame(fin, opcode, masked, length)
                key_at = pos + header
                start = key_at + (4 if masked else 0)
                if end - start < length:
                    break
                payload = bytes(buf[start : start + length])
                if masked:
                    payload = mask(payload, bytes(buf[key_at:start]))
                pos = start + length
                event = self._frame(fin, opcode, payload)
                if event is not None:
                    out.append(event)
        finally:
            del buf[:pos]
        return out

    def _check_frame(self, fin: int, opcode: int, masked: int, length: int) -> None:
        if opcode in CONTROL_OPCODES:
            if not fin or length > 125:
                raise ProtocolError(PROTOCOL_ERROR, "a control frame must be whole and at most 125 bytes")
        elif opcode in DATA_OPCODES:
            if self._parts_opcode is not None:
                raise ProtocolError(PROTOCOL_ERROR, "a new message began before the last one finished")
        elif opcode == OP_CONTINUATION:
            if self._parts_opcode is None:
                raise ProtocolError(PROTOCOL_ERROR, "a continuation frame with no message to continue")
        else:
            raise ProtocolError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if bool(masked) == self.client:
            raise ProtocolError(PROTOCOL_ERROR, "frames from a client must be masked, frames from a server must not")
        if opcode not in CONTROL_OPCODES and self._parts_size + length > self.max_message:
            raise ProtocolError(MESSAGE_TOO_BIG, f"a message over {self.max_message} bytes")

    def _frame(self, fin: int, opcode: int, payload: bytes) -> Event | None:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        if opcode == OP_CLOSE:
            self.closed_by_peer = True
            return _close_event(payload)
        if not fin:
            if opcode != OP_CONTINUATION:
                self._parts_opcode = opcode
            self._parts.append(payload)
            self._parts_size += len(payload)
            return None
        if opcode == OP_CONTINUATION:
            assert self._parts_opcode is not None
            opcode = self._parts_opcode
            self._parts.append(payload)
            payload = b"".join(self._parts)
            self._parts, self._parts_size, self._parts_opcode = [], 0, None
        if opcode == OP_BINARY:
            return Message(payload)
        try:
            return Message(payload.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError(INVALID_DATA, "a text message that is not UTF-8") from None

    def statistics(self) -> dict[str, int]:
        return {"buffered": len(self._buffer), "partial_message": self._parts_size}

    # -- sending ------------------------------------------------------------
    def message(self, data: str | bytes) -> bytes:
        """One frame holding a whole text (str) or binary (bytes) message."""
        if isinstance(data, str):
            return self._frame_bytes(OP_TEXT, data.encode("utf-8"))
        return self._frame_bytes(OP_BINARY, bytes(data))

    def ping(self, payload: bytes = b"") -> bytes:
        return self._frame_bytes(OP_PING, payload[:125])

    def pong(self, payload: bytes) -> bytes:
        return self._frame_bytes(OP_PONG, payload[:125])

    def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> bytes:
        """The close frame (once; b"" after). A reason is cut to fit a control frame."""
        if self.close_sent:
            return b""
        self.close_sent = True
        body = _SHORT.pack(code) + reason.encode("utf-8")[:123]
        return self._frame_bytes(OP_CLOSE, body)

    def _frame_bytes(self, opcode: int, payload: bytes) -> bytes:
        n = len(payload)
        mask_bit = 0x80 if self.client else 0
        if n < 126:
            header = bytes((0x80 | opcode, mask_bit | n))
        elif n < 1 << 16:
            header = bytes((0x80 | opcode, mask_bit | 126)) + _SHORT.pack(n)
        else:
            header = bytes((0x80 | opcode, mask_bit | 127)) + _LONG.pack(n)
        if self.client:
            key = os.urandom(4)
            return header + key + mask(payload, key)
        return header + payload


def _close_event(payload: bytes) -> Closed:
    if not payload:
        return Closed(1005, "")
    if len(payload) == 1:
        raise ProtocolError(PROTOCOL_ERROR, "a close frame with a 1-byte body")
    (code,) = _SHORT.unpack_from(payload)
    if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
        raise ProtocolError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(INVALID_DATA, "a close reason that is not UTF-8") from None
    return Closed(code, reason)
