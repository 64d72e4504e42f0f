"""Tile planning: one tile when the source fits the budget, else a balanced, block-aligned grid."""

from __future__ import annotations

import pytest

from services.raster.tiling import (
    COG_BLOCK_SIZE,
    MIB,
    TaskMemoryModel,
    TileWindow,
    TilingError,
    grid,
    largest_fitting_side,
    plan_tiles,
)

GIB = 1024 * MIB


def model(budget: int, baseline: int = 320 * MIB) -> TaskMemoryModel:
    return TaskMemoryModel(budget_bytes=budget, worker_baseline_bytes=baseline)


def covered_exactly_once(tiles: list[TileWindow], width: int, height: int) -> bool:
    cells = [
        (r, c)
        for t in tiles
        for r in range(t.row_off, t.row_off + t.height, 64)
        for c in range(t.col_off, t.col_off + t.width, 64)
    ]
    area = sum(t.width * t.height for t in tiles)
    return area == width * height and len(set(cells)) == len(cells)


def test_a_source_that_fits_is_one_tile() -> None:
    tiles = plan_tiles(6144, 6144, 1, 4, model(GIB))  # 144 MiB float32
    assert tiles == [TileWindow(0, 0, 0, 0, 6144, 6144)]
    assert tiles[0].key == "tile_r0_c0"


def test_a_large_source_becomes_a_balanced_block_aligned_grid_that_fits() -> None:
    memory = model(GIB)
    width, height = 28_672, 28_672  # 3.06 GiB float32
    tiles = plan_tiles(width, height, 1, 4, memory)
    assert len(tiles) > 1
    assert covered_exactly_once(tiles, width, height)
    assert all(memory.fits(t.width, t.height, 1, 4) for t in tiles)
    assert all(t.col_off % COG_BLOCK_SIZE == 0 and t.row_off % COG_BLOCK_SIZE == 0 for t in tiles)
    widths = sorted({t.width for t in tiles})
    assert widths[-1] - widths[0] <= COG_BLOCK_SIZE  # balanced: no thin sliver column
    assert {t.key for t in tiles} == {f"tile_r{t.row}_c{t.col}" for t in tiles}
    assert len({t.key for t in tiles}) == len(tiles)


def test_grid_edges_take_the_remainder() -> None:
    tiles = grid(1300, 1100, 1024)
    assert [(t.key, t.width, t.height) for t in tiles] == [
        ("tile_r0_c0", 1024, 1024),
        ("tile_r0_c1", 276, 1024),
        ("tile_r1_c0", 1024, 76),
        ("tile_r1_c1", 276, 76),
    ]
    assert covered_exactly_once(tiles, 1300, 1100)


def test_largest_fitting_side_is_the_largest_multiple_of_512_that_fits() -> None:
    memory = model(GIB)
    side = largest_fitting_side(memory, 3, 2)
    assert side % COG_BLOCK_SIZE == 0
    assert memory.fits(side, side, 3, 2)
    assert not memory.fits(side + COG_BLOCK_SIZE, side + COG_BLOCK_SIZE, 3, 2)


def test_the_estimate_counts_baseline_cache_buffers_strip_and_tile() -> None:
    memory = model(GIB, baseline=300 * MIB)
    assert memory.gdal_cache_bytes == 128 * MIB
    assert memory.tile_peak_bytes(1024, 1024, 1, 4) == 300 * MIB + 128 * MIB + 64 * MIB + 2 * MIB + 4 * MIB


def test_tile_size_override_is_used_when_it_fits_and_refused_when_it_does_not() -> None:
    tiles = plan_tiles(2000, 1000, 1, 1, model(GIB), tile_side=512)
    assert len(tiles) == 4 * 2
    with pytest.raises(TilingError, match=r"tile_size 16384 needs about .* over the per-task memory budget"):
        plan_tiles(40_000, 40_000, 4, 4, model(GIB), tile_side=16_384)
    with pytest.raises(TilingError, match="multiple of 512"):
        grid(100, 100, 300)


def test_a_budget_below_one_block_is_refused_with_the_numbers() -> None:
    with pytest.raises(TilingError, match=r"budget of 320 MiB cannot hold one 512x512 block"):
        plan_tiles(10_000, 10_000, 1, 4, model(320 * MIB))


def test_tile_windows_round_trip_through_json() -> None:
    tile = TileWindow(1, 2, 1024, 512, 300, 200)
    assert TileWindow.from_dict(tile.to_dict()) == tile
