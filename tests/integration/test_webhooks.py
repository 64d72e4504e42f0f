"""Signed job-completion webhooks on real Azurite queues and a real Postgres database: a local
receiver verifies every request with standardwebhooks' ``Webhook.verify``."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from controllers.hello_world import HelloWorldController
from devstack.postgres import PostgresDatabase
from schemas.errors import InvalidRequestError
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.dead_letters import ReceivedMessage
from services.engine.job_service import JobService
from services.engine.registry import JobTypeRegistry
from services.webhooks.delivery import DeliveryOptions, WebhookDeliverer
from services.webhooks.sender import WebhookSender
from services.webhooks.signing import WebhookSigner
from services.webhooks.subscriptions import CallbackPolicy
from tests.support.engine import QueuePump, make_container, make_settings, queue_client, sql
from tests.support.webhook_receiver import Answer, Receiver, running_receiver, verify

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"geoetl-webhook-test-secret-0123456789").decode()
API = "http://api.example.test/api"


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        webhook_secret=SECRET,
        webhook_allow_http=True,
        webhook_allow_private_networks=True,
        webhook_retry_delays_seconds="1,1",  # 3 attempts, a second apart
        webhook_timeout_seconds=3,
        janitor_requeue_queued_after_seconds=1,
    )


@pytest.fixture(scope="module")
def container(settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(settings, JobTypeRegistry([HelloWorldController()]))
    yield c
    c.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def webhooks(container: ServiceContainer, job_id: str) -> list[dict[str, Any]]:
    hooks: list[dict[str, Any]] = container.job_service.job_status(job_id)["webhooks"]
    return hooks


def settled(container: ServiceContainer, job_id: str, count: int = 1) -> Any:
    def check() -> bool:
        hooks = webhooks(container, job_id)
        return len(hooks) >= count and all(h["status"] in ("delivered", "failed") for h in hooks)

    return check


def run_until(container: ServiceContainer, done: Any, timeout: float = 60) -> None:
    pump = QueuePump(container)
    try:
        pump.run_until(done, timeout=timeout)
    finally:
        pump.close()


def pump_for(container: ServiceContainer, seconds: float) -> None:
    """Keep delivering (janitor included) for a while: nothing more may arrive."""
    deadline = time.monotonic() + seconds
    pump = QueuePump(container)
    try:
        while time.monotonic() < deadline:
            container.janitor.redrive_lost_webhooks()
            pump.pump_once()
            time.sleep(0.1)
    finally:
        pump.close()


def submit(container: ServiceContainer, body: dict[str, Any]) -> str:
    return container.job_service.submit("hello_world", body, api_base=API).job.job_id


def test_a_finished_job_makes_exactly_one_signed_delivery(container: ServiceContainer, receiver: Receiver) -> None:
    job_id = submit(container, {"n": 2, "message": "hook-1", "callback_url": receiver.url("/hook?token=s3cret")})
    assert webhooks(container, job_id)[0]["status"] == "waiting"
    run_until(container, settled(container, job_id))
    pump_for(container, 2.5)  # a janitor pass and duplicate-free queues: still one request
    assert len(receiver.requests) == 1
    request = receiver.requests[0]
    payload = verify(SECRET, request)
    with pytest.raises(WebhookVerificationError):  # the check can fail: another secret does not verify
        Webhook(base64.b64encode(b"another-secret-of-enough-length!").decode()).verify(request.body, request.headers)
    assert request.path == "/hook?token=s3cret" and request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"].startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert payload["type"] == "job.completed"
    data = payload["data"]
    assert (data["job_id"], data["job_type"], data["status"], data["error"]) == (
        job_id, "hello_world", "completed", None
    )  # fmt: skip
    assert data["links"]["status"] == f"{API}/jobs/{job_id}"
    assert data["result"] == container.job_service.job_status(job_id)["result"] and data["result_omitted"] is False
    [hook] = webhooks(container, job_id)
    assert hook["url"] == receiver.url("/hook?redacted") and "s3cret" not in str(hook)
    assert (hook["status"], hook["attempts"], hook["max_attempts"], hook["last_status_code"]) == (
        "delivered",
        1,
        3,
        200,
    )
    assert hook["webhook_id"] == request.headers["webhook-id"] and hook["event_type"] == "job.completed"
    assert hook["delivered_at"] is not None and hook["next_attempt_at"] is None and hook["last_error"] is None

    # A resubmission with another URL adds a subscriber; the job has ended, so it is delivered at once.
    again = container.job_service.submit(
        "hello_world", {"n": 2, "message": "hook-1", "callback_url": receiver.url("/second")}, api_base=API
    )
    assert again.job.job_id == job_id and not again.created  # the callback is not part of the job id
    run_until(container, settled(container, job_id, 2))
    # The same URL again adds nothing.
    container.job_service.submit("hello_world", {"n": 2, "message": "hook-1", "callback_url": receiver.url("/second")})
    pump_for(container, 1.5)
    assert [len(receiver.on("/hook")), len(receiver.on("/second"))] == [1, 1]
    second = verify(SECRET, receiver.on("/second")[0])
    assert second["data"]["job_id"] == job_id and second["type"] == "job.completed"
    assert receiver.on("/second")[0].headers["webhook-id"] != request.headers["webhook-id"]
    assert [h["status"] for h in webhooks(container, job_id)] == ["delivered", "delivered"]


def test_a_receiver_failing_twice_gets_it_on_the_third_attempt_with_the_same_id(
    container: ServiceContainer, receiver: Receiver
) -> None:
    receiver.script = [Answer(500, b"boom"), Answer(503, b"busy")]
    job_id = submit(container, {"n": 1, "message": "hook-retry", "callback_url": receiver.url()})
    run_until(container, settled(container, job_id))
    assert len(receiver.requests) == 3
    ids = {r.headers["webhook-id"] for r in receiver.requests}
    assert len(ids) == 1, "one delivery keeps its webhook-id across attempts"
    assert all(verify(SECRET, r)["data"]["job_id"] == job_id for r in receiver.requests)
    gaps = [b.at - a.at for a, b in zip(receiver.requests, receiver.requests[1:], strict=False)]
    assert all(gap >= 0.8 for gap in gaps), f"the backoff delays were not waited: {gaps}"
    [hook] = webhooks(container, job_id)
    assert (hook["status"], hook["attempts"], hook["last_status_code"], hook["last_error"]) == (
        "delivered", 3, 200, None
    )  # fmt: skip


def test_a_receiver_always_failing_ends_failed_after_every_attempt(
    container: ServiceContainer, receiver: Receiver
) -> None:
    receiver.default = Answer(500, b"nope")
    job_id = submit(container, {"n": 1, "message": "hook-fail", "callback_url": receiver.url()})
    run_until(container, settled(container, job_id))
    pump_for(container, 2.5)
    assert len(receiver.requests) == 3
    [hook] = webhooks(container, job_id)
    assert (hook["status"], hook["attempts"], hook["last_status_code"]) == ("failed", 3, 500)
    assert hook["last_error"] == "HTTP 500: nope" and hook["next_attempt_at"] is None and hook["delivered_at"] is None


def test_a_redirect_is_not_followed_and_counts_as_a_failure(container: ServiceContainer, receiver: Receiver) -> None:
    receiver.default = Answer(302, b"", {"Location": "/elsewhere"})
    job_id = submit(container, {"n": 1, "message": "hook-redirect", "callback_url": receiver.url()})
    run_until(container, settled(container, job_id))
    assert receiver.on("/elsewhere") == [] and len(receiver.on("/hook")) == 3
    [hook] = webhooks(container, job_id)
    assert (hook["status"], hook["last_status_code"]) == ("failed", 302)
    assert "redirect" in hook["last_error"] and "not followed" in hook["last_error"]


def test_failed_and_cancelled_jobs_are_delivered_too(container: ServiceContainer, receiver: Receiver) -> None:
    failing = submit(
        container,
        {"n": 2, "message": "hook-failed", "fail_ratio": 1.0, "max_failure_ratio": 0.0, "callback_url": receiver.url()},
    )
    run_until(container, settled(container, failing))
    event = verify(SECRET, receiver.requests[-1])
    assert (event["type"], event["data"]["status"]) == ("job.failed", "failed") and event["data"]["error"]

    cancelled = submit(container, {"n": 1, "message": "hook-cancel", "sleep_ms": 1, "callback_url": receiver.url()})
    container.job_control.cancel(cancelled)
    run_until(container, settled(container, cancelled))
    event = verify(SECRET, receiver.requests[-1])
    assert (event["type"], event["data"]["job_id"]) == ("job.cancelled", cancelled)


def test_duplicate_messages_make_one_post(container: ServiceContainer, receiver: Receiver) -> None:
    receiver.default = Answer(200, b"ok", delay=0.5)
    job_id = submit(container, {"n": 1, "message": "hook-dup", "callback_url": receiver.url()})
    container.job_control.cancel(job_id)  # ends it; its delivery's message waits in the queue (no pump)
    [(delivery_id,)] = sql(container.settings, "SELECT delivery_id FROM webhook_deliveries WHERE job_id = %s", [job_id])
    outcomes: list[str] = []
    threads = [
        threading.Thread(target=lambda: outcomes.append(container.webhook_deliverer.deliver(delivery_id)))
        for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["delivered", "skipped", "skipped"] and len(receiver.requests) == 1
    assert container.webhook_deliverer.deliver(delivery_id) == "skipped" and len(receiver.requests) == 1


def test_a_lost_message_is_redriven_by_the_janitor_once(container: ServiceContainer, receiver: Receiver) -> None:
    job_id = submit(container, {"n": 1, "message": "hook-lost", "callback_url": receiver.url()})
    container.job_control.cancel(job_id)
    queue_client(container.settings, container.settings.webhook_queue).clear_messages()  # the message is lost
    assert container.janitor.redrive_lost_webhooks() == 0, "not overdue yet"
    time.sleep(1.2)
    assert container.janitor.redrive_lost_webhooks() == 1
    assert container.janitor.redrive_lost_webhooks() == 0, "taken once: no second message"
    run_until(container, settled(container, job_id))
    assert len(receiver.requests) == 1 and verify(SECRET, receiver.requests[0])["data"]["job_id"] == job_id


def test_a_poisoned_message_fails_its_delivery(container: ServiceContainer, receiver: Receiver) -> None:
    job_id = submit(container, {"n": 1, "message": "hook-poison", "callback_url": receiver.url()})
    container.job_control.cancel(job_id)
    queue_client(container.settings, container.settings.webhook_queue).clear_messages()
    [(delivery_id,)] = sql(container.settings, "SELECT delivery_id FROM webhook_deliveries WHERE job_id = %s", [job_id])
    body = f'{{"delivery_id": {delivery_id}, "job_id": "{job_id}"}}'.encode()
    poison = f"{container.settings.webhook_queue}-poison"
    container.dead_letters.reconcile_poisoned_webhook(ReceivedMessage(poison, body, "m1", 1))
    [hook] = webhooks(container, job_id)
    assert hook["status"] == "failed" and "poison" in hook["last_error"] and receiver.requests == []
    letters = sql(container.settings, "SELECT queue, job_id, reason FROM dead_letters WHERE queue = %s", [poison])
    assert [(q, j) for q, j, _ in letters] == [(poison, None)] and job_id in letters[0][2]
    # A second copy finds the delivery failed already and leaves it.
    container.dead_letters.reconcile_poisoned_webhook(ReceivedMessage(poison, body, "m2", 1))
    reasons = sql(container.settings, "SELECT reason FROM dead_letters WHERE queue = %s ORDER BY 1", [poison])
    assert len(reasons) == 2 and any("no longer open" in r for (r,) in reasons)


# --- SSRF --------------------------------------------------------------------------------------

REFUSED_AT_SUBMISSION = [
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://[::1]:9/hook", "loopback"),
    ("http://10.0.0.1/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://localhost:9/hook", "loopback"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://168.63.129.16/hook", "Azure platform"),
]


@pytest.mark.parametrize(("url", "why"), REFUSED_AT_SUBMISSION)
def test_private_addresses_are_refused_at_submission(container: ServiceContainer, url: str, why: str) -> None:
    strict = JobService(
        container.db,
        container.registry,
        container.relay,
        max_list_limit=50,
        callbacks=CallbackPolicy(signing_configured=True, allow_http=True, allow_private=False),
    )
    body = {"n": 1, "message": f"ssrf {url}", "callback_url": url}
    with pytest.raises(InvalidRequestError) as caught:
        strict.submit("hello_world", body)
    [detail] = caught.value.details or []
    assert detail["field"] == "callback_url" and why in detail["message"], detail
    count = sql(container.settings, "SELECT count(*) FROM jobs WHERE parameters->>'message' = %s", [f"ssrf {url}"])
    assert count == [(0,)], "nothing is stored for a refused submission"


def test_scheme_and_secret_rules_at_submission(container: ServiceContainer) -> None:
    def service(policy: CallbackPolicy) -> JobService:
        return JobService(container.db, container.registry, container.relay, max_list_limit=50, callbacks=policy)

    cases = [
        (CallbackPolicy(signing_configured=True), "http://93.184.216.34/hook", "https"),
        (CallbackPolicy(signing_configured=False, allow_http=True), "https://93.184.216.34/hook", "not enabled"),
        (CallbackPolicy(signing_configured=True), "https://user:pw@93.184.216.34/", "credentials"),
        (CallbackPolicy(signing_configured=True), "https://93.184.216.34/" + "a" * 2048, "2048"),
    ]
    for policy, url, why in cases:
        with pytest.raises(InvalidRequestError) as caught:
            service(policy).submit("hello_world", {"n": 1, "callback_url": url})
        assert any(d["field"] == "callback_url" and why in d["message"] for d in caught.value.details or []), url


def test_delivery_refuses_a_private_address_when_not_allowed(container: ServiceContainer, receiver: Receiver) -> None:
    """Accepted at submission (private networks allowed then, or a name that re-resolved since): the
    sender checks the address it connects to and refuses, counting a failed attempt."""
    job_id = submit(container, {"n": 1, "message": "hook-rebind", "callback_url": receiver.url()})
    container.job_control.cancel(job_id)
    [(delivery_id,)] = sql(container.settings, "SELECT delivery_id FROM webhook_deliveries WHERE job_id = %s", [job_id])
    strict = WebhookDeliverer(
        container.db,
        container.relay,
        WebhookSender(allow_private=False, allow_http=True, timeout_seconds=3),
        WebhookSigner(lambda: SECRET),
        DeliveryOptions((), 3.0),
    )
    try:
        assert strict.deliver(delivery_id) == "failed"
    finally:
        strict.close()
    assert receiver.requests == []
    [hook] = webhooks(container, job_id)
    assert hook["status"] == "failed" and hook["attempts"] == 1 and hook["last_status_code"] is None
    assert "refused to connect" in hook["last_error"] and "loopback" in hook["last_error"]


def test_the_status_shows_a_retry_that_is_pending(container: ServiceContainer, receiver: Receiver) -> None:
    receiver.script = [Answer(500, b"boom")]
    job_id = submit(container, {"n": 1, "message": "hook-pending", "callback_url": receiver.url()})
    container.job_control.cancel(job_id)
    [(delivery_id,)] = sql(container.settings, "SELECT delivery_id FROM webhook_deliveries WHERE job_id = %s", [job_id])
    assert container.webhook_deliverer.deliver(delivery_id) == "retry"
    [hook] = webhooks(container, job_id)
    assert (hook["status"], hook["attempts"], hook["last_status_code"], hook["last_error"]) == (
        "pending", 1, 500, "HTTP 500: boom"
    )  # fmt: skip
    assert hook["next_attempt_at"] is not None and hook["delivered_at"] is None
    # Due in 1 s: a message up to 5 s early still counts (clock skew between queue and database).
    assert container.webhook_deliverer.deliver(delivery_id) == "delivered" and len(receiver.requests) == 2
