"""STAC API search parameters, from a GET query or a POST body, checked and turned into the JSON
pgstac's ``search()`` takes. A bad value is an ``InvalidRequestError`` naming the parameter (400).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from schemas.errors import InvalidRequestError

GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)
DEFAULT_LIMIT = 10
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
MAX_LIST = 1000


def bad(parameter: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"invalid parameter {parameter}: {message}", details=[{"field": parameter, "message": message}]
    )


def parse_bbox(value: Any, *, from_query: bool = True) -> list[float]:
    if isinstance(value, str) and from_query:
        parts: list[Any] = [p.strip() for p in value.split(",")]
    elif isinstance(value, list):
        parts = value
    else:
        raise bad("bbox", "a list of 4 or 6 numbers")
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError) as exc:
        raise bad("bbox", "a list of 4 or 6 numbers") from exc
    if len(numbers) not in (4, 6) or not all(math.isfinite(n) for n in numbers):
        raise bad("bbox", "a list of 4 or 6 finite numbers")
    half = len(numbers) // 2
    south, north = numbers[1], numbers[half + 1]
    if not (-90 <= south <= 90 and -90 <= north <= 90) or south > north:
        raise bad("bbox", "latitudes must be within -90..90 with the southern one first")
    if len(numbers) == 6 and numbers[2] > numbers[5]:
        raise bad("bbox", "the lower elevation must come first")
    return numbers


def _instant(text: str) -> datetime | None:
    if text in ("", ".."):
        return None
    if not RFC3339.fullmatch(text):
        raise ValueError(text)
    moment = datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(text)
    return moment


def parse_datetime(value: Any) -> str:
    """An RFC 3339 instant, or an interval ``start/end`` with ``..`` (or nothing) for an open end."""
    if not isinstance(value, str) or not value.strip():
        raise bad("datetime", "an RFC 3339 date-time or an interval start/end")
    parts = value.strip().split("/")
    try:
        if len(parts) == 1:
            if _instant(parts[0]) is None:
                raise ValueError(value)
        elif len(parts) == 2:
            start, end = _instant(parts[0]), _instant(parts[1])
            if start is None and end is None:
                raise ValueError(value)
            if start is not None and end is not None and start > end:
                raise bad("datetime", "the interval starts after it ends")
        else:
            raise ValueError(value)
    except ValueError as exc:
        raise bad("datetime", "an RFC 3339 date-time or an interval start/end ('..' for an open end)") from exc
    return value.strip()


def parse_limit(value: Any, maximum: int) -> int:
    try:
        limit = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    except ValueError:
        limit = None
    if limit is None or limit < 1:
        raise bad("limit", f"an integer from 1 to {maximum}")
    return min(limit, maximum)


def parse_strings(name: str, value: Any) -> list[str]:
    items = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items) or len(items) > MAX_LIST:
        raise bad(name, f"a list of at most {MAX_LIST} non-empty strings")
    return items


def parse_json(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise bad(name, "not valid JSON") from exc


def parse_intersects(value: Any) -> dict[str, Any]:
    geometry = parse_json("intersects", value)
    if not isinstance(geometry, dict) or geometry.get("type") not in GEOMETRY_TYPES:
        raise bad("intersects", "a GeoJSON geometry")
    key = "geometries" if geometry["type"] == "GeometryCollection" else "coordinates"
    if not isinstance(geometry.get(key), list):
        raise bad("intersects", f"a GeoJSON geometry with {key}")
    return geometry


def parse_sortby(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        fields = [f.strip() for f in value.split(",") if f.strip()]
        return [
            {"field": f.lstrip("+-"), "direction": "desc" if f.startswith("-") else "asc"} for f in fields if f != "-"
        ]
    if not isinstance(value, list) or not all(isinstance(s, dict) and isinstance(s.get("field"), str) for s in value):
        raise bad("sortby", "a list of {field, direction}")
    return [{"field": s["field"], "direction": str(s.get("direction", "asc"))} for s in value]


def search_body(raw: Mapping[str, Any], max_limit: int, *, from_query: bool) -> dict[str, Any]:
    """The pgstac search JSON of a request's parameters (GET query values are strings), all but
    the filter, which ``services.stac_api.filter.parse_filter`` adds."""
    body: dict[str, Any] = {"limit": parse_limit(raw.get("limit", DEFAULT_LIMIT), max_limit)}
    if raw.get("bbox") not in (None, "") and raw.get("intersects") not in (None, ""):
        raise bad("intersects", "give bbox or intersects, not both")
    if raw.get("bbox") not in (None, ""):
        body["bbox"] = parse_bbox(raw["bbox"], from_query=from_query)
    if raw.get("intersects") not in (None, ""):
        body["intersects"] = parse_intersects(raw["intersects"])
    if raw.get("datetime") not in (None, ""):
        body["datetime"] = parse_datetime(raw["datetime"])
    for name in ("ids", "collections"):
        if raw.get(name) not in (None, ""):
            body[name] = parse_strings(name, raw[name])
    if raw.get("token") not in (None, ""):
        if not isinstance(raw["token"], str) or not raw["token"].startswith(("next:", "prev:")):
            raise bad("token", "a next or prev token of an earlier page")
        body["token"] = raw["token"]
    body.update(_extensions(raw, from_query))
    return body


def _extensions(raw: Mapping[str, Any], from_query: bool) -> dict[str, Any]:
    """sortby and fields (the filter: services/stac_api/filter.py)."""
    body: dict[str, Any] = {}
    if raw.get("sortby") not in (None, ""):
        body["sortby"] = parse_sortby(raw["sortby"])
    if not from_query and raw.get("fields") is not None:
        if not isinstance(raw["fields"], dict):
            raise bad("fields", "an object with include and exclude lists")
        body["fields"] = raw["fields"]
    return body
