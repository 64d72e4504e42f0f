"""How a source is cut into tiles so that converting each tile stays inside a task's memory budget.

The estimate of one tile task's peak is deliberately conservative::

    worker baseline                   (interpreter, GDAL, SDKs: measured, a setting)
  + GDAL block cache                  (GDAL_CACHEMAX, set explicitly from the budget)
  + read strip                        (one 512-row strip of the tile, the largest array in Python)
  + upload buffers                    (blocks in flight)
  + the whole tile, uncompressed      (temporary storage: the staged window, or the COG driver's
                                       temporary overview file and output when it reads directly)
  + warp buffer, warped sources only  (GDAL's warper: see ``warp_buffer_bytes``)

The pipeline streams (see services/raster/cog.py and convert.py): its measured RSS stays near
baseline + cache. The tile is counted in full anyway because temporary storage on a Functions
instance may be memory-backed, where its pages are charged to the instance like RSS is. The tile
grid is aligned to the 512-pixel COG block size and balanced, so tiles differ by at most one block.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

COG_BLOCK_SIZE = 512
MIB = 1024 * 1024
# GDAL's default WarpMemoryLimit (GDALWarpOptions.dfWarpMemoryLimit 0 means 64 MiB), which the
# warped VRTs of services/raster/warp.py keep.
WARP_MEMORY_LIMIT_BYTES = 64 * MIB
WarpScale = tuple[float, float]


def warp_scale_of(warp: Mapping[str, Any] | None) -> WarpScale | None:
    """The scale of a warped source (its metadata's ``warp`` record, services/raster/warp.py) for
    ``plan_tiles(warp_scale=…)`` / ``TaskMemoryModel.tile_peak_bytes``; None for an unwarped source.
    A warp record without a scale counts as scale 1 (the warper's buffer is still there)."""
    if not warp:
        return None
    scale = warp.get("scale") or (1.0, 1.0)
    return (float(scale[0]), float(scale[1]))


class TilingError(ValueError):
    """The budget cannot hold even one block, or a requested tile size does not fit it."""


@dataclass(frozen=True)
class TileWindow:
    row: int
    col: int
    col_off: int
    row_off: int
    width: int
    height: int

    @property
    def key(self) -> str:
        return f"tile_r{self.row}_c{self.col}"

    def to_dict(self) -> dict[str, int]:
        return {
            "row": self.row,
            "col": self.col,
            "col_off": self.col_off,
            "row_off": self.row_off,
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> TileWindow:
        return cls(**{name: int(data[name]) for name in ("row", "col", "col_off", "row_off", "width", "height")})


@dataclass(frozen=True)
class TaskMemoryModel:
    """The parts of one tile task's peak memory (see the module docstring)."""

    budget_bytes: int
    worker_baseline_bytes: int
    upload_buffer_bytes: int = 64 * MIB
    warp_memory_limit_bytes: int = WARP_MEMORY_LIMIT_BYTES

    @property
    def gdal_cache_bytes(self) -> int:
        """GDAL_CACHEMAX: an eighth of the budget, between 16 and 256 MiB."""
        return min(256 * MIB, max(16 * MIB, self.budget_bytes // 8))

    def warp_buffer_bytes(self, width: int, height: int, bands: int, itemsize: int, scale: WarpScale) -> int:
        """What GDAL's warper holds while a strip of a warped tile is read: the strip's destination
        buffer (the bands in the working type, the data type here, plus a 4-byte density per pixel
        for the alpha band the warp may add) and the source window it warps from (the strip over
        ``scale``, the warp's destination pixels per source pixel, services/raster/warp.py; never
        taken smaller than the strip), at most WarpMemoryLimit (GDAL cuts a larger request into
        chunks). Warped blocks themselves sit in the block cache, counted already.
        Measured: a 7554x4464 float32 warp (scale 1.23 x 0.73) staged in 512-row strips peaked 12 MiB
        above the same window read unwarped; this estimate gives it the whole 64 MiB."""
        destination = width * min(height, COG_BLOCK_SIZE) * (bands * itemsize + 4)
        source = destination / max(min(scale[0], 1.0) * min(scale[1], 1.0), 1e-9)
        return min(self.warp_memory_limit_bytes, math.ceil(destination + source))

    def tile_peak_bytes(
        self, width: int, height: int, bands: int, itemsize: int, *, warp_scale: WarpScale | None = None
    ) -> int:
        """The estimate for a tile (module docstring); ``warp_scale`` for a warped source (its
        metadata's ``warp["scale"]``) adds the warper's buffer and the alpha band's strip."""
        pixel_bytes = bands * itemsize
        strip = width * min(height, COG_BLOCK_SIZE) * pixel_bytes
        warp = 0
        if warp_scale is not None:
            strip += width * min(height, COG_BLOCK_SIZE) * itemsize  # the alpha band read as the mask
            warp = self.warp_buffer_bytes(width, height, bands, itemsize, warp_scale)
        return (
            self.worker_baseline_bytes
            + self.gdal_cache_bytes
            + self.upload_buffer_bytes
            + strip
            + width * height * pixel_bytes
            + warp
        )

    def fits(self, width: int, height: int, bands: int, itemsize: int, *, warp_scale: WarpScale | None = None) -> bool:
        return self.tile_peak_bytes(width, height, bands, itemsize, warp_scale=warp_scale) <= self.budget_bytes


def _balanced_sizes(total: int, parts: int) -> list[int]:
    """Split ``total`` pixels into ``parts`` runs that are whole blocks except the last."""
    blocks = math.ceil(total / COG_BLOCK_SIZE)
    base, extra = divmod(blocks, parts)
    sizes = [(base + (1 if i < extra else 0)) * COG_BLOCK_SIZE for i in range(parts)]
    sizes[-1] -= sum(sizes) - total
    return sizes


def grid(width: int, height: int, tile_side: int) -> list[TileWindow]:
    """A balanced grid of windows at most ``tile_side`` (a multiple of 512) on a side, row by row."""
    if tile_side <= 0 or tile_side % COG_BLOCK_SIZE:
        raise TilingError(f"tile side {tile_side} must be a positive multiple of {COG_BLOCK_SIZE}")
    col_sizes = _balanced_sizes(width, math.ceil(width / tile_side))
    row_sizes = _balanced_sizes(height, math.ceil(height / tile_side))
    tiles = []
    row_off = 0
    for row, tile_height in enumerate(row_sizes):
        col_off = 0
        for col, tile_width in enumerate(col_sizes):
            tiles.append(TileWindow(row, col, col_off, row_off, tile_width, tile_height))
            col_off += tile_width
        row_off += tile_height
    return tiles


def largest_fitting_side(
    model: TaskMemoryModel, bands: int, itemsize: int, *, warp_scale: WarpScale | None = None
) -> int:
    """The largest square tile side (a multiple of 512) whose task fits the budget."""
    fits = functools.partial(model.fits, warp_scale=warp_scale)
    if not fits(COG_BLOCK_SIZE, COG_BLOCK_SIZE, bands, itemsize):
        needed = model.tile_peak_bytes(COG_BLOCK_SIZE, COG_BLOCK_SIZE, bands, itemsize, warp_scale=warp_scale)
        raise TilingError(
            f"the per-task memory budget of {model.budget_bytes // MIB} MiB cannot hold one "
            f"{COG_BLOCK_SIZE}x{COG_BLOCK_SIZE} block of {bands} band(s) (needs {math.ceil(needed / MIB)} MiB)"
        )
    low, high = 1, 2
    while fits(high * COG_BLOCK_SIZE, high * COG_BLOCK_SIZE, bands, itemsize):
        low, high = high, high * 2
    while high - low > 1:  # low fits, high does not
        middle = (low + high) // 2
        if fits(middle * COG_BLOCK_SIZE, middle * COG_BLOCK_SIZE, bands, itemsize):
            low = middle
        else:
            high = middle
    return low * COG_BLOCK_SIZE


def tile_count(width: int, height: int, tile_side: int) -> int:
    """How many tiles ``grid`` makes, without making them."""
    return math.ceil(width / tile_side) * math.ceil(height / tile_side)


def plan_tiles(
    width: int,
    height: int,
    bands: int,
    itemsize: int,
    model: TaskMemoryModel,
    *,
    tile_side: int | None = None,
    max_tiles: int | None = None,
    warp_scale: WarpScale | None = None,
) -> list[TileWindow]:
    """One window when the whole source fits the budget, else a grid of windows that each fit.

    ``tile_side`` overrides the computed size; it must still fit the budget. ``max_tiles`` (the
    MAX_TASKS_PER_STAGE setting) bounds the grid: more tiles raise ``TilingError`` before any is made.
    ``warp_scale`` (a warped source's ``warp["scale"]``) counts GDAL's warp buffer too.
    """
    fits = functools.partial(model.fits, warp_scale=warp_scale)
    if tile_side is not None:
        side_w, side_h = min(tile_side, width), min(tile_side, height)
        if not fits(side_w, side_h, bands, itemsize):
            needed = model.tile_peak_bytes(side_w, side_h, bands, itemsize, warp_scale=warp_scale)
            raise TilingError(
                f"tile_size {tile_side} needs about {math.ceil(needed / MIB)} MiB per task, over the "
                f"per-task memory budget of {model.budget_bytes // MIB} MiB"
            )
        count = tile_count(width, height, tile_side)
        if max_tiles is not None and count > max_tiles:
            raise TilingError(
                f"tile_size {tile_side} would make {count:,} tiles of this {width}x{height} raster; the limit is "
                f"{max_tiles:,} (MAX_TASKS_PER_STAGE): raise tile_size"
            )
        return grid(width, height, tile_side)
    if fits(width, height, bands, itemsize):
        return [TileWindow(0, 0, 0, 0, width, height)]
    side = largest_fitting_side(model, bands, itemsize, warp_scale=warp_scale)
    count = tile_count(width, height, side)
    if max_tiles is not None and count > max_tiles:
        raise TilingError(
            f"this {width}x{height} raster would make {count:,} tiles of {side} px (the largest that fit the "
            f"per-task memory budget of {model.budget_bytes // MIB} MiB); the limit is {max_tiles:,} "
            "(MAX_TASKS_PER_STAGE): raise RASTER_TASK_MEMORY_BUDGET_BYTES"
        )
    return grid(width, height, side)
