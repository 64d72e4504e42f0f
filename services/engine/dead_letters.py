"""Messages that cannot be processed: invalid bodies (recorded and removed, never looped) and
poison-queue messages (the task or job is failed with the reason, then fan-in runs as usual; a
webhook delivery still open is failed)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from repositories.database import Database
from repositories.engine_repository import EngineRepository
from repositories.webhook_queries import WebhookQueries
from schemas.jobs import OutboxMessage, TaskStatus
from schemas.messages import JobAction, JobMessage, TaskMessage
from services.engine.conflict_retry import retry_on_conflict
from services.engine.job_lifecycle import fail_job
from services.engine.logging_context import job_logger
from services.engine.outbox_relay import OutboxRelay
from services.engine.registry import JobTypeRegistry
from services.engine.stage_flow import after_task_finished
from services.webhooks.events import WebhookMessage

logger = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class ReceivedMessage:
    """What a queue trigger saw, for the record."""

    queue: str
    body: bytes
    message_id: str | None
    dequeue_count: int | None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")[:10_000]


def parse_message(received: ReceivedMessage, model: type[M]) -> tuple[M | None, str | None]:
    """The message, or None and a one-line reason why it is not a valid ``model``."""
    try:
        return model.model_validate_json(received.body), None
    except ValidationError as exc:
        try:
            json.loads(received.body)
        except ValueError:
            return None, "message body is not valid JSON"
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return None, f"not a valid {model.__name__}: {where}: {first['msg']}"


def insert_dead_letter(
    repo: EngineRepository,
    received: ReceivedMessage,
    reason: str,
    job_id: str | None = None,
    task_id: str | None = None,
) -> None:
    repo.insert_dead_letter(
        queue=received.queue,
        body=received.text,
        reason=reason,
        message_id=received.message_id,
        dequeue_count=received.dequeue_count,
        job_id=job_id,
        task_id=task_id,
    )


class DeadLetterHandler:
    def __init__(self, db: Database, registry: JobTypeRegistry, relay: OutboxRelay) -> None:
        self._db = db
        self._registry = registry
        self._relay = relay

    def record(
        self, received: ReceivedMessage, reason: str, job_id: str | None = None, task_id: str | None = None
    ) -> None:
        with self._db.transaction() as repo:
            insert_dead_letter(repo, received, reason, job_id, task_id)
        logger.error("dead letter from %s: %s", received.queue, reason, extra={"job_id": job_id, "task_id": task_id})

    @retry_on_conflict
    def reconcile_poisoned_task(self, received: ReceivedMessage) -> None:
        message, problem = parse_message(received, TaskMessage)
        if message is None:
            self.record(received, problem or "invalid")
            return
        log = job_logger(logger, message.job_id, message.task_id)
        outbox: list[OutboxMessage] = []
        with self._db.transaction() as repo:
            job = repo.lock_job(message.job_id)
            state = repo.describe_task_state(message.task_id)
            if job is None or state is None:
                reason = "poisoned message names an unknown job/task"
            else:
                last = f"; last error: {state['error']}" if state["error"] else ""
                reason = (
                    f"message moved to {received.queue} after repeated failed deliveries "
                    f"(poison delivery {received.dequeue_count}, {state['attempts']} attempts){last}"
                )
                counters = repo.finish_task(message.task_id, TaskStatus.FAILED, None, reason[:2000])
                controller = self._registry.get(job.job_type)
                if counters is not None and counters.changed and controller is not None:
                    repo.set_task_error_category(message.task_id, "transient")
                    try:
                        params = controller.parse_parameters(job.parameters)
                    except ValueError:
                        outbox = fail_job(repo, job.job_id, "stored job parameters no longer validate")
                    else:
                        outbox = after_task_finished(repo, controller, params, counters, job)
            insert_dead_letter(repo, received, reason, message.job_id, message.task_id)
        log.error("poisoned task message reconciled: %s", reason)
        self._relay.publish(outbox)

    @retry_on_conflict
    def reconcile_poisoned_job(self, received: ReceivedMessage) -> None:
        message, problem = parse_message(received, JobMessage)
        if message is None:
            self.record(received, problem or "invalid")
            return
        reason = (
            f"job message ({message.action}, stage {message.stage}) moved to {received.queue} after repeated "
            f"failed deliveries (poison delivery {received.dequeue_count})"
        )
        outbox: list[OutboxMessage] = []
        with self._db.transaction() as repo:
            job = repo.lock_job(message.job_id)
            # Only a message the job still waits for fails it; a stale one is just recorded. A fan-out
            # whose stage exists was done by another delivery: this one was a duplicate.
            fanned_out = message.action is JobAction.CREATE_STAGE and any(
                s.stage == message.stage for s in repo.list_stages(message.job_id)
            )
            if job is not None and not job.status.is_terminal and job.stage == message.stage and not fanned_out:
                outbox = fail_job(repo, message.job_id, reason)
            elif fanned_out:
                reason += "; a duplicate (its stage was created by another delivery), job left as is"
            else:
                reason += "; stale (the job no longer waits for it), job left as is"
            insert_dead_letter(repo, received, reason, message.job_id)
        job_logger(logger, message.job_id).error("poisoned job message reconciled: %s", reason)
        self._relay.publish(outbox)

    @retry_on_conflict
    def reconcile_poisoned_webhook(self, received: ReceivedMessage) -> None:
        message, problem = parse_message(received, WebhookMessage)
        if message is None:
            self.record(received, problem or "invalid")
            return
        reason = (
            f"webhook message moved to {received.queue} after repeated failed deliveries "
            f"(poison delivery {received.dequeue_count})"
        )
        with self._db.transaction() as repo:
            failed = WebhookQueries.within(repo).fail_open_delivery(message.delivery_id, reason)
            if failed is None:
                reason += "; the delivery was no longer open, left as is"
            else:
                reason += f"; delivery {message.delivery_id} of job {failed['job_id']} failed"
            # No job_id on the letter: requeueing a dead letter with one retries that job, and a
            # webhook's job has ended on purpose (requeueing this letter is refused instead).
            insert_dead_letter(repo, received, reason)
        logger.error("poisoned webhook message reconciled: %s", reason, extra={"delivery_id": message.delivery_id})
