"""process_raster parameters (what a 400 says) and the controller's fan-out and result."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from controllers.process_raster import ProcessRasterController, RasterJobOptions
from controllers.process_raster_parameters import ProcessRasterParameters, collection_id_for
from controllers.registry import default_registry
from repositories.blob_storage import BlobInfo, BlobStorage
from schemas.errors import BlobNotFoundError, ConflictError, PermanentTaskError
from schemas.settings import Settings
from services.engine.contract import JobOutcome
from services.engine.job_service import field_errors
from services.raster.tiling import MIB, TaskMemoryModel

CONNECTION = "UseDevelopmentStorage=true"


def controller(**settings: Any) -> ProcessRasterController:
    return ProcessRasterController.from_settings(
        Settings.model_validate({"AzureWebJobsStorage": CONNECTION, **settings}), BlobStorage(CONNECTION)
    )


def errors_of(raw: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ValidationError) as caught:
        controller().parse_parameters(raw)
    return {error["field"]: error["message"] for error in field_errors(caught.value)}


def test_defaults_and_derived_collection_id() -> None:
    params = controller().parse_parameters({"blob_name": "Surveys 2024/DEM_v2.tif"})
    assert (params.container, params.output_container, params.compression) == ("bronze", "silver", "deflate")
    assert params.collection_id == collection_id_for("Surveys 2024/DEM_v2.tif")
    assert params.collection_id.startswith("surveys-2024-dem_v2-")  # lossy slug: plus a hash of the name
    assert params.overview_resampling is None and params.tile_size is None and params.datetime is None


def test_default_containers_come_from_settings() -> None:
    params = controller(bronze_container="raw-in", silver_container="cog-out").parse_parameters({"blob_name": "a.tif"})
    assert (params.container, params.output_container) == ("raw-in", "cog-out")


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"blob_name": "../etc/passwd"}, "blob_name", "'..'"),
        ({"blob_name": "https://evil.example/x.tif"}, "blob_name", "not a URL"),
        ({"blob_name": "/abs/x.tif"}, "blob_name", "relative"),
        ({"blob_name": "a//b.tif"}, "blob_name", "empty"),
        ({"blob_name": "x" * 1025}, "blob_name", "1024"),
        ({"blob_name": "a.tif", "container": "Bronze"}, "container", "pattern"),
        ({"blob_name": "a.tif", "container": "ab"}, "container", "at least 3"),
        ({"blob_name": "a.tif", "output_container": "two--hyphens"}, "output_container", "pattern"),
        ({"blob_name": "a.tif", "compression": "lzma"}, "compression", "deflate"),
        ({"blob_name": "a.tif", "tile_size": 1000}, "tile_size", "multiple of 512"),
        ({"blob_name": "a.tif", "datetime": "2024-01-01T00:00:00"}, "datetime", "timezone"),
        ({"blob_name": "a.tif", "assume_crs": "EPSG:999999"}, "assume_crs", "not a CRS"),
        ({"blob_name": "a.tif", "collection_id": "../up"}, "collection_id", "no '..'"),
        ({"blob_name": "a.tif", "overview_resampling": "sinc"}, "overview_resampling", "nearest"),
        ({"blob_name": "a.tif", "extra": 1}, "extra", "not permitted"),
        ({}, "blob_name", "required"),
    ],
)
def test_bad_parameters_are_field_errors(raw: dict[str, Any], field: str, fragment: str) -> None:
    errors = errors_of(raw)
    assert field in errors and fragment in errors[field], errors


@pytest.mark.parametrize(
    ("blob", "pattern"),
    [
        ("a.tif", r"a"),  # a root-level <valid id>.tif keeps its stem
        ("Dir/Sub/Scene.TIFF", r"dir-sub-scene-[0-9a-f]{12}"),  # any other name: slug + hash of the name
        ("___.tif", r"raster-[0-9a-f]{12}"),
        ("x" * 300 + ".tif", r"x{115}-[0-9a-f]{12}"),
    ],
)
def test_collection_ids_from_blob_names(blob: str, pattern: str) -> None:
    # More cases, and the rule itself: tests/unit/test_collection_ids.py.
    assert re.fullmatch(pattern, collection_id_for(blob))


def plan_result(tiles: list[dict[str, int]]) -> dict[str, Any]:
    return {"metadata": {"dtype": "uint8"}, "item_datetime": "2024-01-01T00:00:00+00:00", "tiles": tiles}


def test_fan_out_validate_plan_tiles_and_one_catalog_task() -> None:
    job = controller()
    params = job.parse_parameters({"blob_name": "a.tif"})
    assert [(s.key, s.depends_on_predecessor) for s in job.create_tasks(1, params, {})] == [("source", False)]
    assert [(s.key, s.depends_on_predecessor) for s in job.create_tasks(2, params, {"source": {}})] == [
        ("source", True)
    ]
    tiles = [
        {"row": 0, "col": 0, "col_off": 0, "row_off": 0, "width": 512, "height": 100},
        {"row": 0, "col": 1, "col_off": 512, "row_off": 0, "width": 88, "height": 100},
    ]
    cog_tasks = job.create_tasks(3, params, {"source": plan_result(tiles)})
    assert [t.key for t in cog_tasks] == ["tile_r0_c0", "tile_r0_c1"]
    assert cog_tasks[1].parameters["window"]["col_off"] == 512
    assert cog_tasks[1].parameters["item_datetime"] == "2024-01-01T00:00:00+00:00"
    catalog = job.create_tasks(4, params, {"tile_r0_c1": {"n": 2}, "tile_r0_c0": {"n": 1}})
    assert [t.key for t in catalog] == ["catalog"]
    assert list(catalog[0].parameters["tiles"]) == ["tile_r0_c0", "tile_r0_c1"]


def test_finalize_lists_outputs_in_tile_order() -> None:
    job = controller()
    params = job.parse_parameters({"blob_name": "a.tif"})

    def cog(row: int, col: int) -> dict[str, Any]:
        blob = f"cogs/a/tile_r{row}_c{col}.tif"
        return {
            "cog": {"container": "silver", "blob": blob, "bytes": 1, "sha256": "x"},
            "window": {"row": row, "col": col},
        }

    outcome = JobOutcome(
        results_by_stage={
            "cog": {"tile_r1_c0": cog(1, 0), "tile_r0_c0": cog(0, 0)},
            "stac": {"catalog": {"collection": {"container": "silver", "blob": "stac/a/collection.json"}, "items": []}},
        },
        failed_by_stage={},
    )
    result = job.finalize(params, outcome)
    assert [c["blob"] for c in result["outputs"]["cogs"]] == ["cogs/a/tile_r0_c0.tif", "cogs/a/tile_r1_c0.tif"]
    assert result["outputs"]["stac_collection"] == {"container": "silver", "blob": "stac/a/collection.json"}


def test_registry_builds_process_raster_from_settings() -> None:
    registry = default_registry(Settings.model_validate({"AzureWebJobsStorage": CONNECTION}), BlobStorage(CONNECTION))
    assert [c.job_type for c in registry.all()] == ["hello_world", "process_raster"]
    schema = registry.get("process_raster").parameters_model.model_json_schema()  # type: ignore[union-attr]
    assert schema["required"] == ["blob_name"]


def test_the_memory_model_uses_the_settings_and_the_upload_buffers() -> None:
    storage = BlobStorage(CONNECTION, upload_block_bytes=4 * MIB, upload_concurrency=2)
    settings = Settings.model_validate(
        {"AzureWebJobsStorage": CONNECTION, "raster_task_memory_budget_bytes": 512 * MIB, "gdal_threads": 3}
    )
    options = RasterJobOptions.from_settings(settings, storage)
    assert options.memory == TaskMemoryModel(
        budget_bytes=512 * MIB, worker_baseline_bytes=320 * MIB, upload_buffer_bytes=8 * MIB
    )
    assert options.gdal_threads == 3


def test_parameters_model_keeps_jobs_inside_the_deployments_containers() -> None:
    model = controller().parameters_model
    assert issubclass(model, ProcessRasterParameters)
    assert errors_of({"blob_name": "a.tif", "container": "azure-webjobs-secrets"}) == {
        "container": "container 'azure-webjobs-secrets' is not readable by this deployment (allowed: bronze)"
    }
    assert set(errors_of({"blob_name": "a.tif", "output_container": "bronze"})) == {"output_container"}
    allowed = controller(input_containers="bronze,raw", output_containers="silver,gold")
    params = allowed.parse_parameters({"blob_name": "a.tif", "container": "raw", "output_container": "gold"})
    assert (params.container, params.output_container) == ("raw", "gold")


class VersionedStorage(BlobStorage):
    """Blob properties from a dict (name → etag, as the SDK gives it: quoted); nothing else is read."""

    def __init__(self, etags: dict[str, str]) -> None:
        super().__init__(CONNECTION)
        self.etags = etags

    def properties(self, container: str, name: str) -> BlobInfo:
        if name not in self.etags:
            raise BlobNotFoundError(f"read properties of {container}/{name}: {container}/{name} not found")
        return BlobInfo(container, name, 1, self.etags[name], None, None)


def versioned(etags: dict[str, str]) -> tuple[ProcessRasterController, VersionedStorage]:
    storage = VersionedStorage(etags)
    settings = Settings.model_validate({"AzureWebJobsStorage": CONNECTION})
    return ProcessRasterController(storage, RasterJobOptions.from_settings(settings, storage)), storage


def test_submission_records_the_sources_etag_unquoted_and_null_when_missing() -> None:
    job, _ = versioned({"a.tif": '"0x8DC1"'})
    resolved = job.resolve_parameters(job.parse_parameters({"blob_name": "a.tif"}))
    assert resolved.source_etag == "0x8DC1" and resolved.model_dump(mode="json")["source_etag"] == "0x8DC1"
    assert job.resolve_parameters(job.parse_parameters({"blob_name": "b.tif"})).source_etag is None
    pinned = job.parse_parameters({"blob_name": "a.tif", "source_etag": '"0x8DC1"'})
    assert job.resolve_parameters(pinned) == resolved  # quoted or not: the same version, the same job


@pytest.mark.parametrize(
    ("blob", "message"),
    [("a.tif", "bronze/a.tif is not version 0xOLD: its etag is 0x8DC1"), ("b.tif", "it does not exist")],
)
def test_a_pinned_etag_that_is_not_current_is_a_conflict_naming_the_field(blob: str, message: str) -> None:
    job, _ = versioned({"a.tif": '"0x8DC1"'})
    with pytest.raises(ConflictError) as caught:
        job.resolve_parameters(job.parse_parameters({"blob_name": blob, "source_etag": "0xOLD"}))
    [detail] = caught.value.details
    assert detail["field"] == "source_etag" and detail["message"].endswith(message)


@pytest.mark.parametrize("etag", ["", '""', "two words", 'a"b', "x" * 257])
def test_a_malformed_source_etag_is_a_field_error(etag: str) -> None:
    assert set(errors_of({"blob_name": "a.tif", "source_etag": etag})) == {"source_etag"}


def test_handlers_refuse_a_source_replaced_after_submission() -> None:
    job, storage = versioned({"a.tif": '"0x1"'})
    stored = job.resolve_parameters(job.parse_parameters({"blob_name": "a.tif"})).model_dump(mode="json")
    params = job.parse_parameters(stored)  # as handlers get them: parsed from the stored job
    job.check_source_version(params)  # unchanged: fine
    storage.etags["a.tif"] = '"0x2"'
    with pytest.raises(PermanentTaskError, match=r"changed after submission \(etag 0x1, now etag 0x2\); submit again"):
        job.check_source_version(params)
    # A job stored before sources were versioned (no source_etag key) is not checked.
    legacy = {k: v for k, v in stored.items() if k != "source_etag"}
    job.check_source_version(job.parse_parameters(legacy))
    # Missing at submission, there now: not the version the job was submitted for.
    missing = job.parse_parameters({**stored, "source_etag": None})
    with pytest.raises(PermanentTaskError, match=r"\(it did not exist, now etag 0x2\)"):
        job.check_source_version(missing)
