"""A raster's footprint and bounding box in EPSG:4326, correct at the antimeridian and the poles.

The raster's outline is densified in its own CRS, transformed to longitude/latitude and unwrapped
into a continuous ring. A ring that runs past ±180° is split there into a MultiPolygon (RFC 7946
§3.1.9) and its bbox has west > east (STAC, RFC 7946 §5.2). A ring that winds around a pole
becomes the band between its lowest latitude and that pole, over all longitudes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from affine import Affine
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio.errors does not re-export it
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform as transform_points

Point = tuple[float, float]
BBox = tuple[float, float, float, float]  # west, south, east, north
WGS84 = CRS.from_epsg(4326)
_DIGITS = 9  # ~0.1 mm: enough for any raster, and no 180.00000000000003 from float noise


def outline(transform: Affine, width: int, height: int, points_per_edge: int = 21) -> list[Point]:
    """The raster's outer edge in its CRS, counter-clockwise in pixel space, densified, not closed."""
    steps = max(1, points_per_edge - 1)
    pixels: list[Point] = []
    pixels += [(width * i / steps, 0.0) for i in range(steps)]
    pixels += [(float(width), height * i / steps) for i in range(steps)]
    pixels += [(width * (1 - i / steps), float(height)) for i in range(steps)]
    pixels += [(0.0, height * (1 - i / steps)) for i in range(steps)]
    return [transform @ pixel for pixel in pixels]


def unwrap_longitudes(ring: Sequence[Point]) -> list[Point]:
    """Shift longitudes by multiples of 360 so consecutive points are never more than 180° apart."""
    result: list[Point] = []
    for lon, lat in ring:
        turns = round((result[-1][0] - lon) / 360.0) if result else 0
        result.append((lon + 360.0 * turns, lat))
    return result


def clip_to_longitudes(ring: Sequence[Point], west: float, east: float) -> list[Point]:
    """Sutherland-Hodgman clip of a ring to the strip west <= lon <= east (not closed)."""

    def clip(points: Sequence[Point], inside: Any, boundary: float) -> list[Point]:
        out: list[Point] = []
        for i, current in enumerate(points):
            previous = points[i - 1]
            if inside(current):
                if not inside(previous):
                    out.append(_crossing(previous, current, boundary))
                out.append(current)
            elif inside(previous):
                out.append(_crossing(previous, current, boundary))
        return out

    clipped = clip(ring, lambda p: p[0] >= west, west)
    return clip(clipped, lambda p: p[0] <= east, east) if clipped else []


def _crossing(a: Point, b: Point, lon: float) -> Point:
    t = (lon - a[0]) / (b[0] - a[0])
    return (lon, a[1] + t * (b[1] - a[1]))


def _wrap(lon: float) -> float:
    wrapped = (lon + 180.0) % 360.0 - 180.0
    return 180.0 if wrapped == -180.0 and lon > 0 else wrapped


def _closed_ccw(ring: Sequence[Point]) -> list[list[float]]:
    points = [(round(x, _DIGITS), round(y, _DIGITS)) for x, y in ring]
    deduplicated = [p for i, p in enumerate(points) if i == 0 or p != points[i - 1]]
    following = deduplicated[1:] + deduplicated[:1]
    area2 = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(deduplicated, following, strict=True))
    if area2 < 0:
        deduplicated.reverse()
    return [[x, y] for x, y in [*deduplicated, deduplicated[0]]]


def _polygon(ring: Sequence[Point]) -> list[list[list[float]]]:
    return [_closed_ccw(ring)]


_OFF_EARTH = (
    "part of its outline lies off the Earth (corners in space, e.g. a geostationary full disk): "
    "its WGS 84 footprint is undefined"
)


class FootprintError(ValueError):
    """The raster has no footprint in WGS 84: its CRS cannot be transformed to it (another body than
    the Earth), or its outline lies off the Earth. Deterministic: retrying cannot help."""


def footprint_wgs84(crs: CRS, transform: Affine, width: int, height: int) -> tuple[dict[str, Any], BBox]:
    """(GeoJSON geometry, bbox) of the raster in EPSG:4326; FootprintError when it has none."""
    native = outline(transform, width, height)
    center = transform * (width / 2, height / 2)
    try:
        transform_points(crs, WGS84, [center[0]], [center[1]])
    except (CPLE_BaseError, RasterioError) as exc:  # PROJ found no operation between the two CRSs
        raise FootprintError(
            f"its CRS ({_crs_name(crs)}) cannot be transformed to WGS 84 (EPSG:4326), "
            "e.g. a CRS of another body than the Earth"
        ) from exc
    try:
        lons, lats = transform_points(crs, WGS84, [p[0] for p in native], [p[1] for p in native])
    except (CPLE_BaseError, RasterioError) as exc:  # the CRS transforms, but not every outline point does
        raise FootprintError(_OFF_EARTH) from exc
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        raise FootprintError(_OFF_EARTH)
    ring = unwrap_longitudes(list(zip(lons, lats, strict=True)))
    south, north = min(lat for _, lat in ring), max(lat for _, lat in ring)
    # Going once round the ring (back to its first point the short way) turns by 0° normally and
    # by a full 360° when the outline winds around a pole.
    closing_step = _wrap(ring[0][0] - ring[-1][0])
    if abs(ring[-1][0] - ring[0][0] + closing_step) > 180.0:
        mean_lat = sum(lat for _, lat in ring) / len(ring)
        polar: BBox = (-180.0, south, 180.0, 90.0) if mean_lat > 0 else (-180.0, -90.0, 180.0, north)
        return _bbox_geometry(polar), polar
    west, east = min(lon for lon, _ in ring), max(lon for lon, _ in ring)
    # Bring the ring's western edge into [-180, 180).
    shift = _wrap(west) - west
    ring = [(lon + shift, lat) for lon, lat in ring]
    west, east = west + shift, east + shift
    bbox_values = (round(west, _DIGITS), round(south, _DIGITS), round(east, _DIGITS), round(north, _DIGITS))
    if east - west >= 360.0:
        return _bbox_geometry((-180.0, south, 180.0, north)), (-180.0, bbox_values[1], 180.0, bbox_values[3])
    if east <= 180.0:
        return {"type": "Polygon", "coordinates": _polygon(ring)}, bbox_values
    eastern = clip_to_longitudes(ring, west, 180.0)
    western = clip_to_longitudes([(lon - 360.0, lat) for lon, lat in ring], -180.0, east - 360.0)
    geometry = {"type": "MultiPolygon", "coordinates": [_polygon(eastern), _polygon(western)]}
    return geometry, (bbox_values[0], bbox_values[1], round(east - 360.0, _DIGITS), bbox_values[3])


def _crs_name(crs: CRS) -> str:
    """A short name for a CRS (EPSG code, else its WKT name), never a multi-kB WKT or PROJJSON dump."""
    if crs.to_epsg():
        return f"EPSG:{crs.to_epsg()}"
    match = re.match(r'\s*[A-Z]+\["([^"]{1,80})', crs.to_wkt())
    return match.group(1) if match else "a custom CRS"


def _bbox_geometry(bbox: BBox) -> dict[str, Any]:
    west, south, east, north = bbox
    return {"type": "Polygon", "coordinates": _polygon([(west, south), (east, south), (east, north), (west, north)])}


def union_bbox(bboxes: Sequence[BBox]) -> BBox:
    """The smallest bbox covering all ``bboxes`` (each may cross the antimeridian: west > east).

    Longitude extents are arcs on a circle: the union is the complement of the largest gap
    between them, so neighbours on both sides of ±180° give a bbox crossing it, not a world-wide one.
    """
    if not bboxes:
        raise ValueError("union_bbox needs at least one bbox")
    south = min(b[1] for b in bboxes)
    north = max(b[3] for b in bboxes)
    arcs = sorted((w, e if e >= w else e + 360.0) for w, _, e, _ in bboxes)
    merged: list[list[float]] = []
    for start, end in arcs:
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    # Arcs that extend past +180 may overlap the first arcs of the next turn.
    while len(merged) > 1 and merged[-1][1] - 360.0 >= merged[0][0]:
        last = merged.pop()
        merged[0] = [last[0], max(last[1], merged[0][1] + 360.0)]
    if merged[0][1] - merged[0][0] >= 360.0:
        return (-180.0, south, 180.0, north)
    gaps = [
        (merged[(i + 1) % len(merged)][0] + (360.0 if i + 1 == len(merged) else 0.0) - merged[i][1], i)
        for i in range(len(merged))
    ]
    _, widest = max(gaps)
    west = merged[(widest + 1) % len(merged)][0]
    east = merged[widest][1]
    return (_wrap(west), south, _wrap(east), north)
