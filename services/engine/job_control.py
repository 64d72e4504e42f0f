"""Operator control of running jobs: cancel, retry (and restart or rerun on resubmission)."""

from __future__ import annotations

import logging

from repositories.database import Database
from repositories.engine_repository import EngineRepository
from schemas.errors import ConflictError, NotFoundError
from schemas.jobs import JobRecord, JobStatus, OutboxMessage
from schemas.messages import JobAction
from services.engine.conflict_retry import retry_on_conflict
from services.engine.job_lifecycle import cancel_job, dependency_state, queue_job_message, queue_task_messages
from services.engine.logging_context import job_logger
from services.engine.outbox_relay import OutboxRelay

logger = logging.getLogger(__name__)
RETRYABLE = (JobStatus.FAILED, JobStatus.COMPLETED_WITH_ERRORS, JobStatus.CANCELLED)


class JobControl:
    def __init__(self, db: Database, relay: OutboxRelay) -> None:
        self._db = db
        self._relay = relay

    @retry_on_conflict
    def cancel(self, job_id: str) -> JobRecord:
        """Queued tasks are skipped, running ones finish, the job ends cancelled. Idempotent."""
        with self._db.transaction() as repo:
            job = repo.lock_job(job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} not found")
            if job.status is JobStatus.CANCELLED:
                return job
            if job.status.is_terminal:
                raise ConflictError(f"job is already {job.status}; only queued or processing jobs can be cancelled")
            cancelled, outbox = cancel_job(repo, job_id, "cancelled by request")
        self._relay.publish(outbox)
        assert cancelled is not None  # locked and not terminal
        return cancelled

    @retry_on_conflict
    def retry(self, job_id: str) -> JobRecord:
        """Run the failed (and skipped) tasks of a failed / completed_with_errors job again."""
        with self._db.transaction() as repo:
            job = repo.lock_job(job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} not found")
            if job.status not in RETRYABLE:
                raise ConflictError(f"job is {job.status}; only {', '.join(RETRYABLE)} jobs can be retried")
            restarted, outbox = self.restart(repo, job)
        self._relay.publish(outbox)
        return restarted

    @staticmethod
    def rerun(repo: EngineRepository, job: JobRecord) -> tuple[JobRecord, list[OutboxMessage]]:
        """Run a finished job again from stage 1, in the caller's transaction (a submission with
        ``replace: true``): every stage and task of the earlier run is deleted, the result and error
        are cleared. A queued or processing job is a ConflictError (cancel it first), and so is one
        whose dependencies failed or were cancelled, as for ``restart``."""
        locked = repo.lock_job(job.job_id) or job
        if not locked.status.is_terminal:
            raise ConflictError(
                f"job {job.job_id} is still {locked.status}; cancel it first, then submit with replace again",
                details=[{"field": "replace", "message": f"the job is {locked.status}"}],
            )
        dependencies = dependency_state(repo, locked.depends_on)
        if dependencies.broken:
            raise ConflictError(f"job cannot be run again: {dependencies.broken}; retry that job first")
        repo.delete_stages_after(job.job_id, 0)  # tasks go with their stages (ON DELETE CASCADE)
        log = job_logger(logger, job.job_id)
        if dependencies.satisfied:
            reopened = repo.reopen_job(job.job_id, JobStatus.PROCESSING, 1)
            outbox = queue_job_message(repo, job.job_id, 1, JobAction.CREATE_STAGE)
            log.warning("job replaced: running again from stage 1 (was %s)", locked.status)
        else:
            reopened = repo.reopen_job(job.job_id, JobStatus.QUEUED, 1)
            outbox = []
            log.warning("job replaced; waiting for its dependencies (was %s)", locked.status)
        assert reopened is not None
        return reopened, outbox

    @staticmethod
    def restart(repo: EngineRepository, job: JobRecord) -> tuple[JobRecord, list[OutboxMessage]]:
        """Continue the job from its earliest stage with unsuccessful tasks, in the caller's transaction.

        Later stages are deleted and re-planned when that stage completes again (their inputs may
        change). A job that failed before its stage had tasks re-plans that stage. A job one of whose
        dependencies failed or was cancelled is not restarted (ConflictError): it would wait forever.
        """
        locked = repo.lock_job(job.job_id) or job
        dependencies = dependency_state(repo, locked.depends_on)
        if dependencies.broken:
            raise ConflictError(f"job cannot be retried: {dependencies.broken}; retry that job first")
        first_unfinished = repo.earliest_unfinished_stage(job.job_id)
        stage = first_unfinished or locked.stage
        repo.delete_stages_after(job.job_id, stage)
        log = job_logger(logger, job.job_id)
        last_stage_done = any(s.stage == stage and s.status == "completed" for s in repo.list_stages(job.job_id))
        if first_unfinished is None and stage == locked.total_stages and last_stage_done:
            # Every task completed and the last stage closed: the finalizer failed. Run it again now
            # instead of leaving the job to the janitor's stalled-job sweep.
            reopened = repo.reopen_job(job.job_id, JobStatus.PROCESSING, stage)
            outbox = queue_job_message(repo, job.job_id, stage, JobAction.FINALIZE)
            log.warning("job restarted: finalizing again")
        elif repo.reopen_stage(job.job_id, stage):
            task_ids = repo.reset_unsuccessful_tasks(job.job_id, stage)
            repo.reopen_stage(job.job_id, stage)
            reopened = repo.reopen_job(job.job_id, JobStatus.PROCESSING, stage)
            slots = len(task_ids) if locked.max_parallel_tasks is None else locked.max_parallel_tasks
            repo.hold_tasks(task_ids[slots:])
            outbox = queue_task_messages(repo, job.job_id, locked.priority, task_ids[:slots])
            log.warning("job restarted at stage %d: %d tasks re-queued", stage, len(task_ids))
        elif stage == 1 and not dependency_state(repo, locked.depends_on).satisfied:
            reopened = repo.reopen_job(job.job_id, JobStatus.QUEUED, 1)
            outbox = []
            log.warning("job restarted; waiting for its dependencies")
        else:
            reopened = repo.reopen_job(job.job_id, JobStatus.PROCESSING, stage)
            outbox = queue_job_message(repo, job.job_id, stage, JobAction.CREATE_STAGE)
            log.warning("job restarted: stage %d will be planned again", stage)
        assert reopened is not None
        return reopened, outbox
