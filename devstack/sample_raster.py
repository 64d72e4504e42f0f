"""Generate realistic sample GeoTIFFs: smooth terrain-like surfaces from low-frequency functions plus
modest noise, written strip by strip (memory stays at one strip whatever the size).

Used by ``make run`` (the process_raster demo), the tests and bench/cog_benchmark.py. numpy and
rasterio only: importable without pytest.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

STRIP_ROWS = 512


def terrain_strip(
    row_off: int, rows: int, width: int, height: int, *, band: int = 0, seed: int = 0
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Elevation-like values (metres, about -200..1500) for ``rows`` rows starting at ``row_off``.

    A sum of a few low-frequency waves (ridges and valleys) and a little Gaussian noise; ``band``
    shifts the phases so bands of one raster differ but stay correlated, like spectral bands.
    """
    y = (np.arange(row_off, row_off + rows, dtype=np.float32)[:, None] + 0.5) / height
    x = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width
    phase = np.float32(0.7 * band)
    surface = (
        600.0 * np.sin(3.1 * x + phase) * np.cos(2.3 * y)
        + 280.0 * np.sin(9.0 * x + 5.0 * y + phase)
        + 90.0 * np.cos(23.0 * x * y + 2.0)
        + 35.0 * np.sin(47.0 * x - 31.0 * y)
        + 500.0
    )
    noise = np.random.default_rng([seed, band, row_off]).normal(0.0, 1.5, (rows, width))
    return (surface + noise).astype(np.float32)


def write_sample_geotiff(
    path: Path,
    *,
    width: int = 2048,
    height: int = 2048,
    bands: int = 1,
    dtype: str = "float32",
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500_000.0, 6_000_000.0),
    pixel_size: float = 10.0,
    nodata: float | None = -9999.0,
    compress: str = "deflate",
    seed: int = 0,
) -> Path:
    """Write a tiled GeoTIFF of terrain-like data. float32 keeps metres (a round "lake" in one
    corner is nodata); integer types scale each band to most of the type's range."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": bands,
        "dtype": dtype,
        "crs": crs,
        "transform": from_origin(origin[0], origin[1], pixel_size, pixel_size),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": compress,
        "predictor": 3 if dtype.startswith("float") else 2,
        "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS",
    }
    is_float = np.issubdtype(np.dtype(dtype), np.floating)
    top = float(np.iinfo(dtype).max) * 0.9 if not is_float else 0.0
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as dataset:
        for row_off in range(0, height, STRIP_ROWS):
            rows = min(STRIP_ROWS, height - row_off)
            strip = np.stack([terrain_strip(row_off, rows, width, height, band=b, seed=seed) for b in range(bands)])
            if is_float:
                if nodata is not None:
                    yy, xx = np.mgrid[row_off : row_off + rows, 0:width]
                    lake = (xx - width * 0.15) ** 2 + (yy - height * 0.15) ** 2 < (min(width, height) * 0.08) ** 2
                    strip[:, lake] = nodata
                data = strip.astype(dtype)
            else:
                data = np.clip((strip + 300.0) / 2000.0 * top, 0, top).astype(dtype)
            dataset.write(data, window=Window(0, row_off, width, rows))
    return path


DEMO_CONTAINER = "bronze"
DEMO_BLOB = "samples/terrain.tif"


def upload_demo_raster(storage_connection_string: str, *, size: int = 2048) -> dict[str, Any]:
    """Generate the demo GeoTIFF, upload it to bronze and return process_raster parameters for it.

    The parameters carry the current time as the STAC datetime, so each run is a new job (the API
    dedupes identical submissions) that rewrites the same outputs.
    """
    from repositories.blob_storage import BlobStorage  # the generator above needs no storage

    storage = BlobStorage(storage_connection_string)
    storage.ensure_container(DEMO_CONTAINER)
    with tempfile.TemporaryDirectory(prefix="geoetl-demo-") as work:
        sample = write_sample_geotiff(Path(work) / "terrain.tif", width=size, height=size)
        storage.upload_file(DEMO_CONTAINER, DEMO_BLOB, sample, content_type="image/tiff")
    return {
        "container": DEMO_CONTAINER,
        "blob_name": DEMO_BLOB,
        "datetime": datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
