"""Calls without a browser: ``call``."""

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
    duration,
    fail,
    home_of,
)


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
    home = home_of(args)
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
            print(f"\r{duration(data['seconds'])}: {data['frames_sent'].get('video', 0)} video frames sent, {received} received", end="", flush=True)

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
            print(f"{what} ended after {duration(result.seconds)} ({result.reason}); video frames sent {result.frames_sent.get('video', 0)}, received {received}")
            for path in result.recordings:
                print(f"recorded {path}")
        else:
            print(f"lannode: {what}: {result.outcome}{': ' + result.reason if result.reason else ''}", file=sys.stderr)
    return EXIT_OK if result.outcome == "ended" else EXIT_FAIL


