"""Error types shared by every layer.

Two families:
- request errors, raised while handling an HTTP call; triggers/http_errors.py maps each to one
  HTTP status code (one table);
- task errors, raised by task handlers: ``PermanentTaskError`` fails the task at once (bad input),
  ``TransientTaskError`` (and the other families listed in services/engine/error_classification.py)
  is retried with backoff up to the job type's attempt limit; an exception nobody classified fails
  the task in one attempt as an internal error.
"""

from __future__ import annotations

from typing import Any


class GeoEtlError(Exception):
    """Base class of every error geoetl raises on purpose."""


# --- request errors -----------------------------------------------------------------------------


class RequestError(GeoEtlError):
    """An error answered to an HTTP caller. ``details`` is JSON-serialisable extra context."""

    def __init__(self, message: str, *, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidRequestError(RequestError):
    """Malformed JSON or parameters that fail validation; details lists the fields at fault."""


class PayloadTooLargeError(RequestError):
    """Request body over the MAX_REQUEST_BYTES limit."""


class NotFoundError(RequestError):
    """Unknown job id, job type or other resource."""


class ForbiddenError(RequestError):
    """A resource outside what this deployment exposes (a container not in its allow-lists)."""


class ConflictError(RequestError):
    """The request does not fit the resource's state (cancel a completed job, retry a running one)."""


class ServiceUnavailableError(RequestError):
    """A dependency (Postgres, Storage) is down; the caller may retry."""


class RateLimitedError(RequestError):
    """The caller used up its submission budget (SUBMIT_RATE_PER_MINUTE, SUBMIT_BURST): 429 with
    Retry-After = ``retry_after`` whole seconds (at least 1), when its next token is there."""

    def __init__(self, message: str, *, retry_after: int, details: Any = None) -> None:
        super().__init__(message, details=details)
        self.retry_after = max(1, int(retry_after))


# --- repository errors (driver errors translated at the repository boundary) -------------------


class RepositoryError(GeoEtlError):
    """A database error that is not expected to go away by retrying (bad SQL, constraint)."""


class DatabaseUnavailableError(RepositoryError):
    """Connection lost, server down, too many connections: retrying may succeed. Counts as an outage."""


class TransactionConflictError(RepositoryError):
    """Serialization failure or deadlock (40001, 40P01): the transaction lost a race with another.
    Retried at once by the caller; never an outage (the circuit breaker does not count it)."""


class RepositoryDataError(RepositoryError):
    """The database refused a value (data exception, SQLSTATE class 22): retrying cannot help."""


# --- task errors --------------------------------------------------------------------------------


class TaskError(GeoEtlError):
    """Base of errors raised by task handlers on purpose."""


class PermanentTaskError(TaskError):
    """Bad input that will never succeed (corrupt file, missing blob): fail now, do not retry."""


class TransientTaskError(TaskError):
    """A failure that may pass (timeouts, 5xx): retry with backoff."""


class ThrottlingError(TransientTaskError):
    """The service asked us to slow down (429, 503 ServerBusy); retry no sooner than retry_after."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InstanceBusyError(TaskError):
    """This instance cannot start the task now (e.g. every conversion slot is taken). The task goes
    back to the queue after ``retry_after`` seconds, for any instance, without counting an attempt:
    nothing was tried."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- blob storage errors (Azure SDK errors translated in repositories/blob_storage.py) -----------


class BlobNotFoundError(PermanentTaskError):
    """The container or blob does not exist."""


class BlobAccessDeniedError(PermanentTaskError):
    """Storage refused the request (authentication, authorisation, bad request): retrying will not help."""


class BlobWriteConflictError(TransientTaskError):
    """Two writes of one blob raced (e.g. a task and its zombie): this one's staged blocks were
    discarded when the other committed. Retrying the write succeeds; not a storage outage."""


class StorageUnavailableError(TransientTaskError):
    """Server errors (5xx), timeouts or connection failures: retrying may succeed. Throttling (429,
    503 ServerBusy) is a ``ThrottlingError`` instead, carrying the service's Retry-After."""


class WorkerResourceError(TransientTaskError):
    """This worker ran out of a local resource (temporary disk space, memory) while processing: not
    the input's fault and not a storage outage. Retried with backoff, possibly on another instance."""
