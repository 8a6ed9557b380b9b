"""The sans-IO half of mail (lannode.core.mail) and the plugin's reading of SMTP
failures: checks that refuse header injection, the message as written, settings."""

from __future__ import annotations

import email
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lannode.config import ConfigError, parse, render_default
from lannode.core.mail import (
    Attachment,
    MailError,
    MailSettings,
    build_message,
    check_address,
    check_subject,
    draft,
    retry_delay,
)
from lannode_mail import classify

SETTINGS = MailSettings.from_table({"host": "smtp.example.org", "from": "ann@example.org", "username": "ann", "password_env": "PW"})


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.sampled_from(["\r", "\n", "\r\n"]), st.text(max_size=60))
def test_a_line_break_anywhere_in_a_subject_or_address_is_refused(before: str, brk: str, after: str) -> None:
    with pytest.raises(MailError, match="line break|control character"):
        check_subject(before + brk + after)
    with pytest.raises(MailError):
        check_address(f"{before}{brk}{after}@example.org")
    with pytest.raises(MailError):
        draft("ann@example.org", ["bob@example.org"], "s", "b", cc=[f"c@example.org{brk}Bcc: {after}@evil.example"])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=120))
def test_any_printable_subject_comes_back_as_the_one_subject_header(subject: str) -> None:
    raw = build_message(draft("Ann <ann@example.org>", ["bob@example.org"], subject, "hi"), [], now=time.time())
    message = parsed(raw)
    assert message.get_all("Subject") == [subject] or (message.get_all("Subject") == [subject.strip()] and subject != subject.strip())
    assert sorted(k.lower() for k in message.keys()) == sorted(["from", "to", "subject", "date", "message-id", "x-mailer", "content-type", "content-transfer-encoding", "mime-version"])
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=3000), st.text(max_size=80))
def test_attachments_come_back_byte_for_byte_under_a_clean_name(data: bytes, name: str) -> None:
    message = parsed(build_message(draft("ann@example.org", "bob@example.org", "s", "b"), [Attachment(name, data)], now=time.time()))
    [part] = list(message.iter_attachments())
    assert part.get_payload(decode=True) == data
    filename = part.get_filename()
    assert filename and not any(ord(c) < 32 for c in filename) and "/" not in filename


def test_addresses_are_one_ascii_mailbox_each() -> None:
    assert str(check_address("Bob Smith <bob@example.org>")) == "Bob Smith <bob@example.org>"
    assert check_address("ops@localhost").addr_spec == "ops@localhost"
    for bad in ("bob", "bob@", "@example.org", "a b@example.org", "bob@exa mple.org", "bob@example.org, carl@example.org", "bøb@example.org", "Bob bob@example.org"):
        with pytest.raises(MailError):
            check_address(bad)
    d = draft("ann@example.org", "bob@example.org, carl@example.org", "s", "", cc=["bob@example.org"], bcc=["eve@example.org"])
    assert d.recipients == ["bob@example.org", "carl@example.org", "eve@example.org"]  # each once
    with pytest.raises(MailError, match="at least one"):
        draft("ann@example.org", [], "s", "")


def test_retries_double_up_to_the_cap() -> None:
    assert [retry_delay(n, 30, 3600) for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
    assert retry_delay(10_000, 30, 3600) == 3600


def test_settings_refuse_what_cannot_work() -> None:
    base = {"host": "smtp.example.org", "from": "ann@example.org"}
    assert MailSettings.from_table(base).port == 587
    assert MailSettings.from_table(base | {"security": "tls"}).port == 465
    for table, why in (
        ({"from": "ann@example.org"}, "host"),
        (base | {"security": "ssl"}, "security is one of"),
        (base | {"username": "ann"}, "password_file"),
        (base | {"username": "ann", "password_env": "X", "security": "none"}, "never sent in the clear"),
        (base | {"from": "ann"}, "from"),
        (base | {"port": 70000}, "port"),
        (base | {"retry_first": 0}, "retry_first"),
    ):
        with pytest.raises(MailError, match=why):
            MailSettings.from_table(table)


def test_the_password_comes_from_a_file_or_a_variable_and_is_in_no_public_view(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    from_file = MailSettings.from_table({"host": "h", "from": "a@b.org", "username": "a", "password_file": str(secret)})
    assert from_file.read_password({}) == "s3cret"
    assert SETTINGS.read_password({"PW": "other"}) == "other"
    with pytest.raises(MailError, match="PW is not set"):
        SETTINGS.read_password({})
    with pytest.raises(MailError, match="cannot read"):
        MailSettings.from_table({"host": "h", "from": "a@b.org", "username": "a", "password_file": str(tmp_path / "none")}).read_password({})
    assert "s3cret" not in repr(from_file.public()) and "password" not in repr(from_file.public())


def test_a_broken_mail_table_stops_the_node_from_starting_with_a_clear_line() -> None:
    text = render_default("x").replace("[plugins.mail]\nenabled = false", "[plugins.mail]\nenabled = true")
    with pytest.raises(ConfigError, match="plugins.mail: host is"):
        parse(Path("config.toml"), text)
    parse(Path("config.toml"), render_default("x"))  # disabled and empty: fine


def test_failures_are_read_as_retry_later_or_fail_with_a_reason() -> None:
    def kind(exc: BaseException) -> tuple[str, str]:
        outcome = classify(exc, SETTINGS)
        return outcome.kind, outcome.error or ""

    assert kind(ConnectionRefusedError(111, "Connection refused"))[0] == "retry"
    assert kind(TimeoutError())[0] == "retry"
    assert kind(smtplib.SMTPServerDisconnected("gone"))[0] == "retry"
    assert kind(smtplib.SMTPAuthenticationError(535, b"5.7.8 bad credentials")) == ("failed", "the relay smtp.example.org:587 refused the login for ann (535 5.7.8 bad credentials): check username and the password in [plugins.mail]")
    assert kind(smtplib.SMTPSenderRefused(451, b"try later", "ann@example.org"))[0] == "retry"
    assert kind(smtplib.SMTPDataError(554, b"spam"))[0] == "failed"
    assert kind(smtplib.SMTPRecipientsRefused({"a@x.org": (550, b"no such user")}))[0] == "failed"
    assert kind(smtplib.SMTPRecipientsRefused({"a@x.org": (550, b"no"), "b@x.org": (452, b"full")}))[0] == "retry"
    certificate = ssl.SSLCertVerificationError(1, "certificate verify failed")
    certificate.verify_message = "self-signed certificate"
    assert kind(certificate) == ("failed", "the relay smtp.example.org:587's certificate cannot be trusted (self-signed certificate): give its CA in [plugins.mail] ca_file")
