"""OperationDoc entries of the STAC API routes (triggers/http_stac.py, services/stac_api/)."""

from __future__ import annotations

from services.openapi.model import Body, OperationDoc, Param, int_schema, text_schema

_OBJECT = {"type": "object"}
_JSON = {"application/json": _OBJECT}
_GEOJSON = {"application/geo+json": _OBJECT}
_COLLECTION_ID = Param("collection_id", "path", text_schema(128, minLength=1), "A STAC collection id.")
_ITEM_ID = Param("item_id", "path", text_schema(minLength=1), "A STAC item id.")
_TAG = "stac"
_SCHEMA_JSON = {"application/schema+json": _OBJECT}
_CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


def _filtering(default_lang: str = "cql2-text") -> tuple[Param, ...]:
    return (
        Param("filter", "query", text_schema(), f"A CQL2 filter, in filter-lang (default {default_lang})."),
        Param(
            "filter-lang",
            "query",
            {"type": "string", "enum": ["cql2-text", "cql2-json"]},
            "The filter's language: cql2-text (default) or cql2-json (JSON text).",
        ),
        Param("filter-crs", "query", {"type": "string", "enum": [_CRS84]}, "Only CRS84 (the default)."),
    )


def _paging(max_limit: int) -> tuple[Param, ...]:
    return (
        Param("limit", "query", int_schema(1, max_limit), "Items per page (default 10; larger values are capped)."),
        Param("bbox", "query", text_schema(), "minx,miny,maxx,maxy (or 6 numbers with elevations), WGS 84."),
        Param("datetime", "query", text_schema(), "An RFC 3339 date-time, or an interval start/end ('..' open)."),
        Param("token", "query", text_schema(), "The token of a `next` or `prev` link."),
    )


def stac_operation_docs(max_limit: int = 1000) -> dict[str, OperationDoc]:
    search_params = (
        *_paging(max_limit),
        Param("ids", "query", text_schema(), "Comma-separated item ids."),
        Param("collections", "query", text_schema(), "Comma-separated collection ids."),
        Param("intersects", "query", text_schema(), "A GeoJSON geometry (JSON text)."),
        Param("sortby", "query", text_schema(), "Comma-separated fields, '-' for descending."),
        *_filtering("cql2-text"),
    )
    return {
        "stac_landing": OperationDoc(
            "stac", "GET", "STAC API landing page", _TAG, {200: Body("The landing page.", content=_JSON)}, (404, 503)
        ),
        "stac_conformance": OperationDoc(
            "stac/conformance",
            "GET",
            "STAC API conformance classes",
            _TAG,
            {200: Body("The conformance classes.", content=_JSON)},
            (404,),
        ),
        "stac_collections": OperationDoc(
            "stac/collections",
            "GET",
            "STAC collections in pgstac",
            _TAG,
            {200: Body("The collections.", content=_JSON)},
            (404, 503),
        ),
        "stac_collection": OperationDoc(
            "stac/collections/{collection_id}",
            "GET",
            "One STAC collection",
            _TAG,
            {200: Body("The collection.", content=_JSON)},
            (400, 404, 503),
            (_COLLECTION_ID,),
        ),
        "stac_items": OperationDoc(
            "stac/collections/{collection_id}/items",
            "GET",
            "A collection's items, paged",
            _TAG,
            {200: Body("A page of items (FeatureCollection) with next/prev links.", content=_GEOJSON)},
            (400, 404, 503),
            (_COLLECTION_ID, *_paging(max_limit), *_filtering("cql2-text")),
        ),
        "stac_queryables": OperationDoc(
            "stac/queryables",
            "GET",
            "Properties a filter can use, of all collections (pgstac get_queryables())",
            _TAG,
            {200: Body("A JSON schema of the queryable properties.", content=_SCHEMA_JSON)},
            (404, 503),
        ),
        "stac_collection_queryables": OperationDoc(
            "stac/collections/{collection_id}/queryables",
            "GET",
            "Properties a filter can use, of one collection (pgstac get_queryables())",
            _TAG,
            {200: Body("A JSON schema of the queryable properties.", content=_SCHEMA_JSON)},
            (400, 404, 503),
            (_COLLECTION_ID,),
        ),
        "stac_item": OperationDoc(
            "stac/collections/{collection_id}/items/{item_id}",
            "GET",
            "One STAC item",
            _TAG,
            {200: Body("The item.", content=_GEOJSON)},
            (400, 404, 503),
            (_COLLECTION_ID, _ITEM_ID),
        ),
        "stac_search": OperationDoc(
            "stac/search",
            "GET",
            "Item search (pgstac search())",
            _TAG,
            {200: Body("A page of items (FeatureCollection) with next/prev links.", content=_GEOJSON)},
            (400, 404, 503),
            search_params,
        ),
        "stac_search_post": OperationDoc(
            "stac/search",
            "POST",
            "Item search with a JSON body (pgstac search())",
            _TAG,
            {
                200: Body(
                    "A page of items (FeatureCollection); the next link carries the body to POST.", content=_GEOJSON
                )
            },
            (400, 404, 413, 503),
            description="Body: bbox, intersects, datetime, ids, collections, limit, token, sortby, fields and a "
            "CQL2 `filter` with `filter-lang` (cql2-json, the default, or cql2-text) and `filter-crs` (CRS84 only).",
        ),
    }
