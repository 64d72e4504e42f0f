"""What one listed blob is: its kind, and for a GeoTIFF its header read in place through /vsiaz/.

Rasters are recognised by extension (.tif/.tiff) or by the TIFF magic bytes (a 4-byte range read
for other names). A raster is opened with the GTiff driver only, its header read and its first and
last block decoded; ``rio_cogeo.cog_validate`` says whether it is already a Cloud-Optimized
GeoTIFF. A file that cannot be read is recorded with the reason, never raised: only transient
storage errors propagate, so the chunk task is retried.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from rasterio.errors import RasterioError
from rio_cogeo.cogeo import cog_validate

from repositories.blob_storage import BlobStorage
from schemas.errors import PermanentTaskError
from services.raster.inspect import crs_code, inspect_dataset, tiff_truncation_problem
from services.raster.pipeline import check_decodes, gdal_error, open_raster

RASTER_EXTENSIONS = frozenset({".tif", ".tiff"})
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
KIND_RASTER, KIND_OTHER, KIND_UNREADABLE = "raster", "other", "unreadable"
MAX_COG_ERRORS = 5


def extension_of(name: str) -> str:
    """Lower-case extension with the dot ('.tif'), or '' when the name has none."""
    return PurePosixPath(name).suffix.lower()


def looks_like_raster(storage: BlobStorage, container: str, blob: dict[str, Any]) -> bool:
    if extension_of(blob["name"]) in RASTER_EXTENSIONS:
        return True
    if int(blob["size"]) < len(TIFF_MAGIC[0]):
        return False
    return storage.download_range(container, blob["name"], 0, len(TIFF_MAGIC[0])) in TIFF_MAGIC


def raster_header(storage: BlobStorage, container: str, blob: dict[str, Any], *, full_metadata: bool) -> dict[str, Any]:
    """The header of a GeoTIFF read in place; raises PermanentTaskError subclasses for bad files."""
    path = storage.vsiaz_path(container, blob["name"])
    with storage.gdal_env(), open_raster(path) as dataset:
        try:
            problem = tiff_truncation_problem(dataset, int(blob["size"]))
            if problem:
                raise PermanentTaskError(problem)
            check_decodes(dataset)
            valid, errors, _warnings = cog_validate(path, quiet=True)
        except RasterioError as exc:
            raise gdal_error(exc, path) from exc
        header: dict[str, Any] = {
            "width": dataset.width,
            "height": dataset.height,
            "bands": dataset.count,
            "dtype": dataset.dtypes[0],
            "crs": (crs_code(dataset.crs) or dataset.crs.to_wkt()) if dataset.crs else None,
            "bounds": list(dataset.bounds),
            "compression": dataset.compression.name.lower() if dataset.compression else None,
            "is_cog": bool(valid),
            "cog_errors": [] if valid else list(errors or ["not a valid COG"])[:MAX_COG_ERRORS],
        }
        if full_metadata:
            try:
                header["metadata"] = inspect_dataset(dataset).to_dict()
            except PermanentTaskError as exc:
                header["metadata_error"] = str(exc)
        return header


def probe_blob(
    storage: BlobStorage, container: str, blob: dict[str, Any], *, full_metadata: bool = False
) -> dict[str, Any]:
    """The inventory entry of one listed blob (see the module docstring)."""
    entry: dict[str, Any] = {**blob, "extension": extension_of(blob["name"]), "kind": KIND_OTHER}
    try:
        if not looks_like_raster(storage, container, blob):
            return entry
        entry["raster"] = raster_header(storage, container, blob, full_metadata=full_metadata)
        entry["kind"] = KIND_RASTER
    except PermanentTaskError as exc:  # corrupt, truncated, not a TIFF, vanished, access denied
        entry["kind"] = KIND_UNREADABLE
        entry["error"] = str(exc)
    return entry
