"""The STAC API under /api/stac/ (services/stac_api/): decode, call, encode. Function key unless
STAC_API_ANONYMOUS; without PGSTAC_ENABLED every route answers 404."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func

from schemas.errors import NotFoundError
from services.container import ServiceContainer
from services.stac_api import StacApi
from triggers.http_input import check_text, read_json_body, route_text
from triggers.http_responses import json_api

GEOJSON = "application/geo+json"
SCHEMA_JSON = "application/schema+json"


def stac_base(req: func.HttpRequest) -> tuple[str, str]:
    """(the STAC API's base URL, the app's API base URL), from the request's own URL."""
    parts = urlsplit(req.url)
    api = f"{parts.scheme}://{parts.netloc}/api"
    return f"{api}/stac", api


def respond(payload: Any, mimetype: str = "application/json") -> func.HttpResponse:
    return func.HttpResponse(json.dumps(payload, default=str), status_code=200, mimetype=mimetype, charset="utf-8")


def query(req: func.HttpRequest) -> dict[str, str]:
    return {name: check_text(value, name) for name, value in req.params.items()}


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()
    settings = container.settings
    api = json_api(settings)
    auth = func.AuthLevel.ANONYMOUS if settings.stac_api_anonymous else func.AuthLevel.FUNCTION

    def stac() -> StacApi:
        if not settings.pgstac_enabled:
            raise NotFoundError("the STAC API needs PGSTAC_ENABLED")
        return container.stac_api

    @bp.function_name("stac_landing")
    @bp.route(route="stac", methods=["GET"], auth_level=auth)
    @api
    def stac_landing(req: func.HttpRequest) -> func.HttpResponse:
        return respond(stac().landing(*stac_base(req)))

    @bp.function_name("stac_conformance")
    @bp.route(route="stac/conformance", methods=["GET"], auth_level=auth)
    @api
    def stac_conformance(req: func.HttpRequest) -> func.HttpResponse:
        return respond(stac().conformance())

    @bp.function_name("stac_collections")
    @bp.route(route="stac/collections", methods=["GET"], auth_level=auth)
    @api
    def stac_collections(req: func.HttpRequest) -> func.HttpResponse:
        return respond(stac().collections(stac_base(req)[0]))

    @bp.function_name("stac_collection")
    @bp.route(route="stac/collections/{collection_id}", methods=["GET"], auth_level=auth)
    @api
    def stac_collection(req: func.HttpRequest) -> func.HttpResponse:
        return respond(stac().collection(stac_base(req)[0], route_text(req, "collection_id")))

    @bp.function_name("stac_queryables")
    @bp.route(route="stac/queryables", methods=["GET"], auth_level=auth)
    @api
    def stac_queryables(req: func.HttpRequest) -> func.HttpResponse:
        return respond(stac().queryables(stac_base(req)[0]), SCHEMA_JSON)

    @bp.function_name("stac_collection_queryables")
    @bp.route(route="stac/collections/{collection_id}/queryables", methods=["GET"], auth_level=auth)
    @api
    def stac_collection_queryables(req: func.HttpRequest) -> func.HttpResponse:
        found = stac().queryables(stac_base(req)[0], route_text(req, "collection_id"))
        return respond(found, SCHEMA_JSON)

    @bp.function_name("stac_items")
    @bp.route(route="stac/collections/{collection_id}/items", methods=["GET"], auth_level=auth)
    @api
    def stac_items(req: func.HttpRequest) -> func.HttpResponse:
        page = stac().items(stac_base(req)[0], route_text(req, "collection_id"), query(req))
        return respond(page, GEOJSON)

    @bp.function_name("stac_item")
    @bp.route(route="stac/collections/{collection_id}/items/{item_id}", methods=["GET"], auth_level=auth)
    @api
    def stac_item(req: func.HttpRequest) -> func.HttpResponse:
        found = stac().item(stac_base(req)[0], route_text(req, "collection_id"), route_text(req, "item_id"))
        return respond(found, GEOJSON)

    @bp.function_name("stac_search")
    @bp.route(route="stac/search", methods=["GET"], auth_level=auth)
    @api
    def stac_search(req: func.HttpRequest) -> func.HttpResponse:
        return respond(stac().search_get(stac_base(req)[0], query(req)), GEOJSON)

    @bp.function_name("stac_search_post")
    @bp.route(route="stac/search", methods=["POST"], auth_level=auth)
    @api
    def stac_search_post(req: func.HttpRequest) -> func.HttpResponse:
        body = read_json_body(req, settings.max_request_bytes)
        return respond(stac().search_post(stac_base(req)[0], body), GEOJSON)

    return bp
