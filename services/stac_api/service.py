"""The STAC API (core, collections, OGC API features, item search, filter) over pgstac's own SQL
functions: ``search()`` for items (also a collection's items, CQL2 filters included),
``collection_search()``, ``get_collection()``, ``get_item()`` and ``get_queryables()``. A light
layer: it checks parameters, calls one function per request in one read-only transaction, and
replaces pgstac's relative links with absolute ones built from the request's base URL
(``…/api/stac``), so they are right behind the Functions route prefix.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from pypgstac.hydration import hydrate

from repositories.database import Database
from schemas.errors import DatabaseUnavailableError, NotFoundError, RepositoryError, TransactionConflictError
from services.stac.builder import collection_id_problem
from services.stac_api.filter import CQL2_JSON, CQL2_TEXT, filter_refusal, parse_filter
from services.stac_api.params import bad, parse_bbox, parse_datetime, parse_limit, search_body

STAC_VERSION = "1.1.0"
JSON_TYPE = "application/json"
GEOJSON = "application/geo+json"
CONFORMANCE = (
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/collections",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "https://api.stacspec.org/v1.0.0/item-search",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    # the filter extension (services/stac_api/filter.py): CQL2 text and JSON on /search and on a
    # collection's /items, checked with stac-api-validator --conformance filter
    "https://api.stacspec.org/v1.0.0-rc.2/item-search#filter",
    "https://api.stacspec.org/v1.0.0-rc.2/ogcapi-features#filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-operators",
)
ITEMS_QUERY = ("limit", "bbox", "datetime", "token", "filter", "filter-lang", "filter-crs")
QUERYABLES_REL = "http://www.opengis.net/def/rel/ogc/1.0/queryables"
SCHEMA_JSON = "application/schema+json"
HTML = "text/html"


def link(rel: str, href: str, media_type: str = JSON_TYPE, **extra: Any) -> dict[str, Any]:
    return {"rel": rel, "href": href, "type": media_type, **extra}


def _token(pgstac_links: Any, rel: str) -> str | None:
    """The token pgstac put into its own ``next`` / ``prev`` link (``./search?token=next:…``)."""
    for entry in pgstac_links or []:
        if isinstance(entry, Mapping) and entry.get("rel") == rel:
            body = entry.get("body")
            if isinstance(body, Mapping) and isinstance(body.get("token"), str):
                return str(body["token"])
            tokens = parse_qs(urlsplit(str(entry.get("href", ""))).query).get("token")
            if tokens:
                return tokens[0]
    return None


class StacApi:
    def __init__(self, db: Database, *, max_limit: int, title: str = "geoetl STAC API") -> None:
        self._db = db
        self._max_limit = max_limit
        self._title = title

    def _call(self, function: str, *args: Any) -> Any:
        with self._session() as cur:
            row = cur.execute(f"SELECT pgstac.{function}({', '.join(['%s'] * len(args))})", args).fetchone()
        return None if row is None else row[0]

    @contextmanager
    def _session(self) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        """One transaction: pgstac first on the search path, and pgstac's ``readonly`` (search()
        then records nothing in its ``searches`` table), all for this transaction only. No parallel
        workers and no JIT: once the partitions have statistics the planner picks a parallel plan
        for a page of items, and starting its workers costs some 50 ms on a query that runs in
        under one (bench/README.md); JIT compiling would cost as much on a large collection."""
        with self._db.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=tuple_row)
            cur.execute(
                "SELECT set_config('search_path', 'pgstac, public', true), set_config('pgstac.readonly', 'true', true),"
                " set_config('max_parallel_workers_per_gather', '0', true), set_config('jit', 'off', true)"
            )
            yield cur

    def _run_search(self, body: dict[str, Any]) -> dict[str, Any]:
        """pgstac ``search()``; without ``fields`` the items come dehydrated and are hydrated here
        (pypgstac's hydraters, in Rust) against the base item pgstac sends with each: pgstac's own
        PL/pgSQL hydration costs about a millisecond per item."""
        hydrate_here = "fields" not in body
        if hydrate_here:
            body = {**body, "conf": {"nohydrate": True}}
        with self._session() as cur:
            row = cur.execute("SELECT pgstac.search(%s)", (Jsonb(body),)).fetchone()
            found: dict[str, Any] = (row[0] if row else None) or {}
            features = found.get("features") or []
        if hydrate_here:  # pgstac 0.10 returns each dehydrated item with its base item
            found["features"] = [hydrate(f.pop("pgstac:base_item", None) or {}, f) for f in features]
        return found

    # --- documents ----------------------------------------------------------------------------

    def landing(self, base: str, api_base: str) -> dict[str, Any]:
        return {
            "type": "Catalog",
            "id": "geoetl",
            "title": self._title,
            "description": "STAC collections and items loaded into pgstac by geoetl.",
            "stac_version": STAC_VERSION,
            "conformsTo": list(CONFORMANCE),
            "links": [
                link("self", base),
                link("root", base),
                link("conformance", f"{base}/conformance"),
                link("data", f"{base}/collections"),
                link("search", f"{base}/search", GEOJSON, method="GET"),
                link("search", f"{base}/search", GEOJSON, method="POST"),
                link("service-desc", f"{api_base}/openapi.json"),
                link("service-doc", f"{api_base}/docs", HTML),
                link(QUERYABLES_REL, f"{base}/queryables", SCHEMA_JSON),
            ],
        }

    @staticmethod
    def conformance() -> dict[str, Any]:
        return {"conformsTo": list(CONFORMANCE)}

    def _collection_links(self, base: str, collection: dict[str, Any]) -> dict[str, Any]:
        cid = collection["id"]
        own = [x for x in collection.get("links") or [] if x.get("rel") not in ("self", "root", "parent", "items")]
        url = f"{base}/collections/{quote(str(cid), safe='')}"
        links = [
            link("self", url),
            link("root", base),
            link("parent", base),
            link("items", f"{url}/items", GEOJSON),
            link(QUERYABLES_REL, f"{url}/queryables", SCHEMA_JSON),
        ]
        return {**collection, "links": links + own}

    def _item_links(self, base: str, item: dict[str, Any]) -> dict[str, Any]:
        url = f"{base}/collections/{quote(str(item.get('collection')), safe='')}"
        own = [x for x in item.get("links") or [] if x.get("rel") not in ("self", "root", "parent", "collection")]
        links = [
            link("self", f"{url}/items/{quote(str(item.get('id')), safe='')}", GEOJSON),
            link("parent", url),
            link("collection", url),
            link("root", base),
        ]
        return {**item, "links": links + own}

    def collections(self, base: str) -> dict[str, Any]:
        found = self._call("collection_search", Jsonb({"limit": 10_000})) or {}
        collections = [self._collection_links(base, c) for c in found.get("collections") or []]
        return {
            "collections": collections,
            "links": [link("self", f"{base}/collections"), link("root", base), link("parent", base)],
            "numberMatched": found.get("numberMatched", len(collections)),
            "numberReturned": len(collections),
        }

    def collection(self, base: str, collection_id: str) -> dict[str, Any]:
        found = None if collection_id_problem(collection_id) else self._call("get_collection", collection_id)
        if not found:
            raise NotFoundError(f"no collection {collection_id}")
        return self._collection_links(base, found)

    def item(self, base: str, collection_id: str, item_id: str) -> dict[str, Any]:
        self.collection(base, collection_id)
        found = self._call("get_item", item_id, collection_id)
        if not found:
            raise NotFoundError(f"no item {item_id} in collection {collection_id}")
        return self._item_links(base, found)

    def queryables(self, base: str, collection_id: str | None = None) -> dict[str, Any]:
        """pgstac's ``get_queryables()``, of every collection or of one (404 if unknown), as a JSON
        schema whose ``$id`` is its own URL."""
        if collection_id is None:
            url = f"{base}/queryables"
            found = self._call("get_queryables", None)
        else:
            url = f"{base}/collections/{quote(collection_id, safe='')}/queryables"
            found = None if collection_id_problem(collection_id) else self._call("get_queryables", collection_id)
            if not found:
                raise NotFoundError(f"no collection {collection_id}")
        schema: dict[str, Any] = found or {  # pgstac answers NULL while it holds no collection
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "title": "STAC Queryables.",
            "properties": {},
            "additionalProperties": True,
        }
        return {**schema, "$id": url}

    # --- searches -------------------------------------------------------------------------------

    def items(self, base: str, collection_id: str, query: Mapping[str, str]) -> dict[str, Any]:
        """``/collections/{id}/items``: the collection's items, paged (limit, bbox, datetime, token,
        filter)."""
        self.collection(base, collection_id)
        raw = {k: v for k, v in query.items() if k in ITEMS_QUERY}
        body = _search_body(raw, self._max_limit, from_query=True)
        body["collections"] = [collection_id]
        page_url = f"{base}/collections/{collection_id}/items"
        return self._search(base, body, page_url, {k: v for k, v in raw.items() if k != "token"}, None)

    def search_get(self, base: str, query: Mapping[str, str]) -> dict[str, Any]:
        body = _search_body(query, self._max_limit, from_query=True)
        kept = {k: v for k, v in query.items() if k not in ("token", "code")}
        return self._search(base, body, f"{base}/search", kept, None)

    def search_post(self, base: str, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise bad("body", "a JSON object")
        body = _search_body(request, self._max_limit, from_query=False)
        return self._search(base, body, f"{base}/search", None, {k: v for k, v in request.items() if k != "token"})

    def _search(
        self,
        base: str,
        body: dict[str, Any],
        page_url: str,
        query: Mapping[str, str] | None,
        post_body: dict[str, Any] | None,
    ) -> dict[str, Any]:
        try:
            found = self._run_search(body)
        except (DatabaseUnavailableError, TransactionConflictError):
            raise
        except RepositoryError as exc:  # pgstac refusing the filter is the request's fault: a 400
            reason = filter_refusal(exc) if "filter" in body else None
            if reason is None:
                raise
            raise bad("filter", f"pgstac cannot evaluate this filter: {reason}") from exc
        features = [self._item_links(base, f) for f in found.get("features") or []]
        self_href = f"{page_url}?{urlencode(query)}" if query else page_url
        links = [link("self", self_href, GEOJSON), link("root", base)]
        for rel in ("next", "prev"):
            token = _token(found.get("links"), rel)
            if token is None:
                continue
            if post_body is None:
                links.append(link(rel, f"{page_url}?{urlencode({**(query or {}), 'token': token})}", GEOJSON))
            else:
                links.append(link(rel, page_url, GEOJSON, method="POST", body={**post_body, "token": token}))
        out: dict[str, Any] = {
            "type": "FeatureCollection",
            "features": features,
            "links": links,
            "numberReturned": len(features),
        }
        if "numberMatched" in found:
            out["numberMatched"] = found["numberMatched"]
        return out


def _search_body(raw: Mapping[str, Any], max_limit: int, *, from_query: bool) -> dict[str, Any]:
    """pgstac's search JSON, the filter (CQL2 text by default in a query, CQL2 JSON in a body) included."""
    body = search_body(raw, max_limit, from_query=from_query)
    cql = parse_filter(raw, default_lang=CQL2_TEXT if from_query else CQL2_JSON)
    if cql is not None:
        body["filter"] = cql
        body["filter-lang"] = CQL2_JSON
    return body


__all__ = ["CONFORMANCE", "StacApi", "parse_bbox", "parse_datetime", "parse_limit"]
