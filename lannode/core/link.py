"""Peer links between daemons: handshake, encrypted records and channels, sans-IO.

A ``LinkConnection`` is fed the bytes that arrive on a TCP stream
(``receive_data``) and hands back events (``next_event``) and the bytes to write
(``data_to_send``), like h11 and wsproto. It never opens a socket or reads a clock.

**Handshake.** Each side sends, in the clear::

    magic "LNL" | version (1) | flags (1) | Ed25519 node key (32) | X25519 ephemeral key (32)

Session keys come from libsodium's ``crypto_kx`` over the ephemeral keys (the
dialer is the kx client), one key per direction, so a later theft of a node key
does not open recorded links (forward secrecy). With a network key, each session
key is then keyed BLAKE2b(session key, key = network key), so a node without the
network key cannot complete a link. Each side's first encrypted record is its
Ed25519 signature over a hash of both hellos and its role; it proves the sender
holds the node key in its hello and binds that key to these ephemeral keys (a
SIGMA-style "sign the transcript" handshake). The node id is derived from the
key, so a dialer that expected node X and meets another key refuses the link
("identity"), as does anyone whose signature does not verify.

**Records.** ``length (4) | AEAD(plaintext, nonce = record counter, additional
data = length)``. The cipher is AES-256-GCM when both ends have it in hardware
(flag bit 0), else XChaCha20-Poly1305; libsodium's, never our own. Counters
start at 0 per direction and never repeat (a 64-bit counter does not wrap), so a
replayed, reordered, dropped or altered record fails to decrypt and ends the
link. A plaintext is ``channel (1) | flags (1) | data``; a message larger than
one record is split into fragments (flag MORE), and records of different
channels may interleave, so a bulk transfer never holds up chat.

**Budgets.** A message is at most ``max_message`` bytes, and the parts of
unfinished messages on all channels together at most ``max_buffered``: a peer
that starts messages on many channels and finishes none is refused ("budget"),
it does not get 16 MiB per channel. A ping that comes while ``MAX_PENDING_CONTROL``
sealed bytes wait to be written goes unanswered, so a peer that pings and reads
nothing cannot grow our output.

**Threat model.** An attacker on the LAN may read, drop, alter, replay and inject
packets and may run its own nodes. It learns who talks to whom and how much
(node keys travel in the clear, as they do in gossip), but not what; it cannot
impersonate a node without its key, and, with a network key, cannot link at all.
It can always cut a link (TCP is not protected); the link layer reconnects.
Out of scope: a compromised member, and traffic analysis.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any, Union

from nacl.bindings import (
    crypto_aead_aes256gcm_decrypt,
    crypto_aead_aes256gcm_encrypt,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_kx_client_session_keys,
    crypto_kx_keypair,
    crypto_kx_server_session_keys,
)
from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from lannode.core.ids import node_id_for

try:  # libsodium as pynacl binds it, for in-place bulk sealing (RecordCipher.seal_into)
    from nacl._sodium import ffi as _ffi
    from nacl._sodium import lib as _lib

    _sodium: tuple[Any, Any] | None = (_ffi, _lib)
except ImportError:  # a pynacl without it: the same records through its public API
    _sodium = None

MAGIC = b"LNL"
VERSION = 1
FLAG_AES_GCM = 0x01
_HELLO = struct.Struct("!3sBB32s32s")
_LENGTH = struct.Struct("!I")
_PLAIN_HEADER = struct.Struct("!BB")
TAG_BYTES = 16  # the AEAD's tag, the same for AES-256-GCM and XChaCha20-Poly1305 (and the drive's and gossip's seals)
MAX_RECORD_DATA = 64 * 1024  # data bytes per record
MAX_RECORD = MAX_RECORD_DATA + _PLAIN_HEADER.size + TAG_BYTES
DEFAULT_MAX_MESSAGE = 16 * 1024 * 1024
DEFAULT_MAX_BUFFERED = 2 * DEFAULT_MAX_MESSAGE  # parts of unfinished messages held at once, all channels together
MAX_PENDING_CONTROL = 64 * 1024  # sealed bytes not yet taken by the writer past which a ping goes unanswered

CONTROL = 0  # channel 0 carries the link's own messages
# The channels of the services above, one each: every number in one place.
CHANNEL_STORE = 2  # the replicated store's anti-entropy (lannode.store)
CHANNEL_CHAT = 3  # chat frames (lannode.chat)
CHANNEL_SIGNAL = 4  # WebRTC signaling and meeting rooms (lannode.rtc)
CHANNEL_TRANSFER = 5  # file drop's offers and decisions (lannode.transfer)
CHANNEL_DRIVE = 6  # the drive's requests and replies (lannode.drive)
CHANNEL_MEMBERS = 7  # membership view exchanges, push-pull: a flags byte, then Membership.state() (lannode.peers)
CHANNEL_GUEST = 8  # envelopes to and from guests, carried by their hosts (lannode.guests.routes)
MORE = 0x01
C_AUTH, C_PING, C_PONG, C_CLOSE = 1, 2, 3, 4
SIGNATURE_CONTEXT = b"lannode link v1 "


def aes_gcm_available() -> bool:
    """Whether libsodium has AES-256-GCM here (it needs AES-NI and CLMUL)."""
    try:
        crypto_aead_aes256gcm_encrypt(b"", b"", bytes(12), bytes(32))
    except Exception:
        return False
    return True


AES_GCM = aes_gcm_available()


class Role(enum.Enum):
    DIALER = b"D"
    LISTENER = b"L"


class LinkState(enum.Enum):
    HELLO = "hello"  # waiting for the peer's hello
    AUTH = "auth"  # waiting for the peer's signature
    OPEN = "open"
    CLOSED = "closed"


class LocalProtocolError(Exception):
    """We used the connection wrongly (our bug)."""


# -- events --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkEstablished:
    node_id: str
    public_key: bytes
    cipher: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    channel: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    data: bytes


@dataclass(frozen=True, slots=True)
class LinkClosed:
    reason: str  # "closed" by the peer, or why we refused: "identity", "signature", "decrypt", ...
    detail: str = ""


LinkEvent = Union[LinkEstablished, MessageReceived, Pong, LinkClosed]
CLOSE_REASONS = ("closed", "magic", "version", "identity", "signature", "decrypt", "oversized", "budget", "protocol")


class RecordCipher:
    """One direction of AEAD records: ``length (4) | AEAD(plaintext, nonce = counter, ad = length)``."""

    def __init__(self, key: bytes, aes: bool) -> None:
        self.key = key
        self.aes = aes
        self.counter = 0

    @property
    def name(self) -> str:
        return "aes-256-gcm" if self.aes else "xchacha20-poly1305"

    def _nonce(self) -> bytes:
        nonce = self.counter.to_bytes(12 if self.aes else 24, "little")
        self.counter += 1
        return nonce

    def seal(self, plaintext: bytes) -> bytes:
        if _sodium is not None:  # straight to libsodium: pynacl's checks cost more than the cipher on a chat message
            out = bytearray(4 + len(plaintext) + TAG_BYTES)
            self.seal_into(memoryview(plaintext), out)
            return bytes(out)
        length = _LENGTH.pack(len(plaintext) + TAG_BYTES)
        if self.aes:
            return length + crypto_aead_aes256gcm_encrypt(plaintext, length, self._nonce(), self.key)
        return length + crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, length, self._nonce(), self.key)

    def open(self, length: bytes, ciphertext: bytes) -> bytes:
        if _sodium is not None:  # as in seal()
            out = bytearray(max(0, len(ciphertext) - TAG_BYTES))
            self.open_into(length, memoryview(ciphertext), out)
            return bytes(out)
        if self.aes:
            return crypto_aead_aes256gcm_decrypt(ciphertext, length, self._nonce(), self.key)
        return crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, length, self._nonce(), self.key)

    # In place, for bulk data: the same records, without a fresh buffer per call. pynacl's
    # wrappers allocate and copy each input and output; on 256 KiB records those copies
    # cost as much as the cipher, so these call libsodium through pynacl's own cffi module.
    def seal_into(self, plaintext: memoryview, out: bytearray) -> int:
        """Write the record (length and ciphertext) for ``plaintext`` at the start of ``out``;
        its size."""
        n = len(plaintext)
        length = _LENGTH.pack(n + TAG_BYTES)
        out[:4] = length
        if _sodium is None:
            sealed = self.seal(bytes(plaintext))
            out[: len(sealed)] = sealed
            return len(sealed)
        ffi, lib = _sodium
        encrypt = lib.crypto_aead_aes256gcm_encrypt if self.aes else lib.crypto_aead_xchacha20poly1305_ietf_encrypt
        target = ffi.from_buffer("unsigned char[]", out, require_writable=True)
        source = ffi.from_buffer("unsigned char[]", plaintext)
        if encrypt(target + 4, ffi.NULL, source, n, length, 4, ffi.NULL, self._nonce(), self.key) != 0:
            raise CryptoError("sealing failed")
        return 4 + n + TAG_BYTES

    def open_into(self, length: bytes, ciphertext: memoryview, out: bytearray) -> int:
        """Open a record into the start of ``out``; the plaintext's size. CryptoError if it
        does not authenticate."""
        if _sodium is None:
            plaintext = self.open(length, bytes(ciphertext))
            out[: len(plaintext)] = plaintext
            return len(plaintext)
        ffi, lib = _sodium
        decrypt = lib.crypto_aead_aes256gcm_decrypt if self.aes else lib.crypto_aead_xchacha20poly1305_ietf_decrypt
        n = len(ciphertext)
        if n < TAG_BYTES or len(out) < n - TAG_BYTES:
            raise CryptoError("a record too short, or no room to open it")
        target = ffi.from_buffer("unsigned char[]", out, require_writable=True)
        source = ffi.from_buffer("unsigned char[]", ciphertext)
        if decrypt(target, ffi.NULL, ffi.NULL, source, n, length, 4, self._nonce(), self.key) != 0:
            raise CryptoError("a record failed to authenticate")
        return n - TAG_BYTES


class _Refused(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in CLOSE_REASONS
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class LinkConnection:
    """One end of a link. ``expected_node_id``: the dialer's idea of whom it dialed."""

    def __init__(
        self,
        signing_key: SigningKey,
        role: Role,
        *,
        network_key: bytes | None = None,
        expected_node_id: str | None = None,
        max_message: int = DEFAULT_MAX_MESSAGE,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        aes_gcm: bool = AES_GCM,
    ) -> None:
        self.role = role
        self.state = LinkState.HELLO
        self.peer_node_id: str | None = None
        self.peer_public_key: bytes | None = None
        self._key = signing_key
        self._network_key = network_key
        self._expected = expected_node_id
        self._max_message = max_message
        self._max_buffered = max_buffered
        self.buffered = 0  # bytes of unfinished messages held, all channels together
        self.pings_unanswered = 0  # pings that came while we had sealed bytes waiting to be sent
        self._aes_gcm = aes_gcm
        self._eph_public, self._eph_secret = crypto_kx_keypair()
        self._hello = _HELLO.pack(MAGIC, VERSION, FLAG_AES_GCM if aes_gcm else 0, bytes(signing_key.verify_key), self._eph_public)
        self._in = bytearray()
        self._out = bytearray(self._hello)
        self._events: deque[LinkEvent] = deque()
        self._tx: RecordCipher | None = None
        self._rx: RecordCipher | None = None
        self._partial: dict[int, bytearray] = {}
        self.cipher = ""
        self.bytes_sent = 0
        self.bytes_received = 0

    # -- input ---------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the stream; b"" means the peer closed it."""
        if self.state is LinkState.CLOSED:
            return
        if not data:
            self._close_by("closed", "the stream ended")
            return
        self.bytes_received += len(data)
        self._in += data
        try:
            self._process()
        except _Refused as refused:
            self._close_by(refused.reason, refused.detail)

    def next_event(self) -> LinkEvent | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[LinkEvent]:
        out = list(self._events)
        self._events.clear()
        return out

    # -- output --------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Bytes sealed and waiting for data_to_send()."""
        return len(self._out)

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        self.bytes_sent += len(out)
        return out

    def send_message(self, channel: int, data: bytes) -> None:
        """Queue one message on a channel (1..255), split into records as needed."""
        if len(data) > self._max_message:
            raise LocalProtocolError(f"a message is at most {self._max_message} bytes")
        view = memoryview(data)
        for start in range(0, max(len(data), 1), MAX_RECORD_DATA):
            self.send_record(channel, view[start : start + MAX_RECORD_DATA], more=start + MAX_RECORD_DATA < len(data))

    def send_record(self, channel: int, chunk: bytes | memoryview, *, more: bool) -> None:
        """Seal one record of a message now. Records are sealed in the order they are
        written (their counters are the nonces), so a writer that interleaves
        channels seals each record just before it writes it."""
        self._require_open()
        if not 1 <= channel <= 255:
            raise LocalProtocolError("channels are 1..255; 0 is the link's own")
        if len(chunk) > MAX_RECORD_DATA:
            raise LocalProtocolError(f"a record carries at most {MAX_RECORD_DATA} bytes")
        self._out += self._seal(_PLAIN_HEADER.pack(channel, MORE if more else 0) + chunk)

    def send_ping(self, data: bytes = b"") -> None:
        self._require_open()
        self._out += self._seal(_PLAIN_HEADER.pack(CONTROL, 0) + bytes([C_PING]) + data[:64])

    def send_close(self, detail: str = "") -> None:
        """Say goodbye but keep reading: the peer may still have records on their way."""
        if self.state is LinkState.OPEN:
            self._out += self._seal(_PLAIN_HEADER.pack(CONTROL, 0) + bytes([C_CLOSE]) + detail.encode()[:200])

    def close(self, detail: str = "") -> None:
        if self.state is LinkState.OPEN:
            self._out += self._seal(_PLAIN_HEADER.pack(CONTROL, 0) + bytes([C_CLOSE]) + detail.encode()[:200])
        self.state = LinkState.CLOSED

    # -- the protocol --------------------------------------------------------------------------
    def _process(self) -> None:
        if self.state is LinkState.HELLO:
            if len(self._in) < _HELLO.size:
                if not MAGIC.startswith(bytes(self._in[: len(MAGIC)])):
                    raise _Refused("magic", "not a lannode link")
                return
            hello = bytes(self._in[: _HELLO.size])
            del self._in[: _HELLO.size]
            self._on_hello(hello)
        while self.state in (LinkState.AUTH, LinkState.OPEN):
            if len(self._in) < _LENGTH.size:
                return
            length_bytes = bytes(self._in[: _LENGTH.size])
            (length,) = _LENGTH.unpack(length_bytes)
            if length > MAX_RECORD or length < TAG_BYTES + _PLAIN_HEADER.size:
                raise _Refused("oversized", f"a record of {length} bytes")
            if len(self._in) < _LENGTH.size + length:
                return
            ciphertext = bytes(self._in[_LENGTH.size : _LENGTH.size + length])
            del self._in[: _LENGTH.size + length]
            assert self._rx is not None
            try:
                plaintext = self._rx.open(length_bytes, ciphertext)
            except CryptoError:
                raise _Refused("decrypt", "a record failed authentication") from None
            self._on_record(plaintext)

    def _on_hello(self, hello: bytes) -> None:
        magic, version, flags, node_key, eph_key = _HELLO.unpack(hello)
        if magic != MAGIC:
            raise _Refused("magic", "not a lannode link")
        if version != VERSION:
            raise _Refused("version", f"link version {version}")
        peer_id = node_id_for(node_key)
        if self._expected is not None and peer_id != self._expected:
            raise _Refused("identity", f"expected node {self._expected}, the peer holds the key of {peer_id}")
        if node_key == bytes(self._key.verify_key):
            raise _Refused("identity", "the peer claims our own key")
        if self.role is Role.DIALER:
            rx, tx = crypto_kx_client_session_keys(self._eph_public, self._eph_secret, eph_key)
            transcript = self._hello + hello
        else:
            rx, tx = crypto_kx_server_session_keys(self._eph_public, self._eph_secret, eph_key)
            transcript = hello + self._hello
        if self._network_key is not None:
            rx, tx = (hashlib.blake2b(k, key=self._network_key, digest_size=32, person=b"lannode-link").digest() for k in (rx, tx))
        aes = self._aes_gcm and bool(flags & FLAG_AES_GCM)
        self._rx, self._tx = RecordCipher(rx, aes), RecordCipher(tx, aes)
        self.cipher = self._tx.name
        self._transcript = hashlib.blake2b(transcript, digest_size=32, person=b"lannode-link-th").digest()
        self.peer_public_key = node_key
        self.peer_node_id = peer_id
        self.state = LinkState.AUTH
        signature = self._key.sign(SIGNATURE_CONTEXT + self.role.value + self._transcript).signature
        self._out += self._seal(_PLAIN_HEADER.pack(CONTROL, 0) + bytes([C_AUTH]) + signature)

    def _on_record(self, plaintext: bytes) -> None:
        if len(plaintext) < _PLAIN_HEADER.size:
            raise _Refused("protocol", "a record without a header")
        channel, flags = _PLAIN_HEADER.unpack_from(plaintext)
        data = plaintext[_PLAIN_HEADER.size :]
        if self.state is LinkState.AUTH:
            if channel != CONTROL or not data or data[0] != C_AUTH:
                raise _Refused("protocol", "the first record must be the signature")
            peer_role = Role.LISTENER if self.role is Role.DIALER else Role.DIALER
            assert self.peer_public_key is not None and self.peer_node_id is not None
            try:
                VerifyKey(self.peer_public_key).verify(SIGNATURE_CONTEXT + peer_role.value + self._transcript, data[1:])
            except (BadSignatureError, CryptoError, ValueError):
                raise _Refused("signature", "the peer does not hold the key it claims") from None
            self.state = LinkState.OPEN
            self._events.append(LinkEstablished(self.peer_node_id, self.peer_public_key, self.cipher))
            return
        if channel == CONTROL:
            if not data:
                raise _Refused("protocol", "an empty control record")
            kind, body = data[0], data[1:]
            if kind == C_PING:
                if len(self._out) >= MAX_PENDING_CONTROL:  # a peer that pings and reads nothing gets no more
                    self.pings_unanswered += 1
                else:
                    self._out += self._seal(_PLAIN_HEADER.pack(CONTROL, 0) + bytes([C_PONG]) + body[:64])
            elif kind == C_PONG:
                self._events.append(Pong(body))
            elif kind == C_CLOSE:
                self._close_by("closed", body.decode(errors="replace"))
            # other control kinds are from a newer version: ignore
            return
        partial = self._partial.get(channel)
        if flags & MORE:
            if partial is None:
                partial = self._partial[channel] = bytearray()
            if len(partial) + len(data) > self._max_message:
                raise _Refused("oversized", f"a message over {self._max_message} bytes")
            if self.buffered + len(data) > self._max_buffered:
                raise _Refused("budget", f"unfinished messages over {self._max_buffered} bytes on {len(self._partial)} channels")
            partial += data
            self.buffered += len(data)
            return
        if partial is not None:
            del self._partial[channel]
            self.buffered -= len(partial)
            if len(partial) + len(data) > self._max_message:
                raise _Refused("oversized", f"a message over {self._max_message} bytes")
            partial += data
            data = bytes(partial)
        self._events.append(MessageReceived(channel, data))

    # -- helpers -------------------------------------------------------------------------------
    def _seal(self, plaintext: bytes) -> bytes:
        assert self._tx is not None
        return self._tx.seal(plaintext)

    def _require_open(self) -> None:
        if self.state is not LinkState.OPEN:
            raise LocalProtocolError(f"the link is {self.state.value}, not open")

    def _close_by(self, reason: str, detail: str) -> None:
        self.state = LinkState.CLOSED
        self._events.append(LinkClosed(reason, detail))

