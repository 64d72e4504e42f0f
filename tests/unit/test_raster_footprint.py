"""Footprints and bboxes in EPSG:4326: ordinary rasters, the antimeridian, the poles, unions."""

from __future__ import annotations

from pathlib import Path

import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import from_origin

from services.raster.footprint import FootprintError, footprint_wgs84, union_bbox, unwrap_longitudes
from tests.support import rasters


def test_a_utm_raster_gets_a_polygon_inside_its_zone() -> None:
    geometry, bbox = footprint_wgs84(CRS.from_epsg(32633), from_origin(500_000, 6_000_000, 10, 10), 1000, 800)
    west, south, east, north = bbox
    assert geometry["type"] == "Polygon"
    assert 14.9 < west < east < 15.2 and 54.0 < south < north < 54.2
    ring = geometry["coordinates"][0]
    assert ring[0] == ring[-1]
    assert all(west <= x <= east and south <= y <= north for x, y in ring)


def test_a_raster_across_the_antimeridian_is_split_and_its_bbox_wraps() -> None:
    # EPSG:4326 from 179.5 to 180.5 degrees east (longitudes past 180 in the file).
    geometry, bbox = footprint_wgs84(CRS.from_epsg(4326), from_origin(179.5, -16.0, 0.005, 0.005), 200, 100)
    assert geometry["type"] == "MultiPolygon"
    assert bbox == pytest.approx((179.5, -16.5, -179.5, -16.0))
    eastern, western = (polygon[0] for polygon in geometry["coordinates"])
    assert (min(x for x, _ in eastern), max(x for x, _ in eastern)) == pytest.approx((179.5, 180.0))
    assert (min(x for x, _ in western), max(x for x, _ in western)) == pytest.approx((-180.0, -179.5))


def test_a_utm_zone_60_raster_reaching_past_180_is_split_too() -> None:
    # Zone 60 is centred on 177°E; at 66°N, 180° is ~137 km east of the central meridian.
    geometry, bbox = footprint_wgs84(CRS.from_epsg(32660), from_origin(550_000, 7_300_000, 100, 100), 3000, 1000)
    assert geometry["type"] == "MultiPolygon"
    west, _, east, _ = bbox
    assert west > east and 170 < west < 180 and -180 < east < -170


def test_a_polar_stereographic_raster_over_the_pole_covers_all_longitudes() -> None:
    # EPSG:3413 (NSIDC north polar stereographic), centred on the pole.
    geometry, bbox = footprint_wgs84(CRS.from_epsg(3413), from_origin(-500_000, 500_000, 1000, 1000), 1000, 1000)
    west, south, east, north = bbox
    assert (west, east, north) == (-180.0, 180.0, 90.0)
    assert 83 < south < 84  # the corners, 707 km from the pole
    assert geometry["type"] == "Polygon"


def test_unwrapping_keeps_neighbours_within_half_a_turn() -> None:
    assert unwrap_longitudes([(179.0, 0.0), (-179.0, 0.0), (-178.0, 1.0)]) == [(179.0, 0.0), (181.0, 0.0), (182.0, 1.0)]


@pytest.mark.parametrize(
    ("boxes", "expected"),
    [
        ([(10, 0, 20, 5), (15, -5, 30, 2)], (10, -5, 30, 5)),
        ([(170, 0, 180, 1), (-180, 0, -170, 1)], (170, 0, -170, 1)),  # neighbours across ±180
        ([(175, 0, -175, 1), (-176, 0, -160, 2)], (175, 0, -160, 2)),  # one already crosses
        ([(-10, 0, 10, 1), (100, 0, 120, 1)], (-10, 0, 120, 1)),  # the smaller gap is not spanned
        ([(-180, -90, 180, 90)], (-180, -90, 180, 90)),
    ],
)
def test_union_of_bboxes_takes_the_short_way_round(
    boxes: list[tuple[float, float, float, float]], expected: tuple[float, float, float, float]
) -> None:
    assert union_bbox(boxes) == pytest.approx(expected)


def test_a_crs_of_another_body_has_no_footprint_and_the_reason_is_short(tmp_path: Path) -> None:
    with rasterio.open(rasters.non_earth(tmp_path / "mars.tif")) as dataset, pytest.raises(FootprintError) as caught:
        footprint_wgs84(dataset.crs, dataset.transform, dataset.width, dataset.height)
    message = str(caught.value)
    assert "Mars (2015) - Sphere / Ocentric" in message and len(message) < 200  # no WKT/PROJJSON dump


def test_an_outline_off_the_earth_has_no_footprint(tmp_path: Path) -> None:
    disk = rasters.off_earth(tmp_path / "disk.tif")
    with rasterio.open(disk) as dataset, pytest.raises(FootprintError, match="lies off the Earth"):
        footprint_wgs84(dataset.crs, dataset.transform, dataset.width, dataset.height)
