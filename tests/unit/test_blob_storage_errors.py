"""Azure SDK errors become geoetl's error types at the blob storage boundary."""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError, ServiceRequestError

from repositories.blob_storage import BlobStorage, _translated, gdal_connection_string
from schemas.errors import (
    BlobAccessDeniedError,
    BlobNotFoundError,
    BlobWriteConflictError,
    PermanentTaskError,
    StorageUnavailableError,
    ThrottlingError,
    TransientTaskError,
)


class FakeResponse:
    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.reason = "reason"
        self.headers = headers or {}

    def text(self) -> str:
        return ""


def http_error(status: int, code: str | None = None, headers: dict[str, str] | None = None) -> HttpResponseError:
    kind = ResourceNotFoundError if status == 404 else HttpResponseError
    error = kind(message=f"status {status}", response=FakeResponse(status, headers))  # type: ignore[arg-type]
    error.error_code = code  # type: ignore[attr-defined]  # set by the storage SDK's error processing
    return error


def raised(error: Exception, name: str | None = "dir/a.tif") -> Exception:
    with pytest.raises(Exception) as caught, _translated("read", "bronze", name):
        raise error
    return caught.value


@pytest.mark.parametrize(
    ("error", "expected", "family", "text"),
    [
        (http_error(404, "BlobNotFound"), BlobNotFoundError, PermanentTaskError, "read: bronze/dir/a.tif not found"),
        (http_error(404, "ContainerNotFound"), BlobNotFoundError, PermanentTaskError, "container bronze not found"),
        (http_error(403, "AuthorizationFailure"), BlobAccessDeniedError, PermanentTaskError, "HTTP 403"),
        (http_error(429, None, {"Retry-After": "7"}), ThrottlingError, TransientTaskError, "throttled"),
        (http_error(503, "ServerBusy"), ThrottlingError, TransientTaskError, "throttled"),
        (http_error(500, "InternalError"), StorageUnavailableError, TransientTaskError, "HTTP 500"),
        (http_error(400, "InvalidBlockList"), BlobWriteConflictError, TransientTaskError, "got there first"),
        (ServiceRequestError("connection refused"), StorageUnavailableError, TransientTaskError, "unreachable"),
    ],
)
def test_sdk_errors_are_translated(error: Exception, expected: type, family: type, text: str) -> None:
    translated = raised(error)
    assert type(translated) is expected and isinstance(translated, family)
    assert text in str(translated)
    assert translated.__cause__ is error


def test_throttling_keeps_retry_after() -> None:
    translated = raised(http_error(429, None, {"Retry-After": "7"}))
    assert isinstance(translated, ThrottlingError) and translated.retry_after == 7.0


def test_development_storage_is_expanded_for_gdal() -> None:
    expanded = gdal_connection_string("UseDevelopmentStorage=true")
    assert (
        "AccountName=devstoreaccount1" in expanded
        and "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1" in expanded
    )
    explicit = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k;EndpointSuffix=core.windows.net"
    assert gdal_connection_string(explicit) == explicit


def test_gdal_options_name_the_account_and_disable_stale_caching() -> None:
    options: dict[str, Any] = BlobStorage("UseDevelopmentStorage=true").gdal_options()
    assert options["AZURE_STORAGE_CONNECTION_STRING"].startswith("DefaultEndpointsProtocol=http;")
    assert options["CPL_VSIL_CURL_NON_CACHED"] == "/vsiaz/"
    assert options["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert BlobStorage.vsiaz_path("bronze", "dir/a.tif") == "/vsiaz/bronze/dir/a.tif"
