"""A recipient's outbox in memory (the outbox table in chat.sqlite is its durable copy):
what is due, what waits for a receipt, deadlines and backoff."""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field

import trio


@dataclass(slots=True)
class Pending:
    id: str
    kind: str  # "msg" or "read"
    frame: bytes
    deadline: float = 0.0
    attempts: int = 0
    not_before: float = -math.inf  # a message on its way over a front's data channel: the link waits till then
    acknowledged: bool = False
    group: bool = False  # a group message (its receipts are counted per member)


@dataclass
class RecipientQueue:
    """A recipient's outbox in memory; the outbox table is its durable copy. Every
    operation on it is O(1) or O(log n) per message: at a thousand messages a second
    a backlog must not make each one slower."""

    due: deque[Pending] = field(default_factory=deque)  # to send, in order
    waiting: dict[str, Pending] = field(default_factory=dict)  # sent, not yet acknowledged
    messages: dict[str, Pending] = field(default_factory=dict)  # every "msg" item, due or waiting
    deadlines: list[tuple[float, str]] = field(default_factory=list)  # a heap over waiting's deadlines; stale entries are skipped
    failures: int = 0
    backoff_until: float = -math.inf
    wake: trio.Event = field(default_factory=trio.Event)

    def add(self, item: Pending) -> None:
        if item.kind == "msg":
            self.messages[item.id] = item
        self.due.append(item)
        self.wake.set()

    def wait_for_receipt(self, item: Pending) -> None:
        self.waiting[item.id] = item
        heapq.heappush(self.deadlines, (item.deadline, item.id))

    def acknowledge(self, message_id: str) -> None:
        item = self.messages.pop(message_id, None)
        if item is not None:
            item.acknowledged = True  # if it is still due (its direct copy arrived first), the sender skips it
            self.waiting.pop(message_id, None)

    def drop_acknowledged(self) -> None:
        while self.due and self.due[0].acknowledged:
            self.due.popleft()

    def _live(self, deadline: float, message_id: str) -> Pending | None:
        item = self.waiting.get(message_id)
        return item if item is not None and item.deadline == deadline else None

    def expired(self, now: float) -> list[Pending]:
        """The waiting items whose deadline passed, oldest first, taken out of waiting."""
        out = []
        while self.deadlines and self.deadlines[0][0] <= now:
            deadline, message_id = heapq.heappop(self.deadlines)
            item = self._live(deadline, message_id)
            if item is not None:
                del self.waiting[message_id]
                out.append(item)
        return out

    def next_deadline(self) -> float:
        while self.deadlines:
            deadline, message_id = self.deadlines[0]
            if self._live(deadline, message_id) is not None:
                return deadline
            heapq.heappop(self.deadlines)
        return math.inf

    def retry_now(self) -> None:
        """The peer is back: no more backoff, and resend whatever waits for a receipt."""
        self.backoff_until = -math.inf
        self.failures = 0
        for item in self.waiting.values():
            item.deadline = -math.inf
            heapq.heappush(self.deadlines, (item.deadline, item.id))
        self.wake.set()


def message_frame(body: str) -> bytes:
    # the stored body was checked when it was written: no re-parse, no re-verify
    return b'{"t":"msg","m":' + body.encode() + b"}"


