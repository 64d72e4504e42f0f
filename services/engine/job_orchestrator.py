"""Handles job-queue messages: fan-out of a stage's tasks, and finalisation of a finished job."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from repositories.database import Database
from repositories.engine_repository import EngineRepository
from schemas.errors import DatabaseUnavailableError, PermanentTaskError
from schemas.jobs import JobRecord, JobStatus, NewTask, OutboxMessage, StageCounters, StageRecord
from schemas.messages import JobAction, JobMessage
from services.engine.conflict_retry import retry_on_conflict
from services.engine.contract import JobController, JobOutcome, TaskSpec
from services.engine.deferral import MessageDeferral
from services.engine.identifiers import task_id_for
from services.engine.job_lifecycle import complete_job, fail_job, queue_task_messages
from services.engine.logging_context import job_logger
from services.engine.outbox_relay import OutboxRelay
from services.engine.registry import JobTypeRegistry
from services.engine.stage_flow import after_task_finished
from services.telemetry import metrics
from services.telemetry.spans import annotate, job_span

logger = logging.getLogger(__name__)

# A duplicate fan-out message republishes outbox rows older than this (the first delivery
# normally publishes them within milliseconds of its commit).
STALE_OUTBOX_SECONDS = 10.0


class JobOrchestrator:
    def __init__(self, db: Database, registry: JobTypeRegistry, relay: OutboxRelay, deferral: MessageDeferral) -> None:
        self._db = db
        self._registry = registry
        self._relay = relay
        self._deferral = deferral

    def handle(self, message: JobMessage) -> list[OutboxMessage]:
        """A job queue delivery: ``process``, deferring the message while Postgres is unavailable.
        Returns the messages published (services/engine/work_chain.py follows them)."""
        try:
            return self.process(message)
        except DatabaseUnavailableError as exc:
            delay = self._deferral.defer("jobs", message.model_dump(mode="json"), message.deferrals)
            if delay is None:
                raise
            job_logger(logger, message.job_id).warning("postgres unavailable (%s); message deferred %.1fs", exc, delay)
            return []

    @retry_on_conflict
    def process(self, message: JobMessage) -> list[OutboxMessage]:
        """Fan out the message's stage or finalize the job; returns the messages published."""
        with job_span(f"job.{message.action}", {"job_id": message.job_id, "stage": message.stage}):
            if message.action is JobAction.FINALIZE:
                return self.finalize(message.job_id)
            return self.create_stage(message.job_id, message.stage)

    # --- fan-out --------------------------------------------------------------------------------

    def create_stage(self, job_id: str, stage: int) -> list[OutboxMessage]:
        """Insert all tasks of ``stage`` in one transaction, then publish their messages."""
        log = job_logger(logger, job_id)
        with self._db.transaction() as repo:
            job = repo.lock_job(job_id)
            if job is None:
                log.error("job message for unknown job; dropped")
                return []
            annotate(job_type=job.job_type)
            if job.status.is_terminal:
                log.info("job is %s; stage %d message dropped", job.status, stage)
                return []
            if job.stage != stage:
                log.info("stale message for stage %d (job is at stage %d); dropped", stage, job.stage)
                return []
            outbox = self._fan_out(repo, job, stage, log)
        self._relay.publish(outbox)
        return outbox

    def _fan_out(
        self, repo: EngineRepository, job: JobRecord, stage: int, log: logging.LoggerAdapter[logging.Logger]
    ) -> list[OutboxMessage]:
        controller = self._registry.get(job.job_type)
        if controller is None:
            return fail_job(repo, job.job_id, f"unknown job type {job.job_type!r}")
        try:
            params = controller.parse_parameters(job.parameters)
            previous = repo.completed_results_of_stage(job.job_id, stage - 1) if stage > 1 else {}
            specs = controller.create_tasks(stage, params, previous)
            tasks = build_tasks(job.job_id, stage, specs, previous_keys=set(previous))
        except (PermanentTaskError, ValidationError, ValueError) as exc:
            reason = f"stage {stage} ({controller.stage(stage).name}) could not be planned: {exc}"
            log.error("job failed: %s", reason)
            return fail_job(repo, job.job_id, reason)
        if not repo.insert_stage(job.job_id, stage, controller.stage(stage).name, len(tasks)):
            # A duplicate delivery: the stage exists. Resend whatever its first delivery left unsent.
            pending = repo.pending_outbox_of_job(job.job_id, STALE_OUTBOX_SECONDS)
            log.info("stage %d already created; %d unsent outbox messages to republish", stage, len(pending))
            return pending
        repo.mark_job_processing(job.job_id)
        if stage > 1:
            record_handoff(job.job_type, stage, repo.list_stages(job.job_id), stage - 1)
        # With max_parallel_tasks, only that many start now; the rest are held until others finish.
        slots = len(tasks) if job.max_parallel_tasks is None else job.max_parallel_tasks
        repo.insert_tasks(tasks, held=[i >= slots for i in range(len(tasks))])
        log.info(
            "stage %d (%s): created %d tasks (%d started)",
            stage,
            controller.stage(stage).name,
            len(tasks),
            min(slots, len(tasks)),
        )
        if not tasks:
            empty = StageCounters(True, job.job_id, stage, 0, 0, 0, 0, closed_stage=True)
            processing = repo.get_job(job.job_id)
            return after_task_finished(repo, controller, params, empty, processing or job)
        return queue_task_messages(repo, job.job_id, job.priority, [t.task_id for t in tasks[:slots]])

    # --- fan-in: finalisation -------------------------------------------------------------------

    def finalize(self, job_id: str) -> list[OutboxMessage]:
        """Run the job type's finalizer once every stage is complete; exactly one call completes the job."""
        with self._db.transaction() as repo:
            outbox = self._finalize(repo, job_id, job_logger(logger, job_id))
        self._relay.publish(outbox)
        return outbox

    def _finalize(
        self, repo: EngineRepository, job_id: str, log: logging.LoggerAdapter[logging.Logger]
    ) -> list[OutboxMessage]:
        job = repo.lock_job(job_id)
        if job is None or job.status is not JobStatus.PROCESSING:
            log.info("finalize: job is %s; nothing to do", job.status if job else "unknown")
            return []
        controller = self._registry.get(job.job_type)
        if controller is None:
            return fail_job(repo, job_id, f"unknown job type {job.job_type!r}")
        annotate(job_type=job.job_type)
        stages = repo.list_stages(job_id)
        if len(stages) != controller.total_stages or any(s.status != "completed" for s in stages):
            log.warning("finalize message before all stages completed; ignored")
            return []
        record_handoff(job.job_type, "finalize", stages, controller.total_stages)
        outcome = collect_outcome(repo, controller, job_id)
        try:
            result = controller.finalize(controller.parse_parameters(job.parameters), outcome)
        except (PermanentTaskError, ValidationError, ValueError, KeyError) as exc:
            log.error("finalizer failed: %s", exc)
            return fail_job(repo, job_id, f"finalizer failed: {exc}")
        if not outcome.failed_count:
            return complete_job(repo, job_id, JobStatus.COMPLETED, result, None)
        summary = error_summary(outcome)
        error = f"{summary['failed_tasks']} task(s) failed within the allowed ratio"
        return complete_job(repo, job_id, JobStatus.COMPLETED_WITH_ERRORS, {**result, "errors": summary}, error)


def record_handoff(job_type: str, stage: int | str, stages: Sequence[StageRecord], previous: int) -> None:
    """Stage hand-off latency: from the previous stage's closing to this fan-out (or finalize)."""
    closed = next((s.completed_at for s in stages if s.stage == previous), None)
    if closed is not None:
        metrics.stage_handoff(job_type, stage, (datetime.now(UTC) - closed).total_seconds())


def build_tasks(job_id: str, stage: int, specs: list[TaskSpec], previous_keys: set[str]) -> list[NewTask]:
    """Turn specs into rows; keys must be unique and lineage must point at a completed predecessor."""
    seen: set[str] = set()
    tasks: list[NewTask] = []
    for spec in specs:
        if spec.key in seen:
            raise ValueError(f"duplicate task key {spec.key!r}")
        seen.add(spec.key)
        predecessor = None
        if spec.depends_on_predecessor:
            if stage == 1 or spec.key not in previous_keys:
                raise ValueError(f"task {spec.key!r} depends on a predecessor that did not complete")
            predecessor = task_id_for(job_id, stage - 1, spec.key)
        tasks.append(
            NewTask(task_id_for(job_id, stage, spec.key), job_id, stage, spec.key, spec.parameters, predecessor)
        )
    return tasks


def collect_outcome(repo: EngineRepository, controller: JobController[Any], job_id: str) -> JobOutcome:
    results: dict[str, dict[str, dict[str, Any]]] = {s.name: {} for s in controller.stages}
    failed: dict[str, dict[str, str]] = {s.name: {} for s in controller.stages}
    for row in repo.task_outcomes_of_job(job_id):
        name = controller.stage(row["stage"]).name
        if row["status"] == "completed":
            results[name][row["task_key"]] = row["result"] or {}
        elif row["status"] == "failed":
            failed[name][row["task_key"]] = row["error"] or "failed"
    return JobOutcome(results_by_stage=results, failed_by_stage=failed)


def error_summary(outcome: JobOutcome, examples: int = 5) -> dict[str, Any]:
    first = [
        {"stage": stage, "task_key": key, "error": error}
        for stage, errors in outcome.failed_by_stage.items()
        for key, error in sorted(errors.items())
    ][:examples]
    return {
        "failed_tasks": outcome.failed_count,
        "failed_by_stage": {stage: len(errors) for stage, errors in outcome.failed_by_stage.items() if errors},
        "first_errors": first,
    }
