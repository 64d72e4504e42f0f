"""Publishes outbox rows after their transaction committed, then deletes what was sent.

Rows that fail to send stay in the outbox; a later duplicate fan-out (and the janitor) resend
them. Consumers are idempotent, so a message sent twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from repositories.database import Database
from schemas.jobs import OutboxMessage
from services.engine.queue_publisher import OutgoingMessage, QueuePublisher

logger = logging.getLogger(__name__)


class OutboxRelay:
    def __init__(self, db: Database, publisher: QueuePublisher) -> None:
        self._db = db
        self._publisher = publisher

    def publish(self, messages: Sequence[OutboxMessage]) -> int:
        """Send ``messages`` (already committed); returns how many were sent and deleted."""
        if not messages:
            return 0
        now = datetime.now(UTC)
        outgoing = [OutgoingMessage(m.queue, m.body, max(0.0, (m.visible_at - now).total_seconds())) for m in messages]
        sent = self._publisher.send_many(outgoing)
        sent_ids = [m.message_id for m, ok in zip(messages, sent, strict=True) if ok]
        if sent_ids:
            with self._db.transaction() as repo:
                repo.delete_outbox(sent_ids)
        if len(sent_ids) < len(messages):
            logger.warning(
                "outbox: %d of %d messages not sent, kept for retry", len(messages) - len(sent_ids), len(messages)
            )
        return len(sent_ids)
