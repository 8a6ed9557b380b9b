"""Guests: ``guests on/off/invite/ls/remove/revoke``."""

from __future__ import annotations

import argparse
import io
import json

from lannode.cli.render import EXIT_OK, ago, home_of, table


def _show(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))


def cmd_guests(args: argparse.Namespace) -> int:
    from lannode.net.api_client import NodeNotRunning, call

    home = home_of(args)
    action = args.guests_command
    if action in ("on", "off"):
        try:
            status = call(home, "guests.enable", on=action == "on")
        except NodeNotRunning:  # remembered for the next start
            from lannode.config import set_option

            home.ensure()
            home.load_config()  # a home with a config, made as `up` would make it
            set_option(home.config_path, "guests.enabled", action == "on")
            status = {"enabled": action == "on", "url": "", "problem": "the node is not running: the door opens when it starts" if action == "on" else ""}
        if args.json:
            _show(status)
        elif status["enabled"] and status.get("url"):
            print(f"the guest door is open at {status['url']}\ncertificate SHA-256 {status['fingerprint']}\nnext: lannode guests invite")
        elif status["enabled"]:
            print(f"guests are on, but the door is closed: {status['problem']}")
        else:
            print("the guest door is closed; guests that joined stay, and come back when it opens")
        return EXIT_OK
    if action == "invite":
        invite = call(home, "guests.invite", minutes=args.minutes)
        if args.json:
            _show({k: v for k, v in invite.items() if k != "qr"})
            return EXIT_OK
        import segno

        qr = io.StringIO()
        segno.make(invite["url"], error="m").terminal(out=qr, compact=True)
        print(qr.getvalue(), end="")
        print(f"Scan it with the phone's camera, or open {invite['door']} and type the code {invite['code'][:3]} {invite['code'][3:]}")
        print(f"(good for {round(invite['expires_in'] / 60)} minutes, for one phone).")
        print(f"The phone's browser will warn about the certificate once: it is this node's own, SHA-256 {invite['fingerprint']}")
        return EXIT_OK
    if action == "ls":
        listing = call(home, "guests.list")
        if args.json:
            _show(listing)
            return EXIT_OK
        if listing["guests"]:
            rows = [("GUEST", "NAME", "HERE", "JOINED", "REQUESTS")]
            rows += [(g["guest"][:12], g["name"], "yes" if g["online"] else "away", ago(g["added"]), str(g["requests"])) for g in listing["guests"]]
            table(rows)
        else:
            print("no guests (lannode guests invite makes an invitation)")
        for invite in listing["invites"]:
            print(f"open invitation {invite['id']}: code {invite['code']}, {round(invite['expires_in'] / 60)} min left, {invite['wrong_codes']} wrong code(s)")
        return EXIT_OK
    if action == "remove":
        record = call(home, "guests.remove", guest=args.guest)
        print(json.dumps(record) if args.json else f"removed {record['name']} ({record['guest']}); every node sees them go")
        return EXIT_OK
    record = call(home, "guests.revoke", invite=args.invite)
    print(json.dumps(record) if args.json else f"invitation {record['invite']} is void")
    return EXIT_OK

