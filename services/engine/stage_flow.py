"""Decisions taken in the transaction that finished a task: fail the job, advance it, or finalize.

Everything here runs inside the caller's transaction (which holds the job row lock) and only
*writes* outbox rows; the caller publishes them after commit. Exactly-once advancement rests on
two guarded statements: ``finish_task`` reports ``closed_stage`` to exactly one caller per stage,
and ``advance_job_stage`` only moves a job still at that stage.
"""

from __future__ import annotations

import logging
from typing import Any

from repositories.engine_repository import EngineRepository
from schemas.jobs import JobRecord, JobStatus, OutboxMessage, StageCounters
from schemas.messages import JobAction
from services.engine.contract import JobController
from services.engine.job_lifecycle import fail_job, queue_job_message, release_held_tasks
from services.engine.logging_context import job_logger

logger = logging.getLogger(__name__)


def stage_failure_reason(
    repo: EngineRepository, controller: JobController[Any], counters: StageCounters, limit: float
) -> str:
    name = controller.stage(counters.stage).name
    first = repo.failed_tasks_of_stage(counters.job_id, counters.stage, limit=3)
    examples = "; ".join(f"{row['task_key']}: {row['error']}" for row in first)
    ratio = counters.failed_count / counters.task_count
    return (
        f"stage {counters.stage} ({name}): {counters.failed_count} of {counters.task_count} tasks failed "
        f"({ratio:.0%}), over the allowed {limit:.0%}. First errors: {examples}"
    )


def after_task_finished(
    repo: EngineRepository, controller: JobController[Any], params: Any, counters: StageCounters, job: JobRecord
) -> list[OutboxMessage]:
    """Apply the stage failure policy, release held tasks, and advance if this closed the stage."""
    if not counters.changed or job.status is not JobStatus.PROCESSING:
        return []
    limit = controller.failure_ratio_limit(params)
    if counters.task_count and counters.failed_count / counters.task_count > limit:
        return fail_job(repo, counters.job_id, stage_failure_reason(repo, controller, counters, limit))
    if counters.closed_stage:
        return close_stage(repo, controller, counters.job_id, counters.stage)
    return release_held_tasks(repo, job)


def close_stage(repo: EngineRepository, controller: JobController[Any], job_id: str, stage: int) -> list[OutboxMessage]:
    """The stage is complete: queue the next stage's fan-out, or the finalizer after the last."""
    log = job_logger(logger, job_id)
    if stage < controller.total_stages:
        if repo.advance_job_stage(job_id, stage) is None:
            log.info("stage %d closed but the job is no longer at it or not processing", stage)
            return []
        log.info("stage %d complete, advancing to stage %d", stage, stage + 1)
        return queue_job_message(repo, job_id, stage + 1, JobAction.CREATE_STAGE)
    log.info("last stage %d complete, queueing finalizer", stage)
    return queue_job_message(repo, job_id, stage, JobAction.FINALIZE)
