"""MAX_TASKS_PER_STAGE: tile and chunk counts are checked before any task (or tile) is made."""

from __future__ import annotations

import time

import pytest

from schemas.errors import PermanentTaskError
from schemas.settings import DEFAULT_MAX_TASKS_PER_STAGE, Settings
from services.inventory.chunks import chunk_keys
from services.raster.tiling import MIB, TaskMemoryModel, TilingError, plan_tiles, tile_count

MODEL = TaskMemoryModel(budget_bytes=1024 * MIB, worker_baseline_bytes=320 * MIB)


def test_the_setting_defaults_to_ten_thousand() -> None:
    settings = Settings.model_validate({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert settings.max_tasks_per_stage == DEFAULT_MAX_TASKS_PER_STAGE == 10_000
    assert Settings.model_validate({"AzureWebJobsStorage": "x", "MAX_TASKS_PER_STAGE": "50"}).max_tasks_per_stage == 50


def test_a_huge_sparse_raster_at_tile_size_512_is_refused_without_making_the_tiles() -> None:
    started = time.monotonic()
    with pytest.raises(TilingError) as caught:
        plan_tiles(1_000_000, 1_000_000, 1, 1, MODEL, tile_side=512, max_tiles=10_000)
    assert time.monotonic() - started < 0.5  # 3.8 million windows were never built
    assert str(caught.value) == (
        "tile_size 512 would make 3,818,116 tiles of this 1000000x1000000 raster; "
        "the limit is 10,000 (MAX_TASKS_PER_STAGE): raise tile_size"
    )


def test_the_default_tiling_is_capped_too_and_names_the_budget() -> None:
    with pytest.raises(TilingError, match=r"the limit is 100 .*raise RASTER_TASK_MEMORY_BUDGET_BYTES"):
        plan_tiles(1_000_000, 1_000_000, 1, 1, MODEL, max_tiles=100)


def test_at_the_limit_the_plan_is_made() -> None:
    assert tile_count(5120, 1024, 512) == 20
    assert len(plan_tiles(5120, 1024, 1, 1, MODEL, tile_side=512, max_tiles=20)) == 20


def test_chunk_tasks_are_capped() -> None:
    assert chunk_keys(3, 1000, 3) == ["chunk_00000", "chunk_00001", "chunk_00002"]
    with pytest.raises(PermanentTaskError, match=r"more than 2 chunks of chunk_size 1,000.*raise chunk_size"):
        chunk_keys(3, 1000, 2)
