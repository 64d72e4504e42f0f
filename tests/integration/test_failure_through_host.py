"""Failure paths through the local Functions host: poison-queue triggers, dead letters, the janitor
timer, an always-failing handler, cancel/retry over HTTP."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Iterator

import pytest

from devstack.postgres import PostgresDatabase
from schemas.messages import TaskMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from tests.support.engine import make_container, make_settings, queue_client, sql
from tests.support.host import RunningHost, start_host

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        janitor_schedule="*/2 * * * * *",
        janitor_outbox_grace_seconds=1,
        task_max_attempts=3,
    )


@pytest.fixture(scope="module")
def host(host_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    running = start_host(host_settings, workers=2, log_path=tmp_path_factory.mktemp("host") / "host.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def container(host_settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(host_settings)
    yield c
    c.close()


def wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.2)


def test_an_always_failing_handler_ends_the_job_within_the_retry_budget(host: RunningHost) -> None:
    started = time.monotonic()
    code, body = host.request("POST", "/jobs/hello_world", {"n": 5, "fail_ratio": 1.0})
    assert code == 202
    status = host.wait_for_job(body["job_id"], timeout=60)
    elapsed = time.monotonic() - started
    assert status["status"] == "failed" and "fails on purpose" in status["error"]
    # 3 attempts with backoff of at most 0.2 s, plus polling: far inside maxDequeueCount x backoff + 30 s.
    assert elapsed < 5 * 2 + 30
    code, tasks = host.request("GET", f"/jobs/{body['job_id']}/tasks?stage=1&status=failed")
    assert code == 200 and tasks["tasks"] and all(t["attempts"] == 3 for t in tasks["tasks"])


def test_poison_queue_trigger_fails_the_task_and_finishes_the_job(
    host: RunningHost, host_settings: Settings, container: ServiceContainer
) -> None:
    job_id = container.job_service.submit("hello_world", {"n": 2, "message": "poisoned", "sleep_ms": 3000}).job.job_id
    wait_for(lambda: sql(host_settings, "SELECT count(*) FROM tasks WHERE job_id = %s", (job_id,))[0][0] == 2)
    # As if the host had given up on item_0001's message after maxDequeueCount deliveries.
    poison = queue_client(host_settings, f"{host_settings.task_queue}-poison")
    body = TaskMessage(task_id=f"{job_id}-s1-item_0001", job_id=job_id).model_dump_json()
    poison.send_message(base64.b64encode(body.encode()).decode())
    status = host.wait_for_job(job_id, timeout=60)
    assert status["status"] == "failed"
    assert "poison" in status["error"]
    assert sql(host_settings, "SELECT count(*) FROM dead_letters WHERE job_id = %s", (job_id,)) == [(1,)]


def test_invalid_messages_are_recorded_and_removed_not_looped(host: RunningHost, host_settings: Settings) -> None:
    jobs = queue_client(host_settings, host_settings.job_queue)
    jobs.send_message(base64.b64encode(b"this is not json").decode())
    jobs.send_message(base64.b64encode(b'{"job_id": "nope", "stage": 1}').decode())
    wait_for(
        lambda: (
            sql(host_settings, "SELECT count(*) FROM dead_letters WHERE queue = %s", (host_settings.job_queue,))[0][0]
            == 2
        )
    )
    reasons = [
        r[0]
        for r in sql(
            host_settings, "SELECT reason FROM dead_letters WHERE queue = %s ORDER BY 1", (host_settings.job_queue,)
        )
    ]
    assert reasons == [
        "message body is not valid JSON",
        "not a valid JobMessage: job_id: String should match pattern '^[0-9a-f]{64}$'",
    ]
    wait_for(lambda: jobs.get_queue_properties().approximate_message_count == 0)
    assert not list(queue_client(host_settings, f"{host_settings.job_queue}-poison").peek_messages()), "nothing looped"


def test_janitor_timer_republishes_an_unsent_outbox_row(
    host: RunningHost, host_settings: Settings, container: ServiceContainer
) -> None:
    code, body = host.request("POST", "/jobs/hello_world", {"n": 1, "message": "janitor"})
    assert code == 202 and host.wait_for_job(body["job_id"])["status"] == "completed"
    # A stage-less job whose first message never left the outbox (publisher died after commit).
    with container.db.transaction() as repo:
        job = repo.insert_job(
            "b" * 64,
            "hello_world",
            {"n": 2, "message": "orphaned", "fail_ratio": 0.0, "max_failure_ratio": None, "sleep_ms": 0},
            2,
        )
        assert job is not None
        repo.add_outbox_messages("jobs", [{"job_id": "b" * 64, "stage": 1}], "b" * 64)
    assert host.wait_for_job("b" * 64, timeout=60)["status"] == "completed"
    assert sql(host_settings, "SELECT count(*) FROM outbox") == [(0,)]


def test_cancel_and_retry_over_http(host: RunningHost) -> None:
    code, body = host.request("POST", "/jobs/hello_world", {"n": 30, "message": "cancel-http", "sleep_ms": 200})
    assert code == 202
    code, cancelled = host.request("POST", f"/jobs/{body['job_id']}/cancel")
    assert code == 200 and cancelled["status"] == "cancelled"
    status = host.wait_for_job(body["job_id"])
    assert status["status"] == "cancelled"
    code, again = host.request("POST", f"/jobs/{body['job_id']}/cancel")
    assert code == 200 and again["status"] == "cancelled"
    code, retried = host.request("POST", f"/jobs/{body['job_id']}/retry")
    assert code == 202 and retried["status"] in ("processing", "queued")
    assert host.wait_for_job(body["job_id"], timeout=90)["status"] == "completed"
    code, conflict = host.request("POST", f"/jobs/{body['job_id']}/cancel")
    assert code == 409 and "already completed" in conflict["error"]
    code, _ = host.request("POST", f"/jobs/{'0' * 64}/retry")
    assert code == 404


def test_a_high_priority_job_overtakes_a_bulk_backlog(host: RunningHost) -> None:
    code, bulk = host.request("POST", "/jobs/hello_world", {"n": 1000, "message": "bulk", "sleep_ms": 400})
    assert code == 202
    time.sleep(1.0)  # the bulk job's 400 tasks are queued ahead
    code, urgent = host.request("POST", "/jobs/hello_world", {"n": 3, "message": "urgent", "priority": "high"})
    assert code == 202
    urgent_status = host.wait_for_job(urgent["job_id"], timeout=60)
    code, bulk_status = host.request("GET", f"/jobs/{bulk['job_id']}")
    assert urgent_status["status"] == "completed" and urgent_status["priority"] == "high"
    assert bulk_status["status"] == "processing", "the urgent job finished while the backlog was still running"
    code, _ = host.request("POST", f"/jobs/{bulk['job_id']}/cancel")
    assert code == 200
