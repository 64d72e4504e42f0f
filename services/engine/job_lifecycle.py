"""State changes of a job that other jobs and queued tasks depend on, inside the caller's transaction.

Lock order everywhere: job row → task rows → stage row (avoids deadlocks between completions,
cancel and retry). Every path that ends a job goes through ``fail_job`` / ``complete_job`` /
``cancel_job`` here, so dependent jobs are always released or failed, and the job's webhook
subscribers are owed a delivery (``services.webhooks.events``) in the same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from repositories.engine_repository import EngineRepository
from schemas.jobs import SATISFIED_DEPENDENCY_STATUSES, JobPriority, JobRecord, JobStatus, OutboxMessage
from schemas.messages import JobAction, JobMessage, TaskMessage
from services.engine.logging_context import job_logger
from services.webhooks.events import schedule_deliveries

logger = logging.getLogger(__name__)


def task_queue_for(priority: JobPriority) -> str:
    """Logical outbox queue of a job's task messages."""
    return "tasks_high" if priority is JobPriority.HIGH else "tasks"


def queue_task_messages(
    repo: EngineRepository, job_id: str, priority: JobPriority, task_ids: Sequence[str], delay_seconds: float = 0.0
) -> list[OutboxMessage]:
    bodies = [TaskMessage(task_id=t, job_id=job_id).model_dump(exclude_defaults=True) for t in task_ids]
    return repo.add_outbox_messages(task_queue_for(priority), bodies, job_id, delay_seconds=delay_seconds)


def queue_job_message(repo: EngineRepository, job_id: str, stage: int, action: JobAction) -> list[OutboxMessage]:
    body = JobMessage(job_id=job_id, stage=stage, action=action).model_dump(mode="json", exclude_defaults=True)
    body["stage"] = stage  # always explicit, even for stage 1
    return repo.add_outbox_messages("jobs", [body], job_id)


def release_held_tasks(repo: EngineRepository, job: JobRecord) -> list[OutboxMessage]:
    """Queue held tasks up to the job's max_parallel_tasks. The caller holds the job row lock."""
    if job.max_parallel_tasks is None or job.status is not JobStatus.PROCESSING:
        return []
    released = repo.release_held_tasks(job.job_id, job.max_parallel_tasks)
    return queue_task_messages(repo, job.job_id, job.priority, released) if released else []


def fail_job(
    repo: EngineRepository, job_id: str, reason: str, result: dict[str, Any] | None = None
) -> list[OutboxMessage]:
    """Fail a queued/processing job, skip its waiting tasks, and fail the jobs that wait on it."""
    job = repo.fail_job(job_id, reason, result)
    if job is None:
        return []
    skipped = repo.skip_queued_tasks(job_id, "skipped: job failed")
    job_logger(logger, job_id).warning("job failed: %s (skipped %d waiting tasks)", reason, skipped)
    return schedule_deliveries(repo, job) + settle_dependents(repo, job)


def cancel_job(repo: EngineRepository, job_id: str, reason: str) -> tuple[JobRecord | None, list[OutboxMessage]]:
    job = repo.cancel_job(job_id, reason)
    if job is None:
        return None, []
    skipped = repo.skip_queued_tasks(job_id, "skipped: job cancelled")
    job_logger(logger, job_id).warning("job cancelled (skipped %d waiting tasks)", skipped)
    return job, schedule_deliveries(repo, job) + settle_dependents(repo, job)


def complete_job(
    repo: EngineRepository, job_id: str, status: JobStatus, result: dict[str, Any], error: str | None
) -> list[OutboxMessage]:
    job = repo.complete_job(job_id, status, result, error)
    if job is None:
        return []
    job_logger(logger, job_id).info("job %s", status)
    return schedule_deliveries(repo, job) + settle_dependents(repo, job)


def settle_dependents(repo: EngineRepository, finished: JobRecord) -> list[OutboxMessage]:
    """Start jobs whose dependencies are now all satisfied; fail those whose dependency failed.

    Each dependent's row is locked (waiting_dependents, FOR UPDATE); its other dependencies are only
    read. Two dependencies of one job finishing together thus serialise on the dependent's row, and
    the second sees the first's committed status; neither waits for a row the other holds.
    """
    outbox: list[OutboxMessage] = []
    for dependent_id in repo.waiting_dependents(finished.job_id):
        if finished.status not in SATISFIED_DEPENDENCY_STATUSES:
            reason = f"dependency {finished.job_id} ended {finished.status}: {finished.error or 'no detail'}"
            outbox += fail_job(repo, dependent_id, reason)
            continue
        dependent = repo.get_job(dependent_id)
        if dependent is not None and dependency_state(repo, dependent.depends_on).satisfied:
            job_logger(logger, dependent_id).info("dependencies complete; starting")
            outbox += queue_job_message(repo, dependent_id, 1, JobAction.CREATE_STAGE)
    return outbox


@dataclass(frozen=True)
class DependencyState:
    satisfied: bool
    broken: str | None = None  # why they can never be satisfied (one ended failed/cancelled, or is gone)


def dependency_state(repo: EngineRepository, depends_on: Sequence[str]) -> DependencyState:
    """Whether a job's dependencies are all done, still running, or can never be satisfied.

    A plain read: the caller holds the dependent job's row lock, which is what serialises the
    decision (see settle_dependents). Submission, where no dependent row exists yet, locks the
    dependencies themselves instead (JobService).
    """
    if not depends_on:
        return DependencyState(True)
    rows = {r["job_id"]: r for r in repo.job_statuses(depends_on)}
    missing = sorted(set(depends_on) - set(rows))
    if missing:
        return DependencyState(False, f"dependency {missing[0]} no longer exists")
    for row in rows.values():
        status = JobStatus(row["status"])
        if status.is_terminal and status not in SATISFIED_DEPENDENCY_STATUSES:
            return DependencyState(False, f"dependency {row['job_id']} ended {status}: {row['error'] or 'no detail'}")
    return DependencyState(all(JobStatus(r["status"]) in SATISFIED_DEPENDENCY_STATUSES for r in rows.values()))
