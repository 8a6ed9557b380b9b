"""Mail end to end: real nodes on loopback send through a real SMTP server (aiosmtpd,
started here on 127.0.0.1) that demands STARTTLS and a login, with a CA and a
certificate this test makes. What arrives is parsed back and compared with what
was sent: headers, body and every attachment's bytes."""

from __future__ import annotations

import asyncio
import datetime
import email
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, Iterator

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import NodeFactory, RunningNode

USER, PASSWORD = "ann", "correct horse battery staple"


# -- a CA and a certificate for 127.0.0.1 --------------------------------------------------------------
def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """(ca.pem, cert.pem, key.pem): a CA, and a server certificate it signed for 127.0.0.1."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "lannode test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").IPv4Address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return paths


# -- the relay -------------------------------------------------------------------------------------------
@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Relay:
    """aiosmtpd on 127.0.0.1: STARTTLS required before anything, AUTH required to send."""

    port: int
    ca: Path
    cert: Path
    key: Path
    implicit_tls: bool = False
    received: list[Received] = field(default_factory=list)
    logins: list[tuple[str, bool]] = field(default_factory=list)  # (user, accepted)
    controller: Controller | None = None
    arrived: threading.Condition = field(default_factory=threading.Condition)
    hold_first: bool = False  # keep the first message's DATA unanswered, then refuse it (451)
    holding: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.hold_first and not self.holding.is_set():
            self.holding.set()
            await asyncio.sleep(20)
            return "451 4.3.0 held by the test"
        login = session.auth_data.decode() if session.authenticated and isinstance(session.auth_data, bytes) else None
        with self.arrived:
            tls = session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None
            self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), bytes(envelope.original_content or envelope.content), tls, login))
            self.arrived.notify_all()
        return "250 OK"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
        user, password = auth_data.login.decode(), auth_data.password.decode()
        ok = (user, password) == (USER, PASSWORD)
        self.logins.append((user, ok))
        return AuthResult(success=ok, handled=False, auth_data=user.encode() if ok else None)

    def start(self) -> "Relay":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        kwargs: dict[str, Any] = {"authenticator": self.authenticate, "auth_required": True}
        if self.implicit_tls:
            # aiosmtpd counts only STARTTLS as TLS when it offers AUTH; here the socket is TLS from the start
            kwargs |= {"ssl_context": context, "auth_require_tls": False}
        else:
            kwargs |= {"tls_context": context, "require_starttls": True}
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port, **kwargs)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.received) >= count, timeout):
                raise AssertionError(f"the relay received {len(self.received)} message(s), not {count}, within {timeout} s")
        return self.received


def text_of(message: EmailMessage) -> str:
    """The plain-text body, line ends as a reader's mail program shows them."""
    part = message.get_body(("plain",))
    assert part is not None, "no text body"
    return str(part.get_content()).replace("\r\n", "\n")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def certificates(tmp_path: Path) -> tuple[Path, Path, Path]:
    return make_certificates(tmp_path / "pki")


@pytest.fixture
def relay(certificates: tuple[Path, Path, Path]) -> Iterator[Relay]:
    r = Relay(free_port(), *certificates)
    yield r
    r.stop()


def mail_config(relay: Relay, folder: Path, *, password: str = PASSWORD, security: str = "starttls", ca: bool = True, extra: str = "") -> str:
    secret = folder / "smtp-password"
    folder.mkdir(parents=True, exist_ok=True)
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return (
        "\n[plugins.mail]\nenabled = true\n"
        f'host = "127.0.0.1"\nport = {relay.port}\nsecurity = "{security}"\n'
        f'username = "{USER}"\npassword_file = "{secret}"\n'
        'from = "Ann Example <ann@example.org>"\n'
        + (f'ca_file = "{relay.ca}"\n' if ca else "")
        + "retry_first = 0.3\nretry_max = 1\n"
        + extra
    )


def lannode(node: RunningNode, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lannode", "--home", str(node.home.path), *args], capture_output=True, text=True, timeout=90, input=stdin)


def mail_node(nodes: NodeFactory, relay: Relay, tmp_path: Path, name: str = "ann", **options: Any) -> RunningNode:
    node = nodes.start(name, extra_config=mail_config(relay, tmp_path / f"secret-{name}", **options))
    node.wait_until(lambda: node.status()["mail"]["plugin_connected"], what="the mail plugin connected")
    return node


def outbox(node: RunningNode, everything: bool = True) -> list[dict[str, Any]]:
    return json.loads(lannode(node, "mail", "outbox", "--json", *(["--all"] if everything else [])).stdout)


# -- the tests -------------------------------------------------------------------------------------------
def test_a_message_with_attachments_arrives_intact_through_starttls_and_a_login(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    relay.start()
    node = mail_node(nodes, relay, tmp_path)
    binary = tmp_path / "photo.jpg"
    binary.write_bytes(bytes(range(256)) * 4000 + b"\r\n.\r\n\x00end")  # a dot line and CRLFs: what SMTP's DATA must escape
    text = tmp_path / "notes.txt"
    text.write_text("first line\nno newline at the end, ünïcode ✓", encoding="utf-8")
    body = tmp_path / "body.txt"
    body.write_text("Hello Bob,\n.\nA line with only a dot, and one that is long " + "x" * 1200 + "\n\nAnn\n")
    done = lannode(
        node, "mail", "send", "--to", "Bob <bob@example.org>,carl@example.net", "--cc", "dora@example.org", "--bcc", "eve@example.org",
        "--subject", "Héllo from the field site ✓", "--body-file", str(body), "--attach", str(binary), "--attach", str(text),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("sent "), done.stdout

    [got] = relay.wait_for(1)
    assert got.tls and got.login == USER  # STARTTLS, then the login, then the message
    assert got.mail_from == "ann@example.org"
    assert sorted(got.rcpt_tos) == ["bob@example.org", "carl@example.net", "dora@example.org", "eve@example.org"]
    message = got.message
    assert message["From"] == "Ann Example <ann@example.org>"
    assert message["To"] == "Bob <bob@example.org>, carl@example.net"
    assert message["Cc"] == "dora@example.org"
    assert message["Bcc"] is None and b"eve@example.org" not in got.data  # Bcc is in the envelope only
    assert message["Subject"] == "Héllo from the field site ✓"
    assert message["Message-ID"].endswith("@example.org>") and message["Date"]
    assert text_of(message) == body.read_text()
    attached = {part.get_filename(): part.get_payload(decode=True) for part in message.iter_attachments()}
    assert attached == {"photo.jpg": binary.read_bytes(), "notes.txt": text.read_bytes()}

    [record] = outbox(node)
    assert record["state"] == "sent" and record["attempts"] == 1 and record["attachments"] == [{"name": "photo.jpg", "size": binary.stat().st_size}, {"name": "notes.txt", "size": text.stat().st_size}]
    assert outbox(node, everything=False) == []
    # the password is in no status, no outbox and no log line
    status = node.status()
    assert status["mail"]["relay"] == f"127.0.0.1:{relay.port}" and status["mail"]["outbox"]["sent"] == 1
    assert PASSWORD not in json.dumps(status) + json.dumps(outbox(node)) + node.log.read_text()


def test_a_wrong_password_fails_clearly_and_the_message_waits_for_a_retry(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    relay.start()
    node = mail_node(nodes, relay, tmp_path, password="hunter2")
    done = lannode(node, "mail", "send", "--to", "bob@example.org", "--subject", "minutes", "--body", "see you")
    assert done.returncode == 1
    assert "refused the login for ann (535" in done.stderr and "check username and the password" in done.stderr, done.stderr
    assert "hunter2" not in done.stderr + node.log.read_text()
    [record] = outbox(node)
    assert record["state"] == "failed" and "535" in record["last_error"]
    assert relay.logins == [("ann", False)] and relay.received == []  # one attempt, not a retry storm

    # the person fixes the password and restarts the node: the failed message is still there, and goes
    node.stop()
    (tmp_path / "secret-ann" / "smtp-password").write_text(PASSWORD)
    node = nodes.start_on(node.home, name="ann")
    node.wait_until(lambda: node.status()["mail"]["plugin_connected"], what="the mail plugin connected")
    again = lannode(node, "mail", "retry", record["id"][:8])
    assert again.returncode == 0, again.stderr
    [got] = relay.wait_for(1)
    assert got.message["Subject"] == "minutes" and text_of(got.message) == "see you\n"
    node.wait_until(lambda: outbox(node)[0]["state"] == "sent", what="the outbox to say sent")


def test_a_relay_down_at_send_time_gets_the_message_once_it_is_up_even_across_a_restart(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    node = mail_node(nodes, relay, tmp_path)  # nothing listens on the relay's port yet
    done = lannode(node, "mail", "send", "--to", "bob@example.org", "--subject", "while the relay sleeps", "--body", "queued, not lost")
    assert done.returncode == 0, done.stderr
    assert "not sent yet" in done.stdout and "cannot be reached" in done.stdout, done.stdout
    node.wait_until(lambda: outbox(node)[0]["attempts"] >= 2, what="a second attempt (retry with backoff)")
    [record] = outbox(node)
    assert record["state"] != "sent" and "cannot be reached" in record["last_error"]

    node.stop()  # the message is on the node's disk, not in a process
    node = nodes.start_on(node.home, name="ann")
    node.wait_until(lambda: node.status()["mail"]["plugin_connected"], what="the mail plugin connected")
    assert [m["id"] for m in outbox(node)] == [record["id"]]
    relay.start()
    [got] = relay.wait_for(1)
    assert got.message["Subject"] == "while the relay sleeps" and got.tls and got.login == USER
    sent = node.wait_until(lambda: [m for m in outbox(node) if m["state"] == "sent"], what="the outbox to say sent")
    assert sent[0]["id"] == record["id"] and sent[0]["attempts"] >= 3
    assert len(relay.received) == 1  # once


def test_line_breaks_in_headers_are_refused_and_hostile_attachment_names_cleaned(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    relay.start()
    node = mail_node(nodes, relay, tmp_path)
    for args, expected in (
        (["--to", "bob@example.org", "--subject", "hi\r\nBcc: mallory@evil.example"], "line break"),
        (["--to", "bob@example.org\nBcc: mallory@evil.example", "--subject", "hi"], "line break"),
        (["--to", "bob@example.org", "--cc", "x@example.org\rX-Injected: 1", "--subject", "hi"], "line break"),
        (["--to", "bob@example.org", "--subject", "bell\x07"], "control character"),
        (["--to", "not an address", "--subject", "hi"], "not an address"),
        (["--to", "bob@example.org, carl", "--subject", "hi"], "not an address"),
    ):
        done = lannode(node, "mail", "send", *args, "--body", "x")
        assert done.returncode == 1 and expected in done.stderr, (args, done.stderr)
    # the API refuses the same, whatever shape the fields come in
    from lannode.net.api_client import RemoteError

    for params in ({"to": ["bob@example.org"], "subject": "a\nb"}, {"to": "bob@example.org", "subject": "ok", "bcc": ["x@y.org\r\nSubject: other"]}, {"to": [], "subject": "nobody"}):
        with pytest.raises(RemoteError, match="bad_params"):
            node.call("mail.send", **params)
    assert outbox(node) == [] and relay.received == []

    # a file whose name carries a header of its own is attached under a clean name
    hostile = tmp_path / "report\r\nBcc: mallory@evil.example\r\n.txt"
    hostile.write_bytes(b"quarterly numbers\n")
    done = lannode(node, "mail", "send", "--to", "bob@example.org", "--subject", "report", "--attach", str(hostile))
    assert done.returncode == 0, done.stderr
    [got] = relay.wait_for(1)
    assert got.rcpt_tos == ["bob@example.org"] and b"mallory" not in got.data.split(b"\r\n\r\n", 1)[0]
    [(name, data)] = [(p.get_filename(), p.get_payload(decode=True)) for p in got.message.iter_attachments()]
    assert "\r" not in name and "\n" not in name and data == b"quarterly numbers\n"
    assert "Bcc" not in got.message and got.message.get_all("Subject") == ["report"]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # the socket is TLS from its first byte
def test_implicit_tls_and_a_certificate_nobody_vouches_for(nodes: NodeFactory, certificates: tuple[Path, Path, Path], tmp_path: Path) -> None:
    relay = Relay(free_port(), *certificates, implicit_tls=True).start()
    try:
        node = mail_node(nodes, relay, tmp_path, security="tls")
        done = lannode(node, "mail", "send", "--to", "bob@example.org", "--subject", "over TLS from the first byte", "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["state"] == "sent"
        [got] = relay.wait_for(1)
        assert got.tls and got.login == USER

        # without ca_file the relay's own CA is not trusted: refused before any password is sent
        other = mail_node(nodes, relay, tmp_path, name="ben", security="tls", ca=False)
        done = lannode(other, "mail", "send", "--to", "bob@example.org", "--subject", "never sent")
        assert done.returncode == 1 and "certificate cannot be trusted" in done.stderr and "ca_file" in done.stderr, done.stderr
        assert relay.logins == [("ann", True)]
    finally:
        relay.stop()


def test_a_chat_transcript_and_drive_files_go_by_mail(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    relay.start()
    ann = mail_node(nodes, relay, tmp_path, extra="max_attachment_bytes = 100000\n")
    ben = nodes.start("ben")
    ben_id = ben.status()["node_id"]
    ann.wait_until(lambda: any(p["node_id"] == ben_id and p["state"] == "alive" for p in ann.call("peer.list")), what="ben alive")
    ann.call("chat.send", peer="ben", text="the well pump is fixed")
    ann.wait_until(lambda: ben.call("chat.log", peer="ann"), what="ben to have ann's message")
    ben.call("chat.send", peer="ann", text="great,\nthanks!")
    ann.wait_until(lambda: len(ann.call("chat.log", peer="ben")) == 2, what="ann to have ben's answer")

    small, big = tmp_path / "survey.csv", tmp_path / "drone.mp4"
    small.write_bytes(b"site,depth\n" + b"a,1\n" * 5000)
    big.write_bytes(bytes(range(256)) * 1000)
    for path in (small, big):
        done = lannode(ann, "drive", "put", str(path), "--k", "1", "--m", "1", "--json")
        assert done.returncode == 0, done.stderr
    big_id = next(f["id"] for f in ann.call("drive.ls") if f["name"] == "drone.mp4")

    done = lannode(ann, "mail", "send", "--to", "office@example.org", "--subject", "field report", "--body", "Attached.", "--transcript", "ben", "--drive-file", "survey.csv")
    assert done.returncode == 0, done.stderr
    done = lannode(ann, "mail", "send", "--to", "office@example.org", "--subject", "the video", "--drive-file", "drone.mp4")
    assert done.returncode == 0, done.stderr
    first, second = (r.message for r in relay.wait_for(2))
    attached = {p.get_filename(): p.get_payload(decode=True) for p in first.iter_attachments()}
    assert attached["survey.csv"] == small.read_bytes()
    transcript = attached["chat-ben.txt"].decode()
    assert "ann: the well pump is fixed" in transcript and "ben: great,\n    thanks!" in transcript
    assert transcript.index("the well pump") < transcript.index("great,")
    # too big to attach: the body says where the file is and how to get it
    assert list(second.iter_attachments()) == []
    assert f"lannode drive get {big_id}" in text_of(second) and "too big to attach" in text_of(second)

    # a file this node cannot read is refused, not mailed
    (tmp_path / "ben.txt").write_text("ben's own")
    assert lannode(ben, "drive", "put", str(tmp_path / "ben.txt"), "--k", "1", "--m", "1").returncode == 0
    ben_file = next(f["id"] for f in ben.call("drive.ls") if f["name"] == "ben.txt")
    ann.wait_until(lambda: any(f["id"] == ben_file for f in ann.call("drive.ls")), what="ben's file listed on ann")
    done = lannode(ann, "mail", "send", "--to", "office@example.org", "--subject", "not mine", "--drive-file", ben_file)
    assert done.returncode == 1 and "cannot read drive file" in done.stderr, done.stderr


def test_the_page_composes_mail_with_a_transcript_a_drive_file_and_an_upload(nodes: NodeFactory, relay: Relay, tmp_path: Path, browser: Any) -> None:
    from conftest import screenshot
    from test_web_front import open_page

    relay.start()
    ann = nodes.start("ann", webui=True, extra_config=mail_config(relay, tmp_path / "secret"))
    ben = nodes.start("ben")
    ben_id = ben.status()["node_id"]
    ann.wait_until(lambda: any(p["node_id"] == ben_id and p["state"] == "alive" for p in ann.call("peer.list")), what="ben alive")
    ann.call("chat.send", peer="ben", text="the generator needs diesel")
    ann.wait_until(lambda: ben.call("chat.log", peer="ann"), what="ben to have it")
    survey = tmp_path / "survey.csv"
    survey.write_bytes(b"site,depth\nnorth,12\n")
    ann.call("drive.put", path=str(survey), k=1, m=1)
    photo = tmp_path / "pump.jpg"
    photo.write_bytes(bytes(range(256)) * 300)

    page = open_page(browser, ann, hash=f"#chat/{ben_id}")
    page.wait_for_selector("#messages .message", timeout=15000)
    page.click("#conversation-mail")  # the chat's "send by mail" action opens the form with the transcript
    page.wait_for_selector('#tab-mail:not([hidden]) .mail-extra[data-kind="transcript"]')
    assert page.input_value("#mail-subject") == "Chat with ben"
    page.goto(page.url.split("#")[0] + "#drive")
    page.click('.drive-file .mail[aria-label="Mail survey.csv"]')  # the drive's action adds the file
    page.wait_for_selector('.mail-extra[data-kind="drive"]')
    page.fill("#mail-to", "office@example.org, Dora <dora@example.org>")
    page.fill("#mail-body", "From the field:\nsee attached.")
    page.set_input_files("#mail-files", str(photo))
    page.wait_for_selector('#mail-relay:has-text("127.0.0.1")')
    page.click("#mail-send")
    page.wait_for_selector('#mail-status[data-state="sent"]', timeout=30000)
    page.wait_for_selector('.mail-message[data-state="sent"]')
    screenshot(page, "mail")

    [got] = relay.wait_for(1)
    message = got.message
    assert sorted(got.rcpt_tos) == ["dora@example.org", "office@example.org"]
    assert message["Subject"] == "Chat with ben" and text_of(message) == "From the field:\nsee attached.\n"
    attached = {p.get_filename(): p.get_payload(decode=True) for p in message.iter_attachments()}
    assert attached["pump.jpg"] == photo.read_bytes() and attached["survey.csv"] == survey.read_bytes()
    assert b"ann: the generator needs diesel" in attached["chat-ben.txt"]

    # a page names no path on the machine: only what it uploaded
    refused = page.evaluate("() => window.lannode.api.call('mail.send', {to: ['x@example.org'], subject: 's', attach: ['/etc/passwd']}).then(() => 'sent', (e) => e.code)")
    assert refused == "forbidden"
    claim = page.evaluate("() => window.lannode.api.call('mail.claim', {}).then(() => 'claimed', (e) => e.code)")
    assert claim == "forbidden"  # only local programs (the plugin) take messages off the outbox


def test_mail_not_set_up_a_plugin_that_cannot_start_and_a_relay_that_never_comes_back(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    plain = nodes.start("plain")
    done = lannode(plain, "mail", "send", "--to", "bob@example.org", "--subject", "s", "--body", "b")
    assert done.returncode == 1 and "mail is not set up: add a [plugins.mail] table" in done.stderr, done.stderr

    # the password file is missing: the node runs, the message waits, and the log says why
    config = mail_config(relay, tmp_path / "lost").replace(str(tmp_path / "lost" / "smtp-password"), str(tmp_path / "nowhere"))
    lost = nodes.start("lost", extra_config=config)
    lost.wait_until(lambda: lost.plugin("mail")["last_exit"] == 2, what="the mail plugin to exit with a usage error")
    done = lannode(lost, "mail", "send", "--to", "bob@example.org", "--subject", "s", "--body", "b")
    assert done.returncode == 0 and "queued" in done.stdout and "waiting for the mail plugin (" in done.stdout, done.stdout
    assert f"password_file {tmp_path / 'nowhere'}: cannot read it" in lost.log.read_text()
    assert outbox(lost)[0]["waiting_for"].startswith("the mail plugin")

    # a relay that stays down: retried with backoff, then given up with the last reason
    gone = mail_node(nodes, relay, tmp_path, name="gone", extra="give_up_after = 1.5\n")
    lannode(gone, "mail", "send", "--to", "bob@example.org", "--subject", "s", "--body", "b", "--no-wait")
    [record] = gone.wait_until(lambda: [m for m in outbox(gone) if m["state"] == "failed"], what="the message to be given up")
    assert record["last_error"].startswith(f"gave up after {record['attempts']} attempts") and "cannot be reached" in record["last_error"]
    assert record["attempts"] >= 2


def test_a_plugin_killed_mid_send_leaves_the_message_queued_and_it_goes_once_the_plugin_is_back(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    relay.hold_first = True
    relay.start()
    node = mail_node(nodes, relay, tmp_path)
    done = lannode(node, "mail", "send", "--to", "bob@example.org", "--subject", "survives a crash", "--body", "b", "--no-wait")
    assert done.returncode == 0, done.stderr
    assert relay.holding.wait(20), "the relay never saw the message"
    assert outbox(node)[0]["state"] == "sending"
    os.kill(node.plugin("mail")["pid"], signal.SIGKILL)  # the relay has the data, and no answer was read
    [got] = relay.wait_for(1)  # the supervisor restarts the plugin, which takes the message again
    assert got.message["Subject"] == "survives a crash"
    [record] = node.wait_until(lambda: [m for m in outbox(node) if m["state"] == "sent"], what="the outbox to say sent")
    assert record["attempts"] == 2 and node.status()["mail"]["requeued"] == 1


def test_a_guest_mails_through_its_hosts_outbox_with_its_own_transcript_and_upload(nodes: NodeFactory, relay: Relay, tmp_path: Path) -> None:
    from conftest import set_options, write_config
    from lannode.home import Home
    from sim.guest_client import GuestClient, GuestRefused

    relay.start()
    home = Home(nodes.root / "ann")
    write_config(home.path, "ann", gossip=nodes.gossip, extra=mail_config(relay, tmp_path / "secret"))
    set_options(home.path, guests__enabled="true", guests__port=0, guests__allow_loopback="true")
    ann = nodes.start_on(home, name="ann")
    ann.wait_until(lambda: ann.status()["mail"]["plugin_connected"], what="the mail plugin connected")
    bob = nodes.start("bob")
    invite = ann.call("guests.invite")
    phone = GuestClient(invite["door"], invite["fingerprint"])
    phone.join(host=ann.status()["node_id"], name="phone", token=invite["url"].split("#invite=")[1])
    phone.open_session()
    bob.wait_until(lambda: any(p["name"] == "phone" for p in bob.call("peer.list")), timeout=30, what="bob to list the phone")
    phone.send_chat(peer="bob", texts=["the goats are out"])
    bob.wait_until(lambda: bob.call("chat.log", peer="phone"), what="bob to have it")
    bob.call("chat.send", peer="phone", text="on my way")
    ann.wait_until(lambda: len(phone.call("chat.log", peer="bob")) == 2, what="the phone to have bob's answer")
    photo = os.urandom(40_000)
    upload = phone.upload(photo, "fence.jpg")

    assert phone.call("mail.status")["enabled"]
    queued = phone.call("mail.send", to="farm@example.org", subject="from the field", body="See attached.", transcript="bob", uploads=[upload])
    [received] = relay.wait_for(1)
    attached = {p.get_filename(): p.get_payload(decode=True) for p in received.message.iter_attachments()}
    assert attached["fence.jpg"] == photo
    transcript = attached["chat-bob.txt"].decode()
    assert "phone: the goats are out" in transcript and "bob: on my way" in transcript
    ann.wait_until(lambda: [m["state"] for m in phone.call("mail.outbox", all=True)] == ["sent"], what="the guest's outbox to say sent")
    assert [m["id"] for m in phone.call("mail.outbox", all=True)] == [queued["id"]]
    assert outbox(ann) == []  # the host's own outbox: a guest's mail is the guest's
    with pytest.raises(GuestRefused, match="not for guests"):
        phone.call("mail.send", to="farm@example.org", subject="x", drive="anything")
    with pytest.raises(GuestRefused, match="not paths"):
        phone.call("mail.send", to="farm@example.org", subject="x", attach=["/etc/passwd"])
    with pytest.raises(GuestRefused):
        phone.call("mail.claim")  # the plugin's methods are not a guest's


def test_an_outbox_from_before_guests_gains_its_owner_column_and_keeps_its_messages(tmp_path: Path) -> None:
    import sqlite3

    from lannode.events import EventBus
    from lannode.mail import MailService

    folder = tmp_path / "mail"
    folder.mkdir()
    old = sqlite3.connect(folder / "outbox.sqlite")
    old.executescript(
        "CREATE TABLE messages (id TEXT PRIMARY KEY, created_at REAL NOT NULL, sender TEXT NOT NULL, recipients TEXT NOT NULL, to_header TEXT NOT NULL,"
        " subject TEXT NOT NULL, size INTEGER NOT NULL, attachments TEXT NOT NULL, notes TEXT NOT NULL DEFAULT '[]', state TEXT NOT NULL,"
        " attempts INTEGER NOT NULL DEFAULT 0, next_at REAL NOT NULL, last_error TEXT, refused TEXT, sent_at REAL);"
        "INSERT INTO messages (id, created_at, sender, recipients, to_header, subject, size, attachments, state, next_at, sent_at)"
        " VALUES ('abc', 1, 'a@b.c', '[\"x@y.z\"]', 'x@y.z', 'old', 10, '[]', 'sent', 1, 1e12);"
    )
    old.commit()
    old.close()
    service = MailService(tmp_path, None, EventBus(), None, None, None)  # type: ignore[arg-type]
    service._open()
    assert [m["subject"] for m in service.outbox(True)] == ["old"]  # the node's own, as before
    assert service.outbox(True, owner="someguest") == []
    assert service.db is not None and service.db.execute("PRAGMA user_version").fetchone()[0] == 1
