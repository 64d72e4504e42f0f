"""The per-task memory model counts GDAL's warp buffer for warped sources (services/raster/tiling.py)."""

from __future__ import annotations

from services.raster.tiling import MIB, WARP_MEMORY_LIMIT_BYTES, TaskMemoryModel, plan_tiles, warp_scale_of

MODEL = TaskMemoryModel(budget_bytes=1024 * MIB, worker_baseline_bytes=320 * MIB)


def test_unwarped_estimates_are_unchanged() -> None:
    assert MODEL.tile_peak_bytes(1024, 1024, 1, 4) == (320 + 128 + 64 + 2 + 4) * MIB
    assert MODEL.tile_peak_bytes(1024, 1024, 1, 4, warp_scale=None) == MODEL.tile_peak_bytes(1024, 1024, 1, 4)


def test_a_warp_adds_the_warper_buffer_and_the_alpha_strip() -> None:
    # 1024 x 512 strip: destination 1024*512*(4+4) = 4 MiB, the source window as large (scale 1).
    assert MODEL.warp_buffer_bytes(1024, 1024, 1, 4, (1.0, 1.0)) == 8 * MIB
    assert MODEL.tile_peak_bytes(1024, 1024, 1, 4, warp_scale=(1.0, 1.0)) == (320 + 128 + 64 + 2 + 2 + 4 + 8) * MIB
    # Downsampling reads a larger source window; upsampling never counts less than the strip.
    assert MODEL.warp_buffer_bytes(1024, 1024, 1, 4, (0.5, 0.5)) == 4 * MIB + 16 * MIB
    assert MODEL.warp_buffer_bytes(1024, 1024, 1, 4, (3.0, 3.0)) == 8 * MIB
    # Never more than GDAL's WarpMemoryLimit: the warper cuts larger requests into chunks.
    assert MODEL.warp_buffer_bytes(20_000, 20_000, 3, 8, (0.1, 0.1)) == WARP_MEMORY_LIMIT_BYTES


def test_warped_tiles_are_planned_smaller_when_the_buffer_does_not_fit() -> None:
    side = 11_264  # the largest float32 side for a 1 GiB budget, unwarped (one tile)
    assert len(plan_tiles(side, side, 1, 4, MODEL)) == 1
    warped = plan_tiles(side, side, 1, 4, MODEL, warp_scale=(1.0, 1.0))
    assert len(warped) > 1
    assert all(MODEL.fits(t.width, t.height, 1, 4, warp_scale=(1.0, 1.0)) for t in warped)


def test_the_warp_scale_comes_from_the_metadata_warp_record() -> None:
    assert warp_scale_of(None) is None and warp_scale_of({}) is None  # not warped
    assert warp_scale_of({"reason": "rotated", "scale": [1.23, 0.73]}) == (1.23, 0.73)
    assert warp_scale_of({"reason": "gcps"}) == (1.0, 1.0)  # no scale recorded: the buffer is still counted
