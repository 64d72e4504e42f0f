"""VECTOR_TASKS_PER_PROCESS: the heavy vector stages run inside a per-process slot, shared by
stage_vector and export_geoparquet; a task that finds no free slot is handed back to the queue."""

from __future__ import annotations

import threading
from typing import Any, cast

import pytest

from controllers.export_geoparquet import ExportGeoParquetController
from controllers.registry import default_registry
from controllers.stage_vector import StageVectorController
from controllers.vector_job import HAND_BACK_SECONDS
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from schemas.errors import InstanceBusyError
from schemas.settings import Settings
from services.engine import TaskContext

CONNECTION = "UseDevelopmentStorage=true"


def controller(slots: threading.Semaphore, wait: float = 0.05) -> StageVectorController:
    return StageVectorController(
        storage=None,  # type: ignore[arg-type]
        database=None,  # type: ignore[arg-type]
        task_slots=slots,
        slot_wait_seconds=wait,
    )


def test_a_task_without_a_free_slot_is_handed_back_and_a_free_slot_runs_it() -> None:
    slots = threading.BoundedSemaphore(1)
    job = controller(slots)
    ran: list[str] = []

    def handler(ctx: TaskContext[Any]) -> dict[str, Any]:
        ran.append(ctx.task_key)
        assert not slots.acquire(blocking=False), "the handler runs while holding the slot"
        return {"ok": True}

    wrapped = job.in_a_task_slot(handler)
    ctx = cast(TaskContext[Any], type("Ctx", (), {"task_key": "load_0001"})())
    assert slots.acquire(blocking=False)  # another task of this process holds the only slot
    with pytest.raises(InstanceBusyError, match="VECTOR_TASKS_PER_PROCESS") as busy:
        wrapped(ctx)
    assert HAND_BACK_SECONDS[0] <= busy.value.retry_after <= HAND_BACK_SECONDS[1]
    assert ran == []
    slots.release()
    assert wrapped(ctx) == {"ok": True} and ran == ["load_0001"]
    assert slots.acquire(blocking=False), "the slot is released after the task"


def test_the_slot_is_released_when_the_handler_fails() -> None:
    slots = threading.BoundedSemaphore(1)

    def failing(ctx: TaskContext[Any]) -> dict[str, Any]:
        raise RuntimeError("boom")

    wrapped = controller(slots).in_a_task_slot(failing)
    with pytest.raises(RuntimeError, match="boom"):
        wrapped(cast(TaskContext[Any], object()))
    assert slots.acquire(blocking=False)


def test_the_heavy_stages_hold_a_slot_and_the_light_ones_do_not() -> None:
    slots = threading.BoundedSemaphore(1)
    stage = controller(slots, wait=0.01)
    export = ExportGeoParquetController(
        storage=None,  # type: ignore[arg-type]
        database=None,  # type: ignore[arg-type]
        task_slots=slots,
        slot_wait_seconds=0.01,
    )
    assert slots.acquire(blocking=False)  # no slot free: a heavy stage is handed back before it reads anything
    ctx = cast(TaskContext[Any], object())
    for job, heavy in ((stage, ("load",)), (export, ("write", "assemble"))):
        for definition in job.stages:
            if definition.name in heavy:
                with pytest.raises(InstanceBusyError):
                    definition.handler(ctx)
            else:  # not wrapped: fails on the fake context itself, not for want of a slot
                with pytest.raises(Exception) as error:
                    definition.handler(ctx)
                assert not isinstance(error.value, InstanceBusyError), definition.name


def test_the_registry_gives_both_vector_job_types_one_semaphore_sized_by_the_setting() -> None:
    settings = Settings.model_validate({"AzureWebJobsStorage": CONNECTION, "vector_tasks_per_process": 2})
    database = Database("host=127.0.0.1 dbname=unused", schema="geoetl")  # the pool opens lazily: never here
    registry = default_registry(settings, BlobStorage(CONNECTION), database)
    stage = cast(StageVectorController, registry.get("stage_vector"))
    export = cast(ExportGeoParquetController, registry.get("export_geoparquet"))
    assert stage._task_slots is export._task_slots
    taken = [stage._task_slots.acquire(blocking=False) for _ in range(3)]
    assert taken == [True, True, False]
