"""HTTP triggers for browsing the storage account: containers and paged blob listings."""

from __future__ import annotations

import azure.functions as func

from services.container import ServiceContainer
from triggers.http_jobs import optional_int
from triggers.http_responses import json_errors, json_response


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("list_containers")
    @bp.route(route="containers", methods=["GET"])
    @json_errors
    def list_containers(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.container_browser.containers())

    @bp.function_name("list_container_blobs")
    @bp.route(route="containers/{container}/blobs", methods=["GET"])
    @json_errors
    def list_container_blobs(req: func.HttpRequest) -> func.HttpResponse:
        page = container.container_browser.blobs(
            req.route_params["container"],
            prefix=req.params.get("prefix", ""),
            suffix=req.params.get("suffix", ""),
            limit=optional_int(req, "limit"),
            cursor=req.params.get("cursor") or None,
        )
        return json_response(page)

    return bp
