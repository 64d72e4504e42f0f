"""A window read directly from the source (a VRT over it, no local copy) gives the same COG as the staged path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from devstack.sample_raster import write_sample_geotiff
from services.raster.cog import LOSSY_COMPRESSIONS, CogOptions, cog_problems, stage_window, write_cog
from services.raster.convert import needs_staging, write_window_vrt
from services.raster.inspect import inspect_dataset
from services.raster.tiling import TileWindow
from services.raster.warp import DEFAULT_WARP_OPTIONS, inspect_source
from tests.support import rasters


def both_ways(source: Path, tmp_path: Path, window: TileWindow | None = None, **options: object) -> tuple[Path, Path]:
    """The COG of ``window`` converted from a staged copy and from a VRT over the source."""
    cog_options = CogOptions(**options)  # type: ignore[arg-type]
    with rasterio.open(source) as dataset:
        window = window or TileWindow(0, 0, 0, 0, dataset.width, dataset.height)
        metadata = inspect_dataset(dataset, assume_crs="EPSG:4326")
        lossy_with_nodata = cog_options.compression in LOSSY_COMPRESSIONS and dataset.nodata is not None
        assert needs_staging(dataset, metadata, nodata_as_mask=lossy_with_nodata) is None
        staged = tmp_path / f"staged-{window.key}.tif"
        stage_window(dataset, window, staged, crs=metadata.crs, nodata_as_mask=lossy_with_nodata)
        vrt = write_window_vrt(dataset, str(source), window, tmp_path / f"{window.key}.vrt", crs=metadata.crs)
    outputs = []
    for name, path in (("staged", staged), ("direct", vrt)):
        cog = tmp_path / f"cog-{name}-{window.key}.tif"
        write_cog(path, cog, cog_options, dtype=metadata.dtype)
        assert cog_problems(cog) == [], name
        outputs.append(cog)
    return outputs[0], outputs[1]


def assert_same_cog(staged: Path, direct: Path) -> None:
    assert staged.read_bytes() == direct.read_bytes()  # GDAL writes the very same file either way
    with rasterio.open(staged) as a, rasterio.open(direct) as b:
        assert (a.width, a.height, a.count, a.dtypes) == (b.width, b.height, b.count, b.dtypes)
        assert a.crs == b.crs and a.transform == b.transform
        assert a.nodata == b.nodata or (np.isnan(a.nodata) and np.isnan(b.nodata))
        np.testing.assert_array_equal(a.read(), b.read())
        np.testing.assert_array_equal(a.dataset_mask(), b.dataset_mask())
        assert a.mask_flag_enums == b.mask_flag_enums
        assert a.colorinterp == b.colorinterp
        assert a.descriptions == b.descriptions and a.units == b.units
        assert a.scales == b.scales and a.offsets == b.offsets
        assert a.tags() == b.tags()
        assert a.block_shapes == b.block_shapes and a.compression == b.compression
        if a.colorinterp[0].name == "palette":
            assert a.colormap(1) == b.colormap(1)
        assert a.overviews(1) == b.overviews(1)
        for level in range(len(a.overviews(1))):
            with rasterio.open(staged, overview_level=level) as oa, rasterio.open(direct, overview_level=level) as ob:
                np.testing.assert_array_equal(oa.read(), ob.read())
                np.testing.assert_array_equal(oa.read_masks(1), ob.read_masks(1))


@pytest.mark.parametrize(
    "make",
    [
        rasters.uint8_rgb,
        rasters.uint16_multiband,
        rasters.float32_nodata_nan,
        rasters.paletted,
        rasters.one_pixel,
        rasters.no_crs,
    ],
    ids=lambda f: f.__name__,
)
def test_a_direct_read_gives_the_staged_cog(make: Callable[[Path], Path], tmp_path: Path) -> None:
    assert_same_cog(*both_ways(make(tmp_path / "source.tif"), tmp_path))


def test_a_directly_read_window_keeps_its_place_and_pixels(tmp_path: Path) -> None:
    source = rasters.large_for_tiling(tmp_path / "big.tif")
    staged, direct = both_ways(source, tmp_path, TileWindow(1, 1, 512, 512, 788, 588))
    assert_same_cog(staged, direct)
    with rasterio.open(source) as src, rasterio.open(direct) as out:
        window = Window(512, 512, 788, 588)
        np.testing.assert_array_equal(out.read(), src.read(window=window))
        assert out.transform == src.window_transform(window)


def test_an_internal_mask_is_read_directly(tmp_path: Path) -> None:
    source = tmp_path / "masked.tif"
    profile = {"driver": "GTiff", "width": 700, "height": 600, "count": 1, "dtype": "uint8", "crs": "EPSG:4326"}
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK="YES"),
        rasterio.open(source, "w", **profile, transform=rasterio.transform.from_origin(0, 6, 0.01, 0.01)) as dataset,
    ):
        dataset.write(np.arange(700 * 600, dtype="uint32").reshape(1, 600, 700).astype("uint8"))
        mask = np.full((600, 700), 255, dtype="uint8")
        mask[:50, :80] = 0
        dataset.write_mask(mask)
    staged, direct = both_ways(source, tmp_path)
    assert_same_cog(staged, direct)
    with rasterio.open(direct) as out:
        assert out.dataset_mask()[:50, :80].max() == 0 and out.dataset_mask()[60:, 90:].min() == 255


def test_a_sources_own_overviews_are_not_copied(tmp_path: Path) -> None:
    """A VRT exposes the source's overviews; the COG's are still computed with the chosen resampling."""
    source = write_sample_geotiff(tmp_path / "with-overviews.tif", width=1500, height=1300, seed=1)
    with rasterio.open(source, "r+") as dataset:
        dataset.build_overviews([2, 4, 8], Resampling.nearest)
    staged, direct = both_ways(source, tmp_path)
    assert_same_cog(staged, direct)


def test_jpeg_without_nodata_reads_directly(tmp_path: Path) -> None:
    staged, direct = both_ways(rasters.uint8_rgb(tmp_path / "rgb.tif"), tmp_path, compression="jpeg")
    assert_same_cog(staged, direct)


def test_what_must_still_be_staged(tmp_path: Path) -> None:
    with rasterio.open(rasters.float32_nodata_nan(tmp_path / "dem.tif")) as dataset:
        metadata = inspect_dataset(dataset)
        assert needs_staging(dataset, metadata, nodata_as_mask=True) == "nodata becomes an internal mask"
        assert needs_staging(dataset, metadata, nodata_as_mask=False) is None
    with rasterio.open(rasters.rotated(tmp_path / "rotated.tif")) as dataset:
        metadata = inspect_source(dataset, assume_crs=None, options=DEFAULT_WARP_OPTIONS)
        assert needs_staging(dataset, metadata, nodata_as_mask=False) == "warped"
