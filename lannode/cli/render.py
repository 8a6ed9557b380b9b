"""What the commands share: exit codes, the one-line error, the home a command talks to,
and how numbers, times and tables are shown to a person."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Awaitable, Callable, Sequence

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def fail(message: str, code: int = EXIT_FAIL) -> int:
    print(f"lannode: {message}", file=sys.stderr)
    return code


def home_of(args: argparse.Namespace) -> Any:
    from lannode.home import Home, resolve

    return Home(resolve(args.home))


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours or days else []
    parts += [f"{minutes}m"] if minutes or hours or days else []
    return "".join(parts + [f"{secs}s"])


def ago(then: float) -> str:
    return duration(max(0.0, time.time() - then)) + " ago"


def console(*, stderr: bool = False) -> Any:
    """The rich console every command prints tables and bars through, configured once:
    plain text, no highlighting guessed from content, and, when the output is not a
    terminal (a pipe, a script), no wrapping at 80 columns."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, soft_wrap=not stream.isatty(), width=None if stream.isatty() else 10_000)


def table(rows: Sequence[Sequence[str]]) -> None:
    """Rows under a header, in aligned columns (no borders), as ``ls -l`` prints."""
    from rich.table import Table

    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
    for header in rows[0]:
        grid.add_column(header, no_wrap=True)
    for row in rows[1:]:
        grid.add_row(*row)
    out = console()
    if out.is_terminal:
        out.print(grid)
        return
    with out.capture() as captured:  # for a pipe: the same lines, without the padding after the last column
        out.print(grid)
    print("\n".join(line.rstrip() for line in captured.get().splitlines()))


def progress_bars() -> Any:
    """Progress bars for bytes on their way (a transfer, a drive put or get), on stderr."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    return Progress(TextColumn("{task.description}", table_column=None), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(), console=console(stderr=True))


def short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def show_bytes(n: float) -> str:
    """Bytes for a person ("16.8 MB"), as file drop's messages say them."""
    from lannode.transfer.offers import human_bytes

    return human_bytes(n)


def watch(home: Any, start: Callable[[Any], Awaitable[Any]], show: Callable[[str, Any], None]) -> int:
    """Follow the node's events until interrupted: ``start(client)`` subscribes (or asks for
    a watch), then every event goes to ``show(topic, data)``."""
    import trio

    from lannode.net.api_client import ApiRejected, NodeNotRunning, collapse_single_group, connect

    async def follow() -> None:
        async with connect(home) as client:
            await start(client)
            async for topic, data in client.events():
                show(topic, data)

    try:
        with collapse_single_group():
            trio.run(follow)
    except (NodeNotRunning, ApiRejected) as exc:
        return fail(str(exc))
    return EXIT_OK
