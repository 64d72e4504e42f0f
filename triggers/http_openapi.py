"""GET /api/openapi.json: the OpenAPI 3.1 document of this app's HTTP API (services/openapi.py);
GET /api/docs: the same document as a human-readable HTML page (services/openapi/html_page.py).

Anonymous, like /api/health: the document is the API's public contract, generated from code (routes,
pydantic models, job type parameter schemas). It holds no data, no key, no host name (its server is
the relative ``/api``) and no setting beyond page-size bounds and the queue names the operator
routes take, so clients and tools (schemathesis, code generators) can fetch it before they have a key.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import azure.functions as func

from services.container import ServiceContainer
from services.openapi import ApiLimits, app_functions, build_document, http_routes, job_type_docs
from services.openapi.html_page import render_docs_page
from triggers.http_responses import json_errors

__all__ = ["create_blueprint"]


def create_blueprint(container: ServiceContainer, app: func.FunctionApp) -> func.Blueprint:
    """``app`` is read at the first request (every blueprint is registered by then); the document is
    built once per process."""
    bp = func.Blueprint()
    lock = threading.Lock()
    cached: list[bytes] = []
    page: list[bytes] = []  # /api/docs, the document as HTML

    def document() -> bytes:
        with lock:
            if not cached:
                doc: dict[str, Any] = build_document(
                    http_routes(app_functions(app)),
                    job_type_docs(container.registry),
                    ApiLimits.from_settings(container.settings),
                )
                cached.append(json.dumps(doc).encode("utf-8"))
            return cached[0]

    @bp.function_name("openapi_document")
    @bp.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    @json_errors
    def openapi_document(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(document(), status_code=200, mimetype="application/json", charset="utf-8")

    @bp.function_name("api_docs")
    @bp.route(route="docs", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    @json_errors
    def api_docs(req: func.HttpRequest) -> func.HttpResponse:
        if not page:  # built at most a few times by racing first requests, all alike
            page.append(render_docs_page(json.loads(document())).encode("utf-8"))
        return func.HttpResponse(page[0], status_code=200, mimetype="text/html", charset="utf-8")

    return bp
