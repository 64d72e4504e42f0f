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

from services.openapi.document import (
    app_functions,
    build_document,
    http_routes,
    job_type_docs,
    undocumented,
)
from services.openapi.model import ApiLimits, HttpRoute, JobTypeDoc, OperationDoc, UndocumentedRouteError
from services.openapi.operations import operation_docs

__all__ = [
    "ApiLimits",
    "HttpRoute",
    "JobTypeDoc",
    "OperationDoc",
    "UndocumentedRouteError",
    "app_functions",
    "build_document",
    "http_routes",
    "job_type_docs",
    "operation_docs",
    "undocumented",
]
