"""File drop: ``send``, ``transfers``, ``accept``, ``decline``."""

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
    fail,
    home_of,
    progress_bars,
    short,
    show_bytes,
    table,
)

FILE_BARS = 6  # file bars kept on screen; older ones are hidden once complete


def cmd_send(args: argparse.Namespace) -> int:
    import trio

    from lannode.core.transfer import TERMINAL
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
    home = home_of(args)
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
            print(f"offered {final['id']} ({final['files']} files, {show_bytes(final['total'])}) to {final['peer_name'] or final['peer']}; lannode transfers shows it")
        return EXIT_OK
    state = final.get("state")
    if not args.json:
        if state == "done":
            print(f"sent {final['files']} files ({show_bytes(final['total'])}) to {final['peer_name'] or final['peer']}")
        else:
            print(f"lannode: the transfer was {state}{': ' + final['reason'] if final.get('reason') else ''}", file=sys.stderr)
    return EXIT_OK if state == "done" else EXIT_FAIL


class _TransferView:
    """rich progress bars: one for the whole transfer, one per file as it goes."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.progress = progress_bars()
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
                self.files[index] = self.progress.add_task(f"  {short(current['name'])}", total=max(1, current["size"]))
                self.sizes[index] = current["size"]
                for old in sorted(self.files)[:-FILE_BARS]:
                    self.progress.update(self.files[old], visible=False)
            self.progress.update(self.files[index], completed=current["bytes"])
        if state == "done":
            for index, task in self.files.items():
                self.progress.update(task, completed=self.sizes[index])

    def close(self) -> None:
        self.progress.stop()


def cmd_transfers(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    transfers = call(home_of(args), "transfer.list")
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
        rate = f"{show_bytes(t['rate'])}/s" if t["state"] == "active" else ""
        rows.append((t["id"][:8], "->" if t["direction"] == "out" else "<-", t["peer_name"] or t["peer"][:12], t["state"], percent, show_bytes(t["total"]), rate, names))
    table(rows)
    for t in transfers:
        if t["state"] == "pending" and t["direction"] == "in":
            print(f"{t['peer_name'] or t['peer']} offers {t['files']} files ({show_bytes(t['total'])}): lannode accept {t['id'][:8]}  or  lannode decline {t['id'][:8]}", file=sys.stderr)
    return EXIT_OK


def cmd_decide(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    params: dict[str, Any] = {"id": args.id}
    if args.command == "decline" and args.reason:
        params["reason"] = args.reason
    record = call(home_of(args), f"transfer.{args.command}", **params)
    if args.json:
        print(json.dumps(record, indent=2, ensure_ascii=False))
    else:
        verb = {"accept": "accepted", "decline": "declined", "cancel": "cancelled"}[args.command]
        print(f"{verb} {record['id'][:8]} ({record['files']} files, {show_bytes(record['total'])}, {'to' if record['direction'] == 'out' else 'from'} {record['peer_name'] or record['peer']})")
    return EXIT_OK


