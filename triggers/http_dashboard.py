"""GET /api/dashboard: the operator dashboard page (function-key protected, like the API) and its
static JS/CSS (anonymous: public code, no data; a <script src> cannot send the key header).

Thin: the page and files come from ``services.dashboard``; the page's scripts call the JSON API.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from services import dashboard
from services.container import ServiceContainer

__all__ = ["create_blueprint"]


def _not_found() -> func.HttpResponse:
    return func.HttpResponse(
        "not found", status_code=404, mimetype="text/plain", charset="utf-8", headers=dashboard.security_headers()
    )


def page_response(req: func.HttpRequest, job_id: str | None = None) -> func.HttpResponse:
    if job_id is not None and dashboard.valid_job_id(job_id) is None:
        return _not_found()
    try:
        path = urlsplit(req.url).path
    except ValueError:
        path = ""
    body = dashboard.render_page(dashboard.api_base_for(path), job_id)
    return func.HttpResponse(
        body, status_code=200, mimetype="text/html", charset="utf-8", headers=dashboard.security_headers()
    )


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("dashboard")
    @bp.route(route="dashboard", methods=["GET"])
    def dashboard_page(req: func.HttpRequest) -> func.HttpResponse:
        return page_response(req)

    @bp.function_name("dashboard_job")
    @bp.route(route="dashboard/jobs/{job_id}", methods=["GET"])
    def dashboard_job_page(req: func.HttpRequest) -> func.HttpResponse:
        return page_response(req, req.route_params.get("job_id", ""))

    @bp.function_name("dashboard_static")
    @bp.route(route="dashboard/static/{name}", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    def dashboard_static(req: func.HttpRequest) -> func.HttpResponse:
        asset = dashboard.static_asset(req.route_params.get("name", ""))
        if asset is None:
            return _not_found()
        return func.HttpResponse(
            asset.body,
            status_code=200,
            mimetype=asset.content_type,
            charset="utf-8",
            headers=dashboard.security_headers(cache_seconds=300),
        )

    return bp
