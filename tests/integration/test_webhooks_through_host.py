"""Webhooks through the local Functions host: the HTTP option, the queue trigger bound to
%WEBHOOK_QUEUE%, and the status document, with a receiver that verifies the signature."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import pytest

from devstack.postgres import PostgresDatabase
from schemas.settings import Settings
from tests.support.engine import make_settings
from tests.support.host import RunningHost, start_host
from tests.support.webhook_receiver import Receiver, running_receiver, verify

pytestmark = pytest.mark.integration

SECRET = "whsec_" + base64.b64encode(b"geoetl-host-webhook-secret-0123456789").decode()


@pytest.fixture(scope="module")
def hook_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        webhook_secret=SECRET,
        webhook_allow_http=True,
        webhook_allow_private_networks=True,
        webhook_retry_delays_seconds="1",
    )


@pytest.fixture(scope="module")
def host(hook_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    running = start_host(hook_settings, workers=1, log_path=tmp_path_factory.mktemp("host") / "host.log")
    yield running
    assert running.stop() == 0


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with running_receiver() as r:
        yield r


def test_a_job_submitted_over_http_calls_back_once_signed(host: RunningHost, receiver: Receiver) -> None:
    code, submitted = host.request(
        "POST", "/jobs/hello_world", {"n": 2, "message": "host-hook", "callback_url": receiver.url("/done?k=v")}
    )
    assert code == 202, submitted
    job_id = submitted["job_id"]
    assert host.wait_for_job(job_id)["status"] == "completed"
    receiver.wait_for(1)
    deadline = time.monotonic() + 30
    while True:
        code, status = host.request("GET", f"/jobs/{job_id}")
        if status["webhooks"][0]["status"] == "delivered" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    [hook] = status["webhooks"]
    assert (hook["status"], hook["attempts"], hook["last_status_code"]) == ("delivered", 1, 200)
    assert hook["url"] == receiver.url("/done?redacted")
    time.sleep(1.5)
    [request] = receiver.requests
    event = verify(SECRET, request)
    assert request.path == "/done?k=v" and hook["webhook_id"] == request.headers["webhook-id"]
    assert (event["type"], event["data"]["job_id"]) == ("job.completed", job_id)
    assert event["data"]["links"]["status"] == f"{host.base_url}/jobs/{job_id}"


def test_a_bad_callback_url_is_a_400_naming_it(host: RunningHost) -> None:
    for url in ("http://user:pw@127.0.0.1/hook", "ftp://127.0.0.1/hook", "http://127.0.0.1/" + "a" * 2048):
        code, body = host.request("POST", "/jobs/hello_world", {"n": 1, "message": "bad-hook", "callback_url": url})
        assert code == 400, body
        assert [d["field"] for d in body["details"]] == ["callback_url"], body
