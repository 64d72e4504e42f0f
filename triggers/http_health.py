"""GET /api/health (readiness: 200 or 503 with each dependency) and GET /api/health/live (liveness).
Anonymous, like Azure's health check calls them; the reports carry no secrets."""

from __future__ import annotations

import azure.functions as func

from services.container import ServiceContainer
from triggers.http_responses import json_errors, json_response


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("health")
    @bp.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    @json_errors
    def health(req: func.HttpRequest) -> func.HttpResponse:
        ready, report = container.health.readiness()
        return json_response(report, 200 if ready else 503, None if ready else {"Retry-After": "10"})

    @bp.function_name("health_live")
    @bp.route(route="health/live", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
    @json_errors
    def health_live(req: func.HttpRequest) -> func.HttpResponse:
        return json_response({"status": "alive"})

    return bp
