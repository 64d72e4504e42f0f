"""One delivery attempt per 'webhooks' queue message, and the next attempt on failure.

An attempt first claims the delivery with one guarded UPDATE (attempts + 1, a claim token and a
claim lease): a duplicate or stale message finds it claimed, delivered, failed or not yet due and
does nothing, so one message never makes two POSTs at once. The POST is made outside any
transaction. Its outcome is written under the claim token: delivered; or pending again after the
next delay of WEBHOOK_RETRY_DELAYS_SECONDS, with a delayed outbox message; or failed once every
attempt (1 + the number of delays) was made. A sender that dies mid-attempt leaves the claim to
lapse: the host redelivers the message (or the janitor re-drives the delivery) and the next claim
counts a new attempt. Delivery is therefore at least once; receivers deduplicate on webhook-id.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from repositories.database import Database
from repositories.webhook_queries import WebhookQueries
from schemas.jobs import OutboxMessage
from services.engine.outbox_relay import OutboxRelay
from services.webhooks.events import delivery_messages
from services.webhooks.sender import AttemptResult, WebhookSender
from services.webhooks.signing import WebhookSigner

logger = logging.getLogger(__name__)
EARLY_SECONDS = 5.0  # a message this much before the attempt is due still counts as due (clock skew)


@dataclass(frozen=True)
class DeliveryOptions:
    retry_delays_seconds: tuple[float, ...]
    timeout_seconds: float

    @property
    def max_attempts(self) -> int:
        return 1 + len(self.retry_delays_seconds)

    @property
    def claim_seconds(self) -> float:
        """How long an attempt holds its delivery: well past the request's own time limits."""
        return 2 * self.timeout_seconds + 30.0

    def delay_after(self, attempts: int) -> float | None:
        """The wait before the next attempt after ``attempts`` failed ones; None: no attempt left."""
        return self.retry_delays_seconds[attempts - 1] if attempts <= len(self.retry_delays_seconds) else None


class WebhookDeliverer:
    def __init__(
        self,
        db: Database,
        relay: OutboxRelay,
        sender: WebhookSender,
        signer: WebhookSigner,
        options: DeliveryOptions,
    ) -> None:
        self._db = db
        self._relay = relay
        self._sender = sender
        self._signer = signer
        self._options = options

    def deliver(self, delivery_id: int) -> str:
        """Make the attempt ``delivery_id`` is due for, if it is; returns what happened (for logs and
        tests): "delivered", "retry", "failed" or "skipped"."""
        key = self._signer.key()  # no secret, or Key Vault down: raise before claiming (no attempt spent)
        with self._db.statements() as repo:
            claim = WebhookQueries.within(repo).claim_delivery(delivery_id, self._options.claim_seconds, EARLY_SECONDS)
            if claim is None:
                state = WebhookQueries.within(repo).delivery_state(delivery_id)
        if claim is None:
            logger.info("webhook delivery %s: nothing to do (%s)", delivery_id, _describe(state))
            return "skipped"
        body = json.dumps(claim["payload"], separators=(",", ":"), sort_keys=True)
        headers = self._signer.headers(key, claim["webhook_id"], body)
        try:
            result = self._sender.post(claim["url"], body.encode(), headers)
        except Exception as exc:  # a bug or an error nobody foresaw: a failed attempt, not a stuck claim
            logger.exception("webhook delivery %s: the attempt raised", delivery_id)
            result = AttemptResult(False, None, f"internal error: {type(exc).__name__}: {exc}")
        return self._record(claim, result)

    def _record(self, claim: dict[str, Any], result: AttemptResult) -> str:
        delivery_id, attempts = int(claim["delivery_id"]), int(claim["attempts"])
        extra = {"job_id": claim["job_id"], "delivery_id": delivery_id, "attempt": attempts}
        outbox: list[OutboxMessage] = []
        with self._db.transaction() as repo:
            queries = WebhookQueries.within(repo)
            if result.delivered:
                assert result.status_code is not None
                recorded = queries.record_delivered(delivery_id, claim["claim_token"], result.status_code)
                outcome = "delivered"
            else:
                delay = self._options.delay_after(attempts)
                error = (result.error or "failed")[:1000]
                row = queries.record_failed_attempt(delivery_id, claim["claim_token"], error, result.status_code, delay)
                recorded = row is not None
                outcome = "retry" if delay is not None else "failed"
                if row is not None and delay is not None:
                    body = {"delivery_id": delivery_id, "job_id": claim["job_id"]}
                    outbox = repo.add_outbox_messages("webhooks", [body], claim["job_id"], delay_seconds=delay)
        if not recorded:
            logger.warning("webhook delivery %s: attempt %d outcome not recorded (claim lost)", delivery_id, attempts)
            return "skipped"
        self._relay.publish(outbox)
        if outcome == "delivered":
            logger.info("webhook delivered (attempt %d, HTTP %s)", attempts, result.status_code, extra=extra)
        else:
            logger.warning(
                "webhook attempt %d of %d failed: %s%s",
                attempts,
                self._options.max_attempts,
                result.error,
                "" if outcome == "retry" else "; no attempt left, delivery failed",
                extra=extra,
            )
        return outcome

    def close(self) -> None:
        self._sender.close()


def redrive_lost_deliveries(db: Database, relay: OutboxRelay, older_than_seconds: float, limit: int) -> int:
    """Janitor: open deliveries whose message was lost get a new one (see take_lost_deliveries)."""
    with db.transaction() as repo:
        rows = WebhookQueries.within(repo).take_lost_deliveries(older_than_seconds, limit)
        outbox = delivery_messages(repo, rows)
    relay.publish(outbox)
    return len(rows)


def _describe(state: dict[str, Any] | None) -> str:
    if state is None:
        return "no such delivery"
    return f"{state['status']}, {state['attempts']} attempts, next at {state['next_attempt_at']}"
