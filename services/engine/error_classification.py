"""The one place that decides what an exception from a task handler means.

- permanent: bad input that will never succeed (our PermanentTaskError, missing blob, 4xx) →
  fail the task at once;
- throttling: the service asked us to slow down (ThrottlingError, HTTP 429, 503 ServerBusy) →
  retry, no sooner than Retry-After;
- busy: this instance could not start the task (InstanceBusyError) → hand it back to the queue
  after its retry_after, without counting an attempt;
- transient: everything else, including unknown exceptions → retry with backoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

from schemas.errors import InstanceBusyError, PermanentTaskError, RepositoryDataError, ThrottlingError

# HTTP statuses that will not change on retry. 408 (timeout) and 429 (throttling) are not here.
_PERMANENT_HTTP_STATUSES = {400, 401, 403, 404, 405, 409, 410, 411, 412, 413, 414, 415, 416, 422}
MAX_RETRY_AFTER_SECONDS = 3600.0


class ErrorCategory(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    THROTTLING = "throttling"
    BUSY = "busy"


@dataclass(frozen=True)
class ClassifiedError:
    category: ErrorCategory
    message: str
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        return self.category is not ErrorCategory.PERMANENT


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(0.0, seconds), MAX_RETRY_AFTER_SECONDS)


def describe(exc: BaseException, limit: int = 2000) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _http_status(exc: HttpResponseError) -> tuple[int | None, str | None, str | None]:
    response = exc.response
    status = exc.status_code if exc.status_code is not None else getattr(response, "status_code", None)
    headers = getattr(response, "headers", None) or {}
    return status, getattr(exc, "error_code", None), headers.get("Retry-After") or headers.get("x-ms-retry-after-ms")


def classify(exc: BaseException) -> ClassifiedError:
    message = describe(exc)
    if isinstance(exc, PermanentTaskError | RepositoryDataError):
        return ClassifiedError(ErrorCategory.PERMANENT, message)
    if isinstance(exc, ThrottlingError | InstanceBusyError):
        category = ErrorCategory.BUSY if isinstance(exc, InstanceBusyError) else ErrorCategory.THROTTLING
        return ClassifiedError(category, message, exc.retry_after)
    if isinstance(exc, ResourceNotFoundError):
        return ClassifiedError(ErrorCategory.PERMANENT, message)
    if isinstance(exc, HttpResponseError):
        status, error_code, retry_after = _http_status(exc)
        if status == 429 or (status == 503 and error_code in {"ServerBusy", "OperationTimedOut", None}):
            return ClassifiedError(ErrorCategory.THROTTLING, message, parse_retry_after(retry_after))
        if status in _PERMANENT_HTTP_STATUSES:
            return ClassifiedError(ErrorCategory.PERMANENT, message)
    return ClassifiedError(ErrorCategory.TRANSIENT, message)
