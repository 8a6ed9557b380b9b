"""The ``answer`` plugin: a node that picks up calls by itself (an intercom, a baby monitor).

Enabled in the node's config::

    [plugins.answer]
    enabled = true
    peers = ["ann", "3f9c2a7b"]   # names or node-id prefixes; each must also be verified
    source = "test-pattern"       # or "play:/path/file.webm", "camera:/dev/video0"
    record = ""                   # a folder: each answered call is recorded there

A page calling this node rings it like any other; the call is accepted at once
when the caller is listed *and* verified (``lannode trust``), and declined with a
reason otherwise: a listed name alone is never enough, since names are chosen by
their owners. One call at a time; a second caller hears "busy". A 1:1 chat
message a page sends this node over its data channel is handed to the node.

aiortc and av are imported when the first page opens a session with this node,
not before.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import trio

from lannode.config import check_answer_table
from lannode.plugins.kit import PluginContext, start

log = logging.getLogger("lannode.answer")

def main() -> int:
    ctx = start("lannode-answer")
    if ctx is None:
        return 2
    if problem := check_answer_table(ctx.config):
        print(f"lannode-answer: [plugins.answer] {problem}", file=sys.stderr)
        return 2
    source = ctx.config.get("source", "test-pattern")
    kind, _, target = source.partition(":")
    if (kind == "play" and not Path(target).is_file()) or (kind == "camera" and not Path(target).exists()):
        print(f"lannode-answer: [plugins.answer] source: {target} does not exist", file=sys.stderr)
        return 2
    record = Path(ctx.config["record"]) if ctx.config.get("record") else None
    if record is not None:
        record.mkdir(parents=True, exist_ok=True)
    try:
        trio.run(serve, ctx, record)
    except KeyboardInterrupt:
        pass
    return 0


async def serve(ctx: PluginContext, record: Path | None) -> None:
    from lannode.calls.participant import answer_calls, open_participant
    from lannode.net.api_client import open_client

    def show(topic: str, data: dict[str, Any]) -> None:
        log.info("%s %s", topic, data)

    with trio.open_signal_receiver(signal.SIGTERM) as stops:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in stops:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            async with open_client(ctx.api_url, ctx.token) as client:
                async with open_participant(client, source=ctx.config.get("source", "test-pattern"), on_status=show, engine_now=False) as participant:
                    log.info("answering calls from %s", ", ".join(ctx.config.get("peers", [])) or "nobody (no peers listed)")
                    await answer_calls(participant, allowed=list(ctx.config.get("peers", [])), record_dir=record)
            nursery.cancel_scope.cancel()
