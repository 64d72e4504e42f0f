"""STAC items and collections from metadata records, validated against the official schemas."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pystac
import rasterio
from rasterio.crs import CRS

from services.raster.inspect import RasterMetadata, inspect_dataset
from services.stac.builder import AssetFile, build_collection, build_item, file_checksum, write_self_contained
from tests.support import rasters
from tests.support.stac_schemas import stac_errors

WHEN = datetime(2024, 5, 1, 12, tzinfo=UTC)


def record(path: Path) -> RasterMetadata:
    with rasterio.open(path) as dataset:
        return inspect_dataset(dataset)


def test_item_carries_projection_raster_and_file_fields(tmp_path: Path) -> None:
    meta = record(rasters.float32_nodata_nan(tmp_path / "dem.tif"))
    item = build_item(
        "dem-tile_r0_c0",
        meta,
        AssetFile(href="https://example.org/dem.tif", size=1234, sha256="ab" * 32),
        item_datetime=WHEN,
    )
    document = item.to_dict(include_self_link=False)
    assert document["properties"]["proj:code"] == "EPSG:4326"
    assert document["properties"]["proj:shape"] == [530, 520]
    assert document["properties"]["datetime"] == "2024-05-01T12:00:00Z"
    asset = document["assets"]["data"]
    assert asset["type"] == pystac.MediaType.COG
    assert asset["file:size"] == 1234 and asset["file:checksum"] == file_checksum("ab" * 32)
    assert asset["file:checksum"].startswith("1220")
    assert asset["raster:bands"] == [
        {"nodata": -9999.0, "data_type": "float32", "spatial_resolution": 0.001, "unit": "metre"}
    ]


def test_a_crs_without_an_epsg_code_is_given_as_wkt2(tmp_path: Path) -> None:
    path = rasters.no_crs(tmp_path / "nocrs.tif")
    with rasterio.open(path) as dataset:
        proj = "+proj=tmerc +lat_0=0 +lon_0=12.3 +k=1 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs"
        custom = CRS.from_string(proj).to_wkt()  # assume_crs takes codes, WKT or PROJJSON only
        meta = inspect_dataset(dataset, assume_crs=custom)
    item = build_item("x", meta, AssetFile(href="x.tif"), item_datetime=WHEN)
    assert item.properties.get("proj:code") is None
    assert "TRANSVERSE" in item.properties["proj:wkt2"].upper()


def test_self_contained_catalog_is_valid_stac_with_relative_links(tmp_path: Path) -> None:
    root = tmp_path / "container"
    items = []
    for make in (rasters.uint8_rgb, rasters.paletted, rasters.float32_nodata_nan, rasters.antimeridian):
        meta = record(make(tmp_path / f"{make.__name__}.tif"))
        asset = AssetFile(href=str(root / "cogs" / f"{make.__name__}.tif"), size=10, sha256="00" * 32)
        items.append(build_item(make.__name__, meta, asset, item_datetime=WHEN))
    collection = build_collection("demo", items, description="test collection")
    files = write_self_contained(collection, root / "stac" / "demo")
    documents = {path.relative_to(root).as_posix(): json.loads(path.read_text()) for path in files}
    assert "stac/demo/collection.json" in documents and len(documents) == 5
    for name, document in documents.items():
        assert stac_errors(document) == [], name
        assert all(not link["href"].startswith(("/", "file:")) for link in document["links"]), name
        assert all(link["rel"] != "self" for link in document["links"]), name
    item = documents["stac/demo/uint8_rgb/uint8_rgb.json"]
    assert item["assets"]["data"]["href"] == "../../../cogs/uint8_rgb.tif"
    crossing = documents["stac/demo/antimeridian/antimeridian.json"]
    assert crossing["geometry"]["type"] == "MultiPolygon" and crossing["bbox"][0] > crossing["bbox"][2]
    # The collection's extent wraps the antimeridian too instead of spanning the globe.
    west, _, east, _ = documents["stac/demo/collection.json"]["extent"]["spatial"]["bbox"][0]
    assert west > east
