"""What the operator endpoints do: queue depths, dead letters (list, requeue, delete), live poison
messages (peek, move back, purge) and failure / throughput statistics.

Requeueing a dead letter puts the work back the way the rest of the engine does: a dead letter of
a job (a poisoned task or job message) retries that job through ``JobControl.restart`` in the same
transaction that marks the dead letter requeued (so state and queue agree, like the retry button);
a message that never reached a job (its body did not parse) is re-sent to its queue only if it now
parses, through the outbox. Either way the messages are published after commit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from repositories.database import Database
from repositories.operations_queries import OperationsQueries
from schemas.errors import ConflictError, InvalidRequestError, NotFoundError
from schemas.jobs import OutboxMessage
from schemas.messages import JobMessage, TaskMessage
from services.engine.conflict_retry import retry_on_conflict
from services.engine.dead_letters import ReceivedMessage, parse_message
from services.engine.job_control import RETRYABLE, JobControl
from services.engine.logging_context import job_logger
from services.engine.outbox_relay import OutboxRelay
from services.operations.queues import QueueInspector, iso

logger = logging.getLogger(__name__)

POISON_SUFFIX = "-poison"
DEAD_LETTER_STATUSES = ("open", "requeued", "all")
DEAD_LETTER_DEFAULT_LIMIT = 50
DEAD_LETTER_MAX_LIMIT = 500
FAILURE_GROUP_LIMIT = 100
FAILURE_JOB_IDS = 10
FAILURE_REASON_CHARS = 300
MAX_STATS_HOURS = 24 * 30
MAX_STATS_MINUTES = 24 * 60


@dataclass(frozen=True)
class OperationsOptions:
    job_queue: str
    task_queue: str
    high_priority_task_queue: str
    webhook_queue: str | None = None

    @property
    def roles(self) -> dict[str, str]:
        """Queue name → logical role ("jobs", "tasks", "tasks_high", "webhooks"), as the outbox names them."""
        roles = {self.job_queue: "jobs", self.task_queue: "tasks", self.high_priority_task_queue: "tasks_high"}
        if self.webhook_queue:
            roles[self.webhook_queue] = "webhooks"
        return roles

    @property
    def poison_queues(self) -> tuple[str, ...]:
        return tuple(f"{name}{POISON_SUFFIX}" for name in self.roles)


def invalid(field: str, message: str, summary: str = "invalid request") -> InvalidRequestError:
    return InvalidRequestError(summary, details=[{"field": field, "message": message}])


def parse_dead_letter_id(raw: str) -> int:
    """A route's dead-letter id: a positive integer (bigserial)."""
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18 or int(raw) < 1:
        raise invalid("id", "must be a positive integer", "invalid dead letter id")
    return int(raw)


def dead_letter_summary(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["dead_letter_id"],
        "queue": row["queue"],
        "reason": row["reason"],
        "job_id": row["job_id"],
        "task_id": row["task_id"],
        "created_at": iso(row["received_at"]),
        "body": row["body"],
        "message_id": row["message_id"],
        "dequeue_count": row["dequeue_count"],
        "status": "open" if row["requeued_at"] is None else "requeued",
        "requeued_at": iso(row["requeued_at"]),
    }


def source_queue_of(queue: str) -> str:
    return queue.removesuffix(POISON_SUFFIX)


class Operations:
    def __init__(self, db: Database, relay: OutboxRelay, inspector: QueueInspector, options: OperationsOptions) -> None:
        self._db = db
        self._relay = relay
        self._inspector = inspector
        self._options = options

    # --- queues ---------------------------------------------------------------------------------

    def queues(self) -> dict[str, Any]:
        entries = []
        for name, role in self._options.roles.items():
            for queue, poison in ((name, False), (f"{name}{POISON_SUFFIX}", True)):
                state = self._inspector.state(queue)
                entries.append(
                    {
                        "name": queue,
                        "role": role,
                        "poison": poison,
                        "approximate_messages": state.approximate_messages,
                        "oldest_message_age_seconds": state.oldest_age_seconds(datetime.now(UTC)),
                    }
                )
        return {"queues": entries}

    def _poison_queue(self, queue: str) -> str:
        if queue not in self._options.poison_queues:
            raise invalid("queue", f"must be one of {list(self._options.poison_queues)}", "unknown poison queue")
        return queue

    def poison_messages(self, queue: str) -> dict[str, Any]:
        name = self._poison_queue(queue)
        return {"queue": name, "messages": self._inspector.peek(name)}

    def requeue_poison(self, queue: str) -> dict[str, Any]:
        name = self._poison_queue(queue)
        source = source_queue_of(name)
        report = self._inspector.move_all(name, source)
        logger.warning("poison queue %s: %d messages moved back to %s", name, report.moved, source)
        return {
            "queue": name,
            "source_queue": source,
            "requeued": report.moved,
            "failed": report.failed,
            "remaining": report.remaining,
        }

    def purge_poison(self, queue: str) -> dict[str, Any]:
        name = self._poison_queue(queue)
        report = self._inspector.purge(name)
        logger.warning("poison queue %s: %d messages purged", name, report.moved)
        return {"queue": name, "deleted": report.moved, "failed": report.failed, "remaining": report.remaining}

    # --- dead letters ---------------------------------------------------------------------------

    def dead_letters(self, *, limit: int | None, status: str | None) -> dict[str, Any]:
        if status is not None and status not in DEAD_LETTER_STATUSES:
            raise invalid("status", f"must be one of {list(DEAD_LETTER_STATUSES)}", "invalid query parameters")
        status = None if status == "all" else status
        limit = DEAD_LETTER_DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= DEAD_LETTER_MAX_LIMIT:
            raise invalid("limit", f"must be between 1 and {DEAD_LETTER_MAX_LIMIT}", "invalid query parameters")
        with self._db.statements() as repo:
            rows = OperationsQueries.within(repo).list_dead_letters(status=status, limit=limit)
        return {"dead_letters": [dead_letter_summary(r) for r in rows]}

    def delete_dead_letter(self, dead_letter_id: int) -> None:
        with self._db.statements() as repo:
            if not OperationsQueries.within(repo).delete_dead_letter(dead_letter_id):
                raise NotFoundError(f"dead letter {dead_letter_id} not found")

    @retry_on_conflict
    def requeue_dead_letter(self, dead_letter_id: int) -> dict[str, Any]:
        """Put a dead letter's work back (see the module doc). NotFoundError for an unknown id,
        ConflictError (with a one-line reason) when it cannot be requeued."""
        outbox: list[OutboxMessage]
        with self._db.transaction() as repo:
            ops = OperationsQueries.within(repo)
            letter = ops.lock_dead_letter(dead_letter_id)
            if letter is None:
                raise NotFoundError(f"dead letter {dead_letter_id} not found")
            if letter["requeued_at"] is not None:
                raise ConflictError(
                    f"dead letter {dead_letter_id} was already requeued at {iso(letter['requeued_at'])}"
                )
            if letter["job_id"]:
                job_id = str(letter["job_id"])
                job = repo.lock_job(job_id)
                if job is None:
                    raise ConflictError(f"cannot requeue: its job {job_id} no longer exists")
                if job.status not in RETRYABLE:
                    raise ConflictError(
                        f"cannot requeue: its job is {job.status}; only {', '.join(RETRYABLE)} jobs can be retried"
                    )
                restarted, outbox = JobControl.restart(repo, job)
                result = {"action": "job_retried", "job_id": job_id, "job_status": str(restarted.status)}
            else:
                role, job_id, body = self._reparsed(letter)
                if not ops.job_exists(job_id):
                    raise ConflictError(f"cannot requeue: its message names job {job_id}, which does not exist")
                outbox = repo.add_outbox_messages(role, [body], job_id)
                result = {"action": "message_resent", "job_id": job_id, "queue": self._queue_name(role)}
            ops.mark_dead_letter_requeued(dead_letter_id)
        self._relay.publish(outbox)
        job_logger(logger, result["job_id"]).warning("dead letter %d requeued: %s", dead_letter_id, result["action"])
        return {"id": dead_letter_id, "status": "requeued", **result}

    def _queue_name(self, role: str) -> str:
        return next(name for name, r in self._options.roles.items() if r == role)

    def _reparsed(self, letter: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
        """(role, job id, body) of a dead letter's message that parses now; ConflictError otherwise."""
        source = source_queue_of(str(letter["queue"]))
        role = self._options.roles.get(source)
        if role is None:
            raise ConflictError(f"cannot requeue: its queue {letter['queue']} is not one of this app's queues")
        if role == "webhooks":
            raise ConflictError(
                "cannot requeue a webhook message: its delivery is recorded as failed; resubmit the job with "
                "its callback_url to be notified again"
            )
        model: type[BaseModel] = JobMessage if role == "jobs" else TaskMessage
        received = ReceivedMessage(str(letter["queue"]), str(letter["body"]).encode("utf-8"), None, None)
        message, problem = parse_message(received, model)
        if message is None:
            raise ConflictError(f"cannot requeue: its message still does not parse ({problem})")
        assert isinstance(message, JobMessage | TaskMessage)
        body = message.model_dump(mode="json", exclude_defaults=True)
        if isinstance(message, JobMessage):
            body["stage"] = message.stage  # always explicit, like services.engine.job_lifecycle.queue_job_message
        return role, message.job_id, body

    # --- statistics -----------------------------------------------------------------------------

    def failure_stats(self, hours: int | None) -> dict[str, Any]:
        hours = 24 if hours is None else hours
        if not 1 <= hours <= MAX_STATS_HOURS:
            raise invalid("hours", f"must be between 1 and {MAX_STATS_HOURS}", "invalid query parameters")
        with self._db.statements() as repo:
            rows = OperationsQueries.within(repo).failure_groups(
                hours=hours, limit=FAILURE_GROUP_LIMIT, max_job_ids=FAILURE_JOB_IDS, reason_chars=FAILURE_REASON_CHARS
            )
        groups = [
            {
                "error_category": r["error_category"],
                "reason": r["reason"],
                "count": int(r["count"]),
                "last_at": iso(r["last_at"]),
                "job_ids": list(r["job_ids"] or []),
            }
            for r in rows
        ]
        return {"hours": hours, "groups": groups}

    def throughput(self, minutes: int | None) -> dict[str, Any]:
        minutes = 60 if minutes is None else minutes
        if not 1 <= minutes <= MAX_STATS_MINUTES:
            raise invalid("minutes", f"must be between 1 and {MAX_STATS_MINUTES}", "invalid query parameters")
        with self._db.statements() as repo:
            rows = OperationsQueries.within(repo).throughput_buckets(minutes)
        buckets = [
            {"minute": iso(r["minute"]), "completed": int(r["completed"]), "failed": int(r["failed"])} for r in rows
        ]
        return {"minutes": minutes, "buckets": buckets}

    def close(self) -> None:
        self._inspector.close()
