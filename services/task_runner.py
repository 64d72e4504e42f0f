"""Handles task-queue messages: claim the task, run its handler, record the outcome (fan-in).

A task runs its handler only after a successful claim (a lease in Postgres), so a duplicate
delivery of a finished or live-leased task does nothing. Outcomes:
- success → ``finish_task(completed)`` and, if that closed the stage, the next stage is queued;
- ``PermanentTaskError`` → the task fails at once;
- any other exception → retried with exponential backoff and jitter (a new, delayed message
  written to the outbox; the current message completes) until the attempt limit, then failed.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from controllers.base import TaskContext
from controllers.registry import JobTypeRegistry
from repositories.database import Database
from schemas.errors import DatabaseUnavailableError, PermanentTaskError
from schemas.jobs import ClaimedTask, OutboxMessage, TaskStatus
from schemas.messages import TaskMessage
from services.logging_context import job_logger
from services.outbox_relay import OutboxRelay
from services.stage_flow import after_task_finished

logger = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000


@dataclass(frozen=True)
class TaskRunnerOptions:
    lease_seconds: int
    default_max_attempts: int
    retry_base_seconds: float
    retry_max_seconds: float


def retry_delay_seconds(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: uniform in [half, full] of min(cap, base * 2**(attempt-1))."""
    full = min(cap, base * (2 ** max(0, attempt - 1)))
    return full * (0.5 + 0.5 * rng())


def describe_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"


def result_problem(result: object) -> str | None:
    """Why a handler's return value cannot be stored as the task result, or None if it can."""
    if not isinstance(result, dict):
        return f"handler returned {type(result).__name__}, expected a JSON object"
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return f"handler result is not JSON-serialisable: {exc}"
    return None


# Recording an outcome must survive a short database outage: the handler's work is done.
_record_retry = retry(
    retry=retry_if_exception_type(DatabaseUnavailableError),
    stop=stop_after_attempt(6),
    wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
    reraise=True,
)


class TaskRunner:
    def __init__(self, db: Database, registry: JobTypeRegistry, relay: OutboxRelay, options: TaskRunnerOptions) -> None:
        self._db = db
        self._registry = registry
        self._relay = relay
        self._options = options

    def handle(self, message: TaskMessage, *, message_id: str, dequeue_count: int = 1) -> None:
        log = job_logger(logger, message.job_id, message.task_id)
        with self._db.transaction() as repo:
            claimed = repo.claim_task(message.task_id, self._options.lease_seconds, message_id, dequeue_count)
            state = None if claimed else repo.describe_task_state(message.task_id)
        if claimed is None:
            if state is None:
                log.error("task message for unknown task; dropped")
            else:
                log.info(
                    "task not claimable (task %s, job %s, lease live: %s); duplicate or stale delivery dropped",
                    state["status"],
                    state["job_status"],
                    state["lease_live"],
                )
            return
        log.info("task claimed (attempt %d, delivery %d)", claimed.task.attempts, dequeue_count)
        outbox = self._run_and_record(claimed, log)
        self._relay.publish(outbox)

    def _run_and_record(self, claimed: ClaimedTask, log: logging.LoggerAdapter[logging.Logger]) -> list[OutboxMessage]:
        task = claimed.task
        controller = self._registry.get(claimed.job_type)
        if controller is None:
            return self._finish(claimed, TaskStatus.FAILED, None, f"unknown job type {claimed.job_type!r}")
        try:
            params = controller.parse_parameters(claimed.job_parameters)
        except ValueError as exc:
            return self._finish(claimed, TaskStatus.FAILED, None, f"invalid job parameters: {exc}")
        context: TaskContext[Any] = TaskContext(
            job_id=task.job_id,
            task_id=task.task_id,
            stage=task.stage,
            task_key=task.task_key,
            attempt=task.attempts,
            parameters=task.parameters,
            job_parameters=params,
            predecessor_result=claimed.predecessor_result,
            logger=log,
        )
        handler = controller.stage(task.stage).handler
        try:
            with self._lease_kept(task.task_id):
                result = handler(context)
        except PermanentTaskError as exc:
            log.warning("task failed permanently: %s", exc)
            return self._finish(claimed, TaskStatus.FAILED, None, describe_error(exc))
        except Exception as exc:
            return self._retry_or_fail(claimed, exc, log)
        problem = result_problem(result)
        if problem:
            log.error("task failed: %s", problem)
            return self._finish(claimed, TaskStatus.FAILED, None, problem)
        log.info("task completed")
        return self._finish(claimed, TaskStatus.COMPLETED, result, None)

    def _retry_or_fail(
        self, claimed: ClaimedTask, exc: Exception, log: logging.LoggerAdapter[logging.Logger]
    ) -> list[OutboxMessage]:
        controller = self._registry.get(claimed.job_type)
        limit = (controller.max_task_attempts if controller else None) or self._options.default_max_attempts
        error = describe_error(exc)
        if claimed.task.attempts >= limit:
            log.warning("task failed after %d attempts: %s", claimed.task.attempts, error)
            return self._finish(claimed, TaskStatus.FAILED, None, error)
        delay = retry_delay_seconds(
            claimed.task.attempts, self._options.retry_base_seconds, self._options.retry_max_seconds
        )
        log.warning("task attempt %d failed, retrying in %.1fs: %s", claimed.task.attempts, delay, error)
        return self._release_for_retry(claimed, error, delay)

    @_record_retry
    def _release_for_retry(self, claimed: ClaimedTask, error: str, delay: float) -> list[OutboxMessage]:
        task = claimed.task
        with self._db.transaction() as repo:
            if not repo.release_task_for_retry(task.task_id, error):
                return []
            body = TaskMessage(task_id=task.task_id, job_id=task.job_id).model_dump()
            return repo.add_outbox_messages("tasks", [body], task.job_id, delay_seconds=delay)

    @_record_retry
    def _finish(
        self, claimed: ClaimedTask, status: TaskStatus, result: dict[str, Any] | None, error: str | None
    ) -> list[OutboxMessage]:
        task = claimed.task
        with self._db.transaction() as repo:
            counters = repo.finish_task(task.task_id, status, result, error)
            if counters is None:
                return []
            controller = self._registry.get(claimed.job_type)
            if controller is None:
                return []
            try:
                params = controller.parse_parameters(claimed.job_parameters)
            except ValueError:
                repo.fail_job(task.job_id, "stored job parameters no longer validate")
                return []
            return after_task_finished(repo, controller, params, counters)

    @contextmanager
    def _lease_kept(self, task_id: str) -> Iterator[None]:
        """Renew the task's lease every lease/3 seconds while the handler runs."""
        stop = threading.Event()
        interval = max(1.0, self._options.lease_seconds / 3)

        def renew() -> None:
            while not stop.wait(interval):
                try:
                    with self._db.transaction() as repo:
                        repo.renew_task_lease(task_id, self._options.lease_seconds)
                except Exception:
                    logger.warning("could not renew lease", extra={"task_id": task_id}, exc_info=True)

        keeper = threading.Thread(target=renew, name=f"lease-{task_id[-24:]}", daemon=True)
        keeper.start()
        try:
            yield
        finally:
            stop.set()
            keeper.join(timeout=interval)
