"""The drive: ``drive put/get/ls/rm/share/info/verify/repair/status``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from lannode.cli.render import (
    EXIT_OK,
    fail,
    home_of,
    progress_bars,
    short,
    show_bytes,
    table,
)


def cmd_drive(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = home_of(args)
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
                rows.append((f["id"][:8], f["name"] if f["name"] is not None else "(not shared with this node)", show_bytes(f["size"]), f"{f['k']}+{f['m']}", f["health"], f["owner_name"]))
            table(rows)
        return EXIT_OK
    if action == "status":
        nodes = call(home, "drive.status")
        if args.json:
            print(json.dumps(nodes, indent=2, ensure_ascii=False))
        else:
            rows = [("NODE", "ID", "STATE", "FRAGMENTS", "USED", "QUOTA")]
            for n in nodes:
                rows.append((n["name"], n["node"][:12], "alive" if n["alive"] else "away", str(n["fragments"]), show_bytes(n["bytes"]), show_bytes(n["quota"])))
            table(rows)
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
        print(f"{show_bytes(result['size'])}, k={result['k']} m={result['m']}, health {result['health']}, owner {result['owner_name']}, version {result['version']}")
        for h in result["holders"]:
            print(f"  fragment {h['index']}: {h['name']} ({'alive' if h['alive'] else 'away'})")
        if result["read_cap"]:
            print(f"read cap:   {result['read_cap']}")
            print(f"verify cap: {result['verify_cap']}")
    return EXIT_OK


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
                bar = progress_bars()
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
                                    task = bar.add_task(f"{data['kind']} {short(data['name'], 30)}", total=max(1, data["total"]))
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
        print(f"put {result['name']} ({show_bytes(result['size'])}) as {result['id']}: {result['k']}+{result['m']} fragments on " + ", ".join(h["name"] for h in result["holders"]))
        print(f"read cap: {result['read_cap']}")
    else:
        via = ", ".join(f"{x['index']}@{x['name']}" for x in result["from"])
        print(f"got {result['name']} ({show_bytes(result['size'])}) into {result['path']} from fragments {via}")
        for f in result["failed"]:
            print(f"lannode: fragment {f['index']} on {f['name']} failed: {f['why']}", file=sys.stderr)
    return EXIT_OK


