"""HTTP triggers for browsing the storage account: containers and paged blob listings."""

from __future__ import annotations

import azure.functions as func

from services.container import ServiceContainer
from triggers.http_input import optional_int, query_text, route_text
from triggers.http_responses import json_api, json_response


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()
    api = json_api(container.settings)

    @bp.function_name("list_containers")
    @bp.route(route="containers", methods=["GET"])
    @api
    def list_containers(req: func.HttpRequest) -> func.HttpResponse:
        settings = container.settings
        page = container.container_browser.containers(
            limit=optional_int(req, "limit"),
            cursor=query_text(req, "cursor"),
            max_limit=settings.container_list_max_limit,
            count_cap=settings.container_blob_count_cap,
        )
        return json_response(page)

    @bp.function_name("list_container_blobs")
    @bp.route(route="containers/{container}/blobs", methods=["GET"])
    @api
    def list_container_blobs(req: func.HttpRequest) -> func.HttpResponse:
        page = container.container_browser.blobs(
            route_text(req, "container"),
            prefix=query_text(req, "prefix") or "",
            suffix=query_text(req, "suffix") or "",
            limit=optional_int(req, "limit"),
            cursor=query_text(req, "cursor"),
        )
        return json_response(page)

    return bp
