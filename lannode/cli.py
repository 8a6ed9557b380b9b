"""The ``lannode`` command.

Every command that reports takes ``--json`` and then prints one JSON document with
the field names documented in the README; without it, lines for a person. Exit
codes: 0 done, 1 the node is not running or refused, 2 bad usage or a broken
config. Errors are one line on stderr, starting with ``lannode:``.

Heavy imports happen inside the command that needs them, so ``lannode status``
answers quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from typing import Any, Callable, Sequence

from lannode import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_FAIL) -> int:
    print(f"lannode: {message}", file=sys.stderr)
    return code


def _home(args: argparse.Namespace) -> Any:
    from lannode.home import Home, resolve

    return Home(resolve(args.home))


# -- up -----------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    from lannode import log
    from lannode.config import ConfigError, check_interface
    from lannode.daemon import NodeSettings, run_up
    from lannode.home import HomeBusy, HomeError
    from lannode.identity import IdentityError
    from lannode.net.gossip import GossipError

    home = _home(args)
    try:
        home.ensure()
        config = home.load_config(args.name)
        identity = home.identity()
    except (ConfigError, HomeError, IdentityError) as exc:
        return fail(str(exc), EXIT_USAGE)
    interface = args.interface if args.interface is not None else os.environ.get("LANNODE_INTERFACE")
    source = "--interface" if args.interface is not None else "$LANNODE_INTERFACE"
    if interface is None:
        interface = config.get("node.interface")
    elif problem := check_interface(interface):
        return fail(f"{source}: {problem}, got {interface!r}", EXIT_USAGE)
    level = args.log_level or config.get("node.log_level")
    log.setup(level)
    settings = NodeSettings(
        home=home,
        config=config,
        identity=identity,
        name=args.name or config.get("node.name") or socket.gethostname(),
        interface=interface,
    )
    try:
        return run_up(settings)
    except HomeBusy as exc:
        return fail(str(exc))
    except HomeError as exc:
        return fail(str(exc), EXIT_USAGE)
    except (OSError, GossipError) as exc:
        return fail(f"cannot start the node: {exc}")


# -- status -------------------------------------------------------------------
def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    parts += [f"{minutes}m"] if minutes or hours or days else []
    return "".join(parts + [f"{secs}s"])


def cmd_status(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    status = call(_home(args), "node.status")
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(f"node       {status['name']} ({status['node_id']})")
    print(f"version    {status['version']}, API v{status['api_version']}, pid {status['pid']}")
    print(f"uptime     {_duration(status['uptime_s'])}")
    print(f"interface  {status['interface']}")
    print(f"home       {status['home']}")
    gossip = status["gossip"]
    members = ", ".join(f"{count} {state}" for state, count in gossip["members"].items())
    print(f"gossip     {gossip.get('address', '-')} group {gossip['group']}; peers: {members}")
    # "own" is our multicast coming back to us: normal, so not listed with the refusals
    dropped = ", ".join(f"{reason} {count}" for reason, count in gossip["dropped"].items() if reason != "own")
    print(f"dropped    {dropped or 'none'}")
    mail = status.get("mail", {})
    if mail.get("enabled"):
        box = mail["outbox"]
        waiting = box["queued"] + box["retrying"] + box["sending"]
        print(f"mail       {mail['relay']} ({mail['security']}) from {mail['from']}; outbox {waiting} waiting, {box['failed']} failed, {box['sent']} sent")
    for plugin in status["plugins"] or [{"name": "(none)", "state": "", "url": None, "restarts": 0}]:
        extra = f" {plugin['url']}" if plugin.get("url") else ""
        restarts = f" ({plugin['restarts']} restarts)" if plugin.get("restarts") else ""
        print(f"plugin     {plugin['name']} {plugin['state']}{extra}{restarts}")
    return EXIT_OK


# -- peers --------------------------------------------------------------------
def _ago(then: float) -> str:
    import time

    return _duration(max(0.0, time.time() - then)) + " ago"


def cmd_peers(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    peers = call(_home(args), "peer.list")
    if args.json:
        print(json.dumps(peers, indent=2))
        return EXIT_OK
    if not peers:
        print("no peers yet")
        return EXIT_OK
    rows = [("NAME", "STATE", "TRUST", "NODE ID", "ADDRESS", "LAST SEEN")]
    rows += [(p["name"], p["state"], p["trust"], p["node_id"], p["addresses"]["gossip"], _ago(p["last_seen"])) for p in peers]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for p in peers:
        if p.get("warning"):
            print(f"warning: {p['name']} ({p['node_id']}): {p['warning']}", file=sys.stderr)
    return EXIT_OK


def cmd_ping(args: argparse.Namespace) -> int:
    import time

    from lannode.net.api_client import call

    home = _home(args)
    results = []
    for i in range(args.count):
        if i:
            time.sleep(args.interval)
        result = call(home, "peer.ping", peer=args.peer)
        results.append(result)
        if not args.json:
            print(f"{result['name']} ({result['node_id']}): {result['rtt_ms']:.3f} ms over the link ({result['cipher']})")
    if args.json:
        print(json.dumps(results, indent=2))
    return EXIT_OK


def cmd_trust(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    params = {"peer": args.peer}
    if args.code:
        params["code"] = args.code
    result = call(_home(args), "peer.trust", **params)
    if args.json:
        print(json.dumps(result, indent=2))
        return EXIT_OK
    print(f"safety code with {result['name']} ({result['node_id']}):")
    print(f"    {result['safety_code']}")
    if args.code:
        print("the codes match: marked verified")
    else:
        print("compare it with the code the other person's `lannode trust` shows; marked verified")
        print("(next time, pass the code they read out with --code, and a mismatch is refused)")
    return EXIT_OK


# -- store --------------------------------------------------------------------
def cmd_store(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = _home(args)
    if args.action in ("put", "get", "rm") and not args.key:
        return fail(f"store {args.action} takes a KEY", EXIT_USAGE)
    if args.action == "watch":
        return _store_watch(home, args)
    if args.action == "put":
        if args.value is None:
            return fail("store put takes KEY VALUE", EXIT_USAGE)
        try:
            value = json.loads(args.value)
        except ValueError:
            value = args.value  # not JSON: a string
        result = call(home, "store.put", key=args.key, value=value)
    elif args.action == "get":
        result = call(home, "store.get", key=args.key)
    elif args.action == "rm":
        result = call(home, "store.delete", key=args.key)
    else:
        result = call(home, "store.list", prefix=args.key or "")
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    elif args.action == "get":
        print(json.dumps(result["value"], ensure_ascii=False))
    elif args.action == "ls":
        for entry in result:
            print(f"{entry['key']}\t{json.dumps(entry['value'], ensure_ascii=False)}")
    else:
        print(f"{'deleted' if result['deleted'] else 'stored'} {result['key']} (version {result['version']} of {result['origin']})")
    return EXIT_OK


def _store_watch(home: Any, args: argparse.Namespace) -> int:
    import trio

    from lannode.net.api_client import (
        ApiRejected,
        NodeNotRunning,
        collapse_single_group,
        connect,
    )

    async def watch() -> None:
        async with connect(home) as client:
            await client.call("store.watch", prefix=args.key or "")
            async for topic, data in client.events():
                if args.json:
                    print(json.dumps(data, ensure_ascii=False), flush=True)
                elif data["deleted"]:
                    print(f"deleted {data['key']}", flush=True)
                else:
                    print(f"{data['key']}\t{json.dumps(data['value'], ensure_ascii=False)}", flush=True)

    try:
        with collapse_single_group():
            trio.run(watch)
    except (NodeNotRunning, ApiRejected) as exc:
        return fail(str(exc))
    return EXIT_OK


# -- chat ---------------------------------------------------------------------
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

    home = _home(args)
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
    import trio

    from lannode.net.api_client import (
        ApiRejected,
        NodeNotRunning,
        collapse_single_group,
        connect,
    )

    async def watch() -> None:
        async with connect(home) as client:
            await client.subscribe("chat.message")
            async for topic, data in client.events():
                _print_message(data, as_json)

    try:
        with collapse_single_group():
            trio.run(watch)
    except (NodeNotRunning, ApiRejected) as exc:
        return fail(str(exc))
    return EXIT_OK


# -- groups -------------------------------------------------------------------
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

    home = _home(args)
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


# -- lab ----------------------------------------------------------------------
# -- call ---------------------------------------------------------------------
def cmd_call(args: argparse.Namespace) -> int:
    import signal
    from pathlib import Path

    import trio

    from lannode.calls.participant import (
        CallError,
        CallSummary,
        call_peer,
        check_record_path,
        join_room,
        open_participant,
    )
    from lannode.net.api_client import collapse_single_group, connect

    room = args.room or (args.target[1:] if args.target and args.target.startswith("#") else None)
    if room is None and not args.target:
        return fail("call takes PEER, #ROOM or --room ROOM", EXIT_USAGE)
    if args.room and args.target:
        return fail("call takes PEER or --room ROOM, not both", EXIT_USAGE)
    if args.duration is not None and args.duration <= 0:
        return fail("--duration is a number of seconds above 0", EXIT_USAGE)
    source = f"play:{os.path.abspath(args.play)}" if args.play else f"camera:{args.camera}" if args.camera else "test-pattern"
    record = Path(os.path.abspath(args.record)) if args.record else None
    try:
        if record is not None:
            check_record_path(record)
        if args.play and not os.path.isfile(args.play):
            raise CallError(f"{args.play}: no such file to play")
        if args.camera and not os.path.exists(args.camera):
            raise CallError(f"{args.camera}: no such camera device")
    except CallError as exc:
        return fail(str(exc), EXIT_USAGE)
    home = _home(args)
    summary: list[CallSummary] = []
    failure: list[str] = []

    def show(topic: str, data: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({"event": topic, "data": data}), flush=True)
        elif topic == "call.ringing":
            print(f"ringing {data['name']} ({data['pages']} page{'s' if data['pages'] != 1 else ''})…", flush=True)
        elif topic == "call.accepted":
            print(f"{data['name']} answered; Ctrl-C hangs up", flush=True)
        elif topic == "room.joined":
            print(f"in room {data['room']} ({data['members']} with you); Ctrl-C leaves", flush=True)
        elif topic == "room.member":
            print(f"{data['name']} {data['state']}", flush=True)
        elif topic == "call.progress" and sys.stdout.isatty():
            received = sum(c.get("video", 0) for c in data["frames_received"].values())
            print(f"\r{_duration(data['seconds'])}: {data['frames_sent'].get('video', 0)} video frames sent, {received} received", end="", flush=True)

    async def run() -> None:
        async with connect(home) as client:
            try:
                async with open_participant(client, source=source, on_status=show) as participant:

                    async def hang_up_on_interrupt() -> None:
                        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                            async for _ in signals:
                                participant.hang_up()

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(hang_up_on_interrupt)
                        try:
                            if room is not None:
                                summary.append(await join_room(participant, room, duration=args.duration, record=record))
                            else:
                                summary.append(await call_peer(participant, args.target, duration=args.duration, record=record, ring_timeout=args.ring))
                        except CallError as exc:
                            failure.append(str(exc))
                        nursery.cancel_scope.cancel()
            except CallError as exc:  # the source would not open
                failure.append(str(exc))
                return
            if summary:
                summary[0].recordings = participant.recorded

    with collapse_single_group():
        trio.run(run)
    if failure:
        return fail(failure[0])
    result = summary[0]
    if args.json:
        print(json.dumps({"event": "call.summary", "data": result.json()}), flush=True)
    else:
        if sys.stdout.isatty():
            print()
        what = f"room {result.target}" if room is not None else f"call with {result.target}"
        if result.outcome == "ended":
            received = ", ".join(f"{name}: {result.frames_received.get(front, {}).get('video', 0)}" for front, name in result.participants.items()) or "none"
            print(f"{what} ended after {_duration(result.seconds)} ({result.reason}); video frames sent {result.frames_sent.get('video', 0)}, received {received}")
            for path in result.recordings:
                print(f"recorded {path}")
        else:
            print(f"lannode: {what}: {result.outcome}{': ' + result.reason if result.reason else ''}", file=sys.stderr)
    return EXIT_OK if result.outcome == "ended" else EXIT_FAIL


def cmd_lab(args: argparse.Namespace) -> int:
    from lannode.lab import run_lab

    if not 1 <= args.nodes <= 32:
        return fail("--nodes takes a number from 1 to 32", EXIT_USAGE)
    return run_lab(nodes=args.nodes, directory=args.dir, keep=args.keep, as_json=args.json)


# -- service ------------------------------------------------------------------
def cmd_service_install(args: argparse.Namespace) -> int:
    from pathlib import Path

    from lannode import systemd

    if args.print:
        print(systemd.render_unit(user=args.user, executable=systemd.default_executable(), run_as=args.run_as), end="")
        return EXIT_OK
    try:
        path = systemd.install(user=args.user, dest=Path(args.dest) if args.dest else None, run_as=args.run_as)
    except (OSError, ValueError) as exc:
        return fail(f"cannot install the unit: {exc}")
    ctl = "systemctl --user" if args.user else "systemctl"
    if args.json:
        print(json.dumps({"unit": str(path), "user": args.user}))
    else:
        print(f"wrote {path}")
        print(f"start it with: {ctl} daemon-reload && {ctl} enable --now {systemd.UNIT_NAME}")
    return EXIT_OK


# -- network key --------------------------------------------------------------
def cmd_network_key(args: argparse.Namespace) -> int:
    import base64
    import secrets

    from lannode.home import HomeError, parse_network_key

    home = _home(args)
    try:
        home.ensure()
        if args.action == "new":
            key: bytes | None = secrets.token_bytes(32)
        elif args.action == "set":
            text = sys.stdin.read() if args.key == "-" else args.key
            if not text:
                return fail("network-key set takes the key (base64), or - to read it from stdin", EXIT_USAGE)
            key = parse_network_key(text)
        else:
            key = None
        home.set_network_key(key)
    except HomeError as exc:
        return fail(str(exc), EXIT_USAGE)
    shown = base64.b64encode(key).decode() if key else None
    if args.json:
        print(json.dumps({"network_key": shown, "path": str(home.network_key_path) if key else None}))
    elif key is None:
        print("the network is open again: datagrams are signed, not sealed (restart the node)")
    else:
        if args.action == "new":
            print(shown)
            print(f"set it on every member with: lannode network-key set {shown}", file=sys.stderr)
        print(f"saved in {home.network_key_path}; restart the node for it to take effect", file=sys.stderr)
    return EXIT_OK


# -- file drop ----------------------------------------------------------------
TERMINAL = ("done", "declined", "cancelled", "failed")
FILE_BARS = 6  # file bars kept on screen; older ones are hidden once complete


def cmd_send(args: argparse.Namespace) -> int:
    import trio

    from lannode.net.api_client import (
        ApiRejected,
        NodeNotRunning,
        RemoteError,
        collapse_single_group,
        connect,
    )

    if len(args.items) < 2:
        return fail("send takes PATH... PEER", EXIT_USAGE)
    *paths, peer = args.items
    paths = [os.path.abspath(p) for p in paths]
    home = _home(args)
    final: dict[str, Any] = {}

    async def run() -> None:
        async with connect(home) as client:
            await client.subscribe("transfer.*")
            started = await client.call("transfer.send", peer=peer, paths=paths)
            final.update(started)
            for skipped in started.get("skipped", []):
                print(f"lannode: skipped {skipped}", file=sys.stderr)
            if args.json:
                print(json.dumps({"event": "transfer.state", "data": started}), flush=True)
            if args.no_wait:
                return
            view = None if args.json else _TransferView(started)
            try:
                async for topic, data in client.events():
                    if data.get("id") != started["id"]:
                        continue
                    final.update(data)
                    if args.json:
                        print(json.dumps({"event": topic, "data": data}), flush=True)
                    elif view is not None:
                        view.update(data)
                    if data["state"] in TERMINAL:
                        return
            finally:
                if view is not None:
                    view.close()

    try:
        with collapse_single_group():
            trio.run(run)
    except KeyboardInterrupt:
        if final.get("id"):
            print(f"\nthe transfer goes on in the node; stop it with: lannode cancel {final['id'][:8]}", file=sys.stderr)
        return 130
    except (NodeNotRunning, ApiRejected, RemoteError) as exc:
        return fail(str(exc))
    if args.no_wait:
        if not args.json:
            print(f"offered {final['id']} ({final['files']} files, {_bytes(final['total'])}) to {final['peer_name'] or final['peer']}; lannode transfers shows it")
        return EXIT_OK
    state = final.get("state")
    if not args.json:
        if state == "done":
            print(f"sent {final['files']} files ({_bytes(final['total'])}) to {final['peer_name'] or final['peer']}")
        else:
            print(f"lannode: the transfer was {state}{': ' + final['reason'] if final.get('reason') else ''}", file=sys.stderr)
    return EXIT_OK if state == "done" else EXIT_FAIL


class _TransferView:
    """rich progress bars: one for the whole transfer, one per file as it goes."""

    def __init__(self, record: dict[str, Any]) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", table_column=None),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        who = record.get("peer_name") or record["peer"]
        self.overall = self.progress.add_task(f"to {who}: waiting for them to accept", total=record["total"])
        self.who = who
        self.files: dict[int, Any] = {}
        self.sizes: dict[int, int] = {}
        self.progress.start()

    def update(self, data: dict[str, Any]) -> None:
        state = data["state"]
        label = {"offered": "offering", "pending": "waiting for them to accept", "active": f"{data['files_done']}/{data['files']} files"}.get(state, state)
        self.progress.update(self.overall, completed=data["bytes"], description=f"to {self.who}: {label}")
        current = data.get("current")
        if current:
            index = current["index"]
            for other, task in self.files.items():
                if other < index:
                    self.progress.update(task, completed=self.sizes[other])
            if index not in self.files:
                self.files[index] = self.progress.add_task(f"  {_short(current['name'])}", total=max(1, current["size"]))
                self.sizes[index] = current["size"]
                for old in sorted(self.files)[:-FILE_BARS]:
                    self.progress.update(self.files[old], visible=False)
            self.progress.update(self.files[index], completed=current["bytes"])
        if state == "done":
            for index, task in self.files.items():
                self.progress.update(task, completed=self.sizes[index])

    def close(self) -> None:
        self.progress.stop()


def _short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def _bytes(n: float) -> str:
    from lannode.transfer.offers import human_bytes

    return human_bytes(n)


def cmd_transfers(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    transfers = call(_home(args), "transfer.list")
    if args.json:
        print(json.dumps(transfers, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not transfers:
        print("no transfers yet")
        return EXIT_OK
    rows = [("ID", "", "PEER", "STATE", "DONE", "SIZE", "RATE", "FILES")]
    for t in transfers:
        percent = f"{100 * t['bytes'] / t['total']:.0f}%" if t["total"] else "100%"
        names = ", ".join(t["names"][:2]) + (f" and {t['files'] - 2} more" if t["files"] > 2 else "")
        rate = f"{_bytes(t['rate'])}/s" if t["state"] == "active" else ""
        rows.append((t["id"][:8], "->" if t["direction"] == "out" else "<-", t["peer_name"] or t["peer"][:12], t["state"], percent, _bytes(t["total"]), rate, names))
    _table(rows)
    for t in transfers:
        if t["state"] == "pending" and t["direction"] == "in":
            print(f"{t['peer_name'] or t['peer']} offers {t['files']} files ({_bytes(t['total'])}): lannode accept {t['id'][:8]}  or  lannode decline {t['id'][:8]}", file=sys.stderr)
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    params: dict[str, Any] = {"id": args.id}
    if args.command == "decline" and args.reason:
        params["reason"] = args.reason
    record = call(_home(args), f"transfer.{args.command}", **params)
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        verb = {"accept": "accepted", "decline": "declined", "cancel": "cancelled"}[args.command]
        print(f"{verb} {record['id'][:8]} ({record['files']} files, {_bytes(record['total'])}, {'to' if record['direction'] == 'out' else 'from'} {record['peer_name'] or record['peer']})")
    return EXIT_OK


# -- drive --------------------------------------------------------------------
def cmd_drive(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = _home(args)
    action = args.drive_command
    if action in ("put", "get"):
        return _drive_transfer(home, args)
    if action == "ls":
        files = call(home, "drive.ls")
        if args.json:
            print(json.dumps(files, indent=2, ensure_ascii=False))
        elif not files:
            print("the drive is empty; add a file with: lannode drive put PATH")
        else:
            rows = [("ID", "NAME", "SIZE", "K+M", "HEALTH", "OWNER")]
            for f in files:
                rows.append((f["id"][:8], f["name"] if f["name"] is not None else "(not shared with this node)", _bytes(f["size"]), f"{f['k']}+{f['m']}", f["health"], f["owner_name"]))
            _table(rows)
        return EXIT_OK
    if action == "status":
        nodes = call(home, "drive.status")
        if args.json:
            print(json.dumps(nodes, indent=2, ensure_ascii=False))
        else:
            rows = [("NODE", "ID", "STATE", "FRAGMENTS", "USED", "QUOTA")]
            for n in nodes:
                rows.append((n["name"], n["node"][:12], "alive" if n["alive"] else "away", str(n["fragments"]), _bytes(n["bytes"]), _bytes(n["quota"])))
            _table(rows)
        return EXIT_OK
    if action in ("verify", "repair"):
        params = {"file": args.file} if args.file else {}
        results = call(home, f"drive.{action}", **params)
        if args.json:
            print(json.dumps(results, indent=2, ensure_ascii=False))
            return EXIT_OK
        for r in results:
            if action == "verify":
                bad = [f"{f['index']} on {f['name']}: {f['state']}" for f in r["fragments"] if f["state"] != "ok"]
                print(f"{r['id'][:8]}  {r['health']} fragments ok" + (f"  ({'; '.join(bad)})" if bad else ""))
            else:
                moved = ", ".join(f"{x['index']} to {x['name']}" for x in r["repaired"])
                print(f"{r['id'][:8]}  {'rebuilt ' + moved if moved else 'healthy'}")
        return EXIT_OK
    if action == "rm":
        result = call(home, "drive.rm", file=args.file)
        print(json.dumps(result, indent=2) if args.json else f"removed {result['name']} ({result['id'][:8]}); its holders drop their fragments")
        return EXIT_OK
    if action == "share":
        result = call(home, "drive.share", file=args.file, **{"with": args.targets})
        print(json.dumps(result, indent=2) if args.json else f"shared {result['name']} with " + ", ".join(x["name"] for x in result["shared_with"]))
        return EXIT_OK
    result = call(home, "drive.info", file=args.file)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print(f"{result['name'] or '(not shared with this node)'}  {result['id']}")
        print(f"{_bytes(result['size'])}, k={result['k']} m={result['m']}, health {result['health']}, owner {result['owner_name']}, version {result['version']}")
        for h in result["holders"]:
            print(f"  fragment {h['index']}: {h['name']} ({'alive' if h['alive'] else 'away'})")
        if result["read_cap"]:
            print(f"read cap:   {result['read_cap']}")
            print(f"verify cap: {result['verify_cap']}")
    return EXIT_OK


def _table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _drive_transfer(home: Any, args: argparse.Namespace) -> int:
    """put and get: the call runs while progress events draw a bar (or print as JSON lines)."""
    import secrets

    import trio

    from lannode.net.api_client import RemoteError, collapse_single_group, connect

    op = secrets.token_hex(8)
    if args.drive_command == "put":
        method = "drive.put"
        params: dict[str, Any] = {"path": os.path.abspath(args.path), "k": args.k, "m": args.m, "share": args.share or [], "allow_fewer": args.allow_fewer, "op": op}
        if args.name:
            params["name"] = args.name
    else:
        method = "drive.get"
        params = {"file": args.file, "out": os.path.abspath(args.out), "op": op}
    result: dict[str, Any] = {}

    async def run() -> None:
        async with connect(home) as client:
            await client.subscribe("drive.progress")
            bar = None
            if not args.json and sys.stderr.isatty():
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=Console(stderr=True))
                bar.start()
            task = None
            try:
                async with trio.open_nursery() as nursery:

                    async def follow() -> None:
                        nonlocal task
                        async for topic, data in client.events():
                            if data.get("op") != op:
                                continue
                            if args.json:
                                print(json.dumps({"event": topic, "data": data}), flush=True)
                            elif bar is not None:
                                if task is None:
                                    task = bar.add_task(f"{data['kind']} {_short(data['name'], 30)}", total=max(1, data["total"]))
                                bar.update(task, completed=data["bytes"])

                    nursery.start_soon(follow)
                    try:
                        result.update(await client.call(method, **params))
                    except RemoteError as exc:
                        refused.append(exc)  # raised below, outside the nursery: one plain error
                    nursery.cancel_scope.cancel()
            finally:
                if bar is not None:
                    bar.stop()

    refused: list[Exception] = []
    with collapse_single_group():
        trio.run(run)
    if refused:
        return fail(str(refused[0]))
    if args.json:
        print(json.dumps({"event": "result", "data": result}, ensure_ascii=False), flush=True)
    elif args.drive_command == "put":
        print(f"put {result['name']} ({_bytes(result['size'])}) as {result['id']}: {result['k']}+{result['m']} fragments on " + ", ".join(h["name"] for h in result["holders"]))
        print(f"read cap: {result['read_cap']}")
    else:
        via = ", ".join(f"{x['index']}@{x['name']}" for x in result["from"])
        print(f"got {result['name']} ({_bytes(result['size'])}) into {result['path']} from fragments {via}")
        for f in result["failed"]:
            print(f"lannode: fragment {f['index']} on {f['name']} failed: {f['why']}", file=sys.stderr)
    return EXIT_OK


# -- mail ---------------------------------------------------------------------
def _addresses(values: list[str] | None) -> list[str]:
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _mail_line(m: dict[str, Any]) -> tuple[str, ...]:
    import time

    if m["state"] == "sent":
        note = f"sent {_ago(m['sent_at'])}"
    elif m.get("waiting_for"):
        note = f"waiting for {m['waiting_for'].removeprefix('the ')}"
    elif m["state"] in ("queued", "retrying") and m.get("next_attempt_at") and m["next_attempt_at"] > time.time():
        note = f"next try in {_duration(m['next_attempt_at'] - time.time())}"
    else:
        note = ""
    if m.get("last_error") and m["state"] != "sent":
        note = f"{note}: {m['last_error']}" if note else m["last_error"]
    return (m["id"][:8], m["state"], _short(m["to"], 30), _short(m["subject"], 30), str(m["attempts"]), note)


def cmd_mail(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = _home(args)
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
            _table([("ID", "STATE", "TO", "SUBJECT", "TRIES", "NOTE"), *(_mail_line(m) for m in messages)])
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


# -- parser -------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    def shared(defaults: bool) -> argparse.ArgumentParser:
        # The options may stand before or after the command; only the top level sets
        # defaults, so a command's copy never overwrites what came before it.
        p = argparse.ArgumentParser(add_help=False, argument_default=None if defaults else argparse.SUPPRESS)
        p.add_argument("--home", metavar="DIR", help="the node's home (default: $LANNODE_HOME, else the XDG data dir)")
        p.add_argument("--json", action="store_true", help="print JSON for scripts")
        return p

    common = shared(defaults=False)
    parser = argparse.ArgumentParser(prog="lannode", description="A LAN communication suite that needs no server.", parents=[shared(defaults=True)])
    parser.add_argument("--version", action="version", version=f"lannode {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("up", parents=[common], help="run the node in the foreground")
    up.add_argument("--name", help="the name people see (saved in the config on first start)")
    up.add_argument("--interface", metavar="ADDR", help="IPv4 address to bind gossip and links to (127.0.0.1 for loopback)")
    up.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: the config's node.log_level")
    up.set_defaults(func=cmd_up)

    status = sub.add_parser("status", parents=[common], help="the running node's id, name, uptime and plugins")
    status.set_defaults(func=cmd_status)

    peers = sub.add_parser("peers", parents=[common], help="the nodes this one knows and their state")
    peers.set_defaults(func=cmd_peers)

    ping = sub.add_parser("ping", parents=[common], help="round trip to a peer over its encrypted link")
    ping.add_argument("peer", help="a peer's name or a unique prefix of its node id")
    ping.add_argument("-c", "--count", type=int, default=1, help="how many pings (default 1)")
    ping.add_argument("-i", "--interval", type=float, default=1.0, help="seconds between pings (default 1)")
    ping.set_defaults(func=cmd_ping)

    trust = sub.add_parser("trust", parents=[common], help="show the safety code with a peer and mark it verified")
    trust.add_argument("peer", help="a peer's name or a unique prefix of its node id")
    trust.add_argument("--code", help="the code the other person reads out; refused if it differs")
    trust.set_defaults(func=cmd_trust)

    store = sub.add_parser("store", parents=[common], help="the replicated metadata store shared by all nodes")
    store.add_argument("action", choices=["put", "get", "rm", "ls", "watch"], help="put KEY VALUE | get KEY | rm KEY | ls [PREFIX] | watch [PREFIX]")
    store.add_argument("key", nargs="?", help="the key (for ls and watch: a prefix)")
    store.add_argument("value", nargs="?", help="put: a JSON value; anything that is not JSON is stored as a string")
    store.set_defaults(func=cmd_store)

    chat = sub.add_parser("chat", parents=[common], help="messages to a peer or a group: send, log, watch")
    chat.add_argument("action", choices=["send", "log", "watch"], help="send PEER|#GROUP TEXT | log PEER|#GROUP | watch")
    chat.add_argument("peer", nargs="?", help="a peer's name or a unique prefix of its node id; #NAME for a group")
    chat.add_argument("text", nargs="?", help="send: the message")
    chat.add_argument("--limit", type=int, default=50, help="log: how many of the latest messages (default 50, at most 500)")
    chat.add_argument("--search", help="log: only messages containing this text")
    chat.add_argument("--direct", action="store_true", help="send: also carry it over a WebRTC data channel to the peer's open page (aiortc)")
    chat.set_defaults(func=cmd_chat)

    group = sub.add_parser("group", parents=[common], help="group conversations: create, invite, remove, rename, leave, ls, info")
    group.add_argument("action", choices=list(GROUP_USAGE), help="; ".join(u for _, _, u in GROUP_USAGE.values()))
    group.add_argument("words", nargs="*", metavar="ARG", help="GROUP is a group's name or id prefix; PEER a peer's name or id prefix")
    group.set_defaults(func=cmd_group)

    call = sub.add_parser("call", parents=[common], help="join a call from this machine (aiortc): ring a peer's page, or join a meeting room")
    call.add_argument("target", nargs="?", metavar="PEER|#ROOM", help="a peer's name or id prefix (its open pages ring), or #ROOM")
    call.add_argument("--room", help="a meeting room's name (the same as #ROOM)")
    source = call.add_mutually_exclusive_group()
    source.add_argument("--test-pattern", action="store_true", help="send moving colour bars and a beep (the default)")
    source.add_argument("--play", metavar="FILE", help="send a media file, looped")
    source.add_argument("--camera", metavar="DEVICE", help="send a V4L2 camera such as /dev/video0")
    call.add_argument("--record", metavar="OUT", help="record what arrives to OUT.webm (VP8 + Opus) or OUT.mp4 (H.264 + AAC); in a room one file per person, OUT-NAME-FRONT.webm")
    call.add_argument("--duration", type=float, metavar="S", help="leave after S seconds (default: when the other side hangs up, or Ctrl-C)")
    call.add_argument("--ring", type=float, default=45.0, metavar="S", help="how long to ring before giving up (default 45)")
    call.set_defaults(func=cmd_call)

    send = sub.add_parser("send", parents=[common], help="send files and folders to a peer (it accepts, or trusts you)")
    send.add_argument("items", nargs="+", metavar="PATH... PEER", help="files and folders (a folder keeps its structure), then the peer")
    send.add_argument("--no-wait", action="store_true", help="offer and return; lannode transfers follows it")
    send.set_defaults(func=cmd_send)

    transfers = sub.add_parser("transfers", parents=[common], help="file transfers in and out: state, progress, rate")
    transfers.set_defaults(func=cmd_transfers)

    for verb, text in (("accept", "accept a file offer"), ("decline", "decline a file offer"), ("cancel", "cancel a transfer, in or out")):
        decide = sub.add_parser(verb, parents=[common], help=text)
        decide.add_argument("id", help="the transfer's id, or the first 8 characters `lannode transfers` shows")
        if verb == "decline":
            decide.add_argument("--reason", help="told to the sender")
        decide.set_defaults(func=cmd_decide)

    drive = sub.add_parser("drive", parents=[common], help="the shared drive: put, get, ls, rm, share, verify, repair, status, info")
    drive_sub = drive.add_subparsers(dest="drive_command", metavar="ACTION", required=True)
    dput = drive_sub.add_parser("put", parents=[common], help="encrypt a file, code it into k+m fragments and place them on k+m nodes")
    dput.add_argument("path")
    dput.add_argument("--k", type=int, default=4, help="data fragments: any k rebuild the file (default 4)")
    dput.add_argument("--m", type=int, default=2, help="parity fragments: how many may be lost (default 2)")
    dput.add_argument("--share", action="append", metavar="PEER|#GROUP", help="who may read it besides this node (repeatable)")
    dput.add_argument("--name", help="the name people see (default: the file's)")
    dput.add_argument("--allow-fewer", action="store_true", help="put even with fewer than k+m nodes (some hold two fragments)")
    dget = drive_sub.add_parser("get", parents=[common], help="fetch a file from any k of its holders")
    dget.add_argument("file", help="its name, id (or 4+ characters of it) or read capability")
    dget.add_argument("out", help="where to write it (a folder: under its name)")
    drive_sub.add_parser("ls", parents=[common], help="every file: id, name (if shared with this node), size, k+m, health")
    drive_sub.add_parser("status", parents=[common], help="per node: fragments held, bytes, quota")
    for verb, text in (("rm", "remove a file; its holders drop their fragments"), ("info", "one file: holders, capabilities")):
        p = drive_sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("file")
    dshare = drive_sub.add_parser("share", parents=[common], help="let peers or a group read a file")
    dshare.add_argument("file")
    dshare.add_argument("targets", nargs="+", metavar="PEER|#GROUP")
    for verb, text in (("verify", "every holder checks its fragments now"), ("repair", "verify, then rebuild what is not ok")):
        p = drive_sub.add_parser(verb, parents=[common], help=text)
        p.add_argument("file", nargs="?", help="one file (default: all)")
    drive.set_defaults(func=cmd_drive)

    mail = sub.add_parser("mail", parents=[common], help="send mail through your relay (the mail plugin): send, outbox, retry, cancel")
    mail_sub = mail.add_subparsers(dest="mail_command", metavar="ACTION", required=True)
    msend = mail_sub.add_parser("send", parents=[common], help="queue a message; it is sent by the mail plugin, retried while the relay is down")
    msend.add_argument("--to", action="append", required=True, metavar="ADDR[,ADDR]", help="recipients (repeatable)")
    msend.add_argument("--cc", action="append", metavar="ADDR[,ADDR]")
    msend.add_argument("--bcc", action="append", metavar="ADDR[,ADDR]", help="recipients in no header")
    msend.add_argument("--subject", required=True)
    msend.add_argument("--body", help="the text")
    msend.add_argument("--body-file", metavar="F", help="the text from a file (- for stdin)")
    msend.add_argument("--attach", action="append", metavar="PATH", help="attach a file (repeatable)")
    msend.add_argument("--transcript", metavar="PEER|#GROUP", help="attach a chat conversation's history as text")
    msend.add_argument("--drive-file", metavar="ID|NAME", help="attach a drive file (named in the body instead when it is over the size limit)")
    msend.add_argument("--no-wait", action="store_true", help="return once queued")
    msend.add_argument("--wait", type=float, default=60.0, metavar="S", help="how long to follow the first attempt (default 60)")
    moutbox = mail_sub.add_parser("outbox", parents=[common], help="messages waiting, being sent or failed, with the relay's last answer")
    moutbox.add_argument("--all", action="store_true", help="also those sent in the last 30 days")
    mretry = mail_sub.add_parser("retry", parents=[common], help="send a failed or waiting message again now")
    mretry.add_argument("id", nargs="?", help="the message's id (or its first 8 characters)")
    mretry.add_argument("--all", action="store_true", help="every failed or waiting message")
    mcancel = mail_sub.add_parser("cancel", parents=[common], help="drop a message that is not being sent")
    mcancel.add_argument("id")
    mail.set_defaults(func=cmd_mail)

    lab = sub.add_parser("lab", parents=[common], help="run a few nodes on loopback to try lannode out")
    lab.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    lab.add_argument("--dir", help="where their homes go (default: a temporary directory, removed afterwards)")
    lab.add_argument("--keep", action="store_true", help="keep the homes when the lab stops")
    lab.set_defaults(func=cmd_lab)

    netkey = sub.add_parser("network-key", parents=[common], help="seal gossip with a key shared by the members")
    netkey.add_argument("action", choices=["new", "set", "clear"], help="new: make and save one; set KEY: save a member's; clear: open network")
    netkey.add_argument("key", nargs="?", help="with set: the key in base64, or - to read it from stdin")
    netkey.set_defaults(func=cmd_network_key)

    service = sub.add_parser("service", help="the systemd service")
    service_sub = service.add_subparsers(dest="service_command", metavar="ACTION", required=True)
    install = service_sub.add_parser("install", parents=[common], help="write the systemd unit")
    install.add_argument("--user", action="store_true", help="a user unit (~/.config/systemd/user) instead of a system one")
    install.add_argument("--dest", metavar="DIR", help="write the unit into DIR instead")
    install.add_argument("--run-as", metavar="USER", help="system unit: run as USER (default: a DynamicUser)")
    install.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    install.set_defaults(func=cmd_service_install)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        # every command that talks to the node fails the same way: one line, exit 1
        client = sys.modules.get("lannode.net.api_client")
        if client is not None and isinstance(exc, (client.NodeNotRunning, client.ApiRejected, client.RemoteError)):
            return fail(str(exc))
        raise
