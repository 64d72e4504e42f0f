"""Handles task-queue messages: claim the task, run its handler, record the outcome (fan-in).

A task runs its handler only after a successful claim (a lease in Postgres), so a duplicate
delivery of a finished or live-leased task does nothing. Outcomes, by error category
(services/engine/error_classification.py):
- success → ``finish_task(completed)``; if that closed the stage, the next stage is queued;
- permanent → the task fails at once;
- unclassified (an exception nothing recognises) → the task fails at once with an internal-error
  reason, and the traceback is logged at ERROR: a bug to classify, never retried;
- transient / throttling → retried with backoff (and Retry-After) through a new, delayed message
  written to the outbox while the current message completes, until the job type's attempt limit.
If Postgres is unavailable the message is deferred (services/engine/deferral.py).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential_jitter

from repositories.database import Database
from repositories.engine_repository import EngineRepository
from schemas.errors import DatabaseUnavailableError, RepositoryDataError, TransactionConflictError
from schemas.jobs import ClaimedTask, JobRecord, JobStatus, OutboxMessage, TaskStatus
from schemas.messages import TaskMessage
from services.engine.contract import JobController, TaskContext
from services.engine.deferral import MessageDeferral
from services.engine.error_classification import ClassifiedError, ErrorCategory, classify
from services.engine.job_lifecycle import fail_job, queue_task_messages
from services.engine.lease_keeper import LeaseKeeper
from services.engine.logging_context import job_logger
from services.engine.outbox_relay import OutboxRelay
from services.engine.registry import JobTypeRegistry
from services.engine.retry_policy import RetryPolicy
from services.engine.stage_flow import after_task_finished
from services.telemetry import metrics
from services.telemetry.spans import annotate, job_span, mark_failed

logger = logging.getLogger(__name__)

# Dequeue counts stay below this; it orders deliveries across deferrals (see claim_task).
_DELIVERIES_PER_DEFERRAL = 1000


@dataclass(frozen=True)
class TaskRunnerOptions:
    lease_seconds: int
    default_retry: RetryPolicy


def result_problem(result: object) -> str | None:
    """Why a handler's return value cannot be stored as the task result, or None if it can."""
    if not isinstance(result, dict):
        return f"handler returned {type(result).__name__}, expected a JSON object"
    try:
        json.dumps(result)
    except (TypeError, ValueError) as exc:
        return f"handler result is not JSON-serialisable: {exc}"
    return None


# Recording an outcome must survive a short database outage or a lost race: the handler's work is done.
_record_retry = retry(
    retry=retry_if_exception_type((DatabaseUnavailableError, TransactionConflictError)),
    stop=stop_after_attempt(6),
    wait=wait_exponential_jitter(multiplier=0.2, max=5.0),
    reraise=True,
)


class TaskRunner:
    def __init__(
        self,
        db: Database,
        registry: JobTypeRegistry,
        relay: OutboxRelay,
        deferral: MessageDeferral,
        options: TaskRunnerOptions,
    ) -> None:
        self._db = db
        self._registry = registry
        self._relay = relay
        self._deferral = deferral
        self._options = options
        self._leases = LeaseKeeper(db, options.lease_seconds)

    def handle(
        self, message: TaskMessage, *, message_id: str, dequeue_count: int = 1, queue: str = "tasks"
    ) -> list[OutboxMessage]:
        """A task queue delivery (``queue`` is the logical queue it came from). Returns the messages
        published (services/engine/work_chain.py follows them)."""
        log = job_logger(logger, message.job_id, message.task_id)
        origin = message.origin_message_id or message_id
        try:
            return self._handle(message, origin, message.deferrals * _DELIVERIES_PER_DEFERRAL + dequeue_count, log)
        except DatabaseUnavailableError as exc:
            body = {**message.model_dump(exclude_defaults=True), "origin_message_id": origin}
            delay = self._deferral.defer(queue, body, message.deferrals)
            if delay is None:
                raise
            log.warning("postgres unavailable (%s); message deferred %.1fs", exc, delay)
            return []

    def run_inline(self, message: TaskMessage) -> list[OutboxMessage]:
        """Run a task whose message this instance just published, without waiting for its delivery.

        The claim carries an id no queue delivery has, so while this run's lease lives the queued
        delivery is dropped as a duplicate; if this instance dies, the lease lapses and the queued
        delivery (or the janitor's expired-lease sweep) runs the task again.
        """
        log = job_logger(logger, message.job_id, message.task_id)
        with job_span("run_inline_task", {"job_id": message.job_id, "task_id": message.task_id}):
            return self._handle(message, f"inline-{uuid.uuid4().hex}", 1, log, inline=True)

    def _handle(
        self,
        message: TaskMessage,
        origin: str,
        delivery: int,
        log: logging.LoggerAdapter[logging.Logger],
        *,
        inline: bool = False,
    ) -> list[OutboxMessage]:
        with self._db.statements() as repo:
            claimed = repo.claim_task(message.task_id, self._options.lease_seconds, origin, delivery)
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
            return []
        annotate(job_type=claimed.job_type, stage=claimed.task.stage, attempt=claimed.task.attempts)
        log.info("task claimed (attempt %d, delivery %d)", claimed.task.attempts, delivery)
        try:
            outbox = self._run_and_record(claimed, log)
        except Exception as exc:
            if inline:  # its queued copy was dropped as a duplicate: give the task back, with a new message
                self._abandon_inline_claim(claimed, exc, log)
            raise
        self._relay.publish(outbox)
        return outbox

    def _abandon_inline_claim(
        self, claimed: ClaimedTask, exc: Exception, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        """An inline run that could not record its outcome releases its claim at once, instead of
        stranding the task for the whole lease; if even that fails, the lease's expiry recovers it."""
        error = ClassifiedError(ErrorCategory.TRANSIENT, f"the inline run stopped: {type(exc).__name__}: {exc}")
        try:
            outbox = self._release_for_retry(claimed, error, 0.0)
        except Exception:
            log.warning("could not release the claim of a failed inline run; its lease will expire", exc_info=True)
            return
        log.warning("inline run failed; claim released and the task queued again")
        self._relay.publish(outbox)

    def retry_policy(self, controller: JobController[Any] | None) -> RetryPolicy:
        return (controller.retry_policy if controller else None) or self._options.default_retry

    def _run_and_record(self, claimed: ClaimedTask, log: logging.LoggerAdapter[logging.Logger]) -> list[OutboxMessage]:
        task = claimed.task
        controller = self._registry.get(claimed.job_type)
        if controller is None:
            return self._finish(claimed, TaskStatus.FAILED, None, f"unknown job type {claimed.job_type!r}", "permanent")
        try:
            params = controller.parse_parameters(claimed.job_parameters)
        except ValueError as exc:
            return self._finish(claimed, TaskStatus.FAILED, None, f"invalid job parameters: {exc}", "permanent")
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
        stage = controller.stage(task.stage)
        attributes = {
            "job_id": task.job_id,
            "job_type": claimed.job_type,
            "task_id": task.task_id,
            "task_key": task.task_key,
            "stage": task.stage,
            "stage_name": stage.name,
            "attempt": task.attempts,
        }
        started = time.monotonic()
        error: ClassifiedError | None = None
        problem: str | None = None
        with job_span(f"{claimed.job_type}.{stage.name}", attributes):  # the handler's span
            try:
                with self._leases.kept(task.task_id, task.claim_token):
                    result = stage.handler(context)
            except Exception as exc:
                error = classify(exc, log)
                mark_failed(str(error.category), error.message, exc)
            else:
                problem = result_problem(result)
                if problem:
                    mark_failed("permanent", problem)
        outcome = "completed" if error is None and problem is None else "failed"
        metrics.task_duration(claimed.job_type, task.stage, outcome, time.monotonic() - started)
        if error is not None:
            return self._after_failure(claimed, error, self.retry_policy(controller), params, log)
        if problem:
            log.error("task failed: %s", problem)
            return self._finish(claimed, TaskStatus.FAILED, None, problem, "permanent", params)
        log.info("task completed")
        return self._finish(claimed, TaskStatus.COMPLETED, result, None, None, params)

    def _after_failure(
        self,
        claimed: ClaimedTask,
        error: ClassifiedError,
        policy: RetryPolicy,
        params: Any,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> list[OutboxMessage]:
        attempts = claimed.task.attempts
        if error.category is ErrorCategory.BUSY:
            delay = error.retry_after or 0.0
            log.info("instance busy, task handed back to the queue for %.1fs: %s", delay, error.message)
            return self._hand_back(claimed, delay)
        if not policy.should_retry(error, attempts):
            why = "permanent error" if error.category is ErrorCategory.PERMANENT else f"{attempts} attempts"
            log.warning(
                "task failed (%s, %s): %s",
                why,
                error.category,
                error.message,
                extra={"error_category": str(error.category)},
            )
            return self._finish(claimed, TaskStatus.FAILED, None, error.message, str(error.category), params)
        delay = policy.delay_seconds(error, attempts)
        log.warning(
            "task attempt %d failed (%s), retrying in %.1fs: %s",
            attempts,
            error.category,
            delay,
            error.message,
            extra={"error_category": str(error.category)},
        )
        outbox = self._release_for_retry(claimed, error, delay)
        if outbox:
            metrics.task_retried(claimed.job_type, claimed.task.stage, str(error.category))
        return outbox

    @_record_retry
    def _release_for_retry(self, claimed: ClaimedTask, error: ClassifiedError, delay: float) -> list[OutboxMessage]:
        return self._requeue(claimed, delay, error=error)

    @_record_retry
    def _hand_back(self, claimed: ClaimedTask, delay: float) -> list[OutboxMessage]:
        return self._requeue(claimed, delay, error=None)

    def _requeue(self, claimed: ClaimedTask, delay: float, *, error: ClassifiedError | None) -> list[OutboxMessage]:
        """Queue the task again (a retry with ``error``, or a hand-back without), with a delayed message.
        Only while this delivery still holds the claim, and only while the job is processing: a task of
        a job that failed or was cancelled meanwhile is skipped, so the terminal job has no open task."""
        task, token = claimed.task, claimed.task.claim_token
        with self._db.transaction() as repo:
            job = repo.lock_job(task.job_id)  # lock order: job → task → stage
            if job is None:
                return []
            if job.status is not JobStatus.PROCESSING:
                reason = f"not retried: the job is {job.status}"
                return self._record(repo, claimed, job, TaskStatus.SKIPPED, None, reason, None, None)[0]
            if error is None:
                requeued = token is not None and repo.hand_back_task(task.task_id, token)
            else:
                requeued = token is not None and repo.release_task_for_retry(
                    task.task_id, token, error.message, str(error.category)
                )
            if not requeued:
                job_logger(logger, task.job_id, task.task_id).warning("claim lost before the retry; nothing changed")
                return []
            return queue_task_messages(repo, task.job_id, claimed.priority, [task.task_id], delay_seconds=delay)

    @_record_retry
    def _finish(
        self,
        claimed: ClaimedTask,
        status: TaskStatus,
        result: dict[str, Any] | None,
        error: str | None,
        category: str | None,
        params: Any = None,
    ) -> list[OutboxMessage]:
        """Record the outcome and run fan-in. ``params``: the job parameters already validated for
        the handler (None when they were not, e.g. unknown job type or invalid parameters). A result
        the database refuses fails the task, in this attempt, with the reason."""
        try:
            with self._db.transaction() as repo:
                job = repo.lock_job(claimed.task.job_id)  # lock order: job → task → stage
                if job is None:
                    return []
                outbox, recorded = self._record(repo, claimed, job, status, result, error, category, params)
            if recorded:  # committed: counted once
                metrics.task_finished(claimed.job_type, claimed.task.stage, str(status), category)
            return outbox
        except RepositoryDataError as exc:
            if status is not TaskStatus.COMPLETED:
                raise
            reason = f"the task's result could not be stored: {exc}"
            job_logger(logger, claimed.task.job_id, claimed.task.task_id).error("task failed: %s", reason)
            return self._finish(claimed, TaskStatus.FAILED, None, reason, "permanent", params)

    def _record(
        self,
        repo: EngineRepository,
        claimed: ClaimedTask,
        job: JobRecord,
        status: TaskStatus,
        result: dict[str, Any] | None,
        error: str | None,
        category: str | None,
        params: Any,
    ) -> tuple[list[OutboxMessage], bool]:
        """The messages to publish, and whether this call recorded the outcome."""
        task = claimed.task
        counters = repo.finish_task(task.task_id, status, result, error, task.claim_token)
        if counters is None:
            return [], False
        if not counters.changed:
            job_logger(logger, task.job_id, task.task_id).warning(
                "outcome %s not recorded: this delivery no longer holds the task's claim", status
            )
            return [], False
        if category:
            repo.set_task_error_category(task.task_id, category)
        controller = self._registry.get(claimed.job_type)
        if controller is None:
            return [], True
        if params is None:
            try:
                params = controller.parse_parameters(claimed.job_parameters)
            except ValueError:
                return fail_job(repo, task.job_id, "stored job parameters no longer validate"), True
        return after_task_finished(repo, controller, params, counters, job), True
