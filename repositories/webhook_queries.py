"""Statements of job-completion webhooks: subscriptions, deliveries and their attempts.

They live in repositories/sql/webhooks.sql and run on the connection of an open
``Database.transaction()`` / ``statements()`` (``WebhookQueries.within(repo)``). Driver errors are
translated by ``Database`` like every other statement's.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

from repositories.named_queries import NamedQueries


class WebhookQueries(NamedQueries):
    SQL_FILE = "webhooks.sql"

    def add_subscription(self, job_id: str, url: str, status_url: str | None) -> int | None:
        """The new subscription's id; None when the job already has this URL."""
        row = self._one("add_subscription", {"job_id": job_id, "url": url, "status_url": status_url})
        return int(row["subscription_id"]) if row else None

    def count_subscriptions(self, job_id: str) -> int:
        row = self._one("count_subscriptions", {"job_id": job_id})
        return int(row["n"]) if row else 0

    def subscriptions_of_job(self, job_id: str, subscription_id: int | None = None) -> list[dict[str, Any]]:
        return self._all("subscriptions_of_job", {"job_id": job_id, "subscription_id": subscription_id})

    def insert_delivery(
        self, subscription_id: int, job_id: str, webhook_id: str, event_type: str, payload: dict[str, Any]
    ) -> int:
        params = {
            "subscription_id": subscription_id,
            "job_id": job_id,
            "webhook_id": webhook_id,
            "event_type": event_type,
            "payload": Jsonb(payload),
        }
        row = self._one("insert_delivery", params)
        assert row is not None
        return int(row["delivery_id"])

    def claim_delivery(self, delivery_id: int, claim_seconds: float, early_seconds: float) -> dict[str, Any] | None:
        params = {"delivery_id": delivery_id, "claim_seconds": claim_seconds, "early_seconds": early_seconds}
        return self._one("claim_delivery", params)

    def delivery_state(self, delivery_id: int) -> dict[str, Any] | None:
        return self._one("delivery_state", {"delivery_id": delivery_id})

    def record_delivered(self, delivery_id: int, claim_token: UUID, status_code: int) -> bool:
        params = {"delivery_id": delivery_id, "claim_token": claim_token, "status_code": status_code}
        return self._one("record_delivered", params) is not None

    def record_failed_attempt(
        self, delivery_id: int, claim_token: UUID, error: str, status_code: int | None, retry_seconds: float | None
    ) -> dict[str, Any] | None:
        """The delivery after a failed attempt (pending again, or failed when ``retry_seconds`` is
        None); None when this claim no longer holds it."""
        params = {
            "delivery_id": delivery_id,
            "claim_token": claim_token,
            "error": error,
            "status_code": status_code,
            "retry_seconds": retry_seconds,
        }
        return self._one("record_failed_attempt", params)

    def fail_open_delivery(self, delivery_id: int, error: str) -> dict[str, Any] | None:
        return self._one("fail_open_delivery", {"delivery_id": delivery_id, "error": error})

    def take_lost_deliveries(self, older_than_seconds: float, limit: int) -> list[dict[str, Any]]:
        return self._all("take_lost_deliveries", {"older_than_seconds": older_than_seconds, "limit": limit})

    def webhooks_of_job(self, job_id: str) -> list[dict[str, Any]]:
        return self._all("webhooks_of_job", {"job_id": job_id})
