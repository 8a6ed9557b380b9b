"""Mail, sans-IO: the mail plugin's settings, checked addresses and subjects, the
message itself, and the retry schedule.

Both halves of mail use this module: the daemon's outbox (``lannode.mail``) checks
what a person asked to send and writes the message, and the plugin
(``plugins/mail``) reads the same settings to reach the relay.

**No header injection.** Every address and the subject are checked before a
message exists: a CR, an LF or any other control character is refused with an
error that says so, never stripped or folded, since a header that silently
differs from what the person typed is its own kind of surprise. An address is
one ``local@domain`` in ASCII (optionally ``Name <local@domain>``); the message's
headers are written by the stdlib's ``email`` package with the SMTP policy, which
encodes non-ASCII display names and subjects (RFC 2047) and attachment names
(RFC 2231) itself.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, getaddresses, make_msgid
from pathlib import Path
from typing import Any

SECURITIES = ("starttls", "tls", "none")
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
MAX_SUBJECT = 400
MAX_RECIPIENTS = 100
MAX_BODY = 1 << 20
MAX_ATTACHMENT_NAME = 200

_LOCAL = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$")
_DOMAIN = re.compile(r"^(\[[0-9.]+\]|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)$")


class MailError(ValueError):
    """What a person asked to send cannot be sent as asked; the message says why."""


def _control(text: str) -> str | None:
    for c in text:
        if c in "\r\n":
            return "a line break (CR or LF)"
        if ord(c) < 32 and c != "\t" or ord(c) == 127:
            return f"a control character (U+{ord(c):04X})"
    return None


def check_address(text: str, what: str = "address") -> Address:
    """One address, ``local@domain`` or ``Name <local@domain>``; MailError otherwise."""
    if not isinstance(text, str):
        raise MailError(f"{what} must be a string")
    if bad := _control(text):
        raise MailError(f"{what} {text!r} contains {bad}: refused (no header injection)")
    text = text.strip()
    parsed = getaddresses([text])
    if len(parsed) != 1 or not parsed[0][1]:
        raise MailError(f"{what} {text!r} is not one address like ann@example.org")
    name, spec = parsed[0]
    local, at, domain = spec.rpartition("@")
    if not at or not _LOCAL.match(local) or not _DOMAIN.match(domain) or len(spec) > 254:
        raise MailError(f"{what} {text!r} is not an address like ann@example.org (ASCII, local@domain)")
    # the parser forgives (it reads "bob@exa mple.org" as bob@example.org): what was typed must be what is used
    if (text != spec) if "<" not in text else not text.endswith(f"<{spec}>"):
        raise MailError(f"{what} {text!r} is not one address like ann@example.org")
    return Address(display_name=name, username=local, domain=domain)


def check_addresses(items: Any, what: str) -> list[Address]:
    """A list of addresses (or one string of comma-separated ones)."""
    if isinstance(items, str):
        items = [part for part in items.split(",") if part.strip()] if _control(items) is None else [items]
    if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
        raise MailError(f"{what} is a list of addresses")
    if len(items) > MAX_RECIPIENTS:
        raise MailError(f"{what}: at most {MAX_RECIPIENTS} addresses")
    return [check_address(item, what) for item in items]


def check_subject(text: Any) -> str:
    if not isinstance(text, str):
        raise MailError("the subject must be a string")
    if bad := _control(text):
        raise MailError(f"the subject contains {bad}: refused (no header injection)")
    if len(text) > MAX_SUBJECT:
        raise MailError(f"the subject has {len(text)} characters; at most {MAX_SUBJECT}")
    return text


def attachment_name(name: str) -> str:
    """The file name an attachment is given: the last path part, no control characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    clean = "".join(c for c in base if ord(c) >= 32 and ord(c) != 127).strip().lstrip(".")
    return clean[:MAX_ATTACHMENT_NAME] or "attachment"


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    data: bytes
    content_type: str = ""

    def mime(self) -> tuple[str, str]:
        kind = self.content_type or mimetypes.guess_type(self.name)[0] or "application/octet-stream"
        main, _, sub = kind.partition("/")
        return (main, sub) if sub else ("application", "octet-stream")


@dataclass(frozen=True, slots=True)
class Draft:
    """What a person asked to send, checked."""

    sender: Address
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    subject: str
    body: str

    @property
    def recipients(self) -> list[str]:
        """The envelope's recipients: To, Cc and Bcc (Bcc is in no header)."""
        seen: dict[str, None] = {}
        for a in (*self.to, *self.cc, *self.bcc):
            seen.setdefault(a.addr_spec, None)
        return list(seen)


def draft(sender: str, to: Any, subject: Any, body: Any, cc: Any = (), bcc: Any = ()) -> Draft:
    """Check everything a message's headers are made from; MailError on the first fault."""
    recipients = check_addresses(to, "to")
    if not recipients:
        raise MailError("a message needs at least one address in to")
    if not isinstance(body, str):
        raise MailError("the body must be text")
    if len(body.encode()) > MAX_BODY:
        raise MailError(f"the body is over {MAX_BODY >> 20} MiB; attach a file instead")
    return Draft(
        sender=check_address(sender, "from"),
        to=tuple(recipients),
        cc=tuple(check_addresses(list(cc), "cc")),
        bcc=tuple(check_addresses(list(bcc), "bcc")),
        subject=check_subject(subject),
        body=body,
    )


def build_message(d: Draft, attachments: list[Attachment], *, now: float, message_id: str | None = None, mailer: str = "lannode") -> bytes:
    """The RFC 5322 message, CRLF line ends, ready for SMTP DATA."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = d.sender
    msg["To"] = d.to
    if d.cc:
        msg["Cc"] = d.cc
    msg["Subject"] = d.subject
    msg["Date"] = format_datetime(datetime.fromtimestamp(now, timezone.utc))
    msg["Message-ID"] = message_id or make_msgid(domain=d.sender.domain)
    msg["X-Mailer"] = mailer
    msg.set_content(d.body if d.body.endswith("\n") or not d.body else d.body + "\n")
    for a in attachments:
        # always as bytes (base64): an attachment arrives byte for byte as it was
        main, sub = a.mime()
        params = {"charset": "utf-8"} if main == "text" and _utf8(a.data) else {}
        msg.add_attachment(a.data, maintype=main, subtype=sub, filename=attachment_name(a.name), params=params)
    return msg.as_bytes()


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def retry_delay(attempts: int, first: float, most: float) -> float:
    """Seconds before attempt ``attempts + 1``: ``first``, doubling, at most ``most``."""
    return float(min(most, first * 2 ** min(max(0, attempts - 1), 30)))


@dataclass(frozen=True, slots=True)
class MailSettings:
    """The ``[plugins.mail]`` table, checked. The password itself is never here:
    only where the plugin reads it from."""

    host: str
    port: int
    security: str
    username: str
    password_file: str
    password_env: str
    sender: str
    ca_file: str
    timeout: float
    max_attachment_bytes: int
    retry_first: float
    retry_max: float
    give_up_after: float

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> "MailSettings":
        def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
            value = table.get(key, default)
            if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
                raise MailError(f"{key} must be {getattr(kind, '__name__', 'a number')}, got {value!r}")
            return value

        host = get("host", str, "")
        if not host or _control(host) or any(c.isspace() for c in host):
            raise MailError('host is the relay\'s name or address, such as "smtp.example.org"')
        security = get("security", str, "starttls")
        if security not in SECURITIES:
            raise MailError(f"security is one of {', '.join(SECURITIES)}, got {security!r}")
        port = get("port", int, 0) or DEFAULT_PORTS[security]
        if not 1 <= port <= 65535:
            raise MailError(f"port is 1 to 65535 (0: {DEFAULT_PORTS[security]} for {security}), got {port}")
        username = get("username", str, "")
        password_file = get("password_file", str, "")
        password_env = get("password_env", str, "")
        if username and not (password_file or password_env):
            raise MailError("a username needs password_file (a file holding the password) or password_env (the name of a variable)")
        if username and security == "none":
            raise MailError('a password is never sent in the clear: use security = "starttls" or "tls" with a username')
        sender = get("from", str, "")
        try:
            check_address(sender, "from")
        except MailError as exc:
            raise MailError(f'{exc}; set from = "Name <you@example.org>"') from None
        numbers = {key: float(get(key, (int, float), default)) for key, default in (("timeout", 30.0), ("retry_first", 30.0), ("retry_max", 3600.0), ("give_up_after", 172800.0))}
        for key, value in numbers.items():
            if not value > 0:
                raise MailError(f"{key} is a number of seconds above 0, got {value:g}")
        most = get("max_attachment_bytes", int, 18_000_000)
        if most < 0:
            raise MailError("max_attachment_bytes is 0 or more")
        return cls(
            host=host,
            port=port,
            security=security,
            username=username,
            password_file=password_file,
            password_env=password_env,
            sender=sender,
            ca_file=get("ca_file", str, ""),
            timeout=numbers["timeout"],
            max_attachment_bytes=most,
            retry_first=numbers["retry_first"],
            retry_max=numbers["retry_max"],
            give_up_after=numbers["give_up_after"],
        )

    def read_password(self, environ: dict[str, str]) -> str:
        """The password from its file or variable ("" without a username)."""
        if not self.username:
            return ""
        if self.password_file:
            path = Path(self.password_file).expanduser()
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise MailError(f"password_file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc.__class__.__name__})") from None
            return text.rstrip("\r\n")
        value = environ.get(self.password_env)
        if value is None:
            raise MailError(f"password_env: the variable {self.password_env} is not set in the node's environment")
        return value

    def public(self) -> dict[str, Any]:
        """What status shows: where mail goes, never how it logs in."""
        return {"relay": f"{self.host}:{self.port}", "security": self.security, "from": self.sender, "login": bool(self.username)}
