"""A raster's footprint and bounding box in EPSG:4326, correct at the antimeridian and the poles.

The raster's outline is densified in its own CRS, transformed to longitude/latitude and unwrapped
into a continuous ring. Densification is adaptive (``densified_ring``): a segment of the outline is
halved, in pixel space, while the transformed midpoint lies more than ``GEOMETRY_TOLERANCE_DEGREES``
off the straight line between its transformed ends, so a projected edge that bows (the top edge of a
34°-wide Lambert conic bulges ~500 m north of its corners) is followed, and only where it bends; the
few segments that reach the bbox are then followed to ``BBOX_TOLERANCE_DEGREES`` and the bbox is
padded by the deviation left there, so it contains the true footprint and exceeds it by about
1e-9°. Cost is bounded (``MAX_OUTLINE_POINTS``).

A ring that runs past ±180° is split there into a MultiPolygon (RFC 7946 §3.1.9) and its bbox has
west > east (STAC, RFC 7946 §5.2). A ring that winds around a pole becomes the band between its
lowest latitude and that pole, over all longitudes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from affine import Affine
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio.errors does not re-export it
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.warp import transform as transform_points

from services.raster.crs import projection_problem

Point = tuple[float, float]
BBox = tuple[float, float, float, float]  # west, south, east, north
WGS84 = CRS.from_epsg(4326)
_DIGITS = 9  # ~0.1 mm: enough for any raster, and no 180.00000000000003 from float noise
GEOMETRY_TOLERANCE_DEGREES = 1e-5  # ~1 m: how far the geometry's chords may stray from the true edge
BBOX_TOLERANCE_DEGREES = 1e-9  # the segments that reach the bbox are followed this closely
START_POINTS_PER_EDGE = 21
MAX_OUTLINE_POINTS = 8192  # a batch transform per round of at most this many points, whatever the raster
MAX_ROUNDS = 30


def outline(transform: Affine, width: int, height: int, points_per_edge: int = 21) -> list[Point]:
    """The raster's outer edge in its CRS, counter-clockwise in pixel space, evenly densified, not closed."""
    return [transform @ pixel for pixel in _outline_pixels(width, height, points_per_edge)]


def _deviation(a: Point, b: Point, middle: Point) -> tuple[float, float]:
    """(longitude, latitude) degrees between ``middle`` and the midpoint of the chord a-b
    (longitudes compared the short way)."""
    chord_lon = a[0] + _wrap(b[0] - a[0]) / 2.0
    return abs(_wrap(middle[0] - chord_lon)), abs(middle[1] - (a[1] + b[1]) / 2.0)


class _Outline:
    """The outline as vertices in pixel space and in longitude/latitude, with each segment's measured
    deviation (vertex i to i+1: how far the true edge's midpoint lies off the chord, in longitude and
    in latitude; None: not measured yet)."""

    def __init__(self, crs: CRS, transform: Affine, pixels: list[Point], max_points: int) -> None:
        self.crs, self.transform, self.max_points = crs, transform, max_points
        self.pixels = pixels
        self.points = _to_wgs84(crs, transform, pixels)
        self.deviation: list[tuple[float, float] | None] = [None] * len(pixels)
        self.middle: list[tuple[Point, Point] | None] = [None] * len(pixels)  # (pixel, lon/lat)
        self._extent: tuple[list[float], float, float, float, float] | None = None

    def measure(self) -> None:
        todo = [i for i, d in enumerate(self.deviation) if d is None]
        if not todo:
            return
        count = len(self.pixels)
        pixels = [
            (
                (self.pixels[i][0] + self.pixels[(i + 1) % count][0]) / 2.0,
                (self.pixels[i][1] + self.pixels[(i + 1) % count][1]) / 2.0,
            )
            for i in todo
        ]
        for i, pixel, middle in zip(todo, pixels, _to_wgs84(self.crs, self.transform, pixels), strict=True):
            self.deviation[i] = _deviation(self.points[i], self.points[(i + 1) % count], middle)
            self.middle[i] = (pixel, middle)

    def refine(self, wanted: Callable[[int], bool]) -> None:
        """Halve the segments ``wanted`` picks, round after round, within the point budget."""
        for _ in range(MAX_ROUNDS):
            self.measure()
            self._extent = None
            budget = self.max_points - len(self.pixels)
            chosen = set([i for i in range(len(self.pixels)) if wanted(i)][: max(0, budget)])
            if not chosen:
                return
            pixels: list[Point] = []
            points: list[Point] = []
            deviation: list[tuple[float, float] | None] = []
            middle: list[tuple[Point, Point] | None] = []
            for i in range(len(self.pixels)):
                pixels.append(self.pixels[i])
                points.append(self.points[i])
                halfway = self.middle[i]
                if i in chosen and halfway is not None:
                    pixels.append(halfway[0])
                    points.append(halfway[1])
                    deviation += [None, None]
                    middle += [None, None]
                else:
                    deviation.append(self.deviation[i])
                    middle.append(self.middle[i])
            self.pixels, self.points, self.deviation, self.middle = pixels, points, deviation, middle
        self.measure()
        self._extent = None

    def _extent_now(self) -> tuple[list[float], float, float, float, float]:
        """(unwrapped longitudes, west, south, east, north) of the current vertices."""
        if self._extent is None:
            lons = [lon for lon, _ in unwrap_longitudes(self.points)]
            lats = [lat for _, lat in self.points]
            self._extent = (lons, min(lons), min(lats), max(lons), max(lats))
        return self._extent

    def bbox_deviation(self, i: int) -> float:
        """How far segment i's true edge may reach past the current bbox of the vertices: its
        deviation along each axis on which it touches the bbox (within that deviation), else 0."""
        measured = self.deviation[i]
        if measured is None:
            return 0.0
        along_lon, along_lat = measured
        lons, west, south, east, north = self._extent_now()
        j = (i + 1) % len(lons)
        a_lon, b_lon = lons[i], lons[i] + _wrap(lons[j] - lons[i])
        a_lat, b_lat = self.points[i][1], self.points[j][1]
        reach = 0.0
        if max(a_lat, b_lat) + along_lat >= north or min(a_lat, b_lat) - along_lat <= south:
            reach = along_lat
        if max(a_lon, b_lon) + along_lon >= east or min(a_lon, b_lon) - along_lon <= west:
            reach = max(reach, along_lon)
        return reach


def densified_ring(
    crs: CRS,
    transform: Affine,
    width: int,
    height: int,
    *,
    tolerance: float = GEOMETRY_TOLERANCE_DEGREES,
    bbox_tolerance: float = BBOX_TOLERANCE_DEGREES,
    max_points: int = MAX_OUTLINE_POINTS,
) -> tuple[list[Point], float]:
    """The raster's outline in longitude/latitude (not closed, not unwrapped) and the padding that
    makes a bbox of it contain the true footprint.

    Starts from ``START_POINTS_PER_EDGE`` points per edge and halves, in pixel space, every segment
    whose transformed midpoint lies more than ``tolerance`` off its chord (the geometry); then keeps
    halving only the few segments that may reach the bbox, to ``bbox_tolerance`` (the bbox). One
    batch transform per round; at most ``max_points`` points. The padding is the largest deviation
    left on a segment that may reach the bbox. Raises FootprintError when a point lies off the Earth."""
    outline = _Outline(crs, transform, _outline_pixels(width, height, START_POINTS_PER_EDGE), max_points)
    outline.refine(lambda i: max(outline.deviation[i] or (0.0, 0.0)) > tolerance)
    outline.refine(lambda i: outline.bbox_deviation(i) > bbox_tolerance)
    return outline.points, max((outline.bbox_deviation(i) for i in range(len(outline.points))), default=0.0)


def _outline_pixels(width: int, height: int, points_per_edge: int) -> list[Point]:
    """The outer edge in pixel coordinates, counter-clockwise in pixel space, not closed."""
    steps = max(1, points_per_edge - 1)
    pixels: list[Point] = []
    pixels += [(width * i / steps, 0.0) for i in range(steps)]
    pixels += [(float(width), height * i / steps) for i in range(steps)]
    pixels += [(width * (1 - i / steps), float(height)) for i in range(steps)]
    pixels += [(0.0, height * (1 - i / steps)) for i in range(steps)]
    return pixels


def _to_wgs84(crs: CRS, transform: Affine, pixels: Sequence[Point]) -> list[Point]:
    native = [transform @ pixel for pixel in pixels]
    try:
        lons, lats = transform_points(crs, WGS84, [p[0] for p in native], [p[1] for p in native])
    except (CPLE_BaseError, RasterioError) as exc:  # the CRS transforms, but not every outline point does
        raise FootprintError(_OFF_EARTH) from exc
    if not all(math.isfinite(v) for v in (*lons, *lats)):
        raise FootprintError(_OFF_EARTH)
    return list(zip(lons, lats, strict=True))


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
    if -180.0 <= lon <= 180.0:  # as it is: (lon + 180) % 360 - 180 would add float noise (1e-14)
        return lon
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


class UnusableCrsError(FootprintError):
    """PROJ refuses the CRS itself (a parameter out of range, e.g. a Mercator with |lat_ts| = 90°);
    ``reason`` is PROJ's short explanation."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"its CRS is not usable: {reason}")
        self.reason = reason


def footprint_wgs84(crs: CRS, transform: Affine, width: int, height: int) -> tuple[dict[str, Any], BBox]:
    """(GeoJSON geometry, bbox) of the raster in EPSG:4326; FootprintError when it has none.

    The geometry's vertices lie on the true outline, its chords within ``TOLERANCE_DEGREES`` of it;
    the bbox contains the true outline (padded by the densification's remaining deviation)."""
    center = transform @ (width / 2, height / 2)
    try:
        transform_points(crs, WGS84, [center[0]], [center[1]])
    except (CPLE_BaseError, RasterioError) as exc:  # PROJ found no operation between the two CRSs
        reason = projection_problem(crs.to_wkt())
        if reason:  # not "no operation": PROJ cannot use the CRS at all
            raise UnusableCrsError(reason) from exc
        raise FootprintError(
            f"its CRS ({_crs_name(crs)}) cannot be transformed to WGS 84 (EPSG:4326), "
            "e.g. a CRS of another body than the Earth"
        ) from exc
    points, error = densified_ring(crs, transform, width, height)
    ring = unwrap_longitudes(points)
    south, north = min(lat for _, lat in ring), max(lat for _, lat in ring)
    south, north = max(-90.0, south - error), min(90.0, north + error)
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
    # Outward: padded by the remaining deviation and rounded away from the footprint, never past ±180
    # (a raster ending at 180° does not become one crossing it).
    padded_west = _down(max(-180.0, west - error))
    bbox_values = (
        padded_west,
        _down(south),
        _up(min(180.0, east + error) if east <= 180.0 else east + error),
        _up(north),
    )
    if east - west >= 360.0:
        return _bbox_geometry((-180.0, south, 180.0, north)), (-180.0, bbox_values[1], 180.0, bbox_values[3])
    if east <= 180.0:
        return {"type": "Polygon", "coordinates": _polygon(ring)}, bbox_values
    eastern = clip_to_longitudes(ring, west, 180.0)
    western = clip_to_longitudes([(lon - 360.0, lat) for lon, lat in ring], -180.0, east - 360.0)
    geometry = {"type": "MultiPolygon", "coordinates": [_polygon(eastern), _polygon(western)]}
    return geometry, (bbox_values[0], bbox_values[1], _up(min(180.0, east + error - 360.0)), bbox_values[3])


def _down(value: float) -> float:
    return math.floor(value * 10**_DIGITS) / 10**_DIGITS


def _up(value: float) -> float:
    return math.ceil(value * 10**_DIGITS) / 10**_DIGITS


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
