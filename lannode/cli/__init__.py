"""The ``lannode`` command.

Every command that reports takes ``--json`` and then prints one JSON document with
the field names documented in the README; without it, lines for a person. Exit
codes: 0 done, 1 the node is not running or refused, 2 bad usage or a broken
config. Errors are one line on stderr, starting with ``lannode:``.

One module per group of commands (``node``, ``peers``, ``store``, ``chat``,
``calls``, ``files``, ``drive``, ``mail``), what they share in ``render``, the
parser and the entry point in ``main``. Heavy imports happen inside the command
that needs them, so ``lannode status`` answers quickly.
"""

from lannode.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
