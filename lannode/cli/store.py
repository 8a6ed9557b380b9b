"""The replicated store: ``store get/put/rm/ls/watch``."""

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


def cmd_store(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    home = home_of(args)
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
    def show(topic: str, data: Any) -> None:
        if args.json:
            print(json.dumps(data, ensure_ascii=False), flush=True)
        elif data["deleted"]:
            print(f"deleted {data['key']}", flush=True)
        else:
            print(f"{data['key']}\t{json.dumps(data['value'], ensure_ascii=False)}", flush=True)

    return watch(home, lambda client: client.call("store.watch", prefix=args.key or ""), show)


