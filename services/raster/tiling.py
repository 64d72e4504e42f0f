"""How a source is cut into tiles so that converting each tile stays inside a task's memory budget.

The estimate of one tile task's peak is deliberately conservative::

    worker baseline                   (interpreter, GDAL, SDKs: measured, a setting)
  + GDAL block cache                  (GDAL_CACHEMAX, set explicitly from the budget)
  + read strip                        (one 512-row strip of the tile, the largest array in Python)
  + upload buffers                    (blocks in flight)
  + the whole tile, uncompressed      (the staged window on temporary storage)

The pipeline streams (see services/raster/cog.py): its measured RSS stays near baseline + cache.
The staged window is counted in full anyway because temporary storage on a Functions instance may
be memory-backed, where its pages are charged to the instance like RSS is. The tile grid is
aligned to the 512-pixel COG block size and balanced, so tiles differ by at most one block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

COG_BLOCK_SIZE = 512
MIB = 1024 * 1024


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

    @property
    def gdal_cache_bytes(self) -> int:
        """GDAL_CACHEMAX: an eighth of the budget, between 16 and 256 MiB."""
        return min(256 * MIB, max(16 * MIB, self.budget_bytes // 8))

    def tile_peak_bytes(self, width: int, height: int, bands: int, itemsize: int) -> int:
        pixel_bytes = bands * itemsize
        strip = width * min(height, COG_BLOCK_SIZE) * pixel_bytes
        return (
            self.worker_baseline_bytes
            + self.gdal_cache_bytes
            + self.upload_buffer_bytes
            + strip
            + width * height * pixel_bytes
        )

    def fits(self, width: int, height: int, bands: int, itemsize: int) -> bool:
        return self.tile_peak_bytes(width, height, bands, itemsize) <= self.budget_bytes


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


def largest_fitting_side(model: TaskMemoryModel, bands: int, itemsize: int) -> int:
    """The largest square tile side (a multiple of 512) whose task fits the budget."""
    if not model.fits(COG_BLOCK_SIZE, COG_BLOCK_SIZE, bands, itemsize):
        needed = model.tile_peak_bytes(COG_BLOCK_SIZE, COG_BLOCK_SIZE, bands, itemsize)
        raise TilingError(
            f"the per-task memory budget of {model.budget_bytes // MIB} MiB cannot hold one "
            f"{COG_BLOCK_SIZE}x{COG_BLOCK_SIZE} block of {bands} band(s) (needs {math.ceil(needed / MIB)} MiB)"
        )
    low, high = 1, 2
    while model.fits(high * COG_BLOCK_SIZE, high * COG_BLOCK_SIZE, bands, itemsize):
        low, high = high, high * 2
    while high - low > 1:  # low fits, high does not
        middle = (low + high) // 2
        if model.fits(middle * COG_BLOCK_SIZE, middle * COG_BLOCK_SIZE, bands, itemsize):
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
) -> list[TileWindow]:
    """One window when the whole source fits the budget, else a grid of windows that each fit.

    ``tile_side`` overrides the computed size; it must still fit the budget. ``max_tiles`` (the
    MAX_TASKS_PER_STAGE setting) bounds the grid: more tiles raise ``TilingError`` before any is made.
    """
    if tile_side is not None:
        side_w, side_h = min(tile_side, width), min(tile_side, height)
        if not model.fits(side_w, side_h, bands, itemsize):
            needed = model.tile_peak_bytes(side_w, side_h, bands, itemsize)
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
    if model.fits(width, height, bands, itemsize):
        return [TileWindow(0, 0, 0, 0, width, height)]
    side = largest_fitting_side(model, bands, itemsize)
    count = tile_count(width, height, side)
    if max_tiles is not None and count > max_tiles:
        raise TilingError(
            f"this {width}x{height} raster would make {count:,} tiles of {side} px (the largest that fit the "
            f"per-task memory budget of {model.budget_bytes // MIB} MiB); the limit is {max_tiles:,} "
            "(MAX_TASKS_PER_STAGE): raise RASTER_TASK_MEMORY_BUDGET_BYTES"
        )
    return grid(width, height, side)
