"""One OperationDoc per HTTP function of the app (summary, parameters, responses)."""

from __future__ import annotations

from schemas import api
from schemas.jobs import JobStatus, TaskStatus
from services.openapi.model import (
    BLOB_NAME_PART,
    CONTAINER_NAME,
    CURSOR,
    JOB_ID,
    JSON,
    ApiLimits,
    Body,
    OperationDoc,
    Param,
    enum_schema,
    int_schema,
    limit_param,
    schema_ref,
    text_schema,
)
from services.openapi.stac_operations import stac_operation_docs
from services.operations.service import (
    DEAD_LETTER_MAX_LIMIT,
    DEAD_LETTER_STATUSES,
    MAX_STATS_HOURS,
    MAX_STATS_MINUTES,
)
from triggers.http_input import INT4_MAX


def operation_docs(limits: ApiLimits) -> dict[str, OperationDoc]:
    jobs_limit = limit_param(limits.job_list_max_limit, min(50, limits.job_list_max_limit))
    queue = Param(
        "queue",
        "path",
        enum_schema(limits.poison_queues) if limits.poison_queues else text_schema(minLength=1),
        "A poison queue of this app (`<queue>-poison`).",
    )
    dead_letter_id = Param("id", "path", int_schema(1, 10**18 - 1), "A dead letter's id.")
    html = {"text/html": {"type": "string"}}
    text_404 = Body("Not found.", content={"text/plain": {"type": "string"}, JSON: {"$ref": schema_ref("ErrorBody")}})
    return {
        "submit_job": OperationDoc(
            "jobs/{job_type}",
            "POST",
            "Submit a job",
            "jobs",
            {
                202: Body(
                    "Created (or a failed/cancelled job restarted, or a finished one replaced).", api.JobSubmitted
                ),
                200: Body("The same job already exists (same type and parameters).", api.JobSubmitted),
            },
            (400, 404, 409, 413, 429, 503),
            description="The body holds the job type's parameters plus the job options `priority`, "
            "`max_parallel_tasks`, `depends_on`, `replace` and `callback_url`. The job id is derived from the type "
            "and parameters, so a resubmission returns the existing job; with `replace: true` a finished job runs "
            "again from its first stage (409 while it is queued or processing). A `callback_url` gets a signed "
            "POST (Standard Webhooks) when the job ends; a resubmission with another URL adds a subscriber.",
            per_job_type=True,
        ),
        "get_job": OperationDoc(
            "jobs/{job_id}",
            "GET",
            "A job's status, progress and result",
            "jobs",
            {200: Body("The job.", api.JobStatusDocument)},
            (400, 404, 503),
            (JOB_ID,),
        ),
        "list_jobs": OperationDoc(
            "jobs",
            "GET",
            "List jobs, newest first",
            "jobs",
            {200: Body("A page of jobs.", api.JobPage)},
            (400, 503),
            (
                Param("status", "query", enum_schema(s.value for s in JobStatus)),
                Param("job_type", "query", text_schema()),
                jobs_limit,
                CURSOR,
            ),
        ),
        "list_job_tasks": OperationDoc(
            "jobs/{job_id}/tasks",
            "GET",
            "List a job's tasks",
            "jobs",
            {200: Body("A page of tasks.", api.TaskPage)},
            (400, 404, 503),
            (
                JOB_ID,
                Param("stage", "query", int_schema(1, INT4_MAX)),
                Param("status", "query", enum_schema(s.value for s in TaskStatus)),
                jobs_limit,
                CURSOR,
            ),
        ),
        "cancel_job": OperationDoc(
            "jobs/{job_id}/cancel",
            "POST",
            "Cancel a job",
            "jobs",
            {200: Body("Cancelled.", api.JobCancelled)},
            (400, 404, 409, 503),
            (JOB_ID,),
        ),
        "retry_job": OperationDoc(
            "jobs/{job_id}/retry",
            "POST",
            "Retry a failed or cancelled job",
            "jobs",
            {202: Body("Restarted.", api.JobRetried)},
            (400, 404, 409, 503),
            (JOB_ID,),
        ),
        "list_job_types": OperationDoc(
            "job-types",
            "GET",
            "The job types, their stages and parameter schemas",
            "jobs",
            {200: Body("Every job type.", api.JobTypeList)},
            (503,),
        ),
        "list_containers": OperationDoc(
            "containers",
            "GET",
            "This deployment's input and output containers with blob counts",
            "containers",
            {200: Body("A page of containers.", api.ContainerPage)},
            (400, 503),
            (
                limit_param(limits.container_list_max_limit, min(50, limits.container_list_max_limit)),
                Param("cursor", "query", CONTAINER_NAME, "`next_cursor` of the previous page."),
            ),
        ),
        "list_container_blobs": OperationDoc(
            "containers/{container}/blobs",
            "GET",
            "List the blobs of a container",
            "containers",
            {200: Body("A page of blobs.", api.BlobPage)},
            (400, 403, 404, 503),
            (
                Param("container", "path", CONTAINER_NAME, "An input or output container of this deployment."),
                Param("prefix", "query", BLOB_NAME_PART, "Only blobs whose name starts with this."),
                Param("suffix", "query", BLOB_NAME_PART, "Only blobs whose name ends with this."),
                limit_param(limits.blob_list_max_limit, min(100, limits.blob_list_max_limit)),
                CURSOR,
            ),
        ),
        "health": OperationDoc(
            "health",
            "GET",
            "Readiness: each dependency's status and latency",
            "health",
            {
                200: Body("Ready.", api.Readiness),
                503: Body("Not ready (Retry-After set).", any_of=(api.Readiness, api.ErrorBody)),
            },
        ),
        "health_live": OperationDoc(
            "health/live", "GET", "Liveness", "health", {200: Body("The process answers.", api.Liveness)}
        ),
        "openapi_document": OperationDoc(
            "openapi.json",
            "GET",
            "This document",
            "meta",
            {200: Body("The OpenAPI 3.1 document.", content={JSON: {"type": "object"}})},
        ),
        "api_docs": OperationDoc(
            "docs",
            "GET",
            "This document as an HTML page (the STAC API's service-doc)",
            "meta",
            {200: Body("The page.", content={"text/html": {"type": "string"}})},
        ),
        "list_queues": OperationDoc(
            "queues",
            "GET",
            "Queue depths and oldest message ages (poison queues included)",
            "operations",
            {200: Body("Every queue of the app.", api.QueueList)},
            (503,),
        ),
        "list_dead_letters": OperationDoc(
            "dead-letters",
            "GET",
            "List dead letters, newest first",
            "operations",
            {200: Body("Dead letters.", api.DeadLetterList)},
            (400, 503),
            (
                Param("limit", "query", int_schema(1, DEAD_LETTER_MAX_LIMIT), "At most this many (default 50)."),
                Param("status", "query", enum_schema(DEAD_LETTER_STATUSES)),
            ),
        ),
        "requeue_dead_letter": OperationDoc(
            "dead-letters/{id}/requeue",
            "POST",
            "Put a dead letter's work back (retry its job, or re-send its message)",
            "operations",
            {202: Body("Requeued.", api.DeadLetterRequeued)},
            (400, 404, 409, 503),
            (dead_letter_id,),
        ),
        "delete_dead_letter": OperationDoc(
            "dead-letters/{id}",
            "DELETE",
            "Delete a dead letter",
            "operations",
            {204: Body("Deleted.")},
            (400, 404, 503),
            (dead_letter_id,),
        ),
        "peek_poison_queue": OperationDoc(
            "poison/{queue}",
            "GET",
            "Peek at a poison queue's messages",
            "operations",
            {200: Body("Up to 32 messages, left in the queue.", api.PoisonPeek)},
            (400, 503),
            (queue,),
        ),
        "requeue_poison_queue": OperationDoc(
            "poison/{queue}/requeue",
            "POST",
            "Move a poison queue's messages back to their queue",
            "operations",
            {200: Body("What was moved.", api.PoisonRequeued)},
            (400, 503),
            (queue,),
        ),
        "purge_poison_queue": OperationDoc(
            "poison/{queue}",
            "DELETE",
            "Delete a poison queue's messages",
            "operations",
            {200: Body("What was deleted.", api.PoisonPurged)},
            (400, 503),
            (queue,),
        ),
        "failure_stats": OperationDoc(
            "stats/failures",
            "GET",
            "Failed tasks grouped by category and reason",
            "operations",
            {200: Body("Failure groups.", api.FailureStats)},
            (400, 503),
            (Param("hours", "query", int_schema(1, MAX_STATS_HOURS), "Window in hours (default 24)."),),
        ),
        "throughput_stats": OperationDoc(
            "stats/throughput",
            "GET",
            "Finished tasks per minute",
            "operations",
            {200: Body("Per-minute buckets.", api.ThroughputStats)},
            (400, 503),
            (Param("minutes", "query", int_schema(1, MAX_STATS_MINUTES), "Window in minutes (default 60)."),),
        ),
        "dashboard": OperationDoc(
            "dashboard", "GET", "The operator dashboard (HTML)", "dashboard", {200: Body("The page.", content=html)}
        ),
        "dashboard_job": OperationDoc(
            "dashboard/jobs/{job_id}",
            "GET",
            "The dashboard opened on one job (HTML)",
            "dashboard",
            {200: Body("The page.", content=html), 404: text_404},
            params=(Param("job_id", "path", text_schema(minLength=1), api.JOB_ID_DESCRIPTION),),
        ),
        "dashboard_static": OperationDoc(
            "dashboard/static/{name}",
            "GET",
            "The dashboard's scripts, styles and icon",
            "dashboard",
            {
                200: Body(
                    "The file.",
                    content={
                        "text/javascript": {"type": "string"},
                        "text/css": {"type": "string"},
                        "image/svg+xml": {"type": "string"},
                    },
                ),
                404: text_404,
            },
            params=(Param("name", "path", text_schema(minLength=1), "A file name, e.g. main.js."),),
        ),
        **stac_operation_docs(),
    }


# --- discovery ----------------------------------------------------------------------------------
