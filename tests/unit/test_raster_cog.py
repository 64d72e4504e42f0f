"""Window staging and COG writing on local files: valid COGs, same pixels, metadata carried over."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from services.raster.cog import (
    LOSSY_COMPRESSIONS,
    CogOptions,
    cog_creation_options,
    cog_problems,
    compression_problem,
    default_overview_resampling,
    predictor_for,
    stage_window,
    write_cog,
)
from services.raster.inspect import RasterMetadata, inspect_dataset
from services.raster.memory import release_free_memory, track_peak_rss
from services.raster.tiling import TileWindow, grid
from services.raster.vrt import MosaicTile, mosaic_vrt
from tests.support import rasters


def convert(source: Path, tmp_path: Path, window: TileWindow | None = None, **options: object) -> Path:
    with rasterio.open(source) as dataset:
        window = window or TileWindow(0, 0, 0, 0, dataset.width, dataset.height)
        metadata = inspect_dataset(dataset, assume_crs="EPSG:4326")
        staged = tmp_path / f"staged-{window.key}.tif"
        lossy_with_nodata = options.get("compression") in LOSSY_COMPRESSIONS and dataset.nodata is not None
        stage_window(dataset, window, staged, crs=metadata.crs, nodata_as_mask=lossy_with_nodata, strip_rows=200)
    cog = tmp_path / f"cog-{window.key}.tif"
    write_cog(staged, cog, CogOptions(**options), dtype=metadata.dtype)  # type: ignore[arg-type]
    return cog


@pytest.mark.parametrize(
    "make",
    [rasters.uint8_rgb, rasters.uint16_multiband, rasters.float32_nodata_nan, rasters.paletted, rasters.one_pixel],
    ids=lambda f: f.__name__,
)
@pytest.mark.parametrize("compression", ["deflate", "zstd", "lzw"])
def test_lossless_cogs_are_valid_and_keep_pixels_and_metadata(
    make: Callable[[Path], Path], compression: str, tmp_path: Path
) -> None:
    source = make(tmp_path / "source.tif")
    cog = convert(source, tmp_path, compression=compression)
    assert cog_problems(cog) == []
    with rasterio.open(source) as src, rasterio.open(cog) as out:
        assert out.dtypes == src.dtypes and out.count == src.count
        assert out.compression.name.lower() == compression
        np.testing.assert_array_equal(out.read(), src.read())  # NaN equals NaN here
        assert (out.nodata == src.nodata) or (np.isnan(out.nodata) and np.isnan(src.nodata))
        assert out.crs == src.crs and out.transform == src.transform
        assert out.descriptions == src.descriptions
        if src.colorinterp[0].name == "palette":
            assert out.colormap(1) == src.colormap(1)
        if min(src.width, src.height) > 512:
            assert out.overviews(1), "a raster larger than one block gets overviews"


def test_a_window_keeps_its_place_and_pixels(tmp_path: Path) -> None:
    source = rasters.large_for_tiling(tmp_path / "big.tif")
    tile = TileWindow(1, 1, 512, 512, 600, 400)
    cog = convert(source, tmp_path, tile)
    with rasterio.open(source) as src, rasterio.open(cog) as out:
        window = Window(512, 512, 600, 400)
        np.testing.assert_array_equal(out.read(), src.read(window=window))
        assert out.transform == src.window_transform(window)


def test_assumed_crs_is_written_into_the_cog(tmp_path: Path) -> None:
    cog = convert(rasters.no_crs(tmp_path / "nocrs.tif"), tmp_path)
    with rasterio.open(cog) as out:
        assert out.crs.to_epsg() == 4326


def test_jpeg_rgb_is_a_valid_cog_and_a_dataset_mask_survives(tmp_path: Path) -> None:
    source = rasters.uint8_rgb(tmp_path / "rgb.tif")
    cog = convert(source, tmp_path, compression="jpeg")
    assert cog_problems(cog) == []
    with rasterio.open(cog) as out:
        assert out.compression.name == "jpeg" and out.count == 3


def test_jpeg_turns_nodata_into_an_internal_mask(tmp_path: Path) -> None:
    source = tmp_path / "rgb_nodata.tif"
    data = np.full((3, 600, 600), 120, dtype="uint8")
    data[:, :100, :100] = 0
    profile = {"driver": "GTiff", "width": 600, "height": 600, "count": 3, "dtype": "uint8", "crs": "EPSG:4326"}
    transform = rasterio.transform.from_origin(0, 6, 0.01, 0.01)
    with rasterio.open(source, "w", **profile, nodata=0, transform=transform, photometric="RGB") as dataset:
        dataset.write(data)
    cog = convert(source, tmp_path, compression="jpeg")
    assert cog_problems(cog) == []
    with rasterio.open(cog) as out:
        assert out.nodata is None and out.compression.name == "jpeg"
        mask = out.dataset_mask()
        assert mask[:100, :100].max() == 0 and mask[100:, 100:].min() == 255


def test_an_internal_mask_is_carried_over(tmp_path: Path) -> None:
    source = tmp_path / "masked.tif"
    data = np.full((1, 300, 300), 7, dtype="uint8")
    profile = {"driver": "GTiff", "width": 300, "height": 300, "count": 1, "dtype": "uint8", "crs": "EPSG:4326"}
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK="YES"),
        rasterio.open(source, "w", **profile, transform=rasterio.transform.from_origin(0, 3, 0.01, 0.01)) as dataset,
    ):
        dataset.write(data)
        mask = np.full((300, 300), 255, dtype="uint8")
        mask[:50, :50] = 0
        dataset.write_mask(mask)
    cog = convert(source, tmp_path)
    with rasterio.open(cog) as out:
        assert out.dataset_mask()[:50, :50].max() == 0 and out.dataset_mask()[60:, 60:].min() == 255


def metadata_of(make: Callable[[Path], Path], tmp_path: Path) -> RasterMetadata:
    with rasterio.open(make(tmp_path / "m.tif")) as dataset:
        return inspect_dataset(dataset)


def test_compression_must_fit_the_data(tmp_path: Path) -> None:
    rgb = metadata_of(rasters.uint8_rgb, tmp_path)
    dem = metadata_of(rasters.float32_nodata_nan, tmp_path)
    classes = metadata_of(rasters.paletted, tmp_path)
    four_bands = metadata_of(rasters.uint16_multiband, tmp_path)
    assert compression_problem("jpeg", rgb) is None
    assert compression_problem("webp", rgb) is None
    assert compression_problem("deflate", dem) is None
    assert compression_problem("jpeg", dem) == (
        "compression 'jpeg' needs uint8 data with 1 or 3 bands (or RGB + alpha); the source is float32 with 1 band(s)"
    )
    assert "webp' needs uint8 data with 3 (RGB) or 4 (RGBA)" in str(compression_problem("webp", four_bands))
    assert "corrupt the palette indices" in str(compression_problem("jpeg", classes))


def test_predictor_profile_and_resampling_defaults(tmp_path: Path) -> None:
    assert predictor_for("deflate", "float32") == 3
    assert predictor_for("zstd", "uint16") == 2
    assert predictor_for("jpeg", "uint8") is None
    assert cog_creation_options(CogOptions(compression="zstd", threads=3), "int16") == {
        "COMPRESS": "ZSTD",
        "LEVEL": "9",
        "PREDICTOR": "STANDARD",
        "BLOCKSIZE": "512",
        "OVERVIEW_RESAMPLING": "AVERAGE",
        "NUM_THREADS": "3",
        "BIGTIFF": "IF_SAFER",
    }
    deflate = cog_creation_options(CogOptions(overview_resampling="mode"), "float64")
    assert deflate["PREDICTOR"] == "FLOATING_POINT" and deflate["LEVEL"] == "6"
    assert deflate["OVERVIEW_RESAMPLING"] == "MODE"
    jpeg = cog_creation_options(CogOptions(compression="jpeg", jpeg_quality=70), "uint8")
    assert jpeg["QUALITY"] == "70" and "PREDICTOR" not in jpeg and "LEVEL" not in jpeg
    assert default_overview_resampling(metadata_of(rasters.paletted, tmp_path)) == "mode"
    assert default_overview_resampling(metadata_of(rasters.float32_nodata_nan, tmp_path)) == "average"


def test_the_mosaic_vrt_reassembles_paletted_tiles(tmp_path: Path) -> None:
    source = rasters.paletted(tmp_path / "classes.tif")
    windows = grid(640, 480, 512)
    tiles = []
    for window in windows:
        cog = convert(source, tmp_path, window, overview_resampling="mode")
        named = cog.rename(tmp_path / f"{window.key}.tif")
        with rasterio.open(named) as dataset:
            tiles.append(MosaicTile(named.name, window, inspect_dataset(dataset)))
    vrt = tmp_path / "mosaic.vrt"
    vrt.write_text(mosaic_vrt(tiles))
    with rasterio.open(source) as src, rasterio.open(vrt) as mosaic:
        np.testing.assert_array_equal(mosaic.read(), src.read())
        assert mosaic.colormap(1)[2] == src.colormap(1)[2]
        assert mosaic.nodata == src.nodata and mosaic.transform == src.transform


def test_peak_rss_is_measured_and_freed_memory_released() -> None:
    with track_peak_rss() as rss:
        block = np.ones(50 * 1024 * 1024, dtype="uint8")
        time.sleep(0.1)  # a few samples while it is held
        del block
    assert rss.start_bytes is not None and rss.peak_bytes is not None
    assert rss.peak_bytes >= rss.start_bytes + 40 * 1024 * 1024
    release_free_memory()  # harmless anywhere
