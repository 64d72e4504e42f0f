"""The reason a refused raster gets says what is wrong with it (issue "Rasters as users have them",
item 6), on real tiny files: a CRS PROJ refuses is not "no CRS", RPCs are not "no georeferencing",
and a corrupt block keeps GDAL's own words."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
import rasterio
from rasterio.errors import RasterioError
from rasterio.io import MemoryFile

from services.engine.error_classification import ErrorCategory, classify
from services.raster.crs import gdal_messages, proj_reason, projection_problem
from services.raster.gdal_errors import gdal_detail, gdal_error
from services.raster.inspect import RPC_ONLY, RasterMetadata, UnsupportedRasterError, inspect_dataset
from services.raster.pipeline import check_decodes
from tests.support import rasters

LAT_OF_ORIGIN = (
    "the source's CRS is not usable: Unsupported value for Latitude of natural origin; pass assume_crs to replace it"
)
LAT_TS_90 = (
    "the source's CRS is not usable: merc: Invalid value for lat_ts: |lat_ts| should be <= 90°; "
    "pass assume_crs to replace it"
)


def inspect(path: Path, assume_crs: str | None = None) -> RasterMetadata:
    with rasterio.open(path) as dataset:
        return inspect_dataset(dataset, assume_crs=assume_crs)


def refusal(path: Path, assume_crs: str | None = None) -> str:
    with pytest.raises(UnsupportedRasterError) as caught:
        inspect(path, assume_crs)
    assert classify(caught.value).category is ErrorCategory.PERMANENT  # fails in one attempt
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400
    return message


def test_rasterio_sees_no_crs_in_a_mercator_1sp_with_a_latitude_of_origin(tmp_path: Path) -> None:
    path = rasters.unusable_crs(tmp_path / "merc.tif")
    with rasterio.open(path) as dataset:
        assert dataset.crs is None and not dataset.transform.is_identity  # what made it "no CRS" before


def test_a_crs_proj_refuses_is_not_reported_as_missing(tmp_path: Path) -> None:
    path = rasters.unusable_crs(tmp_path / "merc.tif")
    assert refusal(path) == LAT_OF_ORIGIN
    assert refusal(path) == LAT_OF_ORIGIN  # the same again: nothing GDAL caches hides the reason


def test_a_crs_gdal_keeps_but_proj_cannot_project_gets_projs_reason(tmp_path: Path) -> None:
    path = rasters.unusable_crs(tmp_path / "merc90.tif", latitude_of_origin=90.0, scale_factor=1.0)
    with rasterio.open(path) as dataset:
        assert dataset.crs is not None  # GDAL made a Mercator 2SP with lat_ts 90
    assert refusal(path) == LAT_TS_90
    assert refusal(path) == LAT_TS_90


@pytest.mark.parametrize("options", [{}, {"latitude_of_origin": 90.0, "scale_factor": 1.0}])
def test_assume_crs_replaces_an_unusable_crs(tmp_path: Path, options: dict[str, float]) -> None:
    meta = inspect(rasters.unusable_crs(tmp_path / "merc.tif", **options), assume_crs="EPSG:3395")
    assert meta.crs_assumed and meta.crs_code == "EPSG:3395"


def test_the_reason_is_found_through_a_gdal_virtual_path(tmp_path: Path) -> None:
    # Sources are opened as /vsiaz/ paths: the file is re-opened by name to hear GDAL's reason.
    data = rasters.unusable_crs(tmp_path / "merc.tif").read_bytes()
    with MemoryFile(data, filename="merc.tif") as memory, memory.open() as dataset:
        assert dataset.name.startswith("/vsimem/")
        with pytest.raises(UnsupportedRasterError, match="not usable: Unsupported value for Latitude"):
            inspect_dataset(dataset)


def test_a_raster_without_any_crs_still_says_so(tmp_path: Path) -> None:
    assert refusal(rasters.no_crs(tmp_path / "plain.tif")).startswith("the raster has no CRS; pass assume_crs")


def test_other_bodies_keep_their_reason(tmp_path: Path) -> None:
    assert "Mars (2015) - Sphere / Ocentric) cannot be transformed to WGS 84" in refusal(
        rasters.non_earth(tmp_path / "mars.tif")
    )


def test_an_rpc_only_raster_says_it_needs_warping(tmp_path: Path) -> None:
    path = rasters.rpc_only(tmp_path / "scene.tif")
    with rasterio.open(path) as dataset:
        assert dataset.rpcs is not None and dataset.transform.is_identity
    message = refusal(path)
    assert message == RPC_ONLY
    assert message == (
        "the raster is georeferenced by RPCs only (rational polynomial coefficients, no geotransform): "
        "it must be warped (orthorectified) to a map grid"
    )  # what inspect_dataset says; process_raster warps it unless warp is "never" (services/raster/warp.py)
    assert refusal(path, assume_crs="EPSG:4326") == RPC_ONLY  # a CRS alone does not place its pixels


def test_a_corrupt_block_keeps_gdals_detail_on_one_bounded_line(tmp_path: Path) -> None:
    path = rasters.corrupt(tmp_path / "corrupt.tif")
    with rasterio.open(path) as dataset, pytest.raises(RasterioError) as caught:
        check_decodes(dataset)
    assert str(caught.value) == "Read failed. See previous exception for details."
    error = gdal_error(caught.value, str(path))
    assert isinstance(error, UnsupportedRasterError)
    message = str(error)
    assert message.startswith("cannot be read as a GeoTIFF (corrupt, truncated or not a TIFF): Read failed; ")
    assert "See previous exception" not in message
    assert "IReadBlock failed at X offset 0, Y offset 0" in message and "ZIPDecode:Decoding error" in message
    assert message.count("TIFFReadEncodedTile() failed") == 1  # a line another line contains is dropped
    assert "\n" not in message and len(message) <= 500


def test_the_detail_is_bounded() -> None:
    try:
        try:
            raise RasterioError("x" * 5000 + "\nsecond line")
        except RasterioError as inner:
            raise RasterioError("Read failed. See previous exception for details.") from inner
    except RasterioError as outer:
        detail = gdal_detail(outer)
    assert len(detail) <= 400 and "\n" not in detail and detail.startswith("Read failed; xxx")


def test_proj_reasons_are_short_and_skip_pipeline_echoes() -> None:
    messages = [
        "CPLE_AppDefined in PROJ: merc: Invalid value for lat_ts: |lat_ts| should be <= 90°",
        "GDAL signalled an error: err_no=1, msg='PROJ: pipeline: Pipeline: Bad step definition: inv "
        "(Invalid value for an argument)'",
        "GDAL signalled an error: err_no=1, msg='PROJ: internal_proj_as_wkt: Unsupported value for Latitude of "
        "natural origin'",
        "GDAL signalled an error: err_no=1, msg='PROJ: internal_proj_create_operations: Source and target "
        "ellipsoid do not belong to the same celestial body (Mars vs Earth).'",
    ]
    assert proj_reason(messages) == (
        "merc: Invalid value for lat_ts: |lat_ts| should be <= 90°; Unsupported value for Latitude of natural origin"
    )
    assert proj_reason(messages[3:]) is None  # another body is not an unusable CRS
    assert projection_problem(rasters.MARS_2015) is None
    assert projection_problem(rasterio.crs.CRS.from_epsg(32633).to_wkt()) is None


def test_capturing_gdals_messages_leaves_other_threads_logging_alone(tmp_path: Path) -> None:
    logger = logging.getLogger("rasterio._env")
    level, filters = logger.level, list(logger.filters)
    path = rasters.unusable_crs(tmp_path / "merc.tif")
    seen_elsewhere: list[list[str]] = []

    def elsewhere() -> None:
        with gdal_messages() as messages, rasterio.open(rasters.uint8_rgb(tmp_path / "ok.tif", 16, 16)):
            pass
        seen_elsewhere.append(messages)

    with gdal_messages() as mine:
        other = threading.Thread(target=elsewhere)
        other.start()
        other.join()
        with rasterio.open(path) as dataset:
            assert dataset.crs is None
    assert proj_reason(mine) == "Unsupported value for Latitude of natural origin"
    assert seen_elsewhere == [[]]  # the other thread's capture did not get this thread's messages
    assert (logger.level, logger.filters) == (level, filters)  # restored
