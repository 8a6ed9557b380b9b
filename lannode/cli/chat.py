"""Chat: ``chat send/log/watch`` (``--direct`` over WebRTC) and ``group ...``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from lannode.cli.render import (
    EXIT_OK,
    EXIT_USAGE,
    fail,
    home_of,
    watch,
)


def _print_message(m: dict[str, Any], as_json: bool) -> None:
    import datetime

    if as_json:
        print(json.dumps(m, ensure_ascii=False), flush=True)
        return
    when = datetime.datetime.fromtimestamp(m["sent_at"] / 1000).strftime("%Y-%m-%d %H:%M:%S")
    ticks = ""
    if m["direction"] == "out":
        ticks = " (read)" if m["read_at"] else " (delivered)" if m["delivered_at"] else " (sending)"
    who = "me" if m["direction"] == "out" else m.get("sender_name") or m["sender"][:8]
    if m.get("kind") == "group":
        op = m["op"]
        members = ", ".join(x[:8] for x in op.get("members", []))
        what = {
            "create": f"created the group {op.get('name')!r}" + (f" with {members}" if members else ""),
            "rename": f"renamed the group {op.get('name')!r}",
            "invite": f"added {members}",
            "remove": f"removed {members}",
            "leave": "left",
        }.get(op.get("op"), "changed the group")
        print(f"{when}  -- {who} {what}", flush=True)
        return
    print(f"{when}  {who}: {m['text']}{ticks}", flush=True)


def _target(text: str) -> dict[str, str]:
    """PEER or #GROUP as the API's parameters."""
    return {"group": text[1:]} if text.startswith("#") else {"peer": text}


def cmd_chat(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = home_of(args)
    if args.action == "send":
        if not args.peer or args.text is None:
            return fail("chat send takes PEER|#GROUP TEXT", EXIT_USAGE)
        if args.direct:
            if args.peer.startswith("#"):
                return fail("--direct is for a 1:1 message; a group's messages go through the nodes", EXIT_USAGE)
            return _chat_direct(home, args)
        message = call(home, "chat.send", **_target(args.peer), text=args.text)
        if args.json:
            print(json.dumps(message, indent=2, ensure_ascii=False))
        else:
            print(f"sent {message['id']} (seq {message['seq']}); it stays in the outbox until the peer has it")
        return EXIT_OK
    if args.action == "log":
        if not args.peer:
            return fail("chat log takes PEER|#GROUP", EXIT_USAGE)
        params: dict[str, Any] = {**_target(args.peer), "limit": args.limit}
        if args.search:
            params["search"] = args.search
        messages = call(home, "chat.log", **params)
        if args.json:
            print(json.dumps(messages, indent=2, ensure_ascii=False))
        else:
            for m in messages:
                _print_message(m, False)
        return EXIT_OK
    return _chat_watch(home, args.json)


def _chat_direct(home: Any, args: argparse.Namespace) -> int:
    """chat send --direct: over a WebRTC data channel to the peer's page, and the link as ever."""
    import trio

    from lannode.calls.participant import open_participant, send_direct
    from lannode.net.api_client import collapse_single_group, connect

    result: dict[str, Any] = {}

    async def run() -> None:
        async with connect(home) as client:
            async with open_participant(client, source=None, on_status=lambda topic, data: None) as participant:
                result.update(await send_direct(participant, args.peer, args.text))

    with collapse_single_group():
        trio.run(run)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif result["path"] == "direct":
        delivered = "; the peer's node has it" if result.get("delivered_at") else ""
        print(f"sent {result['id']} over a data channel to the peer's page{delivered}")
    else:
        print(f"sent {result['id']} through the link ({result.get('why_not_direct', 'no page open')}); it stays in the outbox until the peer has it")
    return EXIT_OK


def _chat_watch(home: Any, as_json: bool) -> int:
    return watch(home, lambda client: client.subscribe("chat.message"), lambda topic, data: _print_message(data, as_json))


GROUP_USAGE = {
    "create": (1, None, "group create NAME [PEER...]"),
    "invite": (2, None, "group invite GROUP PEER..."),
    "remove": (2, None, "group remove GROUP PEER..."),
    "rename": (2, 2, "group rename GROUP NAME"),
    "leave": (1, 1, "group leave GROUP"),
    "info": (1, 1, "group info GROUP"),
    "ls": (0, 0, "group ls"),
}


def cmd_group(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = home_of(args)
    least, most, usage = GROUP_USAGE[args.action]
    words: list[str] = args.words
    if len(words) < least or (most is not None and len(words) > most):
        return fail(f"usage: lannode {usage}", EXIT_USAGE)
    if args.action == "ls":
        groups = call(home, "group.list")
        if args.json:
            print(json.dumps(groups, indent=2, ensure_ascii=False))
        elif not groups:
            print("no groups yet; make one with: lannode group create NAME PEER...")
        else:
            for g in groups:
                state = "" if g["member"] else "  (left)"
                print(f"#{g['name']}  {g['id'][:8]}  {len(g['members'])} members{state}")
        return EXIT_OK
    group = words[0].removeprefix("#")
    if args.action == "create":
        result = call(home, "group.create", name=words[0], members=words[1:])
    elif args.action in ("invite", "remove"):
        result = call(home, f"group.{args.action}", group=group, members=words[1:])
    elif args.action == "rename":
        result = call(home, "group.rename", group=group, name=words[1])
    elif args.action == "leave":
        result = call(home, "group.leave", group=group)
    else:
        result = call(home, "group.info", group=group)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(f"#{result['name']}  {result['id']}")
        print("members: " + ", ".join(result["members"]))
        if not result["member"]:
            print("this node is no longer a member")
    return EXIT_OK


