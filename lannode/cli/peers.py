"""Peers: ``peers``, ``ping``, ``trust``."""

from __future__ import annotations

import argparse
import json
import sys

from lannode.cli.render import (
    EXIT_OK,
    ago,
    home_of,
)


def cmd_peers(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    peers = call(home_of(args), "peer.list")
    if args.json:
        print(json.dumps(peers, indent=2))
        return EXIT_OK
    if not peers:
        print("no peers yet")
        return EXIT_OK
    rows = [("NAME", "STATE", "TRUST", "NODE ID", "ADDRESS", "LAST SEEN")]
    rows += [(p["name"], p["state"], p["trust"], p["node_id"], p["addresses"]["gossip"], ago(p["last_seen"])) for p in peers]
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

    home = home_of(args)
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
    result = call(home_of(args), "peer.trust", **params)
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


