"""The ``lannode`` command's parser and entry point."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from lannode import __version__
from lannode.cli.calls import cmd_call
from lannode.cli.chat import GROUP_USAGE, cmd_chat, cmd_group
from lannode.cli.drive import cmd_drive
from lannode.cli.files import cmd_decide, cmd_send, cmd_transfers
from lannode.cli.guests import cmd_guests
from lannode.cli.mail import cmd_mail
from lannode.cli.node import (
    cmd_lab,
    cmd_network_key,
    cmd_service_install,
    cmd_status,
    cmd_up,
)
from lannode.cli.peers import cmd_peers, cmd_ping, cmd_trust
from lannode.cli.render import fail
from lannode.cli.store import cmd_store


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

    guests = sub.add_parser("guests", parents=[common], help="phones and other browsers on the LAN as guests of this node: on, off, invite, ls, remove, revoke")
    guests_sub = guests.add_subparsers(dest="guests_command", metavar="ACTION", required=True)
    guests_sub.add_parser("on", parents=[common], help="open the guest door (HTTPS on this node's LAN address) and keep it open across restarts")
    guests_sub.add_parser("off", parents=[common], help="close the guest door; guests stay and come back when it opens")
    ginvite = guests_sub.add_parser("invite", parents=[common], help="a one-time invitation: a QR code to scan and a 6-digit code to type")
    ginvite.add_argument("--minutes", type=float, default=10.0, help="how long it is good for (default 10)")
    guests_sub.add_parser("ls", parents=[common], help="this node's guests and open invitations")
    gremove = guests_sub.add_parser("remove", parents=[common], help="remove a guest; every node sees it go")
    gremove.add_argument("guest", help="its name or id")
    grevoke = guests_sub.add_parser("revoke", parents=[common], help="void an open invitation")
    grevoke.add_argument("invite", help="its id (guests ls shows it)")
    guests.set_defaults(func=cmd_guests)

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
