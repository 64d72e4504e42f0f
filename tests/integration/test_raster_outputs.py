"""Outputs never collide and never lie (issue 12, item 2), on real Azurite + Postgres: output paths
are injective in (source path, output options, collection), a collection has one owner, and a job
whose outputs a newer job rewrote says so."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from controllers.collection_ownership import CollectionOwnership, Owner
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.errors import ConflictError, InstanceBusyError, PermanentTaskError
from schemas.settings import Settings
from services.container import ServiceContainer
from tests.support import rasters
from tests.support.engine import QueuePump, job_is_terminal, make_settings, pump_until_terminal, sql
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


def execute(settings: Settings, statement: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"SET search_path TO {settings.postgres_schema}")
        conn.execute(statement, params)


@pytest.fixture
def folder() -> str:
    return f"outputs-{secrets.token_hex(4)}"


def run_jobs(container: ServiceContainer, submissions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    job_ids = [container.job_service.submit("process_raster", body).job.job_id for body in submissions]
    pump = QueuePump(container, workers=4)
    try:
        pump.run_until(lambda: all(job_is_terminal(container, job_id)() for job_id in job_ids), timeout=120)
    finally:
        pump.close()
    return [container.job_service.job_status(job_id) for job_id in job_ids]


def sha256(storage: BlobStorage, container: str, blob: str) -> str:
    return hashlib.sha256(storage.download_range(container, blob)).hexdigest()


def check_outputs_are_true(storage: BlobStorage, status: dict[str, Any]) -> None:
    """Every COG the job recorded is there with its sha256, and every item's asset resolves to it."""
    outputs = status["result"]["outputs"]
    recorded = {cog["blob"]: cog["sha256"] for cog in outputs["cogs"]}
    for blob, digest in recorded.items():
        assert sha256(storage, "silver", blob) == digest, blob
    assert len(outputs["stac_items"]) == len(recorded)
    for ref in outputs["stac_items"]:
        item = json.loads(storage.download_range(ref["container"], ref["blob"]))
        asset = item["assets"]["data"]
        target = posixpath.normpath(posixpath.join(posixpath.dirname(ref["blob"]), asset["href"]))
        assert target in recorded, (asset["href"], target)
        assert asset["file:checksum"] == "1220" + recorded[target]
        assert sha256(storage, "silver", target) == recorded[target]


def cog_folders(status: dict[str, Any]) -> set[str]:
    return {posixpath.dirname(cog["blob"]) for cog in status["result"]["outputs"]["cogs"]}


def test_the_same_source_with_other_options_keeps_every_job_true(
    container: ServiceContainer, storage: BlobStorage, folder: str, tmp_path: Path
) -> None:
    """The probe of the issue: same source, other compression / tile size / collection id."""
    blob = f"{folder}/dem.tif"
    storage.upload_file("bronze", blob, rasters.large_for_tiling(tmp_path / "dem.tif"), content_type="image/tiff")
    bodies: list[dict[str, Any]] = [
        {"blob_name": blob},
        {"blob_name": blob, "compression": "lzw"},
        {"blob_name": blob, "tile_size": 512},
        {"blob_name": blob, "collection_id": f"{folder}-mine"},
    ]
    statuses = run_jobs(container, bodies)
    assert [s["status"] for s in statuses] == ["completed"] * 4, [s["error"] for s in statuses]
    folders = [cog_folders(s) for s in statuses]
    assert all(len(f) == 1 for f in folders) and len(set().union(*folders)) == 4, folders
    assert folders[0] == {f"cogs/{folder}/dem.tif"}, "default options: the source path, extension kept"
    collections = {s["result"]["outputs"]["stac_collection"]["blob"] for s in statuses}
    assert len(collections) == 4
    for status in statuses:
        check_outputs_are_true(storage, status)
        assert "superseded_by" not in status["result"]


def test_dem_tif_and_dem_tiff_get_distinct_outputs(
    container: ServiceContainer, storage: BlobStorage, folder: str, tmp_path: Path
) -> None:
    source = rasters.paletted(tmp_path / "p.tif")
    for name in ("dem.tif", "dem.tiff", "dem"):
        storage.upload_file("bronze", f"{folder}/{name}", source, content_type="image/tiff")
    statuses = run_jobs(container, [{"blob_name": f"{folder}/{n}"} for n in ("dem.tif", "dem.tiff", "dem")])
    assert [s["status"] for s in statuses] == ["completed"] * 3
    assert [cog_folders(s) for s in statuses] == [
        {f"cogs/{folder}/dem.tif"},
        {f"cogs/{folder}/dem.tiff"},
        {f"cogs/{folder}/dem"},
    ]
    assert len({s["result"]["outputs"]["stac_collection"]["blob"] for s in statuses}) == 3
    for status in statuses:
        check_outputs_are_true(storage, status)


def test_characters_are_escaped_so_item_hrefs_resolve(
    container: ServiceContainer, storage: BlobStorage, folder: str, tmp_path: Path
) -> None:
    blob = f"{folder}/Süd 100%/a@b.tif"
    storage.upload_file("bronze", blob, rasters.paletted(tmp_path / "p.tif"), content_type="image/tiff")
    [status] = run_jobs(container, [{"blob_name": blob}])
    assert status["status"] == "completed", status["error"]
    assert cog_folders(status) == {f"cogs/{folder}/S~c3~bcd~20100~25/a~40b.tif"}
    check_outputs_are_true(storage, status)


def test_two_sources_cannot_share_an_explicit_collection(
    container: ServiceContainer, storage: BlobStorage, folder: str, tmp_path: Path
) -> None:
    source = rasters.paletted(tmp_path / "p.tif")
    for name in ("a.tif", "b.tif"):
        storage.upload_file("bronze", f"{folder}/{name}", source, content_type="image/tiff")
    shared = f"{folder}-shared"
    first = container.job_service.submit("process_raster", {"blob_name": f"{folder}/a.tif", "collection_id": shared})
    for body in (
        {"blob_name": f"{folder}/b.tif", "collection_id": shared},  # another source
        {"blob_name": f"{folder}/a.tif", "collection_id": shared, "compression": "lzw"},  # other options
    ):
        with pytest.raises(ConflictError) as refused:
            container.job_service.submit("process_raster", body)
        assert status_code_for(refused.value) == 409
        [detail] = refused.value.details
        assert detail["field"] == "collection_id" and f"process_raster of bronze/{folder}/a.tif" in detail["message"]
    with pytest.raises(ConflictError, match="another source"):  # another job type
        container.job_service.submit("catalog_container", {"prefix": f"{folder}/", "collection_id": shared})
    again = container.job_service.submit("process_raster", {"blob_name": f"{folder}/a.tif", "collection_id": shared})
    assert again.job.job_id == first.job.job_id, "the owner itself may submit again"


def test_a_job_reaching_a_collection_owned_by_another_fails_in_one_attempt(
    container: ServiceContainer, settings: Settings, storage: BlobStorage, folder: str, tmp_path: Path
) -> None:
    """As for a job submitted before ownership was recorded: the writing stage refuses, once."""
    blob = f"{folder}/late.tif"
    storage.upload_file("bronze", blob, rasters.paletted(tmp_path / "p.tif"), content_type="image/tiff")
    collection = f"{folder}-late"
    submission = container.job_service.submit("process_raster", {"blob_name": blob, "collection_id": collection})
    execute(
        settings,
        "UPDATE collection_owners SET owner_key = 'process_raster:bronze/other.tif:default', "
        "owner = 'process_raster of bronze/other.tif' WHERE collection_id = %s",
        (collection,),
    )
    status = pump_until_terminal(container, submission.job.job_id, timeout=60)
    assert status["status"] == "failed"
    assert "belongs to process_raster of bronze/other.tif" in status["error"] and "\n" not in status["error"]
    rows = sql(
        settings, "SELECT attempts, error_category FROM tasks WHERE job_id = %s AND stage = 2", (status["job_id"],)
    )
    assert rows == [(1, "permanent")]
    assert not list(storage.list_blobs("silver", f"cogs/{folder}/late.tif")), "nothing written"


def test_a_writer_waits_for_a_running_writer_then_supersedes_it(
    container: ServiceContainer, settings: Settings, folder: str
) -> None:
    ownership = CollectionOwnership(container.db)
    owner = Owner(key=f"test:{folder}", description=f"test of {folder}")
    collection = f"{folder}-writers"
    older = container.job_service.submit("hello_world", {"n": 1, "message": f"{folder} older"}).job.job_id
    newer = container.job_service.submit("hello_world", {"n": 1, "message": f"{folder} newer"}).job.job_id
    execute(settings, "UPDATE jobs SET status = 'processing' WHERE job_id = %s", (older,))
    assert ownership.take_over("silver", collection, owner, older) is None
    assert ownership.take_over("silver", collection, owner, older) is None, "taking over twice is harmless"
    with pytest.raises(InstanceBusyError, match=f"job {older} \\(processing\\) is still writing"):
        ownership.take_over("silver", collection, owner, newer)
    execute(
        settings,
        "UPDATE jobs SET status = 'completed', result = '{\"outputs\": {}}' WHERE job_id = %s",
        (older,),
    )
    assert ownership.take_over("silver", collection, owner, newer) == older
    [(result,)] = sql(settings, "SELECT result FROM jobs WHERE job_id = %s", (older,))
    assert result["superseded_by"] == newer and result["superseded_at"] and result["outputs"] == {}
    [(writer,)] = sql(settings, "SELECT writer_job_id FROM collection_owners WHERE collection_id = %s", (collection,))
    assert writer == newer


def hello_job(container: ServiceContainer, settings: Settings, message: str, status: str) -> str:
    job_id = container.job_service.submit("hello_world", {"n": 1, "message": message}).job.job_id
    execute(settings, "UPDATE jobs SET status = %s, result = '{}' WHERE job_id = %s", (status, job_id))
    return job_id


@pytest.mark.parametrize("ended", ["completed", "failed", "cancelled"])
def test_a_collection_whose_writer_ended_is_taken_over_by_another_owner(
    container: ServiceContainer, settings: Settings, folder: str, ended: str
) -> None:
    ownership = CollectionOwnership(container.db, lease_seconds=600)
    first, second = Owner(f"test:{folder}:a", "owner a"), Owner(f"test:{folder}:b", "owner b")
    collection = f"{folder}-ended"
    writer = hello_job(container, settings, f"{folder} writer", "processing")
    ownership.claim_at_submission("silver", collection, first)
    assert ownership.take_over("silver", collection, first, writer) is None
    execute(settings, "UPDATE jobs SET status = %s WHERE job_id = %s", (ended, writer))
    ownership.claim_at_submission("silver", collection, second)  # no 409: the writer no longer runs
    [(owner_key,)] = sql(settings, "SELECT owner_key FROM collection_owners WHERE collection_id = %s", (collection,))
    assert owner_key == second.key
    newer = hello_job(container, settings, f"{folder} newer", "processing")
    assert ownership.take_over("silver", collection, second, newer) == writer
    with pytest.raises(ConflictError):  # and now the new owner holds it
        ownership.claim_at_submission("silver", collection, first)


def test_a_writer_stuck_in_processing_holds_the_collection_until_its_lease_lapses(
    container: ServiceContainer, settings: Settings, folder: str
) -> None:
    ownership = CollectionOwnership(container.db, lease_seconds=600)
    stuck_owner, next_owner = Owner(f"test:{folder}:a", "owner a"), Owner(f"test:{folder}:b", "owner b")
    collection = f"{folder}-stuck"
    stuck = hello_job(container, settings, f"{folder} stuck", "processing")
    ownership.claim_at_submission("silver", collection, stuck_owner)
    ownership.take_over("silver", collection, stuck_owner, stuck)
    [(written_at,)] = sql(settings, "SELECT written_at FROM collection_owners WHERE collection_id = %s", (collection,))
    until = (written_at + timedelta(seconds=600)).isoformat(timespec="seconds")
    with pytest.raises(ConflictError) as refused:
        ownership.claim_at_submission("silver", collection, next_owner)
    [detail] = refused.value.details
    assert detail["field"] == "collection_id"
    assert f"belongs to owner a (held by job {stuck} (processing) until {until})" in detail["message"]
    same_owner_job = hello_job(container, settings, f"{folder} same owner", "processing")
    with pytest.raises(InstanceBusyError, match=re.escape(f"its lease ends {until})")):
        ownership.take_over("silver", collection, stuck_owner, same_owner_job)

    execute(  # the stuck writer's lease lapses (it renews no more)
        settings,
        "UPDATE collection_owners SET written_at = now() - interval '601 seconds', "
        "claimed_at = now() - interval '602 seconds' WHERE collection_id = %s",
        (collection,),
    )
    ownership.claim_at_submission("silver", collection, next_owner)
    taker = hello_job(container, settings, f"{folder} taker", "processing")
    assert ownership.take_over("silver", collection, next_owner, taker) == stuck
    with pytest.raises(PermanentTaskError, match=f"job {stuck} is no longer the writer"):
        ownership.renew("silver", collection, stuck)  # the stuck job, should it wake up, stops
    ownership.renew("silver", collection, taker)


def test_a_submission_that_has_not_written_holds_the_collection_for_the_lease(
    container: ServiceContainer, settings: Settings, folder: str
) -> None:
    ownership = CollectionOwnership(container.db, lease_seconds=600)
    collection = f"{folder}-pending"
    ownership.claim_at_submission("silver", collection, Owner(f"test:{folder}:a", "owner a"))
    with pytest.raises(ConflictError) as refused:
        ownership.claim_at_submission("silver", collection, Owner(f"test:{folder}:b", "owner b"))
    assert "belongs to owner a (claimed until " in refused.value.details[0]["message"]
    execute(
        settings,
        "UPDATE collection_owners SET claimed_at = now() - interval '601 seconds' WHERE collection_id = %s",
        (collection,),
    )
    ownership.claim_at_submission("silver", collection, Owner(f"test:{folder}:b", "owner b"))


def test_concurrent_claims_of_a_free_collection_leave_exactly_one_owner(
    container: ServiceContainer, settings: Settings, folder: str
) -> None:
    ownership = CollectionOwnership(container.db, lease_seconds=600)
    collection = f"{folder}-race"
    ended = hello_job(container, settings, f"{folder} ended", "processing")
    ownership.claim_at_submission("silver", collection, Owner(f"test:{folder}:old", "old owner"))
    ownership.take_over("silver", collection, Owner(f"test:{folder}:old", "old owner"), ended)
    execute(settings, "UPDATE jobs SET status = 'completed' WHERE job_id = %s", (ended,))
    owners = [Owner(f"test:{folder}:{n}", f"owner {n}") for n in range(8)]

    def claim(owner: Owner) -> bool:
        try:
            ownership.claim_at_submission("silver", collection, owner)
        except ConflictError:
            return False
        return True

    with ThreadPoolExecutor(8) as pool:
        won = [owner for owner, ok in zip(owners, pool.map(claim, owners), strict=True) if ok]
    assert len(won) == 1, won
    [(owner_key,)] = sql(settings, "SELECT owner_key FROM collection_owners WHERE collection_id = %s", (collection,))
    assert owner_key == won[0].key
