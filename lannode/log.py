"""Logging to stderr, one line per event with a level.

Under systemd (``$JOURNAL_STREAM`` set) the journal stamps the time itself, so the
line starts at the level; elsewhere it starts with a local timestamp.
"""

from __future__ import annotations

import logging
import os
import sys


def setup(level: str) -> None:
    stamp = "" if os.environ.get("JOURNAL_STREAM") else "%(asctime)s.%(msecs)03d "
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{stamp}%(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # trio-websocket logs every handshake at DEBUG; keep it for when we ask for it.
    logging.getLogger("trio-websocket").setLevel(max(root.level, logging.INFO))
