"""Failure policy, control (cancel/retry/restart), priorities, max_parallel_tasks, dependencies,
dead letters and poison reconciliation — on real Azurite queues and a real Postgres database."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from controllers.hello_world import HelloWorldController
from devstack.postgres import PostgresDatabase
from schemas.errors import ConflictError, InstanceBusyError, InvalidRequestError, TransientTaskError
from schemas.messages import JobAction, JobMessage, TaskMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.engine.dead_letters import ReceivedMessage
from services.engine.registry import JobTypeRegistry
from tests.support.engine import (
    QueuePump,
    job_is_terminal,
    make_container,
    make_settings,
    pump_until_terminal,
    queue_client,
    sql,
)

pytestmark = pytest.mark.integration

FLAKY = {"failing": True}
BUSY_DELIVERIES: dict[str, int] = {}


class FlakyParams(BaseModel):
    n: int = 4


def flaky_work(ctx: TaskContext[Any]) -> dict[str, Any]:
    if FLAKY["failing"] and ctx.task_key == "k1":
        raise TransientTaskError("upstream not ready")
    return {"key": ctx.task_key}


class FlakyJob(JobController[FlakyParams]):
    job_type = "flaky"
    description = "fails task k1 while FLAKY['failing']"
    parameters_model = FlakyParams
    stages = (StageDefinition("work", flaky_work), StageDefinition("collect", lambda ctx: {"seen": ctx.task_key}))

    def create_tasks(self, stage: int, params: FlakyParams, previous_results: StageResults) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(f"k{i}") for i in range(params.n)]
        return [TaskSpec(k, depends_on_predecessor=True) for k in sorted(previous_results)]

    def finalize(self, params: FlakyParams, outcome: JobOutcome) -> dict[str, Any]:
        return {"collected": sorted(outcome.results_by_stage["collect"])}


def busy_twice(ctx: TaskContext[Any]) -> dict[str, Any]:
    """The instance is "busy" on the first two deliveries of each task (like a taken conversion slot)."""
    seen = BUSY_DELIVERIES[ctx.task_id] = BUSY_DELIVERIES.get(ctx.task_id, 0) + 1
    if seen <= 2:
        raise InstanceBusyError("every slot taken", retry_after=0.1)
    return {"deliveries": seen, "attempt": ctx.attempt}


class BusyJob(JobController[FlakyParams]):
    job_type = "busy"
    description = "each task is handed back twice before it runs"
    parameters_model = FlakyParams
    stages = (StageDefinition("work", busy_twice),)

    def create_tasks(self, stage: int, params: FlakyParams, previous_results: StageResults) -> list[TaskSpec]:
        return [TaskSpec(f"k{i}") for i in range(params.n)]

    def finalize(self, params: FlakyParams, outcome: JobOutcome) -> dict[str, Any]:
        return {"runs": outcome.results_by_stage["work"]}


@pytest.fixture
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, task_max_attempts=2)


@pytest.fixture
def container(settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(settings, JobTypeRegistry([HelloWorldController(), FlakyJob(), BusyJob()]))
    yield c
    c.close()


def run(container: ServiceContainer, job_type: str, body: dict[str, Any], timeout: float = 60) -> dict[str, Any]:
    job_id = container.job_service.submit(job_type, body).job.job_id
    return pump_until_done(container, job_id, timeout)


def pump_until_done(container: ServiceContainer, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return pump_until_terminal(container, job_id, timeout=timeout)


@pytest.mark.parametrize(("limit", "expected"), [(0.5, "completed_with_errors"), (0.2, "failed")])
def test_stage_failure_policy_decides_the_outcome_quickly(
    container: ServiceContainer, limit: float, expected: str
) -> None:
    started = time.monotonic()
    status = run(container, "hello_world", {"n": 20, "fail_ratio": 0.3, "max_failure_ratio": limit})
    assert status["status"] == expected
    assert time.monotonic() - started < 20, "terminal within seconds of the last attempt"
    if expected == "completed_with_errors":
        assert len(status["result"]["replies"]) == 14
        assert status["result"]["errors"]["failed_tasks"] == 6
        assert status["result"]["errors"]["first_errors"][0]["error"].startswith("InjectedFailureError")
    else:
        assert "6 of 20 tasks failed" in status["error"] or "of 20 tasks failed" in status["error"]


def test_task_attempts_and_errors_are_visible(container: ServiceContainer) -> None:
    status = run(container, "hello_world", {"n": 4, "fail_ratio": 0.25, "max_failure_ratio": 0.5})
    page = container.job_service.list_tasks(status["job_id"], stage=1, status="failed", limit=10, cursor=None)
    [failed] = page["tasks"]
    assert failed["attempts"] == 2 and failed["error_category"] == "transient"
    assert "fails on purpose" in failed["error"]


def test_a_busy_instance_hands_tasks_back_without_using_attempts(
    container: ServiceContainer, settings: Settings
) -> None:
    # task_max_attempts is 2 here, so two hand-backs counted as attempts would fail every task.
    status = run(container, "busy", {"n": 3})
    assert status["status"] == "completed"
    assert [run["deliveries"] for run in status["result"]["runs"].values()] == [3, 3, 3]
    assert {run["attempt"] for run in status["result"]["runs"].values()} == {1}
    rows = sql(settings, "SELECT attempts, error FROM tasks WHERE job_id = %s", (status["job_id"],))
    assert rows == [(1, None)] * 3


def test_retry_reruns_failed_tasks_and_continues(container: ServiceContainer, settings: Settings) -> None:
    FLAKY["failing"] = True
    failed = run(container, "flaky", {"n": 4})
    assert failed["status"] == "failed" and "upstream not ready" in failed["error"]
    FLAKY["failing"] = False
    try:
        retried = container.job_control.retry(failed["job_id"])
        assert retried.status == "processing" and retried.stage == 1
        done = pump_until_done(container, failed["job_id"])
    finally:
        FLAKY["failing"] = True
    assert done["status"] == "completed", done
    assert done["result"] == {"collected": ["k0", "k1", "k2", "k3"]}
    with pytest.raises(ConflictError):
        container.job_control.retry(failed["job_id"])


def test_resubmitting_a_failed_job_restarts_it(container: ServiceContainer) -> None:
    FLAKY["failing"] = True
    failed = run(container, "flaky", {"n": 3})
    assert failed["status"] == "failed"
    FLAKY["failing"] = False
    try:
        again = container.job_service.submit("flaky", {"n": 3})
        assert again.restarted and again.job.job_id == failed["job_id"]
        assert pump_until_done(container, failed["job_id"])["status"] == "completed"
    finally:
        FLAKY["failing"] = True


def test_cancel_skips_queued_tasks_and_drops_their_messages(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 40, "message": "cancel me"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    tasks = queue_client(settings, settings.task_queue)
    first = next(iter(tasks.receive_messages(max_messages=1)))
    container.task_runner.handle(TaskMessage.model_validate_json(_b64(first.content)), message_id=first.id)
    cancelled = container.job_control.cancel(job_id)
    assert cancelled.status == "cancelled"
    assert container.job_control.cancel(job_id).status == "cancelled", "cancel is idempotent"
    counts = dict(sql(settings, "SELECT status, count(*) FROM tasks WHERE job_id = %s GROUP BY status", (job_id,)))
    assert counts == {"completed": 1, "skipped": 39}
    # Late messages for the cancelled job change nothing.
    pump = QueuePump(container)
    try:
        pump.pump_once()
    finally:
        pump.close()
    assert (
        dict(sql(settings, "SELECT status, count(*) FROM tasks WHERE job_id = %s GROUP BY status", (job_id,))) == counts
    )
    done = run(container, "hello_world", {"n": 1, "message": "done"})
    with pytest.raises(ConflictError):
        container.job_control.cancel(done["job_id"])


def test_high_priority_tasks_use_their_own_queue(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 5, "message": "vip", "priority": "high"}).job.job_id
    pump = QueuePump(container)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=30)
        assert pump.delivered["tasks_high"] == 10 and pump.delivered["tasks"] == 0
    finally:
        pump.close()
    assert container.job_service.job_status(job_id)["priority"] == "high"


def test_max_parallel_tasks_bounds_queued_and_running_tasks(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit(
        "hello_world", {"n": 12, "message": "throttled", "sleep_ms": 20, "max_parallel_tasks": 3}
    ).job.job_id
    peaks: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peaks.append(
                sql(
                    settings,
                    "SELECT count(*) FROM tasks WHERE job_id = %s AND status IN ('queued', 'processing')",
                    (job_id,),
                )[0][0]
            )
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status = pump_until_done(container, job_id)
    finally:
        stop.set()
        watcher.join()
    assert status["status"] == "completed" and len(status["result"]["replies"]) == 12
    assert max(peaks) <= 3, f"at most 3 tasks in flight, saw {max(peaks)}"
    assert max(peaks) == 3


def test_dependencies_wait_and_failures_propagate(container: ServiceContainer, settings: Settings) -> None:
    parent = container.job_service.submit("hello_world", {"n": 2, "message": "parent"}).job.job_id
    child = container.job_service.submit("hello_world", {"n": 2, "message": "child", "depends_on": [parent]})
    assert child.job.status == "queued" and child.job.depends_on == [parent]
    assert sql(settings, "SELECT count(*) FROM stages WHERE job_id = %s", (child.job.job_id,)) == [(0,)]
    assert pump_until_done(container, child.job.job_id)["status"] == "completed"
    assert container.job_service.job_status(parent)["status"] == "completed"

    doomed = container.job_service.submit("hello_world", {"n": 2, "fail_ratio": 1.0}).job.job_id
    orphan = container.job_service.submit(
        "hello_world", {"n": 2, "message": "orphan", "depends_on": [doomed]}
    ).job.job_id
    status = pump_until_done(container, orphan)
    assert status["status"] == "failed" and doomed in status["error"]

    with pytest.raises(InvalidRequestError) as unknown:
        container.job_service.submit("hello_world", {"n": 2, "message": "x", "depends_on": ["a" * 64]})
    assert unknown.value.details[0]["field"] == "depends_on"


def test_invalid_messages_become_dead_letters(container: ServiceContainer, settings: Settings) -> None:
    container.dead_letters.record(ReceivedMessage("q", b"not json", "m1", 1), "message body is not valid JSON")
    container.dead_letters.reconcile_poisoned_task(ReceivedMessage("q-poison", b'{"task_id": 1}', "m2", 1))
    rows = sql(settings, "SELECT queue, reason FROM dead_letters ORDER BY dead_letter_id")
    assert rows[0] == ("q", "message body is not valid JSON")
    assert rows[1][0] == "q-poison" and "not a valid TaskMessage" in rows[1][1]


def test_poisoned_task_message_fails_the_task_and_the_job_reaches_a_terminal_state(
    container: ServiceContainer, settings: Settings
) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 3, "message": "poison"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    task_id = f"{job_id}-s1-item_0001"
    body = TaskMessage(task_id=task_id, job_id=job_id).model_dump_json().encode()
    container.dead_letters.reconcile_poisoned_task(ReceivedMessage(f"{settings.task_queue}-poison", body, "m3", 1))
    row = sql(settings, "SELECT status, error FROM tasks WHERE task_id = %s", (task_id,))[0]
    assert row[0] == "failed" and "poison" in row[1]
    assert container.job_service.job_status(job_id)["status"] == "failed"
    assert sql(settings, "SELECT count(*) FROM dead_letters WHERE task_id = %s", (task_id,)) == [(1,)]


def test_stale_and_early_job_messages_change_nothing(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 2, "message": "order"}).job.job_id
    container.orchestrator.handle(JobMessage(job_id=job_id, stage=2))  # stage 2 before stage 1: stale
    container.orchestrator.handle(JobMessage(job_id=job_id, stage=2, action=JobAction.FINALIZE))  # too early
    assert sql(settings, "SELECT status, stage FROM jobs WHERE job_id = %s", (job_id,)) == [("queued", 1)]
    assert pump_until_done(container, job_id)["status"] == "completed"


def _b64(text: str) -> bytes:
    import base64

    return base64.b64decode(text)
