"""Cheaper preparation of many STAC items for pgstac's COPY, with pypgstac's own formatting.

``gc_paused``: Python's cyclic garbage collector off while a chunk's documents are built. Parsed
JSON holds no reference cycles, yet with some 30 containers per item the collector's passes over
the growing heap cost several times the parsing and formatting themselves (bench/README.md).

``preparing_items``: one chunk prepared at a time per process, the collector paused.

``format_items``: pypgstac's ``Loader.format_item`` of each item, with the geometries encoded in
one vectorised GEOS call (shapely) instead of plpygis item by item in pure Python, which is about
two thirds of ``format_item``'s time.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import orjson
import shapely

if TYPE_CHECKING:
    from pypgstac.load import Loader

GEOJSON_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)
WGS84 = 4326


class _GcPause:
    """Nestable across threads: the collector goes back on when the last pause ends, if it was on."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._was_enabled = False

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if self._depth == 0:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0 and self._was_enabled:
                    gc.enable()


gc_paused = _GcPause()

# One chunk's items prepared at a time per process: the work is CPU-bound Python, which the GIL
# runs one thread at a time anyway, so concurrent chunks would only all be ready late together;
# one after the other, the first is ready to COPY (database work) while the next is prepared.
_preparation_slot = threading.Lock()


@contextmanager
def preparing_items() -> Iterator[None]:
    """The process's item preparation slot (reading, parsing, formatting a chunk), with the cyclic
    garbage collector paused."""
    with _preparation_slot, gc_paused():
        yield


def ewkb_hex(geometries: list[Any]) -> list[str | None] | None:
    """The hex EWKB (SRID 4326, as pypgstac writes it) of each GeoJSON geometry, None staying None.
    None when any geometry is not a plain GeoJSON geometry GEOS reads: the caller then takes
    pypgstac's own path, and its error for a bad geometry."""
    present = [i for i, geometry in enumerate(geometries) if geometry is not None]
    for i in present:
        geometry = geometries[i]
        if not isinstance(geometry, Mapping) or geometry.get("type") not in GEOJSON_TYPES:
            return None
    try:
        parsed = shapely.from_geojson([orjson.dumps(geometries[i]) for i in present])
        encoded = shapely.to_wkb(shapely.set_srid(parsed, WGS84), hex=True, include_srid=True)
    except (shapely.errors.GEOSException, ValueError, TypeError, orjson.JSONEncodeError):
        return None
    out: list[str | None] = [None] * len(geometries)
    for i, value in zip(present, encoded, strict=True):
        out[i] = str(value).lower()
    return out


def format_items(loader: Loader, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``loader.format_item`` of each item. Each item is formatted without its geometry (a column
    of its own, never part of the stored content), which then gets the batch's EWKB."""
    encoded = ewkb_hex([item.get("geometry") for item in items])
    if encoded is None:
        return [loader.format_item(item) for item in items]
    formatted = []
    for item, geometry in zip(items, encoded, strict=True):
        out = loader.format_item({**item, "geometry": None})
        out["geometry"] = geometry
        formatted.append(out)
    return formatted
