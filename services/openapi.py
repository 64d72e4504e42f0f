"""The OpenAPI 3.1 document of the HTTP API (GET /api/openapi.json), generated from the app itself.

The paths come from the Function App's HTTP functions (``app.get_functions()``: route, methods,
auth level), each matched by function name to an entry of ``operation_docs`` below (summary,
parameters, responses). A function with no entry, or whose route or methods differ from its entry,
is *undocumented*: ``build_document(..., strict=True)`` raises (the unit tests do), the served
document leaves it out. Schemas are JSON Schema 2020-12 from pydantic: the response models of
``schemas.api`` and each job type's parameters model from the registry.

``POST /jobs/{job_type}`` is documented as one concrete path per job type (``/jobs/hello_world``,
…), each with its own request body schema: an exact body per type (rather than a ``oneOf`` that
would need a discriminator the body does not have), which lets schemathesis generate valid and
invalid bodies for each type; the templated form would also clash with ``/jobs/{job_id}``
(OpenAPI forbids two templated paths of the same shape).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from schemas import api
from schemas.jobs import JobStatus, TaskStatus
from services.engine.job_service import SubmissionOptions
from services.operations.service import (
    DEAD_LETTER_MAX_LIMIT,
    DEAD_LETTER_STATUSES,
    MAX_STATS_HOURS,
    MAX_STATS_MINUTES,
    POISON_SUFFIX,
)
from triggers.http_input import INT4_MAX, MAX_PARAM_CHARS

OPENAPI_VERSION = "3.1.0"
API_VERSION = "0.1.0"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
REF_TEMPLATE = "#/components/schemas/{model}"
JSON = "application/json"
SECURITY_SCHEMES = {
    "functionKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "x-functions-key",
        "description": "A function key (or the host key) of the Function App.",
    },
    "functionKeyQuery": {
        "type": "apiKey",
        "in": "query",
        "name": "code",
        "description": "The same key as the `code` query parameter.",
    },
}
FUNCTION_KEY_SECURITY: list[dict[str, list[str]]] = [{"functionKeyHeader": []}, {"functionKeyQuery": []}]

ERROR_DESCRIPTIONS = {
    400: "Invalid request: `details` names each field at fault.",
    403: "Forbidden: a resource outside what this deployment exposes.",
    404: "Not found.",
    409: "Conflict with the resource's state.",
    413: "Request body over the MAX_REQUEST_BYTES limit.",
    429: "Too many submissions from this caller (SUBMIT_RATE_PER_MINUTE, SUBMIT_BURST); retry after the "
    "Retry-After header's seconds.",
    503: "A dependency (Postgres, Storage) is unavailable; retry after the Retry-After header's seconds.",
}


RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "string", "pattern": "^[0-9]+$"}}


class UndocumentedRouteError(ValueError):
    """HTTP functions of the app that the document does not describe."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("undocumented HTTP functions: " + "; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True)
class HttpRoute:
    """An HTTP function of the app, as the host routes it."""

    name: str
    route: str
    methods: tuple[str, ...]
    anonymous: bool


@dataclass(frozen=True)
class JobTypeDoc:
    job_type: str
    description: str
    parameters_model: type[BaseModel]


@dataclass(frozen=True)
class ApiLimits:
    """Bounds the API enforces that come from settings."""

    job_list_max_limit: int = 200
    container_list_max_limit: int = 100
    blob_list_max_limit: int = 1000
    poison_queues: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> ApiLimits:
        queues = (settings.job_queue, settings.task_queue, settings.high_priority_task_queue)
        return cls(
            job_list_max_limit=settings.job_list_max_limit,
            container_list_max_limit=settings.container_list_max_limit,
            blob_list_max_limit=settings.blob_list_max_limit,
            poison_queues=tuple(f"{name}{POISON_SUFFIX}" for name in queues),
        )


@dataclass(frozen=True)
class Param:
    name: str
    location: str  # "path" or "query"
    schema: dict[str, Any]
    description: str = ""

    def render(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "in": self.location, "required": self.location == "path"}
        if self.description:
            out["description"] = self.description
        out["schema"] = self.schema
        return out


@dataclass(frozen=True)
class Body:
    """A response body: a model (JSON), or raw content by media type."""

    description: str
    model: type[BaseModel] | None = None
    any_of: tuple[type[BaseModel], ...] = ()
    content: Mapping[str, dict[str, Any]] | None = None  # media type -> schema


@dataclass(frozen=True)
class OperationDoc:
    route: str  # as the trigger declares it, e.g. "jobs/{job_id}"
    method: str
    summary: str
    tag: str
    responses: Mapping[int, Body]
    errors: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    description: str = ""
    per_job_type: bool = False  # one concrete path per job type, with that type's body
    extra: Mapping[str, Any] = field(default_factory=dict)


# --- parameter schemas --------------------------------------------------------------------------


def _text(max_length: int = MAX_PARAM_CHARS, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **extra}


def _int(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


CONTAINER_NAME = {"type": "string", "minLength": 3, "maxLength": 63, "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"}
# No blob name holds a control character (services/container_browser.py answers 400 to one).
BLOB_NAME_PART = _text(1024, pattern="^[^\\u0000-\\u001f\\u007f]*$")
JOB_ID = Param("job_id", "path", _text(minLength=1), api.JOB_ID_DESCRIPTION)
CURSOR = Param("cursor", "query", _text(), "`next_cursor` of the previous page.")


def _limit(maximum: int, default: int) -> Param:
    return Param("limit", "query", _int(1, maximum), f"Page size (default {default}).")


def _enum(values: Iterable[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


# --- the table: one entry per HTTP function, by function name ----------------------------------


def operation_docs(limits: ApiLimits) -> dict[str, OperationDoc]:
    jobs_limit = _limit(limits.job_list_max_limit, min(50, limits.job_list_max_limit))
    queue = Param(
        "queue",
        "path",
        _enum(limits.poison_queues) if limits.poison_queues else _text(minLength=1),
        "A poison queue of this app (`<queue>-poison`).",
    )
    dead_letter_id = Param("id", "path", _int(1, 10**18 - 1), "A dead letter's id.")
    html = {"text/html": {"type": "string"}}
    text_404 = Body("Not found.", content={"text/plain": {"type": "string"}, JSON: {"$ref": _ref("ErrorBody")}})
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
            "`max_parallel_tasks`, `depends_on` and `replace`. The job id is derived from the type and parameters, "
            "so a resubmission returns the existing job; with `replace: true` a finished job runs again from its "
            "first stage (409 while it is queued or processing).",
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
                Param("status", "query", _enum(s.value for s in JobStatus)),
                Param("job_type", "query", _text()),
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
                Param("stage", "query", _int(1, INT4_MAX)),
                Param("status", "query", _enum(s.value for s in TaskStatus)),
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
                _limit(limits.container_list_max_limit, min(50, limits.container_list_max_limit)),
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
                _limit(limits.blob_list_max_limit, min(100, limits.blob_list_max_limit)),
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
                Param("limit", "query", _int(1, DEAD_LETTER_MAX_LIMIT), "At most this many (default 50)."),
                Param("status", "query", _enum(DEAD_LETTER_STATUSES)),
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
            (Param("hours", "query", _int(1, MAX_STATS_HOURS), "Window in hours (default 24)."),),
        ),
        "throughput_stats": OperationDoc(
            "stats/throughput",
            "GET",
            "Finished tasks per minute",
            "operations",
            {200: Body("Per-minute buckets.", api.ThroughputStats)},
            (400, 503),
            (Param("minutes", "query", _int(1, MAX_STATS_MINUTES), "Window in minutes (default 60)."),),
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
            params=(Param("job_id", "path", _text(minLength=1), api.JOB_ID_DESCRIPTION),),
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
            params=(Param("name", "path", _text(minLength=1), "A file name, e.g. main.js."),),
        ),
    }


# --- discovery ----------------------------------------------------------------------------------


def _upper(value: Any) -> str:
    return str(getattr(value, "value", value)).upper()


def http_routes(functions: Iterable[Any]) -> list[HttpRoute]:
    """The HTTP functions among ``app.get_functions()`` (an azure.functions ``Function`` each)."""
    routes = []
    for function in functions:
        trigger = function.get_trigger()
        route = getattr(trigger, "route", None)
        if route is None or type(trigger).__name__ != "HttpTrigger":
            continue
        methods = tuple(sorted(_upper(m) for m in (trigger.methods or ()))) or ("*",)
        anonymous = _upper(trigger.auth_level) == "ANONYMOUS"
        routes.append(HttpRoute(str(function.get_function_name()), str(route).strip("/"), methods, anonymous))
    return routes


def app_functions(app: Any) -> list[Any]:
    """``app.get_functions()`` of a FunctionApp that may have been indexed already. The Functions
    worker (and the local host) call it once at start-up, and it remembers the names it has seen in
    ``functions_bindings``, so a second call would fail its duplicate-name check: the check runs
    on a fresh record, the worker's is put back. Building the functions again changes nothing."""
    seen = app.functions_bindings
    app.functions_bindings = None
    try:
        return list(app.get_functions())
    finally:
        app.functions_bindings = seen


def job_type_docs(registry: Any) -> list[JobTypeDoc]:
    """Every job type of a ``JobTypeRegistry``."""
    return [JobTypeDoc(c.job_type, c.description, c.parameters_model) for c in registry.all()]


_ROUTE_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\??\}")


def _path(route: str) -> str:
    """Azure route template → OpenAPI path (constraints and optional marks dropped)."""
    return "/" + _ROUTE_PARAM.sub(lambda m: "{" + m.group(1) + "}", route.strip("/"))


def _problem(route: HttpRoute, doc: OperationDoc | None) -> str | None:
    served = f"{'/'.join(route.methods)} /api/{route.route}"
    if doc is None:
        return f"{route.name} ({served}) has no entry in services/openapi.py"
    if doc.route != route.route or (doc.method,) != route.methods:
        return f"{route.name} is served as {served} but documented as {doc.method} /api/{doc.route}"
    return None


def undocumented(routes: Iterable[HttpRoute], docs: Mapping[str, OperationDoc]) -> list[str]:
    """Why each HTTP function is not (correctly) documented; empty when all are."""
    return [p for r in routes if (p := _problem(r, docs.get(r.name))) is not None]


# --- schemas ------------------------------------------------------------------------------------


def _ref(name: str) -> str:
    return REF_TEMPLATE.format(model=name)


class _Components:
    def __init__(self) -> None:
        self.schemas: dict[str, dict[str, Any]] = {}

    def put(self, name: str, schema: dict[str, Any]) -> None:
        if name in self.schemas and self.schemas[name] != schema:
            raise ValueError(f"two different schemas named {name!r}")
        self.schemas[name] = schema

    def add_schema(self, name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Move ``$defs`` into components; store the rest as ``name``; return a $ref to it."""
        schema = copy.deepcopy(schema)
        for def_name, definition in schema.pop("$defs", {}).items():
            self.put(def_name, definition)
        self.put(name, schema)
        return {"$ref": _ref(name)}

    def model(self, model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE, mode=mode)  # type: ignore[arg-type]
        return self.add_schema(model.__name__, schema)

    def submission(self, job_type: JobTypeDoc) -> dict[str, Any]:
        """The body of POST /jobs/{job_type}: the type's parameters plus the job options."""
        self.model(job_type.parameters_model, "validation")
        params = job_type.parameters_model.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
        options = SubmissionOptions.model_json_schema(ref_template=REF_TEMPLATE, mode="validation")
        for def_name, definition in options.pop("$defs", {}).items():
            self.put(def_name, definition)
        body = {k: v for k, v in params.items() if k != "$defs"}
        body["title"] = f"{job_type.job_type} submission"
        body["properties"] = {**params.get("properties", {}), **options["properties"]}
        return self.add_schema(f"Submit_{job_type.job_type}", body)


# --- the document -------------------------------------------------------------------------------


def _response(status: int, body: Body, components: _Components) -> dict[str, Any]:
    out: dict[str, Any] = {"description": body.description}
    if status == 503:
        out["headers"] = {"Retry-After": RETRY_AFTER}
    if body.model is not None:
        out["content"] = {JSON: {"schema": components.model(body.model)}}
    elif body.any_of:
        out["content"] = {JSON: {"schema": {"anyOf": [components.model(m) for m in body.any_of]}}}
    elif body.content is not None:
        out["content"] = {media: {"schema": schema} for media, schema in body.content.items()}
    return out


def _operation(
    name: str, doc: OperationDoc, route: HttpRoute, components: _Components, job_type: JobTypeDoc | None = None
) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": name if job_type is None else f"{name}_{job_type.job_type}"}
    op["summary"] = doc.summary if job_type is None else f"{doc.summary}: {job_type.job_type}"
    description = doc.description if job_type is None else f"{job_type.description}\n\n{doc.description}"
    if description:
        op["description"] = description.strip()
    op["tags"] = [doc.tag]
    if doc.params:
        op["parameters"] = [p.render() for p in doc.params]
    if job_type is not None:
        op["requestBody"] = {
            "required": False,
            "description": "An empty body means every parameter at its default.",
            "content": {JSON: {"schema": components.submission(job_type)}},
        }
    responses: dict[str, Any] = {}
    for status, body in sorted(doc.responses.items()):
        responses[str(status)] = _response(status, body, components)
    if not route.anonymous:
        responses["401"] = {"description": "No valid function key (answered by the Functions host)."}
    if doc.params:  # the host's own answer to an over-long request line (no JSON body)
        responses["414"] = {"description": "URI too long (answered by the Functions host)."}
    for status in doc.errors:
        error: dict[str, Any] = {"description": ERROR_DESCRIPTIONS[status]}
        if status in (429, 503):
            error["headers"] = {"Retry-After": RETRY_AFTER}
        error["content"] = {JSON: {"schema": components.model(api.ErrorBody)}}
        responses.setdefault(str(status), error)
    op["responses"] = dict(sorted(responses.items()))
    op["security"] = [] if route.anonymous else FUNCTION_KEY_SECURITY
    op.update(doc.extra)
    return op


def build_document(
    routes: Sequence[HttpRoute],
    job_types: Sequence[JobTypeDoc],
    limits: ApiLimits | None = None,
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes``. Undocumented routes raise with ``strict``, else are
    left out (the served document never fails for a route added without documentation)."""
    docs = operation_docs(limits or ApiLimits())
    problems = undocumented(routes, docs)
    if problems and strict:
        raise UndocumentedRouteError(problems)
    components = _Components()
    for job_type in job_types:  # every parameter schema, whether or not submit_job is served
        components.model(job_type.parameters_model, "validation")
    paths: dict[str, dict[str, Any]] = {}
    for route in sorted(routes, key=lambda r: (r.route, r.methods)):
        doc = docs.get(route.name)
        if doc is None or _problem(route, doc) is not None:
            continue
        if doc.per_job_type:
            for job_type in job_types:
                path = _path(doc.route.replace("{job_type}", job_type.job_type))
                paths.setdefault(path, {})[doc.method.lower()] = _operation(
                    route.name, doc, route, components, job_type
                )
        else:
            paths.setdefault(_path(doc.route), {})[doc.method.lower()] = _operation(route.name, doc, route, components)
    components.model(api.ErrorBody)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": JSON_SCHEMA_DIALECT,
        "info": {
            "title": "geoetl API",
            "version": API_VERSION,
            "description": "Serverless geospatial ETL: submit jobs, follow their progress, browse the data "
            "containers, operate the queues. Every route but health, this document and the dashboard's "
            "static files needs a function key.",
        },
        "servers": [{"url": "/api"}],
        "security": FUNCTION_KEY_SECURITY,
        "tags": [{"name": t} for t in ("jobs", "containers", "health", "operations", "dashboard", "meta")],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(components.schemas.items())),
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
