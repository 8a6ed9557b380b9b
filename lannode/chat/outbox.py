"""The outbox in memory (the outbox table in chat.sqlite is its durable copy): per
recipient what is due, what waits for a receipt, deadlines and backoff; and the
delivery task that works each recipient's queue over the peer link."""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from lannode.core.chat import ReadFrame, encode_frame
from lannode.core.link import CHANNEL_CHAT
from lannode.net.links import LinkError, Links, PeerLink

log = logging.getLogger("lannode.chat")


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




class Delivery:
    """Every recipient's queue, and one task per recipient that sends what is due in
    order over the peer link, resends what was not acknowledged within ``ack_timeout``
    (less often each time), and backs off (1 s doubling to 60 s) while the peer cannot
    be reached. ``reads_sent(recipient, ids)`` is told of read receipts handed to a
    link (a courtesy: done once sent); ``reached(link)`` of every link a queue used."""

    def __init__(self, links: Links, *, ack_timeout: float, reads_sent: Callable[[str, list[str]], None], reached: Callable[[PeerLink], None]) -> None:
        self.links = links
        self.ack_timeout = ack_timeout
        self.queues: dict[str, RecipientQueue] = {}
        self._reads_sent = reads_sent
        self._reached = reached
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Delivery tasks run in ``nursery`` from now on, for queues made before as well."""
        self._nursery = nursery
        for recipient, queue in self.queues.items():
            nursery.start_soon(self._deliver_to, recipient, queue)

    def pending(self) -> int:
        return sum(len(q.due) + len(q.waiting) for q in self.queues.values())

    def retry_now(self, recipient: str) -> None:
        queue = self.queues.get(recipient)
        if queue is not None:
            queue.retry_now()

    def enqueue(self, recipient: str, item: Pending) -> None:
        queue = self.queues.get(recipient)
        if queue is None:
            queue = self.queues[recipient] = RecipientQueue()
            if self._nursery is not None:
                self._nursery.start_soon(self._deliver_to, recipient, queue)
        elif item.kind == "msg" and not queue.due and self._send_now(recipient, queue, item):
            return
        queue.add(item)

    def _send_now(self, recipient: str, queue: RecipientQueue, item: Pending) -> bool:
        """Hand a message straight to an open link when nothing is due before it: what the
        delivery task would do next, without waking it (a scheduler pass and its loop, per
        message). False when it must go the usual way: no open link, a backoff, a hold for
        a data channel, or a full link queue."""
        now = trio.current_time()
        if item.not_before > now or now < queue.backoff_until:
            return False
        link = self.links.open_link(recipient)
        if link is None or not link.send_nowait(CHANNEL_CHAT, item.frame):
            return False
        item.deadline = now + self.ack_timeout
        item.attempts = 1
        queue.messages[item.id] = item
        soonest = queue.next_deadline()
        queue.wait_for_receipt(item)
        if item.deadline < soonest:
            queue.wake.set()  # the delivery task sleeps until a later deadline: it must wake for this one
        return True

    async def _deliver_to(self, recipient: str, queue: RecipientQueue) -> None:
        while True:
            now = trio.current_time()
            queue.due.extendleft(reversed(queue.expired(now)))  # unacknowledged: send again, in order
            queue.drop_acknowledged()
            if queue.due and now >= queue.backoff_until:
                try:
                    link = await self.links.link_to(recipient)
                    reads = []
                    while queue.due:
                        item = queue.due[0]
                        if item.acknowledged:
                            queue.due.popleft()  # by a data channel's receipt, or after its resend was queued
                            continue
                        if item.not_before > trio.current_time():
                            break  # its direct copy may be acknowledged yet; what follows keeps its order
                        if item.kind == "read":
                            reads.append(item.id)
                        else:
                            await link.send(CHANNEL_CHAT, item.frame)
                            # resent on silence, less often each time (a peer that will not take it)
                            item.deadline = trio.current_time() + self.ack_timeout * 2 ** min(item.attempts, 4)
                            item.attempts += 1
                            queue.wait_for_receipt(item)
                        queue.due.popleft()
                    if reads:
                        await link.send(CHANNEL_CHAT, encode_frame(ReadFrame(tuple(reads))))
                        self._reads_sent(recipient, reads)
                    queue.failures = 0
                    self._reached(link)
                except LinkError as exc:
                    queue.failures += 1
                    backoff = min(60.0, 2.0 ** (queue.failures - 1))
                    queue.backoff_until = trio.current_time() + backoff
                    log.debug("chat to %s: %s; retry in %.0f s", recipient, exc, backoff)
            queue.drop_acknowledged()
            wake_at = min(queue.next_deadline(), max(queue.backoff_until, queue.due[0].not_before) if queue.due else math.inf)
            with trio.move_on_at(wake_at):
                await queue.wake.wait()
            queue.wake = trio.Event()
