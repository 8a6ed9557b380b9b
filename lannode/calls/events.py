"""What the engine (asyncio side) reports to the participant (trio side), across the bridge.

Plain frozen dataclasses, so that the trio side can tell them apart without
importing aiortc.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Signal:
    node: str
    front: str
    kind: str
    data: Any


@dataclass(frozen=True, slots=True)
class ChannelOpen:
    node: str
    front: str


@dataclass(frozen=True, slots=True)
class ChannelMessage:
    node: str
    front: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionClosed:
    front: str
    reason: str


