"""Error classification, retry policy and circuit breakers (pure parts of the failure handling)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pybreaker
import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

from schemas.errors import DatabaseUnavailableError, InstanceBusyError, PermanentTaskError, ThrottlingError
from services.circuit_breakers import counts_database_outage, counts_storage_outage, make_breaker
from services.engine.error_classification import ErrorCategory, classify, parse_retry_after
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


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (PermanentTaskError("corrupt"), ErrorCategory.PERMANENT),
        (ResourceNotFoundError("no blob"), ErrorCategory.PERMANENT),
        (http_error(403), ErrorCategory.PERMANENT),
        (http_error(500), ErrorCategory.TRANSIENT),
        (http_error(408), ErrorCategory.TRANSIENT),
        (http_error(429, {"Retry-After": "7"}), ErrorCategory.THROTTLING),
        (http_error(503), ErrorCategory.THROTTLING),
        (ThrottlingError("slow down", retry_after=3), ErrorCategory.THROTTLING),
        (InstanceBusyError("slots taken", retry_after=4), ErrorCategory.BUSY),
        (ServiceRequestError("connection reset"), ErrorCategory.TRANSIENT),
        (DatabaseUnavailableError("down"), ErrorCategory.TRANSIENT),
        (KeyError("anything unknown"), ErrorCategory.TRANSIENT),
    ],
)
def test_every_exception_gets_one_category(exc: BaseException, category: ErrorCategory) -> None:
    assert classify(exc).category is category


def test_retry_after_is_honoured_and_parsed() -> None:
    assert classify(http_error(429, {"Retry-After": "7"})).retry_after == 7.0
    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Tue, 24 Nov 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None
    policy = RetryPolicy(max_attempts=5, base_seconds=1.0, max_seconds=60.0)
    throttled = classify(ThrottlingError("slow down", retry_after=20))
    assert policy.delay_seconds(throttled, 1, rng=lambda: 0.0) == 20.0
    assert policy.delay_seconds(classify(KeyError("x")), 3, rng=lambda: 1.0) == 4.0


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
