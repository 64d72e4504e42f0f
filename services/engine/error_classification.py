"""The one place that decides what an exception from a task handler means.

- permanent: bad input that will never succeed (our PermanentTaskError, missing blob, 4xx) →
  fail the task at once;
- throttling: the service asked us to slow down (ThrottlingError, HTTP 429, 503 ServerBusy) →
  retry, no sooner than Retry-After;
- busy: this instance could not start the task (InstanceBusyError) → hand it back to the queue
  after its retry_after, without counting an attempt;
- transient: a failure known to pass, from an explicit list (``transient_reason``): our
  TransientTaskError family (storage outages, worker resources, open circuits), Postgres
  unavailable or a transaction conflict, ``ConnectionError`` / ``TimeoutError`` and network
  ``OSError`` errnos, azure-core transport errors, HTTP 5xx and 408, GDAL/rasterio errors whose
  text is a network failure of ``/vsiaz/``, and ``MemoryError`` → retry with backoff;
- unclassified: anything else. An exception nobody classified is a bug (or a bad input nobody
  foresaw) to classify, not a reason to retry: the task fails in one attempt with the reason
  "internal error (…): Type: message" on one bounded line, and the traceback is logged at ERROR.

``MemoryError`` is transient on purpose: tiles are sized to the per-task memory budget
(services/raster/tiling.py), so running out of memory says the instance was crowded (other
invocations of the same process), not that the input is too big; the retry may land on another
instance, and a task that keeps failing stops at the attempt limit (like GDAL's own
out-of-memory errors, ``WorkerResourceError``).
"""

from __future__ import annotations

import errno
import logging
import re
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError, ServiceResponseError

from schemas.errors import (
    DatabaseUnavailableError,
    InstanceBusyError,
    PermanentTaskError,
    RepositoryDataError,
    ThrottlingError,
    TransactionConflictError,
    TransientTaskError,
)

logger = logging.getLogger(__name__)

# HTTP statuses that will not change on retry. 408 (timeout) and 429 (throttling) are not here.
_PERMANENT_HTTP_STATUSES = {400, 401, 403, 404, 405, 409, 410, 411, 412, 413, 414, 415, 416, 422}
MAX_RETRY_AFTER_SECONDS = 3600.0
MAX_REASON_CHARS = 500  # an unclassified error's reason: one line, at most this long

# Network failures of a socket: the peer or the path went away; another try may get through.
NETWORK_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "ETIMEDOUT", "EPIPE", "EHOSTUNREACH", "EHOSTDOWN",
        "ENETUNREACH", "ENETDOWN", "ENETRESET", "EAGAIN", "EADDRNOTAVAIL", "ENOBUFS",
    )
    if hasattr(errno, name)
)  # fmt: skip
# GDAL's text for a failed /vsiaz/ (curl) transfer; the same signs services/raster/gdal_errors.py
# reads, for a GDAL error that reached the engine untranslated.
GDAL_TRANSPORT_MESSAGES = re.compile(
    r"HTTP response code: (5\d\d|429|408)|timed out|Operation too slow|Could not resolve|Couldn't resolve|"
    r"Failed to connect|Could not connect|Couldn't connect|Connection (reset|refused|timed out)|"
    r"Empty reply from server|Recv failure|Send failure|Failure when receiving data|transfer closed|CURL error",
    re.IGNORECASE,
)


class ErrorCategory(StrEnum):
    PERMANENT = "permanent"
    TRANSIENT = "transient"
    THROTTLING = "throttling"
    BUSY = "busy"
    UNCLASSIFIED = "unclassified"


RETRYABLE_CATEGORIES = frozenset({ErrorCategory.TRANSIENT, ErrorCategory.THROTTLING, ErrorCategory.BUSY})


@dataclass(frozen=True)
class ClassifiedError:
    category: ErrorCategory
    message: str
    retry_after: float | None = None

    @property
    def retryable(self) -> bool:
        """Transient, throttling and busy errors are tried again; permanent and unclassified never."""
        return self.category in RETRYABLE_CATEGORIES


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


def internal_error_reason(exc: BaseException, limit: int = MAX_REASON_CHARS) -> str:
    """The one-line reason of an unclassified error: says it is ours, names the type, bounded."""
    text = " ".join(f"internal error (unclassified, not retried; please report it): {describe(exc)}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _http_status(exc: HttpResponseError) -> tuple[int | None, str | None, str | None]:
    response = exc.response
    status = exc.status_code if exc.status_code is not None else getattr(response, "status_code", None)
    headers = getattr(response, "headers", None) or {}
    return status, getattr(exc, "error_code", None), headers.get("Retry-After") or headers.get("x-ms-retry-after-ms")


def _is_gdal_error(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] in {"rasterio", "osgeo"}


def transient_reason(exc: BaseException) -> bool:
    """Whether ``exc`` belongs to a family of failures known to pass on a retry."""
    if isinstance(exc, TransientTaskError | DatabaseUnavailableError | TransactionConflictError):
        return True
    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError | MemoryError):
        return True  # ConnectionError covers reset, refused, aborted and broken pipe; TimeoutError socket.timeout
    if isinstance(exc, socket.gaierror):
        return True  # name resolution failed: DNS hiccup
    if isinstance(exc, OSError) and exc.errno in NETWORK_ERRNOS:
        return True
    return _is_gdal_error(exc) and GDAL_TRANSPORT_MESSAGES.search(str(exc)) is not None


def _http_classified(exc: HttpResponseError, message: str) -> ClassifiedError | None:
    status, error_code, retry_after = _http_status(exc)
    if status == 429 or (status == 503 and error_code in {"ServerBusy", "OperationTimedOut", None}):
        return ClassifiedError(ErrorCategory.THROTTLING, message, parse_retry_after(retry_after))
    if status in _PERMANENT_HTTP_STATUSES:
        return ClassifiedError(ErrorCategory.PERMANENT, message)
    if status is not None and (status >= 500 or status == 408):
        return ClassifiedError(ErrorCategory.TRANSIENT, message)
    return None  # no status, or one we do not know: not classified by its status


def classify(
    exc: BaseException, log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None
) -> ClassifiedError:
    """The category of ``exc``; an unclassified one is logged (to ``log``) at ERROR with its traceback."""
    message = describe(exc)
    if isinstance(exc, PermanentTaskError | RepositoryDataError | ResourceNotFoundError):
        return ClassifiedError(ErrorCategory.PERMANENT, message)
    if isinstance(exc, ThrottlingError | InstanceBusyError):
        category = ErrorCategory.BUSY if isinstance(exc, InstanceBusyError) else ErrorCategory.THROTTLING
        return ClassifiedError(category, message, exc.retry_after)
    by_status = _http_classified(exc, message) if isinstance(exc, HttpResponseError) else None
    if by_status is not None:
        return by_status
    if transient_reason(exc):
        return ClassifiedError(ErrorCategory.TRANSIENT, message)
    (log or logger).error("unclassified exception from a task handler, not retried: %s", message, exc_info=exc)
    return ClassifiedError(ErrorCategory.UNCLASSIFIED, internal_error_reason(exc))
