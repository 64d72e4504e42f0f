"""Best-practice checks of STAC objects that the JSON schemas do not make: ids, bbox vs geometry,
the antimeridian, datetimes. Pure functions of one document; each finding is a ``Problem``.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from services.stac.validation import Problem

INVALID_ID = "invalid_id"
BBOX_GEOMETRY = "bbox_geometry"
ANTIMERIDIAN = "antimeridian"
DATETIME = "datetime"

# STAC best practices: ids are path segments and URL parts, so only characters that need no
# percent-encoding (RFC 3986 unreserved), not "." or "..", at most 256 characters.
ID_PATTERN = re.compile(r"^[A-Za-z0-9._~-]{1,256}$")
# RFC 3339 date-time, as STAC requires (a time zone is mandatory).
RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})$",
)
TOLERANCE = 1e-7  # degrees: a bbox rounded to 7 decimals still contains its geometry


def id_problems(document: dict[str, Any]) -> list[Problem]:
    value = document.get("id")
    if not isinstance(value, str):
        return []  # the schema reports a missing or non-string id
    if ID_PATTERN.fullmatch(value) and value not in {".", ".."}:
        return []
    return [
        Problem(
            INVALID_ID,
            f"id {value[:100]!r}: use 1-256 of A-Z a-z 0-9 . _ ~ - (no spaces, slashes or characters that need "
            "percent-encoding), not '.' or '..'",
        )
    ]


def parse_datetime(value: Any) -> datetime | None:
    """An RFC 3339 date-time with a time zone, else None."""
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
    except ValueError:
        return None


def _check_times(where: str, fields: dict[str, Any], problems: list[Problem]) -> dict[str, datetime]:
    parsed = {}
    for key, value in fields.items():
        if value is None:
            continue
        moment = parse_datetime(value)
        if moment is None:
            problems.append(Problem(DATETIME, f"{where}{key} {str(value)[:60]!r} is not an RFC 3339 date-time"))
        else:
            parsed[key] = moment
    return parsed


def datetime_problems(document: dict[str, Any]) -> list[Problem]:
    problems: list[Problem] = []
    if document.get("type") == "Feature" and isinstance(document.get("properties"), dict):
        props = document["properties"]
        names = ("datetime", "start_datetime", "end_datetime", "created", "updated")
        times = _check_times("properties/", {k: props.get(k) for k in names}, problems)
        if props.get("datetime", "missing") is None and not (props.get("start_datetime") and props.get("end_datetime")):
            problems.append(Problem(DATETIME, "datetime is null without start_datetime and end_datetime"))
        start, end = times.get("start_datetime"), times.get("end_datetime")
        if start and end and start > end:
            problems.append(Problem(DATETIME, "start_datetime is after end_datetime"))
        moment = times.get("datetime")
        if moment and start and end and not start <= moment <= end:
            problems.append(Problem(DATETIME, "datetime is outside start_datetime..end_datetime"))
    elif document.get("type") == "Collection":
        intervals = ((document.get("extent") or {}).get("temporal") or {}).get("interval")
        for index, interval in enumerate(intervals if isinstance(intervals, list) else []):
            if not isinstance(interval, list) or len(interval) != 2:
                continue  # the schema reports it
            times = _check_times(
                f"extent/temporal/interval/{index}/", dict(zip(("0", "1"), interval, strict=True)), problems
            )
            if "0" in times and "1" in times and times["0"] > times["1"]:
                problems.append(Problem(DATETIME, f"temporal interval {index} starts after it ends"))
    return problems


# --- geometry ---------------------------------------------------------------------------------


# How deep positions sit in each geometry type's coordinates.
_DEPTH = {"Point": 0, "MultiPoint": 1, "LineString": 1, "MultiLineString": 2, "Polygon": 2, "MultiPolygon": 3}


def _is_position(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= 2
        and isinstance(value[0], (int, float))
        and isinstance(value[1], (int, float))
    )


def _lines(coordinates: Any, depth: int) -> Iterator[list[Any]]:
    """The position lists (rings, lines, point sets) of coordinates nested ``depth`` deep."""
    if depth <= 1:
        yield [coordinates] if depth == 0 else coordinates
        return
    for part in coordinates if isinstance(coordinates, list) else []:
        yield from _lines(part, depth - 1)


def _parts(geometry: dict[str, Any]) -> Iterator[tuple[str, list[Any]]]:
    """(geometry type, position list) of every ring / line / point set (collections flattened)."""
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        for member in geometry.get("geometries") or []:
            if isinstance(member, dict):
                yield from _parts(member)
    elif isinstance(kind, str) and kind in _DEPTH:
        for line in _lines(geometry.get("coordinates"), _DEPTH[kind]):
            if isinstance(line, list):
                yield kind, line


def _bbox_2d(bbox: list[Any]) -> tuple[float, float, float, float] | None:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox):
        return None
    if len(bbox) == 4:
        return float(bbox[0]), float(bbox[1]), float(bbox[2]), float(bbox[3])
    if len(bbox) == 6:
        return float(bbox[0]), float(bbox[1]), float(bbox[3]), float(bbox[4])
    return None


def _contains_lon(west: float, east: float, lon: float) -> bool:
    if west <= east:
        return west - TOLERANCE <= lon <= east + TOLERANCE
    return lon >= west - TOLERANCE or lon <= east + TOLERANCE  # the bbox crosses the antimeridian


def _antimeridian_jump(lons: list[float]) -> tuple[float, float] | None:
    """An edge whose longitudes differ by more than 180 degrees, neither end on the antimeridian itself
    (a latitude band from -180 to 180 is drawn that way on purpose), or None."""
    if not lons or max(lons) - min(lons) <= 180:
        return None
    for lon_a, lon_b in itertools.pairwise(lons):
        if abs(lon_b - lon_a) > 180 and abs(lon_a) != 180 and abs(lon_b) != 180:
            return lon_a, lon_b
    return None


def _outside(box: tuple[float, float, float, float], lons: list[float], lats: list[float]) -> list[tuple[float, float]]:
    west, south, east, north = box
    inside_lats = min(lats) >= south - TOLERANCE and max(lats) <= north + TOLERANCE
    if inside_lats and west <= east and min(lons) >= west - TOLERANCE and max(lons) <= east + TOLERANCE:
        return []  # the common case, without a loop in Python
    return [
        (lon, lat)
        for lon, lat in zip(lons, lats, strict=True)
        if not (_contains_lon(west, east, lon) and south - TOLERANCE <= lat <= north + TOLERANCE)
    ]


def geometry_problems(document: dict[str, Any]) -> list[Problem]:
    """An Item's bbox must contain its geometry; lines and rings must not cross the antimeridian unsplit."""
    if document.get("type") != "Feature":
        return []
    geometry, bbox = document.get("geometry"), document.get("bbox")
    problems: list[Problem] = []
    box = _bbox_2d(bbox) if isinstance(bbox, list) else None
    if box is not None:
        west, south, east, north = box
        if south > north:
            problems.append(Problem(BBOX_GEOMETRY, f"bbox south {south} is north of its north {north}"))
        if not (-180 <= west <= 180 and -180 <= east <= 180 and -90 <= south <= 90 and -90 <= north <= 90):
            problems.append(Problem(BBOX_GEOMETRY, f"bbox {list(box)} is outside -180..180 / -90..90"))
    if not isinstance(geometry, dict):
        return problems
    outside: list[tuple[float, float]] = []
    for kind, line in _parts(geometry):
        try:  # well-formed (the schema says so): no per-position checks in Python
            lons, lats = [float(p[0]) for p in line], [float(p[1]) for p in line]
        except (TypeError, ValueError, IndexError, KeyError):
            positions = [p for p in line if _is_position(p)]
            lons, lats = [float(p[0]) for p in positions], [float(p[1]) for p in positions]
        if not lons:
            continue
        jump = (
            _antimeridian_jump(lons) if kind in {"Polygon", "LineString", "MultiPolygon", "MultiLineString"} else None
        )
        if jump is not None:
            problems.append(
                Problem(
                    ANTIMERIDIAN,
                    f"a {kind} edge goes from longitude {jump[0]} to {jump[1]}: it crosses the antimeridian "
                    "without being split (RFC 7946 3.1.9)",
                )
            )
        if box is not None:
            outside += _outside(box, lons, lats)
    if outside:
        problems.append(
            Problem(
                BBOX_GEOMETRY,
                f"{len(outside)} geometry position(s) outside the bbox {list(box or ())}, e.g. {outside[0]}",
            )
        )
    return problems


def lint_problems(document: dict[str, Any]) -> list[Problem]:
    """Every best-practice finding for one STAC object."""
    return id_problems(document) + datetime_problems(document) + geometry_problems(document)
