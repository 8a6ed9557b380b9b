"""The mail plugin: the one process that talks SMTP, and the only one that knows the
relay's password.

Enabled in the node's config (every key in ``lannode.core.mail.MailSettings``)::

    [plugins.mail]
    enabled = true
    host = "smtp.example.org"
    security = "starttls"          # or "tls" (implicit, port 465), or "none" for a local relay
    username = "ann@example.org"
    password_file = "~/.config/lannode/smtp-password"   # or password_env = "LANNODE_SMTP_PASSWORD"
    from = "Ann <ann@example.org>"

It takes due messages from the node's outbox (``mail.claim``), sends each with
smtplib in a worker thread, and reports the outcome (``mail.report``); between
messages it sleeps until the next one is due or a ``mail.state`` event says one
was queued. The outbox and its retry schedule are the node's (``lannode.mail``).

The password is read once at start, and never logged or reported: errors carry
the relay's reply and the username, never the password. With STARTTLS the
plugin refuses to go on when the relay does not offer it, so a password never
crosses the network in the clear; certificates are verified against the system's
CAs, or ``ca_file`` for a relay with its own.
"""

from __future__ import annotations

import logging
import os
import smtplib
import socket
import ssl
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from lannode.core.mail import MailError, MailSettings
from lannode.plugins.kit import PluginContext, start

log = logging.getLogger("lannode.mail")

IDLE_WAKE = 60.0  # look at the outbox at least this often even without events


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: str  # sent, retry, failed
    error: str | None = None
    refused: dict[str, str] = field(default_factory=dict)


def _reply(exc: smtplib.SMTPResponseException) -> str:
    text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
    return f"{exc.smtp_code} {' '.join(text.split())}"


def classify(exc: BaseException, settings: MailSettings) -> Outcome:
    """What a failed attempt means: retry later, or fail with a reason a person can act on."""
    relay = f"{settings.host}:{settings.port}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return Outcome("failed", f"the relay {relay} refused the login for {settings.username} ({_reply(exc)}): check username and the password in [plugins.mail]")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = {addr: f"{code} {reply.decode('utf-8', 'replace') if isinstance(reply, bytes) else reply}" for addr, (code, reply) in exc.recipients.items()}
        permanent = all(int(code) >= 500 for code, _ in exc.recipients.values())
        listing = "; ".join(f"{a}: {r}" for a, r in refused.items())
        return Outcome("failed" if permanent else "retry", f"the relay refused every recipient: {listing}", refused)
    if isinstance(exc, smtplib.SMTPResponseException):
        what = "the sender" if isinstance(exc, smtplib.SMTPSenderRefused) else "the message"
        return Outcome("failed" if exc.smtp_code >= 500 else "retry", f"the relay {relay} refused {what}: {_reply(exc)}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        return Outcome("failed", f"the relay {relay} does not support what [plugins.mail] asks: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Outcome("failed", f"the relay {relay}'s certificate cannot be trusted ({exc.verify_message}): give its CA in [plugins.mail] ca_file")
    if isinstance(exc, ssl.SSLError):
        return Outcome("failed", f"TLS with the relay {relay} failed: {exc.reason or exc}")
    if isinstance(exc, _Refused):
        return Outcome("failed", str(exc))
    if isinstance(exc, (smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError)):
        return Outcome("retry", f"the relay {relay} dropped the connection: {exc}")
    if isinstance(exc, socket.timeout) or isinstance(exc, TimeoutError):
        return Outcome("retry", f"the relay {relay} did not answer within {settings.timeout:g} s")
    if isinstance(exc, OSError):
        return Outcome("retry", f"the relay {relay} cannot be reached: {exc.strerror or exc}")
    return Outcome("retry", f"sending failed: {exc.__class__.__name__}: {exc}")


class _Refused(Exception):
    """We will not go on (no STARTTLS on offer, say): the message fails with this reason."""


def tls_context(settings: MailSettings) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(Path(settings.ca_file).expanduser()) if settings.ca_file else None)


def deliver(settings: MailSettings, password: str, message: dict[str, Any]) -> Outcome:
    """One attempt: connect, secure, log in, send the spool file. Blocking (a worker thread)."""
    try:
        data = Path(message["path"]).read_bytes()
    except OSError as exc:
        return Outcome("failed", f"the spool file cannot be read: {exc.strerror}")
    try:
        me = socket.gethostname()  # never getfqdn(): a DNS lookup per message on a LAN without DNS
        smtp: smtplib.SMTP
        if settings.security == "tls":
            smtp = smtplib.SMTP_SSL(settings.host, settings.port, local_hostname=me, timeout=settings.timeout, context=tls_context(settings))
        else:
            smtp = smtplib.SMTP(settings.host, settings.port, local_hostname=me, timeout=settings.timeout)
        with smtp:
            smtp.ehlo()
            if settings.security == "starttls":
                if not smtp.has_extn("starttls"):
                    raise _Refused(f"the relay {settings.host}:{settings.port} does not offer STARTTLS; nothing is sent in the clear (security = \"none\" is for a local relay without a login)")
                smtp.starttls(context=tls_context(settings))
                smtp.ehlo()
            if settings.username:
                if not smtp.has_extn("auth"):
                    raise _Refused(f"the relay {settings.host}:{settings.port} offers no login (AUTH), but [plugins.mail] has a username")
                _login(smtp, settings.username, password)
            refused = smtp.sendmail(message["from"], message["recipients"], data)
    except Exception as exc:  # every failure becomes an outcome: the plugin never dies of one message
        return classify(exc, settings)
    return Outcome("sent", None, {addr: f"{code} {reply.decode('utf-8', 'replace')}" for addr, (code, reply) in refused.items()})


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """Log in with one mechanism. smtplib's login() tries every one the relay offers in
    turn, so one wrong password counts as two or three failed logins against the account."""
    offered = smtp.esmtp_features.get("auth", "").upper().split()
    mechanism = next((m for m in ("PLAIN", "LOGIN", "CRAM-MD5") if m in offered), None)
    if mechanism is None:
        raise _Refused(f"the relay offers no login mechanism lannode speaks (it offers: {' '.join(offered) or 'none'})")
    smtp.user, smtp.password = username, password
    smtp.auth(mechanism, getattr(smtp, "auth_" + mechanism.lower().replace("-", "_")), initial_response_ok=True)


async def serve(ctx: PluginContext, settings: MailSettings, password: str) -> None:
    from lannode.net.api_client import RemoteError, open_client

    async with open_client(ctx.api_url, ctx.token) as client:
        await client.subscribe("mail.state")
        wake = trio.Event()

        async def watch() -> None:
            nonlocal wake
            async for topic, data in client.events():
                if data.get("state") in ("queued", "retrying"):
                    wake.set()
                    wake = trio.Event()
            nursery.cancel_scope.cancel()  # the stream ends when the node goes away: so do we

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            log.info("sending mail through %s:%d (%s) as %s", settings.host, settings.port, settings.security, settings.sender)
            reset = True
            while True:
                waiting = wake
                claimed = await client.call("mail.claim", reset=reset)
                reset = False
                message = claimed["message"]
                if message is None:
                    with trio.move_on_after(min(IDLE_WAKE, claimed["next_in"]) if claimed["next_in"] is not None else IDLE_WAKE):
                        await waiting.wait()
                    continue
                outcome = await trio.to_thread.run_sync(deliver, settings, password, message)
                if outcome.kind == "sent":
                    log.info("sent %s to %s", message["id"], ", ".join(message["recipients"]))
                else:
                    log.warning("%s not sent (%s): %s", message["id"], outcome.kind, outcome.error)
                report: dict[str, Any] = {"id": message["id"], "outcome": outcome.kind, "refused": outcome.refused}
                if outcome.error:
                    report["error"] = outcome.error
                try:
                    await client.call("mail.report", **report)
                except RemoteError as exc:  # the claim was released meanwhile: the node queued it again
                    log.warning("the node did not take the report on %s: %s", message["id"], exc.message)


def main() -> int:
    ctx = start("lannode-mail")
    if ctx is None:
        return 2
    try:
        settings = MailSettings.from_table(ctx.config)
        password = settings.read_password(dict(os.environ))
    except MailError as exc:
        print(f"lannode-mail: [plugins.mail] {exc}", file=sys.stderr)
        return 2
    # SIGTERM keeps its default (exit at once): a message cut off mid-send goes back to the queue
    from lannode.net.api_client import RemoteError
    from lannode.net.websocket import ConnectionClosed, collapse_single_group

    try:
        with collapse_single_group():
            trio.run(serve, ctx, settings, password)
    except KeyboardInterrupt:
        pass
    except (OSError, ConnectionClosed, RemoteError) as exc:
        log.info("the node went away (%s); stopping", exc)
    return 0
