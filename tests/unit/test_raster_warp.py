"""services/raster/warp.py: which sources are warped and onto which grid, on tiny real rasters (the
pixels themselves are compared with gdalwarp in tests/integration/test_process_raster_warp.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import morecantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from pydantic import ValidationError
from rasterio.crs import CRS
from rasterio.vrt import WarpedVRT
from rio_cogeo.cogeo import cog_validate

from controllers.process_raster_parameters import ProcessRasterParameters
from devstack import bootstrap
from services.engine.job_service import field_errors
from services.raster.cog import CogOptions, cog_problems, write_cog
from services.raster.inspect import RasterMetadata, TargetGrid, UnsupportedRasterError, georeferencing
from services.raster.warp import (
    WEB_MERCATOR,
    WarpOptions,
    default_resampling,
    inspect_source,
    retarget_warped_vrt,
    suggested_grid,
    warp_reason,
    warp_scale,
    warped_view,
    web_optimized_grid,
)
from tests.support import rasters

UTM_33N = CRS.from_epsg(32633)


def inspect(path: Path, assume_crs: str | None = None, **options: Any) -> RasterMetadata:
    with rasterio.open(path) as dataset:
        return inspect_source(dataset, assume_crs=assume_crs, options=WarpOptions(**options))


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (rasters.uint8_rgb, "geotransform"),
        (rasters.rotated, "rotated"),
        (rasters.gcp_only, "gcps"),
        (rasters.rpc_only, "rpcs"),
    ],
)
def test_how_a_source_is_georeferenced(make: Any, kind: str, tmp_path: Path) -> None:
    with rasterio.open(make(tmp_path / "x.tif")) as dataset:
        assert georeferencing(dataset) == kind


def test_warp_reasons() -> None:
    auto = WarpOptions()
    assert warp_reason("geotransform", UTM_33N, auto) is None
    assert warp_reason("geotransform", UTM_33N, WarpOptions(target_crs="EPSG:32633")) is None  # already there
    assert warp_reason("geotransform", UTM_33N, WarpOptions(target_crs="EPSG:4326")) == (
        "target_crs differs from the source's CRS"
    )
    assert warp_reason("geotransform", WEB_MERCATOR, WarpOptions(web_optimized=True)) is not None  # tile-aligned
    assert warp_reason("rotated", UTM_33N, auto) == "rotated or sheared geotransform"
    assert warp_reason("gcps", UTM_33N, auto) == "georeferenced by ground control points only"
    assert warp_reason("rpcs", UTM_33N, auto) == "georeferenced by RPCs only"


def test_a_north_up_source_in_the_wanted_crs_is_read_as_it_is(tmp_path: Path) -> None:
    path = rasters.uint8_rgb(tmp_path / "rgb.tif")
    assert inspect(path).warp is None
    assert inspect(path, target_crs="EPSG:32633").warp is None
    assert inspect(path, mode="never").warp is None


def test_a_rotated_source_is_warped_onto_gdalwarps_default_grid(tmp_path: Path) -> None:
    metadata = inspect(rasters.rotated(tmp_path / "rotated.tif"))
    # gdalwarp rotated.tif out.tif: 75 x 75 pixels of sqrt(10² + 2²) m from the rotated grid's corners
    assert (metadata.width, metadata.height) == (75, 75)
    assert metadata.crs_code == "EPSG:32633"
    a, b, c, d, e, f = metadata.transform
    assert (b, d, c, f) == (0.0, 0.0, 500_000.0, 6_000_128.0)
    assert a == pytest.approx(math.hypot(10, 2)) and e == pytest.approx(-math.hypot(10, 2))
    assert metadata.bounds == pytest.approx((500_000.0, 6_000_128.0 - 75 * a, 500_000.0 + 75 * a, 6_000_128.0))
    assert metadata.warp == {
        "reason": "rotated or sheared geotransform",
        "georeferencing": "rotated",
        "source_crs_wkt": UTM_33N.to_wkt(),
        "resampling": "bilinear",  # float32 elevations: continuous
        "adds_mask": True,  # no nodata: outside the source becomes the COG's internal mask
        "scale": [75 / 64, 75 / 64],  # target pixels per source pixel over the whole raster
    }
    assert metadata.has_dataset_mask and metadata.nodata is None


def test_gcps_and_rpcs_are_warped_in_their_own_crs(tmp_path: Path) -> None:
    gcps = inspect(rasters.gcp_only(tmp_path / "gcps.tif"))
    assert gcps.crs_code == "EPSG:32633" and gcps.warp is not None and not gcps.warp["adds_mask"]
    assert gcps.nodata == 0.0 and not gcps.has_dataset_mask  # nodata marks the outside
    assert gcps.transform[1] == gcps.transform[3] == 0.0
    rpcs = inspect(rasters.rpc_only(tmp_path / "rpcs.tif"))
    assert rpcs.crs_code == "EPSG:4326" and rpcs.warp is not None and rpcs.warp["georeferencing"] == "rpcs"
    assert (rpcs.width, rpcs.height) == (64, 64)  # 0.1° scene: 64 x 0.0015625°, as gdalwarp -rpc
    assert rpcs.bbox_wgs84 == pytest.approx((6.95, 44.95, 7.05, 45.05), abs=1e-3)
    assert inspect(rasters.rpc_only(tmp_path / "rpc2.tif"), target_crs="EPSG:32632").crs_code == "EPSG:32632"


def test_target_crs_reprojects_and_the_footprint_describes_the_output(tmp_path: Path) -> None:
    source = inspect(rasters.uint16_multiband(tmp_path / "m.tif"))
    warped = inspect(rasters.uint16_multiband(tmp_path / "m.tif"), target_crs="EPSG:4326")
    assert warped.crs_code == "EPSG:4326" and warped.warp is not None
    assert warped.warp["reason"] == "target_crs differs from the source's CRS"
    assert (warped.width, warped.height) != (source.width, source.height)
    west, south, east, north = warped.bounds
    assert warped.bbox_wgs84 == pytest.approx((west, south, east, north), abs=1e-9)
    assert warped.count == source.count and warped.dtype == source.dtype


def test_categorical_sources_default_to_nearest_and_resampling_overrides(tmp_path: Path) -> None:
    assert default_resampling("categorical") == "nearest" and default_resampling("continuous") == "bilinear"
    paletted = inspect(rasters.paletted(tmp_path / "p.tif"), target_crs="EPSG:3035")
    assert paletted.warp is not None and paletted.warp["resampling"] == "nearest"
    assert paletted.colormap is not None and paletted.data_kind == "categorical"
    cubic = inspect(rasters.rotated(tmp_path / "r.tif"), resampling="cubic")
    assert cubic.warp is not None and cubic.warp["resampling"] == "cubic"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (rasters.rotated, "the raster has a rotated or sheared geotransform; it must be warped to a north-up grid"),
        (rasters.gcp_only, "the raster is georeferenced by ground control points only; it must be warped"),
        (rasters.rpc_only, "the raster is georeferenced by RPCs only"),
    ],
)
def test_warp_never_keeps_the_refusal(make: Any, reason: str, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedRasterError) as caught:
        inspect(make(tmp_path / "x.tif"), mode="never")
    message = str(caught.value)
    assert message.startswith(reason) and message.endswith('and warp is "never"') and "\n" not in message


def test_a_source_without_crs_still_needs_assume_crs_to_be_warped(tmp_path: Path) -> None:
    path = rasters.no_crs(tmp_path / "nocrs.tif")
    with pytest.raises(UnsupportedRasterError, match="has no CRS; pass assume_crs"):
        inspect(path, target_crs="EPSG:4326")
    warped = inspect(path, assume_crs="EPSG:32633", target_crs="EPSG:4326")
    assert warped.crs_code == "EPSG:4326" and warped.crs_assumed


def test_web_optimized_grid_is_aligned_to_the_closest_finer_zoom() -> None:
    tms = morecantile.tms.get("WebMercatorQuad")
    suggested = TargetGrid(WEB_MERCATOR, Affine(16.0, 0.0, 1_000_003.0, 0.0, -16.0, 7_000_007.0), 700, 500)
    grid = web_optimized_grid(suggested)
    zoom = next(z for z in range(31) if tms.matrix(z).cellSize <= 16.0)
    assert zoom == 14 and grid.transform.a == tms.matrix(14).cellSize == -grid.transform.e  # 9.55 m, not 19.1 m
    tile = tms.matrix(14).cellSize * 256
    origin_x, origin_y = tms.matrix(14).pointOfOrigin
    col, row = (grid.transform.c - origin_x) / tile, (origin_y - grid.transform.f) / tile
    assert col == pytest.approx(round(col), abs=1e-9) and row == pytest.approx(round(row), abs=1e-9)
    assert grid.width % 256 == 0 and grid.height % 256 == 0
    west, south, east, north = grid.bounds
    s_west, s_south, s_east, s_north = suggested.bounds
    assert west <= s_west and south <= s_south and east >= s_east and north >= s_north  # covers the source
    assert east - s_east < tile and s_west - west < tile  # by less than a tile each side


def test_web_optimized_sources_are_warped_to_epsg_3857(tmp_path: Path) -> None:
    with rasterio.open(rasters.uint8_rgb(tmp_path / "rgb.tif")) as dataset:
        suggested = suggested_grid(dataset, UTM_33N, WEB_MERCATOR)
    metadata = inspect(rasters.uint8_rgb(tmp_path / "rgb.tif"), web_optimized=True)
    assert metadata.crs_code == "EPSG:3857" and metadata.width % 256 == 0 and metadata.height % 256 == 0
    assert metadata.transform[0] <= abs(suggested.transform.a)
    assert metadata.transform[0] > abs(suggested.transform.a) / 2  # the closest finer level, not finer still


def params(**values: Any) -> dict[str, str]:
    try:
        ProcessRasterParameters.model_validate({"blob_name": "a.tif", **values})
    except ValidationError as exc:
        return {e["field"]: e["message"] for e in field_errors(exc)}
    return {}


def test_warp_parameters_are_checked_at_submission() -> None:
    assert params(target_crs="epsg:4326", web_optimized=False, resampling="cubic", warp="auto") == {}
    stored = ProcessRasterParameters.model_validate({"blob_name": "a.tif", "target_crs": "epsg:4326"})
    assert stored.target_crs == "EPSG:4326"  # stored resolved, like assume_crs
    assert stored.warp_options == WarpOptions("auto", "EPSG:4326", False, None)
    assert set(params(target_crs="EPSG:999999")) == {"target_crs"}
    assert set(params(target_crs="https://example.com/crs")) == {"target_crs"}
    assert set(params(warp="sometimes")) == {"warp"}
    assert set(params(resampling="sinc")) == {"resampling"}
    assert set(params(warp="never", target_crs="EPSG:4326")) == {"target_crs"}
    assert set(params(warp="never", web_optimized=True)) == {"web_optimized"}
    assert params(web_optimized=True, target_crs="EPSG:4326") == {
        "web_optimized": "Value error, web_optimized output is in EPSG:3857; target_crs is EPSG:4326"
    }
    assert params(web_optimized=True, target_crs="EPSG:3857") == {}


def test_web_optimized_scale_is_the_source_extent_in_target_pixels() -> None:
    suggested = TargetGrid(WEB_MERCATOR, Affine(16.0, 0.0, 0.0, 0.0, -16.0, 0.0), 700, 500)
    target = TargetGrid(WEB_MERCATOR, Affine(8.0, 0.0, 0.0, 0.0, -8.0, 0.0), 1536, 1024)
    assert warp_scale(suggested, target, 350, 1000) == (4.0, 1.0)  # not 1536 / 350: the padding is no source


@pytest.mark.parametrize("make", [rasters.gcp_only, partial(rasters.rpc_only, constant=False), rasters.rotated])
def test_a_retargeted_vrt_keeps_the_sources_own_georeferencing(make: Any, tmp_path: Path) -> None:
    """rasterio's WarpedVRT with an explicit grid places GCP/RPC sources by their (identity)
    geotransform; the retargeted XML keeps GDAL's transformer. On the default grid shifted by whole
    pixels, the pixels are the default VRT's, shifted."""
    with rasterio.open(make(tmp_path / "src.tif")) as dataset:
        metadata = inspect_source(dataset, assume_crs=None, options=WarpOptions())
        with warped_view(dataset, metadata) as default:
            assert isinstance(default, WarpedVRT)  # the default grid: no retargeting
            expected = default.read()
        moved = replace(
            metadata,
            transform=tuple(metadata.affine * Affine.translation(-3, -2))[:6],
            width=metadata.width + 3,
            height=metadata.height + 2,
        )
        with warped_view(dataset, moved) as shifted:
            assert not isinstance(shifted, WarpedVRT) and shifted.driver == "VRT"
            assert (shifted.width, shifted.height) == (moved.width, moved.height)
            assert tuple(shifted.transform)[:6] == pytest.approx(moved.transform)
            np.testing.assert_allclose(shifted.read()[:, 2:, 3:], expected, rtol=1e-6)  # float32 rounding


def test_retarget_refuses_what_is_not_a_warped_vrt() -> None:
    with pytest.raises(ValueError, match="not a warped VRT"):
        retarget_warped_vrt("<VRTDataset/>", Affine.identity(), 1, 1)


def test_a_cog_one_block_wide_and_taller_is_valid(tmp_path: Path) -> None:
    """rio-cogeo calls a 512 x 1024 COG "not tiled" (its block is as wide as the file); the COG
    driver tiles every file, so cog_problems drops that one (web-optimized grids make such tiles)."""
    staged, cog = tmp_path / "staged.tif", tmp_path / "cog.tif"
    profile = {"driver": "GTiff", "width": 512, "height": 1024, "count": 1, "dtype": "uint8"}
    with rasterio.open(staged, "w", crs="EPSG:32633", transform=Affine(1, 0, 0, 0, -1, 0), **profile) as out:
        out.write(np.full((1, 1024, 512), 7, dtype="uint8"))
    write_cog(staged, cog, CogOptions(), dtype="uint8")
    assert not cog_validate(str(cog), quiet=True)[0]  # rio-cogeo's false positive
    assert cog_problems(cog) == []
    assert "The file is greater than 512xH or 512xW, but is not tiled" in cog_problems(staged)  # real strips


def test_the_bootstrap_installs_gdalwarp_for_the_warp_tests() -> None:
    requirement = bootstrap.REQUIREMENTS["gdal"]
    assert requirement.apt_packages == ("gdal-bin",) and "gdalwarp" in requirement.why
    assert requirement.present(), "make system-deps installs Debian's gdal-bin"
