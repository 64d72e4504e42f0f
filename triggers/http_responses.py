"""JSON responses, and the one table that maps error types to HTTP status codes."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func

from repositories.database import request_acquire_timeout
from schemas.errors import (
    ConflictError,
    DatabaseUnavailableError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    RepositoryError,
    RequestError,
    ServiceUnavailableError,
    StorageUnavailableError,
    ThrottlingError,
    TransactionConflictError,
)
from schemas.settings import Settings
from services.telemetry.spans import request_span, set_status_code

logger = logging.getLogger(__name__)

# The one table: most specific type first.
STATUS_CODES: tuple[tuple[type[Exception], int], ...] = (
    (InvalidRequestError, 400),
    (NotFoundError, 404),
    (ForbiddenError, 403),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (RateLimitedError, 429),
    (ServiceUnavailableError, 503),
    (DatabaseUnavailableError, 503),
    (StorageUnavailableError, 503),
    (ThrottlingError, 503),
    # A transaction that still lost its race after the service's own quick retries: try again soon.
    (TransactionConflictError, 503),
    (RepositoryError, 500),
)


def status_code_for(exc: Exception) -> int:
    for error_type, code in STATUS_CODES:
        if isinstance(exc, error_type):
            return code
    return 500


def json_response(payload: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(payload, default=str),
        status_code=status_code,
        mimetype="application/json",
        charset="utf-8",
        headers=headers,
    )


def error_response(exc: Exception) -> func.HttpResponse:
    code = status_code_for(exc)
    if isinstance(exc, RequestError):
        body: dict[str, Any] = {"error": exc.message}
        if exc.details is not None:
            body["details"] = exc.details
    elif code == 503:
        body = {"error": "a dependency is unavailable; retry later"}
    else:
        body = {"error": "internal server error"}
    headers = {"Retry-After": "5"} if code == 503 else None
    if isinstance(exc, RateLimitedError):
        headers = {"Retry-After": str(exc.retry_after)}
    return json_response(body, code, headers)


HttpHandler = Callable[[func.HttpRequest], func.HttpResponse]


def route_path(req: func.HttpRequest) -> str:
    """The request's path without its query string (which may hold ``code=<function key>``)."""
    try:
        return urlsplit(req.url).path or "/"
    except ValueError:
        return "/"


def json_errors(handler: HttpHandler) -> HttpHandler:
    """Turn raised errors into JSON responses via STATUS_CODES; log unexpected ones (route path only,
    never the URL: its query string may carry a function key)."""

    @wraps(handler)
    def wrapper(req: func.HttpRequest) -> func.HttpResponse:
        try:
            return handler(req)
        except Exception as exc:
            code = status_code_for(exc)
            if code == 503:
                logger.warning("%s %s unavailable: %s", req.method, route_path(req), exc)
            elif code >= 500:
                logger.exception("%s %s failed", req.method, route_path(req))
            return error_response(exc)

    return wrapper


def json_api(settings: Settings) -> Callable[[HttpHandler], HttpHandler]:
    """``json_errors`` plus the HTTP path's Postgres policy: a connection is awaited at most
    DB_HTTP_ACQUIRE_TIMEOUT_SECONDS (then 503), so callers learn of an outage at once. Each request
    is a span (services/telemetry/spans.py) named by the function, with the route's job_id / job_type."""

    def decorate(handler: HttpHandler) -> HttpHandler:
        guarded = json_errors(handler)

        @wraps(handler)
        def wrapper(req: func.HttpRequest) -> func.HttpResponse:
            route = req.route_params or {}
            with request_span(
                handler.__name__,
                req.method,
                route_path(req),
                req.headers,
                job_id=route.get("job_id"),
                job_type=route.get("job_type"),
            ) as span:
                with request_acquire_timeout(settings.db_http_acquire_timeout_seconds):
                    response = guarded(req)
                set_status_code(span, response.status_code)
                return response

        return wrapper

    return decorate
