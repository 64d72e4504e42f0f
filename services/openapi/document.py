"""Builds the OpenAPI 3.1 document from the app's HTTP functions, the operation table and pydantic."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from schemas import api
from services.engine.job_service import SubmissionOptions
from services.openapi.model import (
    API_VERSION,
    ERROR_DESCRIPTIONS,
    FUNCTION_KEY_SECURITY,
    JSON,
    JSON_SCHEMA_DIALECT,
    OPENAPI_VERSION,
    REF_TEMPLATE,
    RETRY_AFTER,
    SECURITY_SCHEMES,
    ApiLimits,
    Body,
    HttpRoute,
    JobTypeDoc,
    OperationDoc,
    UndocumentedRouteError,
    schema_ref,
)
from services.openapi.operations import operation_docs


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
        return f"{route.name} ({served}) has no entry in services/openapi/operations.py"
    if doc.route != route.route or (doc.method,) != route.methods:
        return f"{route.name} is served as {served} but documented as {doc.method} /api/{doc.route}"
    return None


def undocumented(routes: Iterable[HttpRoute], docs: Mapping[str, OperationDoc]) -> list[str]:
    """Why each HTTP function is not (correctly) documented; empty when all are."""
    return [p for r in routes if (p := _problem(r, docs.get(r.name))) is not None]


# --- schemas ------------------------------------------------------------------------------------


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
        return {"$ref": schema_ref(name)}

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
