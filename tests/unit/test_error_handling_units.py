"""Error classification, retry policy and circuit breakers (pure parts of the failure handling)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from datetime import UTC, datetime

import pybreaker
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError

from schemas.errors import (
    BlobNotFoundError,
    DatabaseUnavailableError,
    InstanceBusyError,
    PermanentTaskError,
    RepositoryDataError,
    RepositoryError,
    StorageUnavailableError,
    ThrottlingError,
    TransactionConflictError,
    TransientTaskError,
    WorkerResourceError,
)
from services.circuit_breakers import CircuitOpenError, counts_database_outage, counts_storage_outage, make_breaker
from services.engine.error_classification import MAX_REASON_CHARS, ErrorCategory, classify, parse_retry_after
from services.engine.retry_policy import RetryPolicy


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.headers = headers or {}
        self.reason = "test"

    def text(self) -> str:
        return ""


def http_error(status: int, headers: dict[str, str] | None = None) -> HttpResponseError:
    return HttpResponseError(message=f"status {status}", response=FakeResponse(status, headers))  # type: ignore[arg-type]


class CPLE_HttpResponseError(Exception):  # what rasterio raises for a /vsiaz/ curl failure
    __module__ = "rasterio._err"


class CPLE_AppDefinedError(Exception):
    __module__ = "rasterio._err"


def os_error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        # permanent: bad input
        (PermanentTaskError("corrupt"), ErrorCategory.PERMANENT),
        (BlobNotFoundError("missing"), ErrorCategory.PERMANENT),
        (RepositoryDataError("NUL in a string"), ErrorCategory.PERMANENT),
        (ResourceNotFoundError("no blob"), ErrorCategory.PERMANENT),
        (http_error(403), ErrorCategory.PERMANENT),
        (http_error(409), ErrorCategory.PERMANENT),
        # throttling and busy
        (http_error(429, {"Retry-After": "7"}), ErrorCategory.THROTTLING),
        (http_error(503), ErrorCategory.THROTTLING),
        (ThrottlingError("slow down", retry_after=3), ErrorCategory.THROTTLING),
        (InstanceBusyError("slots taken", retry_after=4), ErrorCategory.BUSY),
        # transient: the explicit families
        (TransientTaskError("upstream hiccup"), ErrorCategory.TRANSIENT),
        (StorageUnavailableError("5xx"), ErrorCategory.TRANSIENT),
        (WorkerResourceError("disk full"), ErrorCategory.TRANSIENT),
        (CircuitOpenError("storage circuit open"), ErrorCategory.TRANSIENT),
        (DatabaseUnavailableError("down"), ErrorCategory.TRANSIENT),
        (TransactionConflictError("40001"), ErrorCategory.TRANSIENT),
        (http_error(500), ErrorCategory.TRANSIENT),
        (http_error(502), ErrorCategory.TRANSIENT),
        (http_error(408), ErrorCategory.TRANSIENT),
        (ServiceRequestError("connection reset"), ErrorCategory.TRANSIENT),
        (ServiceResponseError("read timed out"), ErrorCategory.TRANSIENT),
        (ConnectionResetError(errno.ECONNRESET, "reset by peer"), ErrorCategory.TRANSIENT),
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ErrorCategory.TRANSIENT),
        (BrokenPipeError(errno.EPIPE, "broken pipe"), ErrorCategory.TRANSIENT),
        (TimeoutError("slow"), ErrorCategory.TRANSIENT),
        (socket.gaierror(-3, "Temporary failure in name resolution"), ErrorCategory.TRANSIENT),
        (os_error(errno.ETIMEDOUT), ErrorCategory.TRANSIENT),
        (os_error(errno.EHOSTUNREACH), ErrorCategory.TRANSIENT),
        (os_error(errno.ENETUNREACH), ErrorCategory.TRANSIENT),
        (MemoryError(), ErrorCategory.TRANSIENT),
        (CPLE_HttpResponseError("HTTP response code: 503"), ErrorCategory.TRANSIENT),
        (CPLE_HttpResponseError("CURL error: Connection reset by peer"), ErrorCategory.TRANSIENT),
        (CPLE_AppDefinedError("Operation timed out after 30001 milliseconds"), ErrorCategory.TRANSIENT),
        # unclassified: everything else is a bug to classify, not a reason to retry
        (KeyError("anything unknown"), ErrorCategory.UNCLASSIFIED),
        (ValueError("bad value"), ErrorCategory.UNCLASSIFIED),
        (RuntimeError("boom"), ErrorCategory.UNCLASSIFIED),
        (TypeError("NoneType is not subscriptable"), ErrorCategory.UNCLASSIFIED),
        (RepositoryError("syntax error at or near"), ErrorCategory.UNCLASSIFIED),
        (os_error(errno.ENOENT), ErrorCategory.UNCLASSIFIED),
        (http_error(418), ErrorCategory.UNCLASSIFIED),
        (CPLE_AppDefinedError("TIFFReadDirectory: Sanity check on directory count failed"), ErrorCategory.UNCLASSIFIED),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_every_exception_gets_one_category(exc: BaseException, category: ErrorCategory) -> None:
    classified = classify(exc)
    assert classified.category is category
    assert classified.retryable is (category in {ErrorCategory.TRANSIENT, ErrorCategory.THROTTLING, ErrorCategory.BUSY})


def test_an_unclassified_error_is_a_one_line_bounded_internal_error_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    try:
        missing: dict[str, int] = {}
        missing["key"]  # a real traceback
    except KeyError as exc:
        with caplog.at_level(logging.ERROR):
            classified = classify(exc)
    assert classified.category is ErrorCategory.UNCLASSIFIED and not classified.retryable
    assert classified.message.startswith("internal error (unclassified") and "KeyError: 'key'" in classified.message
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None and "KeyError" in caplog.text
    long = classify(ValueError("line one\nline two " + "x" * 5000))
    assert "\n" not in long.message and len(long.message) <= MAX_REASON_CHARS and long.message.endswith("…")
    policy = RetryPolicy(max_attempts=3, base_seconds=1.0, max_seconds=60.0)
    assert not policy.should_retry(long, 1), "never retried, not even once"


def test_retry_after_is_honoured_and_parsed() -> None:
    assert classify(http_error(429, {"Retry-After": "7"})).retry_after == 7.0
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Tue, 24 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    policy = RetryPolicy(max_attempts=5, base_seconds=1.0, max_seconds=60.0)
    throttled = classify(ThrottlingError("slow down", retry_after=20))
    assert policy.delay_seconds(throttled, 1, rng=lambda: 0.0) == 20.0
    assert policy.delay_seconds(classify(TimeoutError("x")), 3, rng=lambda: 1.0) == 4.0


def test_retry_policy_stops_at_the_limit_and_never_retries_permanent_errors() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=1.0, max_seconds=60.0)
    transient = classify(TimeoutError("slow"))
    assert policy.should_retry(transient, 2) and not policy.should_retry(transient, 3)
    assert not policy.should_retry(classify(PermanentTaskError("bad input")), 1)


def test_breakers_count_only_outages() -> None:
    assert counts_database_outage(DatabaseUnavailableError("x")) and not counts_database_outage(ValueError("x"))
    assert counts_storage_outage(http_error(503)) and counts_storage_outage(ServiceRequestError("x"))
    assert not counts_storage_outage(http_error(404))
    breaker = make_breaker("test", fail_max=2, reset_seconds=60, counts=counts_storage_outage)
    for _ in range(3):  # business errors do not open it
        with pytest.raises(ResourceNotFoundError), breaker.calling():
            raise ResourceNotFoundError("missing")
    assert breaker.current_state == "closed"
    with pytest.raises(HttpResponseError), breaker.calling():
        raise http_error(500)
    with pytest.raises(pybreaker.CircuitBreakerError), breaker.calling():
        raise http_error(500)
    assert breaker.current_state == "open"
    with pytest.raises(pybreaker.CircuitBreakerError), breaker.calling():
        pass  # fails fast while open


def test_a_breaker_does_not_serialise_calls_through_it() -> None:
    breaker = make_breaker("test", fail_max=5, reset_seconds=60, counts=counts_storage_outage)
    inside = threading.Barrier(4, timeout=10)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            with breaker.calling():
                inside.wait()  # only passes when all four are inside the breaker at once
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_blob_storage_fails_fast_while_its_breaker_is_open() -> None:
    from repositories.blob_storage import BlobStorage
    from schemas.errors import StorageUnavailableError

    breaker = make_breaker("storage", fail_max=2, reset_seconds=60, counts=counts_storage_outage)
    # Nothing listens on port 9: every call is a connection error, translated and counted.
    storage = BlobStorage(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;",
        breaker=breaker,
    )
    storage.client._config.retry_policy.total_retries = 0  # type: ignore[union-attr]
    for _ in range(2):
        with pytest.raises((StorageUnavailableError, pybreaker.CircuitBreakerError)):
            storage.exists("bronze", "a.tif")
    assert breaker.current_state == "open"
    with pytest.raises(StorageUnavailableError, match="circuit open"):
        storage.exists("bronze", "a.tif")


def test_gdal_access_goes_through_the_storage_breaker() -> None:
    from repositories.blob_storage import BlobStorage
    from schemas.errors import StorageUnavailableError

    breaker = make_breaker("storage", fail_max=2, reset_seconds=60, counts=counts_storage_outage)
    storage = BlobStorage("UseDevelopmentStorage=true", breaker=breaker)
    for _ in range(3):  # bad files are the caller's problem, not an outage
        with pytest.raises(PermanentTaskError), storage.gdal_env(GDAL_NUM_THREADS="1"):
            raise PermanentTaskError("cannot be read as a GeoTIFF")
    assert breaker.current_state == "closed"
    for _ in range(2):  # what pipeline.gdal_error makes of GDAL's network errors
        with pytest.raises(StorageUnavailableError), storage.gdal_env():
            raise StorageUnavailableError("reading /vsiaz/bronze/a.tif: HTTP response code: 503")
    assert breaker.current_state == "open"
    ran = []
    with pytest.raises(StorageUnavailableError, match="circuit open"), storage.gdal_env():
        ran.append(True)
    assert ran == []  # failed fast: GDAL was not even configured
