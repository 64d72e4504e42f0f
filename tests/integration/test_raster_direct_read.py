"""The cog task reads a window from the blob directly (GDAL's COG driver over a VRT on /vsiaz/) and
writes the same COG, byte for byte, as converting a locally staged copy of the window; what must be
rewritten first is still staged; a source written during the conversion commits nothing."""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from repositories.blob_storage import BlobStorage
from schemas.errors import PermanentTaskError
from services.raster.cog import LOSSY_COMPRESSIONS, CogOptions, stage_window, write_cog
from services.raster.convert import check_source_unchanged
from services.raster.inspect import inspect_dataset
from services.raster.pipeline import BlobRef, convert_tile
from services.raster.tiling import TileWindow
from tests.support import rasters

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def storage(azurite_connection_string: str) -> BlobStorage:
    blobs = BlobStorage(azurite_connection_string)
    blobs.ensure_container("bronze")
    blobs.ensure_container("silver")
    return blobs


@pytest.fixture(scope="module")
def run_id() -> str:
    return secrets.token_hex(3)


def rgb_with_nodata(path: Path) -> Path:
    data = np.full((3, 600, 600), 120, dtype="uint8")
    data[:, :100, :100] = 0
    profile = {"driver": "GTiff", "width": 600, "height": 600, "count": 3, "dtype": "uint8", "crs": "EPSG:4326"}
    transform = rasterio.transform.from_origin(0, 6, 0.01, 0.01)
    with rasterio.open(path, "w", **profile, nodata=0, transform=transform, photometric="RGB") as dataset:
        dataset.write(data)
    return path


def staged_sha256(source: Path, window: TileWindow, options: CogOptions, work: Path) -> str:
    """The SHA-256 of the COG the staged path makes from the local copy of the source."""
    with rasterio.open(source) as dataset:
        metadata = inspect_dataset(dataset)
        lossy_with_nodata = options.compression in LOSSY_COMPRESSIONS and dataset.nodata is not None
        staged = work / f"staged-{window.key}.tif"
        stage_window(dataset, window, staged, crs=metadata.crs, nodata_as_mask=lossy_with_nodata)
    cog = work / f"cog-{window.key}.tif"
    write_cog(staged, cog, options, dtype=metadata.dtype)
    return hashlib.sha256(cog.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("make", "window", "options", "staged_because"),
    [
        (rasters.large_for_tiling, TileWindow(1, 1, 512, 512, 788, 588), CogOptions(), None),
        (rasters.paletted, None, CogOptions(overview_resampling="mode"), None),
        (rasters.float32_nodata_nan, None, CogOptions(compression="zstd"), None),
        (rasters.uint8_rgb, None, CogOptions(compression="jpeg"), None),
        (rgb_with_nodata, None, CogOptions(compression="webp"), "nodata becomes an internal mask"),
    ],
    ids=["window", "paletted", "float_nodata", "jpeg", "lossy_nodata_staged"],
)
def test_a_tile_read_directly_is_the_staged_cog_byte_for_byte(
    storage: BlobStorage,
    run_id: str,
    tmp_path: Path,
    make: Callable[[Path], Path],
    window: TileWindow | None,
    options: CogOptions,
    staged_because: str | None,
) -> None:
    source = make(tmp_path / "source.tif")
    blob = f"direct-{run_id}/{source.stem}-{secrets.token_hex(2)}.tif"
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    with rasterio.open(source) as dataset:
        metadata = inspect_dataset(dataset)
    window = window or TileWindow(0, 0, 0, 0, metadata.width, metadata.height)
    target = BlobRef("silver", f"cogs/{blob}/{window.key}.tif")
    ref = BlobRef("bronze", blob)
    semaphore = threading.Semaphore(1)
    result = convert_tile(
        storage, ref, metadata, window, target, options, conversion_slots=semaphore, read_directly=True
    )
    assert result["staged_because"] == staged_because
    default = convert_tile(storage, ref, metadata, window, target, options, conversion_slots=semaphore)
    assert default["staged_because"] == (staged_because or "staged")  # staging is the default
    assert default["cog"]["sha256"] == result["cog"]["sha256"]
    assert result["cog"]["sha256"] == staged_sha256(source, window, options, tmp_path)
    written = tmp_path / "written.tif"
    written.write_bytes(storage.download_range(target.container, target.blob))
    with rasterio.open(source) as src, rasterio.open(written) as out:
        read = rasterio.windows.Window(window.col_off, window.row_off, window.width, window.height)
        if options.compression not in LOSSY_COMPRESSIONS:
            np.testing.assert_array_equal(out.read(), src.read(window=read))
        assert out.transform == src.window_transform(read)


def test_a_source_written_during_the_conversion_is_refused(storage: BlobStorage, run_id: str, tmp_path: Path) -> None:
    source = rasters.one_pixel(tmp_path / "one.tif")
    blob = f"direct-{run_id}/replaced.tif"
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    etag = storage.properties("bronze", blob).etag
    check_source_unchanged(storage, "bronze", blob, etag)  # unchanged: nothing to say
    storage.upload_file("bronze", blob, source, content_type="image/tiff")  # the same bytes, a new version
    with pytest.raises(PermanentTaskError, match="changed while it was converted"):
        check_source_unchanged(storage, "bronze", blob, etag)
