"""What a job's end owes its webhook subscribers: one delivery per subscription, with its payload
fixed now (every attempt sends the same body and ``webhook-id``), and an outbox message on the
'webhooks' queue, all in the caller's transaction (the one that ended the job).

Payload (JSON, Standard Webhooks shape)::

    {"type": "job.completed", "timestamp": "<when the job ended, RFC 3339>",
     "data": {"job_id", "job_type", "status", "error", "stage", "total_stages", "created_at",
              "completed_at", "result" (null when over RESULT_MAX_BYTES), "result_omitted",
              "links": {"status": "<GET /api/jobs/{id} URL, or null>"}}}
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from repositories.engine_repository import EngineRepository
from repositories.webhook_queries import WebhookQueries
from schemas.jobs import JobRecord, OutboxMessage

WEBHOOK_QUEUE = "webhooks"  # logical outbox queue
RESULT_MAX_BYTES = 16 * 1024  # a larger job result is left out of the payload (fetch the status URL)


class WebhookMessage(BaseModel):
    """A 'webhooks' queue message: make the attempt this delivery is due for."""

    model_config = ConfigDict(extra="ignore")

    delivery_id: int = Field(ge=1)
    job_id: str | None = None


def event_type(job: JobRecord) -> str:
    return f"job.{job.status}"


def new_webhook_id() -> str:
    return f"msg_{secrets.token_hex(16)}"


def event_payload(job: JobRecord, status_url: str | None) -> dict[str, Any]:
    result = job.result
    encoded = json.dumps(result, separators=(",", ":"), default=str) if result is not None else ""
    omitted = len(encoded.encode()) > RESULT_MAX_BYTES
    moment = job.completed_at or job.updated_at
    return {
        "type": event_type(job),
        "timestamp": moment.isoformat(),
        "data": {
            "job_id": job.job_id,
            "job_type": job.job_type,
            "status": str(job.status),
            "error": job.error,
            "stage": job.stage,
            "total_stages": job.total_stages,
            "created_at": job.created_at.isoformat(),
            "completed_at": job.completed_at.isoformat() if job.completed_at else None,
            "result": None if omitted else result,
            "result_omitted": omitted,
            "links": {"status": status_url},
        },
    }


def delivery_messages(repo: EngineRepository, rows: Sequence[dict[str, Any]]) -> list[OutboxMessage]:
    """Outbox messages (no delay) for deliveries given as rows with ``delivery_id`` and ``job_id``."""
    messages: list[OutboxMessage] = []
    for row in rows:
        body = {"delivery_id": int(row["delivery_id"]), "job_id": row["job_id"]}
        messages += repo.add_outbox_messages(WEBHOOK_QUEUE, [body], row["job_id"])
    return messages


def schedule_deliveries(
    repo: EngineRepository, job: JobRecord, subscription_id: int | None = None
) -> list[OutboxMessage]:
    """A delivery (first attempt now) for each subscription of ``job``, which has just ended, or
    for the one subscription ``subscription_id`` (added to a job that had ended already)."""
    if not job.status.is_terminal:
        return []
    queries = WebhookQueries.within(repo)
    rows = []
    for subscription in queries.subscriptions_of_job(job.job_id, subscription_id):
        payload = event_payload(job, subscription["status_url"])
        delivery_id = queries.insert_delivery(
            subscription["subscription_id"], job.job_id, new_webhook_id(), payload["type"], payload
        )
        rows.append({"delivery_id": delivery_id, "job_id": job.job_id})
    return delivery_messages(repo, rows)
