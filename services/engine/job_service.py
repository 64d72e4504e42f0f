"""Job submission and the read side of the HTTP API."""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from repositories.database import Database
from schemas.errors import InvalidRequestError, NotFoundError, ServiceUnavailableError
from schemas.jobs import SATISFIED_DEPENDENCY_STATUSES, JobPriority, JobRecord, JobStatus, TaskRecord, TaskStatus
from schemas.messages import JobAction
from services.engine.conflict_retry import retry_on_conflict
from services.engine.identifiers import job_id_for
from services.engine.job_control import JobControl
from services.engine.job_lifecycle import fail_job, queue_job_message
from services.engine.job_progress import compute_progress
from services.engine.logging_context import job_logger
from services.engine.outbox_relay import OutboxRelay
from services.engine.registry import JobTypeRegistry
from services.webhooks.events import schedule_deliveries
from services.webhooks.subscriptions import CallbackPolicy, subscribe, webhook_states
from services.webhooks.urls import MAX_URL_LENGTH

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submission:
    job: JobRecord
    created: bool
    restarted: bool = False
    replaced: bool = False  # restarted from stage 1 by ``replace: true``


# Keys of a submission body that are options of the job, not parameters of its type. They do not
# change the job id: the same work submitted with another priority is the same job.
OPTION_KEYS = ("priority", "max_parallel_tasks", "depends_on", "replace", "callback_url")


class SubmissionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: JobPriority = JobPriority.NORMAL
    max_parallel_tasks: int | None = Field(default=None, ge=1, le=100_000)
    depends_on: list[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(default_factory=list, max_length=100)
    replace: bool = Field(
        default=False,
        description="Run an existing job with the same id again from its first stage, even a completed one "
        "(409 while it is queued or processing). Ignored when the job is new.",
    )
    callback_url: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_URL_LENGTH,
        description="An https URL that gets a signed POST (Standard Webhooks: webhook-id, webhook-timestamp, "
        "webhook-signature) when the job ends: completed, completed_with_errors, failed or cancelled. Not part "
        "of the job id: resubmitting with another URL adds a subscriber, and a job that has ended already is "
        "delivered at once. Its host must resolve to public addresses only.",
    )


def field_errors(exc: ValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """pydantic errors as [{field, message, type}] for 400 responses."""
    return [
        {
            "field": prefix + ".".join(str(p) for p in err["loc"]) if err["loc"] else prefix.rstrip(".") or "body",
            "message": err["msg"],
            "type": err["type"],
        }
        for err in exc.errors(include_url=False)
    ]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def encode_cursor(parts: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts, separators=(",", ":")).encode()).decode().rstrip("=")


def _bad_cursor() -> InvalidRequestError:
    return InvalidRequestError(
        "invalid cursor", details=[{"field": "cursor", "message": "not a cursor returned by this API"}]
    )


def decode_cursor(cursor: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The parts of a cursor made by ``encode_cursor``: exactly ``keys``, each a string Postgres can
    take (no NUL, no lone surrogate); anything else is a 400 naming ``cursor``."""
    try:
        if len(cursor) > 4096:
            raise ValueError("cursor too long")
        parts = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(parts, dict) or set(parts) != set(keys):
            raise ValueError("unexpected cursor content")
        for value in parts.values():
            if not isinstance(value, str) or "\x00" in value:
                raise ValueError("unexpected cursor value")
            value.encode("utf-8")
        return parts
    except (ValueError, binascii.Error, UnicodeError, RecursionError) as exc:
        raise _bad_cursor() from exc


def _cursor_timestamp(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise _bad_cursor() from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class JobService:
    def __init__(
        self,
        db: Database,
        registry: JobTypeRegistry,
        relay: OutboxRelay,
        *,
        max_list_limit: int,
        callbacks: CallbackPolicy | None = None,
    ) -> None:
        self._db = db
        self._registry = registry
        self._relay = relay
        self._max_list_limit = max_list_limit
        self._callbacks = callbacks or CallbackPolicy()

    # --- commands -----------------------------------------------------------------------------

    @retry_on_conflict
    def submit(self, job_type: str, body: Any, *, api_base: str | None = None) -> Submission:
        """Validate, resolve (the job type's ``resolve_parameters``), derive the id, insert and queue
        stage 1. Resubmitting returns the existing job; resubmitting a failed or cancelled job
        restarts it (like POST …/retry); with ``replace: true`` any finished job runs again from
        stage 1, and a queued or processing one is a 409. A ``callback_url`` subscribes to the job's
        end (``api_base``, e.g. https://host/api, makes the payload's status link)."""
        controller = self._registry.get(job_type)
        if controller is None:
            known = ", ".join(c.job_type for c in self._registry.all())
            raise NotFoundError(f"unknown job type {job_type!r}; known types: {known}")
        if not isinstance(body, dict):
            raise InvalidRequestError(
                "parameters must be a JSON object", details=[{"field": "body", "message": "expected a JSON object"}]
            )
        raw_options = {k: body[k] for k in OPTION_KEYS if k in body}
        raw_parameters = {k: v for k, v in body.items() if k not in OPTION_KEYS}
        details: list[dict[str, Any]] = []
        try:
            params = controller.parse_parameters(raw_parameters)
        except ValidationError as exc:
            details += field_errors(exc)
        options = self._parse_options(raw_options, details)
        if details:
            raise InvalidRequestError("invalid parameters", details=details)
        assert options is not None
        params = controller.resolve_parameters(params)  # outside the transaction: may read storage
        canonical = params.model_dump(mode="json")
        job_id = job_id_for(job_type, canonical)
        if job_id in options.depends_on:
            raise InvalidRequestError(
                "a job cannot depend on itself", details=[{"field": "depends_on", "message": "own id"}]
            )
        with self._db.transaction() as repo:
            job = repo.insert_job(
                job_id,
                job_type,
                canonical,
                controller.total_stages,
                priority=options.priority,
                max_parallel_tasks=options.max_parallel_tasks,
                depends_on=options.depends_on,
            )
            callback, status_url = options.callback_url, f"{api_base}/jobs/{job_id}" if api_base else None
            if job is None:
                # Locked when subscribing: a job ending meanwhile either sees the subscription (and
                # owes it a delivery) or has ended before this reads its status (delivered below).
                existing = repo.lock_job(job_id) if callback else repo.get_job(job_id)
                assert existing is not None  # the engine never deletes jobs
                subscription = subscribe(repo, job_id, callback, status_url) if callback else None
                created, outbox = self._resubmitted(repo, existing, options.replace, subscription)
            else:
                if callback:  # before the first messages: a job failed at once (dependency) owes it
                    subscribe(repo, job_id, callback, status_url)
                outbox = self._first_messages(repo, job, options.depends_on)
                created = Submission(job, created=True)
        sent = self._relay.publish(outbox)
        if not (created.created or created.restarted):
            return created  # at most a webhook delivery was owed: the janitor sends it if this send failed
        if sent < len(outbox):
            # Saved with its message in the outbox (the janitor sends it once storage is back); the
            # caller hears now that queue storage is down, and a resubmission returns this job.
            raise ServiceUnavailableError(
                "queue storage unavailable; the job is saved and will be queued when it is back",
                details=[{"job_id": job_id}],
            )
        event = "replaced" if created.replaced else "restarted" if created.restarted else "submitted"
        job_logger(logger, job_id).info("job %s: %s", event, job_type)
        return created

    def _parse_options(self, raw: dict[str, Any], details: list[dict[str, Any]]) -> SubmissionOptions | None:
        """The options, or None with their problems added to ``details``. A callback URL is checked
        (form, then its host's addresses) before any state changes: resolving may take a moment."""
        try:
            options = SubmissionOptions.model_validate(raw)
        except ValidationError as exc:
            details += field_errors(exc)
            return None
        problem = self._callbacks.problem(options.callback_url) if options.callback_url is not None else None
        if problem:
            details.append({"field": "callback_url", "message": problem})
        return options

    @staticmethod
    def _resubmitted(
        repo: Any, existing: JobRecord, replace: bool, subscription: int | None
    ) -> tuple[Submission, list[Any]]:
        if replace:
            replaced, outbox = JobControl.rerun(repo, existing)
            return Submission(replaced, created=False, restarted=True, replaced=True), outbox
        if existing.status in (JobStatus.FAILED, JobStatus.CANCELLED):
            restarted, outbox = JobControl.restart(repo, existing)
            return Submission(restarted, created=False, restarted=True), outbox
        # The job stays as it is; a new subscriber of a job that has ended is owed its delivery now.
        outbox = schedule_deliveries(repo, existing, subscription) if subscription else []
        return Submission(existing, created=False), outbox

    @staticmethod
    def _first_messages(repo: Any, job: JobRecord, depends_on: list[str]) -> list[Any]:
        """Stage 1 now, or when the dependencies complete (their completion queues it)."""
        if not depends_on:
            return queue_job_message(repo, job.job_id, 1, JobAction.CREATE_STAGE)
        found = {r["job_id"]: r for r in repo.lock_jobs_shared(depends_on)}
        missing = [d for d in depends_on if d not in found]
        if missing:
            raise InvalidRequestError(
                "unknown dependency", details=[{"field": "depends_on", "message": f"no job {missing[0]}"}]
            )
        for dep_id, row in found.items():
            if JobStatus(row["status"]) in (JobStatus.FAILED, JobStatus.CANCELLED):
                return fail_job(repo, job.job_id, f"dependency {dep_id} ended {row['status']}: {row['error']}")
        if all(JobStatus(r["status"]) in SATISFIED_DEPENDENCY_STATUSES for r in found.values()):
            return queue_job_message(repo, job.job_id, 1, JobAction.CREATE_STAGE)
        return []

    # --- queries ------------------------------------------------------------------------------

    def job_status(self, job_id: str) -> dict[str, Any]:
        with self._db.transaction() as repo:
            job = repo.get_job(job_id)
            if job is None:
                raise NotFoundError(f"job {job_id} not found")
            stages = repo.list_stages(job_id)
            counts = repo.task_counts_of_job(job_id)
            timing = repo.job_timing(job_id)
            webhooks = webhook_states(repo, job_id, self._callbacks.max_attempts)
            controller = self._registry.get(job.job_type)
            counters = (
                repo.task_result_counters_of_job(job_id, controller.progress_counters)
                if controller and controller.progress_counters
                else None
            )
        names = (
            [s.name for s in controller.stages]
            if controller
            else [f"stage_{i}" for i in range(1, job.total_stages + 1)]
        )
        progress = compute_progress(
            job, names, stages, counts, timing["first_started_at"], datetime.now(UTC), counters=counters
        )
        return {**job_summary(job), "progress": progress, "result": job.result, "webhooks": webhooks}

    def list_jobs(
        self, *, status: str | None, job_type: str | None, limit: int | None, cursor: str | None
    ) -> dict[str, Any]:
        details = []
        if status is not None and status not in {s.value for s in JobStatus}:
            details.append({"field": "status", "message": f"must be one of {[s.value for s in JobStatus]}"})
        limit = self._check_limit(limit, details)
        if details:
            raise InvalidRequestError("invalid query parameters", details=details)
        after = None
        if cursor:
            parts = decode_cursor(cursor, ("created_at", "job_id"))
            after = (_cursor_timestamp(parts["created_at"]), parts["job_id"])
        with self._db.transaction() as repo:
            jobs = repo.list_jobs(status=status, job_type=job_type, after=after, limit=limit + 1)
        next_cursor = None
        if len(jobs) > limit:
            jobs = jobs[:limit]
            next_cursor = encode_cursor({"created_at": jobs[-1].created_at.isoformat(), "job_id": jobs[-1].job_id})
        return {"jobs": [job_summary(j) for j in jobs], "next_cursor": next_cursor}

    def list_tasks(
        self, job_id: str, *, stage: int | None, status: str | None, limit: int | None, cursor: str | None
    ) -> dict[str, Any]:
        details = []
        if status is not None and status not in {s.value for s in TaskStatus}:
            details.append({"field": "status", "message": f"must be one of {[s.value for s in TaskStatus]}"})
        limit = self._check_limit(limit, details)
        if details:
            raise InvalidRequestError("invalid query parameters", details=details)
        after = decode_cursor(cursor, ("task_id",))["task_id"] if cursor else None
        with self._db.transaction() as repo:
            if repo.get_job(job_id) is None:
                raise NotFoundError(f"job {job_id} not found")
            tasks = repo.list_tasks(job_id, stage=stage, status=status, after_task_id=after, limit=limit + 1)
        next_cursor = None
        if len(tasks) > limit:
            tasks = tasks[:limit]
            next_cursor = encode_cursor({"task_id": tasks[-1].task_id})
        return {"job_id": job_id, "tasks": [task_summary(t) for t in tasks], "next_cursor": next_cursor}

    def job_types(self) -> list[dict[str, Any]]:
        return [
            {
                "job_type": c.job_type,
                "description": c.description,
                "stages": [s.name for s in c.stages],
                "parameters_schema": c.parameters_model.model_json_schema(),
            }
            for c in self._registry.all()
        ]

    def _check_limit(self, limit: int | None, details: list[dict[str, Any]]) -> int:
        if limit is None:
            return min(50, self._max_list_limit)
        if not 1 <= limit <= self._max_list_limit:
            details.append({"field": "limit", "message": f"must be between 1 and {self._max_list_limit}"})
        return limit


def job_summary(job: JobRecord) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "job_type": job.job_type,
        "status": str(job.status),
        "stage": job.stage,
        "total_stages": job.total_stages,
        "parameters": job.parameters,
        "priority": str(job.priority),
        "max_parallel_tasks": job.max_parallel_tasks,
        "depends_on": job.depends_on,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "started_at": _iso(job.started_at),
        "completed_at": _iso(job.completed_at),
    }


def task_summary(task: TaskRecord) -> dict[str, Any]:
    return {
        "task_id": task.task_id,
        "stage": task.stage,
        "task_key": task.task_key,
        "status": str(task.status),
        "attempts": task.attempts,
        "error_category": task.error_category,
        "parameters": task.parameters,
        "predecessor_task_id": task.predecessor_task_id,
        "result": task.result,
        "error": task.error,
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "completed_at": _iso(task.completed_at),
    }
