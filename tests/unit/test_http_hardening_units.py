"""Request decoding, error table, storage client retry policy and log redaction (issue 16)."""

from __future__ import annotations

import io
import json
import logging
import time

import azure.functions as func
import pytest

from devstack.azurite import free_port
from local_host.json_logging import JsonLineFormatter
from repositories.blob_storage import BlobStorage
from schemas.errors import InvalidRequestError, StorageUnavailableError, ThrottlingError
from schemas.settings import Settings
from services.engine.queue_publisher import OutgoingMessage, QueuePublisher
from triggers.http_jobs import read_json_body
from triggers.http_responses import error_response, status_code_for

DEV = "UseDevelopmentStorage=true"  # never contacted


def body_request(body: bytes) -> func.HttpRequest:
    return func.HttpRequest("POST", "http://127.0.0.1:7071/api/jobs/hello_world", body=body, params={}, headers={})


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[" * 50_000 + b"]" * 50_000, "body"),
        (b'{"n": ' + b"1" * 5000 + b"}", "body"),
        (b'{"n": 1e400}', "body"),
        (b'{"n": NaN}', "body"),
        (b'{"message": "a\\u0000b"}', "message"),
        (b'{"message": ["ok", "\\ud800"]}', "message.1"),
        (b'{"x\\u0000": 1}', "body"),
        (b'{"a": {"b": "\\udfff"}}', "a.b"),
    ],
    ids=["deep", "5000-digits", "inf", "nan", "nul", "surrogate-in-list", "nul-in-key", "surrogate-nested"],
)
def test_malformed_bodies_are_invalid_requests_naming_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        read_json_body(body_request(raw), 1_000_000)
    assert raised.value.details[0]["field"] == field
    response = error_response(raised.value)
    assert response.status_code == 400 and b"Traceback" not in response.get_body()


def test_storage_errors_are_503_with_retry_after() -> None:
    for exc in (StorageUnavailableError("down"), ThrottlingError("slow", retry_after=3)):
        assert status_code_for(exc) == 503
        assert error_response(exc).headers["Retry-After"]


def closed_port_storage() -> str:
    port = free_port()
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    return (
        f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;"
    )


def test_storage_clients_give_up_within_seconds_when_storage_is_down() -> None:
    """The SDK's default storage policy sleeps 15 + 18 + 24 s before reporting an outage."""
    connection = closed_port_storage()
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError):
        BlobStorage(connection).list_containers()
    blob_seconds = time.monotonic() - started
    publisher = QueuePublisher(connection, {"jobs": "hardening-unit"})
    started = time.monotonic()
    try:
        assert publisher.send_many([OutgoingMessage("jobs", {"n": 1})]) == [False]
    finally:
        publisher.close()
    queue_seconds = time.monotonic() - started
    assert blob_seconds < 5 and queue_seconds < 5, (blob_seconds, queue_seconds)


def test_new_settings_defaults() -> None:
    s = Settings.model_validate({"AzureWebJobsStorage": DEV})
    assert s.db_http_acquire_timeout_seconds == 2.0
    assert (s.container_list_max_limit, s.container_blob_count_cap) == (100, 1000)


def test_app_log_records_are_redacted() -> None:
    from triggers import http_log_redaction

    http_log_redaction.install()
    http_log_redaction.install()  # idempotent
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter(None))
    logger = logging.getLogger("triggers.http_responses")
    logger.addHandler(handler)
    try:
        logger.warning("GET %s failed", "http://h/api/jobs/x?code=KEY1&limit=5")
        logger.warning("conn AccountKey=KEY2;BlobEndpoint=x password=KEY3 x-functions-key: KEY4")
        try:
            raise RuntimeError("while calling https://acct.blob/c/b?sv=1&sig=KEY5")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    for secret in ("KEY1", "KEY2", "KEY3", "KEY4", "KEY5"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["message"] == "GET http://h/api/jobs/x?code=[REDACTED]&limit=5 failed"
    assert "RuntimeError" in lines[2]["exc_info"]
