"""A guest of a lannode node, in Python: what a phone's page does, written from the
door's protocol (lannode/guests/service.py, lannode/core/guests.py), for tests and
benchmarks.

    guest = GuestClient(invite["door"], invite["fingerprint"])  # from the host's guests.invite
    guest.join(token="...", name="Ann's phone")
    guest.open_session()
    guest.send_chat(peer="h2", text="hello")

It pins the door's certificate by its SHA-256 fingerprint (what a person does by
comparing it with the host's screen), and signs as the page does: its record, the
session's challenge, every request, and its chat messages (Ed25519, canonical JSON).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.signing import SigningKey

from lannode.core.chat import SIGN_DOMAIN
from lannode.core.drive import BOX_SHARE_INFO, BOX_SHARE_PREFIX
from lannode.core.guests import GUEST_DOMAIN, REQUEST_DOMAIN, SESSION_DOMAIN, GuestRecord, b64, canonical


class GuestRefused(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"{status}: {body.get('error')}")
        self.status = status
        self.body = body
        self.reason = body.get("reason", "")


class GuestClient:
    def __init__(self, url: str, fingerprint: str, key: SigningKey | None = None, *, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "", parts.port or 443
        self.origin = f"https://{parts.netloc}"
        self.fingerprint = fingerprint.replace(":", "").lower()
        self.key = key or SigningKey.generate()
        self.box = X25519PrivateKey.generate()  # drive shares are sealed to it (a page's WebCrypto X25519 key)
        self.timeout = timeout
        self.guest_id = ""
        self.session = ""
        self.counter = 0
        self.hello: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._connection: http.client.HTTPSConnection | None = None

    @property
    def public_key(self) -> bytes:
        return bytes(self.key.verify_key)

    # -- HTTPS with the door's certificate pinned ----------------------------------------------------
    def _connect(self) -> http.client.HTTPSConnection:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # self-signed: checked by fingerprint below instead
        connection = http.client.HTTPSConnection(self.host, self.port, context=context, timeout=self.timeout)
        connection.connect()
        assert connection.sock is not None
        der = connection.sock.getpeercert(binary_form=True) or b""
        if hashlib.sha256(der).hexdigest() != self.fingerprint:
            connection.close()
            raise ssl.SSLError("the door's certificate is not the one its host shows")
        return connection

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        with self._lock:
            for attempt in (1, 2):
                if self._connection is None:
                    self._connection = self._connect()
                try:
                    self._connection.request(method, path, body=body, headers={"Origin": self.origin, "Content-Type": "application/json", **(headers or {})})
                    response = self._connection.getresponse()
                    return response.status, response.read()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    self._connection.close()
                    self._connection = None  # a kept-alive connection the door closed: once more
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def post(self, path: str, data: dict[str, Any]) -> dict[str, Any]:
        status, body = self.request("POST", path, json.dumps(data).encode())
        answer = json.loads(body)
        if status != 200:
            raise GuestRefused(status, answer)
        return dict(answer)

    # -- joining and sessions -----------------------------------------------------------------------
    def record(self, host: str, name: str) -> dict[str, Any]:
        box_key = self.box.public_key().public_bytes_raw()
        record = GuestRecord(self.public_key, host, name, int(time.time() * 1000), b"", box_key)
        signature = self.key.sign(GUEST_DOMAIN + canonical(record.signed_fields())).signature
        return GuestRecord(record.guest_key, host, name, record.since, signature, box_key).to_json()

    def join(self, *, host: str, name: str, token: str | None = None, code: str | None = None) -> dict[str, Any]:
        answer = self.post("/guest/join", {"invite": token, "code": code, "record": self.record(host, name)})
        self.guest_id = answer["guest"]
        return answer

    def open_session(self) -> dict[str, Any]:
        challenge = self.post("/guest/challenge", {"guest": self.guest_id})["challenge"]
        signature = self.key.sign(SESSION_DOMAIN + challenge.encode() + b"\x00" + self.guest_id.encode()).signature
        answer = self.post("/guest/session", {"guest": self.guest_id, "challenge": challenge, "signature": b64(signature)})
        self.session, self.counter, self.hello = answer["session"], 0, answer["hello"]
        return answer

    def signed_headers(self, signed: bytes) -> dict[str, str]:
        self.counter += 1
        signature = self.key.sign(REQUEST_DOMAIN + f"{self.session}\x00{self.counter}\x00".encode() + signed).signature
        return {"X-Lannode-Session": self.session, "X-Lannode-Counter": str(self.counter), "X-Lannode-Signature": b64(signature)}

    def call(self, method: str, **params: Any) -> Any:
        body = json.dumps({"method": method, "params": params}).encode()
        status, data = self.request("POST", "/guest/api", body, self.signed_headers(body))
        answer = json.loads(data)
        if status != 200:
            raise GuestRefused(status, answer)
        if "error" in answer:
            raise GuestRefused(status, {"error": answer["error"]["message"], "reason": answer["error"]["code"]})
        return answer["result"]

    # -- chat, signed here -------------------------------------------------------------------------------
    def sign_message(self, fields: dict[str, Any]) -> dict[str, Any]:
        signature = self.key.sign(SIGN_DOMAIN + canonical(fields)).signature
        return {**fields, "signature": base64.b64encode(signature).decode()}

    def send_chat(self, *, peer: str | None = None, group: str | None = None, texts: list[str]) -> list[dict[str, Any]]:
        where = {"peer": peer} if peer is not None else {"group": group}
        drafts = self.call("chat.draft", **where, texts=texts)["drafts"]
        return list(self.call("chat.send", **where, bodies=[self.sign_message(d) for d in drafts]))

    def group_op(self, op: str, **params: Any) -> dict[str, Any]:
        """A group operation (create, rename, invite, remove, leave), signed here."""
        draft = self.call("group.draft", op=op, **params)["drafts"][0]
        return dict(self.call("group.commit", body=self.sign_message(draft)))

    # -- files ---------------------------------------------------------------------------------------
    def upload(self, data: bytes, name: str, *, piece: int = 4 << 20) -> str:
        """Hand a file to the host (upload.begin, then signed pieces); its upload id."""
        record = self.call("upload.begin", name=name, size=len(data))
        offset, path = record["offset"], f"/guest/uploads/{record['upload']}"
        while offset < len(data):
            chunk = data[offset : offset + piece]
            digest = hashlib.sha256(chunk).hexdigest()
            headers = {**self.signed_headers(f"PUT {path} {offset} {digest}".encode()), "X-Lannode-Offset": str(offset), "X-Lannode-Sha256": digest, "Content-Type": "application/octet-stream"}
            status, body = self.request("PUT", path, chunk, headers)
            if status != 200:
                raise GuestRefused(status, json.loads(body))
            offset += len(chunk)
        return str(record["upload"])

    def download_path(self, transfer: str, index: int) -> str:
        path = f"/guest/files/{transfer}/{index}"
        signed = self.signed_headers(f"GET {path}".encode())
        return f"{path}?session={signed['X-Lannode-Session']}&counter={signed['X-Lannode-Counter']}&signature={signed['X-Lannode-Signature']}"

    def download(self, transfer: str, index: int) -> bytes:
        """A file the guest received, from its host."""
        status, body = self.request("GET", self.download_path(transfer, index))
        if status != 200:
            raise GuestRefused(status, json.loads(body or b"{}"))
        return body

    def open_share(self, sealed: str) -> dict[str, Any]:
        """A drive share sealed to this guest's box key (what its page does with WebCrypto)."""
        data = base64.b64decode(sealed.removeprefix(BOX_SHARE_PREFIX))
        ephemeral, nonce, body = data[:32], data[32:44], data[44:]
        shared = self.box.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        mine = self.box.public_key().public_bytes_raw()
        key = HKDF(hashes.SHA256(), 32, salt=ephemeral + mine, info=BOX_SHARE_INFO).derive(shared)
        return dict(json.loads(AESGCM(key).decrypt(nonce, body, None)))

    def drive_download(self, token: str) -> bytes:
        path = f"/guest/drive/{token}"
        signed = self.signed_headers(f"GET {path}".encode())
        status, body = self.request("GET", f"{path}?session={signed['X-Lannode-Session']}&counter={signed['X-Lannode-Counter']}&signature={signed['X-Lannode-Signature']}")
        if status != 200:
            raise GuestRefused(status, json.loads(body or b"{}"))
        return body

    # -- events ------------------------------------------------------------------------------------------
    def events(self, *, timeout: float = 30.0) -> Iterator[dict[str, Any]]:
        """The guest's events as they come (server-sent events, on a connection of their own)."""
        query = self.signed_headers(b"GET /guest/events")
        path = f"/guest/events?session={query['X-Lannode-Session']}&counter={query['X-Lannode-Counter']}&signature={query['X-Lannode-Signature']}"
        connection = self._connect()
        connection.sock.settimeout(timeout) if connection.sock else None
        try:
            connection.request("GET", path, headers={"Accept": "text/event-stream"})
            response = connection.getresponse()
            if response.status != 200:
                raise GuestRefused(response.status, json.loads(response.read() or b"{}"))
            data: list[str] = []
            while True:
                line = response.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text.startswith("data: "):
                    data.append(text[6:])
                elif text == "" and data:
                    yield json.loads("\n".join(data))
                    data = []
        finally:
            connection.close()

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
