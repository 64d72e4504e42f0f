"""Subscribing a job to its ``callback_url`` at submission, and the webhooks part of its status.

A subscription is unique per job and URL (the URL is not part of the job id): resubmitting the
same job with another URL adds a subscriber, with the same URL changes nothing. A job that has
ended already owes a new subscriber its delivery at once (``JobService``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from repositories.engine_repository import EngineRepository
from repositories.webhook_queries import WebhookQueries
from schemas.errors import InvalidRequestError
from services.webhooks.urls import CallbackUrlError, Resolver, check_callback_url, redact_url, resolve_host

MAX_SUBSCRIPTIONS_PER_JOB = 10


@dataclass(frozen=True)
class CallbackPolicy:
    """What callback URLs the server takes (from settings). ``signing_configured``: a secret is
    set (WEBHOOK_SECRET or WEBHOOK_SECRET_NAME); without one no callback is accepted."""

    signing_configured: bool = False
    allow_http: bool = False
    allow_private: bool = False
    max_attempts: int = 6
    resolve: Resolver = field(default=resolve_host, compare=False)

    def problem(self, url: str) -> str | None:
        """Why ``url`` is refused (for a 400 naming callback_url), or None."""
        if not self.signing_configured:
            return "webhooks are not enabled on this server (no WEBHOOK_SECRET or WEBHOOK_SECRET_NAME)"
        try:
            check_callback_url(url, allow_http=self.allow_http, allow_private=self.allow_private, resolve=self.resolve)
        except CallbackUrlError as exc:
            return str(exc)
        return None


def subscribe(repo: EngineRepository, job_id: str, url: str, status_url: str | None) -> int | None:
    """Add ``url`` to the job's subscribers (in the submission's transaction); its id, or None when
    the job already has it. More than MAX_SUBSCRIPTIONS_PER_JOB is a 400 naming callback_url."""
    queries = WebhookQueries.within(repo)
    before = queries.count_subscriptions(job_id)
    subscription_id = queries.add_subscription(job_id, url, status_url)
    if subscription_id is not None and before >= MAX_SUBSCRIPTIONS_PER_JOB:
        raise InvalidRequestError(
            "too many callback URLs",
            details=[{"field": "callback_url", "message": f"a job has at most {MAX_SUBSCRIPTIONS_PER_JOB}"}],
        )
    return subscription_id


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def webhook_states(repo: EngineRepository, job_id: str, max_attempts: int) -> list[dict[str, Any]]:
    """Each subscriber of the job with its latest delivery, for GET /api/jobs/{id} (query redacted)."""
    return [
        {
            "url": redact_url(row["url"]),
            "status": row["status"] or "waiting",
            "event_type": row["event_type"],
            "webhook_id": row["webhook_id"],
            "attempts": row["attempts"] or 0,
            "max_attempts": max_attempts,
            "next_attempt_at": _iso(row["next_attempt_at"]),
            "last_error": row["last_error"],
            "last_status_code": row["last_status_code"],
            "delivered_at": _iso(row["delivered_at"]),
            "subscribed_at": _iso(row["subscribed_at"]),
        }
        for row in WebhookQueries.within(repo).webhooks_of_job(job_id)
    ]
