"""Runs the work a message makes possible in the same invocation, instead of waiting for a poller.

A queue trigger that closes a stage publishes a job message; the job message's fan-out publishes
task messages. Each of those waits in its queue until a poller comes by — up to the host's
``maxPollingInterval`` when the queue was idle, so a four-stage job with one task per stage spent
seconds just being handed along. The chain follows the messages this invocation itself published:

- a job message (next stage's fan-out, or the finalizer) is handled here, right away;
- then one task that fan-out released is claimed and run here (the others wait for pollers, which
  spread them over instances), and the loop goes on with what *that* task published.

Every message is still published first and stays the source of truth: if an inline step fails,
loses a race or this instance dies, the queued message does the work (a fan-out that already
happened finds its stage created; a task claimed inline is leased, so its queued delivery is
dropped while the lease lives and reclaimed after it lapses). Delayed messages (retries with
backoff, deferrals) are never run early. A new step starts only while the invocation is younger
than ``budget_seconds``, which keeps chains well inside the function timeout.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime

from schemas.jobs import OutboxMessage
from schemas.messages import JobMessage, TaskMessage
from services.engine.job_orchestrator import JobOrchestrator
from services.engine.logging_context import job_logger
from services.engine.task_runner import TaskRunner

logger = logging.getLogger(__name__)

JOB_QUEUE = "jobs"
TASK_QUEUES = frozenset({"tasks", "tasks_high"})


def due_now(message: OutboxMessage, now: datetime) -> bool:
    """Not delayed: a retry's backoff or a deferral must not be cut short by running it inline."""
    return message.visible_at <= now


def next_job_messages(published: Sequence[OutboxMessage], now: datetime) -> list[JobMessage]:
    return [JobMessage.model_validate(m.body) for m in published if m.queue == JOB_QUEUE and due_now(m, now)]


def next_task_message(published: Sequence[OutboxMessage], now: datetime) -> TaskMessage | None:
    for message in published:
        if message.queue in TASK_QUEUES and due_now(message, now):
            return TaskMessage.model_validate(message.body)
    return None


class WorkChain:
    """Entry point of the engine's queue triggers: one message, then what it made runnable."""

    def __init__(self, orchestrator: JobOrchestrator, task_runner: TaskRunner, *, budget_seconds: float) -> None:
        self._orchestrator = orchestrator
        self._task_runner = task_runner
        self._budget_seconds = budget_seconds

    def on_job_message(self, message: JobMessage) -> None:
        started = time.monotonic()
        self._follow(self._orchestrator.handle(message), started)

    def on_task_message(
        self, message: TaskMessage, *, message_id: str, dequeue_count: int = 1, queue: str = "tasks"
    ) -> None:
        started = time.monotonic()
        published = self._task_runner.handle(message, message_id=message_id, dequeue_count=dequeue_count, queue=queue)
        self._follow(self._fan_outs(published, started), started)

    def _within_budget(self, started: float) -> bool:
        return time.monotonic() - started < self._budget_seconds

    def _fan_outs(self, published: list[OutboxMessage], started: float) -> list[OutboxMessage]:
        """Handle the job messages a task published (stage closed → fan-out or finalizer)."""
        if not self._within_budget(started):
            return []
        return [
            m for job_message in next_job_messages(published, datetime.now(UTC)) for m in self._job_step(job_message)
        ]

    def _follow(self, fanned_out: list[OutboxMessage], started: float) -> None:
        """Run one task a fan-out released, then the fan-out its completion led to, and so on.
        Only fan-outs feed the chain: retries and held tasks released later go through the queue."""
        while self._within_budget(started):
            task = next_task_message(fanned_out, datetime.now(UTC))
            if task is None:
                return
            fanned_out = self._fan_outs(self._task_step(task), started)

    def _job_step(self, message: JobMessage) -> list[OutboxMessage]:
        try:
            return self._orchestrator.process(message)
        except Exception:
            job_logger(logger, message.job_id).warning(
                "inline %s of stage %d failed; its queued job message will do it",
                message.action,
                message.stage,
                exc_info=True,
            )
            return []

    def _task_step(self, message: TaskMessage) -> list[OutboxMessage]:
        try:
            return self._task_runner.run_inline(message)
        except Exception:
            job_logger(logger, message.job_id, message.task_id).warning(
                "inline run of a released task failed; the task is queued again (or its lease expires)", exc_info=True
            )
            return []
