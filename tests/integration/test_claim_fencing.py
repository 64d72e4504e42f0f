"""Claims are fenced: every outcome write of a delivery proves it still holds the task's claim.

A delivery whose lease lapsed and was taken over can neither complete, re-queue nor renew the task
the new holder runs; a failed job keeps no open task; a failed inline run gives its task back at once.
Real Azurite queues and a real Postgres database; deliveries are driven by hand to order them.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from devstack.postgres import PostgresDatabase
from schemas.errors import PermanentTaskError, TransientTaskError
from schemas.messages import JobMessage, TaskMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.engine.registry import JobTypeRegistry
from tests.support.engine import QueuePump, make_container, make_settings, queue_client, sql

pytestmark = pytest.mark.integration


class Script:
    """What each attempt of the test task does: wait for its gate, then succeed or raise."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.gates: dict[tuple[str, int], threading.Event] = {}
        self.raises: dict[tuple[str, int], Exception] = {}
        self.broken_policy_calls = 0

    def gate(self, key: str, attempt: int) -> threading.Event:
        return self.gates.setdefault((key, attempt), threading.Event())


SCRIPT = Script()


class GatedParams(BaseModel):
    keys: list[str] = ["only"]
    break_policy_once: bool = False


def gated(ctx: TaskContext[GatedParams]) -> dict[str, Any]:
    gate = SCRIPT.gates.get((ctx.task_key, ctx.attempt))
    if gate is not None:
        assert gate.wait(30), "gate never opened"
    error = SCRIPT.raises.get((ctx.task_key, ctx.attempt))
    if error is not None:
        raise error
    return {"attempt": ctx.attempt}


class GatedJob(JobController[GatedParams]):
    job_type = "gated"
    description = "tasks whose attempts are scripted by the test"
    parameters_model = GatedParams
    stages = (StageDefinition("work", gated), StageDefinition("more", gated))

    def create_tasks(self, stage: int, params: GatedParams, previous_results: StageResults) -> list[TaskSpec]:
        return [TaskSpec(key) for key in params.keys]

    def failure_ratio_limit(self, params: GatedParams) -> float:
        if params.break_policy_once and SCRIPT.broken_policy_calls == 0:
            SCRIPT.broken_policy_calls += 1
            raise RuntimeError("a bug in the job type's failure policy")
        return 0.0

    def finalize(self, params: GatedParams, outcome: JobOutcome) -> dict[str, Any]:
        return {"attempts": {k: v["attempt"] for k, v in outcome.results_by_stage["more"].items()}}


@pytest.fixture
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, task_max_attempts=5, task_lease_seconds=300)


@pytest.fixture
def container(settings: Settings) -> Iterator[ServiceContainer]:
    SCRIPT.reset()
    c = make_container(settings, JobTypeRegistry([GatedJob()]))
    yield c
    c.close()


def fan_out(container: ServiceContainer, settings: Settings, body: dict[str, Any]) -> tuple[str, list[TaskMessage]]:
    """Submit, run the first fan-out without the work chain, and take the task messages it queued."""
    job_id = container.job_service.submit("gated", body).job.job_id
    jobs = queue_client(settings, settings.job_queue)
    [message] = list(jobs.receive_messages(max_messages=32))
    container.orchestrator.handle(JobMessage.model_validate_json(base64.b64decode(message.content)))
    jobs.delete_message(message)
    tasks = queue_client(settings, settings.task_queue)
    received = list(tasks.receive_messages(max_messages=32, visibility_timeout=300))
    for m in received:
        tasks.delete_message(m)
    return job_id, [TaskMessage.model_validate_json(base64.b64decode(m.content)) for m in received]


def key_of(message: TaskMessage) -> str:
    return message.task_id.rsplit("-", 1)[-1]  # task ids are <job_id>-s<stage>-<task_key>


def deliver(container: ServiceContainer, message: TaskMessage, message_id: str) -> threading.Thread:
    thread = threading.Thread(
        target=container.task_runner.handle, args=(message,), kwargs={"message_id": message_id}, daemon=True
    )
    thread.start()
    return thread


def task_row(settings: Settings, task_id: str) -> dict[str, Any]:
    [row] = sql(
        settings,
        "SELECT status, attempts, result, claim_token, lease_expires_at FROM tasks WHERE task_id = %s",
        (task_id,),
    )
    return dict(zip(("status", "attempts", "result", "claim_token", "lease_expires_at"), row, strict=True))


def wait_for(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def take_over(
    container: ServiceContainer, settings: Settings, message: TaskMessage
) -> tuple[threading.Thread, threading.Thread]:
    """Delivery A holds attempt 1; its lease lapses; delivery B (another message) claims attempt 2."""
    SCRIPT.gate(key_of(message), 1)
    SCRIPT.gate(key_of(message), 2)
    first = deliver(container, message, "delivery-a")
    wait_for(lambda: task_row(settings, message.task_id)["attempts"] == 1, "delivery A's claim")
    sql(settings, "UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id = %s RETURNING 1",
        (message.task_id,))  # fmt: skip
    second = deliver(container, message, "delivery-b")
    wait_for(lambda: task_row(settings, message.task_id)["attempts"] == 2, "delivery B's claim")
    return first, second


def finish_job(container: ServiceContainer, job_id: str) -> dict[str, Any]:
    pump = QueuePump(container)
    try:
        pump.run_until(lambda: container.job_service.job_status(job_id)["status"] != "processing", timeout=60)
    finally:
        pump.close()
    return container.job_service.job_status(job_id)


def test_a_delivery_that_lost_its_claim_cannot_complete_the_task(
    container: ServiceContainer, settings: Settings
) -> None:
    _, [message] = fan_out(container, settings, {})
    first, second = take_over(container, settings, message)
    holder = task_row(settings, message.task_id)
    SCRIPT.gates[(key_of(message), 1)].set()  # A's handler returns a result computed under a lost claim
    first.join(30)
    after_a = task_row(settings, message.task_id)
    assert after_a["status"] == "processing" and after_a["result"] is None, after_a
    assert after_a["claim_token"] == holder["claim_token"]
    SCRIPT.gates[(key_of(message), 2)].set()
    second.join(30)
    assert task_row(settings, message.task_id)["result"] == {"attempt": 2}


def test_a_delivery_that_lost_its_claim_cannot_requeue_or_renew_the_task(
    container: ServiceContainer, settings: Settings
) -> None:
    _, [message] = fan_out(container, settings, {})
    SCRIPT.raises[(key_of(message), 1)] = TransientTaskError("upstream hiccup")
    first, second = take_over(container, settings, message)
    holder = task_row(settings, message.task_id)
    with container.db.statements() as repo:
        stale_token = next(iter(sql(settings, "SELECT gen_random_uuid()")))[0]
        assert repo.renew_task_leases([(message.task_id, stale_token)], 600) == 0
    SCRIPT.gates[(key_of(message), 1)].set()  # A fails transiently: it must not re-queue B's task
    first.join(30)
    after_a = task_row(settings, message.task_id)
    assert after_a["status"] == "processing" and after_a["claim_token"] == holder["claim_token"], after_a
    assert after_a["lease_expires_at"] == holder["lease_expires_at"]
    assert not list(queue_client(settings, settings.task_queue).peek_messages(max_messages=32)), "no retry message"
    SCRIPT.gates[(key_of(message), 2)].set()
    second.join(30)
    assert task_row(settings, message.task_id)["status"] == "completed"


def test_a_failed_job_keeps_no_open_task_or_stage(container: ServiceContainer, settings: Settings) -> None:
    job_id, messages = fan_out(container, settings, {"keys": ["bad", "slow"]})
    by_key = {key_of(m): m for m in messages}
    SCRIPT.raises[("bad", 1)] = PermanentTaskError("corrupt input")
    SCRIPT.raises[("slow", 1)] = TransientTaskError("retry me later")
    slow = deliver(container, by_key["slow"], "slow-delivery")
    SCRIPT.gate("slow", 1)
    wait_for(lambda: task_row(settings, by_key["slow"].task_id)["attempts"] == 1, "the slow task's claim")
    container.task_runner.handle(by_key["bad"], message_id="bad-delivery")  # fails the job (ratio limit 0)
    assert container.job_service.job_status(job_id)["status"] == "failed"
    SCRIPT.gates[("slow", 1)].set()  # now the slow task fails transiently: a retry of a failed job's task
    slow.join(30)
    open_tasks = sql(settings, "SELECT task_key, status FROM tasks WHERE job_id = %s AND status IN "
                     "('held', 'queued', 'processing')", (job_id,))  # fmt: skip
    open_stages = sql(settings, "SELECT stage FROM stages WHERE job_id = %s AND status <> 'completed'", (job_id,))
    assert open_tasks == [] and open_stages == []
    assert task_row(settings, by_key["slow"].task_id)["status"] == "skipped"


def test_a_failed_inline_run_gives_its_task_back_at_once(
    container: ServiceContainer, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = container.job_service.submit("gated", {"break_policy_once": True}).job.job_id
    pump = QueuePump(container)  # the work chain runs stage 1's task inline after the fan-out
    try:  # well within the 300 s lease: the claim was released, not stranded until it lapsed
        pump.run_until(lambda: container.job_service.job_status(job_id)["status"] == "completed", timeout=30)
    finally:
        pump.close()
    assert SCRIPT.broken_policy_calls == 1
    [(attempts,)] = sql(settings, "SELECT attempts FROM tasks WHERE job_id = %s AND stage = 1", (job_id,))
    assert attempts == 2
    assert "inline run failed; claim released and the task queued again" in caplog.text
    assert container.job_service.job_status(job_id)["result"] == {"attempts": {"only": 1}}
