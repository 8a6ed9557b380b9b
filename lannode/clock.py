"""The wall clock as the services read it, in milliseconds since the Unix epoch (the
sans-IO core never reads a clock: time is an argument there)."""

from __future__ import annotations

import time


def now_ms() -> int:
    return int(time.time() * 1000)
