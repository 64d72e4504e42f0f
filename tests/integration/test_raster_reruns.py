"""Re-runs of process_raster on real Azurite + Postgres (issue "Rasters as users have them", item 5):
the source's etag is part of the job's identity, ``replace: true`` runs a finished job again, and a
source replaced after submission fails the job instead of being mixed with the old version."""

from __future__ import annotations

import posixpath
import secrets
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.errors import ConflictError, RequestError
from schemas.messages import JobAction, JobMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.job_service import Submission
from tests.support import rasters
from tests.support.engine import make_settings, pump_until_terminal, sql
from triggers.http_responses import status_code_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database)


@pytest.fixture(scope="module")
def storage(settings: Settings) -> BlobStorage:
    blobs = BlobStorage(settings.storage_connection_string.get_secret_value())
    blobs.ensure_container("bronze")
    return blobs


@pytest.fixture
def blob() -> str:
    return f"reruns-{secrets.token_hex(4)}/scene.tif"


def upload(storage: BlobStorage, blob: str, source: Path) -> str:
    """Upload (or replace) ``blob``; its etag as the job records it (no quotes)."""
    storage.upload_file("bronze", blob, source, content_type="image/tiff")
    return storage.properties("bronze", blob).etag.strip('"')


def submit(container: ServiceContainer, body: dict[str, Any]) -> Submission:
    return container.job_service.submit("process_raster", body)


def run(container: ServiceContainer, job_id: str) -> dict[str, Any]:
    return pump_until_terminal(container, job_id, timeout=90, workers=4)


def cog_pixels(storage: BlobStorage, status: dict[str, Any], tmp_path: Path) -> np.ndarray[Any, Any]:
    [cog] = status["result"]["outputs"]["cogs"]
    local = tmp_path / f"{secrets.token_hex(3)}.tif"
    local.write_bytes(storage.download_range(cog["container"], cog["blob"]))
    with rasterio.open(local) as dataset:
        return dataset.read()


def pixels(path: Path) -> np.ndarray[Any, Any]:
    with rasterio.open(path) as dataset:
        return dataset.read()


def attempts(settings: Settings, job_id: str) -> list[tuple[Any, ...]]:
    return sql(settings, "SELECT stage, task_key, attempts, status FROM tasks WHERE job_id = %s ORDER BY 1", (job_id,))


def test_the_same_source_and_parameters_are_the_same_job_and_the_etag_is_shown(
    container: ServiceContainer, storage: BlobStorage, blob: str, tmp_path: Path
) -> None:
    etag = upload(storage, blob, rasters.paletted(tmp_path / "a.tif"))
    first = submit(container, {"blob_name": blob})
    again = submit(container, {"blob_name": blob})
    assert first.created and not again.created and again.job.job_id == first.job.job_id
    # A pinned etag, quoted as HTTP sends it or not, is the same job: the etag is stored unquoted.
    assert submit(container, {"blob_name": blob, "source_etag": f'"{etag}"'}).job.job_id == first.job.job_id
    assert submit(container, {"blob_name": blob, "source_etag": etag}).job.job_id == first.job.job_id
    status = run(container, first.job.job_id)
    assert status["status"] == "completed", status["error"]
    assert status["parameters"]["source_etag"] == etag
    assert status["result"]["source"] == {"container": "bronze", "blob": blob, "etag": etag}


def test_a_replaced_source_is_a_new_job_that_converts_the_new_pixels(
    container: ServiceContainer, storage: BlobStorage, settings: Settings, blob: str, tmp_path: Path
) -> None:
    old_source = rasters.paletted(tmp_path / "old.tif")
    old_etag = upload(storage, blob, old_source)
    old = run(container, submit(container, {"blob_name": blob}).job.job_id)
    assert old["status"] == "completed", old["error"]
    np.testing.assert_array_equal(cog_pixels(storage, old, tmp_path), pixels(old_source))

    new_source = rasters.uint8_rgb(tmp_path / "new.tif")  # other bands, size and pixels
    new_etag = upload(storage, blob, new_source)
    assert new_etag != old_etag
    resubmitted = submit(container, {"blob_name": blob})
    assert resubmitted.created and resubmitted.job.job_id != old["job_id"]
    assert resubmitted.job.parameters["source_etag"] == new_etag
    new = run(container, resubmitted.job.job_id)
    assert new["status"] == "completed", new["error"]
    np.testing.assert_array_equal(cog_pixels(storage, new, tmp_path), pixels(new_source))
    # The old job stays what it was: completed, from the old version.
    old_now = container.job_service.job_status(old["job_id"])
    assert old_now["status"] == "completed" and old_now["parameters"]["source_etag"] == old_etag
    assert {row[2] for row in attempts(settings, new["job_id"])} == {1}


def test_replace_runs_a_completed_job_again_from_its_first_stage(
    container: ServiceContainer, storage: BlobStorage, settings: Settings, blob: str, tmp_path: Path
) -> None:
    source = rasters.paletted(tmp_path / "a.tif")
    upload(storage, blob, source)
    first = run(container, submit(container, {"blob_name": blob}).job.job_id)
    assert first["status"] == "completed", first["error"]
    [(first_started,)] = sql(settings, "SELECT max(started_at) FROM tasks WHERE job_id = %s", (first["job_id"],))

    replaced = submit(container, {"blob_name": blob, "replace": True})
    assert replaced.job.job_id == first["job_id"]
    assert (replaced.created, replaced.restarted, replaced.replaced) == (False, True, True)
    assert replaced.job.status == "processing" and replaced.job.stage == 1 and replaced.job.result is None
    again = run(container, first["job_id"])
    assert again["status"] == "completed", again["error"]
    assert again["completed_at"] > first["completed_at"]
    assert again["result"] == first["result"]  # the same outputs, written again at the same paths
    np.testing.assert_array_equal(cog_pixels(storage, again, tmp_path), pixels(source))
    # Every stage ran again: new tasks, each started after the first run, in one attempt.
    tasks = sql(settings, "SELECT stage, attempts, started_at FROM tasks WHERE job_id = %s", (first["job_id"],))
    assert sorted(t[0] for t in tasks) == [1, 2, 3, 4]
    assert all(t[1] == 1 and t[2] > first_started for t in tasks)

    # Without replace, a completed job is returned as it is.
    plain = submit(container, {"blob_name": blob})
    assert (plain.created, plain.restarted) == (False, False) and plain.job.status == "completed"


def test_replace_while_the_job_is_queued_or_processing_is_a_409(
    container: ServiceContainer, storage: BlobStorage, blob: str, tmp_path: Path
) -> None:
    upload(storage, blob, rasters.one_pixel(tmp_path / "a.tif"))
    queued = submit(container, {"blob_name": blob})
    with pytest.raises(ConflictError) as caught:
        submit(container, {"blob_name": blob, "replace": True})
    assert status_code_for(caught.value) == 409
    assert "still queued; cancel it first" in caught.value.message
    assert caught.value.details == [{"field": "replace", "message": "the job is queued"}]
    assert container.job_service.job_status(queued.job.job_id)["status"] == "queued"  # untouched
    # Stage 1 planned (what the job queue's trigger does first): processing, its task queued.
    container.orchestrator.handle(JobMessage(job_id=queued.job.job_id, stage=1, action=JobAction.CREATE_STAGE))
    with pytest.raises(ConflictError) as running:
        submit(container, {"blob_name": blob, "replace": True})
    assert "still processing; cancel it first" in running.value.message
    assert run(container, queued.job.job_id)["status"] == "completed"
    assert submit(container, {"blob_name": blob, "replace": True}).replaced  # finished: replace runs it again
    assert run(container, queued.job.job_id)["status"] == "completed"


def test_a_source_replaced_after_submission_fails_the_job_in_one_attempt(
    container: ServiceContainer, storage: BlobStorage, settings: Settings, blob: str, tmp_path: Path
) -> None:
    submitted_etag = upload(storage, blob, rasters.paletted(tmp_path / "a.tif"))
    job = submit(container, {"blob_name": blob}).job
    current_etag = upload(storage, blob, rasters.uint8_rgb(tmp_path / "b.tif"))  # before validate runs
    status = run(container, job.job_id)
    assert status["status"] == "failed"
    error = status["error"]
    assert "stage 1 (validate)" in error and "\n" not in error, error
    assert (
        f"the source changed after submission (etag {submitted_etag}, now etag {current_etag}); submit again" in error
    )
    assert attempts(settings, job.job_id) == [(1, "source", 1, "failed")]
    # Submitting again is a new job, for the new version.
    again = submit(container, {"blob_name": blob})
    assert again.created and again.job.job_id != job.job_id
    assert run(container, again.job.job_id)["status"] == "completed"


def test_a_pinned_source_etag_that_is_not_current_is_a_409_naming_the_field(
    container: ServiceContainer, storage: BlobStorage, blob: str, tmp_path: Path
) -> None:
    etag = upload(storage, blob, rasters.one_pixel(tmp_path / "a.tif"))
    with pytest.raises(ConflictError) as caught:
        submit(container, {"blob_name": blob, "source_etag": "0x8D0000000000000"})
    assert status_code_for(caught.value) == 409
    [detail] = caught.value.details
    assert detail == {
        "field": "source_etag",
        "message": f"bronze/{blob} is not version 0x8D0000000000000: its etag is {etag}",
    }
    with pytest.raises(ConflictError) as missing:
        submit(container, {"blob_name": f"{blob}.gone", "source_etag": etag})
    assert missing.value.details[0]["message"].endswith("it does not exist")
    with pytest.raises(RequestError) as malformed:  # not an etag at all: a 400 naming the field
        submit(container, {"blob_name": blob, "source_etag": "two words"})
    assert status_code_for(malformed.value) == 400
    assert [d["field"] for d in malformed.value.details] == ["source_etag"]


def test_a_source_missing_at_submission_is_a_job_that_fails_in_validate(
    container: ServiceContainer, storage: BlobStorage, settings: Settings, blob: str, tmp_path: Path
) -> None:
    """Deliberately not a 400: a missing source is bad input like a corrupt one, reported by the
    validate stage (tests/integration/test_process_raster.py, "missing"). Its job records
    ``source_etag: null``; once the blob exists, the same parameters are a new job."""
    missing = submit(container, {"blob_name": blob})
    assert missing.created and missing.job.parameters["source_etag"] is None
    failed = run(container, missing.job.job_id)
    assert failed["status"] == "failed" and "not found" in failed["error"], failed["error"]
    assert attempts(settings, missing.job.job_id) == [(1, "source", 1, "failed")]

    upload(storage, blob, rasters.one_pixel(tmp_path / "a.tif"))
    # The failed job, retried now, does not convert a file it was not submitted for.
    container.job_control.retry(missing.job.job_id)
    retried = run(container, missing.job.job_id)
    assert retried["status"] == "failed" and "the source changed after submission (it did not exist" in retried["error"]
    uploaded = submit(container, {"blob_name": blob})
    assert uploaded.created and uploaded.job.job_id != missing.job.job_id
    assert run(container, uploaded.job.job_id)["status"] == "completed"


def test_a_replaced_source_that_tiles_differently_leaves_no_stale_tile(
    container: ServiceContainer, storage: BlobStorage, blob: str, tmp_path: Path
) -> None:
    """A new etag is a new job writing the same paths: after it, its folder holds only its own tiles
    and its STAC items describe exactly them (the old 3x3 layout's extra tiles are deleted)."""
    upload(storage, blob, rasters.large_for_tiling(tmp_path / "old.tif"))  # 1300x1100: 3x3 tiles of 512
    old = run(container, submit(container, {"blob_name": blob, "tile_size": 512}).job.job_id)
    assert old["status"] == "completed", old["error"]
    assert len(old["result"]["outputs"]["cogs"]) == 9
    folder = posixpath.dirname(old["result"]["outputs"]["cogs"][0]["blob"]) + "/"
    upload(storage, blob, rasters.large_for_tiling(tmp_path / "new.tif", 900, 700))  # 2x2 tiles of 512
    new = run(container, submit(container, {"blob_name": blob, "tile_size": 512}).job.job_id)
    assert new["status"] == "completed", new["error"]
    written = {cog["blob"] for cog in new["result"]["outputs"]["cogs"]}
    assert len(written) == 4 and {posixpath.dirname(b) + "/" for b in written} == {folder}
    there = {b.name for b in storage.list_blobs("silver", folder)}
    assert there == written | {folder + "mosaic.vrt"}
    assert len(new["result"]["outputs"]["stac_items"]) == 4
