"""Engine defects found by review (issue 16): non-finite values, retries of jobs that cannot run,
janitor rows that must not stop a sweep, lock order (no deadlocks), duplicate poison, outbox locks.
Real Azurite queues and a real Postgres database."""

from __future__ import annotations

import base64
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from controllers.hello_world import HelloWorldController
from devstack.postgres import PostgresDatabase
from schemas.errors import ConflictError, PermanentTaskError, RepositoryError
from schemas.jobs import JobStatus
from schemas.messages import JobAction, JobMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.contract import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec
from services.engine.dead_letters import ReceivedMessage
from services.engine.job_lifecycle import complete_job, queue_job_message
from services.engine.registry import JobTypeRegistry
from tests.support.engine import make_container, make_settings, pump_until_terminal, sql

pytestmark = pytest.mark.integration

FINALIZE_FAILURES = {"left": 0}


class OddParams(BaseModel):
    value: str = "nan"


def odd_result(ctx: TaskContext[OddParams]) -> dict[str, Any]:
    if ctx.job_parameters.value == "nul":
        return {"text": "a\x00b"}
    return {"nan": math.nan, "inf": math.inf, "ninf": -math.inf, "nested": [{"scale": math.nan}], "ok": 1.5}


class OddResults(JobController[OddParams]):
    job_type = "odd_results"
    description = "a task whose result holds non-finite floats or a NUL character"
    parameters_model = OddParams
    stages = (StageDefinition("work", odd_result),)

    def create_tasks(self, stage: int, params: OddParams, previous_results: StageResults) -> list[TaskSpec]:
        return [TaskSpec("only")]

    def failure_ratio_limit(self, params: OddParams) -> float:
        return 0.0

    def finalize(self, params: OddParams, outcome: JobOutcome) -> dict[str, Any]:
        if FINALIZE_FAILURES["left"] > 0:
            FINALIZE_FAILURES["left"] -= 1
            raise PermanentTaskError("the collection owner is missing")
        return {"result": outcome.results_by_stage["work"]["only"]}


@pytest.fixture
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        janitor_outbox_grace_seconds=0,
        janitor_lease_grace_seconds=0,
        janitor_requeue_queued_after_seconds=1,
        inline_chain_seconds=0,
    )


@pytest.fixture
def container(settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(settings, JobTypeRegistry([HelloWorldController(), OddResults()]))
    yield c
    c.close()


def run(container: ServiceContainer, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return pump_until_terminal(container, job_id, timeout=timeout)


def execute(settings: Settings, statement: str, params: tuple[Any, ...] = ()) -> None:
    with psycopg.connect(settings.postgres_conninfo(), autocommit=True) as conn:
        conn.execute(f"SET search_path TO {settings.postgres_schema}")
        conn.execute(statement, params)


def session(settings: Settings) -> psycopg.Connection[Any]:
    conn = psycopg.connect(settings.postgres_conninfo())
    conn.execute(f"SET search_path TO {settings.postgres_schema}")
    return conn


def waiting_on_locks(settings: Settings) -> int:
    rows = sql(
        settings,
        "SELECT count(*) FROM pg_locks AS l JOIN pg_stat_activity AS a USING (pid)"
        " WHERE NOT l.granted AND a.datname = current_database()",
    )
    return int(rows[0][0])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            work()
        except BaseException as exc:  # reported to the test
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def processing_job(container: ServiceContainer, settings: Settings, message: str) -> str:
    job_id = container.job_service.submit("hello_world", {"n": 1, "message": message}).job.job_id
    execute(settings, "UPDATE jobs SET status = 'processing' WHERE job_id = %s", (job_id,))
    return job_id


# --- item 6: non-finite values and values the database refuses --------------------------------------


def test_non_finite_floats_in_a_result_are_stored_as_strings(container: ServiceContainer) -> None:
    status = run(container, container.job_service.submit("odd_results", {}).job.job_id)
    assert status["status"] == "completed", status
    assert status["result"]["result"] == {
        "nan": "NaN", "inf": "Infinity", "ninf": "-Infinity", "nested": [{"scale": "NaN"}], "ok": 1.5,
    }  # fmt: skip


def test_a_result_the_database_refuses_fails_the_task_in_one_attempt_with_a_clear_reason(
    container: ServiceContainer, settings: Settings
) -> None:
    job_id = container.job_service.submit("odd_results", {"value": "nul"}).job.job_id
    status = run(container, job_id)
    assert status["status"] == "failed"
    [(attempts, error, category)] = sql(
        settings, "SELECT attempts, error, error_category FROM tasks WHERE job_id = %s", (job_id,)
    )
    assert attempts == 1 and category == "permanent"
    assert error.startswith("the task's result could not be stored: the database refused a value")
    assert "\n" not in status["error"] and "cannot be converted" not in status["error"]  # no raw server text


# --- item 7: retrying a job whose dependency failed ------------------------------------------------------


def test_a_job_whose_dependency_failed_cannot_be_retried_into_a_wait_that_never_ends(
    container: ServiceContainer, settings: Settings
) -> None:
    dependency = processing_job(container, settings, "dependency")
    dependent = container.job_service.submit("hello_world", {"n": 1, "depends_on": [dependency]}).job.job_id
    with container.db.transaction() as repo:
        from services.engine.job_lifecycle import fail_job

        fail_job(repo, dependency, "broken input")
    assert container.job_service.job_status(dependent)["status"] == "failed"
    with pytest.raises(ConflictError, match=f"dependency {dependency} ended failed: broken input"):
        container.job_control.retry(dependent)
    with pytest.raises(ConflictError, match=f"dependency {dependency} ended failed"):  # resubmitting restarts too
        container.job_service.submit("hello_world", {"n": 1, "depends_on": [dependency]})
    assert container.job_service.job_status(dependent)["status"] == "failed"


# --- item 8: a job whose parameters no longer validate does not stop the janitor -------------------------


def test_one_job_with_invalid_stored_parameters_does_not_stop_the_lease_sweep(
    container: ServiceContainer, settings: Settings
) -> None:
    broken = container.job_service.submit("hello_world", {"n": 1, "message": "broken"}).job.job_id
    healthy = container.job_service.submit("hello_world", {"n": 1, "message": "healthy"}).job.job_id
    for job_id in (broken, healthy):
        container.orchestrator.create_stage(job_id, 1)
        with container.db.statements() as repo:
            assert repo.claim_task(f"{job_id}-s1-item_0000", 60, f"m-{job_id[:8]}", 1)
    execute(settings, "UPDATE tasks SET lease_expires_at = now() - interval '1 minute', attempts = 9")
    execute(settings, 'UPDATE jobs SET parameters = \'{"n": "many"}\' WHERE job_id = %s', (broken,))
    report = container.janitor.run()
    assert report["expired_leases"] == 2, report
    states = dict(sql(settings, "SELECT job_id, status FROM jobs"))
    assert states == {broken: "failed", healthy: "failed"}  # past its attempts: failed, like any such task
    assert container.job_service.job_status(broken)["error"] == "stored job parameters no longer validate"


# --- item 9: lock order -------------------------------------------------------------------------------------


def test_two_dependencies_finishing_together_do_not_deadlock(container: ServiceContainer, settings: Settings) -> None:
    first, second = processing_job(container, settings, "one"), processing_job(container, settings, "two")
    dependent = container.job_service.submit("hello_world", {"n": 1, "depends_on": [first, second]}).job.job_id
    holder = session(settings)  # holds the dependent's row so that both completions queue up behind it
    holder.execute("SELECT 1 FROM jobs WHERE job_id = %s FOR UPDATE", (dependent,))

    def finish(job_id: str) -> Callable[[], Any]:
        def work() -> None:
            with container.db.transaction() as repo:
                repo.lock_job(job_id)
                complete_job(repo, job_id, JobStatus.COMPLETED, {}, None)

        return work

    threads = [in_thread(finish(first)), in_thread(finish(second))]
    wait_until(lambda: waiting_on_locks(settings) >= 2, "both completions to wait for the dependent's row")
    holder.commit()
    holder.close()
    for thread, errors in threads:
        thread.join(30)
        assert errors == [], errors
    starts = sql(settings, "SELECT body->>'stage' FROM outbox WHERE job_id = %s", (dependent,))
    assert starts == [("1",)], "started exactly once"


def test_a_lost_message_resend_and_a_cancel_do_not_deadlock(container: ServiceContainer, settings: Settings) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 2, "message": "forgotten"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)
    execute(settings, "DELETE FROM outbox")
    execute(settings, "UPDATE tasks SET updated_at = now() - interval '1 hour' WHERE job_id = %s", (job_id,))
    canceller = session(settings)  # a cancel: job row first, then its tasks
    canceller.execute("SELECT 1 FROM jobs WHERE job_id = %s FOR UPDATE", (job_id,))
    janitor, janitor_errors = in_thread(container.janitor.resend_lost_task_messages)
    wait_until(lambda: waiting_on_locks(settings) >= 1, "the janitor to wait for the job row")
    canceller.execute("UPDATE tasks SET status = 'skipped' WHERE job_id = %s AND status = 'queued'", (job_id,))
    canceller.execute("UPDATE jobs SET status = 'cancelled' WHERE job_id = %s", (job_id,))
    canceller.commit()
    canceller.close()
    janitor.join(30)
    assert janitor_errors == []
    assert sql(settings, "SELECT count(*) FROM outbox") == [(0,)], "nothing resent for a cancelled job"


def test_a_deadlock_is_a_transaction_conflict_not_an_outage() -> None:
    from repositories.database import translate_driver_error
    from schemas.errors import DatabaseUnavailableError, TransactionConflictError
    from services.circuit_breakers import counts_database_outage

    for error in (psycopg.errors.DeadlockDetected("deadlock"), psycopg.errors.SerializationFailure("race")):
        translated = translate_driver_error(error)
        assert isinstance(translated, TransactionConflictError)
        assert not isinstance(translated, DatabaseUnavailableError) and not counts_database_outage(translated)


# --- item 12: retry after the finalizer failed ------------------------------------------------------------


def test_a_retry_after_a_finalizer_failure_finalizes_at_once(container: ServiceContainer, settings: Settings) -> None:
    FINALIZE_FAILURES["left"] = 1
    job_id = container.job_service.submit("odd_results", {"value": "finalize"}).job.job_id
    status = run(container, job_id)
    assert status["status"] == "failed" and "finalizer failed" in status["error"]
    container.job_control.retry(job_id)  # queues the finalizer itself: this pump runs no janitor
    assert run(container, job_id, timeout=20)["status"] == "completed"


# --- item 13: a poisoned duplicate of a fan-out message ----------------------------------------------------


def test_a_poisoned_duplicate_job_message_does_not_fail_a_running_job(container: ServiceContainer) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 2, "message": "duplicate"}).job.job_id
    container.orchestrator.create_stage(job_id, 1)  # the first delivery fanned out stage 1
    body = JobMessage(job_id=job_id, stage=1, action=JobAction.CREATE_STAGE).model_dump_json()
    received = ReceivedMessage(queue="jobs-poison", body=body.encode(), message_id="dup", dequeue_count=1)
    container.dead_letters.reconcile_poisoned_job(received)
    assert container.job_service.job_status(job_id)["status"] == "processing"


# --- item 14: the outbox resend holds no locks while it sends ----------------------------------------------


def test_the_outbox_resend_holds_no_row_locks_while_it_sends(
    container: ServiceContainer, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 1, "message": "outbox"}).job.job_id
    with container.db.transaction() as repo:  # a message owed whose publisher died before sending it
        [owed] = queue_job_message(repo, job_id, 1, JobAction.CREATE_STAGE)
    message_id = owed.message_id
    sending, release = threading.Event(), threading.Event()
    publisher = container.janitor._publisher
    real_send = publisher.send_many

    def slow_send(messages: Any) -> Any:
        sending.set()
        assert release.wait(20)
        return real_send(messages)

    monkeypatch.setattr(publisher, "send_many", slow_send)
    janitor, errors = in_thread(container.janitor.republish_outbox)
    assert sending.wait(20)
    with session(settings) as other:  # e.g. the relay deleting the row it just sent, or a cancel
        other.execute("SET lock_timeout = '500ms'")
        assert other.execute("SELECT 1 FROM outbox WHERE message_id = %s FOR UPDATE", (message_id,)).fetchall()
    release.set()
    janitor.join(30)
    assert errors == [] and sql(settings, "SELECT count(*) FROM outbox") == [(0,)]


# --- item 4 (engine part): a big fan-out is inserted in batches, in one transaction -------------------------


def test_a_big_fan_out_is_inserted_in_batches_within_one_transaction(
    container: ServiceContainer, settings: Settings
) -> None:
    from repositories.engine_repository import INSERT_BATCH
    from schemas.jobs import NewTask

    job_id = container.job_service.submit("hello_world", {"n": 1, "message": "big"}).job.job_id
    count = INSERT_BATCH * 2 + 500
    tasks = [NewTask(f"{job_id}-s1-k{i:05d}", job_id, 1, f"k{i:05d}", {}, None) for i in range(count)]
    held = [i % 3 == 0 for i in range(count)]
    with container.db.transaction() as repo:
        assert repo.insert_stage(job_id, 1, "greet", count)
        repo.insert_tasks(tasks, held)
        messages = repo.add_outbox_messages("tasks", [{"i": i} for i in range(count)], job_id)
    assert len(messages) == count and [m.body["i"] for m in messages] == list(range(count))
    statuses = dict(sql(settings, "SELECT task_key, status FROM tasks WHERE job_id = %s", (job_id,)))
    assert statuses == {t.task_key: ("held" if held[i] else "queued") for i, t in enumerate(tasks)}
    with pytest.raises(RepositoryError, match="23505"), container.db.transaction() as repo:  # all or nothing
        repo.insert_stage(job_id, 2, "reply", count)
        repo.insert_tasks([NewTask(f"{job_id}-s2-k{i:05d}", job_id, 2, f"k{i:05d}", {}, None) for i in range(count)])
        repo.insert_tasks([tasks[0]])  # a duplicate key in the last batch fails the whole fan-out
    assert sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s AND stage = 2", (job_id,)) == [(0,)]


# --- item 18 (engine part): purging old poison messages leaves fresh ones to their trigger -----------------


def test_the_poison_purge_does_not_count_deliveries_of_fresh_poison_messages(
    container: ServiceContainer, settings: Settings
) -> None:
    from tests.support.engine import queue_client

    poison = queue_client(settings, f"{settings.task_queue}-poison")
    # Storage keeps insertion times to the second: the ages are kept well apart from the retention.
    expiring = make_container(settings.model_copy(update={"poison_retention_hours": 4 / 3600}))
    try:
        poison.send_message(base64.b64encode(b'{"old": true}').decode())
        time.sleep(5.5)
        for i in range(2):
            poison.send_message(base64.b64encode(f'{{"fresh": {i}}}'.encode()).decode())
        assert expiring.janitor.purge_old_poison_messages() == 1
    finally:
        expiring.close()
    left = list(poison.peek_messages(max_messages=32))
    assert len(left) == 2, left
    assert all(not m.dequeue_count for m in left), "a fresh poison message was received (a delivery counted)"
