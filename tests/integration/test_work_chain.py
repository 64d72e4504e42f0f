"""The work chain on real Azurite queues and Postgres: one delivery runs what it released, and the
queued messages remain a safe fallback (duplicates dropped, a dead inline run recovered)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from devstack.postgres import PostgresDatabase
from schemas.messages import JobMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.engine.registry import JobTypeRegistry
from tests.support.engine import QueuePump, make_container, make_settings, queue_client, sql

pytestmark = pytest.mark.integration


class InstanceDiedError(BaseException):
    """Stands for the process being killed mid-task: nothing in the engine catches it."""


class ChainParams(BaseModel):
    die_in_stage: int | None = None


DIED: set[str] = set()


def _step(ctx: TaskContext[ChainParams]) -> dict[str, Any]:
    if ctx.job_parameters.die_in_stage == ctx.stage and ctx.task_id not in DIED:
        DIED.add(ctx.task_id)
        raise InstanceDiedError
    return {"stage": ctx.stage}


class ChainOfOne(JobController[ChainParams]):
    job_type = "chain_of_one"
    description = "three stages of one task each"
    parameters_model = ChainParams
    stages = (StageDefinition("a", _step), StageDefinition("b", _step), StageDefinition("c", _step))

    def create_tasks(self, stage: int, params: ChainParams, previous_results: StageResults) -> list[TaskSpec]:
        return [TaskSpec(key="only")]

    def finalize(self, params: ChainParams, outcome: JobOutcome) -> dict[str, Any]:
        return {"stages": sorted(r["only"]["stage"] for r in outcome.results_by_stage.values())}


def make(settings: Settings) -> ServiceContainer:
    return make_container(settings, JobTypeRegistry([ChainOfOne()]))


@pytest.fixture
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, janitor_lease_grace_seconds=0)


@pytest.fixture
def container(settings: Settings) -> Iterator[ServiceContainer]:
    c = make(settings)
    yield c
    c.close()


def deliver_job_message(container: ServiceContainer, settings: Settings) -> None:
    """Receive the one job message the submit published and hand it to the trigger's entry point."""
    queue = queue_client(settings, settings.job_queue)
    received = list(queue.receive_messages(max_messages=32))
    assert len(received) == 1
    container.work_chain.on_job_message(JobMessage.model_validate_json(base64.b64decode(received[0].content)))
    queue.delete_message(received[0])  # like the host after a successful invocation


def drain(container: ServiceContainer) -> dict[str, int]:
    """Deliver every message still queued (the fallbacks) until the queues are empty."""
    pump = QueuePump(container)
    try:
        while pump.pump_once():
            pass
    finally:
        pump.close()
    return pump.delivered


def task_rows(settings: Settings, job_id: str) -> list[tuple[Any, ...]]:
    return sql(
        settings,
        "SELECT stage, status, attempts, claimed_by_message LIKE 'inline-%%' FROM tasks WHERE job_id = %s"
        " ORDER BY stage",
        (job_id,),
    )


def test_one_job_message_runs_every_stage_and_the_queued_copies_change_nothing(
    container: ServiceContainer, settings: Settings
) -> None:
    job_id = container.job_service.submit("chain_of_one", {}).job.job_id
    deliver_job_message(container, settings)
    status = container.job_service.job_status(job_id)
    assert status["status"] == "completed" and status["result"] == {"stages": [1, 2, 3]}
    assert task_rows(settings, job_id) == [
        (1, "completed", 1, True),
        (2, "completed", 1, True),
        (3, "completed", 1, True),
    ]
    delivered = drain(container)
    # The published task messages (one per stage) and the stage/finalize job messages all arrive
    # afterwards and are dropped: nothing ran twice.
    assert delivered["tasks"] == 3 and delivered["jobs"] == 3
    assert task_rows(settings, job_id) == [
        (1, "completed", 1, True),
        (2, "completed", 1, True),
        (3, "completed", 1, True),
    ]
    assert container.job_service.job_status(job_id)["status"] == "completed"


def test_a_zero_budget_turns_the_chain_off(azurite_connection_string: str, postgres_database: PostgresDatabase) -> None:
    settings = make_settings(azurite_connection_string, postgres_database, inline_chain_seconds=0)
    container = make(settings)
    try:
        job_id = container.job_service.submit("chain_of_one", {}).job.job_id
        deliver_job_message(container, settings)
        assert task_rows(settings, job_id) == [(1, "queued", 0, None)]
        drain(container)
        assert container.job_service.job_status(job_id)["status"] == "completed"
        assert [row[3] for row in task_rows(settings, job_id)] == [False, False, False]
    finally:
        container.close()


def test_an_inline_run_that_dies_is_recovered_through_its_lease(
    container: ServiceContainer, settings: Settings
) -> None:
    job_id = container.job_service.submit("chain_of_one", {"die_in_stage": 2}).job.job_id
    with pytest.raises(InstanceDiedError):
        deliver_job_message(container, settings)
    assert task_rows(settings, job_id) == [(1, "completed", 1, True), (2, "processing", 1, True)]
    # While the dead run's lease lives, the queued delivery of that task is dropped as a duplicate.
    drain(container)
    assert task_rows(settings, job_id) == [(1, "completed", 1, True), (2, "processing", 1, True)]
    # Once the lease lapses, the janitor's sweep re-queues the task and the job completes.
    with psycopg.connect(settings.postgres_conninfo()) as conn:
        conn.execute(f"SET search_path TO {settings.postgres_schema}")
        conn.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE job_id = %s", (job_id,))
    assert container.janitor.run()["expired_leases"] == 1
    drain(container)
    status = container.job_service.job_status(job_id)
    assert status["status"] == "completed" and status["result"] == {"stages": [1, 2, 3]}
    rows = task_rows(settings, job_id)
    assert [(stage, state, attempts) for stage, state, attempts, _ in rows] == [
        (1, "completed", 1),
        (2, "completed", 2),
        (3, "completed", 1),
    ]
