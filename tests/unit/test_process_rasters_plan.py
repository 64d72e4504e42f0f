"""process_rasters' batching plan and parameters (pure functions; the job itself: the integration test)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from controllers.process_raster_parameters import ProcessRasterParameters
from controllers.process_rasters import ProcessRastersController
from controllers.process_rasters_plan import (
    FileRef,
    PlannedFile,
    ProcessRastersParameters,
    batch_bytes_limit,
    inspection_plan,
    plan_batches,
    plan_convert_tasks,
)
from services.engine import JobOutcome
from services.raster.pipeline import tile_blob
from services.raster.tiling import MIB, TaskMemoryModel


def files(*sizes: int) -> list[PlannedFile]:
    return [PlannedFile(FileRef("chunk_00000", i), size, 1) for i, size in enumerate(sizes)]


def test_batches_are_capped_by_count() -> None:
    batches = plan_batches(files(*[10] * 7), max_bytes=1000, max_files=3)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert [f.ref.index for b in batches for f in b] == list(range(7))  # listing order kept


def test_the_count_cap_is_evened_out() -> None:
    assert [len(b) for b in plan_batches(files(*[10] * 40), max_bytes=10**9, max_files=32)] == [20, 20]
    assert [len(b) for b in plan_batches(files(*[10] * 65), max_bytes=10**9, max_files=32)] == [22, 22, 21]


def test_a_few_files_still_make_several_batches() -> None:
    assert [len(b) for b in plan_batches(files(*[10] * 12), max_bytes=10**9, max_files=32, min_batches=4)] == [3] * 4
    assert [len(b) for b in plan_batches(files(10, 10), max_bytes=10**9, max_files=32, min_batches=4)] == [1, 1]


def test_batches_are_capped_by_pixel_bytes() -> None:
    batches = plan_batches(files(40, 40, 30, 50, 10), max_bytes=100, max_files=10)
    assert [[f.pixel_bytes for f in b] for b in batches] == [[40, 40], [30, 50, 10]]


def test_a_file_bigger_than_the_byte_cap_is_a_batch_of_its_own() -> None:
    batches = plan_batches(files(10, 500, 10), max_bytes=100, max_files=10)
    assert [[f.pixel_bytes for f in b] for b in batches] == [[10], [500], [10]]


def test_no_files_no_batches() -> None:
    assert plan_batches([], max_bytes=100, max_files=10) == []


def test_the_byte_cap_is_what_one_tile_task_may_stage() -> None:
    memory = TaskMemoryModel(budget_bytes=1024 * MIB, worker_baseline_bytes=320 * MIB, upload_buffer_bytes=64 * MIB)
    assert batch_bytes_limit(memory) == (1024 - 320 - 128 - 64) * MIB
    assert batch_bytes_limit(TaskMemoryModel(budget_bytes=1, worker_baseline_bytes=10)) == 1


def record(name: str, tiles: int = 1, pixel_bytes: int = 100) -> dict[str, Any]:
    windows = [
        {"row": 0, "col": c, "col_off": c * 512, "row_off": 0, "width": 512, "height": 512} for c in range(tiles)
    ]
    return {"name": name, "metadata": {}, "pixel_bytes": pixel_bytes, "tiles": windows}


def test_the_plan_batches_whole_files_and_fans_out_tiles() -> None:
    chunk0 = [record("a"), {"name": "bad", "error": "not a TIFF"}, record("big", tiles=2), record("b")]
    chunk1 = [record("c"), record("d")]
    plans = [("chunk_00000", inspection_plan(chunk0)), ("chunk_00001", inspection_plan(chunk1))]
    assert plans[0][1] == {"whole": [[0, 100], [3, 100]], "tiled": [[2, record("big", 2)["tiles"]]]}
    tasks = plan_convert_tasks(plans, max_bytes=10_000, max_files=2, min_batches=1)
    assert [t.key for t in tasks] == [
        "batch_00000",
        "batch_00001",
        "file_00000_00002_tile_r0_c0",
        "file_00000_00002_tile_r0_c1",
    ]
    # Four whole files at two per task, in listing order across chunks.
    assert tasks[0].parameters() == {"files": [["chunk_00000", 0], ["chunk_00000", 3]]}
    assert tasks[1].parameters() == {"files": [["chunk_00001", 0], ["chunk_00001", 1]]}
    assert tasks[3].parameters() == {"files": [["chunk_00000", 2]], "window": record("big", 2)["tiles"][1]}
    # Fewer files than MIN_BATCHES (4): each still gets a task of its own.
    assert [t.key for t in plan_convert_tasks(plans, max_bytes=10_000, max_files=32)][:4] == [
        f"batch_{n:05d}" for n in range(4)
    ]


def test_parameters_reuse_process_rasters_options_and_forbid_extras() -> None:
    params = ProcessRastersParameters.model_validate({"prefix": "scenes/2020/", "compression": "zstd"})
    assert params.conversion_options == {"compression": "zstd"}
    with pytest.raises(ValidationError, match="blob_name"):
        ProcessRastersParameters.model_validate({"prefix": "x/", "blob_name": "a.tif"})
    with pytest.raises(ValidationError, match="prefix"):
        ProcessRastersParameters.model_validate({"prefix": "/abs"})
    with pytest.raises(ValidationError, match="warp"):
        ProcessRastersParameters.model_validate({"warp": "never", "web_optimized": True})


def test_suffix_defaults_to_tif_and_tiff_case_insensitively() -> None:
    default = ProcessRastersParameters()
    assert [default.wants(n) for n in ("a.tif", "b.TIFF", "c.tif.aux.xml", "d.txt")] == [True, True, False, False]
    assert ProcessRastersParameters(suffix=".TIF").wants("x.tif")
    assert not ProcessRastersParameters(suffix=".tif").wants("x.tiff")


def test_the_default_collection_id_depends_on_listing_and_options() -> None:
    ids = {
        ProcessRastersParameters(prefix="a/").resolved_collection_id,
        ProcessRastersParameters(prefix="b/").resolved_collection_id,
        ProcessRastersParameters(prefix="a/", suffix=".tiff").resolved_collection_id,
        ProcessRastersParameters(prefix="a/", compression="lzw").resolved_collection_id,
    }
    assert len(ids) == 4
    assert ProcessRastersParameters(prefix="landsat/2020/").resolved_collection_id.startswith("bronze-landsat-2020-")


def test_each_file_goes_where_process_raster_puts_it() -> None:
    bulk = ProcessRastersParameters(prefix="s/", compression="lzw", collection_id="scenes")
    single = ProcessRasterParameters(blob_name="s/a.tif", compression="lzw", collection_id="scenes")
    assert tile_blob("s/a.tif", "tile_r0_c0", bulk.output_key("s/a.tif")) == tile_blob(
        "s/a.tif", "tile_r0_c0", single.output_key
    )
    other = ProcessRastersParameters(prefix="s/", collection_id="scenes")  # other options: other paths
    assert other.output_key("s/a.tif") != bulk.output_key("s/a.tif")


def test_the_owner_is_the_listing_and_the_options() -> None:
    owner = ProcessRastersController.owner
    base = owner(ProcessRastersParameters(prefix="a/"))
    assert base.key == "process_rasters:bronze/a/::default"
    assert owner(ProcessRastersParameters(prefix="a/", chunk_size=7, max_files_per_task=2)).key == base.key
    assert owner(ProcessRastersParameters(prefix="a/", suffix=".tiff")).key != base.key
    assert owner(ProcessRastersParameters(prefix="a/", compression="lzw")).key != base.key


def test_finalize_without_a_catalog_fails_the_job() -> None:
    controller = object.__new__(ProcessRastersController)
    outcome = JobOutcome(results_by_stage={}, failed_by_stage={"catalog": {"catalog": "no file was converted"}})
    with pytest.raises(Exception, match="no file was converted"):
        controller.finalize(ProcessRastersParameters(), outcome)
