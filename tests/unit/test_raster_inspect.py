"""inspect_dataset and the input checks, on real (tiny) GeoTIFFs."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio

from services.raster.inspect import (
    RasterMetadata,
    UnsupportedRasterError,
    encode_nodata,
    inspect_dataset,
    parse_tiff_datetime,
    tiff_truncation_problem,
)
from tests.support import rasters


def inspect(path: Path, assume_crs: str | None = None) -> RasterMetadata:
    with rasterio.open(path) as dataset:
        return inspect_dataset(dataset, assume_crs=assume_crs)


def test_rgb_record_has_profile_bounds_and_the_tiff_date(tmp_path: Path) -> None:
    meta = inspect(rasters.uint8_rgb(tmp_path / "rgb.tif"))
    assert (meta.width, meta.height, meta.count, meta.dtype) == (700, 500, 3, "uint8")
    assert meta.crs_code == "EPSG:32633" and not meta.crs_assumed
    assert meta.bounds == (500_000.0, 5_995_000.0, 507_000.0, 6_000_000.0)
    assert [b.color_interp for b in meta.bands] == ["red", "green", "blue"]
    assert meta.data_kind == "continuous" and meta.colormap is None
    assert meta.acquired_at == "2021-06-15T10:30:00+00:00"
    west, south, east, north = meta.bbox_wgs84
    assert 14.9 < west < east < 15.2 and 54.0 < south < north < 54.2


def test_paletted_raster_is_categorical_with_its_colormap(tmp_path: Path) -> None:
    meta = inspect(rasters.paletted(tmp_path / "classes.tif"))
    assert meta.data_kind == "categorical"
    assert meta.colormap is not None and meta.colormap["1"] == [34, 139, 34, 255]
    assert meta.nodata == 0.0


def test_float_record_keeps_nodata_description_and_unit(tmp_path: Path) -> None:
    meta = inspect(rasters.float32_nodata_nan(tmp_path / "dem.tif"))
    assert meta.nodata == -9999.0 and meta.dtype == "float32"
    assert meta.bands[0].description == "elevation" and meta.bands[0].unit == "metre"
    assert meta.crs_code == "EPSG:4326"
    assert meta.bbox_wgs84 == pytest.approx((10.0, 49.47, 10.52, 50.0))


def test_metadata_records_survive_json(tmp_path: Path) -> None:
    meta = inspect(rasters.paletted(tmp_path / "classes.tif"))
    assert RasterMetadata.from_dict(meta.to_dict()) == meta


def test_one_pixel_raster_is_fine(tmp_path: Path) -> None:
    meta = inspect(rasters.one_pixel(tmp_path / "px.tif"))
    assert (meta.width, meta.height) == (1, 1)
    assert meta.bbox_wgs84 == pytest.approx((5.0, 44.99, 5.01, 45.0))


def test_missing_crs_is_refused_unless_assumed(tmp_path: Path) -> None:
    path = rasters.no_crs(tmp_path / "nocrs.tif")
    with pytest.raises(UnsupportedRasterError, match="has no CRS; pass assume_crs"):
        inspect(path)
    meta = inspect(path, assume_crs="EPSG:32633")
    assert meta.crs_assumed and meta.crs_code == "EPSG:32633"


def test_rotated_and_ungeoreferenced_rasters_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedRasterError, match="rotated or sheared"):
        inspect(rasters.rotated(tmp_path / "rotated.tif"), assume_crs="EPSG:4326")
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as dataset:
        dataset.write(np.ones((1, 4, 4), dtype="uint8"))
    with pytest.raises(UnsupportedRasterError, match="no geotransform"):
        inspect(plain, assume_crs="EPSG:4326")


def test_unsupported_data_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "complex.tif"
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "complex64", "crs": "EPSG:4326"}
    with rasterio.open(path, "w", **profile, transform=rasterio.transform.from_origin(0, 4, 1, 1)):
        pass
    with pytest.raises(UnsupportedRasterError, match="data type complex64 is not supported"):
        inspect(path)


def test_truncation_is_found_from_the_block_offsets(tmp_path: Path) -> None:
    whole = rasters.uint16_multiband(tmp_path / "whole.tif")
    with rasterio.open(whole) as dataset:
        assert tiff_truncation_problem(dataset, whole.stat().st_size) is None
        problem = tiff_truncation_problem(dataset, whole.stat().st_size // 2)
    assert problem is not None and problem.startswith("the file is truncated")


@pytest.mark.parametrize(
    ("value", "encoded"), [(None, None), (-9999.0, -9999.0), (math.nan, "nan"), (-math.inf, "-inf")]
)
def test_nodata_is_json_safe(value: float | None, encoded: object) -> None:
    assert encode_nodata(value) == encoded


def test_tiff_datetime_parsing() -> None:
    assert parse_tiff_datetime("2020:01:02 03:04:05") == "2020-01-02T03:04:05+00:00"
    assert parse_tiff_datetime("yesterday") is None
    assert parse_tiff_datetime(None) is None
