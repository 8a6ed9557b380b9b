"""Mail: ``mail send/ls``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lannode.cli.render import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_USAGE,
    ago,
    duration,
    fail,
    home_of,
    short,
    table,
)


def _addresses(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _mail_line(m: dict[str, Any]) -> tuple[str, ...]:
    import time

    if m["state"] == "sent":
        note = f"sent {ago(m['sent_at'])}"
    elif m.get("waiting_for"):
        note = f"waiting for {m['waiting_for'].removeprefix('the ')}"
    elif m["state"] in ("queued", "retrying") and m.get("next_attempt_at") and m["next_attempt_at"] > time.time():
        note = f"next try in {duration(m['next_attempt_at'] - time.time())}"
    else:
        note = ""
    if m.get("last_error") and m["state"] != "sent":
        note = f"{note}: {m['last_error']}" if note else m["last_error"]
    return (m["id"][:8], m["state"], short(m["to"], 30), short(m["subject"], 30), str(m["attempts"]), note)


def cmd_mail(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = home_of(args)
    action = args.mail_command
    if action == "send":
        return _mail_send(home, args)
    if action == "outbox":
        messages = call(home, "mail.outbox", all=args.all)
        if args.json:
            print(json.dumps(messages, indent=2, ensure_ascii=False))
        elif not messages:
            print("the outbox is empty" + ("" if args.all else " (--all lists what was sent, too)"))
        else:
            table([("ID", "STATE", "TO", "SUBJECT", "TRIES", "NOTE"), *(_mail_line(m) for m in messages)])
        return EXIT_OK
    if action == "retry":
        if not args.id and not args.all:
            return fail("mail retry takes an ID, or --all", EXIT_USAGE)
        done = call(home, "mail.retry", **({"id": args.id} if args.id else {"all": True}))
        print(json.dumps(done, indent=2, ensure_ascii=False) if args.json else f"{len(done)} message(s) queued to go now")
        return EXIT_OK
    record = call(home, "mail.cancel", id=args.id)
    print(json.dumps(record, indent=2, ensure_ascii=False) if args.json else f"cancelled {record['id']} to {record['to']}")
    return EXIT_OK


def _mail_send(home: Any, args: argparse.Namespace) -> int:
    """mail send: queue the message, then (unless --no-wait) follow it until the first attempt ends."""
    import trio

    from lannode.net.api_client import RemoteError, collapse_single_group, connect

    if args.body is not None and args.body_file is not None:
        return fail("give --body or --body-file, not both", EXIT_USAGE)
    body = args.body or ""
    if args.body_file is not None:
        try:
            body = sys.stdin.read() if args.body_file == "-" else open(args.body_file, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError) as exc:
            return fail(f"--body-file {args.body_file}: {getattr(exc, 'strerror', None) or exc}", EXIT_USAGE)
    params: dict[str, Any] = {"to": _addresses(args.to), "subject": args.subject, "body": body}
    if args.cc:
        params["cc"] = _addresses(args.cc)
    if args.bcc:
        params["bcc"] = _addresses(args.bcc)
    if args.attach:
        params["attach"] = [os.path.abspath(path) for path in args.attach]
    if args.transcript:
        params["transcript"] = args.transcript
    if args.drive_file:
        params["drive"] = args.drive_file
    final: dict[str, Any] = {}
    refused: list[Exception] = []

    async def run() -> None:
        async with connect(home) as client:
            await client.subscribe("mail.state")
            try:
                record = await client.call("mail.send", **params)
            except RemoteError as exc:
                refused.append(exc)
                return
            final.update(record)
            if args.no_wait or record.get("waiting_for"):
                return
            with trio.move_on_after(args.wait):
                async for topic, data in client.events():
                    if data.get("id") == record["id"]:
                        final.update(data)
                        if data["state"] in ("sent", "failed", "retrying"):
                            return

    with collapse_single_group():
        trio.run(run)
    if refused:
        return fail(str(refused[0]))
    if args.json:
        print(json.dumps(final, indent=2, ensure_ascii=False))
        return EXIT_FAIL if final["state"] == "failed" else EXIT_OK
    short = final["id"][:8]
    if final["state"] == "sent":
        print(f"sent {short} to {', '.join(final['recipients'])}")
        for address, reply in final.get("refused", {}).items():
            print(f"lannode: the relay refused {address}: {reply}", file=sys.stderr)
    elif final["state"] == "failed":
        return fail(f"mail {short} failed: {final['last_error']} (it stays in the outbox: lannode mail retry {short})")
    elif final["state"] == "retrying":
        print(f"queued {short}; not sent yet: {final['last_error']}. It is tried again by itself (lannode mail outbox)")
    elif final.get("waiting_for"):
        print(f"queued {short}; waiting for {final['waiting_for']} (lannode status)")
    else:
        print(f"queued {short}; lannode mail outbox follows it")
    return EXIT_OK


