"""The event bus: what services publish (a peer up or down, a message, progress) and the
API's subscribers receive. A slow subscriber loses events (counted), never stalls the
service that publishes; a subscriber whose connection closed is dropped.

The bus knows nothing of the transport: a subscriber is a function that queues one
encoded event (``lannode.net.api_server`` makes them from WebSockets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from lannode.core import api

PROGRESS_EVERY = 0.25  # seconds between two progress events of one long piece of work (a transfer, a put, a get)


class SubscriberGone(Exception):
    """Raised by a subscriber's ``send`` once its connection is closed."""


@dataclass(eq=False, slots=True)
class Subscriber:
    send: Callable[[str], bool]  # queue one event frame: False if its queue is full; SubscriberGone once closed
    connection: int = 0
    patterns: set[str] = field(default_factory=set)
    dropped: int = 0


class EventBus:
    """Fan-out of events to subscribers; a slow subscriber loses events, never stalls us."""

    def __init__(self) -> None:
        self._subscribers: set[Subscriber] = set()
        self.dropped = 0

    def publish(self, topic: str, data: Any) -> None:
        frame: str | None = None
        for sub in list(self._subscribers):
            if any(api.topic_matches(p, topic) for p in sub.patterns):
                frame = frame or api.event(topic, data)
                self._deliver(sub, frame)

    def publish_to(self, connection: int, topic: str, data: Any) -> bool:
        """An event for one connection only, subscribed or not; False if it is gone."""
        for sub in list(self._subscribers):
            if sub.connection == connection:
                self._deliver(sub, api.event(topic, data))
                return True
        return False

    def _deliver(self, sub: Subscriber, frame: str) -> None:
        try:
            sent = sub.send(frame)
        except SubscriberGone:
            self._subscribers.discard(sub)
            return
        if not sent:
            self.dropped += 1
            sub.dropped += 1

    def add(self, sub: Subscriber) -> None:
        self._subscribers.add(sub)

    def remove(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    def statistics(self) -> dict[str, int]:
        return {"subscribers": len(self._subscribers), "dropped": self.dropped}
