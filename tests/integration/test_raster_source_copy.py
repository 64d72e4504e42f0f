"""A cog task whose window is the whole source converts a local copy of the blob (parallel ranged
GETs) and writes the same COG, byte for byte, as staging the window; a window that must be
rewritten is staged from that copy; a part of a source is staged from the blob as before; a blob
written while it was copied commits nothing."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from repositories.blob_download import download_to_file, part_spans
from repositories.blob_storage import BlobStorage
from schemas.errors import PermanentTaskError
from services.raster.cog import CogOptions, cog_problems
from services.raster.convert import copies_whole_source, copy_source
from services.raster.inspect import inspect_dataset
from services.raster.pipeline import BlobRef, convert_tile
from services.raster.tiling import TileWindow
from tests.integration.test_raster_direct_read import rgb_with_nodata
from tests.support import rasters

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def storage(azurite_connection_string: str) -> BlobStorage:
    blobs = BlobStorage(azurite_connection_string)
    blobs.ensure_container("bronze")
    blobs.ensure_container("silver")
    return blobs


def uploaded(storage: BlobStorage, source: Path) -> BlobRef:
    blob = f"copy-{secrets.token_hex(4)}/{source.name}"
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    return BlobRef("bronze", blob)


@pytest.mark.parametrize(
    ("make", "window", "options", "source_read", "staged_because"),
    [
        (rasters.float32_nodata_nan, None, CogOptions(), "local copy", None),
        (rasters.paletted, None, CogOptions(overview_resampling="mode"), "local copy", None),
        (rasters.uint8_rgb, None, CogOptions(compression="jpeg"), "local copy", None),
        (rgb_with_nodata, None, CogOptions(compression="webp"), "staged", "nodata becomes an internal mask"),
        (rasters.no_crs, None, CogOptions(), "staged", "the CRS is assumed"),
        (rasters.large_for_tiling, TileWindow(1, 1, 512, 512, 788, 588), CogOptions(), "staged", "staged"),
    ],
    ids=["float_nodata", "paletted", "jpeg", "lossy_nodata_staged_from_copy", "assumed_crs", "part_staged"],
)
def test_a_whole_source_is_converted_from_its_copy_into_the_staged_cog_byte_for_byte(
    storage: BlobStorage,
    tmp_path: Path,
    make: Callable[[Path], Path],
    window: TileWindow | None,
    options: CogOptions,
    source_read: str,
    staged_because: str | None,
) -> None:
    source = make(tmp_path / "source.tif")
    ref = uploaded(storage, source)
    with rasterio.open(source) as dataset:
        metadata = inspect_dataset(dataset, assume_crs="EPSG:32633" if dataset.crs is None else None)
    window = window or TileWindow(0, 0, 0, 0, metadata.width, metadata.height)
    slots = threading.Semaphore(1)
    staged = convert_tile(storage, ref, metadata, window, BlobRef("silver", f"{ref.blob}-staged.tif"), options,
                          conversion_slots=slots)  # fmt: skip
    target = BlobRef("silver", f"{ref.blob}-copied.tif")
    copied = convert_tile(storage, ref, metadata, window, target, options, conversion_slots=slots,
                          copy_whole_source=True)  # fmt: skip
    assert (copied["source_read"], copied["staged_because"]) == (source_read, staged_because)
    assert staged["source_read"] == "staged"
    assert copied["cog"]["sha256"] == staged["cog"]["sha256"]
    written = tmp_path / "written.tif"
    written.write_bytes(storage.download_range(target.container, target.blob))
    assert cog_problems(written) == []
    with rasterio.open(source) as src, rasterio.open(written) as out:
        read = Window(window.col_off, window.row_off, window.width, window.height)
        if options.compression not in ("jpeg", "webp"):
            np.testing.assert_array_equal(out.read(), src.read(window=read))
        assert out.transform == src.window_transform(read)
        assert out.crs == metadata.crs


def test_only_a_whole_unwarped_source_not_much_bigger_than_its_pixels_is_copied(tmp_path: Path) -> None:
    with rasterio.open(rasters.uint16_multiband(tmp_path / "m.tif")) as dataset:
        metadata = inspect_dataset(dataset)
    whole = TileWindow(0, 0, 0, 0, metadata.width, metadata.height)
    pixel_bytes = metadata.width * metadata.height * metadata.count * 2
    assert copies_whole_source(metadata, whole, pixel_bytes)
    assert not copies_whole_source(metadata, whole, pixel_bytes + 2 * 1024 * 1024)  # e.g. with overviews
    assert not copies_whole_source(metadata, TileWindow(0, 0, 0, 0, metadata.width - 1, metadata.height), 1)
    assert not copies_whole_source(metadata, TileWindow(0, 1, 1, 0, metadata.width, metadata.height), 1)


def test_a_blob_is_downloaded_in_parallel_parts_byte_for_byte(storage: BlobStorage, tmp_path: Path) -> None:
    data = np.random.default_rng(7).integers(0, 256, 10_007, dtype=np.uint8).tobytes()
    storage.upload_bytes("bronze", "copy-parts/blob.bin", data, content_type="application/octet-stream")
    assert part_spans(10_007, 4_000) == [(0, 4_000), (4_000, 4_000), (8_000, 2_007)]
    assert part_spans(0, 4_000) == []
    for part_bytes, at_once in ((1_000, 3), (4_000, 2), (1 << 20, 4)):
        copy = tmp_path / f"copy-{part_bytes}.bin"
        written = download_to_file(
            storage, "bronze", "copy-parts/blob.bin", copy, size=len(data), part_bytes=part_bytes, parts_at_once=at_once
        )
        assert written == len(data) and copy.read_bytes() == data
    with pytest.raises(OSError, match="expected"):  # the blob is shorter than its stated size
        download_to_file(storage, "bronze", "copy-parts/blob.bin", tmp_path / "long.bin", size=len(data) + 5)


def test_a_blob_written_while_it_was_copied_is_refused(storage: BlobStorage, tmp_path: Path) -> None:
    ref = uploaded(storage, rasters.one_pixel(tmp_path / "one.tif"))
    before = storage.properties(ref.container, ref.blob)
    copy_source(storage, ref.container, ref.blob, tmp_path / "a.tif", size=before.size, etag=before.etag)
    storage.upload_file(ref.container, ref.blob, tmp_path / "one.tif", content_type="image/tiff")  # a new version
    with pytest.raises(PermanentTaskError, match="changed while it was converted"):
        copy_source(storage, ref.container, ref.blob, tmp_path / "b.tif", size=before.size, etag=before.etag)
