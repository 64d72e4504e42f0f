"""The janitor (timer trigger): keeps every job moving when messages or instances are lost.

Each sweep is independent (one failing does not stop the others), bounded in size, and built
on guarded statements, so two janitors running at once do no harm. ``run`` returns counts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from repositories.database import Database
from repositories.engine_repository import EngineRepository
from schemas.jobs import JobPriority, JobRecord, JobStatus, OutboxMessage, StageCounters, TaskStatus
from schemas.messages import JobAction
from services.engine.contract import JobController
from services.engine.job_lifecycle import dependency_state, fail_job, queue_job_message, queue_task_messages
from services.engine.logging_context import job_logger
from services.engine.outbox_relay import OutboxRelay
from services.engine.queue_publisher import OutgoingMessage, QueuePublisher
from services.engine.registry import JobTypeRegistry
from services.engine.retry_policy import RetryPolicy
from services.engine.stage_flow import after_task_finished, close_stage
from services.webhooks.delivery import redrive_lost_deliveries

logger = logging.getLogger(__name__)
BATCH = 200


@dataclass(frozen=True)
class JanitorOptions:
    outbox_grace_seconds: float
    lease_grace_seconds: float
    requeue_queued_after_seconds: float
    stalled_job_after_seconds: float
    poison_retention_hours: float
    default_retry: RetryPolicy
    poison_queues: tuple[str, ...]


class Janitor:
    def __init__(
        self,
        db: Database,
        registry: JobTypeRegistry,
        relay: OutboxRelay,
        publisher: QueuePublisher,
        options: JanitorOptions,
    ) -> None:
        self._db = db
        self._registry = registry
        self._relay = relay
        self._publisher = publisher
        self._options = options

    def run(self) -> dict[str, int]:
        report: dict[str, int] = {}
        sweeps = (
            ("outbox_republished", self.republish_outbox),
            ("expired_leases", self.recover_expired_leases),
            ("lost_task_messages_resent", self.resend_lost_task_messages),
            ("stages_repaired", self.repair_stages),
            ("stalled_jobs_resumed", self.resume_stalled_jobs),
            ("lost_webhooks_redriven", self.redrive_lost_webhooks),
            ("poison_messages_deleted", self.purge_old_poison_messages),
            ("dead_letters_deleted", self.purge_old_dead_letters),
        )
        for name, sweep in sweeps:
            try:
                report[name] = sweep()
            except Exception:
                logger.exception("janitor sweep %s failed", name)
                report[name] = -1
        logger.info("janitor: %s", report, extra={"janitor": report})
        return report

    def republish_outbox(self) -> int:
        """Send outbox rows whose publisher died between commit and send. The rows are taken in one
        short statement and sent outside any transaction (no locks held across the sends); a row whose
        send fails is taken again after the grace period."""
        with self._db.transaction() as repo:
            stale = repo.take_stale_outbox(self._options.outbox_grace_seconds, BATCH)
        if not stale:
            return 0
        now = datetime.now(UTC)
        sent = self._publisher.send_many(
            [OutgoingMessage(m.queue, m.body, max(0.0, (m.visible_at - now).total_seconds())) for m in stale]
        )
        ids = [m.message_id for m, ok in zip(stale, sent, strict=True) if ok]
        with self._db.transaction() as repo:
            repo.delete_outbox(ids)
        return len(ids)

    def _each(self, rows: list[dict[str, Any]], sweep: str, step: Callable[[dict[str, Any]], bool]) -> int:
        """Run ``step`` for every row in its own try: one row that cannot be handled (a job whose stored
        parameters no longer validate, a bug) is logged and left, and never stops the sweep for the rest."""
        done = 0
        for row in rows:
            try:
                done += bool(step(row))
            except Exception:
                job_logger(logger, str(row.get("job_id")), row.get("task_id")).exception(
                    "janitor %s: row failed", sweep
                )
        return done

    @staticmethod
    def _params(
        controller: JobController[Any], repo: EngineRepository, job: JobRecord
    ) -> tuple[Any | None, list[OutboxMessage]]:
        """The job's validated parameters, or None after failing a job whose stored parameters no
        longer validate (with the messages that failure owes its dependents)."""
        try:
            return controller.parse_parameters(job.parameters), []
        except ValueError:
            return None, fail_job(repo, job.job_id, "stored job parameters no longer validate")

    def recover_expired_leases(self) -> int:
        """Tasks left in processing by a dead instance: re-queue them, or fail them past their attempts."""
        with self._db.transaction() as repo:
            expired = repo.expired_leases(self._options.lease_grace_seconds, BATCH)
        return self._each(expired, "expired_leases", self._recover_expired_lease)

    def _recover_expired_lease(self, row: dict[str, Any]) -> bool:
        controller = self._registry.get(row["job_type"])
        policy = (controller.retry_policy if controller else None) or self._options.default_retry
        with self._db.transaction() as repo:
            job = repo.lock_job(row["job_id"])
            if job is None:
                return False
            reason = f"lease expired after attempt {row['attempts']}: the instance running it stopped"
            outbox: list[OutboxMessage] = []
            if row["attempts"] >= policy.max_attempts or job.status is not JobStatus.PROCESSING:
                counters = repo.finish_task(row["task_id"], TaskStatus.FAILED, None, reason)
                if counters is not None and counters.changed and controller is not None:
                    repo.set_task_error_category(row["task_id"], "transient")
                    params, outbox = self._params(controller, repo, job)
                    if params is not None:
                        outbox = after_task_finished(repo, controller, params, counters, job)
            elif repo.requeue_expired_task(row["task_id"], reason, self._options.lease_grace_seconds):
                outbox = queue_task_messages(repo, job.job_id, job.priority, [row["task_id"]])
            else:
                return False
        job_logger(logger, row["job_id"], row["task_id"]).warning("janitor: %s", reason)
        self._relay.publish(outbox)
        return True

    def resend_lost_task_messages(self) -> int:
        """Queued tasks untouched for long with no message owed: their message was lost. Each is resent
        in its own transaction that locks the job row first (lock order job → task, as cancel does)."""
        with self._db.transaction() as repo:
            rows = repo.forgotten_queued_tasks(self._options.requeue_queued_after_seconds, BATCH)
        return self._each(rows, "lost_task_messages", self._resend_lost_task_message)

    def _resend_lost_task_message(self, row: dict[str, Any]) -> bool:
        with self._db.transaction() as repo:
            job = repo.lock_job(row["job_id"])
            if job is None or job.status is not JobStatus.PROCESSING:
                return False
            if not repo.touch_forgotten_task(row["task_id"], self._options.requeue_queued_after_seconds):
                return False
            outbox = queue_task_messages(repo, job.job_id, JobPriority(row["priority"]), [row["task_id"]])
        self._relay.publish(outbox)
        return True

    def repair_stages(self) -> int:
        """Stages whose tasks are all finished but which were never closed: recount, close, advance."""
        with self._db.transaction() as repo:
            candidates = repo.stages_needing_repair(BATCH)
        return self._each(candidates, "repair_stages", self._repair_stage)

    def _repair_stage(self, row: dict[str, Any]) -> bool:
        with self._db.transaction() as repo:
            job = repo.lock_job(row["job_id"])
            counts = repo.recount_stage(row["job_id"], row["stage"])
            controller = self._registry.get(job.job_type) if job else None
            if job is None or counts is None or counts["status"] != "completed" or controller is None:
                return False
            counters = StageCounters(
                True, job.job_id, row["stage"], counts["task_count"], counts["completed_count"],
                counts["failed_count"], counts["skipped_count"], closed_stage=True,
            )  # fmt: skip
            params, outbox = self._params(controller, repo, job)
            if params is not None:
                outbox = after_task_finished(repo, controller, params, counters, job)
        job_logger(logger, row["job_id"]).warning("janitor: repaired stage %d", row["stage"])
        self._relay.publish(outbox)
        return True

    def resume_stalled_jobs(self) -> int:
        """Jobs owed a job message nobody will send (fan-out, advance or finalize lost)."""
        with self._db.transaction() as repo:
            stalled = repo.stalled_jobs(self._options.stalled_job_after_seconds, BATCH)
        return self._each(stalled, "stalled_jobs", self._resume_stalled_job)

    def _resume_stalled_job(self, row: dict[str, Any]) -> bool:
        with self._db.transaction() as repo:
            outbox = self._resume(repo, row)
            repo.touch_job(row["job_id"])
        if outbox:
            job_logger(logger, row["job_id"]).warning("janitor: resumed stalled job at stage %d", row["stage"])
            self._relay.publish(outbox)
        return bool(outbox)

    def _resume(self, repo: Any, row: dict[str, Any]) -> list[OutboxMessage]:
        job = repo.lock_job(row["job_id"])
        controller = self._registry.get(job.job_type) if job else None
        if job is None or controller is None:
            return []
        if job.status is JobStatus.QUEUED:
            dependencies = dependency_state(repo, job.depends_on)
            if dependencies.broken:
                return fail_job(repo, job.job_id, dependencies.broken)
            return queue_job_message(repo, job.job_id, 1, JobAction.CREATE_STAGE) if dependencies.satisfied else []
        if job.status is not JobStatus.PROCESSING:
            return []
        if row["stage_status"] is None:
            return queue_job_message(repo, job.job_id, job.stage, JobAction.CREATE_STAGE)
        return close_stage(repo, controller, job.job_id, job.stage)

    def redrive_lost_webhooks(self) -> int:
        """Open webhook deliveries whose message was lost (overdue by the lost-message threshold,
        nothing owed in the outbox) get a new message; the claim keeps a duplicate from posting twice."""
        return redrive_lost_deliveries(self._db, self._relay, self._options.requeue_queued_after_seconds, BATCH)

    def purge_old_poison_messages(self) -> int:
        """Delete poison-queue messages older than the retention (those no trigger reconciled)."""
        cutoff = datetime.now(UTC) - timedelta(hours=self._options.poison_retention_hours)
        deleted = 0
        for name in self._options.poison_queues:
            client = self._publisher.client_for_name(name)
            for _ in range(10):
                # Receive only as many as peeking showed old: a receive counts as a delivery, and a fresh
                # poison message must reach its reconciling trigger before maxDequeueCount.
                old = sum(1 for m in client.peek_messages(max_messages=32) if m.inserted_on and m.inserted_on < cutoff)
                if not old:
                    break
                for message in client.receive_messages(max_messages=old, visibility_timeout=5):
                    if message.inserted_on and message.inserted_on < cutoff:
                        client.delete_message(message)
                        deleted += 1
                    else:
                        client.update_message(message, visibility_timeout=0)  # visible again at once
        return deleted

    def purge_old_dead_letters(self) -> int:
        with self._db.transaction() as repo:
            return repo.delete_old_dead_letters(self._options.poison_retention_hours)
