"""Operator endpoints (/api/queues, /api/dead-letters, /api/poison, /api/stats) end to end through the
local Functions host, and the live poison-queue operations against queues no host listens to (the
host's poison triggers would reconcile a message before a test could look at it)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devstack.postgres import PostgresDatabase
from schemas.errors import InvalidRequestError
from schemas.messages import JobMessage, TaskMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from tests.support.engine import make_container, make_settings, queue_client, sql
from tests.support.host import RunningHost, start_host

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def host_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, task_max_attempts=2)


@pytest.fixture(scope="module")
def host(host_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    running = start_host(host_settings, workers=2, log_path=tmp_path_factory.mktemp("host") / "host.log")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def quiet_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    """Queues and a schema no host serves."""
    return make_settings(azurite_connection_string, postgres_database)


@pytest.fixture(scope="module")
def quiet(quiet_settings: Settings) -> Iterator[ServiceContainer]:
    services = make_container(quiet_settings)
    yield services
    services.close()


def wait_for(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.2)


def encoded(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def dead_letters_of(host: RunningHost, job_id: str) -> list[dict[str, Any]]:
    code, body = host.request("GET", "/dead-letters?limit=500")
    assert code == 200, body
    return [d for d in body["dead_letters"] if d["job_id"] == job_id]


def failed_job(host: RunningHost, message: str) -> str:
    """A hello_world job whose first greeting always fails: the job ends failed."""
    code, body = host.request("POST", "/jobs/hello_world", {"n": 2, "fail_ratio": 0.5, "message": message})
    assert code == 202, body
    status = host.wait_for_job(body["job_id"], timeout=60)
    assert status["status"] == "failed", status
    return str(body["job_id"])


def poison_dead_letter(host: RunningHost, settings: Settings, job_id: str, task_key: str) -> dict[str, Any]:
    """As if the host had given up on a task message: its poison trigger records a dead letter."""
    poison = queue_client(settings, f"{settings.task_queue}-poison")
    body = TaskMessage(task_id=f"{job_id}-s1-{task_key}", job_id=job_id).model_dump_json()
    poison.send_message(encoded(body))
    letters = wait_for(lambda: dead_letters_of(host, job_id))
    return letters[0]


# --- queues -----------------------------------------------------------------------------------


def test_queues_lists_every_queue_and_its_poison_queue(host: RunningHost, host_settings: Settings) -> None:
    code, body = host.request("GET", "/queues")
    assert code == 200, body
    by_name = {q["name"]: q for q in body["queues"]}
    s = host_settings
    expected = {
        s.job_queue: ("jobs", False),
        f"{s.job_queue}-poison": ("jobs", True),
        s.task_queue: ("tasks", False),
        f"{s.task_queue}-poison": ("tasks", True),
        s.high_priority_task_queue: ("tasks_high", False),
        f"{s.high_priority_task_queue}-poison": ("tasks_high", True),
        s.webhook_queue: ("webhooks", False),
        f"{s.webhook_queue}-poison": ("webhooks", True),
    }
    assert set(by_name) == set(expected)
    for name, (role, poison) in expected.items():
        entry = by_name[name]
        assert (entry["role"], entry["poison"]) == (role, poison)
        assert isinstance(entry["approximate_messages"], int) and entry["approximate_messages"] >= 0
        age = entry["oldest_message_age_seconds"]
        assert age is None or age >= 0


def test_queue_state_counts_messages_and_the_oldest_age(quiet: ServiceContainer, quiet_settings: Settings) -> None:
    jobs = queue_client(quiet_settings, quiet_settings.job_queue)
    jobs.send_message(encoded('{"first": 1}'))
    time.sleep(1.1)
    jobs.send_message(encoded('{"second": 2}'))
    queues = {q["name"]: q for q in quiet.operations.queues()["queues"]}
    job_queue = queues[quiet_settings.job_queue]
    assert job_queue["approximate_messages"] == 2
    assert job_queue["oldest_message_age_seconds"] >= 1.0, "the front (oldest) message is peeked"
    missing = queues[f"{quiet_settings.high_priority_task_queue}-poison"]
    assert missing["approximate_messages"] == 0 and missing["oldest_message_age_seconds"] is None
    jobs.clear_messages()


# --- live poison messages -----------------------------------------------------------------------


def test_poison_messages_are_peeked_moved_back_and_purged(quiet: ServiceContainer, quiet_settings: Settings) -> None:
    ops = quiet.operations
    source_name = quiet_settings.task_queue
    poison_name = f"{source_name}-poison"
    poison, source = queue_client(quiet_settings, poison_name), queue_client(quiet_settings, source_name)
    bodies = [f'{{"n": {i}}}' for i in range(3)]
    for text in bodies:
        poison.send_message(encoded(text))
    poison.send_message("not base64 at all!")

    peeked = ops.poison_messages(poison_name)["messages"]
    assert sorted(m["body"] for m in peeked) == sorted([*bodies, "not base64 at all!"])
    assert all(m["message_id"] and m["inserted_on"] and m["dequeue_count"] == 0 for m in peeked)

    report = ops.requeue_poison(poison_name)
    assert report == {"queue": poison_name, "source_queue": source_name, "requeued": 4, "failed": 0, "remaining": 0}
    assert not list(poison.peek_messages(max_messages=32))
    moved = [m.content for m in source.peek_messages(max_messages=32)]
    assert sorted(moved) == sorted([*(encoded(b) for b in bodies), "not base64 at all!"]), "moved byte for byte"
    source.clear_messages()

    for text in bodies:
        poison.send_message(encoded(text))
    assert ops.purge_poison(poison_name) == {"queue": poison_name, "deleted": 3, "failed": 0, "remaining": 0}
    assert ops.poison_messages(poison_name)["messages"] == []


@pytest.mark.parametrize("name", ["azure-webjobs-hosts", "bogus", "", "{job}-poison"])
def test_only_the_three_poison_queues_are_accepted(quiet: ServiceContainer, name: str) -> None:
    for operation in (quiet.operations.poison_messages, quiet.operations.requeue_poison, quiet.operations.purge_poison):
        with pytest.raises(InvalidRequestError) as raised:
            operation(name)
        assert raised.value.details[0]["field"] == "queue"


def test_poison_routes_over_http(host: RunningHost, host_settings: Settings) -> None:
    poison_name = f"{host_settings.high_priority_task_queue}-poison"
    code, body = host.request("GET", f"/poison/{poison_name}")
    assert code == 200 and body["queue"] == poison_name and isinstance(body["messages"], list)
    code, body = host.request("POST", f"/poison/{poison_name}/requeue")
    assert code == 200 and body["source_queue"] == host_settings.high_priority_task_queue
    assert {"requeued", "failed", "remaining"} <= set(body)
    code, body = host.request("DELETE", f"/poison/{poison_name}")
    assert code == 200 and {"deleted", "failed", "remaining"} <= set(body)
    for method, path in (
        ("GET", "/poison/azure-webjobs-hosts"),
        ("POST", "/poison/azure-webjobs-blobtrigger-poison/requeue"),
        ("DELETE", f"/poison/{host_settings.task_queue}"),
    ):
        code, body = host.request(method, path)
        assert code == 400, (method, path, body)
        assert body["details"][0]["field"] == "queue"


# --- dead letters -------------------------------------------------------------------------------


def test_requeue_of_a_poisoned_task_retries_its_job(host: RunningHost, host_settings: Settings) -> None:
    job_id = failed_job(host, "requeue")
    letter = poison_dead_letter(host, host_settings, job_id, "item_0000")
    assert letter["status"] == "open" and letter["requeued_at"] is None
    assert letter["task_id"] == f"{job_id}-s1-item_0000" and letter["queue"] == f"{host_settings.task_queue}-poison"
    assert "TaskMessage" not in letter["reason"] and letter["body"] and letter["created_at"]
    before = sql(host_settings, "SELECT completed_at FROM jobs WHERE job_id = %s", (job_id,))[0][0]

    code, body = host.request("POST", f"/dead-letters/{letter['id']}/requeue")
    assert code == 202, body
    assert body["action"] == "job_retried" and body["job_id"] == job_id and body["status"] == "requeued"
    assert body["job_status"] == "processing"
    # The retry ran the failed greeting again (it fails on purpose again): the job ends failed anew.
    status = host.wait_for_job(job_id, timeout=60)
    assert status["status"] == "failed"
    after = sql(host_settings, "SELECT completed_at FROM jobs WHERE job_id = %s", (job_id,))[0][0]
    assert after > before, "the job ran again"

    code, body = host.request("GET", "/dead-letters?status=requeued&limit=500")
    assert code == 200 and letter["id"] in {d["id"] for d in body["dead_letters"]}
    requeued = next(d for d in body["dead_letters"] if d["id"] == letter["id"])
    assert requeued["status"] == "requeued" and requeued["requeued_at"]
    code, body = host.request("GET", "/dead-letters?status=open&limit=500")
    assert code == 200 and letter["id"] not in {d["id"] for d in body["dead_letters"]}

    code, body = host.request("POST", f"/dead-letters/{letter['id']}/requeue")
    assert code == 409 and "already requeued" in body["error"]


def test_requeue_is_refused_while_the_job_runs_or_when_the_message_still_does_not_parse(
    host: RunningHost, host_settings: Settings
) -> None:
    code, submitted = host.request("POST", "/jobs/hello_world", {"n": 1, "sleep_ms": 4000, "message": "busy"})
    assert code == 202
    job_id = submitted["job_id"]
    wait_for(lambda: host.request("GET", f"/jobs/{job_id}")[1]["status"] == "processing")
    letter = poison_dead_letter(host, host_settings, job_id, "item_0099")  # unknown task: recorded, job untouched
    code, body = host.request("POST", f"/dead-letters/{letter['id']}/requeue")
    assert code == 409 and "processing" in body["error"], body
    assert "\n" not in body["error"]

    jobs = queue_client(host_settings, host_settings.job_queue)
    jobs.send_message(encoded(json.dumps({"job_id": job_id, "stage": 1, "bogus": True})))
    bad = wait_for(
        lambda: [
            d
            for d in host.request("GET", "/dead-letters?status=open")[1]["dead_letters"]
            if '"bogus": true' in d["body"]
        ]
    )[0]
    assert bad["job_id"] is None and bad["queue"] == host_settings.job_queue
    code, body = host.request("POST", f"/dead-letters/{bad['id']}/requeue")
    assert code == 409 and "still does not parse" in body["error"], body
    host.wait_for_job(job_id, timeout=60)


def test_requeue_resends_a_message_that_parses_now(host: RunningHost, host_settings: Settings) -> None:
    code, submitted = host.request("POST", "/jobs/hello_world", {"n": 1, "message": "resend"})
    assert code == 202
    job_id = submitted["job_id"]
    assert host.wait_for_job(job_id)["status"] == "completed"
    # Dead-lettered by an older version that did not know this message shape; it parses now.
    body = JobMessage(job_id=job_id, stage=2).model_dump_json()
    [(letter_id,)] = sql(
        host_settings,
        "INSERT INTO dead_letters (queue, body, reason) VALUES (%s, %s, 'not a valid JobMessage') "
        "RETURNING dead_letter_id",
        (host_settings.job_queue, body),
    )
    code, result = host.request("POST", f"/dead-letters/{letter_id}/requeue")
    assert code == 202, result
    assert result == {
        "id": letter_id,
        "status": "requeued",
        "action": "message_resent",
        "job_id": job_id,
        "queue": host_settings.job_queue,
    }
    assert sql(
        host_settings, "SELECT requeued_at IS NOT NULL FROM dead_letters WHERE dead_letter_id = %s", (letter_id,)
    )[0][0]
    wait_for(lambda: sql(host_settings, "SELECT count(*) FROM outbox WHERE job_id = %s", (job_id,))[0][0] == 0)
    assert host.request("GET", f"/jobs/{job_id}")[1]["status"] == "completed", "a stale message changes nothing"

    [(unknown_id,)] = sql(
        host_settings,
        "INSERT INTO dead_letters (queue, body, reason) VALUES (%s, %s, 'x') RETURNING dead_letter_id",
        (host_settings.job_queue, JobMessage(job_id="f" * 64, stage=1).model_dump_json()),
    )
    code, result = host.request("POST", f"/dead-letters/{unknown_id}/requeue")
    assert code == 409 and "does not exist" in result["error"]


def test_dead_letters_are_listed_newest_first_and_deleted(host: RunningHost, host_settings: Settings) -> None:
    ids = [
        sql(
            host_settings,
            "INSERT INTO dead_letters (queue, body, reason, received_at) "
            "VALUES (%s, %s, 'listed', now() - make_interval(secs => %s)) RETURNING dead_letter_id",
            (host_settings.task_queue, f"body {i}", 10 - i),
        )[0][0]
        for i in range(3)
    ]
    code, body = host.request("GET", "/dead-letters?limit=500")
    assert code == 200
    listed = [d["id"] for d in body["dead_letters"] if d["reason"] == "listed"]
    assert listed == list(reversed(ids)), "newest first"
    entry = next(d for d in body["dead_letters"] if d["id"] == ids[0])
    assert {"id", "queue", "reason", "job_id", "task_id", "created_at", "body", "status"} <= set(entry)
    code, body = host.request("GET", "/dead-letters?status=all&limit=500")
    assert code == 200 and set(ids) <= {d["id"] for d in body["dead_letters"]}
    code, body = host.request("GET", "/dead-letters?limit=1")
    assert code == 200 and len(body["dead_letters"]) == 1

    code, _ = host.request("DELETE", f"/dead-letters/{ids[0]}")
    assert code == 204
    code, body = host.request("DELETE", f"/dead-letters/{ids[0]}")
    assert code == 404 and "not found" in body["error"]
    code, body = host.request("POST", "/dead-letters/999999999/requeue")
    assert code == 404


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/dead-letters?limit=0", "limit"),
        ("GET", "/dead-letters?limit=501", "limit"),
        ("GET", "/dead-letters?limit=x", "limit"),
        ("GET", "/dead-letters?status=bogus", "status"),
        ("POST", "/dead-letters/abc/requeue", "id"),
        ("DELETE", "/dead-letters/-1", "id"),
        ("GET", "/stats/failures?hours=0", "hours"),
        ("GET", "/stats/failures?hours=721", "hours"),
        ("GET", "/stats/throughput?minutes=0", "minutes"),
        ("GET", "/stats/throughput?minutes=1441", "minutes"),
        ("GET", "/stats/throughput?minutes=1.5", "minutes"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(host: RunningHost, method: str, path: str, field: str) -> None:
    code, body = host.request(method, path)
    assert code == 400, body
    assert body["error"] and body["details"][0]["field"] == field


# --- statistics ---------------------------------------------------------------------------------


def test_failure_stats_group_failed_tasks(host: RunningHost) -> None:
    job_id = failed_job(host, "stats")
    code, body = host.request("GET", "/stats/failures?hours=1")
    assert code == 200, body
    group = next(g for g in body["groups"] if job_id in g["job_ids"])
    assert group["error_category"] == "transient"
    assert "fails on purpose" in group["reason"] and "\n" not in group["reason"]
    assert group["count"] >= 1 and group["last_at"]
    assert len(group["job_ids"]) <= 10
    code, default = host.request("GET", "/stats/failures")
    assert code == 200 and default["hours"] == 24


def test_throughput_has_every_minute_of_the_window(host: RunningHost, host_settings: Settings) -> None:
    code, submitted = host.request("POST", "/jobs/hello_world", {"n": 3, "message": "throughput"})
    assert code == 202
    assert host.wait_for_job(submitted["job_id"])["status"] == "completed"
    code, body = host.request("GET", "/stats/throughput?minutes=5")
    assert code == 200, body
    buckets = body["buckets"]
    assert len(buckets) == 5
    minutes = [b["minute"] for b in buckets]
    assert minutes == sorted(minutes) and len(set(minutes)) == 5
    completed = sql(host_settings, "SELECT count(*) FROM tasks WHERE status = 'completed'")[0][0]
    failed = sql(host_settings, "SELECT count(*) FROM tasks WHERE status = 'failed'")[0][0]
    assert sum(b["completed"] for b in buckets) <= completed and sum(b["failed"] for b in buckets) <= failed
    assert sum(b["completed"] for b in buckets) >= 6, "this test's tasks finished within the window"
    code, body = host.request("GET", "/stats/throughput")
    assert code == 200 and len(body["buckets"]) == 60
