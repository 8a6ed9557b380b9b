"""``python -m lannode.plugins NAME``: the child process the supervisor starts."""

from __future__ import annotations

import sys

from lannode.plugins import discover


def run(name: str) -> int:
    ep = discover().get(name)
    if ep is None:
        print(f"lannode: no plugin named {name!r} is installed", file=sys.stderr)
        return 2
    result = ep.load()()
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python -m lannode.plugins NAME", file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(run(sys.argv[1]))
