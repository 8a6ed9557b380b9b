"""What the commands share: exit codes, the one-line error, the home a command talks to,
and how numbers, times and tables are shown to a person."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Sequence

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


def table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def short(name: str, width: int = 40) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def show_bytes(n: float) -> str:
    """Bytes for a person ("16.8 MB"), as file drop's messages say them."""
    from lannode.transfer.offers import human_bytes

    return human_bytes(n)
