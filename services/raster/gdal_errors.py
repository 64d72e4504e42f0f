"""What a GDAL/rasterio error means, decided from its text (and its chained causes) and errno.

GDAL reports everything as a ``RasterioError`` whose message is all there is to go on; the real
reason is often in a chained cause ("Write failed. See previous exception for details." caused by
"TIFFAppendToStrip:Write error ..."). In order:

1. the network or the storage service (curl/HTTP transport errors, 5xx, 429, timeouts) →
   ``StorageUnavailableError`` (transient);
2. this worker's own resources (local disk full, a failed local write, out of memory) →
   ``WorkerResourceError`` (transient);
3. 404 / 401 / 403 → ``BlobNotFoundError`` / ``BlobAccessDeniedError`` (permanent);
4. anything else: the file itself cannot be read → ``UnsupportedRasterError`` (permanent), its
   reason GDAL's own lines from the whole chain ("Read failed. See previous exception for
   details." says nothing; the decoder's "ZIPDecode:Decoding error at scanline 0" does), on one
   line of bounded length.
"""

from __future__ import annotations

import errno
import re

from schemas.errors import BlobAccessDeniedError, BlobNotFoundError, StorageUnavailableError, WorkerResourceError
from services.raster.inspect import UnsupportedRasterError

TRANSPORT_MESSAGES = re.compile(
    r"HTTP response code: (5\d\d|429|408)|timed out|timeout|Operation too slow|Could not resolve|Couldn't resolve|"
    r"Connection|Failed to connect|Could not connect|Couldn't connect|Empty reply from server|Recv failure|"
    r"Send failure|Failure when receiving data|transfer closed|partial file|SSL|CURL error",
    re.IGNORECASE,
)
RESOURCE_MESSAGES = re.compile(
    r"No space left on device|Disk full|Write failed|Write error|IO error writing|error writing|"
    r"Cannot allocate memory|Out of memory|Not enough memory|Quota exceeded",
    re.IGNORECASE,
)
RESOURCE_ERRNOS = frozenset({errno.ENOSPC, errno.ENOMEM, errno.EDQUOT, errno.EFBIG})


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the causes/contexts chained to it (GDAL's earlier errors), at most 10."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 10:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


_SEE_PREVIOUS = re.compile(r"\s*See previous exception for details\.?", re.IGNORECASE)
MAX_DETAIL_CHARS = 400


def gdal_detail(exc: BaseException, limit: int = MAX_DETAIL_CHARS) -> str:
    """GDAL's lines for ``exc`` and its chained causes, on one line: no "see previous exception"
    pointer, no line that another line already contains, at most ``limit`` characters."""
    lines: list[str] = []
    for error in _chain(exc):
        line = _SEE_PREVIOUS.sub("", _one_line(str(error), limit)).strip().rstrip(".")
        if line and line not in lines:
            lines.append(line)
    kept = [line for line in lines if not any(line != other and line in other for other in lines)]
    return _one_line("; ".join(kept), limit)


def gdal_error(exc: BaseException, path: str) -> Exception:
    """The geoetl error for a GDAL/rasterio error raised while reading ``path`` (or writing a local
    file from it); see the module docstring for the order."""
    chain = _chain(exc)
    message = _one_line(str(exc))
    everything = " | ".join(dict.fromkeys(_one_line(str(e)) for e in chain))  # GDAL repeats itself
    if TRANSPORT_MESSAGES.search(everything):
        return StorageUnavailableError(f"reading {path}: {everything}")
    if RESOURCE_MESSAGES.search(everything) or any(
        isinstance(e, OSError) and e.errno in RESOURCE_ERRNOS for e in chain
    ):
        return WorkerResourceError(f"out of local resources (temporary disk or memory) with {path}: {everything}")
    if "HTTP response code: 404" in message or "does not exist" in message:
        return BlobNotFoundError(f"{path} not found")
    if re.search(r"HTTP response code: 40[13]", message):
        return BlobAccessDeniedError(f"reading {path}: {message}")
    return UnsupportedRasterError(
        f"cannot be read as a GeoTIFF (corrupt, truncated or not a TIFF): {gdal_detail(exc) or message}"
    )
