"""The janitor recovers lost messages, crashed instances and unclosed stages; jobs survive
Postgres connections being killed mid-job. Real Azurite, real Postgres."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from controllers.hello_world import HelloWorldController
from devstack.postgres import PostgresDatabase
from repositories.database import Database
from schemas.messages import TaskMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.engine.registry import JobTypeRegistry
from tests.support.engine import (
    make_container,
    make_settings,
    pump_until_terminal,
    queue_client,
    sql,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        janitor_outbox_grace_seconds=0,
        janitor_lease_grace_seconds=0,
        janitor_requeue_queued_after_seconds=1,
        janitor_stalled_job_after_seconds=1,
        task_lease_seconds=5,
    )


KILLS_DONE = threading.Event()


class WaitParams(BaseModel):
    n: int = 40


def wait_for_kills(ctx: TaskContext[WaitParams]) -> dict[str, Any]:
    """Holds every task until the connection killer is done: the work outlasts the kills by construction."""
    assert KILLS_DONE.wait(60), "the killer never finished"
    return {"key": ctx.task_key}


class OutlastsKills(JobController[WaitParams]):
    job_type = "outlasts_kills"
    description = "n tasks that finish only after the test's connection killer is done"
    parameters_model = WaitParams
    stages = (StageDefinition("wait", wait_for_kills),)

    def create_tasks(self, stage: int, params: WaitParams, previous_results: StageResults) -> list[TaskSpec]:
        return [TaskSpec(f"k{i:02d}") for i in range(params.n)]

    def finalize(self, params: WaitParams, outcome: JobOutcome) -> dict[str, Any]:
        return {"keys": sorted(outcome.results_by_stage["wait"])}


@pytest.fixture
def container(settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(settings, JobTypeRegistry([HelloWorldController(), OutlastsKills()]))
    yield c
    c.close()


def execute(settings: Settings, statement: str, params: tuple[object, ...] | None = None) -> None:
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"SET search_path TO {settings.postgres_schema}")
        conn.execute(statement, params)


def drain(settings: Settings, queue: str) -> int:
    client = queue_client(settings, queue)
    n = 0
    while batch := list(client.receive_messages(max_messages=32)):
        for m in batch:
            client.delete_message(m)
            n += 1
    return n


def finish(container: ServiceContainer, job_id: str, janitor_every: float | None = None, timeout: float = 60) -> dict:
    return pump_until_terminal(container, job_id, timeout=timeout, janitor_every=janitor_every)


def test_unsent_outbox_rows_are_republished(container: ServiceContainer, settings: Settings) -> None:
    # A publisher that died between commit and send: the row is in the outbox, no message exists.
    job_id = container.job_service.submit("hello_world", {"n": 3, "message": "outbox"}).job.job_id
    assert drain(settings, settings.job_queue) == 1
    with container.db.transaction() as repo:
        repo.add_outbox_messages("jobs", [{"job_id": job_id, "stage": 1}], job_id)
    report = container.janitor.run()
    assert report["outbox_republished"] == 1
    assert sql(settings, "SELECT count(*) FROM outbox") == [(0,)]
    assert finish(container, job_id)["status"] == "completed"


def test_tasks_of_a_crashed_instance_are_requeued(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 4, "message": "crash"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    drain(settings, settings.job_queue)
    assert drain(settings, settings.task_queue) == 4  # the messages die with the instance
    with container.db.transaction() as repo:
        for i in range(4):
            assert repo.claim_task(f"{job_id}-s1-item_{i:04d}", 5, f"dead-{i}", 1) is not None
    execute(settings, "UPDATE tasks SET lease_expires_at = now() - interval '1 minute' WHERE job_id = %s", (job_id,))
    report = container.janitor.run()
    assert report["expired_leases"] == 4
    status = finish(container, job_id)
    assert status["status"] == "completed" and len(status["result"]["replies"]) == 4


def test_lost_task_messages_are_resent(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 3, "message": "lost"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    assert drain(settings, settings.task_queue) == 3
    time.sleep(1.2)
    assert container.janitor.run()["lost_task_messages_resent"] == 3
    assert finish(container, job_id)["status"] == "completed"


def test_stages_left_open_are_repaired_and_stalled_jobs_resume(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 2, "message": "repair"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    drain(settings, settings.job_queue)
    drain(settings, settings.task_queue)
    # Tasks finished but the counters never closed the stage (e.g. a bug or a manual fix).
    execute(
        settings,
        'UPDATE tasks SET status = \'completed\', result = \'{"index": 0, "greeting": "g"}\' WHERE job_id = %s',
        (job_id,),
    )
    assert container.janitor.run()["stages_repaired"] == 1
    assert sql(settings, "SELECT stage FROM jobs WHERE job_id = %s", (job_id,)) == [(2,)]
    # Now lose the stage-2 fan-out message too: the stalled-job sweep re-sends it.
    drain(settings, settings.job_queue)
    execute(settings, "DELETE FROM outbox")
    time.sleep(1.2)
    assert container.janitor.run()["stalled_jobs_resumed"] == 1
    assert finish(container, job_id)["status"] == "completed"


def test_a_job_survives_postgres_connections_being_killed(container: ServiceContainer, settings: Settings) -> None:
    KILLS_DONE.clear()
    job_id = container.job_service.submit("outlasts_kills", {"n": 40}).job.job_id
    kills = 0
    stop = threading.Event()

    def killer() -> None:
        nonlocal kills
        try:
            while not stop.wait(0.5) and kills < 4:
                with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND application_name = 'geoetl' AND pid <> pg_backend_pid()"
                    )
                kills += 1
        finally:
            KILLS_DONE.set()  # only now may the tasks finish

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        # The janitor runs as its timer would: a commit whose acknowledgement was lost to a killed
        # connection leaves its outbox rows for it to republish.
        status = finish(container, job_id, janitor_every=2.0, timeout=150)
    finally:
        stop.set()
        thread.join()
    assert kills == 4
    assert status["status"] == "completed", status
    assert status["result"]["keys"] == [f"k{i:02d}" for i in range(40)]


def test_a_message_arriving_while_postgres_is_unreachable_is_deferred(settings: Settings) -> None:
    broken = make_container(
        settings.model_copy(update={"postgres_port": 1, "db_connect_timeout_seconds": 1, "db_pool_timeout_seconds": 2})
    )
    healthy = make_container(settings)
    try:
        job_id = healthy.job_service.submit("hello_world", {"n": 1, "message": "deferred"}).job.job_id
        healthy.orchestrator.create_stage(job_id, 1)
        drain(settings, settings.job_queue)
        client = queue_client(settings, settings.task_queue)
        [message] = list(client.receive_messages(max_messages=1))
        client.delete_message(message)
        task = TaskMessage(task_id=f"{job_id}-s1-item_0000", job_id=job_id)
        broken.task_runner.handle(task, message_id=message.id, dequeue_count=1)
        # The message was sent again with a delay, marked as deferred once.
        deadline = time.monotonic() + 10
        again: list = []
        while not again and time.monotonic() < deadline:
            again = list(client.receive_messages(max_messages=1))
            time.sleep(0.2)
        assert again, "deferred message came back"
        body = TaskMessage.model_validate_json(__import__("base64").b64decode(again[0].content))
        assert body.deferrals == 1 and body.origin_message_id == message.id
    finally:
        broken.close()
        healthy.close()


def test_repository_breaker_opens_and_fails_fast(settings: Settings) -> None:
    broken = make_container(
        settings.model_copy(
            update={
                "postgres_port": 1,
                "circuit_fail_max": 2,
                "circuit_reset_seconds": 30,
                "db_pool_timeout_seconds": 1,
            }
        )
    )
    try:
        from schemas.errors import DatabaseUnavailableError

        for _ in range(2):
            with pytest.raises(DatabaseUnavailableError), broken.db.transaction():
                pass
        assert broken.breaker("postgres").current_state == "open"
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailableError, match="circuit open"), broken.db.transaction():
            pass
        assert time.monotonic() - started < 0.5, "an open circuit fails fast"
    finally:
        broken.close()


def test_lease_keeper_renews_leases_of_running_tasks_only(container: ServiceContainer, settings: Settings) -> None:
    from services.engine.lease_keeper import LeaseKeeper

    job_id = container.job_service.submit("hello_world", {"n": 2, "message": "lease"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    running, idle = f"{job_id}-s1-item_0000", f"{job_id}-s1-item_0001"
    with container.db.transaction() as repo:
        claimed = repo.claim_task(running, 5, "m-run", 1)
        assert claimed and repo.claim_task(idle, 5, "m-idle", 1)
    execute(settings, "UPDATE tasks SET lease_expires_at = now() + interval '1 second' WHERE job_id = %s", (job_id,))
    keeper = LeaseKeeper(container.db, lease_seconds=60)
    with keeper.kept(running, claimed.task.claim_token):
        assert keeper.renew_now() == 1
    assert keeper.active() == []
    leases = dict(
        sql(
            settings,
            "SELECT task_id, lease_expires_at > now() + interval '30 seconds' FROM tasks WHERE job_id = %s",
            (job_id,),
        )
    )
    assert leases == {running: True, idle: False}


def test_killed_idle_connections_are_replaced_without_waiting(settings: Settings) -> None:
    db = Database(settings.postgres_conninfo(), schema=settings.postgres_schema, min_size=3, max_size=3)
    try:
        held = [db.pool.getconn() for _ in range(3)]
        pids = [conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"] for conn in held]  # type: ignore[index,call-overload]
        for conn in held:
            db.pool.putconn(conn)
        with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        time.sleep(0.2)  # the server's termination notices reach the idle sockets
        started = time.monotonic()
        with db.statements() as repo:
            assert repo.get_job("0" * 64) is None
        # All three idle connections were dead: each was dropped at once (the pool's own check
        # would have slept 1 s, then 2 s, between them) and a new one served the statement.
        assert time.monotonic() - started < 1.5
        assert db.pool.get_stats()["returns_bad"] == 3
    finally:
        db.close()
