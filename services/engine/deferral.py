"""Re-send a message later when Postgres is unavailable, instead of burning its dequeue count.

The host retries a failed message after visibilityTimeout and poisons it after maxDequeueCount
(seconds, in total). A database outage can last longer, so the handlers catch
``DatabaseUnavailableError`` and send the same message again with a growing delay (storage is a
different service, usually still up). After ``max_deferrals`` the error propagates to the host.
"""

from __future__ import annotations

import logging
from typing import Any

from services.engine.queue_publisher import OutgoingMessage, QueuePublisher
from services.engine.retry_policy import backoff_seconds

logger = logging.getLogger(__name__)


class MessageDeferral:
    def __init__(self, publisher: QueuePublisher, *, max_deferrals: int, max_delay_seconds: float) -> None:
        self._publisher = publisher
        self._max_deferrals = max_deferrals
        self._max_delay = max_delay_seconds

    def defer(self, queue: str, body: dict[str, Any], deferrals: int) -> float | None:
        """Send ``body`` again with deferrals+1 and a backoff delay; None when the budget is spent."""
        if deferrals >= self._max_deferrals:
            return None
        delay = backoff_seconds(deferrals + 1, base=1.0, cap=self._max_delay)
        self._publisher.send(OutgoingMessage(queue, {**body, "deferrals": deferrals + 1}, delay))
        return delay
