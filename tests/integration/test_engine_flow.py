"""The Job → Stage → Task engine on real Azurite queues and a real Postgres database."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

import pytest
from pydantic import BaseModel

from controllers.hello_world import HelloWorldController
from devstack.postgres import PostgresDatabase
from schemas.messages import TaskMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.engine.registry import JobTypeRegistry
from tests.support.engine import QueuePump, job_is_terminal, make_container, make_settings, queue_client, sql

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database)


@pytest.fixture
def container(settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(settings)
    yield c
    c.close()


def run_job(container: ServiceContainer, params: dict[str, Any], **pump_options: Any) -> dict[str, Any]:
    job_id = container.job_service.submit("hello_world", params).job.job_id
    pump = QueuePump(container, **pump_options)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=90)
    finally:
        pump.close()
    return container.job_service.job_status(job_id)


def test_hello_world_fans_out_and_in_with_lineage(container: ServiceContainer, settings: Settings) -> None:
    status = run_job(container, {"n": 20, "message": "hi"})
    assert status["status"] == "completed"
    replies = status["result"]["replies"]
    assert len(replies) == 20
    assert replies[7] == "Reply to 'Hello #7 from geoetl: hi'"
    assert status["progress"]["percent"] == 100.0
    assert [s["tasks"]["completed"] for s in status["progress"]["stages"]] == [20, 20]
    # Lineage: every reply task points at the greet task with the same key and read its greeting.
    rows = sql(
        settings,
        "SELECT r.task_key, r.predecessor_task_id = g.task_id,"
        " r.result->>'reply' LIKE '%%' || (g.result->>'greeting') || '%%'"
        " FROM tasks r JOIN tasks g ON g.job_id = r.job_id AND g.stage = 1 AND g.task_key = r.task_key"
        " WHERE r.stage = 2",
    )
    assert len(rows) == 20 and all(linked and read for _, linked, read in rows)
    # Task ids carry the full job id, the stage and the semantic key; each task ran once.
    ids = sql(settings, "SELECT task_id, attempts FROM tasks WHERE stage = 1 AND task_key = 'item_0003'")
    assert ids == [(f"{status['job_id']}-s1-item_0003", 1)]
    assert sql(settings, "SELECT count(*) FROM outbox") == [(0,)]


@pytest.mark.parametrize("concurrent", [False, True], ids=["sequential-duplicates", "concurrent-duplicates"])
def test_every_message_delivered_twice_gives_the_same_end_state(
    container: ServiceContainer, settings: Settings, concurrent: bool
) -> None:
    status = run_job(
        container, {"n": 30, "message": f"dup-{concurrent}"}, duplicate=True, concurrent_duplicates=concurrent
    )
    assert status["status"] == "completed"
    assert len(status["result"]["replies"]) == 30
    job_id = status["job_id"]
    # Each handler ran exactly once per task, and the job completed exactly once.
    assert sql(settings, "SELECT count(*), max(attempts), min(attempts) FROM tasks WHERE job_id = %s", (job_id,)) == [
        (60, 1, 1)
    ]
    assert sql(
        settings, "SELECT stage, completed_count, status FROM stages WHERE job_id = %s ORDER BY stage", (job_id,)
    ) == [
        (1, 30, "completed"),
        (2, 30, "completed"),
    ]


def test_one_hundred_concurrent_completions_advance_the_stage_exactly_once(
    container: ServiceContainer, settings: Settings
) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 100, "message": "race"}).job.job_id
    job_queue = queue_client(settings, settings.job_queue)
    task_queue = queue_client(settings, settings.task_queue)
    first = list(job_queue.receive_messages(max_messages=1))
    assert len(first) == 1
    job_queue.delete_message(first[0])
    container.orchestrator.create_stage(job_id, 1)

    task_ids = [r[0] for r in sql(settings, "SELECT task_id FROM tasks WHERE job_id = %s AND stage = 1", (job_id,))]
    assert len(task_ids) == 100
    # Make all 100 handlers finish at the same moment: each waits at a barrier before returning.
    barrier = Barrier(100, timeout=60)
    hello = HelloWorldController()

    def greet_in_lockstep(ctx: TaskContext[Any]) -> dict[str, Any]:
        result = hello.stage(1).handler(ctx)
        barrier.wait()
        return result

    class LockstepHello(HelloWorldController):
        stages = (
            StageDefinition("greet", greet_in_lockstep),
            hello.stages[1],
        )

    racing = make_container(settings.model_copy(update={"db_pool_max_size": 40}), JobTypeRegistry([LockstepHello()]))
    try:
        with ThreadPoolExecutor(100) as pool:
            futures = [
                pool.submit(racing.task_runner.handle, TaskMessage(task_id=t, job_id=job_id), message_id=f"m-{t}")
                for t in task_ids
            ]
            for future in futures:
                future.result()
    finally:
        racing.close()

    assert sql(settings, "SELECT stage, status FROM jobs WHERE job_id = %s", (job_id,)) == [(2, "processing")]
    assert sql(settings, "SELECT completed_count, status FROM stages WHERE job_id = %s AND stage = 1", (job_id,)) == [
        (100, "completed")
    ]
    stage_two_messages = list(job_queue.peek_messages(max_messages=32))
    assert len(stage_two_messages) == 1, "exactly one completion must queue the next stage"
    assert sql(settings, "SELECT count(*) FROM outbox") == [(0,)]
    # The stage-1 task messages still in the queue are now duplicates: delivering them changes nothing.
    pump = QueuePump(racing_free := make_container(settings))
    try:
        for message in task_queue.receive_messages(max_messages=32):
            pump._deliver("tasks", message)
    finally:
        pump.close()
        racing_free.close()
    assert sql(settings, "SELECT max(attempts) FROM tasks WHERE job_id = %s AND stage = 1", (job_id,)) == [(1,)]


class EmptyMiddleParams(BaseModel):
    n: int = 2


def _echo(ctx: TaskContext[Any]) -> dict[str, Any]:
    return {"key": ctx.task_key}


class EmptyMiddleStage(JobController[EmptyMiddleParams]):
    """Stage 2 has no tasks: it must advance at once."""

    job_type = "empty_middle"
    description = "test job with an empty stage"
    parameters_model = EmptyMiddleParams
    stages = (
        StageDefinition("first", _echo),
        StageDefinition("nothing", _echo),
        StageDefinition("last", _echo),
    )

    def create_tasks(self, stage: int, params: EmptyMiddleParams, previous_results: StageResults) -> list[TaskSpec]:
        return [] if stage == 2 else [TaskSpec(key=f"k{i}") for i in range(params.n)]

    def finalize(self, params: EmptyMiddleParams, outcome: JobOutcome) -> dict[str, Any]:
        return {"counts": {name: len(results) for name, results in outcome.results_by_stage.items()}}


def test_a_stage_with_zero_tasks_advances_immediately(settings: Settings) -> None:
    container = make_container(settings, JobTypeRegistry([EmptyMiddleStage()]))
    pump = QueuePump(container)
    try:
        job_id = container.job_service.submit("empty_middle", {"n": 3}).job.job_id
        pump.run_until(job_is_terminal(container, job_id), timeout=30)
        status = container.job_service.job_status(job_id)
    finally:
        pump.close()
        container.close()
    assert status["status"] == "completed"
    assert status["result"] == {"counts": {"first": 3, "nothing": 0, "last": 3}}
    assert [s["task_count"] for s in status["progress"]["stages"]] == [3, 0, 3]


def test_failing_tasks_are_retried_then_fail_the_job_with_a_reason(
    container: ServiceContainer, settings: Settings
) -> None:
    status = run_job(container, {"n": 10, "fail_ratio": 0.3})
    assert status["status"] == "failed"
    assert "stage 1 (greet)" in status["error"] and "fails on purpose" in status["error"]
    failed = sql(
        settings,
        "SELECT task_key, attempts, error FROM tasks WHERE job_id = %s AND status = 'failed'",
        (status["job_id"],),
    )
    assert failed, "at least one task failed"
    assert all(
        attempts == settings.task_max_attempts and "InjectedFailureError" in error for _, attempts, error in failed
    )
    # No task of a failed job is left queued or processing, and stage 2 was never created.
    assert sql(
        settings,
        "SELECT count(*) FROM tasks WHERE job_id = %s AND status IN ('queued', 'processing')",
        (status["job_id"],),
    ) == [(0,)]
    assert sql(settings, "SELECT count(*) FROM stages WHERE job_id = %s AND stage = 2", (status["job_id"],)) == [(0,)]


def test_failures_within_the_allowed_ratio_complete_with_errors(container: ServiceContainer) -> None:
    status = run_job(container, {"n": 10, "fail_ratio": 0.3, "max_failure_ratio": 0.5})
    assert status["status"] == "completed_with_errors"
    assert len(status["result"]["replies"]) == 7
    assert status["result"]["errors"]["failed_tasks"] == 3
    assert status["result"]["errors"]["failed_by_stage"] == {"greet": 3}


def test_resubmitting_returns_the_same_job(container: ServiceContainer) -> None:
    first = container.job_service.submit("hello_world", {"n": 4, "message": "same"})
    again = container.job_service.submit("hello_world", {"message": "same", "n": 4})
    other = container.job_service.submit("hello_world", {"n": 5, "message": "same"})
    defaults = container.job_service.submit("hello_world", {})
    explicit_defaults = container.job_service.submit("hello_world", {"n": 3})
    assert first.created and not again.created
    assert again.job.job_id == first.job.job_id and len(first.job.job_id) == 64
    assert other.created and other.job.job_id != first.job.job_id
    assert defaults.job.job_id == explicit_defaults.job.job_id and not explicit_defaults.created


def test_unknown_task_and_stale_job_messages_are_dropped(
    container: ServiceContainer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    unknown_task = TaskMessage(task_id="f" * 64 + "-s1-item_0000", job_id="f" * 64)
    assert container.task_runner.handle(unknown_task, message_id="x") == []
    assert container.orchestrator.create_stage("e" * 64, 1) == []
    # A stale fan-out for a job that exists but is at another stage changes nothing either.
    job_id = container.job_service.submit("hello_world", {"n": 2, "message": "stale"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    before = sql(settings, "SELECT count(*) FROM tasks"), sql(settings, "SELECT count(*) FROM outbox")
    assert container.orchestrator.create_stage(job_id, 2) == []
    assert (sql(settings, "SELECT count(*) FROM tasks"), sql(settings, "SELECT count(*) FROM outbox")) == before
    assert sql(settings, "SELECT stage FROM stages WHERE job_id = %s", (job_id,)) == [(1,)]
    assert sql(settings, "SELECT count(*) FROM jobs") == [(1,)]
    assert "task message for unknown task; dropped" in caplog.text
    assert "job message for unknown job; dropped" in caplog.text
    assert "stale message for stage 2 (job is at stage 1); dropped" in caplog.text
