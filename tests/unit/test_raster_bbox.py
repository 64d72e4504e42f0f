"""Item and collection bboxes contain the raster's true footprint (issue "Rasters as users have
them", item 7): a wide projected raster's edges bow between the outline's points, and a bbox of 21
points per edge fell short of them. The reference is a very dense outline (10,000 points per edge)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import transform as transform_points

from services.raster.footprint import (
    GEOMETRY_TOLERANCE_DEGREES,
    MAX_OUTLINE_POINTS,
    densified_ring,
    footprint_wgs84,
    outline,
    union_bbox,
)
from services.raster.inspect import RasterMetadata, inspect_dataset
from services.stac.builder import AssetFile, build_collection, build_item
from tests.support import rasters

BBox = tuple[float, float, float, float]
DENSE = 10_000  # reference points per edge


def dense_outline(crs: CRS, transform: Affine, width: int, height: int) -> tuple[np.ndarray[Any, Any], ...]:
    """Longitudes and latitudes of DENSE points on every edge (a reference for the true footprint)."""
    s = np.linspace(0.0, 1.0, DENSE + 1)
    cols = np.concatenate([s * width, np.full_like(s, width), s * width, np.zeros_like(s)])
    rows = np.concatenate([np.zeros_like(s), s * height, np.full_like(s, height), s * height])
    a, b, c, d, e, f = transform[:6]
    xs, ys = a * cols + b * rows + c, d * cols + e * rows + f
    lons, lats = transform_points(crs, "EPSG:4326", xs.tolist(), ys.tolist())
    return np.asarray(lons), np.asarray(lats)


def reference_bbox(crs: CRS, transform: Affine, width: int, height: int) -> BBox:
    lons, lats = dense_outline(crs, transform, width, height)
    return (float(lons.min()), float(lats.min()), float(lons.max()), float(lats.max()))


def shortfall(bbox: BBox, reference: BBox) -> list[float]:
    """Degrees by which each side of ``bbox`` falls inside ``reference`` (negative: it contains it)."""
    return [bbox[0] - reference[0], bbox[1] - reference[1], reference[2] - bbox[2], reference[3] - bbox[3]]


def metres(degrees: float, latitude: float) -> float:
    return degrees * 111_320 * math.cos(math.radians(latitude))


def record(path: Path) -> RasterMetadata:
    with rasterio.open(path) as dataset:
        return inspect_dataset(dataset)


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[RasterMetadata, BBox]:
    path = rasters.wide_lambert(tmp_path_factory.mktemp("wide") / "wide.tif")
    meta = record(path)
    with rasterio.open(path) as dataset:
        reference = reference_bbox(dataset.crs, dataset.transform, dataset.width, dataset.height)
    return meta, reference


def test_the_wide_raster_is_wide_and_a_sparse_outline_falls_short_of_it(wide: tuple[RasterMetadata, BBox]) -> None:
    meta, reference = wide
    assert 34.0 < reference[2] - reference[0] < 36.0  # 35.2°
    # What 21 points per edge gave: the top edge's northernmost point lies between two of them.
    native = outline(meta.affine, meta.width, meta.height)
    _, lats = transform_points(meta.crs, "EPSG:4326", [p[0] for p in native], [p[1] for p in native])
    assert metres(reference[3] - max(lats), 0.0) > 50.0  # > 50 m short in latitude (~0.5e-3 degrees)


def test_the_item_bbox_contains_the_true_footprint_and_barely_exceeds_it(wide: tuple[RasterMetadata, BBox]) -> None:
    meta, reference = wide
    short = shortfall(meta.bbox_wgs84, reference)
    assert all(side <= 0.0 for side in short), short  # contains it
    assert all(side >= -1e-8 for side in short), short  # and exceeds it by ~1e-9°, 1 mm


def test_the_item_geometry_follows_the_true_edge(wide: tuple[RasterMetadata, BBox]) -> None:
    meta, _ = wide
    ring = np.asarray(meta.footprint_wgs84["coordinates"][0])
    lons, lats = dense_outline(meta.crs, meta.affine, meta.width, meta.height)
    a, b = ring[:-1], ring[1:]
    worst = 0.0
    for lon, lat in zip(lons[::7], lats[::7], strict=True):  # every 7th reference point against every chord
        ab = b - a
        t = np.clip(((lon - a[:, 0]) * ab[:, 0] + (lat - a[:, 1]) * ab[:, 1]) / (ab**2).sum(axis=1), 0.0, 1.0)
        nearest = a + t[:, None] * ab
        worst = max(worst, float(np.hypot(nearest[:, 0] - lon, nearest[:, 1] - lat).min()))
    assert worst <= 1.5 * GEOMETRY_TOLERANCE_DEGREES, worst
    assert len(ring) < 3000  # densified where the edges bend, not everywhere


def test_the_collection_extent_contains_it_too(wide: tuple[RasterMetadata, BBox], tmp_path: Path) -> None:
    meta, reference = wide
    when = datetime(2024, 5, 1, tzinfo=UTC)
    items = [build_item("wide", meta, AssetFile(href=str(tmp_path / "wide.tif")), item_datetime=when)]
    items.append(
        build_item(
            "rgb", record(rasters.uint8_rgb(tmp_path / "rgb.tif", 32, 32)), AssetFile("x.tif"), item_datetime=when
        )
    )
    [extent] = build_collection("wide", items, description="d").extent.spatial.bboxes
    assert all(side <= 0.0 for side in shortfall(tuple(extent), reference))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("crs", "transform", "width", "height"),
    [
        (CRS.from_epsg(32633), from_origin(500_000, 6_000_000, 10, 10), 1000, 800),  # 10 x 8 km in UTM
        (CRS.from_epsg(3034), from_origin(4_000_000, 3_000_000, 30, 30), 700, 500),  # 21 x 15 km in Lambert
        (CRS.from_epsg(4326), from_origin(10.0, 50.0, 0.001, 0.001), 520, 530),
    ],
)
def test_a_small_rasters_bbox_is_within_1e6_degrees_of_its_true_footprint(
    crs: CRS, transform: Affine, width: int, height: int
) -> None:
    _, bbox = footprint_wgs84(crs, transform, width, height)
    short = shortfall(bbox, reference_bbox(crs, transform, width, height))
    assert all(-1e-6 <= side <= 0.0 for side in short), short


def test_a_small_fixture_raster_is_within_1e6_too(tmp_path: Path) -> None:
    path = rasters.uint8_rgb(tmp_path / "rgb.tif")
    meta = record(path)
    short = shortfall(meta.bbox_wgs84, reference_bbox(meta.crs, meta.affine, meta.width, meta.height))
    assert all(-1e-6 <= side <= 0.0 for side in short), short
    assert len(meta.footprint_wgs84["coordinates"][0]) < 120  # a small raster keeps a small geometry


def test_the_cost_is_bounded_for_a_huge_raster() -> None:
    # The whole Web Mercator world at 1 km: 40,075 pixels a side, edges that bend all along.
    crs, transform = CRS.from_epsg(3857), from_origin(-20_037_508, 20_037_508, 1000, 1000)
    points, error = densified_ring(crs, transform, 40_075, 40_075)
    assert len(points) <= MAX_OUTLINE_POINTS and error < 1e-6
    _, bbox = footprint_wgs84(crs, transform, 40_075, 40_075)
    assert all(side <= 0.0 for side in shortfall(bbox, reference_bbox(crs, transform, 40_075, 40_075)))


def test_a_raster_ending_at_180_does_not_become_one_crossing_it() -> None:
    geometry, bbox = footprint_wgs84(CRS.from_epsg(4326), from_origin(170.0, 10.0, 0.5, 0.5), 20, 20)
    assert geometry["type"] == "Polygon" and bbox == (170.0, 0.0, 180.0, 10.0)


def test_the_union_of_bboxes_adds_no_float_noise() -> None:
    # (lon + 180) % 360 - 180 turned 9.999999999 into 9.99999999900001: the extent missed its item.
    boxes = [(9.999999999, 49.0, 10.52, 50.0), (11.0, 48.0, 12.000000001, 49.0)]
    assert union_bbox(boxes) == (9.999999999, 48.0, 12.000000001, 50.0)
