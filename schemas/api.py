"""Response bodies of the HTTP API, as pydantic models: the source of the OpenAPI document's schemas
(services/openapi.py). They describe what the triggers return today; every model forbids fields it
does not name, so the schemathesis run (tests/integration/test_openapi_fuzz.py) fails when a trigger
answers with a field the document does not describe.

Timestamps are ISO 8601 / RFC 3339 text with an offset (``datetime.isoformat()`` of aware values).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.jobs import JobPriority, JobStatus, TaskStatus

JOB_ID_DESCRIPTION = "A job's id: SHA-256 (64 hex) of its type and canonical parameters."


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- errors -------------------------------------------------------------------------------------


class FieldProblem(BaseModel):
    """One entry of an error's ``details``: usually the field at fault and why."""

    model_config = ConfigDict(extra="allow")

    field: str | None = Field(default=None, description="The body, route or query field at fault.")
    message: str | None = None
    type: str | None = Field(default=None, description="pydantic's error type, for body validation errors.")


class ErrorBody(ApiModel):
    """Every error answer (triggers/http_responses.py): a message, and for request errors the fields
    at fault. 503 answers carry a Retry-After header."""

    error: str
    details: list[FieldProblem] | None = None


# --- jobs ---------------------------------------------------------------------------------------


class JobSubmitted(ApiModel):
    """POST /jobs/{job_type}: 202 when the job was created or restarted, 200 when it already existed."""

    job_id: str = Field(description=JOB_ID_DESCRIPTION)
    status: JobStatus
    status_url: str = Field(description="Absolute URL of GET /api/jobs/{job_id}.")
    created: bool
    restarted: bool
    replaced: bool = Field(description="re-run from stage 1 by the `replace` option")


class JobSummary(ApiModel):
    job_id: str = Field(description=JOB_ID_DESCRIPTION)
    job_type: str
    status: JobStatus
    stage: int = Field(description="The stage the job is in (1-based).")
    total_stages: int
    parameters: dict[str, Any] = Field(description="The validated parameters of the job's type.")
    priority: JobPriority
    max_parallel_tasks: int | None
    depends_on: list[str]
    error: str | None
    created_at: datetime | None
    updated_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None


class StageProgress(ApiModel):
    stage: int
    name: str
    state: Literal["pending", "processing", "completed"]
    task_count: int | None = Field(description="Tasks of the stage; null until the stage is created.")
    tasks: dict[TaskStatus, int] = Field(description="Tasks of the stage by status.")
    avg_task_seconds: float | None
    counters: dict[str, int] | None = Field(
        default=None,
        description="The job type's own progress units summed over the stage's completed tasks (e.g. "
        "process_rasters: files, converted, failed); absent for job types that declare none.",
    )


class JobProgress(ApiModel):
    stages: list[StageProgress]
    percent: float = Field(ge=0, le=100)
    eta_seconds: float | None = Field(description="Estimated seconds to completion; null until measurable.")


class WebhookState(ApiModel):
    """One subscriber (``callback_url``) of a job and its latest delivery."""

    url: str = Field(description="The callback URL; a query string is shown as `?redacted`.")
    status: Literal["waiting", "pending", "delivering", "delivered", "failed"] = Field(
        description="waiting: the job has not ended since the subscription; pending: an attempt is due at "
        "`next_attempt_at`; delivering: an attempt is in flight; delivered: a 2xx answer; failed: every "
        "attempt failed."
    )
    event_type: str | None = Field(description="The delivery's event, e.g. `job.completed`; null while waiting.")
    webhook_id: str | None = Field(description="The `webhook-id` header, the same on every attempt of a delivery.")
    attempts: int = Field(ge=0)
    max_attempts: int = Field(ge=1)
    next_attempt_at: datetime | None
    last_error: str | None
    last_status_code: int | None
    delivered_at: datetime | None
    subscribed_at: datetime | None


class JobStatusDocument(JobSummary):
    """GET /jobs/{job_id}."""

    progress: JobProgress
    result: dict[str, Any] | None = Field(description="What the job's finalizer returned, once it completed.")
    webhooks: list[WebhookState] = Field(description="The job's callback URLs and their deliveries.")


class JobPage(ApiModel):
    """GET /jobs: newest first; follow ``next_cursor`` until it is null."""

    jobs: list[JobSummary]
    next_cursor: str | None


class TaskSummary(ApiModel):
    task_id: str
    stage: int
    task_key: str
    status: TaskStatus
    attempts: int
    error_category: str | None
    parameters: dict[str, Any]
    predecessor_task_id: str | None
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None


class TaskPage(ApiModel):
    """GET /jobs/{job_id}/tasks: by task id; follow ``next_cursor`` until it is null."""

    job_id: str
    tasks: list[TaskSummary]
    next_cursor: str | None


class JobCancelled(ApiModel):
    """POST /jobs/{job_id}/cancel."""

    job_id: str
    status: JobStatus
    status_url: str


class JobRetried(ApiModel):
    """POST /jobs/{job_id}/retry: the job restarts at ``stage``."""

    job_id: str
    status: JobStatus
    stage: int
    status_url: str


class JobTypeInfo(ApiModel):
    job_type: str
    description: str
    stages: list[str]
    parameters_schema: dict[str, Any] = Field(description="JSON Schema of the job type's parameters.")


class JobTypeList(ApiModel):
    """GET /job-types."""

    job_types: list[JobTypeInfo]


# --- containers ---------------------------------------------------------------------------------


class ContainerSummary(ApiModel):
    name: str
    blob_count: int = Field(ge=0)
    blob_count_is_exact: bool = Field(description="False when the count stopped at CONTAINER_BLOB_COUNT_CAP.")


class ContainerPage(ApiModel):
    """GET /containers: this deployment's input and output containers, by name."""

    containers: list[ContainerSummary]
    next_cursor: str | None


class BlobSummary(ApiModel):
    name: str
    size: int | None
    last_modified: datetime | None
    content_type: str | None
    etag: str | None


class BlobPage(ApiModel):
    """GET /containers/{container}/blobs: with ``suffix`` a page may hold fewer than ``limit`` blobs."""

    container: str
    prefix: str
    suffix: str
    blobs: list[BlobSummary]
    next_cursor: str | None


# --- health -------------------------------------------------------------------------------------


class MigrationState(ApiModel):
    applied: int
    expected: int


class DependencyHealth(ApiModel):
    status: Literal["ok", "down"]
    latency_ms: float | None = None
    error: str | None = Field(default=None, description="Why it is down: an error type, never a host or key.")
    migrations: MigrationState | None = None
    containers: dict[str, bool] | None = Field(default=None, description="Whether each data container exists.")


class Dependencies(ApiModel):
    postgres: DependencyHealth
    queue_storage: DependencyHealth
    data_storage: DependencyHealth


class Readiness(ApiModel):
    """GET /health: 200 when every dependency is ok, else 503 (with Retry-After)."""

    status: Literal["ready", "not ready"]
    dependencies: Dependencies


class Liveness(ApiModel):
    """GET /health/live."""

    status: Literal["alive"]


# --- operator endpoints (triggers/http_operations.py) -------------------------------------------


class QueueDepth(ApiModel):
    name: str
    role: str = Field(description='"jobs", "tasks", "tasks_high" or "webhooks".')
    poison: bool
    approximate_messages: int
    oldest_message_age_seconds: float | None


class QueueList(ApiModel):
    """GET /queues."""

    queues: list[QueueDepth]


class DeadLetter(ApiModel):
    id: int
    queue: str
    reason: str
    job_id: str | None
    task_id: str | None
    created_at: datetime | None
    body: str
    message_id: str | None
    dequeue_count: int | None
    status: Literal["open", "requeued"]
    requeued_at: datetime | None


class DeadLetterList(ApiModel):
    """GET /dead-letters: newest first."""

    dead_letters: list[DeadLetter]


class DeadLetterRequeued(ApiModel):
    """POST /dead-letters/{id}/requeue: the job retried, or the message re-sent to its queue."""

    id: int
    status: Literal["requeued"]
    action: Literal["job_retried", "message_resent"]
    job_id: str
    job_status: str | None = None
    queue: str | None = None


class PoisonMessage(ApiModel):
    message_id: str | None
    inserted_on: datetime | None
    dequeue_count: int | None
    body: str


class PoisonPeek(ApiModel):
    """GET /poison/{queue}: up to 32 messages, not removed."""

    queue: str
    messages: list[PoisonMessage]


class PoisonRequeued(ApiModel):
    """POST /poison/{queue}/requeue. ``remaining`` is -1 when it could not be counted."""

    queue: str
    source_queue: str
    requeued: int
    failed: int
    remaining: int


class PoisonPurged(ApiModel):
    """DELETE /poison/{queue}. ``remaining`` is -1 when it could not be counted."""

    queue: str
    deleted: int
    failed: int
    remaining: int


class FailureGroup(ApiModel):
    error_category: str | None
    reason: str | None
    count: int
    last_at: datetime | None
    job_ids: list[str]


class FailureStats(ApiModel):
    """GET /stats/failures: failed tasks of the last ``hours``, grouped by category and reason."""

    hours: int
    groups: list[FailureGroup]


class ThroughputBucket(ApiModel):
    minute: datetime | None
    completed: int
    failed: int


class ThroughputStats(ApiModel):
    """GET /stats/throughput: finished tasks per minute over the last ``minutes``."""

    minutes: int
    buckets: list[ThroughputBucket]


# Every model the document names in components/schemas (each model's nested ones come with it).
RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    ErrorBody,
    JobSubmitted,
    JobStatusDocument,
    JobPage,
    TaskPage,
    JobCancelled,
    JobRetried,
    JobTypeList,
    ContainerPage,
    BlobPage,
    Readiness,
    Liveness,
    QueueList,
    DeadLetterList,
    DeadLetterRequeued,
    PoisonPeek,
    PoisonRequeued,
    PoisonPurged,
    FailureStats,
    ThroughputStats,
)
