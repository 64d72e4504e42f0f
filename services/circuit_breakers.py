"""Circuit breakers (pybreaker: closed → open → half-open) guarding each external service.

While a breaker is open, calls fail fast with ``CircuitOpenError`` (transient), so tasks are
re-queued with backoff instead of piling up on a dead dependency. State changes are logged and
counted (metric geoetl.circuit_breaker.state_changes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pybreaker

from schemas.errors import DatabaseUnavailableError, TransientTaskError
from services.telemetry import metrics

logger = logging.getLogger(__name__)


class CircuitOpenError(TransientTaskError):
    """A dependency's breaker is open: fail fast, retry later."""


class _LogStateChanges(pybreaker.CircuitBreakerListener):
    def state_change(self, cb: pybreaker.CircuitBreaker, old_state: Any, new_state: Any) -> None:
        level = logging.WARNING if new_state.name == pybreaker.STATE_OPEN else logging.INFO
        logger.log(
            level,
            "circuit %s: %s -> %s",
            cb.name,
            getattr(old_state, "name", old_state),
            new_state.name,
            extra={"circuit": cb.name, "circuit_state": new_state.name},
        )
        metrics.circuit_state_changed(cb.name or "unnamed", new_state.name)


def make_breaker(
    name: str, fail_max: int, reset_seconds: float, counts: Callable[[BaseException], bool]
) -> pybreaker.CircuitBreaker:
    """A breaker that counts only exceptions for which ``counts`` is true (others are business errors)."""
    return pybreaker.CircuitBreaker(
        fail_max=fail_max,
        reset_timeout=reset_seconds,
        exclude=[lambda exc: not counts(exc)],
        listeners=[_LogStateChanges()],
        name=name,
    )


def counts_database_outage(exc: BaseException) -> bool:
    return isinstance(exc, DatabaseUnavailableError)


def counts_storage_outage(exc: BaseException) -> bool:
    """Network errors, timeouts and 5xx/429 from Azure Storage; 4xx are the caller's problem."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    from schemas.errors import StorageUnavailableError, ThrottlingError

    if isinstance(exc, StorageUnavailableError | ThrottlingError):  # already translated by a repository
        return True
    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        return status >= 500 or status == 429
    return False
