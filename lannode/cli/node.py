"""The node itself: ``up`` (run it), ``status``, ``lab``, ``service install``, ``network-key``."""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from lannode.cli.render import (
    EXIT_OK,
    EXIT_USAGE,
    duration,
    fail,
    home_of,
)


def cmd_up(args: argparse.Namespace) -> int:
    from lannode import log
    from lannode.config import ConfigError, check_interface
    from lannode.daemon import NodeSettings, run_up
    from lannode.home import HomeBusy, HomeError
    from lannode.identity import IdentityError
    from lannode.net.gossip import GossipError

    home = home_of(args)
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


def cmd_status(args: argparse.Namespace) -> int:
    from lannode.net.api_client import call

    status = call(home_of(args), "node.status")
    if args.json:
        print(json.dumps(status, indent=2))
        return EXIT_OK
    print(f"node       {status['name']} ({status['node_id']})")
    print(f"version    {status['version']}, API v{status['api_version']}, pid {status['pid']}")
    print(f"uptime     {duration(status['uptime_s'])}")
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


def cmd_lab(args: argparse.Namespace) -> int:
    from lannode.lab import run_lab

    if not 1 <= args.nodes <= 32:
        return fail("--nodes takes a number from 1 to 32", EXIT_USAGE)
    return run_lab(nodes=args.nodes, directory=args.dir, keep=args.keep, as_json=args.json)


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


def cmd_network_key(args: argparse.Namespace) -> int:
    import base64
    import secrets

    from lannode.home import HomeError, parse_network_key

    home = home_of(args)
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


