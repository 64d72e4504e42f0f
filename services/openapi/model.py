"""The pieces the OpenAPI document is described with: routes, parameters, bodies, operations, limits."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from schemas import api
from services.operations.service import (
    POISON_SUFFIX,
)
from triggers.http_input import MAX_PARAM_CHARS

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
        queues = (settings.job_queue, settings.task_queue, settings.high_priority_task_queue, settings.webhook_queue)
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


def text_schema(max_length: int = MAX_PARAM_CHARS, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "maxLength": max_length, **extra}


def int_schema(minimum: int, maximum: int) -> dict[str, Any]:
    return {"type": "integer", "minimum": minimum, "maximum": maximum}


CONTAINER_NAME = {"type": "string", "minLength": 3, "maxLength": 63, "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"}
# No blob name holds a control character (services/container_browser.py answers 400 to one).
BLOB_NAME_PART = text_schema(1024, pattern="^[^\\u0000-\\u001f\\u007f]*$")
JOB_ID = Param("job_id", "path", text_schema(minLength=1), api.JOB_ID_DESCRIPTION)
CURSOR = Param("cursor", "query", text_schema(), "`next_cursor` of the previous page.")


def limit_param(maximum: int, default: int) -> Param:
    return Param("limit", "query", int_schema(1, maximum), f"Page size (default {default}).")


def enum_schema(values: Iterable[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(values)}


# --- the table: one entry per HTTP function, by function name ----------------------------------


def schema_ref(name: str) -> str:
    return REF_TEMPLATE.format(model=name)
